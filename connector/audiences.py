"""Ad audiences kept in step with segments, by difference, surviving crashes and retries.

For each ``[[audience]]`` (a segment and a cabinet) and each run:

1. the segment's members are turned into hashed identifiers for that cabinet (adapters/ads/normalize.py);
   customers with no valid e-mail or phone are counted, never sent;
2. until the audience exists in the cabinet it is created only once it reaches the cabinet's minimum
   ("segment X has 37 matchable customers; Yandex Audience needs 100: not uploaded yet"); an audience of
   the same name found in the cabinet (a run killed after creating it) is taken over, not duplicated;
3. afterwards only the difference travels: customers who entered (or whose identifiers changed) are added,
   those who left are removed, with the identifiers that were sent for them.

The state store keeps, per audience, every customer the connector has put in the cabinet with the hashes
it sent and a state: ``in``, or ``adding`` / ``removing`` while a request is in flight. The intent is
committed before the request and the outcome after it, so a run killed mid-upload re-sends exactly the
unconfirmed rows (all four cabinets treat a repeated add or remove as a no-op) and never loses one. A quota
refusal stops that audience for this run; the rows wait for the next.
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
    credentials_refused: bool = False

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def all_refused_credentials(summaries: list[dict[str, Any]]) -> bool:
    """Every audience of the run failed because its cabinet refused the credentials: the sync failed."""
    return bool(summaries) and all(s.get("credentials_refused") for s in summaries)


def audience_key(audience: Any, name: str) -> str:
    return f"{audience.cabinet}:{audience.segment}:{name}"


def sync_audiences(config: Any, store: Any, computation: Any, *, clients: dict[str, type] | None = None) -> list[AudienceResult]:
    out = []
    for audience in config.settings.audience:
        name = audience.name or config.label(audience.segment)
        client = (clients or CLIENTS)[audience.cabinet](audience, config.settings.audiences)
        result = AudienceResult(audience.segment, audience.cabinet, name)
        try:
            _sync_one(config, store, computation, audience, name, client, result)
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
    return out


def _desired(config: Any, store: Any, computation: Any, audience: Any, result: AudienceResult) -> dict[int, dict[str, str]]:
    ids = computation.membership.filter(pl.col(audience.segment)).get_column("id").to_list()
    cards = store.customer_cards(config.crm.customer, ids)
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


def _sync_one(config: Any, store: Any, computation: Any, audience: Any, name: str, client: Any,
              result: AudienceResult) -> None:
    key = audience_key(audience, name)
    desired = _desired(config, store, computation, audience, result)
    record = store.audience(key)
    remote_id = record["remote_id"] if record else None
    if remote_id is None:
        remote_id = client.find(name)  # a run killed after creating it: take it over
        if remote_id is not None:
            store.save_audience(key, audience.cabinet, remote_id=remote_id, status=None, detail={"taken_over": True})
    if remote_id is None:
        if len(desired) < client.min_size:
            result.message = (f"segment {audience.segment} has {len(desired)} matchable customers; {client.label} "
                              f"needs {client.min_size}: not uploaded yet")
            store.save_audience(key, audience.cabinet, remote_id=None, status="waiting", detail={"message": result.message})
            return
        store.set_audience_members(key, {cid: (h, "adding") for cid, h in desired.items()})
        remote_id = client.create(name, list(desired.values()))
        store.save_audience(key, audience.cabinet, remote_id=remote_id, status=None, detail={})
        store.set_audience_members(key, {cid: (h, "in") for cid, h in desired.items()})
        result.added, result.created = len(desired), True
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


def _apply_difference(store: Any, key: str, desired: dict[int, dict[str, str]], client: Any, remote_id: str,
                      result: AudienceResult) -> None:
    stored = store.audience_members(key)
    changed = {cid for cid in desired.keys() ^ stored.keys()} | {
        cid for cid in desired.keys() & stored.keys() if desired[cid] != stored[cid][0] or stored[cid][1] != "in"}
    if changed and client.busy(remote_id):
        result.deferred = len(changed)
        result.message = (f"{client.label} is still processing the audience; {len(changed)} changes wait for the "
                          "next run")
        return
    removals = {cid: idents for cid, (idents, state) in stored.items()
                if cid not in desired or desired[cid] != idents or state == "removing"}
    additions = {cid: h for cid, h in desired.items()
                 if cid not in stored or stored[cid][0] != h or stored[cid][1] == "adding"}
    for rows, kind in ((removals, "remove"), (additions, "add")):
        if not rows:
            continue
        if (result.added or result.removed) and client.busy(remote_id):
            # e.g. Yandex reprocesses a segment after every modification and refuses the next meanwhile
            result.deferred += len(rows)
            result.message = f"{client.label} is processing the last change; {len(rows)} customers to {kind} wait for the next run"
            continue
        if len(rows) < client.min_diff:
            result.deferred += len(rows)
            result.message = (f"{len(rows)} customers to {kind}; {client.label} takes at least {client.min_diff} "
                              "per change: kept for a later run")
            continue
        ids = sorted(rows)
        for start in range(0, len(ids), client.batch):
            chunk = ids[start : start + client.batch]
            members = [rows[cid] for cid in chunk]
            if kind == "remove":
                store.set_audience_members(key, {cid: (rows[cid], "removing") for cid in chunk})
                client.remove(remote_id, members)
                store.drop_audience_members(key, chunk)
                result.removed += len(chunk)
            else:
                store.set_audience_members(key, {cid: (rows[cid], "adding") for cid in chunk})
                client.add(remote_id, members)
                store.set_audience_members(key, {cid: (rows[cid], "in") for cid in chunk})
                result.added += len(chunk)
