"""The state store on a real PostgreSQL server (started by `make test` through scripts/test-postgres.sh):
migrations, a sync and report identical to SQLite's, membership history, the campaign ledger, ad
audiences and OAuth tokens. Each test gets its own fresh database (the `postgres_url` fixture)."""

from __future__ import annotations

import json
import re
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from connector.campaigns import PlannedAction
from connector.config import load_config
from connector.pipeline import open_store, sync
from connector.store import HEAD, SCHEMA_VERSION, StateStore, membership, membership_events, meta_table, metadata, runs
from tests.conftest import named_select
from tests.conftest import ROOT, run_cli

AS_OF = date(2026, 11, 23)


def test_migrations_apply_and_record_the_version(postgres_url):
    store = StateStore.open(postgres_url, "p")
    try:
        assert store.engine.dialect.name == "postgresql"
        with store.engine.connect() as conn:
            # the schema is Alembic's now: its version table besides the store's own, at the newest revision,
            # and nothing differs from the tables the code declares
            assert set(sa.inspect(conn).get_table_names()) == set(metadata.tables) | {"alembic_version"}
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [(HEAD,)]
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            version = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
        assert version == str(SCHEMA_VERSION)
    finally:
        store.close()
    StateStore.open(postgres_url, "p").close()  # opening again migrates nothing and fails on nothing
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.update(meta_table).values(value=str(SCHEMA_VERSION + 1)))
    engine.dispose()
    with pytest.raises(RuntimeError, match="newer than this program"):
        StateStore.open(postgres_url, "p")


def _sample_workspace(root: Path, state_url: str) -> Path:
    """config.example.toml over a copy of examples/ with its [state] url replaced."""
    root.mkdir(parents=True)
    shutil.copytree(ROOT / "examples", root / "examples")
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    text, n = re.subn(r'(?m)^url = "sqlite:///lifecycle\.db"', f'url = "{state_url}"', text)
    assert n == 1, "config.example.toml: the [state] url line moved"
    config = root / "lifecycle.toml"
    config.write_text(text, encoding="utf-8")
    return config


def _cli(config: Path, *args: str) -> str:
    proc = run_cli([*args, "--config", str(config)], cwd=config.parent)
    assert proc.returncode == 0, f"lifecycle {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_sample_sync_and_report_are_the_same_as_on_sqlite(tmp_path, postgres_url):
    on_pg = _sample_workspace(tmp_path / "pg", postgres_url)
    on_sqlite = _sample_workspace(tmp_path / "sqlite", "sqlite:///lifecycle.db")
    reports = {}
    for name, config in (("pg", on_pg), ("sqlite", on_sqlite)):
        _cli(config, "sync")
        reports[name] = _cli(config, "report", "--as-of", AS_OF.isoformat(), "--format", "json", "--members")
    assert json.loads(reports["pg"])["customers"] == 300
    assert json.loads(reports["pg"]) == json.loads(reports["sqlite"])
    assert reports["pg"] == reports["sqlite"]

    # The stored mirror and membership (bulk reads through connectorx) are the same too.
    frames = {}
    for name, config in (("pg", on_pg), ("sqlite", on_sqlite)):
        store = open_store(load_config(config))
        try:
            frames[name] = (
                store.customers_frame("contact").sort("id"),
                store.deals_frame().sort("id"),
                store.membership_frame().sort("segment", "customer_id"),
            )
        finally:
            store.close()
    for got, want in zip(frames["pg"], frames["sqlite"]):
        assert got.schema == want.schema
        assert got.equals(want)
    assert frames["pg"][2].height > 300
    assert (tmp_path / "sqlite" / "lifecycle.db").exists() and not (tmp_path / "pg" / "lifecycle.db").exists()


