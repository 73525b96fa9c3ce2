"""Ad audiences kept in step with segments, by difference, surviving crashes and retries.

For each ``[[audience]]`` (a segment and a cabinet) and each run:

1. the segment's members are turned into hashed identifiers for that cabinet (adapters/ads/normalize.py);
   customers with no valid e-mail or phone are counted, never sent;
2. until the audience exists in the cabinet it is created only once it reaches the cabinet's minimum
   ("segment X has 37 matchable customers; Yandex Audience needs 100: not uploaded yet"); an audience of
   the same name found in the cabinet (a run killed after creating it) is taken over, not duplicated;
3. afterwards only the difference travels, **per hash**: a cabinet holds a set of hashes, and two customers
   may share an e-mail or a phone. A hash is added when some member needs it and the cabinet is not known to
   hold it; it is removed only when no current member needs it any more.

The state store keeps, per audience, the hashes the cabinet holds (``audience_hashes``: ``in``, or
``adding`` / ``removing`` while a request is in flight) and, for the record, every customer the connector
has put in with the hashes sent for them (``audience_members``, same states). The intent is committed
before each request and the outcome after it, so a run killed mid-upload re-sends exactly the unconfirmed
hashes (all four cabinets treat a repeated add or remove as a no-op) and never loses one. Yandex creates a
segment in two requests (upload, confirm); the uploaded segment's id is committed in between, so a run
killed there confirms that segment next time rather than leaving an unnamed orphan. A quota refusal stops
that audience for this run; the rows wait for the next.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from adapters.ads.cabinets import CLIENTS, AdsError, CredentialsError, QuotaError
from adapters.ads.normalize import identifiers

log = logging.getLogger("lifecycle.audiences")


@dataclass
class AudienceResult:
    segment: str
    cabinet: str
    name: str
    matchable: int = 0
    unmatchable: int = 0
    invalid_emails: int = 0
    invalid_phones: int = 0
    added: int = 0
    removed: int = 0
    deferred: int = 0
    status: str | None = None
    message: str | None = None
    requests: int = 0
    created: bool = False
    hashes_added: int = 0    # identifiers sent (a hash two customers share travels once)
    hashes_removed: int = 0  # identifiers taken out: only those no member needs any more
    credentials_refused: bool = False

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def all_refused_credentials(summaries: list[dict[str, Any]]) -> bool:
    """Every audience of the run failed because its cabinet refused the credentials: the sync failed."""
    return bool(summaries) and all(s.get("credentials_refused") for s in summaries)


def audience_key(audience: Any, name: str) -> str:
    return f"{audience.cabinet}:{audience.segment}:{name}"


def sync_audiences(config: Any, store: Any, computation: Any, *, clients: dict[str, type] | None = None,
                   cards: Any = None, progress: Any = None) -> list[AudienceResult]:
    """``cards``: the run's customer card view (connector.store.cards), if read already."""
    from adapters.progress import or_none

    out = []
    stage = or_none(progress).stage("audiences", len(config.settings.audience))
    for audience in config.settings.audience:
        name = audience.name or config.label(audience.segment)
        client = (clients or CLIENTS)[audience.cabinet](audience, config.settings.audiences)
        result = AudienceResult(audience.segment, audience.cabinet, name)
        try:
            _sync_one(config, store, computation, audience, name, client, result, cards)
        except QuotaError as exc:
            result.message = f"{exc}; the rest waits for the next run"
        except AdsError as exc:
            result.message = str(exc)
            result.credentials_refused = isinstance(exc, CredentialsError)
            log.warning("audience %s: %s", name, exc)
        finally:
            result.requests = client.requests
            client.close()
        out.append(result)
        stage.advance(1)
    stage.done()
    return out


def _desired(config: Any, store: Any, computation: Any, audience: Any, result: AudienceResult,
             view: Any = None) -> dict[int, dict[str, str]]:
    ids = computation.membership.filter(pl.col(audience.segment)).get_column("id").to_list()
    cards = store.customer_cards(config.crm.customer, ids) if view is None else view.cards(ids)
    region = config.settings.audiences.default_region
    wanted_key = {"phones": "phone", "emails": "email"}.get(audience.id_type) if audience.cabinet == "vk" else None
    desired: dict[int, dict[str, str]] = {}
    for cid in ids:
        card = cards.get(int(cid), {})
        ident = identifiers(card.get("email"), card.get("phone"), audience.cabinet, region)
        result.invalid_emails += int(ident.invalid_email)
        result.invalid_phones += int(ident.invalid_phone)
        hashes = {k: v for k, v in (("email", ident.email), ("phone", ident.phone)) if v}
        if wanted_key is not None:
            hashes = {wanted_key: hashes[wanted_key]} if wanted_key in hashes else {}
        if hashes:
            desired[int(cid)] = hashes
        else:
            result.unmatchable += 1
    result.matchable = len(desired)
    return desired


