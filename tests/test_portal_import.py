"""`lifecycle portals import-state`: a single-portal SQLite deployment moves into the registry's database with
nothing lost: every table's rows arrive under the new name (run ids renumbered, references following), the OAuth
tokens keep working (the first refresh token is long spent), and the ledger keeps the CRM from getting a second
task for an action already taken. Against the Bitrix24 sandbox over HTTP; the registry on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from connector import crypto
from connector.config import load_config
from connector.pipeline import open_store, sync
from connector.portal_import import NOT_COPIED
from connector.registry import Registry, portal_tables
from connector.registry import portal_filter
from connector.store import runs
from sandbox.bitrix24 import running_portal
from tests.conftest import run_cli
from tests.registry_fixtures import _no_process_key, state_url  # noqa: F401 - fixtures

RUN_REFS = ("entered_run", "frozen_run", "planned_run", "run_id")


def single_portal(tmp_path, portal):
    """A single-portal deployment in tmp_path/single: a call-task campaign, two syncs, an audience, an OAuth
    token pair (stored as the OAuth client would; the sandbox's OAuth mode is not used with campaigns here:
    see the report of issue 13)."""
    folder = tmp_path / "single"
    folder.mkdir()
    path = folder / "lifecycle.toml"
    path.write_text(f"""[crm]
