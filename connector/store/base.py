"""What every part of the state store shares: the engine, the portal, and the write helpers."""

from __future__ import annotations

import threading

from collections.abc import Iterable, Sequence
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


def insert_tuples(conn: Connection, table: sa.Table, columns: Sequence[str], rows: Iterable[tuple]) -> None:
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


def date_param(conn: Connection, value: date) -> Any:
    """Dates as the driver stores them: SQLAlchemy keeps SQLite dates as ISO text."""
    return value.isoformat() if conn.dialect.name == "sqlite" else value


class Part:
    """One concern of the store over the shared engine, for one portal."""

    def __init__(self, engine: Engine, portal: str):
        self.engine = engine
        self.portal = portal
