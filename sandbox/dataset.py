"""The sandboxes' own reader of the project's CSV folder format, and their own small record types.

The emulators are seeded from this module, never from the product's ``adapters.csv_files.CsvSource``:
a test that imports a folder into a sandbox and then pulls it through the product compares the product
with an independent reading of the same files, so a CSV bug in the product cannot hide behind a test
that compares the product with itself. ``sandbox/`` imports nothing from ``adapters/`` or ``connector/``
(tests/test_import_layers.py checks it).

The format (docs/csv.md), UTF-8 with or without a BOM, comma-separated:

* ``contacts.csv`` (required): ``id,name,phone,email,birthday,responsible_id,created_at``; every other
  column is a custom field named after its header (empty values are left out).
* ``companies.csv`` (optional): ``id,name,...`` with the same optional columns.
* ``deals.csv`` (required): ``id,contact_id,company_id,status,amount,currency,created_at,closed_at``;
  ``status`` is won / lost / open (any case); a won deal needs ``closed_at``.
* ``deal_products.csv`` (optional): ``deal_id,product_id,product_name,quantity,price``, one line per
  product row of a deal. ``deal_id`` must be a deal of deals.csv; ``product_id`` is a positive catalogue
  id or empty (a row not from the catalogue: then ``product_name`` is required); ``quantity`` a number
  > 0 (default 1); ``price`` the unit price (default 0). The catalogue is the distinct ``product_id``s,
  each with the name and price of its first row.

Only ``id`` (and ``status`` for deals) must be present. Ids are positive integers. Dates are ISO 8601
(``2024-05-01``, ``2024-05-01T14:30:00`` in the CRM time zone, or with an offset). Amounts accept
``1234.5`` and ``1 234,50``. A bad row is skipped and reported as text, ``deals.csv:12, column 'status':
...``; the first row with a given id stands. A missing folder, a missing required file or a header
without a required column raises :class:`DatasetError`.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterable, Iterator
from zoneinfo import ZoneInfo

KNOWN_CUSTOMER_COLUMNS = frozenset({"id", "name", "phone", "email", "birthday", "responsible_id", "created_at"})


@dataclass(frozen=True, slots=True)
class SeedCustomer:
    """One contact (or company) to load into an emulated CRM; timestamps are UTC epoch seconds."""

    id: int
    entity: str = "contact"  # "contact" or "company"
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    birthday: date | None = None
    responsible_id: str | None = None
    created_ts: int | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SeedDeal:
    """One deal to load; ``status`` is "won", "lost" or "open"."""

    id: int
    status: str
    contact_id: int | None = None
    company_id: int | None = None
    amount: float = 0.0
    currency: str | None = None
    created_ts: int | None = None
    closed_ts: int | None = None


@dataclass(frozen=True, slots=True)
class SeedProduct:
    """A catalogue product; ``section`` and ``sku`` are known for generated products only."""

    id: int
    name: str
    price: float = 0.0
    section: str | None = None
    sku: str | None = None
    service: bool = False


@dataclass(frozen=True, slots=True)
class SeedProductRow:
    """One product row of a deal; ``product_id`` None = not from the catalogue."""

    deal_id: int
    product_id: int | None
    product_name: str
    quantity: float = 1.0
    price: float = 0.0


@dataclass
class Dataset:
    customers: list[SeedCustomer] = field(default_factory=list)
    deals: list[SeedDeal] = field(default_factory=list)
    products: list[SeedProduct] = field(default_factory=list)
    product_rows: list[SeedProductRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per skipped row


class DatasetError(Exception):
    """The folder as a whole cannot be read (what to fix is in the message)."""


class _Bad(Exception):
    def __init__(self, column: str | None, text: str):
        super().__init__(text)
        self.column = column


# -- cell readers ----------------------------------------------------------------------------------

def _clean(cell: str | None) -> str:
    return (cell or "").strip()


def _id(cell: str | None, column: str, *, required: bool = False) -> int | None:
    text = _clean(cell)
    if text == "":
        if required:
            raise _Bad(column, "is empty; a positive integer id is required")
        return None
    if not re.fullmatch(r"\+?[0-9]+", text) or not 1 <= int(text) < 2**63:
        raise _Bad(column, f"{text[:40]!r} is not a positive integer id (1 to 2**63-1)")
    return int(text)


def _day(cell: str | None, column: str) -> date | None:
    text = _clean(cell)
    if text == "":
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise _Bad(column, f"{text!r} is not a date (YYYY-MM-DD)") from None


def _epoch(cell: str | None, column: str, tz: ZoneInfo) -> int | None:
    text = _clean(cell)
    if text == "":
        return None
    try:
        moment = datetime.fromisoformat(text)  # a bare date is midnight
    except ValueError:
        raise _Bad(column, f"{text!r} is not an ISO 8601 date or date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return int(moment.timestamp())


def _money(cell: str | None, column: str) -> float:
    text = "".join(ch for ch in _clean(cell) if ch not in " \u00a0")
    if text == "":
        return 0.0
    if "," in text and "." not in text and text.count(",") == 1:
        text = text.replace(",", ".")  # a decimal comma: "1234,50"
    try:
        value = float(text)
    except ValueError:
        raise _Bad(column, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise _Bad(column, f"{text!r} is not a finite number")
    return value


def _opt(cell: str | None) -> str | None:
    return _clean(cell) or None


# -- files -----------------------------------------------------------------------------------------

def _records(path: Path, required: tuple[str, ...], problems: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(first line of the row, {column: cell}) for every non-blank row of the right width."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None:
            raise DatasetError(f"{path} is empty; it needs a header line starting with 'id'")
        header = [name.strip() for name in header]
        absent = [name for name in required if name not in header]
        if absent:
            raise DatasetError(f"{path}: header lacks column(s) {', '.join(absent)}; "
                               f"found {', '.join(header) or 'nothing'}")
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise DatasetError(f"{path}: header repeats column(s) {', '.join(repeated)}")
        ended = rows.line_num
        for cells in rows:
            begun, ended = ended + 1, rows.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                problems.append(f"{path.name}:{begun}: expected {len(header)} columns, found {len(cells)}")
                continue
            yield begun, dict(zip(header, cells))


def _problem(file: str, line: int, bad: _Bad) -> str:
    where = f", column '{bad.column}'" if bad.column else ""
    return f"{file}:{line}{where}: {bad}"


def _new_id(seen: dict[int, int], cell: str, line: int) -> int:
    """The row's id; a repeated id is a bad row (the first row with it stands, even a bad one)."""
    record_id = _id(cell, "id", required=True)
    assert record_id is not None
    if record_id in seen:
        raise _Bad("id", f"duplicate id {_clean(cell)} (first on line {seen[record_id]})")
    seen[record_id] = line
    return record_id


