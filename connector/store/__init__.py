"""State store: the local mirror, segment membership with its history, the action ledger, ad audiences,
run records, the sync lock, cursors and OAuth tokens.

SQLAlchemy Core over SQLite by default (``[state] url = "sqlite:///lifecycle.db"``) or PostgreSQL. Every
table is keyed by the portal (``[crm] name``) so one database can serve many CRM accounts: the big ones by its
integer key ``portal_id`` (``store.portal_id``; connector.store.schema), the small ones by its name.

The package keeps one concern per module: ``schema`` (every table), ``migrate`` (Alembic revisions in
``migrations/``, legacy stores in ``legacy``), ``mirror``, ``membership``, ``ledger``, ``runs``, ``locks``,
``audiences``, ``tokens`` (cursors and OAuth tokens), ``frames`` (bulk connectorx/polars reads) and
``cards`` (the customer card view of one run). :class:`StateStore` opens the database, upgrades it and
composes the parts (``store.ledger_part`` ...); its methods delegate to them, so callers keep calling
``store.ledger()``, ``store.apply_pull(...)`` and so on.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.config import ConfigError
from connector.store import migrate as _migrate
from connector.store.audiences import Audiences
from connector.store.base import CHUNK, Part, chunks, now, portal_id, upsert, write_lock
from connector.store.campaign_state import Campaigns
from connector.store.cards import CustomerCards
from connector.store.columnar import ColumnarMirror, default_folder
from connector.store.frames import Frames, connectorx_uri
from connector.store.ledger import Ledger, LedgerHistory, LedgerRow
from connector.store.locks import Locks
from connector.store.membership import Membership
from connector.store.migrate import HEAD, MIGRATION_LOCK_KEY, SCHEMA_VERSION, NewerStoreError
from connector.store.mirror import Mirror
from connector.store.models import ModelFits
from connector.store.runs import Runs
from connector.store.schema import (
    actions,
    audience_hashes,
    audience_members,
    audiences_table,
    cursors,
    customers,
    deals,
    locks,
    membership,
    membership_events,
    meta_table,
    metadata,
    mirror_state,
    model_fits,
    oauth_tokens,
    portal_keys,
    product_rows,
    products,
    runs,
    segments,
)
from connector.store.tokens import Tokens

__all__ = [
    "CHUNK", "HEAD", "MIGRATION_LOCK_KEY", "SCHEMA_VERSION", "CustomerCards", "LedgerHistory", "LedgerRow",
    "NewerStoreError", "StateStore", "StateUrlError", "actions", "audience_hashes", "audience_members",
    "audiences_table", "cursors", "customers", "deals", "locks", "membership", "membership_events", "meta_table",
    "metadata", "mirror_state", "model_fits", "oauth_tokens", "portal_keys", "runs", "segments",
]

# names the single-module store had, for code written against it
_chunks, _now, _write_lock, _connectorx_uri = chunks, now, write_lock, connectorx_uri


def _delegate(part: str, cls: type[Part], name: str) -> Callable[..., Any]:
    @functools.wraps(getattr(cls, name))
    def method(self: StateStore, *args: Any, **kwargs: Any) -> Any:
        return getattr(getattr(self, part), name)(*args, **kwargs)

    return method


class StateStore:
    """All reads and writes of the connector's own state for one CRM account (``portal``): a facade over
    the parts, which share its engine."""

    def __init__(self, engine: Engine, portal: str):
        self.engine = engine
        self.portal = portal
        self.runs_part = Runs(engine, portal)
        self.mirror_part = Mirror(engine, portal)
        self.frames_part = Frames(engine, portal)
        self.membership_part = Membership(engine, portal)
        self.ledger_part = Ledger(engine, portal)
        self.locks_part = Locks(engine, portal)
        self.audiences_part = Audiences(engine, portal)
        self.tokens_part = Tokens(engine, portal)
        self.models_part = ModelFits(engine, portal)
        self.campaigns_part = Campaigns(engine, portal)

    @classmethod
    def open(cls, url: str, portal: str, *, columnar: bool = True, columnar_dir: str | Path | None = None) -> StateStore:
        """Open (and upgrade) the store; a URL that cannot work is a :class:`StateUrlError` saying what
        to fix in ``[state] url``, never a driver traceback. ``columnar``: the recompute reads the mirror from
        its columnar copy (connector.store.columnar), kept in ``columnar_dir`` or the default folder."""
        sa_url = _checked_url(url)
        try:
            store = cls._open(sa_url, portal)
            if columnar:
                folder = Path(columnar_dir) if columnar_dir else default_folder(sa_url)
                store.frames_part.columnar = ColumnarMirror(store.engine, portal, folder, store.frames_part.read_frame)
        except StateUrlError:
            raise
        except (sa.exc.SQLAlchemyError, OSError, ImportError, ValueError) as exc:
            raise StateUrlError(_explain_open_error(sa_url, exc)) from None
        return store

    @classmethod
    def _open(cls, sa_url: sa.URL, portal: str) -> StateStore:
        if sa_url.get_backend_name() == "sqlite":
            # No pooled connection may stay open: connectorx links its own copy of SQLite, and when its
            # read closes it would checkpoint and delete the WAL under a pysqlite connection still held
            # by the pool (writes made after that would be invisible to other processes until close).
            engine = sa.create_engine(sa_url, poolclass=sa.pool.NullPool, hide_parameters=True)
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        else:
            # pre-ping: a daemon keeps its pool for days, across database restarts and failovers
            engine = sa.create_engine(sa_url, pool_pre_ping=True, hide_parameters=True)
        store = cls(engine, portal)
        try:
            store.migrate()
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    @property
    def portal_id(self) -> int:
        """The portal's integer key in the big tables (connector.store.base.portal_id)."""
        return portal_id(self.engine, self.portal)

    def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision (connector.store.migrate); then check that the
        secret key opens the store's encrypted secrets, if it holds any (connector.crypto)."""
        with self.engine.begin() as conn:
            _migrate.upgrade(conn)
        _migrate.vacuum_if_pending(self.engine)
        from connector import crypto

        with self.engine.connect() as conn:
            crypto.check_store(conn)

    def customer_card_view(self, entity: str) -> CustomerCards:
        """Every mirrored customer's card, read once (a run shares it between planning, tags and audiences)."""
        return CustomerCards.read(self.frames_part, entity)

    def ledger_history(self) -> LedgerHistory:
        return self.ledger_part.history()

    # runs
    start_run = _delegate("runs_part", Runs, "start_run")
    finish_run = _delegate("runs_part", Runs, "finish_run")
    last_runs = _delegate("runs_part", Runs, "last_runs")
    # mirror
    apply_pull = _delegate("mirror_part", Mirror, "apply_pull")
    insert_bulk = _delegate("mirror_part", Mirror, "insert_bulk")
    update_customer_fields = _delegate("mirror_part", Mirror, "update_customer_fields")
    customer_cards = _delegate("mirror_part", Mirror, "customer_cards")
    customer_ids = _delegate("mirror_part", Mirror, "customer_ids")
    deal_ids = _delegate("mirror_part", Mirror, "deal_ids")
    won_deal_ids = _delegate("mirror_part", Mirror, "won_deal_ids")
    products_pulled = _delegate("mirror_part", Mirror, "products_pulled")
    # cursors and tokens
    cursors = _delegate("tokens_part", Tokens, "cursors")
    save_cursors = _delegate("tokens_part", Tokens, "save_cursors")
    oauth_token = _delegate("tokens_part", Tokens, "oauth_token")
    save_oauth_token = _delegate("tokens_part", Tokens, "save_oauth_token")
    # frames
    read_frame = _delegate("frames_part", Frames, "read_frame")
    customers_frame = _delegate("frames_part", Frames, "customers_frame")
    deals_frame = _delegate("frames_part", Frames, "deals_frame")
    products_frame = _delegate("frames_part", Frames, "products_frame")
    product_rows_frame = _delegate("frames_part", Frames, "product_rows_frame")
    membership_frame = _delegate("frames_part", Frames, "membership_frame")
    membership_events_frame = _delegate("frames_part", Frames, "membership_events_frame")
    # segments and membership
    frozen_segments = _delegate("membership_part", Membership, "frozen_segments")
    segment_ids = _delegate("membership_part", Membership, "segment_ids")
    apply_membership = _delegate("membership_part", Membership, "apply_membership")
    # the action ledger
    ledger = _delegate("ledger_part", Ledger, "ledger")
    ledger_summary = _delegate("ledger_part", Ledger, "ledger_summary")
    claim_actions = _delegate("ledger_part", Ledger, "claim_actions")
    set_actions = _delegate("ledger_part", Ledger, "set_actions")
    action_counts = _delegate("ledger_part", Ledger, "action_counts")

    campaign_states = _delegate("campaigns_part", Campaigns, "campaign_states")
    approve_campaign = _delegate("campaigns_part", Campaigns, "approve_campaign")
    save_users = _delegate("campaigns_part", Campaigns, "save_users")
    user_names = _delegate("campaigns_part", Campaigns, "user_names")
    users_updated_at = _delegate("campaigns_part", Campaigns, "users_updated_at")
    # prediction model fits
    save_model_fit = _delegate("models_part", ModelFits, "save_model_fit")
    latest_model_fit = _delegate("models_part", ModelFits, "latest_model_fit")
    # the sync lock
    try_lock = _delegate("locks_part", Locks, "try_lock")
    renew_lock = _delegate("locks_part", Locks, "renew_lock")
    release_lock = _delegate("locks_part", Locks, "release_lock")
    lock_holder = _delegate("locks_part", Locks, "lock_holder")
    lock_info = _delegate("locks_part", Locks, "lock_info")
    # ad audiences
    audience = _delegate("audiences_part", Audiences, "audience")
    save_audience = _delegate("audiences_part", Audiences, "save_audience")
    audience_members = _delegate("audiences_part", Audiences, "audience_members")
    set_audience_members = _delegate("audiences_part", Audiences, "set_audience_members")
    drop_audience_members = _delegate("audiences_part", Audiences, "drop_audience_members")
    audience_hashes = _delegate("audiences_part", Audiences, "audience_hashes")
    set_audience_hashes = _delegate("audiences_part", Audiences, "set_audience_hashes")
    drop_audience_hashes = _delegate("audiences_part", Audiences, "drop_audience_hashes")

    def _upsert(self, conn: Any, table: sa.Table, rows: list[dict[str, Any]]) -> int:
        return upsert(conn, table, rows)


