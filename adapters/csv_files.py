"""CSV folder source (``[crm] kind = "csv"``).

Files, all UTF-8 (an Excel BOM is fine), comma-separated unless ``delimiter`` says otherwise:

* ``contacts.csv``: ``id,name,phone,email,birthday,responsible_id,created_at``; any other column becomes
  a custom field under its header name.
* ``deals.csv``: ``id,contact_id,company_id,status,amount,currency,created_at,closed_at``; ``status`` is
  ``won``, ``lost`` or ``open``; a won deal needs ``closed_at``.
* ``companies.csv`` (optional; required for ``customer = "company"``): ``id,name,...`` with the same
  optional columns as contacts.

Only ``id`` is a required column (plus ``status`` for deals). Ids are positive integers, as in Bitrix24
and amoCRM. Dates are ISO 8601: ``2024-05-01``, ``2024-05-01T14:30:00`` (taken in the CRM time zone) or
with an offset (``...+03:00``, ``...Z``).

A malformed row is reported with its file, line and column, skipped and counted; it never stops the
run and never drops good rows. When the bad row's id is readable, the copy already in the mirror is
kept, not deleted.
"""

from __future__ import annotations

import csv
from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

from adapters.base import Customer, Deal, Entity, PullResult, RowError

CUSTOMER_COLUMNS = ("id", "name", "phone", "email", "birthday", "responsible_id", "created_at")
DEAL_COLUMNS = ("id", "contact_id", "company_id", "status", "amount", "currency", "created_at", "closed_at")
DEAL_STATUSES = ("won", "lost", "open")


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
        number = int(value)
    except ValueError:
        raise _BadValue(column, f"{value!r} is not a positive integer id") from None
    if number <= 0:
        raise _BadValue(column, f"{value!r} is not a positive integer id")
    return number


def _date(value: str, column: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _BadValue(column, f"{value!r} is not a date (YYYY-MM-DD)") from None


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
        raise _BadValue(column, f"{value!r} is not an ISO 8601 date or date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return int(moment.timestamp())


def _amount(value: str, column: str) -> float:
    value = value.strip().replace(" ", "").replace("\u00a0", "")
    if not value:
        return 0.0
    try:
        number = float(value.replace(",", ".") if value.count(",") == 1 and "." not in value else value)
    except ValueError:
        raise _BadValue(column, f"{value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise _BadValue(column, f"{value!r} is not a finite number")
    return number


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


class CsvSource:
    """Reads a folder of CSV exports. Every pull is a full snapshot."""

    def __init__(self, folder: Path, *, timezone: str, customer: Entity = "contact", delimiter: str = ","):
        self.folder = Path(folder)
        self.tz = ZoneInfo(timezone)
        self.customer = customer
        self.delimiter = delimiter

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
        return PullResult(
            customers=customers,
            deals=deals,
            snapshot=True,
            errors=errors,
            kept_customer_ids=frozenset(kept_customers),
            kept_deal_ids=frozenset(kept_deals),
        )

    # -- reading ---------------------------------------------------------------------------------

    def _rows(self, path: Path, required: tuple[str, ...], errors: list[RowError]):
        """Yield (line number, row dict) for each data row whose shape matches the header."""
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=self.delimiter)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise SourceError(f"{path} is empty; it needs a header line starting with 'id'") from None
            missing = [c for c in required if c not in header]
            if missing:
                raise SourceError(
                    f"{path}: header lacks column(s) {', '.join(missing)}; found {', '.join(header) or 'nothing'}"
                )
            dupes = {h for h in header if header.count(h) > 1}
            if dupes:
                raise SourceError(f"{path}: header repeats column(s) {', '.join(sorted(dupes))}")
            line = reader.line_num
            for row in reader:
                start, line = line + 1, reader.line_num
                if not row or all(not cell.strip() for cell in row):
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
        return out, kept

    def _read_deals(self, path: Path, errors: list[RowError]) -> tuple[list[Deal], set[int]]:
        out: list[Deal] = []
        seen: dict[int, int] = {}
        kept: set[int] = set()
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
        return out, kept
