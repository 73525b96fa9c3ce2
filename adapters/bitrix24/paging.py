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
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from adapters.bitrix24.client import Bitrix24Client, BitrixError, classify_command
from adapters.retry import Outcome

PAGE = 50
COMMANDS = 50
MAX_STALLS = 12  # batches in a row that brought nothing (each after a wait with growing back-off)
PROGRESS_EVERY = 10  # a progress line every 10 batch requests (25,000 records)
log = logging.getLogger("lifecycle.bitrix24")


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


@dataclass(frozen=True)
class Request:
    """What to send next: ``client.call(method, params)``, or for ``batch`` ``client.batch(params)``."""

    method: str
    params: dict[str, Any]
    batch: bool = False


class IdChain:
    """The ``start=-1`` + ``>ID`` chain as a pure object: no I/O, so it is tested on hand-built answers.

    ``next_request()`` says what to send (None: the list is complete); ``feed(answer)`` takes the answer
    (the call's whole answer for the first page, ``(results, errors)`` of a batch after it) and returns
    the pages to hand on. After a batch stopped by ``OPERATION_TIME_LIMIT`` ``blocked`` is set: wait for
    the method to open again, then ask ``next_request()`` (it resumes after the last good ID). A page
    that does not move the chain forward (an ID not above the previous page's last) raises
    :class:`BitrixError` instead of looping, and so do more than :data:`MAX_STALLS` batches in a row
    that brought nothing.
    """

    def __init__(self, method: str, select: list[str], filters: Mapping[str, Any] | None = None):
        self.method = method
        self.select = list(select)
        self.filters = dict(filters or {})
        self.after_id: int | None = None  # None: the first page has not been read
        self.done = False
        self.blocked = False
        self.stalls = 0
        self.batches = 0
        self.read = 0

    def next_request(self) -> Request | None:
        if self.done:
            return None
        if self.after_id is None:
            # The first page alone: an incremental pull with a handful of changes ends here in one request
            # instead of a 50-command batch whose commands after the end would each re-run the query.
            return Request(self.method, {"order": {"ID": "ASC"}, "filter": self.filters, "select": self.select, "start": -1})
        self.batches += 1
        return Request("batch", chain_batch(self.method, self.select, self.filters, self.after_id), batch=True)

    def feed(self, answer: Any) -> list[list[dict[str, Any]]]:
        self.blocked = False
        if self.after_id is None:
            return self._feed_first(answer if isinstance(answer, dict) else {})
        results, errors = answer
        return self._feed_batch(results or {}, errors or {})

    def _feed_first(self, answer: dict[str, Any]) -> list[list[dict[str, Any]]]:
        rows = answer.get("result") or []
        if not isinstance(rows, list):
            raise BitrixError(f"Bitrix24 {self.method}: the answer's result is not a list")
        self.read += len(rows)
        if len(rows) < PAGE:
            self.done = True
        else:
            self.after_id = _last_id(rows, self.method)
        return [rows] if rows else []

    def _feed_batch(self, results: Mapping[str, Any], errors: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
        assert self.after_id is not None
        pages: list[list[dict[str, Any]]] = []
        for k in range(COMMANDS):
            key = f"p{k}"
            rows = results.get(key)
            if key in errors or not isinstance(rows, list):
                error = errors.get(key) or {}
                decision = classify_command(error)
                if decision.outcome is Outcome.RATE_LIMITED:  # OPERATION_TIME_LIMIT: the method is closed for now
                    self.blocked = True
                elif not pages:
                    detail = error.get("error_description", "") if isinstance(error, dict) else error
                    raise BitrixError(f"Bitrix24 {self.method}: {decision.code or 'error'}: {detail}")
                break  # resume after the last good page
            ids = [i for i in map(_numeric_id, rows) if i is not None]  # a non-numeric ID is the mapper's to report
            if ids and (ids[0] <= self.after_id or ids[-1] <= self.after_id):
                raise BitrixError(f"Bitrix24 {self.method}: the >ID chain went backwards at ID {self.after_id}; "
                                  "stopping to avoid a loop")
            if rows:
                pages.append(rows)
                self.after_id = ids[-1] if ids else self.after_id
                self.read += len(rows)
            if len(rows) < PAGE:
                self.done = True
                return pages
        self.stalls = 0 if pages else self.stalls + 1
        if self.stalls > MAX_STALLS:
            raise BitrixError(f"Bitrix24 {self.method}: no progress after {self.stalls} batches")
        return pages


async def iter_pages(
    client: Bitrix24Client, method: str, select: list[str], filters: Mapping[str, Any] | None = None,
    first: dict[str, Any] | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield every page of ``method`` (rows ordered by ID) matching ``filters``: the I/O around :class:`IdChain`.
    ``first``: the first page's answer when it was read already (:func:`first_pages`)."""
    chain = IdChain(method, select, filters)
    if first is not None:
        for rows in chain.feed(first):
            yield rows
    while (request := chain.next_request()) is not None:
        if request.batch:
            if chain.batches % PROGRESS_EVERY == 0:
                log.info("%s: %d records read so far (after ID %d)", method, chain.read, chain.after_id)
            answer: Any = await client.batch(request.params)
        else:
            answer = await client.call(request.method, request.params)
        for rows in chain.feed(answer):
            yield rows
        if chain.blocked:
            await client.wait_for_operating(method)


async def first_pages(client: Bitrix24Client, specs: list[tuple[str, list[str], Mapping[str, Any]]]
                      ) -> list[dict[str, Any] | None]:
    """The first page of several lists in one batch request (``specs``: method, select, filters); a list
    whose command failed gets None and reads its first page alone in :func:`iter_pages`."""
    commands = {}
    for i, (method, select, filters) in enumerate(specs):
        request = IdChain(method, select, filters).next_request()
        assert request is not None
        commands[f"f{i}"] = f"{method}?{php_query(request.params)}"
    results, errors = await client.batch(commands)
    out: list[dict[str, Any] | None] = []
    for i in range(len(specs)):
        rows = results.get(f"f{i}")
        out.append({"result": rows} if isinstance(rows, list) and f"f{i}" not in errors else None)
    return out


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