kind = "bitrix24"
name = "shop"
webhook_url = "{portal.webhook_url}"
requests_per_second = 500
reconcile_hours = 0
overlap_minutes = 0
[state]
url = "sqlite:///state.db"
[writeback]
tag_segments = ["lifecycle.*"]
[[campaign]]
name = "winback"
segment = "status.former"
auto_approve = true
on_enter = [{{ action = "call_task", title = "Call {{name}}", description = "Why did you stop?", due_in_days = 1 }}]
""", encoding="utf-8")
    config = load_config(path)
    first = sync(config).summary()
    assert first["actions_created"] > 0
    sync(config)
    store = open_store(config)
    try:
        store.save_audience("yandex:status.former:x", "yandex", remote_id="42", status="processed", detail={"n": 2})
        store.set_audience_members("yandex:status.former:x", {1: ({"email": "h1"}, "in"), 2: ({"phone": "h2"}, "adding")})
        store.set_audience_hashes("yandex:status.former:x", [("email", "a" * 64), ("phone", "b" * 64)], "in")
        store.save_oauth_token("access-token-0123456789", "refresh-token-0123456789", 1900000000)
    finally:
        store.close()
    return path, config


def table_rows(engine, table: sa.Table, portal: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).where(portal_filter(table, portal)))]


def normalised(rows: list[dict], table: sa.Table, run_map: dict[int, int] | None = None) -> list[str]:
    """Rows without their portal and row ids, run references mapped (source rows), secrets decrypted."""
    drop_id = "id" in table.c and len(table.primary_key.columns) == 1
    out = []
    for row in rows:
        row = dict(row)
        row.pop("portal", None)
        row.pop("portal_id", None)  # the portal's key differs between the stores
        if drop_id:
            row.pop("id")
        for c in RUN_REFS:
            if run_map is not None and row.get(c) is not None:
                row[c] = run_map[row[c]]
        for k in ("access_token", "refresh_token"):
            if k in row:
                row[k] = crypto.decrypt(row[k])
        for k, v in row.items():
            if isinstance(v, datetime) and v.tzinfo is None:
                row[k] = v.replace(tzinfo=timezone.utc)
            elif isinstance(v, datetime):
                row[k] = v.astimezone(timezone.utc)
        out.append(repr(sorted(row.items())))
    return sorted(out)


@pytest.mark.parametrize("key", [None, "fernet"])
def test_import_state_moves_everything_and_the_portal_keeps_working(tmp_path, state_url, key, monkeypatch):
    if key:
        monkeypatch.setenv(crypto.KEY_VAR, crypto.new_key())
    with running_portal(generate=(40, 120), time_scale=50) as portal:
        path, config = single_portal(tmp_path, portal)
        # the registry already serves another portal, with runs of its own (ids must not collide)
        other = tmp_path / "other"
        other.mkdir()
        (other / "contacts.csv").write_text("id,name\n1,A\n", encoding="utf-8")
        (other / "deals.csv").write_text("id,contact_id,status,amount,closed_at\n", encoding="utf-8")
        registry = Registry.open(state_url)
        registry.add("other", f'[crm]\nkind = "csv"\npath = "{other}"\n')
        for _ in range(3):
            sync(registry.load("other"))
        registry.close()

        result = run_cli(["portals", "import-state", "acme", "--config", str(path), "--state-url", state_url])
        assert result.returncode == 0, result
        assert "imported" in result.stdout and "customers 40" in result.stdout

        source = open_store(config)
        registry = Registry.open(state_url)
        try:
            with source.engine.connect() as conn:
                src_tables = set(sa.inspect(conn).get_table_names())
            src_runs = [r["id"] for r in sorted(table_rows(source.engine, runs, "shop"), key=lambda r: r["id"])]
            dst_runs = [r["id"] for r in sorted(table_rows(registry.engine, runs, "acme"), key=lambda r: r["id"])]
            assert len(src_runs) == len(dst_runs) == 2
            run_map = dict(zip(src_runs, dst_runs))
            other_runs = {r["id"] for r in table_rows(registry.engine, runs, "other")}
            assert not other_runs & set(dst_runs) and len(other_runs) == 3
            with registry.engine.connect() as conn:
                tables = [t for t in portal_tables(conn) if t.name in src_tables and t.name not in NOT_COPIED]
            compared = {}
            for t in tables:
                want = table_rows(source.engine, t, "shop")
                got = table_rows(registry.engine, t, "acme")
                assert len(got) == len(want), t.name
                assert normalised(got, t) == normalised(want, t, run_map), t.name
                compared[t.name] = len(want)
            for name in ("customers", "deals", "membership", "membership_events", "segments", "actions", "cursors",
                         "oauth_tokens", "audiences", "audience_members", "audience_hashes", "dash_snapshots"):
                assert compared[name] > 0, name  # each of them really held something to move
            if key:  # the tokens arrive encrypted with the registry's key
                raw = table_rows(registry.engine, registry_tokens(), "acme")[0]
                assert crypto.is_encrypted(raw["refresh_token"])
            assert table_rows(source.engine, runs, "shop")  # the source is untouched
            tasks_before = len(portal.state()["tasks"]) if "tasks" in portal.state() else None
            assert registry_store_token(state_url) == ("access-token-0123456789", "refresh-token-0123456789")
            summary = sync(registry.load("acme")).summary()
            assert summary["actions_created"] == 0  # the ledger knows every task already created
            if tasks_before is not None:
                assert len(portal.state()["tasks"]) == tasks_before
        finally:
            source.close()
            registry.close()

        again = run_cli(["portals", "import-state", "acme", "--config", str(path), "--state-url", state_url])
        assert again.returncode == 2 and "already has data in the registry" in again.stderr
        same = run_cli(["portals", "import-state", "x", "--config", str(path), "--state-url", config.state_url])
        assert same.returncode == 2 and "registry's own database" in same.stderr


def registry_store_token(url: str) -> tuple[str, str]:
    from connector.store import StateStore

    store = StateStore.open(url, "acme")
    try:
        token = store.oauth_token()
    finally:
        store.close()
    return token["access_token"], token["refresh_token"]


def registry_tokens():
    from connector.store import oauth_tokens

    return oauth_tokens


def test_import_state_names_what_to_fix(tmp_path, state_url, monkeypatch):
    folder = tmp_path / "single"
    folder.mkdir()
    path = folder / "lifecycle.toml"
    path.write_text('[crm]\nkind = "bitrix24"\n[state]\nurl = "sqlite:///state.db"\n', encoding="utf-8")
    monkeypatch.setenv("LIFECYCLE_CRM__WEBHOOK_URL", "https://b24.example.ru/rest/1/secretcode123/")
    assert load_config(path).crm.webhook_url is not None  # the single-portal deployment ran with it
    result = run_cli(["portals", "import-state", "acme", "--config", str(path), "--state-url", state_url])
    assert result.returncode == 2
    assert "needs webhook_url" in result.stderr and "reads no LIFECYCLE_* variables" in result.stderr
    assert "secretcode123" not in result.stderr + result.stdout
    missing = run_cli(["portals", "import-state", "acme", "--config", str(tmp_path / "nope.toml"), "--state-url", state_url])
    assert missing.returncode == 2 and "not found" in missing.stderr and len(missing.stderr.splitlines()) == 1
