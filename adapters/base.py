"""The project's own records and the small protocol every CRM source implements.

Adapters turn a CRM's JSON (or CSV rows) into these frozen dataclasses and never hand raw payloads
upwards. Timestamps are UTC epoch seconds; a date-only value from the CRM is taken as midnight in the
CRM's time zone, so converting back to that zone gives the same calendar date.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Literal, Protocol

DealStatus = Literal["won", "lost", "open"]
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
