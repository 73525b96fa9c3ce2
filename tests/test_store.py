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


def test_the_alembic_revisions_build_exactly_the_declared_schema(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from connector.store import HEAD, metadata

    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", "p")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [(HEAD,)]
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        store.close()


def test_portals_share_a_database_without_seeing_each_other(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    a, b = StateStore.open(url, "a"), StateStore.open(url, "b")
    a.start_run("sync", None)
    assert len(a.last_runs()) == 1 and b.last_runs() == []
    a.close()
    b.close()


def _ledger_with(store: StateStore, keys: list[str]) -> None:
    import polars as pl

    from connector.campaigns import PlannedAction

    empty = pl.DataFrame(schema={"segment": pl.String, "customer_id": pl.Int64})
    planned = [PlannedAction(key=k, campaign="c", action="call_task", customer_id=i, entry_date=date(2026, 1, 1),
                             event="enter", responsible_id=None) for i, k in enumerate(keys)]
    store.apply_membership(store.start_run("sync", date(2026, 1, 1)), date(2026, 1, 1), empty, empty, {}, planned)


def test_a_store_at_version_5_gains_the_lock_start_and_the_claim_owner(tmp_path):
    from connector.store import actions, locks

    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore.open(url, "p")
    with store.engine.begin() as conn:  # back to the schema version 5 left behind
        conn.exec_driver_sql("ALTER TABLE locks DROP COLUMN locked_since")
        conn.exec_driver_sql("ALTER TABLE actions DROP COLUMN claimed_by")
        conn.execute(sa.update(meta_table).values(value="5"))
        conn.exec_driver_sql("DROP TABLE alembic_version")  # stores of version 5 predate Alembic
    store.close()
    store = StateStore.open(url, "p")
    try:
        have = {t: {c["name"] for c in sa.inspect(store.engine).get_columns(t)} for t in ("locks", "actions")}
        assert "locked_since" in have["locks"] and "claimed_by" in have["actions"]
        assert {c.name for c in locks.c} <= have["locks"] and {c.name for c in actions.c} <= have["actions"]
        assert store.try_lock("h:1:a", 60) and store.lock_info()["locked_since"] is not None
    finally:
        store.close()
    StateStore.open(url, "p").close()  # version 6 now: nothing to do, nothing fails


def test_a_claim_takes_only_pending_rows_and_only_while_holding_the_lock(tmp_path):
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", "p")
    try:
        _ledger_with(store, ["k1", "k2", "k3"])
        assert store.claim_actions(["k1", "k2"], "a:1:x") == set()  # a does not hold the lock
        assert store.try_lock("a:1:x", 60)
        assert store.claim_actions(["k1", "k2"], "a:1:x") == {"k1", "k2"}
        assert store.claim_actions(["k1", "k2", "k3"], "a:1:x") == {"k3"}  # k1, k2 are sending already
        store.release_lock("a:1:x")
        assert store.try_lock("b:2:y", 60)
        store.set_actions(["k1"], "done", results={"k1": {"id": 1}}, claimed_by="b:2:y")  # not b's: untouched
        assert {r.key: r.status for r in store.ledger()} == {"k1": "sending", "k2": "sending", "k3": "sending"}
        store.set_actions(["k1", "k2"], "planned", not_claimed_by="b:2:y")  # a's rows: a dead run's, settled
        assert store.claim_actions(["k1", "k2", "k3"], "b:2:y") == {"k1", "k2"}
        assert {r.key: r.claimed_by for r in store.ledger()} == {"k1": "b:2:y", "k2": "b:2:y", "k3": "a:1:x"}
    finally:
        store.close()


def test_a_lease_renews_its_lock_and_notices_when_it_is_taken_over(tmp_path):
    import time

    from connector.synclock import LockLost, SyncLease, SyncLocked

    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", "p")
    lease = SyncLease(store, 0.6)
    try:
        lease.acquire()
        with pytest.raises(SyncLocked, match=r"another sync of portal 'p' is running since .* \(holder [^:]+:\d+\)"):
            SyncLease(store, 0.6).acquire(wait=0.2)
        time.sleep(1.5)  # well past 0.6 s: only renewals keep it
        assert store.lock_holder()[0] == lease.holder and not lease.lost.is_set()
        assert store.try_lock("thief:1:z", 60, replace=lease.holder)
        deadline = time.monotonic() + 10
        while not lease.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(LockLost):
            lease.check()
    finally:
        lease.release()
        store.close()


def test_the_lock_of_a_killed_process_on_this_machine_is_taken_over_at_once(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from connector.synclock import SyncLease

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", "p")
    try:
        assert store.try_lock(f"{socket.gethostname()}:{int(dead.stdout)}:abcd", 3600)
        lease = SyncLease(store, 60)
        lease.acquire()  # no wait: the holder's pid is gone
        assert store.lock_holder()[0] == lease.holder
        lease.release()
        assert store.try_lock(f"{socket.gethostname()}:{os.getppid()}:abcd", 3600)  # alive: kept
        with pytest.raises(Exception, match="another sync"):
            SyncLease(store, 60).acquire()
    finally:
        store.close()


def test_the_ledger_gives_frozen_typed_rows_and_the_planners_history(tmp_path):
    import dataclasses

    import polars as pl

    from connector.campaigns import PlannedAction
    from connector.store import LedgerRow

    day = date(2026, 1, 5)
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", "p")
    try:
        empty = pl.DataFrame(schema={"segment": pl.String, "customer_id": pl.Int64})
        common = dict(campaign="c", entry_date=day, event="enter")
        planned = [PlannedAction(key="c/deal/1", action="deal", customer_id=1, responsible_id=7, payload={"title": "Т"}, **common),
                   PlannedAction(key="c/deal_task/1", action="deal_task", customer_id=1, responsible_id=7,
                                 parent_key="c/deal/1", **common),
                   PlannedAction(key="c/call/2", action="call_task", customer_id=2, responsible_id=None,
                                 skip_reason="do not contact", **common)]
        store.apply_membership(store.start_run("sync", day), day, empty, empty, {}, planned)
        store.set_actions(["c/deal/1"], "done", results={"c/deal/1": {"id": 55}}, count_attempt=True)
        rows = {r.key: r for r in store.ledger()}
        deal = rows["c/deal/1"]
        assert isinstance(deal, LedgerRow) and deal.status == "done" and deal.result == {"id": 55}
        assert deal.payload == {"title": "Т"} and deal.entry_date == day and deal.attempts == 1
        assert deal.responsible_id == 7 and rows["c/deal_task/1"].parent_key == "c/deal/1"
        assert rows["c/call/2"].status == "skipped" and rows["c/call/2"].skip_reason == "do not contact"
        assert deal["key"] == deal.key and deal.get("claimed_by") is None  # mapping reads for the CRM sinks
        with pytest.raises(dataclasses.FrozenInstanceError):
            deal.status = "planned"  # type: ignore[misc]
        history = store.ledger_history()
        assert history.keys == {"c/deal/1", "c/deal_task/1", "c/call/2"}  # every key: none planned twice
        # a skip and a deal's own call task are no touches
        assert history.touches == {1: [day]} and history.last_by_campaign == {("c", 1): day}
        assert history.per_rep_day == {("c", 7, day): 1} and history.per_campaign == {"c": 1}
    finally:
        store.close()


def test_revisions_are_one_numbered_line_matching_their_files():
    """meta.schema_version is derived from the revision number (5 + N), so revisions must stay 0001, 0002, ...
    in one line, each file named after its revision."""
    from alembic.script import ScriptDirectory

    from connector.store import migrate

    script = ScriptDirectory(str(migrate.MIGRATIONS_DIR))
    line = [s.revision for s in script.walk_revisions()][::-1]
    # a branch's revision may be named 0005_<topic> until the branches are merged (HELPERS.md): the number counts
    assert line == migrate._revisions() and [r[:4] for r in line] == [f"{n:04d}" for n in range(1, len(line) + 1)]
    assert script.get_heads() == [migrate.HEAD] and migrate.SCHEMA_VERSION == migrate.LEGACY_BASE + len(line)
    for s in script.walk_revisions():
        name = s.path.rsplit("/", 1)[-1]
        assert name.startswith(s.revision + "_") or name == s.revision + ".py"