def test_a_second_sync_records_entries_and_exits(ws, postgres_url):
    ago = lambda days: (AS_OF - timedelta(days=days)).isoformat()  # noqa: E731
    ws.write_contacts([{"id": 1, "birthday": "1990-12-01"}, {"id": 2}, {"id": 3}, {"id": 4}])
    ws.write_deals([
        {"id": 1, "contact_id": 1, "status": "won", "amount": 100, "closed_at": ago(10)},
        {"id": 2, "contact_id": 2, "status": "won", "amount": 100, "closed_at": ago(70)},
        {"id": 3, "contact_id": 3, "status": "won", "amount": 100, "closed_at": ago(200)},
    ])
    ws.write_config(base=f'[crm]\nkind = "csv"\npath = "crm"\n\n[state]\nurl = "{postgres_url}"\n')
    config = load_config(ws.config_path)
    first = sync(config, as_of=AS_OF)
    ws.write_contacts([{"id": 1, "birthday": "1990-12-01"}, {"id": 2}, {"id": 4}])
    ws.write_deals([
        {"id": 1, "contact_id": 1, "status": "won", "amount": 100, "closed_at": ago(10)},
        {"id": 2, "contact_id": 2, "status": "won", "amount": 100, "closed_at": ago(70)},
        {"id": 4, "contact_id": 2, "status": "won", "amount": 100, "closed_at": ago(1)},
        {"id": 5, "contact_id": 4, "status": "won", "amount": 100, "closed_at": ago(1)},
    ])
    second = sync(config, as_of=AS_OF + timedelta(days=1))
    assert second.run_id != first.run_id

    store = open_store(config)
    try:
        with store.engine.connect() as conn:
            events = conn.execute(named_select(membership_events)).mappings().all()
            current = conn.execute(named_select(membership)).mappings().all()
            run_rows = conn.execute(sa.select(runs).order_by(runs.c.id)).mappings().all()
        frame = store.membership_events_frame(second.run_id)
        birthdays = store.customers_frame("contact").sort("id")["birthday"].to_list()
    finally:
        store.close()
    got = {(e["event"], e["segment"], e["customer_id"]) for e in events if e["run_id"] == second.run_id}
    assert ("exit", "lifecycle.new_sleeping", 2) in got and ("enter", "lifecycle.promising_active", 2) in got
    assert ("exit", "lifecycle.new_asleep", 3) in got and ("exit", "status.former", 3) in got
    assert ("exit", "status.prospect", 4) in got and ("enter", "lifecycle.new_active", 4) in got
    assert not any(cid == 1 for _, _, cid in got)
    assert {e["on_date"] for e in events if e["run_id"] == first.run_id} == {AS_OF}
    assert {e["on_date"] for e in events if e["run_id"] == second.run_id} == {AS_OF + timedelta(days=1)}
    entered = {(r["segment"], r["customer_id"]): (r["entered_on"], r["entered_run"]) for r in current}
    assert entered[("lifecycle.new_active", 1)] == (AS_OF, first.run_id)
    assert entered[("lifecycle.new_active", 4)] == (AS_OF + timedelta(days=1), second.run_id)
    assert not any(cid == 3 for _, cid in entered)
    assert sorted(map(tuple, frame.select("event", "segment", "customer_id").rows())) == sorted(got)
    assert [r["status"] for r in run_rows] == ["ok", "ok"] and run_rows[0]["as_of"] == AS_OF
    assert isinstance(run_rows[0]["finished_at"], datetime) and run_rows[0]["finished_at"].tzinfo is not None
    assert birthdays == [date(1990, 12, 1), None, None]


def _planned(key: str, customer: int, *, skip: str | None = None, parent: str | None = None) -> PlannedAction:
    return PlannedAction(
        key=key, campaign="winback", action="deal_task" if parent else "deal", customer_id=customer,
        entry_date=AS_OF, event="enter", responsible_id=7,
        payload={"title": "Позвонить клиенту", "deadline": "2026-11-24T18:00:00+03:00"},
        skip_reason=skip, parent_key=parent,
    )


def test_campaign_ledger_round_trips(postgres_url):
    store = StateStore.open(postgres_url, "p")
    other = StateStore.open(postgres_url, "other")
    try:
        run_id = store.start_run("sync", AS_OF)
        empty = pl.DataFrame(schema={"segment": pl.String, "customer_id": pl.Int64})
        entered = pl.DataFrame({"segment": ["status.former", "status.former"], "customer_id": [1, 2]})
        planned = [_planned("winback:deal:1:2026-11-23", 1), _planned("winback:deal:2:2026-11-23", 2, skip="cooldown"),
                   _planned("winback:deal_task:1:2026-11-23", 1, parent="winback:deal:1:2026-11-23")]
        store.apply_membership(run_id, AS_OF, entered, empty, {"status.former": (False, "preset")}, planned)
        # planning the same keys again (a re-run) adds nothing
        store.apply_membership(run_id, AS_OF, empty, empty, {"status.former": (False, "preset")}, planned)
        ledger = store.ledger()
        assert [r.key for r in ledger] == sorted(p.key for p in planned)
        by_key = {r.key: r for r in ledger}
        deal = by_key["winback:deal:1:2026-11-23"]
        assert deal.status == "planned" and deal.entry_date == AS_OF and deal.attempts == 0
        assert deal.payload["title"] == "Позвонить клиенту" and deal.result is None
        assert by_key["winback:deal:2:2026-11-23"].status == "skipped"
        assert by_key["winback:deal:2:2026-11-23"].skip_reason == "cooldown"
        assert by_key["winback:deal_task:1:2026-11-23"].parent_key == "winback:deal:1:2026-11-23"

        store.set_actions(["winback:deal:1:2026-11-23"], "sending", count_attempt=True)
        store.set_actions(["winback:deal_task:1:2026-11-23"], "failed", errors={"winback:deal_task:1:2026-11-23": "x" * 5000},
                          count_attempt=True)
        assert [r.key for r in store.ledger(statuses=["sending"])] == ["winback:deal:1:2026-11-23"]
        store.set_actions(["winback:deal:1:2026-11-23"], "done", results={"winback:deal:1:2026-11-23": {"id": 4242}},
                          count_attempt=True)
        done = store.ledger(statuses=["done"], customer_ids=[1])
        assert len(done) == 1 and done[0].result == {"id": 4242} and done[0].attempts == 2
        assert done[0].error is None and done[0].updated_at.tzinfo is not None
        failed = store.ledger(statuses=["failed"])[0]
        assert len(failed.error) == 2000 and failed.attempts == 1
        assert store.ledger(customer_ids=[3]) == []
        summary = {row[0]: row for row in store.ledger_summary()}
        assert summary["winback:deal:1:2026-11-23"] == ("winback:deal:1:2026-11-23", "winback", 1, AS_OF, 7, "done", "deal")
        assert other.ledger() == []  # portals do not see each other's ledger
    finally:
        store.close()
        other.close()


