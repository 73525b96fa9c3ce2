"""The no-count ``start=-1`` + ``>ID`` chain, 50 pages per batch request.

Docs (settings/performance/huge-data.md): ``start=-1`` skips the COUNT behind ``total``, so a page costs
the same at any depth, while offset paging (``start=N`` with a count) costs time in proportion to the
table and the offset and runs into ``OPERATION_TIME_LIMIT`` on large portals. One batch holds 50 list
commands; command ``k`` filters ``>ID`` by the last ID of command ``k-1`` through a ``$result[...]``
reference, so 2,500 records arrive per HTTP request (the first page is fetched alone, as b24pysdk's
``as_list_fast`` does, so a short result costs one small request). The chain ends at the first page shorter than 50;
commands after it (which referenced a row that does not exist) are ignored, whatever the portal put in
them. A page that failed ends the batch early and the next batch resumes from the last good ID.
"""

from __future__ import annotations

import logging

from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

from adapters.bitrix24.client import Bitrix24Client, BitrixError

PAGE = 50
COMMANDS = 50
MAX_STALLS = 12
PROGRESS_EVERY = 10  # a progress line every 10 batch requests (25,000 records)
log = logging.getLogger("lifecycle.bitrix24")  # batches in a row that brought nothing (each after a wait with growing back-off)


def php_query(params: Mapping[str, Any]) -> str:
    """Encode nested params as PHP's http_build_query does (``filter[>ID]=5&select[0]=ID``)."""
    parts: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}[{quote(str(key), safe='')}]" if prefix else quote(str(key), safe=""), item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(f"{prefix}[{index}]", item)
        else:
            text = "" if value is None else ("Y" if value is True else "N" if value is False else str(value))
            parts.append(f"{prefix}={quote(text, safe='')}")

    walk("", params)
    return "&".join(parts)


def chain_batch(method: str, select: list[str], filters: Mapping[str, Any], after_id: int) -> dict[str, str]:
    """Fifty list commands, each continuing after the last ID of the one before."""
    commands = {}
    for k in range(COMMANDS):
        after = str(after_id) if k == 0 else f"$result[p{k - 1}][{PAGE - 1}][ID]"
        params = {"order": {"ID": "ASC"}, "filter": {**filters, ">ID": after}, "select": select, "start": -1}
        commands[f"p{k}"] = f"{method}?{php_query(params)}"
    return commands


async def iter_pages(
    client: Bitrix24Client, method: str, select: list[str], filters: Mapping[str, Any] | None = None
) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield every page of ``method`` (rows ordered by ID) matching ``filters``."""
    filters = dict(filters or {})
    # The first page alone: an incremental pull with a handful of changes ends here in one request
    # instead of a 50-command batch whose commands after the end would each re-run the query.
    first = await client.call(method, {"order": {"ID": "ASC"}, "filter": filters, "select": select, "start": -1})
    rows = first.get("result") or []
    if rows:
        yield rows
    if len(rows) < PAGE:
        return
    after_id = _last_id(rows, method)
    stalls = 0
    read, batches = len(rows), 0
    while True:
        batches += 1
        if batches % PROGRESS_EVERY == 0:
            log.info("%s: %d records read so far (after ID %d)", method, read, after_id)
        results, errors = await client.batch(chain_batch(method, select, filters, after_id))
        finished = False
        got_any = False
        for k in range(COMMANDS):
            key = f"p{k}"
            rows = results.get(key)
            if key in errors or not isinstance(rows, list):
                error = errors.get(key) or {}
                code = str(error.get("error", "")) if isinstance(error, dict) else ""
                if code.upper() == "OPERATION_TIME_LIMIT":
                    await client.wait_for_operating(method)
                elif not got_any:
                    raise BitrixError(f"Bitrix24 {method}: {code or 'error'}: {error.get('error_description', '') if isinstance(error, dict) else error}")
                break  # resume after the last good page
            ids = [i for i in map(_numeric_id, rows) if i is not None]  # a non-numeric ID is the mapper's to report
            if ids and ids[0] <= after_id:
                raise BitrixError(f"Bitrix24 {method}: the >ID chain went backwards at ID {after_id}; stopping to avoid a loop")
            if rows:
                yield rows
                after_id = ids[-1] if ids else after_id
                read += len(rows)
                got_any = True
            if len(rows) < PAGE:
                finished = True
                break
        if finished:
            return
        stalls = 0 if got_any else stalls + 1
        if stalls > MAX_STALLS:
            raise BitrixError(f"Bitrix24 {method}: no progress after {stalls} batches")


def _numeric_id(row: Any) -> int | None:
    try:
        return int(row["ID"])
    except (KeyError, TypeError, ValueError):
        return None


def _last_id(rows: list[dict[str, Any]], method: str) -> int:
    """The chain goes on after the page's last numeric ID (a corrupt ID is reported by the mapping)."""
    for row in reversed(rows):
        number = _numeric_id(row)
        if number is not None:
            return number
    raise BitrixError(f"Bitrix24 {method}: a page without one numeric ID; cannot continue the >ID chain")