class StateUrlError(ConfigError):
    """``[state] url`` cannot be used; the message says what to fix (the configuration's fault: exit 2)."""


def _safe_url(url: sa.URL | str) -> str:
    if isinstance(url, sa.URL):
        return url.render_as_string(hide_password=True)
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", url)


def _checked_url(url: str) -> sa.URL:
    """Parse ``[state] url`` and refuse what cannot hold state, before any connection."""
    try:
        sa_url = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise StateUrlError(
            f"[state] url = {_safe_url(url)!r} is not a database URL; use sqlite:///FILE.db or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB") from None
    backend = sa_url.get_backend_name()
    if backend == "sqlite":
        database = sa_url.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in database:
            raise StateUrlError(
                f"[state] url = {_safe_url(sa_url)!r} keeps state in memory, which is lost when the run ends "
                "(membership history, cursors, the action ledger); use a file: sqlite:///lifecycle.db")
        if database.startswith("file:"):  # an SQLite URI (?uri=true): SQLite itself reads the path
            return sa_url
        path = Path(database)
        if path.is_dir():
            raise StateUrlError(f"[state] url points at the folder {database}; name a file in it, e.g. "
                                f"sqlite:///{path / 'lifecycle.db'}")
        if not path.parent.is_dir():
            raise StateUrlError(f"[state] url: the folder {path.parent} does not exist; create it or point "
                                "[state] url at an existing folder")
    elif backend != "postgresql":
        raise StateUrlError(f"[state] url = {_safe_url(sa_url)!r}: {backend!r} is not supported; use "
                            "sqlite:///FILE.db or postgresql+psycopg://USER:PASSWORD@HOST/DB")
    return sa_url


