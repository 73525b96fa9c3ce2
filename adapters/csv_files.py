"""CSV folder source (``[crm] kind = "csv"``).

Files in UTF-8 (an Excel BOM is fine) or, with ``encoding = "cp1251"`` (or detected: a file whose non-ASCII
lines are none of them UTF-8 is read as Windows-1251, what Russian Excel saves as "CSV"), another
ASCII-compatible encoding; comma-separated unless ``delimiter`` says otherwise:

* ``contacts.csv``: ``id,name,phone,email,birthday,responsible_id,created_at``; any other column becomes
  a custom field under its header name.
* ``deals.csv``: ``id,contact_id,company_id,status,amount,currency,created_at,closed_at``; ``status`` is
  ``won``, ``lost`` or ``open``; a won deal needs ``closed_at``.
* ``companies.csv`` (optional; required for ``customer = "company"``): ``id,name,...`` with the same
  optional columns as contacts.
* ``deal_products.csv`` (optional): ``deal_id,product_id,product_name,quantity,price`` and optionally
  ``section`` and ``sku``; what each deal contained, one line per product. ``deal_id`` and one of
  ``product_id`` / ``product_name`` are required; ``quantity`` defaults to 1; ``price`` is the unit price.
  When the file is there, the rows of every deal are replaced by the file's (a deal missing from it has
  none); without it, product rows are not known.

Only ``id`` is a required column (plus ``status`` for deals). Ids are positive integers up to 2**63-1, as
in Bitrix24 and amoCRM. Dates are ISO 8601: ``2024-05-01``, ``2024-05-01T14:30:00`` (taken in the CRM
time zone) or with an offset (``...+03:00``, ``...Z``), in the years 1900..2200. Amounts are finite and
at most 1e15 (the bounds in adapters/base.py, shared with the CRM sources).

A malformed row (a bad value, a byte that is not in the file's encoding, a field over the csv module's
128 KB limit) is reported with its file, line and column, skipped and counted; it never stops the run
and never drops good rows. When the bad row's id is readable, the copy already in the mirror is kept,
not deleted.
"""

from __future__ import annotations

import codecs
import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

from adapters.base import (
    AdapterStore,
    BadValue,
    CrmKit,
    Customer,
    Deal,
    Entity,
    ProductRow,
    PullResult,
    RowError,
    valid_amount,
    valid_date,
    valid_id,
    valid_timestamp,
)

CUSTOMER_COLUMNS = ("id", "name", "phone", "email", "birthday", "responsible_id", "created_at")
DEAL_COLUMNS = ("id", "contact_id", "company_id", "status", "amount", "currency", "created_at", "closed_at")
DEAL_STATUSES = ("won", "lost", "open")
SAMPLE_BYTES = 1 << 20  # how much of a file "auto" looks at to tell UTF-8 from Windows-1251
log = logging.getLogger("lifecycle.csv")


class SourceError(Exception):
    """The source as a whole cannot be read (missing file, missing required column)."""


class _BadValue(ValueError):
    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column = column


def _positive_int(value: str, column: str, *, required: bool) -> int | None:
    value = value.strip()
    if not value:
        if required:
            raise _BadValue(column, "is empty; a positive integer id is required")
        return None
    try:
        return valid_id(value, column)
    except BadValue:
        raise _BadValue(column, f"{value[:40]!r} is not a positive integer id (1 to 2**63-1)") from None


