"""Product rows of deals and the catalogue names behind them (docs: api-reference/crm/universal/product-rows/
crm-item-productrow-list.md, api-reference/catalog/; shared/research/wave2-crm-apis.md §1.1).

``crm.item.productrow.list`` takes ``=ownerType`` and ``=ownerId``, and ``=`` "works with arrays as well",
so one command asks for the rows of many deals at once; a page is "always static: 50 records", so a
command is sized to fill one page: :class:`RowBatches` starts at 16 deals per command (three rows a deal)
and then takes ``ROWS_PER_COMMAND / average rows per deal`` from what it has read. 50 commands go in one
``batch`` request, so the lower bound is ``ceil(rows / 2,500)`` requests. A command whose deals have more
than 50 rows has a ``result_next``: its next page (``start=50``, ``100`` ...) goes into the next batch.
A command stopped by ``OPERATION_TIME_LIMIT`` is sent again after the method opens. Rows are ordered by
``id``, so pages never overlap.

Names and sections come from the catalogue: ``catalog.catalog.list`` (the product lists' ``iblockId``),
``catalog.product.list`` for the product ids seen in the rows (``=id`` an array: 50 ids a command, 50
commands a batch) and ``catalog.section.list``. Without the ``catalog`` scope (or on an error there), the
rows' own ``productName`` is kept and the section is unknown; the pull goes on.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from adapters.base import BadValue, ProductRow, RowError, valid_amount, valid_id
from adapters.bitrix24.client import Bitrix24Client, BitrixError, classify_command
from adapters.bitrix24.paging import php_query
from adapters.retry import Outcome

METHOD = "crm.item.productrow.list"
PAGE = 50
COMMANDS = 50
ROWS_PER_COMMAND = 48  # aim a little below a full page, so an average command needs no second page
FIRST_GUESS = 3.0  # rows per deal before any were read
MAX_STALLS = 12
log = logging.getLogger("lifecycle.bitrix24")


@dataclass(frozen=True)
class Command:
    deals: tuple[int, ...]
    start: int = 0

    def text(self) -> str:
        params = {"filter": {"=ownerType": "D", "=ownerId": list(self.deals)}, "order": {"id": "asc"}}
        if self.start:
            params["start"] = self.start
        return f"{METHOD}?{php_query(params)}"


class RowBatches:
    """The product rows of many deals as batches of ``crm.item.productrow.list`` commands: a pure object
    (no I/O), tested on hand-built answers. ``next_request()`` gives the next batch's commands (None: every
    deal's rows are read); ``feed(results, errors, nexts)`` takes its answer and returns the rows."""

    def __init__(self, deal_ids: Iterable[int]):
        self.waiting: deque[int] = deque(sorted(set(deal_ids)))
        self.more: deque[Command] = deque()  # second and later pages, and commands to send again
        self.sent: dict[str, Command] = {}
        self.first_pages = 0
        self.first_rows = 0
        self.deals_asked = 0
        self.blocked = False
        self.stalls = 0
        self.batches = 0
        self.rows = 0
        self.skipped: list[int] = []  # deals the portal would not show (deleted since they were listed)

    @property
    def per_command(self) -> int:
        average = self.first_rows / self.deals_asked if self.deals_asked and self.first_rows else FIRST_GUESS
        return max(1, min(500, int(ROWS_PER_COMMAND / max(average, 0.1))))

    def next_request(self) -> dict[str, str] | None:
        if not self.waiting and not self.more:
            return None
        commands: dict[str, str] = {}
        self.sent = {}
        size = self.per_command
        while len(commands) < COMMANDS and (self.more or self.waiting):
            if self.more:
                command = self.more.popleft()
            else:
                command = Command(tuple(self.waiting.popleft() for _ in range(min(size, len(self.waiting)))))
            key = f"r{len(commands)}"
            commands[key] = command.text()
            self.sent[key] = command
        self.batches += 1
        return commands

    def feed(self, results: Mapping[str, Any], errors: Mapping[str, Any], nexts: Mapping[str, Any] | None = None
             ) -> list[dict[str, Any]]:
        self.blocked = False
        out: list[dict[str, Any]] = []
        nexts = nexts or {}
        for key, command in self.sent.items():
            answer = results.get(key)
            rows = answer.get("productRows") if isinstance(answer, dict) else None
            if key in errors or not isinstance(rows, list):
                decision = classify_command(errors.get(key) or {})
                if decision.outcome in (Outcome.RATE_LIMITED, Outcome.RETRY):
                    self.blocked = self.blocked or decision.outcome is Outcome.RATE_LIMITED
                    self.more.append(command)
                    continue
                detail = (errors.get(key) or {}).get("error_description", "") if isinstance(errors.get(key), dict) else ""
                if len(command.deals) == 1 and decision.code.upper() in ("ACCESS_DENIED", "NOT_FOUND"):
                    self.skipped.append(command.deals[0])  # one deal, deleted since it was listed (or hidden)
                    continue
                raise BitrixError(f"Bitrix24 {METHOD}: {decision.code or 'error'}: {detail}")
            if command.start == 0:
                self.deals_asked += len(command.deals)
                self.first_rows += len(rows)
            out.extend(r for r in rows if isinstance(r, dict))
            following = nexts.get(key)
            if following not in (None, "", 0) or (key not in nexts and len(rows) >= PAGE and not nexts):
                start = int(following) if str(following or "").isdigit() else command.start + PAGE
                self.more.append(Command(command.deals, start))
        self.sent = {}
        self.rows += len(out)
        self.stalls = 0 if out or not self.blocked else self.stalls + 1
        if self.stalls > MAX_STALLS:
            raise BitrixError(f"Bitrix24 {METHOD}: no progress after {self.stalls} batches")
        return out


