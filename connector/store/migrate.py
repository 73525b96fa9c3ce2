"""Schema upgrades through Alembic, run by the store itself when it opens.

Revisions live in ``connector/store/migrations/versions`` (package data), numbered ``0001``, ``0002``, ...
in one line. :func:`upgrade` runs them on the caller's connection, inside one transaction that first takes
the database's migration lock (PostgreSQL: an advisory lock; SQLite: ``BEGIN IMMEDIATE`` with the busy
timeout), so processes starting together on a new or old store wait for the one that upgrades it and then
find the work done.

Stores written before Alembic are recognised by ``meta.schema_version`` (1..7) without an
``alembic_version`` table: the legacy steps they lack up to version 6 run (connector.store.legacy), the
store is stamped with the revision of the same schema (6 -> 0001, 7 -> 0002), then upgraded to head.

``meta.schema_version`` is still written (5 + the revision number), so a program from before Alembic
refuses a store newer than it with its own clear message; this program refuses a store whose revision
or version it does not know.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from connector.store import legacy
from connector.store.base import write_lock
from connector.store.schema import meta_table

logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin and "Running upgrade" lines are noise to users

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 0x6C6966656379  # PostgreSQL advisory lock held while migrating ("lifecy")
LEGACY_BASE = 5  # revision N has the schema of legacy version 5 + N
_REVISION_FILE = re.compile(r"^(\d{4})_\w+\.py$")


_REVISION_ID = re.compile(r"^revision\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)


def _revisions() -> list[str]:
    """The revision ids, in file order (``0004``, ``0005_products``: the id a file declares)."""
    out = []
    for path in sorted((MIGRATIONS_DIR / "versions").iterdir()):
        if _REVISION_FILE.match(path.name):
            found = _REVISION_ID.search(path.read_text(encoding="utf-8"))
            out.append(found.group(1) if found else path.name[:4])
    return out


HEAD = _revisions()[-1]
SCHEMA_VERSION = LEGACY_BASE + int(HEAD[:4])  # what meta.schema_version says of a store at head


class NewerStoreError(RuntimeError):
    """The store was upgraded by a newer crm-lifecycle than this one."""


def alembic_config(conn: Connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    return config


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def upgrade(conn: Connection) -> None:
    """Bring the store on ``conn`` to the newest revision, in the caller's transaction (begun, nothing
    executed yet): fresh, legacy or already Alembic-managed. A store already at head is recognised with two
    plain queries, without loading Alembic (a command like ``lifecycle report`` starts faster)."""
    # Processes may start together on an empty database: one migrates, the others wait here (the lock ends
    # with the transaction) and then find the work done.
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    write_lock(conn)  # SQLite: the database's write lock before anything is read
    tables = set(sa.inspect(conn).get_table_names())
    version = 0
    if "meta" in tables:
        row = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")).first()
        version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise NewerStoreError(f"state store schema is version {version}, newer than this program ({SCHEMA_VERSION}); "
                              "upgrade crm-lifecycle")
    if version == SCHEMA_VERSION and "alembic_version" in tables:
        stamped = [r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]
        if stamped == [HEAD]:
            return  # at head: nothing to do
    from alembic import command

    revision = current_revision(conn) if "alembic_version" in tables else None
    if revision is not None and revision not in _revisions():
        raise NewerStoreError(f"state store schema is at revision {revision}, unknown to this program (newest: {HEAD}); "
                              "upgrade crm-lifecycle")
    config = alembic_config(conn)
    if revision is None and version:  # written before Alembic
        command.stamp(config, legacy.bring_to_v6(conn, version))
        revision = current_revision(conn)
    if revision != HEAD:
        command.upgrade(config, "head")
    if version != SCHEMA_VERSION:
        conn.execute(sa.delete(meta_table).where(meta_table.c.key == "schema_version"))
        conn.execute(sa.insert(meta_table).values(key="schema_version", value=str(SCHEMA_VERSION)))


VACUUM_KEY = "vacuum_pending"  # meta key a revision that rebuilt big tables sets on SQLite (0009)


def vacuum_if_pending(engine: sa.Engine) -> None:
    """SQLite: after a revision that rebuilt big tables (it sets ``meta.vacuum_pending``), ``VACUUM`` once so
    the file gives back the old tables' pages (1M customers / 5M deals: 1,380 MB right after revision 0009,
    377 MB after). VACUUM cannot run inside a transaction, so it runs here, after the upgrade committed; if
    another process keeps the file busy, it is left for the next start."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        pending = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == VACUUM_KEY)).first()
    if pending is None:
        return
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM")
    except sa.exc.OperationalError as exc:
        logging.getLogger("lifecycle.store").warning("state store: VACUUM after the upgrade deferred (%s)",
                                                     str(exc.orig).splitlines()[0])
        return
    with engine.begin() as conn:
        conn.execute(sa.delete(meta_table).where(meta_table.c.key == VACUUM_KEY))