def test_audiences_round_trip(postgres_url):
    store = StateStore.open(postgres_url, "p")
    try:
        key = "yandex:status.former:Former customers"
        assert store.audience(key) is None and store.audience_members(key) == {}
        store.save_audience(key, "yandex", remote_id=None, status=None, detail={})
        first = store.audience(key)
        assert first["cabinet"] == "yandex" and first["remote_id"] is None and first["detail"] == {}
        store.save_audience(key, "yandex", remote_id="123456", status="is_processed",
                            detail={"request": "r-1", "sent": 2, "at": date(2026, 11, 23)})
        saved = store.audience(key)
        assert saved["remote_id"] == "123456" and saved["status"] == "is_processed"
        assert saved["detail"] == {"request": "r-1", "sent": 2, "at": "2026-11-23"}
        assert saved["updated_at"] >= first["updated_at"]

        a, b = {"email": "a" * 64}, {"email": "b" * 64, "phone": "c" * 64}
        store.set_audience_members(key, {1: (a, "adding"), 2: (b, "adding"), 3: (a, "in")})
        store.set_audience_members(key, {1: (a, "in"), 2: (b, "removing")})
        store.set_audience_members(key, {})
        assert store.audience_members(key) == {1: (a, "in"), 2: (b, "removing"), 3: (a, "in")}
        store.drop_audience_members(key, [2, 3, 99])
        assert store.audience_members(key) == {1: (a, "in")}
        assert store.audience_members("vk:status.former:Other") == {}
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from audiences")).scalar() == 1
    finally:
        store.close()


def test_oauth_tokens_save_and_load(postgres_url):
    store = StateStore.open(postgres_url, "portal-a")
    try:
        assert store.oauth_token() is None
        store.save_oauth_token("access-1", "refresh-1", 1_900_000_000)
        token = store.oauth_token()
        assert (token["access_token"], token["refresh_token"], token["expires_at"]) == ("access-1", "refresh-1", 1_900_000_000)
        store.save_oauth_token(None, "refresh-2", None)  # a rotation replaces the pair in place
        token = store.oauth_token()
        assert (token["access_token"], token["refresh_token"], token["expires_at"]) == (None, "refresh-2", None)
        assert token["updated_at"].tzinfo is not None
        assert StateStore(store.engine, "portal-b").oauth_token() is None
    finally:
        store.close()


def test_workers_opening_a_new_database_at_once_migrate_it_once(postgres_url):
    # Several containers of one deployment start together against an empty PostgreSQL database.
    from concurrent.futures import ThreadPoolExecutor

    def open_and_close(i: int) -> int:
        store = StateStore.open(postgres_url, f"w{i}")
        try:
            return store.start_run("sync", AS_OF)
        finally:
            store.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        run_ids = list(pool.map(open_and_close, range(6)))
    assert len(set(run_ids)) == 6
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(meta_table)).scalar() == 1
    engine.dispose()


def test_product_rows_are_replaced_per_deal_and_read_with_their_products(postgres_url):
    from adapters.base import Deal, ProductRow, PullResult

    store = StateStore.open(postgres_url, "p")
    try:
        deals = [Deal(id=1, status="won", contact_id=5, amount=10, closed_ts=1_700_000_000),
                 Deal(id=2, status="won", contact_id=6, amount=10, closed_ts=1_700_000_000)]
        rows = [ProductRow(1, 1, "101", "Lenses", "Optics", 2.0, 45.0), ProductRow(2, 2, None, "Gift", None, 1.0, 5.0)]
        store.apply_pull(PullResult(customers=[], deals=deals, snapshot=True, product_rows=rows,
                                    product_deals=frozenset({1, 2})))
        assert store.products_pulled()
        frame = store.products_frame("contact").sort("deal_id")
        assert frame.select("customer_id", "product_id", "product_name", "section", "quantity").rows() == [
            (5, "101", "Lenses", "Optics", 2.0), (6, None, "Gift", None, 1.0)]
        store.apply_pull(PullResult(customers=[], deals=[], snapshot=False, deleted_deal_ids=frozenset({2}),
                                    product_rows=[ProductRow(1, 7, "102", "Solution", "Optics", 1.0, 9.0)],
                                    product_deals=frozenset({1})))
        assert store.product_rows_frame().select("deal_id", "line", "product_id").rows() == [(1, 7, "102")]
    finally:
        store.close()
