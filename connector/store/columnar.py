"""A columnar copy of each portal's mirror (customers, deals, product rows and products as Parquet files), read
by the segment recompute instead of the database.

Reading millions of rows out of SQLite or PostgreSQL was most of a recompute; a Parquet file of the same rows
is read several times faster and is a tenth of the database's size. The copy is never stale:

* ``mirror_state`` holds, per portal, a ``dirty`` flag and the ``token`` of the copy that matches the mirror.
  Triggers on ``customers`` and ``deals`` (revision 0006) and on ``product_rows`` and ``products`` (revision
  0010_columnar_products) set ``dirty`` on every insert, update or delete of that portal's rows, whoever makes
  it: a pull, the tag write-back, another process, a hand-made SQL fix.
* A read that finds the flag clear and a file named by the token uses the file. Otherwise it rebuilds: it
  first clears the flag under a new token (committed), then reads the tables and writes the files under that
  token. A change committed after the flag was cleared sets it again, so the next read rebuilds; a change
  committed before is in what was read. Two processes rebuilding at once each leave a consistent pair of
  files; only the token stored last is used.

The files live next to an SQLite database (``<db>.columnar/``) or, for PostgreSQL, in the user's cache folder,
one sub-folder per portal, readable by their owner only (they hold the same personal data as the database).
``[state] columnar = false`` turns the copy off; ``[state] columnar_dir`` moves it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector.store.base import portal_id, write_lock
from connector.store.schema import customers, deals, mirror_state, product_rows, products

log = logging.getLogger("lifecycle.store")

CUSTOMER_SCHEMA: dict[str, Any] = {
    "id": pl.Int64, "entity": pl.String, "name": pl.String, "phone": pl.String, "email": pl.String,
    "birthday": pl.String, "responsible_id": pl.String, "created_ts": pl.Int64, "fields": pl.String,
}
DEAL_SCHEMA: dict[str, Any] = {
    "id": pl.Int64, "contact_id": pl.Int64, "company_id": pl.Int64, "status": pl.String, "amount": pl.Float64,
    "created_ts": pl.Int64, "closed_ts": pl.Int64,
}
PRODUCT_ROW_SCHEMA: dict[str, Any] = {
    "deal_id": pl.Int64, "line": pl.Int64, "product_key": pl.Int64, "quantity": pl.Float64, "price": pl.Float64,
}
PRODUCT_SCHEMA: dict[str, Any] = {  # products.key is read as product_key (the name product_rows join on)
    "key": pl.Int64, "product_id": pl.String, "product_name": pl.String, "section": pl.String, "sku": pl.String,
}
TABLES = {"customers": (customers, CUSTOMER_SCHEMA), "deals": (deals, DEAL_SCHEMA),
          "product_rows": (product_rows, PRODUCT_ROW_SCHEMA), "products": (products, PRODUCT_SCHEMA)}
MIRROR_TABLES = ("customers", "deals")  # flagged by revision 0006's triggers
PRODUCT_TABLES = ("product_rows", "products")  # by revision 0010_columnar_products's

ReadSql = Callable[[sa.Select, dict[str, Any]], pl.DataFrame]


def default_folder(url: sa.URL) -> Path:
    """Next to an SQLite file; for a server database, the user's cache folder, one folder per database URL
    (without its password)."""
    if url.get_backend_name() == "sqlite" and url.database and not url.database.startswith("file:"):
        return Path(url.database).with_name(Path(url.database).name + ".columnar")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crm-lifecycle" / "columnar"
    key = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return base / key


class ColumnarMirror:
    """The Parquet copy of one portal's customers and deals (see the module's description)."""

    def __init__(self, engine: Engine, portal: str, folder: Path, read_sql: ReadSql):
        self.engine = engine
        self.portal = portal
        self.folder = Path(folder) / hashlib.sha256(portal.encode()).hexdigest()[:16]
        self.read_sql = read_sql
        self.rebuilds = 0  # how many times this object rebuilt the copy (tests and benches read it)

    def customers(self) -> pl.DataFrame:
        """Every customer of the portal (all entities), columns :data:`CUSTOMER_SCHEMA`."""
        return self._frame("customers")

    def deals(self) -> pl.DataFrame:
        return self._frame("deals")

    def product_rows(self) -> pl.DataFrame:
        """Every stored product row of the portal, columns :data:`PRODUCT_ROW_SCHEMA`."""
        return self._frame("product_rows")

    def products(self) -> pl.DataFrame:
        """The products the rows name, columns :data:`PRODUCT_SCHEMA` (``key`` as ``product_key``)."""
        return self._frame("products").rename({"key": "product_key"})

    # -- internals ----------------------------------------------------------------------------------------

    def _state(self) -> tuple[bool, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(mirror_state.c.dirty, mirror_state.c.token)
                               .where(mirror_state.c.portal == self.portal)).first()
        return (bool(row[0]), str(row[1])) if row else None

    def _path(self, name: str, token: str) -> Path:
        return self.folder / f"{name}-{token}.parquet"

    def _frame(self, name: str) -> pl.DataFrame:
        state = self._state()
        if state is not None and not state[0] and state[1]:
            try:
                return pl.read_parquet(self._path(name, state[1]))
            except (OSError, pl.exceptions.PolarsError):  # missing (another process moved on) or unreadable
                pass
        return self._rebuild()[name]

    def _rebuild(self) -> dict[str, pl.DataFrame]:
        token = uuid.uuid4().hex
        with self.engine.begin() as conn:
            write_lock(conn)
            _set_state(conn, self.portal, token)
        frames = {}
        pid = portal_id(self.engine, self.portal)
        for name, (table, schema) in TABLES.items():
            query = sa.select(*(table.c[col] for col in schema)).where(table.c.portal_id == pid)
            frames[name] = self.read_sql(query, schema)
        self.rebuilds += 1
        try:
            self._write(token, frames)
        except OSError as exc:  # a read-only or full disk: the recompute goes on from the database
            log.warning("columnar copy of the mirror not written to %s (%s); reading the database instead",
                        self.folder, exc.strerror or type(exc).__name__)
        return frames

    def _write(self, token: str, frames: dict[str, pl.DataFrame]) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, frame in frames.items():
            final = self._path(name, token)
            tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                frame.write_parquet(out, compression="zstd", statistics=False)
            os.replace(tmp, final)
        for old in self.folder.glob("*.parquet"):  # earlier tokens' files
            if not old.name.endswith(f"-{token}.parquet"):
                old.unlink(missing_ok=True)
        for tmp in self.folder.glob(".*.tmp"):  # left by a process killed while writing
            pid = tmp.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _set_state(conn: Connection, portal: str, token: str) -> None:
    updated = conn.execute(sa.update(mirror_state).where(mirror_state.c.portal == portal)
                           .values(dirty=False, token=token)).rowcount
    if not updated:
        conn.execute(sa.insert(mirror_state).values(portal=portal, dirty=False, token=token))


# -- the triggers (revision 0006; since revision 0009 on portal_id, named through portal_keys) ------------

_SQLITE_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS {table}_mirror_{event} AFTER {event} ON {table}
WHEN NOT EXISTS (SELECT 1 FROM mirror_state JOIN portal_keys ON portal_keys.name = mirror_state.portal
                 WHERE portal_keys.id = {row}.portal_id AND mirror_state.dirty = 1)
BEGIN
  INSERT INTO mirror_state (portal, dirty, token)
  SELECT name, 1, '' FROM portal_keys WHERE id = {row}.portal_id
  ON CONFLICT (portal) DO UPDATE SET dirty = 1;
END
"""

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION lifecycle_mirror_changed_{which}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO mirror_state (portal, dirty, token)
  SELECT DISTINCT k.name, true, '' FROM changed_rows c JOIN portal_keys k ON k.id = c.portal_id
  ON CONFLICT (portal) DO UPDATE SET dirty = true WHERE mirror_state.dirty = false;
  RETURN NULL;
