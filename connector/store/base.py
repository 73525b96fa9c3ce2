"""What every part of the state store shares: the engine, the portal, and the write helpers."""

from __future__ import annotations

import contextlib
import threading
import weakref

from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

# connectorx reads SQLite through its own copy of the library. When such a read closes, that copy may
# checkpoint and delete the WAL (it cannot see pysqlite's connections), and closing its file releases this
# process's POSIX locks on the file. So no pysqlite connection of another thread may be inside a
# transaction then: the sync lock's renewal thread and the connectorx reads take this lock.
SQLITE_IO = threading.RLock()

CHUNK = 20_000


def now() -> datetime:
    return datetime.now(timezone.utc)


def chunks(rows: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def write_lock(conn: Connection) -> None:
    """SQLite: take the database's write lock now, as the transaction's first statement (BEGIN IMMEDIATE),
    so what this transaction reads cannot change before it writes; a second process waits for it (busy
    timeout) instead of failing half-way. PostgreSQL transactions need nothing here.

    pysqlite opens a transaction only before INSERT/UPDATE/DELETE, so an explicit BEGIN as the first
    statement is the transaction SQLAlchemy then commits or rolls back."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def upsert(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> int:
    """Insert ``rows``, updating the non-key columns of rows whose primary key exists."""
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
    for part in chunks(rows):
        conn.execute(stmt, list(part))
    return len(rows)


@contextlib.contextmanager
def postgres_copy(conn: Connection, statement: str) -> Iterator[Any]:
    """A psycopg 3 ``COPY`` on the connection's own driver cursor (inside its transaction)."""
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        with cursor.copy(statement) as copy:
            yield copy
    finally:
        cursor.close()


def insert_tuples(conn: Connection, table: sa.Table | str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """Bulk insert plain tuples: PostgreSQL through ``COPY ... FROM STDIN`` (psycopg 3), SQLite through the
    driver's executemany; millions of rows without building a dict per row (SQLAlchemy's per-row processing
    costs ~10x more at this size). Values go in as the driver stores them (codes and day numbers for the
    compact columns of connector.store.types)."""
    name = table if isinstance(table, str) else table.name
    if conn.dialect.name == "postgresql":
        with postgres_copy(conn, f"COPY {name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= 50_000:
            conn.exec_driver_sql(sql, batch)
            batch = []
    if batch:
        conn.exec_driver_sql(sql, batch)


def stage_upsert(conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[tuple]) -> int:
    """Insert plain tuples, updating the other columns of rows whose primary key exists; set-based.

    PostgreSQL: the rows are copied (COPY) into a temporary table, then one ``INSERT ... SELECT ... ON CONFLICT
    DO UPDATE`` merges them. SQLite: the same upsert statement through the driver's executemany (its per-row
    cost is in C; a staging copy would only add one)."""
    if not rows:
        return 0
    keys = [c.name for c in table.primary_key.columns]
    names = ", ".join(columns)
    updates = [c for c in columns if c not in keys]
    action = ("DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in updates)) if updates else "DO NOTHING"
    conflict = f"ON CONFLICT ({', '.join(keys)}) {action}"
    if conn.dialect.name == "postgresql":
        stage = f"stage_{table.name}"
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {stage}")
        conn.exec_driver_sql(f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {names} FROM {table.name} WITH NO DATA")
        insert_tuples(conn, stage, columns, rows)
        # DISTINCT ON: a key twice in one pull would make ON CONFLICT touch a row twice; the last one wins as
        # with the row-by-row upsert (ctid: the staging order)
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({names}) SELECT DISTINCT ON ({', '.join(keys)}) {names} FROM {stage} "
            f"ORDER BY {', '.join(keys)}, ctid DESC {conflict}")
        conn.exec_driver_sql(f"DROP TABLE {stage}")
        return len(rows)
    sql = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join(['?'] * len(columns))}) {conflict}"
    for part in chunks(rows, 50_000):
        conn.exec_driver_sql(sql, list(part))
    return len(rows)


def date_param(conn: Connection, value: date) -> Any:
    """Dates as the driver stores them: SQLAlchemy keeps SQLite dates as ISO text."""
    return value.isoformat() if conn.dialect.name == "sqlite" else value


_PORTAL_IDS: weakref.WeakKeyDictionary[Engine, dict[str, int]] = weakref.WeakKeyDictionary()


def portal_id_in(conn: Connection, portal: str) -> int:
    """The portal's key, created if missing, inside the caller's transaction (not cached: it is the caller's
    to commit or roll back)."""
    from connector.store.schema import portal_keys

    query = sa.select(portal_keys.c.id).where(portal_keys.c.name == portal)
    found = conn.execute(query).scalar()
    if found is None:  # another process may be creating it too: its row wins, ours is not inserted
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        conn.execute(insert(portal_keys).values(name=portal).on_conflict_do_nothing())
        found = conn.execute(query).scalar_one()
    return int(found)


def portal_id(engine: Engine, portal: str) -> int:
    """The portal's integer key (``portal_keys``), created on first use in its own committed transaction and
    cached per engine: ids are never deleted or reused, so a cached id stays right.

    Call it before opening a writing transaction: on SQLite a second connection cannot write while this
    thread's first one holds the write lock."""
    cache = _PORTAL_IDS.setdefault(engine, {})
    found = cache.get(portal)
    if found is None:
        from connector.store.schema import portal_keys

        query = sa.select(portal_keys.c.id).where(portal_keys.c.name == portal)
        with engine.connect() as conn:
            found = conn.execute(query).scalar()
        if found is None:
            with engine.begin() as conn:
                found = portal_id_in(conn, portal)
        cache[portal] = found = int(found)
    return found


class Part:
    """One concern of the store over the shared engine, for one portal."""

    def __init__(self, engine: Engine, portal: str):
        self.engine = engine
        self.portal = portal

    @property
    def portal_id(self) -> int:
        """The portal's integer key in the big tables (:func:`portal_id`)."""
        return portal_id(self.engine, self.portal)