Hash = tuple[str, str]  # (kind, hash): ("email", "ab12...") or ("phone", "cd34...")


def _wanted(desired: dict[int, dict[str, str]]) -> set[Hash]:
    return {(kind, value) for idents in desired.values() for kind, value in idents.items()}


def _lines(hashes: set[Hash], owners: dict[int, dict[str, str]]) -> list[dict[str, str]]:
    """The hashes as upload lines: a customer's e-mail and phone stay on one line where both travel (the
    cabinets match a line as one person); a hash no listed customer holds goes on a line of its own."""
    left, lines = set(hashes), []
    for cid in sorted(owners):
        line = {kind: value for kind, value in owners[cid].items() if (kind, value) in left}
        if line:
            lines.append(line)
            left -= set(line.items())
    lines += [{kind: value} for kind, value in sorted(left)]
    return lines


def _line_hashes(lines: list[dict[str, str]]) -> list[Hash]:
    return [(kind, value) for line in lines for kind, value in line.items()]


def _sync_one(config: Any, store: Any, computation: Any, audience: Any, name: str, client: Any,
              result: AudienceResult, cards: Any = None) -> None:
    key = audience_key(audience, name)
    desired = _desired(config, store, computation, audience, result, cards)
    record = store.audience(key)
    remote_id = record["remote_id"] if record else None
    if remote_id is None and record and (record.get("detail") or {}).get("upload"):
        remote_id = _resume_upload(store, key, audience, name, client, record["detail"]["upload"])
    if remote_id is None:
        remote_id = client.find(name)  # a run killed after creating it: take it over
        if remote_id is not None:
            store.save_audience(key, audience.cabinet, remote_id=remote_id, status=None, detail={"taken_over": True})
    if remote_id is None:
        lines = len(_lines(_wanted(desired), desired))  # customers sharing an e-mail or phone are fewer records
        if min(len(desired), lines) < client.min_size:
            distinct = f" ({lines} distinct after shared e-mails and phones)" if lines < len(desired) else ""
            result.message = (f"segment {audience.segment} has {len(desired)} matchable customers{distinct}; "
                              f"{client.label} needs {client.min_size}: not uploaded yet")
            store.save_audience(key, audience.cabinet, remote_id=None, status="waiting", detail={"message": result.message})
            return
        remote_id = _create(store, key, audience, name, client, desired, result)
    else:
        _apply_difference(store, key, desired, client, remote_id, result)
    try:
        result.status = client.status(remote_id)
    except QuotaError:
        result.status = None  # the status is informational: a refused read does not fail the sync
    except AdsError as exc:
        log.warning("audience %s: could not read its status: %s", name, exc)
        result.status = None
    store.save_audience(key, audience.cabinet, remote_id=remote_id, status=result.status,
                        detail={"members": len(desired), "message": result.message})


def _create(store: Any, key: str, audience: Any, name: str, client: Any, desired: dict[int, dict[str, str]],
            result: AudienceResult) -> str:
    wanted = _wanted(desired)
    # a fresh audience holds exactly what is sent now: forget rows of an earlier attempt nobody needs
    store.drop_audience_hashes(key, set(store.audience_hashes(key)) - wanted)
    store.drop_audience_members(key, set(store.audience_members(key)) - desired.keys())
    store.set_audience_members(key, {cid: (h, "adding") for cid, h in desired.items()})
    store.set_audience_hashes(key, wanted, "adding")
    lines = _lines(wanted, desired)
    if hasattr(client, "upload"):
        # Yandex: upload, then confirm (which names the segment). The intent, then the id, are committed
        # before the next request, so a run killed in between finds the unnamed segment and finishes it.
        store.save_audience(key, audience.cabinet, remote_id=None, status="uploading", detail={"upload": {"rows": len(lines)}})
        segment_id = client.upload(lines)
        store.save_audience(key, audience.cabinet, remote_id=None, status="uploaded",
                            detail={"upload": {"rows": len(lines), "id": segment_id}})
        client.confirm(segment_id, name)
        remote_id = segment_id
    else:
        remote_id = client.create(name, lines)
    store.save_audience(key, audience.cabinet, remote_id=remote_id, status=None, detail={})
    store.set_audience_hashes(key, wanted, "in")
    store.set_audience_members(key, {cid: (h, "in") for cid, h in desired.items()})
    result.added, result.created = len(desired), True
    result.hashes_added = len(wanted)
    return remote_id


