"""The project's own records and the small protocol every CRM source implements.

Adapters turn a CRM's JSON (or CSV rows) into these frozen dataclasses and never hand raw payloads
upwards. Timestamps are UTC epoch seconds; a date-only value from the CRM is taken as midnight in the
CRM's time zone, so converting back to that zone gives the same calendar date.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Literal, Protocol

DealStatus = Literal["won", "lost", "open"]

# What every source accepts; a record outside these bounds is reported and skipped, never stored.
MAX_ID = 2**63 - 1  # the state store's BIGINT (and SQLite's INTEGER)
MAX_AMOUNT = 1e15  # a deal amount beyond a quadrillion is a typo or garbage, in any currency
MIN_YEAR, MAX_YEAR = 1900, 2200  # features count days from 1900; nothing real lies past 2200
MIN_TS = int(datetime(MIN_YEAR, 1, 1, tzinfo=timezone.utc).timestamp())
MAX_TS = int(datetime(MAX_YEAR, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp())


class BadValue(ValueError):
    """A value no source may store; the message quotes it and says what is allowed."""


def valid_id(value: Any, what: str = "id") -> int:
    """A positive integer id that fits the store (1 .. 2**63-1), from an int or its decimal text."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadValue(f"{what} {str(value)[:40]!r} is not a positive integer id")
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise BadValue(f"{what} {text[:40]!r} is not a positive integer id up to {MAX_ID}")
    number = int(text)
    if not 0 < number <= MAX_ID:
        raise BadValue(f"{what} {text[:40]!r} is not a positive integer id up to {MAX_ID}")
    return number


def valid_amount(value: float, what: str = "amount", raw: Any = None) -> float:
    """A finite amount within +-MAX_AMOUNT (``raw``: the value as the source wrote it, for the message)."""
    if not math.isfinite(value) or abs(value) > MAX_AMOUNT:
        shown = str(raw if raw is not None else value)[:40]
        raise BadValue(f"{what} {shown!r} is out of range (a finite number up to {MAX_AMOUNT:.0e})")
    return value


def valid_timestamp(value: int, what: str = "date") -> int:
    """UTC epoch seconds of a moment in the years MIN_YEAR..MAX_YEAR."""
    if not MIN_TS <= value <= MAX_TS:
        raise BadValue(f"{what} {value!r} (epoch seconds) is outside the years {MIN_YEAR}..{MAX_YEAR}")
    return value


def valid_date(value: date, what: str = "date") -> date:
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise BadValue(f"{what} {value.isoformat()} is outside the years {MIN_YEAR}..{MAX_YEAR}")
    return value
Entity = Literal["contact", "company"]


@dataclass(frozen=True, slots=True)
class Customer:
    id: int
    entity: Entity = "contact"
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    birthday: date | None = None
    responsible_id: str | None = None
    created_ts: int | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Deal:
    id: int
    status: DealStatus
    contact_id: int | None = None
    company_id: int | None = None
    amount: float = 0.0
    currency: str | None = None
    created_ts: int | None = None
    closed_ts: int | None = None


@dataclass(frozen=True, slots=True)
class RowError:
    """A source record that could not be read: where it is and what is wrong with it."""

    file: str
    line: int
    column: str | None
    message: str
    record_id: int | None = None  # when the id itself was readable, so the stored copy is kept

    def __str__(self) -> str:
        col = f", column '{self.column}'" if self.column else ""
        return f"{self.file}:{self.line}{col}: {self.message}"


@dataclass(frozen=True)
class PullResult:
    """What one pull brought back.

    ``snapshot`` means the source returned everything it has, so a stored record whose id is neither
    in ``customers``/``deals`` nor in ``kept_*`` (ids of unreadable rows) was deleted in the CRM.
    """

    customers: list[Customer]
    deals: list[Deal]
    snapshot: bool
    errors: list[RowError] = field(default_factory=list)
    kept_customer_ids: frozenset[tuple[Entity, int]] = frozenset()
    kept_deal_ids: frozenset[int] = frozenset()
    deleted_customer_ids: frozenset[tuple[Entity, int]] = frozenset()
    deleted_deal_ids: frozenset[int] = frozenset()
    cursors: dict[str, str] = field(default_factory=dict)  # saved in the same transaction as the data
    requests: int = 0  # HTTP requests the pull made


@dataclass
class WritebackResult:
    """What writing segments onto customer cards did."""

    updated: int = 0
    requests: int = 0
    failed: dict[int, str] = field(default_factory=dict)  # customer id -> why
    options_created: list[str] = field(default_factory=list)


class CrmSource(Protocol):
    """Reads customers and deals from one CRM account."""

    def pull(self) -> PullResult: ...