END $$
"""

_PG_TRIGGER = """
CREATE TRIGGER {table}_mirror_{event} AFTER {event} ON {table}
REFERENCING {which} TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION lifecycle_mirror_changed_{which_l}()
"""


def create_triggers(conn: Connection, tables: tuple[str, ...] = MIRROR_TABLES, *, sqlite_trigger: str = _SQLITE_TRIGGER,
                    pg_function: str = _PG_FUNCTION) -> None:
    """Flag a portal's mirror as changed on every write to ``tables`` (its customers and deals; revision
    0010 adds its product rows and products): row triggers on SQLite, statement triggers with transition
    tables on PostgreSQL (one flag write per statement, not per row). (Revision 0006 passes its own trigger
    texts, written for the tables keyed by the portal's name.)"""
    events = {"INSERT": "NEW", "UPDATE": "NEW", "DELETE": "OLD"}
    if conn.dialect.name == "sqlite":
        for table in tables:
            for event, row in events.items():
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_mirror_{event}")
                conn.exec_driver_sql(sqlite_trigger.format(table=table, event=event, row=row))
        return
    for which in ("NEW", "OLD"):
        conn.exec_driver_sql(pg_function.format(which=which.lower()))
    for table in tables:
        for event, which in events.items():
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_mirror_{event} ON {table}")
            conn.exec_driver_sql(_PG_TRIGGER.format(table=table, event=event, which=which, which_l=which.lower()))