def _resume_upload(store: Any, key: str, audience: Any, name: str, client: Any, upload: dict[str, Any]) -> str | None:
    """A run was killed between uploading a segment's file and confirming it: confirm that segment now (its
    file holds the hashes recorded as ``adding``) instead of leaving it unnamed and orphaned. If the upload's
    answer was lost, the one unnamed unconfirmed segment with as many records is it."""
    segment_id = upload.get("id") or (client.find_unconfirmed(int(upload.get("rows") or 0))
                                      if hasattr(client, "find_unconfirmed") else None)
    segment = client.segment(segment_id) if segment_id and hasattr(client, "segment") else None
    if segment is None:  # never uploaded, or deleted since: start again
        store.save_audience(key, audience.cabinet, remote_id=None, status=None, detail={})
        return None
    if segment.get("status") == "uploaded":
        client.confirm(str(segment_id), name)
    store.save_audience(key, audience.cabinet, remote_id=str(segment_id), status=None, detail={"resumed_upload": True})
    store.set_audience_hashes(key, list(store.audience_hashes(key)), "in")
    return str(segment_id)


def _apply_difference(store: Any, key: str, desired: dict[int, dict[str, str]], client: Any, remote_id: str,
                      result: AudienceResult) -> None:
    """Send only the difference, per hash: a hash is added while some member needs it and the cabinet is not
    known to hold it, and removed only when no member needs it any more (two customers may share one)."""
    stored = store.audience_members(key)
    sent = store.audience_hashes(key)
    wanted = _wanted(desired)
    to_remove = set(sent) - wanted
    to_add = {h for h in wanted if sent.get(h) != "in"}
    entering = {cid for cid in desired if stored.get(cid) != (desired[cid], "in")}
    leaving = set(stored) - desired.keys()
    if (to_remove or to_add) and client.busy(remote_id):
        result.deferred = len(entering | leaving) or len(to_remove | to_add)
        result.message = (f"{client.label} is still processing the audience; {result.deferred} changes wait for the "
                          "next run")
        return
    # intent per customer (who is being put in or taken out); the cabinet's truth is kept per hash below
    store.set_audience_members(key, {cid: (stored[cid][0], "removing") for cid in leaving if stored[cid][1] != "removing"})
    store.set_audience_members(key, {cid: (desired[cid], "adding") for cid in entering})
    done = {"remove": not to_remove, "add": not to_add}
    phases = (("remove", to_remove, {cid: idents for cid, (idents, _) in stored.items()}), ("add", to_add, desired))
    for kind, hashes, owners in phases:
        if not hashes:
            continue
        lines = _lines(hashes, owners)
        if (result.hashes_added or result.hashes_removed) and client.busy(remote_id):
            # e.g. Yandex reprocesses a segment after every modification and refuses the next meanwhile
            result.deferred += len(lines)
            result.message = f"{client.label} is processing the last change; {len(lines)} identifiers to {kind} wait for the next run"
            continue
        if len(lines) < client.min_diff:
            result.deferred += len(lines)
            result.message = (f"{len(lines)} identifiers to {kind}; {client.label} takes at least {client.min_diff} "
                              "per change: kept for a later run")
            continue
        for start in range(0, len(lines), client.batch):
            chunk = lines[start : start + client.batch]
            chunk_hashes = _line_hashes(chunk)
            if kind == "remove":
                store.set_audience_hashes(key, chunk_hashes, "removing")
                client.remove(remote_id, chunk)
                store.drop_audience_hashes(key, chunk_hashes)
                result.hashes_removed += len(chunk_hashes)
            else:
                store.set_audience_hashes(key, chunk_hashes, "adding")
                client.add(remote_id, chunk)
                store.set_audience_hashes(key, chunk_hashes, "in")
                result.hashes_added += len(chunk_hashes)
        done[kind] = True
    if done["remove"] and leaving:
        store.drop_audience_members(key, leaving)
        result.removed += len(leaving)
    if done["add"] and entering:
        store.set_audience_members(key, {cid: (desired[cid], "in") for cid in entering})
        result.added += len(entering)
