"""State store: migrations, and writes staying visible to other connections after bulk reads."""

from __future__ import annotations

import sqlite3
from datetime import date

import pytest
import sqlalchemy as sa

from connector.store import SCHEMA_VERSION, StateStore, meta_table


def test_writes_after_a_bulk_read_are_visible_to_other_processes_at_once(tmp_path):
    # connectorx (bulk reads) links its own SQLite; a pooled pysqlite connection left open across its
    # read lost sight of the WAL, so later writes were invisible to others until the store closed.
    db = tmp_path / "state.db"
    store = StateStore.open(f"sqlite:///{db}", "p")
    store.start_run("first", date(2026, 1, 1))
    assert store.membership_frame().height == 0  # a connectorx read
    store.start_run("second", date(2026, 1, 2))
    other = sqlite3.connect(db)
    try:
        assert other.execute("select count(*) from runs").fetchone()[0] == 2
    finally:
        other.close()
    assert [r["kind"] for r in store.last_runs()] == ["second", "first"]
    store.close()


def test_migrations_record_the_version_and_refuse_a_newer_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore.open(url, "p")
    with store.engine.connect() as conn:
        version = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
    assert version == str(SCHEMA_VERSION)
    with store.engine.begin() as conn:
        conn.execute(sa.update(meta_table).values(value=str(SCHEMA_VERSION + 1)))
    store.close()
    with pytest.raises(RuntimeError, match="newer than this program"):
        StateStore.open(url, "p")


def test_portals_share_a_database_without_seeing_each_other(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    a, b = StateStore.open(url, "a"), StateStore.open(url, "b")
    a.start_run("sync", None)
    assert len(a.last_runs()) == 1 and b.last_runs() == []
    a.close()
    b.close()