def _explain_open_error(sa_url: sa.URL, exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    where = f"[state] url = {_safe_url(sa_url)!r}"
    low = first.lower()
    if sa_url.get_backend_name() == "sqlite":
        if "not a database" in low or "malformed" in low or "file is encrypted" in low:
            return f"{where}: the file is not an SQLite database; point [state] url at a new file or at the connector's database"
        if "readonly" in low or "read-only" in low:
            return f"{where}: the database file or its folder is read-only; make both writable"
        if "disk is full" in low or "no space" in low:
            return f"{where}: the disk is full; free space in the database's folder"
        if "unable to open" in low:
            return f"{where}: cannot open the file ({first}); check the path and its permissions"
        return f"{where}: cannot use the database ({type(orig).__name__}: {first})"
    if isinstance(exc, ImportError) or "no module named" in low:
        return f"{where}: the PostgreSQL driver is missing; install psycopg (pip install 'psycopg[binary]')"
    if "refused" in low or "could not connect" in low or "connection failed" in low or "timeout" in low:
        host = f"{sa_url.host or 'localhost'}:{sa_url.port or 5432}"
        return f"{where}: connection refused at {host}: check that PostgreSQL runs there and the host and port are right"
    if "password authentication failed" in low or "authentication" in low:
        return f"{where}: PostgreSQL refused the user or password; check them"
    if "does not exist" in low:
        return f"{where}: {first}; create it or fix the name"
    return f"{where}: cannot use the database ({type(orig).__name__}: {first})"



SQLITE_BUSY_SECONDS = 30


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    import sqlite3
    import time

    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")  # wait for another writer, not fail
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:  # switching a new file to WAL needs the lock another process may hold while it migrates
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
