"""The whole contract of a CRM adapter: the records it produces, the ports it is given, the kit it exports.

Records. Adapters turn a CRM's JSON (or CSV rows) into the frozen dataclasses below (:class:`Customer`,
:class:`Deal`, :class:`PullResult`) and never hand raw payloads upwards. Timestamps are UTC epoch seconds;
a date-only value from the CRM is taken as midnight in the CRM's time zone, so converting back to that
zone gives the same calendar date.

A CRM package (``adapters/<crm>/``) exports one :class:`CrmKit` named ``KIT``:

* ``settings``: its own frozen settings dataclass (the connector fills it from the configuration by field
  name; the adapter never sees the connector's types);
* ``make_source(settings, store) -> CrmSource``: pulls customers and deals;
* ``make_tag_writer(settings, store) -> TagWriter`` (or None): writes the tagged segments onto the cards;
* ``make_action_sink(settings, store) -> ActionSink`` (or None): creates call tasks and deals.

``store`` is the state store seen through :class:`AdapterStore` (tokens, cursors, stored ids): adapters
read it and persist rotated OAuth tokens there, but never write the mirror; a tag writer returns the
mirror updates and the connector applies them. The contact/company switch is one record per adapter
(``ENTITIES``). A bad configuration found by talking to the CRM raises :class:`AdapterConfigError`;
the connector reports it like its own configuration errors. ``adapters/__init__.py`` lists the kits
(``KITS``): adding a CRM is one new package and one line there.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Generic, Literal, Protocol, TypeVar

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
class ProductRow:
    """One product line of a deal: what was bought, how many, at what unit price (after discounts).

    ``line`` orders a deal's rows (the CRM's row id, or the position in the deal); ``product_id`` is the
    catalogue's id as text (None: a free-text line not from the catalogue); ``product_name`` and
    ``section`` come from the catalogue when the product is in it, else from the row."""

    deal_id: int
    line: int
    product_id: str | None
    product_name: str | None
    section: str | None = None
    quantity: float = 1.0
    price: float | None = None
    sku: str | None = None


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
    # Product rows (None: products were not pulled). ``product_deals``: the deals whose rows this pull
    # read in full; their stored rows are replaced by ``product_rows`` (none: the deal has no rows now).
    product_rows: list[ProductRow] | None = None
    product_deals: frozenset[int] = frozenset()
    product_requests: int = 0  # of ``requests``: those that read product rows (a catalogue's few not counted)


@dataclass
class TagWriteResult:
    """What writing segments onto customer cards did, and what the mirror must learn from it."""

    updated: int = 0
    requests: int = 0
    failed: dict[int, str] = field(default_factory=dict)  # customer id -> why
    options_created: list[str] = field(default_factory=list)
    # customer id -> CRM field values now on the card, merged into the mirror by the connector
    mirror_updates: dict[int, dict[str, str]] = field(default_factory=dict)
    # the adapter's cursors to record after the write-back (Bitrix24: the window of its own writes, so the
    # next pull does not read them back; ids someone else changed just before we wrote, to read again)
    cursors: dict[str, str] = field(default_factory=dict)
    # the CRM refused to go on (amoCRM 403: the account is blocked): the batches not yet sent were not sent;
    # the connector records what was written and then fails the run with this message
    stopped: str | None = None


WritebackResult = TagWriteResult  # the former name


class AdapterConfigError(Exception):
    """The configuration does not fit the CRM (no such pipeline, stage, user, field); the message says
    which setting and what the CRM has. The connector turns it into its ConfigError."""


# -- ports: what an adapter is given ---------------------------------------------------------------


class TokenStore(Protocol):
    """Where rotated OAuth tokens are kept (each save is committed at once)."""

    def oauth_token(self) -> dict[str, Any] | None: ...

    def save_oauth_token(self, access_token: str | None, refresh_token: str, expires_at: int | None) -> None: ...


class AdapterStore(TokenStore, Protocol):
    """The state store as adapters see it: tokens, the pull cursors and the ids in the mirror."""

    def cursors(self) -> dict[str, str]: ...

    def customer_ids(self, entity: Entity) -> set[int]: ...

    def deal_ids(self) -> set[int]: ...

    def won_deal_ids(self) -> set[int]: ...

    def products_pulled(self) -> bool:
        """Whether product rows were ever pulled into the mirror (else the next pull reads them all)."""
        ...


class CrmSource(Protocol):
    """Reads customers and deals from one CRM account."""

    def pull(self) -> PullResult: ...


class TagWriter(Protocol):
    """Writes the tagged segments onto customer cards.

    ``wanted``: customer id -> the tagged segments it is in now; ``labels``: every tagged segment (in
    engine order) -> its label in the CRM; ``mirror``: customer id -> the CRM field values stored for it
    (what the card holds now, as far as the mirror knows). Only cards whose value must change are written;
    values the connector does not manage are left alone. The result's ``mirror_updates`` say what the
    written cards hold now."""

    def write(self, wanted: Mapping[int, Sequence[str]], labels: Mapping[str, str],
              mirror: Mapping[int, Mapping[str, Any]]) -> TagWriteResult: ...


class ActionSpec(Protocol):
    """One campaign action as configured (``on_enter`` / ``on_exit`` items)."""

    action: str  # call_task | deal
    pipeline: str | None
    stage: str | None


class CampaignSpec(Protocol):
    """One ``[[campaign]]`` as an action sink needs it."""

    name: str
    responsible: Any  # "owner" or a tuple of user ids
    on_enter: Sequence[ActionSpec]
    on_exit: Sequence[ActionSpec]


class ActionSink(Protocol):
    """Creates campaign actions (call tasks, to-dos, deals) in the CRM, each carrying its :func:`marker`.

    Rows are ledger rows: ``key``, ``action`` (call_task | todo | deal | deal_task), ``customer_id``,
    ``responsible_id``, ``payload`` (title, description, deadline, pipeline, stage, script) and
    ``parent_key`` (a deal_task's deal)."""

    requests: int

    def resolve(self, campaigns: Sequence[CampaignSpec]) -> None:
        """Check pipelines, stages and users against the CRM (AdapterConfigError naming the campaign)."""

    def find(self, rows: list[dict[str, Any]], parents: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Key -> result for the rows whose object already exists in the CRM (looked up by marker)."""

    def create(self, rows: list[dict[str, Any]], parents: dict[str, dict[str, Any]]
               ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Create the objects; return (key -> result, key -> error) for every row."""

    def close(self) -> None: ...


# -- the kit: one per CRM ------------------------------------------------------------------------

S = TypeVar("S")


@dataclass(frozen=True)
class CrmKit(Generic[S]):
    """How to pull, write tags and run actions for one CRM, built from that CRM's settings."""

    name: str
    settings: type[S]  # a frozen dataclass; the connector fills it by field name
    make_source: Callable[[S, AdapterStore], CrmSource]
    make_tag_writer: Callable[[S, AdapterStore], TagWriter] | None = None
    make_action_sink: Callable[[S, AdapterStore], ActionSink] | None = None
    needs_store: bool = True  # False: the source reads files only (no tokens, no cursors)


# -- helpers for action sinks ---------------------------------------------------------------------


def marker(key: str) -> str:
    """A short, unique, searchable tag of an action key, put on the object created in the CRM."""
    return "lc" + hashlib.sha1(key.encode()).hexdigest()[:12]


def pick(items: list[dict[str, Any]], wanted: str | None, id_key: str, name_key: str) -> dict[str, Any] | None:
    """The CRM item (pipeline, stage, status) a config names by id, or else by name (case-insensitive)."""
    if wanted is None:
        return None
    for item in items:
        if str(item.get(id_key)) == str(wanted):
            return item
    for item in items:
        if str(item.get(name_key, "")).strip().casefold() == str(wanted).strip().casefold():
            return item
    return None


def round_robin_users(campaigns: Iterable[CampaignSpec]) -> set[int]:
    """Every user id a campaign's round-robin lists."""
    return {u for c in campaigns if c.responsible != "owner" for u in c.responsible}


def check_users(campaigns: Iterable[CampaignSpec], existing: set[int], where: str) -> None:
    """AdapterConfigError naming the first campaign whose round-robin lists a user the CRM does not have."""
    for campaign in campaigns:
        if campaign.responsible != "owner":
            missing = sorted(set(campaign.responsible) - existing)
            if missing:
                raise AdapterConfigError(
                    f"[[campaign]] {campaign.name!r}: responsible users {missing} are not active users {where}")