def _customers(path: Path, entity: str, tz: ZoneInfo, problems: list[str]) -> list[SeedCustomer]:
    out: list[SeedCustomer] = []
    seen: dict[int, int] = {}
    for line, row in _records(path, ("id",), problems):
        try:
            record_id = _new_id(seen, row["id"], line)
            out.append(SeedCustomer(
                id=record_id, entity=entity, name=_opt(row.get("name")), phone=_opt(row.get("phone")),
                email=_opt(row.get("email")), birthday=_day(row.get("birthday"), "birthday"),
                responsible_id=_opt(row.get("responsible_id")),
                created_ts=_epoch(row.get("created_at"), "created_at", tz),
                fields={name: cell.strip() for name, cell in row.items()
                        if name not in KNOWN_CUSTOMER_COLUMNS and cell.strip()},
            ))
        except _Bad as bad:
            problems.append(_problem(path.name, line, bad))
    return out


def _deals(path: Path, tz: ZoneInfo, problems: list[str]) -> list[SeedDeal]:
    out: list[SeedDeal] = []
    seen: dict[int, int] = {}
    for line, row in _records(path, ("id", "status"), problems):
        try:
            record_id = _new_id(seen, row["id"], line)
            status = row["status"].strip().lower()
            if status not in ("won", "lost", "open"):
                raise _Bad("status", f"{row['status']!r} is not one of won, lost, open")
            closed = _epoch(row.get("closed_at"), "closed_at", tz)
            if status == "won" and closed is None:
                raise _Bad("closed_at", "a won deal needs closed_at (the purchase date)")
            out.append(SeedDeal(
                id=record_id, status=status, contact_id=_id(row.get("contact_id"), "contact_id"),
                company_id=_id(row.get("company_id"), "company_id"), amount=_money(row.get("amount"), "amount"),
                currency=_opt(row.get("currency")), created_ts=_epoch(row.get("created_at"), "created_at", tz),
                closed_ts=closed,
            ))
        except _Bad as bad:
            problems.append(_problem(path.name, line, bad))
    return out