def _date(value: str, column: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise _BadValue(column, f"{value[:40]!r} is not a date (YYYY-MM-DD)") from None
    try:
        return valid_date(day, repr(value))
    except BadValue as bad:
        raise _BadValue(column, str(bad)) from None


def _timestamp(value: str, column: str, tz: ZoneInfo) -> int | None:
    """ISO 8601 date or date-time -> UTC epoch seconds; naive values are in the CRM time zone."""
    value = value.strip()
    if not value:
        return None
    try:
        if len(value) == 10:
            moment = datetime.combine(date.fromisoformat(value), time(0, 0))
        else:
            moment = datetime.fromisoformat(value)
    except ValueError:
        raise _BadValue(column, f"{value[:40]!r} is not an ISO 8601 date or date-time in the years 1900..2200") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    try:
        return valid_timestamp(int(moment.timestamp()), repr(value))
    except (BadValue, OverflowError, ValueError):
        raise _BadValue(column, f"{value[:40]!r} is outside the years 1900..2200") from None


def _amount(value: str, column: str) -> float:
    value = value.strip().replace(" ", "").replace("\u00a0", "")
    if not value:
        return 0.0
    try:
        number = float(value.replace(",", ".") if value.count(",") == 1 and "." not in value else value)
    except ValueError:
        raise _BadValue(column, f"{value[:40]!r} is not a number") from None
    try:
        return valid_amount(number, "amount", value)
    except BadValue as bad:
        raise _BadValue(column, str(bad)) from None


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


@dataclass(frozen=True)
class CsvSettings:
    path: Path  # the folder holding contacts.csv and deals.csv (companies.csv)
    timezone: str = "Europe/Moscow"
    customer: Entity = "contact"
    delimiter: str = ","
    encoding: str = "auto"  # "auto" (UTF-8, or Windows-1251 when detected), "utf-8", "cp1251", ...


class CsvSource:
    """Reads a folder of CSV exports. Every pull is a full snapshot."""

    @classmethod
    def from_settings(cls, settings: CsvSettings, store: AdapterStore | None = None) -> CsvSource:
        """The kit's source: files only, so the store is not needed."""
        return cls(settings.path, timezone=settings.timezone, customer=settings.customer,
                   delimiter=settings.delimiter, encoding=settings.encoding)

    def __init__(self, folder: Path, *, timezone: str, customer: Entity = "contact", delimiter: str = ",",
                 encoding: str = "auto"):
        self.folder = Path(folder)
        self.tz = ZoneInfo(timezone)
        self.customer = customer
        self.delimiter = delimiter
        self.encoding = encoding

    def pull(self) -> PullResult:
        if not self.folder.is_dir():
            raise SourceError(f"CSV folder {self.folder} does not exist; set [crm] path to the folder with contacts.csv")
        errors: list[RowError] = []
        kept_customers: set[tuple[Entity, int]] = set()
        customers: list[Customer] = []
        files: list[tuple[str, Entity, bool]] = [("contacts.csv", "contact", True), ("companies.csv", "company", False)]
        for name, entity, required in files:
            path = self.folder / name
            if not path.exists():
                if required or (entity == "company" and self.customer == "company"):
                    raise SourceError(f"{path} not found; the CSV source needs it (see README, 'CSV format')")
                continue
            got, kept = self._read_customers(path, entity, errors)
            customers.extend(got)
            kept_customers |= kept
        deals_path = self.folder / "deals.csv"
        if not deals_path.exists():
            raise SourceError(f"{deals_path} not found; the CSV source needs it (see README, 'CSV format')")
        deals, kept_deals = self._read_deals(deals_path, errors)
        products: dict = {}
        products_path = self.folder / "deal_products.csv"
        if products_path.exists():
            every = {d.id for d in deals} | kept_deals
            rows = [r for r in self._read_products(products_path, errors) if r.deal_id in every]
            products = {"product_rows": rows, "product_deals": frozenset(every)}
        return PullResult(
            customers=customers,
            deals=deals,
            snapshot=True,
            errors=errors,
            kept_customer_ids=frozenset(kept_customers),
            kept_deal_ids=frozenset(kept_deals),
            **products,
        )

    # -- reading ---------------------------------------------------------------------------------

    def _encoding(self, path: Path) -> str:
        """The configured encoding, or for "auto": UTF-8 unless no non-ASCII line of the file's start is
        UTF-8 while some are not (then Windows-1251, what Russian Excel saves as "CSV")."""
        if self.encoding != "auto":
            return self.encoding
        with path.open("rb") as handle:
            sample = handle.read(SAMPLE_BYTES)
        if len(sample) == SAMPLE_BYTES and b"\n" in sample:
            sample = sample[: sample.rfind(b"\n")]  # no line cut in half
        utf8 = other = 0
        for line in sample.split(b"\n"):
            if line.isascii():
                continue
            try:
                line.decode("utf-8")
                utf8 += 1
            except UnicodeDecodeError:
                other += 1
        if other and not utf8:
            log.info("%s is not UTF-8: read as Windows-1251 (set [crm] encoding to choose another)", path.name)
            return "cp1251"
        return "utf-8"

    def _lines(self, path: Path, encoding: str, bad: dict[int, str]) -> Iterator[str]:
        """Decoded physical lines (ended by \\n, \\r\\n or a lone \\r, as text mode with ``newline=""`` splits
        them); a line that does not decode is noted in ``bad`` (by line number)."""
        with path.open("rb") as handle:
            pieces = (piece for chunk in handle for piece in chunk.splitlines(keepends=True))
            for number, raw in enumerate(pieces, 1):
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                try:
                    yield raw.decode(encoding)
                except UnicodeDecodeError as exc:
                    hint = ('set [crm] encoding = "cp1251" if this is a Windows export, or save the file as UTF-8'
                            if encoding.replace("_", "-").lower() in ("utf-8", "utf8") else "check the file's encoding")
                    bad[number] = f"byte 0x{raw[exc.start]:02x} at position {exc.start + 1} is not {encoding} text ({hint})"
                    yield raw.decode(encoding, errors="replace")

    def _rows(self, path: Path, required: tuple[str, ...], errors: list[RowError]):
        """Yield (line number, row dict) for each data row whose shape matches the header."""
        bad: dict[int, str] = {}
        reader = csv.reader(self._lines(path, self._encoding(path), bad), delimiter=self.delimiter)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise SourceError(f"{path} is empty; it needs a header line starting with 'id'") from None
        except csv.Error as exc:
            raise SourceError(f"{path}:1: the header cannot be read: {exc}") from None
        if 1 in bad:
            raise SourceError(f"{path}:1: the header line is unreadable: {bad[1]}")
        missing = [c for c in required if c not in header]
        if missing:
            raise SourceError(
                f"{path}: header lacks column(s) {', '.join(missing)}; found {', '.join(header) or 'nothing'}"
            )
        dupes = {h for h in header if header.count(h) > 1}
        if dupes:
            raise SourceError(f"{path}: header repeats column(s) {', '.join(sorted(dupes))}")
        line = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # a field over csv.field_size_limit(); the reader goes on after it
                start, line = line + 1, reader.line_num
                errors.append(RowError(path.name, start, None, f"{exc}: the row is skipped (a value over 128 KB)"))
                continue
            start, line = line + 1, reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            undecodable = [n for n in range(start, line + 1) if n in bad]
            if undecodable:
                n = undecodable[0]
                errors.append(RowError(path.name, n, None, bad[n], _readable_id(row, header)))
                continue
            if len(row) != len(header):
                errors.append(
                    RowError(path.name, start, None, f"expected {len(header)} columns, found {len(row)}")
                )
                continue
            yield start, dict(zip(header, row))

    def _read_customers(
        self, path: Path, entity: Entity, errors: list[RowError]
    ) -> tuple[list[Customer], set[tuple[Entity, int]]]:
        out: list[Customer] = []
        seen: dict[int, int] = {}
        kept: set[tuple[Entity, int]] = set()
        before = len(errors)
        for line, row in self._rows(path, ("id",), errors):
            record_id: int | None = None
            try:
                record_id = _positive_int(row["id"], "id", required=True)
                if record_id in seen:
                    record_id = None  # the first row with this id stands
                    raise _BadValue("id", f"duplicate id {row['id'].strip()} (first on line {seen[int(row['id'])]})")
                customer = Customer(
                    id=record_id,
                    entity=entity,
                    name=_text(row.get("name")),
                    phone=_text(row.get("phone")),
                    email=_text(row.get("email")),
                    birthday=_date(row.get("birthday", ""), "birthday"),
                    responsible_id=_text(row.get("responsible_id")),
                    created_ts=_timestamp(row.get("created_at", ""), "created_at", self.tz),
                    fields={k: v.strip() for k, v in row.items() if k not in CUSTOMER_COLUMNS and v.strip()},
                )
            except _BadValue as bad:
                errors.append(RowError(path.name, line, bad.column, str(bad), record_id))
                if record_id is not None:
                    seen.setdefault(record_id, line)
                    kept.add((entity, record_id))
                continue
            seen[record_id] = line
            out.append(customer)
        kept |= {(entity, e.record_id) for e in errors[before:] if e.record_id is not None}
        return out, kept

    def _read_deals(self, path: Path, errors: list[RowError]) -> tuple[list[Deal], set[int]]:
        out: list[Deal] = []
        seen: dict[int, int] = {}
        kept: set[int] = set()
        before = len(errors)
        for line, row in self._rows(path, ("id", "status"), errors):
            record_id: int | None = None
            try:
                record_id = _positive_int(row["id"], "id", required=True)
                if record_id in seen:
                    record_id = None
                    raise _BadValue("id", f"duplicate id {row['id'].strip()} (first on line {seen[int(row['id'])]})")
                status = row["status"].strip().lower()
                if status not in DEAL_STATUSES:
                    raise _BadValue("status", f"{row['status']!r} is not one of won, lost, open")
                closed_ts = _timestamp(row.get("closed_at", ""), "closed_at", self.tz)
                if status == "won" and closed_ts is None:
                    raise _BadValue("closed_at", "a won deal needs closed_at (the purchase date)")
                deal = Deal(
                    id=record_id,
                    status=status,  # type: ignore[arg-type]
                    contact_id=_positive_int(row.get("contact_id", ""), "contact_id", required=False),
                    company_id=_positive_int(row.get("company_id", ""), "company_id", required=False),
                    amount=_amount(row.get("amount", ""), "amount"),
                    currency=_text(row.get("currency")),
                    created_ts=_timestamp(row.get("created_at", ""), "created_at", self.tz),
                    closed_ts=closed_ts,
                )
            except _BadValue as bad:
                errors.append(RowError(path.name, line, bad.column, str(bad), record_id))
                if record_id is not None:
                    seen.setdefault(record_id, line)
                    kept.add(record_id)
                continue
            seen[record_id] = line
            out.append(deal)
        kept |= {e.record_id for e in errors[before:] if e.record_id is not None}
        return out, kept


    def _read_products(self, path: Path, errors: list[RowError]) -> list[ProductRow]:
        out: list[ProductRow] = []
        for line, row in self._rows(path, ("deal_id",), errors):
            try:
                deal_id = _positive_int(row["deal_id"], "deal_id", required=True)
                product_id = _text(row.get("product_id"))
                name = _text(row.get("product_name"))
                if product_id is None and name is None:
                    raise _BadValue("product_id", "product_id and product_name are both empty; give one of them")
                if product_id is not None and len(product_id) > 64:
                    raise _BadValue("product_id", f"{product_id[:40]!r}... is longer than 64 characters")
                quantity_text = (row.get("quantity") or "").strip()
                quantity = _amount(quantity_text, "quantity") if quantity_text else 1.0
                price_text = (row.get("price") or "").strip()
                price = _amount(price_text, "price") if price_text else None
            except _BadValue as bad:
                errors.append(RowError(path.name, line, bad.column, str(bad)))
                continue
            assert deal_id is not None
            out.append(ProductRow(deal_id=deal_id, line=line, product_id=product_id, product_name=name,
                                  section=_text(row.get("section")), quantity=quantity, price=price,
                                  sku=_text(row.get("sku"))))
        return out


def _readable_id(row: list[str], header: list[str]) -> int | None:
    """The id of a row skipped for its encoding, when that much of it is clean (its stored copy stays)."""
    if "id" not in header or len(row) != len(header):
        return None
    try:
        return valid_id(row[header.index("id")])
    except BadValue:
        return None


# CSV files can be read, not written: no tag writer, no action sink.
KIT: CrmKit[CsvSettings] = CrmKit(name="csv", settings=CsvSettings, make_source=CsvSource.from_settings,
                                  needs_store=False)