async def fetch_rows(client: Bitrix24Client, deal_ids: Iterable[int], stage: Any = None
                     ) -> tuple[list[dict[str, Any]], int]:
    """Every product row of these deals (raw camelCase rows), and the batch requests it took."""
    plan = RowBatches(deal_ids)
    rows: list[dict[str, Any]] = []
    while (commands := plan.next_request()) is not None:
        results, errors = await client.batch(commands)
        got = plan.feed(results, errors, client.last_batch_next)
        rows.extend(got)
        if stage is not None:
            stage.advance(len(got))
        if plan.blocked:
            await client.wait_for_operating(METHOD)
    if stage is not None:
        stage.done()
    return rows, plan.batches


@dataclass(frozen=True)
class CatalogItem:
    name: str | None
    section: str | None


async def fetch_catalogue(client: Bitrix24Client, product_ids: Iterable[int]) -> dict[int, CatalogItem]:
    """Name and section name of these catalogue products; {} when the catalogue cannot be read."""
    wanted = sorted({p for p in product_ids if p > 0})
    if not wanted:
        return {}
    try:
        answer = await client.call("catalog.catalog.list", {"select": ["id", "iblockId", "productIblockId"]})
        catalogs = (answer.get("result") or {}).get("catalogs") or []
        iblocks = [int(c["iblockId"]) for c in catalogs if isinstance(c, dict) and str(c.get("iblockId", "")).isdigit()]
        sections: dict[int, str] = {}
        items: dict[int, CatalogItem] = {}
        for iblock in iblocks:
            start: int | None = 0
            while start is not None:
                page = await client.call("catalog.section.list", {"select": ["id", "name", "iblockId"],
                                                                  "filter": {"iblockId": iblock}, "start": start})
                for s in (page.get("result") or {}).get("sections") or []:
                    sections[int(s["id"])] = str(s.get("name") or "")
                start = int(page["next"]) if str(page.get("next", "")).isdigit() else None
            remaining = [p for p in wanted if p not in items]
            chunks = [remaining[i:i + PAGE] for i in range(0, len(remaining), PAGE)]
            for first in range(0, len(chunks), COMMANDS):
                commands = {
                    f"c{k}": "catalog.product.list?" + php_query({
                        "select": ["id", "iblockId", "name", "iblockSectionId"],
                        "filter": {"iblockId": iblock, "=id": chunk}})
                    for k, chunk in enumerate(chunks[first:first + COMMANDS])}
                results, errors = await client.batch(commands)
                if errors:
                    raise BitrixError(f"catalog.product.list: {next(iter(errors.values()))}")
                for result in results.values():
                    for p in (result or {}).get("products") or []:
                        section = p.get("iblockSectionId")
                        items[int(p["id"])] = CatalogItem(p.get("name"), sections.get(int(section)) if section else None)
        return {p: items[p] for p in wanted if p in items}
    except (BitrixError, KeyError, TypeError, ValueError) as exc:
        log.warning("the product catalogue could not be read (%s); product names are taken from the deals' rows and "
                    "sections are unknown (give the webhook the 'catalog' scope)", str(exc)[:200])
        return {}


def to_rows(raw: list[dict[str, Any]], catalogue: Mapping[int, CatalogItem]) -> tuple[list[ProductRow], list[RowError]]:
    """The rows as the mirror keeps them; a malformed row is reported by its id and skipped."""
    out: list[ProductRow] = []
    errors: list[RowError] = []
    for row in raw:
        try:
            out.append(to_row(row, catalogue))
        except (BadValue, KeyError, TypeError, ValueError) as exc:
            rid = _int_or_none(row.get("id"))
            errors.append(RowError(METHOD, rid or 0, None, f"product row {str(row.get('id'))[:20]!r}: {exc}", None))
    return out, errors


def to_row(row: Mapping[str, Any], catalogue: Mapping[int, CatalogItem]) -> ProductRow:
    line = valid_id(row.get("id"), "id")
    deal = valid_id(row.get("ownerId"), "ownerId")
    product = row.get("productId")
    product_id = int(product) if product not in (None, "", 0, "0") else 0
    if product_id < 0:
        raise BadValue(f"productId {product!r} is not an id")
    quantity = float(row.get("quantity") if row.get("quantity") not in (None, "") else 1)
    valid_amount(quantity, "quantity", row.get("quantity"))
    price = row.get("price")
    price_value = None if price in (None, "") else valid_amount(float(price), "price", price)
    known = catalogue.get(product_id) if product_id else None
    name = (known.name if known and known.name else None) or (str(row.get("productName") or "") or None)
    return ProductRow(deal_id=deal, line=line, product_id=str(product_id) if product_id else None,
                      product_name=name, section=known.section if known else None, quantity=quantity,
                      price=price_value)


def _int_or_none(value: Any) -> int | None:
    try:
        return valid_id(value)
    except BadValue:
        return None


def lower_bound(rows: int) -> int:
    """The fewest batch requests that can carry ``rows`` rows (50 commands of 50 rows)."""
    return math.ceil(rows / (PAGE * COMMANDS)) if rows else 0