def _product_rows(path: Path, deal_ids: set[int], problems: list[str]) -> tuple[list[SeedProduct], list[SeedProductRow]]:
    products: dict[int, SeedProduct] = {}
    rows: list[SeedProductRow] = []
    for line, row in _records(path, ("deal_id",), problems):
        try:
            deal_id = _id(row["deal_id"], "deal_id", required=True)
            assert deal_id is not None
            if deal_id not in deal_ids:
                raise _Bad("deal_id", f"deal {deal_id} is not in deals.csv (or its row was skipped)")
            product_id = _id(row.get("product_id"), "product_id")
            name = _clean(row.get("product_name"))
            if product_id is None and not name:
                raise _Bad("product_name", "is empty; a row without product_id needs a product_name")
            quantity = _money(row.get("quantity"), "quantity") if _clean(row.get("quantity")) else 1.0
            if quantity <= 0:
                raise _Bad("quantity", f"{_clean(row.get('quantity'))!r} is not a quantity above 0")
            price = _money(row.get("price"), "price")
            if product_id is not None:
                known = products.setdefault(product_id, SeedProduct(product_id, name or f"Product #{product_id}", price))
                name = name or known.name
            rows.append(SeedProductRow(deal_id, product_id, name, quantity, price))
        except _Bad as bad:
            problems.append(_problem(path.name, line, bad))
    return sorted(products.values(), key=lambda p: p.id), rows


def read_folder(folder: str | Path, *, timezone: str) -> Dataset:
    """Read contacts.csv, companies.csv and deal_products.csv (if present) and deals.csv from ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"CSV folder {folder} does not exist; give the folder that holds contacts.csv")
    tz = ZoneInfo(timezone)
    data = Dataset()
    for name in ("contacts.csv", "deals.csv"):
        if not (folder / name).is_file():
            raise DatasetError(f"{folder / name} not found; a CSV folder needs contacts.csv and deals.csv")
    data.customers += _customers(folder / "contacts.csv", "contact", tz, data.problems)
    if (folder / "companies.csv").is_file():
        data.customers += _customers(folder / "companies.csv", "company", tz, data.problems)
    data.deals = _deals(folder / "deals.csv", tz, data.problems)
    if (folder / "deal_products.csv").is_file():
        data.products, data.product_rows = _product_rows(
            folder / "deal_products.csv", {d.id for d in data.deals}, data.problems)
    return data


# -- synthetic frames (sandbox.synthetic.generate) ---------------------------------------------------

def from_frames(customers_df: Any, deals_df: Any) -> tuple[Iterable[SeedCustomer], Iterable[SeedDeal]]:
    """The polars frames of :func:`sandbox.synthetic.generate` as seed records (lazily)."""
    customers = (
        SeedCustomer(id=int(r["id"]), name=r["name"], phone=r["phone"], email=r["email"], birthday=r["birthday"],
                     responsible_id=r["responsible_id"], created_ts=int(r["created_ts"]),
                     fields=json.loads(r["fields"]) if r["fields"] else {})
        for r in customers_df.iter_rows(named=True)
    )
    deals = (
        SeedDeal(id=int(r["id"]), status=r["status"], contact_id=r["contact_id"], company_id=r["company_id"],
                 amount=float(r["amount"]), currency=r["currency"], created_ts=int(r["created_ts"]),
                 closed_ts=None if r["closed_ts"] is None else int(r["closed_ts"]))
        for r in deals_df.iter_rows(named=True)
    )
    return customers, deals
