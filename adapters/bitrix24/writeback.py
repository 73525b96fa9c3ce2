"""Segments onto the customer card: a multiple enumeration user field (default ``UF_CRM_LIFECYCLE``).

* The field is created if missing (``crm.contact.userfield.add``, ``USER_TYPE_ID=enumeration``,
  ``MULTIPLE=Y``), with one option per tagged segment: ``XML_ID`` = segment name, ``VALUE`` = its label.
  New segments become new options and changed labels are renamed through
  ``crm.contact.userfield.update`` (options named with their ``ID`` are kept or changed; docs
  api-reference/data-types.md#uf_enum_element).
* The value stored on a record is a list of option IDs. The connector owns only the options whose
  XML_ID is a tagged segment; any other value on the field (set by hand) is left as it is.
* Only customers whose wanted value differs from the value in the mirror are updated, 50
  ``crm.<entity>.update`` commands per batch; only the failed commands are retried. The values written
  come back as ``mirror_updates`` for the connector to merge into the mirror.
* Up to ``writeback_batches_in_flight`` batches are sent at once; every request still passes the
  portal's limiter (Bitrix24Client: the leaky bucket, the operating-time throttle), so the write-back
  keeps the bucket busy without a refusal.
* Our own writes are not read back (docs api-reference/crm/contacts/crm-contact-list.md: ``MODIFY_BY_ID``
  and ``DATE_MODIFY`` filter the list): the result's cursors record the connector's user and the portal
  time the write-back began and ended, and the next incremental pull leaves out the records that user
  modified within that window (:mod:`adapters.bitrix24.source`). A change someone else made between our
  pull and our write would be hidden by our write, so each batch starts with a ``crm.<entity>.list``
  of its own ids modified since the pull began (run before the updates, inside the same batch); ids it
  lists are recorded to be read again by the next pull.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from adapters.base import TagWriteResult, TokenStore
from adapters.progress import NO_PROGRESS, or_none
from adapters.bitrix24.client import Bitrix24Client, BitrixError
from adapters.bitrix24.paging import php_query
from adapters.bitrix24.settings import ENTITIES, Bitrix24Settings
from adapters.bitrix24.source import _shift, make_client, tag_ids

RETRIES = 3
MAX_IDLE_WAITS = 3  # waits for the operating limit in a row that let nothing through
OWN_WRITES = "own_writes"  # cursor: {"user": id, "from": portal time, "until": portal time} of the last write-back
REREAD_IDS = "reread_ids"  # cursor: ids changed by someone else just before we wrote them: read them again
CHECK = "seen"  # the batch command listing the batch's ids changed since the pull began
OPTIONS = "tag_options"  # cursor: {"field", "labels", "options"} as the last write-back found them


def plan_tags(
    wanted: Mapping[int, Sequence[str]], current: dict[int, list[str]], options: dict[str, str]
) -> dict[int, list[str]]:
    """Customer id -> the field's new list of option ids, for customers whose value must change.

    ``wanted``: tagged segments per customer; ``current``: option ids on the field now (mirror);
    ``options``: segment name -> option id. Foreign option ids are kept in front, in their order.
    """
    managed = set(options.values())
    changes = {}
    for cid in wanted.keys() | current.keys():
        now = current.get(cid, [])
        keep = [i for i in now if i not in managed]
        new = keep + [options[s] for s in wanted.get(cid, [])]
        if set(new) != set(now):
            changes[cid] = new
    return changes


class Bitrix24TagWriter:
    def __init__(self, settings: Bitrix24Settings, store: TokenStore):
        self.settings = settings
        self.store = store
        self.prefix = ENTITIES[settings.customer].prefix
        self.field = settings.tag_field
        self.progress = NO_PROGRESS
        self.stage = NO_PROGRESS.stage("write-back")
        self.in_flight = max(1, int(settings.writeback_batches_in_flight))
        self.since: str | None = None  # the pull's start (portal time) minus the overlap: the check's bound
        self.reread: set[int] = set()

    def write(self, wanted: Mapping[int, Sequence[str]], labels: Mapping[str, str],
              mirror: Mapping[int, Mapping[str, Any]], progress: Any = None) -> TagWriteResult:
        self.progress = or_none(progress)
        return asyncio.run(self._write(wanted, dict(labels), current_tags(mirror, self.field)))

    async def _write(self, wanted: Mapping[int, Sequence[str]], labels: dict[str, str],
                     current: dict[int, list[str]]) -> TagWriteResult:
        result = TagWriteResult()
        cursors = self.store.cursors() if hasattr(self.store, "cursors") else {}
        since = cursors.get("modified_since")
        self.since = _shift(since, self.settings.overlap_minutes) if since else None
        known = _known_options(cursors.get(OPTIONS), self.field, labels)
        if known is not None and not plan_tags(wanted, current, known):
            self.progress.stage("write-back", 0)
            return result  # the field and its options as last time and no customer to change: no request at all
        async with make_client(self.settings, self.store) as client:
            options = await self._ensure_field(client, labels, result)
            result.cursors[OPTIONS] = json.dumps({"field": self.field, "labels": labels, "options": options},
                                                 sort_keys=True, ensure_ascii=False)
            changes = plan_tags(wanted, current, options)
            self.stage = self.progress.stage("write-back", len(changes))
            pending = dict(changes)
            attempts = idle_waits = 0
            while pending and attempts < RETRIES and idle_waits <= MAX_IDLE_WAITS:
                before = result.updated
                pending, blocked = await self._update(client, pending, result)
                if blocked:  # the operating-time limit closed crm.*.update: wait for it, not a failed try
                    idle_waits = 0 if result.updated > before else idle_waits + 1
                    await client.wait_for_operating(f"{self.prefix}.update")
                else:
                    attempts += 1
            result.failed.update({cid: "not updated after retries" for cid in pending if cid not in result.failed})
            if result.updated and client.server_time and client.last_finish:
                user = await self._own_user(client)
                if user is not None:
                    result.cursors[OWN_WRITES] = json.dumps({"user": user, "from": client.server_time,
                                                             "until": client.last_finish})
            if self.reread:
                result.cursors[REREAD_IDS] = json.dumps(sorted(self.reread))
            result.requests = client.requests
        return result

    async def _own_user(self, client: Bitrix24Client) -> int | None:
        """The id of the user the connector writes as: the webhook's (``/rest/<user>/<code>/``), else the
        OAuth token's (``user.current``)."""
        if self.settings.webhook_url:
            parts = [p for p in self.settings.webhook_url.split("/rest/", 1)[-1].split("/") if p]
            return int(parts[0]) if parts and parts[0].isdigit() else None
        try:
            answer = await client.call("user.current", {})
            return int((answer.get("result") or {}).get("ID"))
        except (BitrixError, TypeError, ValueError):
            return None

    async def _ensure_field(self, client: Bitrix24Client, labels: dict[str, str], result: TagWriteResult
                            ) -> dict[str, str]:
        segments = list(labels)
        found = await self._find_field(client)
        changed = True
        if found is None:
            fields = {
                "FIELD_NAME": self.field.removeprefix("UF_CRM_"),
                "USER_TYPE_ID": "enumeration",
                "MULTIPLE": "Y",
                "LABEL": self.settings.tag_field_label,
                "EDIT_FORM_LABEL": self.settings.tag_field_label,
                "LIST_COLUMN_LABEL": self.settings.tag_field_label,
                "SHOW_FILTER": "Y",
                "LIST": [{"VALUE": labels[s], "XML_ID": s, "SORT": 10 * (i + 1)} for i, s in enumerate(segments)],
            }
            await client.call(f"{self.prefix}.userfield.add", {"fields": fields})
            result.options_created = list(segments)
        else:
            by_xml = {str(o.get("XML_ID")): o for o in found.get("LIST") or []}
            missing = [s for s in segments if s not in by_xml]
            renamed = [s for s in segments if s in by_xml and by_xml[s].get("VALUE") != labels[s]]
            if missing or renamed:
                items = [{"ID": o["ID"], "VALUE": o.get("VALUE"), "XML_ID": o.get("XML_ID")} for o in found.get("LIST") or []]
                for item in items:
                    if item["XML_ID"] in renamed:
                        item["VALUE"] = labels[item["XML_ID"]]
                start = 10 * (len(items) + 1)
                items += [{"VALUE": labels[s], "XML_ID": s, "SORT": start + 10 * i} for i, s in enumerate(missing)]
                await client.call(f"{self.prefix}.userfield.update", {"id": found["ID"], "fields": {"LIST": items}})
                result.options_created = missing
            else:
                changed = False
        if changed:  # read the options back (their ids) after creating or changing them
            found = await self._find_field(client)
        if found is None:
            raise BitrixError(f"Bitrix24: user field {self.field} is still missing after creating it")
        options = {str(o.get("XML_ID")): str(o["ID"]) for o in found.get("LIST") or [] if o.get("XML_ID") in segments}
        lost = [s for s in segments if s not in options]
        if lost:
            raise BitrixError(f"Bitrix24: options for {', '.join(lost)} are missing on {self.field}")
        return options

    async def _find_field(self, client: Bitrix24Client) -> dict[str, Any] | None:
        answer = await client.call(f"{self.prefix}.userfield.list", {"filter": {"FIELD_NAME": self.field}})
        for item in answer.get("result") or []:
            if item.get("FIELD_NAME") == self.field:
                return item
        return None

    async def _update(
        self, client: Bitrix24Client, pending: dict[int, list[str]], result: TagWriteResult
    ) -> tuple[dict[int, list[str]], bool]:
        """Send the changes in batches of 50 commands (49 updates after the check when the pull's start is
        known), up to ``in_flight`` batches at once; return those that failed (to retry) and whether the
        operating-time limit stopped any (the rest of the run then waits for it to reopen)."""
        failed: dict[int, list[str]] = {}
        state = {"blocked": False}
        ids = sorted(pending)  # each batch's ids in one ID range: the check reads that range, not the table
        size = 49 if self.since else 50
        gate = asyncio.Semaphore(self.in_flight)

        async def send(chunk: list[int]) -> None:
            async with gate:
                if state["blocked"]:  # everything after a refused batch would be refused as well
                    failed.update({cid: pending[cid] for cid in chunk})
                    return
                if await self._send_chunk(client, chunk, pending, result, failed):
                    state["blocked"] = True

        await asyncio.gather(*(send(ids[start : start + size]) for start in range(0, len(ids), size)))
        return failed, state["blocked"]

    async def _send_chunk(self, client: Bitrix24Client, chunk: list[int], pending: dict[int, list[str]],
                          result: TagWriteResult, failed: dict[int, list[str]]) -> bool:
        """One batch; True when the operating-time limit refused a command."""
        commands = {}
        if self.since:
            commands[CHECK] = f"{self.prefix}.list?" + php_query(
                {"order": {"ID": "ASC"}, "filter": {">=ID": chunk[0], "<=ID": chunk[-1], "@ID": chunk,
                                                    ">=DATE_MODIFY": self.since}, "select": ["ID"], "start": -1})
        commands.update({f"u{cid}": f"{self.prefix}.update?{self._update_query(cid, pending[cid])}" for cid in chunk})
        try:
            results, errors = await client.batch(commands)
        except BitrixError as exc:
            failed.update({cid: pending[cid] for cid in chunk})
            result.failed.update({cid: str(exc) for cid in chunk})
            return False
        blocked = False
        if self.since:
            seen = results.get(CHECK)
            if isinstance(seen, list):
                self.reread.update(int(r["ID"]) for r in seen if isinstance(r, dict) and str(r.get("ID", "")).isdigit())
            else:  # the check did not run: read the whole chunk again rather than miss a change
                self.reread.update(chunk)
        done = {}
        for cid in chunk:
            key = f"u{cid}"
            if key in errors or results.get(key) is not True:
                error = errors.get(key) or {}
                if isinstance(error, dict) and str(error.get("error", "")).upper() == "OPERATION_TIME_LIMIT":
                    blocked = True
                result.failed[cid] = str(error.get("error_description") or error.get("error") or "no result") if isinstance(error, dict) else str(error)
                failed[cid] = pending[cid]
            else:
                done[cid] = {self.field: json.dumps(pending[cid])}
                result.failed.pop(cid, None)
        result.updated += len(done)
        self.stage.advance(len(done))
        result.mirror_updates.update(done)
        return blocked

    def _update_query(self, cid: int, values: list[str]) -> str:
        # An empty list cannot be written as PHP array items; an empty string clears the field.
        return php_query({"id": cid, "fields": {self.field: values if values else ""}})


def _known_options(text: str | None, field: str, labels: dict[str, str]) -> dict[str, str] | None:
    """The options recorded by the last write-back, if it wrote the same field with the same labels."""
    try:
        saved = json.loads(text or "null")
    except ValueError:
        return None
    if not isinstance(saved, dict) or saved.get("field") != field or saved.get("labels") != labels:
        return None
    options = saved.get("options")
    return {str(k): str(v) for k, v in options.items()} if isinstance(options, dict) and set(options) == set(labels) else None


def current_tags(customers_fields: Mapping[int, Mapping[str, Any]], field_name: str) -> dict[int, list[str]]:
    """Option ids per customer from the mirror's field values (only customers that have any)."""
    out = {}
    for cid, values in customers_fields.items():
        ids = tag_ids(values.get(field_name))
        if ids:
            out[cid] = ids
    return out
