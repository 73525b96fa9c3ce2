"""State store: the local mirror, segment membership with its history, and run records.

SQLAlchemy Core over SQLite by default (``[state] url = "sqlite:///lifecycle.db"``). Every table is keyed
by ``portal`` (``[crm] name``) so one database can serve many CRM accounts.

Bulk reads for the segment engine go through connectorx straight into Arrow/polars (SQLite and
PostgreSQL), because pulling millions of rows through Python tuples costs seconds per million.

Schema changes are migrations: ``MIGRATIONS`` is an ordered list, the ``meta`` table records the version
reached, and :meth:`StateStore.open` applies what is missing inside one transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from adapters.base import Customer, Deal, Entity, PullResult
from connector.config import ConfigError

metadata = sa.MetaData()

meta_table = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("portal", sa.String(128), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("as_of", sa.Date),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),  # running | ok | failed
    sa.Column("stats", sa.Text),  # JSON
    sa.Column("error", sa.Text),
)

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("entity", sa.String(16), primary_key=True),  # contact | company
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text),
    sa.Column("phone", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("birthday", sa.Date),
    sa.Column("responsible_id", sa.String(64)),
    sa.Column("created_ts", sa.BigInteger),
    sa.Column("fields", sa.Text),  # JSON object of custom fields by their source name
)

deals = sa.Table(
    "deals",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("contact_id", sa.BigInteger),
    sa.Column("company_id", sa.BigInteger),
    sa.Column("status", sa.String(8), nullable=False),  # won | lost | open
    sa.Column("amount", sa.Float, nullable=False),
    sa.Column("currency", sa.String(8)),
    sa.Column("created_ts", sa.BigInteger),
    sa.Column("closed_ts", sa.BigInteger),
)

segments = sa.Table(
    "segments",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("static", sa.Boolean, nullable=False),
    sa.Column("definition", sa.Text),
    sa.Column("frozen_run", sa.Integer),  # static segments: the run that froze them
)

membership = sa.Table(
    "membership",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("segment", sa.String(128), primary_key=True),
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("entered_on", sa.Date, nullable=False),
    sa.Column("entered_run", sa.Integer, nullable=False),
)

membership_events = sa.Table(
    "membership_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("portal", sa.String(128), nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("segment", sa.String(128), nullable=False),
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("event", sa.String(8), nullable=False),  # enter | exit
    sa.Column("on_date", sa.Date, nullable=False),
    sa.Index("ix_membership_events_portal_run", "portal", "run_id"),
)


cursors = sa.Table(
    "cursors",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

oauth_tokens = sa.Table(
    "oauth_tokens",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("access_token", sa.Text),
    sa.Column("refresh_token", sa.Text, nullable=False),
    sa.Column("expires_at", sa.BigInteger),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

actions = sa.Table(
    "actions",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("campaign", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # call_task | todo | deal | deal_task
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("entry_date", sa.Date, nullable=False),
    sa.Column("event", sa.String(8), nullable=False),  # enter | exit
    sa.Column("responsible_id", sa.BigInteger),
    sa.Column("parent_key", sa.String(255)),
    sa.Column("payload", sa.Text, nullable=False),  # JSON: rendered title, description, deadline, ...
    # planned -> sending (intent recorded, the call may or may not have reached the CRM) -> done | failed;
    # skipped rows say why in skip_reason and never run.
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("skip_reason", sa.Text),
    sa.Column("result", sa.Text),  # JSON: {"id": crm id}
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("planned_run", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # the sync-lock holder that marked the row sending (migration 6): rows claimed by a holder other than
    # the current one are left by a run that died; rows it claimed are in flight
    sa.Column("claimed_by", sa.String(128)),
    sa.Index("ix_actions_portal_status", "portal", "status"),
    sa.Index("ix_actions_portal_customer", "portal", "customer_id"),
)

audiences_table = sa.Table(
    "audiences",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("audience", sa.String(255), primary_key=True),  # cabinet:segment:name
    sa.Column("cabinet", sa.String(16), nullable=False),
    sa.Column("remote_id", sa.String(128)),  # the cabinet's id, once created
    sa.Column("status", sa.String(64)),      # the cabinet's processing status, last seen
    sa.Column("detail", sa.Text),            # JSON: last request id, counts, message
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

audience_members = sa.Table(
    "audience_members",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("audience", sa.String(255), primary_key=True),
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("identifiers", sa.Text, nullable=False),  # JSON {"email": hash, "phone": hash}: hashes only
    # in: the cabinet has these identifiers; adding / removing: sent or about to be sent, not confirmed
    sa.Column("state", sa.String(8), nullable=False),
)

audience_hashes = sa.Table(
    "audience_hashes",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("audience", sa.String(255), primary_key=True),
    sa.Column("kind", sa.String(8), primary_key=True),    # email | phone
    sa.Column("hash", sa.String(64), primary_key=True),   # as the cabinet takes it (SHA-256 / MD5 hex)
    # in: the cabinet holds this hash; adding / removing: sent or about to be sent, not confirmed
    sa.Column("state", sa.String(8), nullable=False),
)

locks = sa.Table(
    "locks",
    metadata,
    sa.Column("portal", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),  # host:pid:random of the sync holding it
    sa.Column("expires_at", sa.Float, nullable=False),    # epoch seconds; a crashed holder's lock lapses
    sa.Column("locked_since", sa.Float),                   # epoch seconds the holder took it (migration 6)
)

V1_TABLES = ("meta", "runs", "customers", "deals", "segments", "membership", "membership_events")


def _migration_1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[metadata.tables[name] for name in V1_TABLES])


def _migration_2(conn: Connection) -> None:
    """Sync cursors and rotating OAuth tokens (Bitrix24 / amoCRM adapters)."""
    metadata.create_all(conn, tables=[cursors, oauth_tokens])


def _migration_3(conn: Connection) -> None:
    """The action ledger (campaigns)."""
    metadata.create_all(conn, tables=[actions])


def _migration_4(conn: Connection) -> None:
    """Ad-cabinet audiences and who the connector has put into each."""
    metadata.create_all(conn, tables=[audiences_table, audience_members])


def _migration_5(conn: Connection) -> None:
    """The sync lock: one sync per portal at a time, across processes and machines sharing the store."""
    metadata.create_all(conn, tables=[locks])


def _migration_6(conn: Connection) -> None:
    """When the holder took the sync lock (for "running since ..."), and which holder claimed each action
    it is sending (the executor settles only the rows of dead runs)."""
    for table, column in ((locks, locks.c.locked_since), (actions, actions.c.claimed_by)):
        have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
        if column.name not in have:  # a store created at version 6 got it from the table definition
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))


def _migration_audience_hashes(conn: Connection) -> None:
    """What each cabinet holds, per hash (issue 11 item 3): cabinets hold *sets* of hashes, so two customers
    sharing an e-mail or phone share one entry, and it may leave only when no member needs it any more.

    Repair of stores written before: the set is derived from the per-customer rows, every hash marked
    ``adding`` (unconfirmed). Hashes wrongly removed from a cabinet (one of two sharers left) are recorded as
    ``in`` for the other customer, so they cannot be trusted: the first run after the upgrade re-sends every
    hash its members need once (adds are idempotent in all four cabinets) and removes the ones nobody needs."""
    metadata.create_all(conn, tables=[audience_hashes])
    rows = conn.execute(sa.select(audience_members.c.portal, audience_members.c.audience,
                                  audience_members.c.identifiers)).all()
    seen = {(r.portal, r.audience, kind, value) for r in rows for kind, value in json.loads(r.identifiers).items() if value}
    for part in _chunks(sorted(seen), 5000):
        conn.execute(sa.insert(audience_hashes), [
            {"portal": p, "audience": a, "kind": k, "hash": h, "state": "adding"} for p, a, k, h in part])


def _migration_dashboard(conn: Connection) -> None:
    """The dashboard's tables (issue 14): accounts, per-sync snapshots, the KPI history, matrix-cell intervals
    and the member columns; defined in connector/dashboard/schema.py."""
    from connector.dashboard import schema

    schema.create(conn)


MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1, _migration_2, _migration_3, _migration_4, _migration_5,
                                                  _migration_6, _migration_audience_hashes, _migration_dashboard]
SCHEMA_VERSION = len(MIGRATIONS)
MIGRATION_LOCK_KEY = 0x6C6966656379  # PostgreSQL advisory lock held while migrating ("lifecy")
CHUNK = 20_000


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _chunks(rows: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


class StateStore:
    """All reads and writes of the connector's own state for one CRM account (``portal``)."""

    def __init__(self, engine: Engine, portal: str):
        self.engine = engine
        self.portal = portal

    @classmethod
    def open(cls, url: str, portal: str) -> StateStore:
        """Open (and migrate) the store; a URL that cannot work is a :class:`StateUrlError` saying what
        to fix in ``[state] url``, never a driver traceback."""
        sa_url = _checked_url(url)
        try:
            store = cls._open(sa_url, portal)
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

    # -- schema ----------------------------------------------------------------------------------

    def migrate(self) -> None:
        with self.engine.begin() as conn:
            # Processes may start together on an empty database: one migrates, the others wait here (the
            # lock ends with the transaction) and then find the work done.
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            _write_lock(conn)  # SQLite: the database's write lock before the version is read
            version = 0
            if sa.inspect(conn).has_table("meta"):
                row = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")).first()
                version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"state store schema is version {version}, newer than this program ({SCHEMA_VERSION}); upgrade crm-lifecycle"
                )
            for step in MIGRATIONS[version:]:
                step(conn)
            if version < SCHEMA_VERSION:
                conn.execute(sa.delete(meta_table).where(meta_table.c.key == "schema_version"))
                conn.execute(sa.insert(meta_table).values(key="schema_version", value=str(SCHEMA_VERSION)))

    # -- runs ------------------------------------------------------------------------------------

    def start_run(self, kind: str, as_of: date | None) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.insert(runs).values(portal=self.portal, kind=kind, as_of=as_of, started_at=_now(), status="running")
            )
            return int(result.inserted_primary_key[0])

    def finish_run(self, run_id: int, *, status: str, stats: dict[str, Any], error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id)
                .values(finished_at=_now(), status=status, stats=json.dumps(stats, default=str), error=error)
            )

    def last_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(runs).where(runs.c.portal == self.portal).order_by(runs.c.id.desc()).limit(limit)
            ).mappings()
            return [dict(r) | {"stats": json.loads(r["stats"]) if r["stats"] else {}} for r in rows]

    # -- mirror ----------------------------------------------------------------------------------

    def apply_pull(self, pull: PullResult) -> dict[str, int]:
        """Write one pull into the mirror in a single transaction; return what changed."""
        with self.engine.begin() as conn:
            upserted_c = self._upsert(conn, customers, [self._customer_row(c) for c in pull.customers])
            upserted_d = self._upsert(conn, deals, [self._deal_row(d) for d in pull.deals])
            deleted_c = set(pull.deleted_customer_ids)
            deleted_d = set(pull.deleted_deal_ids)
            if pull.snapshot:
                present_c = {(c.entity, c.id) for c in pull.customers} | set(pull.kept_customer_ids)
                stored_c = conn.execute(
                    sa.select(customers.c.entity, customers.c.id).where(customers.c.portal == self.portal)
                ).all()
                deleted_c |= {(e, i) for e, i in stored_c if (e, i) not in present_c}
                present_d = {d.id for d in pull.deals} | set(pull.kept_deal_ids)
                stored_d = conn.execute(sa.select(deals.c.id).where(deals.c.portal == self.portal)).scalars()
                deleted_d |= {i for i in stored_d if i not in present_d}
            for entity in ("contact", "company"):
                ids = sorted(i for e, i in deleted_c if e == entity)
                # A CRM unbinds a deleted contact/company from its deals without touching the deal's
                # modification date, so an incremental pull never sees that change: mirror it here.
                reported = {i for e, i in pull.deleted_customer_ids if e == entity}
                link = deals.c.contact_id if entity == "contact" else deals.c.company_id
                for part in _chunks(ids, 500):
                    conn.execute(
                        sa.delete(customers).where(
                            customers.c.portal == self.portal, customers.c.entity == entity, customers.c.id.in_(part)
                        )
                    )
                    unbind = [i for i in part if i in reported]
                    if unbind:
                        conn.execute(
                            sa.update(deals).where(deals.c.portal == self.portal, link.in_(unbind)).values({link.name: None})
                        )
            for part in _chunks(sorted(deleted_d), 500):
                conn.execute(sa.delete(deals).where(deals.c.portal == self.portal, deals.c.id.in_(part)))
            self._save_cursors(conn, dict(pull.cursors))
        return {
            "customers_upserted": upserted_c,
            "deals_upserted": upserted_d,
            "customers_deleted": len(deleted_c),
            "deals_deleted": len(deleted_d),
        }

    def _customer_row(self, c: Customer) -> dict[str, Any]:
        return {
            "portal": self.portal,
            "entity": c.entity,
            "id": c.id,
            "name": c.name,
            "phone": c.phone,
            "email": c.email,
            "birthday": c.birthday,
            "responsible_id": c.responsible_id,
            "created_ts": c.created_ts,
            "fields": json.dumps(c.fields, ensure_ascii=False) if c.fields else None,
        }

    def _deal_row(self, d: Deal) -> dict[str, Any]:
        return {
            "portal": self.portal,
            "id": d.id,
            "contact_id": d.contact_id,
            "company_id": d.company_id,
            "status": d.status,
            "amount": d.amount,
            "currency": d.currency,
            "created_ts": d.created_ts,
            "closed_ts": d.closed_ts,
        }

    def _upsert(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        dialect = conn.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:  # pragma: no cover - other databases are not supported
            raise RuntimeError(f"state store: unsupported database {dialect!r} (use SQLite or PostgreSQL)")
        keys = [c.name for c in table.primary_key.columns]
        stmt = insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=keys, set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        )
        for part in _chunks(rows):
            conn.execute(stmt, list(part))
        return len(rows)

    def insert_bulk(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        """Plain inserts (no conflict handling), for seeding an empty mirror quickly."""
        with self.engine.begin() as conn:
            for part in _chunks(rows, 50_000):
                conn.execute(sa.insert(table), list(part))

    # -- cursors and tokens ----------------------------------------------------------------------

    def cursors(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(cursors.c.name, cursors.c.value).where(cursors.c.portal == self.portal))
            return {name: value for name, value in rows}

    def _save_cursors(self, conn: Connection, values: dict[str, str]) -> None:
        if values:
            self._upsert(
                conn, cursors, [{"portal": self.portal, "name": k, "value": v, "updated_at": _now()} for k, v in values.items()]
            )

    def oauth_token(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(oauth_tokens).where(oauth_tokens.c.portal == self.portal)).mappings().first()
            return dict(row) if row else None

    def save_oauth_token(self, access_token: str | None, refresh_token: str, expires_at: int | None) -> None:
        """Persist a rotated token pair at once, in its own transaction: losing the new refresh token
        would lock the integration out."""
        with self.engine.begin() as conn:
            self._upsert(
                conn,
                oauth_tokens,
                [{"portal": self.portal, "access_token": access_token, "refresh_token": refresh_token,
                  "expires_at": expires_at, "updated_at": _now()}],
            )

    def update_customer_fields(self, entity: Entity, values: dict[int, dict[str, str]]) -> None:
        """Merge custom-field values into mirrored customers (after a successful write-back)."""
        if not values:
            return
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(customers.c.id, customers.c.fields).where(
                    customers.c.portal == self.portal, customers.c.entity == entity, customers.c.id.in_(list(values))
                )
            ).all()
            for cid, text in rows:
                merged = (json.loads(text) if text else {}) | values[cid]
                conn.execute(
                    sa.update(customers)
                    .where(customers.c.portal == self.portal, customers.c.entity == entity, customers.c.id == cid)
                    .values(fields=json.dumps(merged, ensure_ascii=False))
                )

    def customer_cards(self, entity: Entity, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Name, phone, e-mail, responsible, birthday and custom fields of these customers."""
        out: dict[int, dict[str, Any]] = {}
        cols = (customers.c.id, customers.c.name, customers.c.phone, customers.c.email, customers.c.responsible_id,
                customers.c.birthday, customers.c.fields)
        with self.engine.connect() as conn:
            for part in _chunks(sorted(set(ids)), 500):
                rows = conn.execute(sa.select(*cols).where(
                    customers.c.portal == self.portal, customers.c.entity == entity, customers.c.id.in_(list(part))))
                for r in rows.mappings():
                    row = dict(r)
                    row["fields"] = json.loads(row["fields"]) if row["fields"] else {}
                    out[int(row["id"])] = row
        return out

    def customer_ids(self, entity: Entity) -> set[int]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    sa.select(customers.c.id).where(customers.c.portal == self.portal, customers.c.entity == entity)
                ).scalars()
            )

    def deal_ids(self) -> set[int]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(deals.c.id).where(deals.c.portal == self.portal)).scalars())

    # -- frames for the engine -------------------------------------------------------------------

    def read_frame(self, query: sa.Select, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        """Run a SELECT and return a polars frame, vectorised where the database allows."""
        url = self.engine.url
        sql = str(query.compile(self.engine, compile_kwargs={"literal_binds": True}))
        frame: pl.DataFrame | None = None
        if url.get_backend_name() in ("sqlite", "postgresql") and url.database not in (None, "", ":memory:"):
            frame = pl.read_database_uri(sql, _connectorx_uri(url), engine="connectorx")
        if frame is None or frame.width != len(schema):
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            frame = pl.DataFrame(rows, schema=list(schema), orient="row", infer_schema_length=None)
        if frame.height == 0:
            return pl.DataFrame(schema=schema)
        frame.columns = list(schema)
        return frame.cast(schema)  # type: ignore[arg-type]

    def customers_frame(self, entity: Entity) -> pl.DataFrame:
        query = sa.select(
            customers.c.id,
            customers.c.phone,
            customers.c.email,
            customers.c.birthday,
            customers.c.responsible_id,
            customers.c.created_ts,
            customers.c.fields,
        ).where(customers.c.portal == self.portal, customers.c.entity == entity)
        frame = self.read_frame(
            query,
            {
                "id": pl.Int64,
                "phone": pl.String,
                "email": pl.String,
                "birthday": pl.String,
                "responsible_id": pl.String,
                "created_ts": pl.Int64,
                "fields": pl.String,
            },
        )
        return frame.with_columns(pl.col("birthday").str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False))

    def deals_frame(self) -> pl.DataFrame:
        query = sa.select(
            deals.c.id,
            deals.c.contact_id,
            deals.c.company_id,
            deals.c.status,
            deals.c.amount,
            deals.c.created_ts,
            deals.c.closed_ts,
        ).where(deals.c.portal == self.portal)
        return self.read_frame(
            query,
            {
                "id": pl.Int64,
                "contact_id": pl.Int64,
                "company_id": pl.Int64,
                "status": pl.String,
                "amount": pl.Float64,
                "created_ts": pl.Int64,
                "closed_ts": pl.Int64,
            },
        )

    def membership_frame(self) -> pl.DataFrame:
        query = sa.select(membership.c.segment, membership.c.customer_id).where(membership.c.portal == self.portal)
        return self.read_frame(query, {"segment": pl.String, "customer_id": pl.Int64})

    # -- segments and membership -----------------------------------------------------------------

    def frozen_segments(self) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(segments.c.name).where(
                    segments.c.portal == self.portal, segments.c.static.is_(True), segments.c.frozen_run.is_not(None)
                )
            ).scalars()
            return set(rows)

    def apply_membership(
        self,
        run_id: int,
        on_date: date,
        entered: pl.DataFrame,
        left: pl.DataFrame,
        definitions: dict[str, tuple[bool, str]],
        planned: Sequence[Any] = (),
    ) -> None:
        """Record who entered and who left (frames of segment, customer_id) in one transaction, together
        with the campaign actions planned for them (``planned``: connector.campaigns.PlannedAction), so a
        run killed after this point still owes, and later takes, every action.

        ``definitions`` maps every computed segment to (static, definition); static segments seen for
        the first time are frozen by this run.
        """
        with self.engine.begin() as conn:
            known = {
                r.name: r
                for r in conn.execute(sa.select(segments).where(segments.c.portal == self.portal)).all()
            }
            for name, (static, definition) in definitions.items():
                row = known.get(name)
                frozen_run = run_id if static else None
                if row is None:
                    conn.execute(
                        sa.insert(segments).values(
                            portal=self.portal, name=name, static=static, definition=definition, frozen_run=frozen_run
                        )
                    )
                elif row.definition != definition or bool(row.static) != static:
                    keep = row.frozen_run if (static and row.static and row.frozen_run) else frozen_run
                    conn.execute(
                        sa.update(segments)
                        .where(segments.c.portal == self.portal, segments.c.name == name)
                        .values(static=static, definition=definition, frozen_run=keep)
                    )
            day = self._date_param(conn, on_date)
            _insert_tuples(
                conn,
                membership,
                ("portal", "segment", "customer_id", "entered_on", "entered_run"),
                entered.select(
                    pl.lit(self.portal).alias("p"), "segment", "customer_id", pl.lit(day).alias("d"), pl.lit(run_id).alias("r")
                ).iter_rows(),
            )
            for seg, ids in left.group_by("segment").agg(pl.col("customer_id")).iter_rows():
                for part in _chunks(sorted(ids), 500):
                    conn.execute(
                        sa.delete(membership).where(
                            membership.c.portal == self.portal,
                            membership.c.segment == seg,
                            membership.c.customer_id.in_(part),
                        )
                    )
            self._insert_actions(conn, run_id, planned)
            for kind, frame in (("enter", entered), ("exit", left)):
                _insert_tuples(
                    conn,
                    membership_events,
                    ("portal", "run_id", "segment", "customer_id", "event", "on_date"),
                    frame.select(
                        pl.lit(self.portal).alias("p"),
                        pl.lit(run_id).alias("r"),
                        "segment",
                        "customer_id",
                        pl.lit(kind).alias("k"),
                        pl.lit(day).alias("d"),
                    ).iter_rows(),
                )

    # -- the action ledger -------------------------------------------------------------------------

    def _insert_actions(self, conn: Connection, run_id: int, planned: Sequence[Any]) -> None:
        if not planned:
            return
        have = set()
        keys = [p.key for p in planned]
        for part in _chunks(keys, 500):
            have |= set(conn.execute(sa.select(actions.c.key).where(actions.c.portal == self.portal, actions.c.key.in_(part))).scalars())
        now = _now()
        rows = [
            {"portal": self.portal, "key": p.key, "campaign": p.campaign, "action": p.action, "customer_id": p.customer_id,
             "entry_date": p.entry_date, "event": p.event, "responsible_id": p.responsible_id, "parent_key": p.parent_key,
             "payload": json.dumps(p.payload, ensure_ascii=False), "status": "skipped" if p.skip_reason else "planned",
             "skip_reason": p.skip_reason, "result": None, "attempts": 0, "error": None, "planned_run": run_id,
             "updated_at": now}
            for p in planned if p.key not in have
        ]
        for part in _chunks(rows, 5000):
            conn.execute(sa.insert(actions), list(part))

    def ledger(self, statuses: Sequence[str] | None = None, customer_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        query = sa.select(actions).where(actions.c.portal == self.portal)
        if statuses is not None:
            query = query.where(actions.c.status.in_(list(statuses)))
        if customer_ids is not None:
            query = query.where(actions.c.customer_id.in_(list(customer_ids)))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(actions.c.planned_run, actions.c.key)).mappings().all()
        return [dict(r) | {"payload": json.loads(r["payload"]), "result": json.loads(r["result"]) if r["result"] else None}
                for r in rows]

    def ledger_summary(self) -> list[tuple[str, str, int, date, int | None]]:
        """(key, campaign, customer, entry day, responsible, status, action) of every action: the planner's history."""
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                sa.select(actions.c.key, actions.c.campaign, actions.c.customer_id, actions.c.entry_date,
                          actions.c.responsible_id, actions.c.status, actions.c.action).where(actions.c.portal == self.portal)
            ).all()]

    def claim_actions(self, keys: Sequence[str], holder: str, *, fenced: bool = True) -> set[str]:
        """Mark the ``planned`` or ``failed`` actions among ``keys`` ``sending`` on behalf of ``holder``, in
        one committed transaction (the intent record); return the keys it claimed. A key another process
        claimed or settled meanwhile is not returned, so it is never sent twice. ``fenced``: claim only
        while ``holder`` holds this portal's sync lock (not expired)."""
        import time as _time

        if not keys:
            return set()
        claimed: set[str] = set()
        with self.engine.begin() as conn:
            _write_lock(conn)
            fence = [sa.exists().where(locks.c.portal == self.portal, locks.c.holder == holder,
                                       locks.c.expires_at > _time.time())] if fenced else []
            for part in _chunks(list(keys), 500):
                claimed |= set(conn.execute(sa.update(actions).where(
                    actions.c.portal == self.portal, actions.c.key.in_(list(part)),
                    actions.c.status.in_(["planned", "failed"]), *fence,
                ).values(status="sending", claimed_by=holder, updated_at=_now()).returning(actions.c.key)).scalars())
        return claimed

    def set_actions(self, keys: Sequence[str], status: str, *, results: dict[str, Any] | None = None,
                    errors: dict[str, str] | None = None, count_attempt: bool = False,
                    claimed_by: str | None = None, not_claimed_by: str | None = None) -> None:
        """Move actions to ``status`` in one committed transaction (the ledger's intent/outcome records).

        ``claimed_by``: only ``sending`` rows this holder claimed (a sync's outcomes); ``not_claimed_by``:
        only ``sending`` rows some other holder claimed (settling what a dead run left)."""
        if not keys:
            return
        now = _now()
        guard = []
        if claimed_by is not None:
            guard += [actions.c.status == "sending", actions.c.claimed_by == claimed_by]
        if not_claimed_by is not None:
            guard += [actions.c.status == "sending", actions.c.claimed_by.is_distinct_from(not_claimed_by)]
        with self.engine.begin() as conn:
            for key in keys:
                values: dict[str, Any] = {"status": status, "updated_at": now}
                if results and key in results:
                    values["result"] = json.dumps(results[key])
                    values["error"] = None
                if errors and key in errors:
                    values["error"] = errors[key][:2000]
                if count_attempt:
                    values["attempts"] = actions.c.attempts + 1
                conn.execute(sa.update(actions).where(actions.c.portal == self.portal, actions.c.key == key, *guard)
                             .values(values))

    # -- the sync lock -----------------------------------------------------------------------------

    def try_lock(self, holder: str, seconds: float, *, replace: str | None = None) -> bool:
        """Take this portal's sync lock for ``seconds`` (or extend it if ``holder`` has it); False if
        another holder has a lock that has not expired. ``replace``: a holder known to be dead, whose
        lock is taken over even before it expires."""
        import time as _time

        try:
            with self.engine.begin() as conn:
                _write_lock(conn)
                now = _time.time()
                row = conn.execute(sa.select(locks.c.holder, locks.c.expires_at).where(locks.c.portal == self.portal)).first()
                if row is None:
                    conn.execute(sa.insert(locks).values(portal=self.portal, holder=holder, expires_at=now + seconds,
                                                         locked_since=now))
                    return True
                if row.holder != holder and row.expires_at > now and row.holder != replace:
                    return False
                values: dict[str, Any] = {"holder": holder, "expires_at": now + seconds}
                if row.holder != holder:
                    values["locked_since"] = now
                done = conn.execute(sa.update(locks).where(
                    locks.c.portal == self.portal, locks.c.holder == row.holder, locks.c.expires_at == row.expires_at
                ).values(values))
                return done.rowcount == 1
        except sa.exc.IntegrityError:
            return False  # another process inserted it first

    def renew_lock(self, holder: str, seconds: float) -> bool:
        """Extend ``holder``'s lock to ``seconds`` from now; False if the lock is no longer its own."""
        import time as _time

        with self.engine.begin() as conn:
            done = conn.execute(sa.update(locks).where(locks.c.portal == self.portal, locks.c.holder == holder)
                                .values(expires_at=_time.time() + seconds))
            return done.rowcount == 1

    def release_lock(self, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(locks).where(locks.c.portal == self.portal, locks.c.holder == holder))

    def lock_holder(self) -> tuple[str, float] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(locks.c.holder, locks.c.expires_at).where(locks.c.portal == self.portal)).first()
        return (row.holder, row.expires_at) if row else None

    def lock_info(self) -> dict[str, Any] | None:
        """holder, expires_at and locked_since (epoch seconds) of this portal's lock, if a row exists."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(locks.c.holder, locks.c.expires_at, locks.c.locked_since)
                               .where(locks.c.portal == self.portal)).mappings().first()
        return dict(row) if row else None

    # -- ad audiences --------------------------------------------------------------------------------

    def audience(self, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(audiences_table).where(
                audiences_table.c.portal == self.portal, audiences_table.c.audience == key)).mappings().first()
        return (dict(row) | {"detail": json.loads(row["detail"]) if row["detail"] else {}}) if row else None

    def save_audience(self, key: str, cabinet: str, *, remote_id: str | None, status: str | None,
                      detail: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            self._upsert(conn, audiences_table, [{
                "portal": self.portal, "audience": key, "cabinet": cabinet, "remote_id": remote_id, "status": status,
                "detail": json.dumps(detail, default=str), "updated_at": _now()}])

    def audience_members(self, key: str) -> dict[int, tuple[dict[str, str], str]]:
        """customer id -> (identifiers, state) as recorded for this audience."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audience_members.c.customer_id, audience_members.c.identifiers,
                                          audience_members.c.state).where(
                audience_members.c.portal == self.portal, audience_members.c.audience == key)).all()
        return {int(cid): (json.loads(idents), state) for cid, idents, state in rows}

    def set_audience_members(self, key: str, rows: dict[int, tuple[dict[str, str], str]]) -> None:
        """Upsert (identifiers, state) per customer in one committed transaction."""
        if not rows:
            return
        with self.engine.begin() as conn:
            self._upsert(conn, audience_members, [
                {"portal": self.portal, "audience": key, "customer_id": cid, "identifiers": json.dumps(idents, sort_keys=True),
                 "state": state} for cid, (idents, state) in rows.items()])

    def drop_audience_members(self, key: str, ids: Iterable[int]) -> None:
        ids = sorted(set(ids))
        with self.engine.begin() as conn:
            for part in _chunks(ids, 500):
                conn.execute(sa.delete(audience_members).where(
                    audience_members.c.portal == self.portal, audience_members.c.audience == key,
                    audience_members.c.customer_id.in_(list(part))))

    def audience_hashes(self, key: str) -> dict[tuple[str, str], str]:
        """(kind, hash) -> state for every hash recorded as sent to this audience's cabinet."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audience_hashes.c.kind, audience_hashes.c.hash, audience_hashes.c.state).where(
                audience_hashes.c.portal == self.portal, audience_hashes.c.audience == key)).all()
        return {(kind, value): state for kind, value, state in rows}

    def set_audience_hashes(self, key: str, hashes: Iterable[tuple[str, str]], state: str) -> None:
        """Record (kind, hash) pairs in one state, in one committed transaction."""
        rows = [{"portal": self.portal, "audience": key, "kind": k, "hash": h, "state": state} for k, h in hashes]
        if not rows:
            return
        with self.engine.begin() as conn:
            for part in _chunks(rows, 5000):
                self._upsert(conn, audience_hashes, list(part))

    def drop_audience_hashes(self, key: str, hashes: Iterable[tuple[str, str]]) -> None:
        by_kind: dict[str, list[str]] = {}
        for kind, value in hashes:
            by_kind.setdefault(kind, []).append(value)
        with self.engine.begin() as conn:
            for kind, values in by_kind.items():
                for part in _chunks(sorted(set(values)), 500):
                    conn.execute(sa.delete(audience_hashes).where(
                        audience_hashes.c.portal == self.portal, audience_hashes.c.audience == key,
                        audience_hashes.c.kind == kind, audience_hashes.c.hash.in_(list(part))))

    @staticmethod
    def _date_param(conn: Connection, value: date) -> Any:
        """Dates as the driver stores them: SQLAlchemy keeps SQLite dates as ISO text."""
        return value.isoformat() if conn.dialect.name == "sqlite" else value

    def membership_events_frame(self, run_id: int | None = None) -> pl.DataFrame:
        query = sa.select(
            membership_events.c.run_id, membership_events.c.segment, membership_events.c.customer_id, membership_events.c.event
        ).where(membership_events.c.portal == self.portal)
        if run_id is not None:
            query = query.where(membership_events.c.run_id == run_id)
        return self.read_frame(
            query, {"run_id": pl.Int64, "segment": pl.String, "customer_id": pl.Int64, "event": pl.String}
        )


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


def _insert_tuples(conn: Connection, table: sa.Table, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """Bulk insert plain tuples through the driver's executemany: millions of rows without building
    a dict per row (SQLAlchemy's per-row processing costs ~10x more at this size)."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= 50_000:
            conn.exec_driver_sql(sql, batch)
            batch = []
    if batch:
        conn.exec_driver_sql(sql, batch)


def _connectorx_uri(url: sa.URL) -> str:
    if url.get_backend_name() == "sqlite":
        return f"sqlite://{url.database}"
    # postgresql+psycopg://... -> postgresql://...
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _write_lock(conn: Connection) -> None:
    """SQLite: take the database's write lock now, as the transaction's first statement (BEGIN IMMEDIATE),
    so what this transaction reads cannot change before it writes; a second process waits for it (busy
    timeout) instead of failing half-way. PostgreSQL transactions need nothing here.

    pysqlite opens a transaction only before INSERT/UPDATE/DELETE, so an explicit BEGIN as the first
    statement is the transaction SQLAlchemy then commits or rolls back."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


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
