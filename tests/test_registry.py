"""The portal registry (connector/registry.py): portals in the shared state store, their configs validated like a
config file, their states, and purge. Each test runs on SQLite and, under scripts/test-postgres.sh, PostgreSQL."""

from __future__ import annotations

import csv
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.config import ConfigError
from connector.pipeline import sync
from connector.registry import PORTAL_STATES, Registry, portal_tables
from connector.registry import portal_filter
from tests.conftest import CONTACT_HEADER, DEAL_HEADER
from tests.registry_fixtures import _no_process_key, state_url  # noqa: F401 - fixtures

AS_OF = date(2026, 11, 23)


def csv_crm(folder: Path, contacts: list[int], deals: list[tuple[int, int, int]]) -> Path:
    """A CSV "CRM": contacts by id; deals (id, contact_id, days before AS_OF), all won."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "contacts.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CONTACT_HEADER)
        w.writeheader()
        for cid in contacts:
            w.writerow({"id": cid, "name": f"Customer {cid}"})
    with (folder / "deals.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=DEAL_HEADER)
        w.writeheader()
        for did, cid, days in deals:
            w.writerow({"id": did, "contact_id": cid, "status": "won", "amount": 100,
                        "closed_at": (AS_OF - timedelta(days=days)).isoformat()})
    return folder


def csv_config(path: str, extra: str = "") -> str:
    return f'[crm]\nkind = "csv"\npath = "{path}"\ntimezone = "Europe/Moscow"\n\n[state]\nurl = "sqlite:///elsewhere.db"\n{extra}'


def rows_of(registry: Registry, portal: str) -> dict[str, int]:
    with registry.engine.connect() as conn:
        return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t).where(portal_filter(t, portal))).scalar_one()
                for t in portal_tables(conn)}


def test_add_get_list_load_and_sync_a_portal(tmp_path, state_url):
    csv_crm(tmp_path / "acme", [1, 2, 3], [(1, 1, 10), (2, 2, 40)])
    registry = Registry.open(state_url)
    try:
        assert registry.list() == []
        portal = registry.add("acme", csv_config("acme"), base_dir=tmp_path)
        assert (portal.name, portal.kind, portal.state, portal.failures) == ("acme", "csv", "active", 0)
        assert portal.last_run_at is None and portal.created_at.tzinfo is not None
        assert registry.get("acme") == portal
        assert [p.name for p in registry.list()] == ["acme"]
        loaded = registry.load("acme")
        assert loaded.crm.name == "acme" and loaded.state_url == state_url  # forced, whatever the text says
        assert loaded.crm.path == (tmp_path / "acme").resolve()  # relative to the config's folder
        result = sync(loaded, as_of=AS_OF)
        assert result.summary()["customers"] == 3
        counts = rows_of(registry, "acme")
        assert counts["customers"] == 3 and counts["deals"] == 2 and counts["runs"] == 1
        assert rows_of(registry, "default") == {t: 0 for t in counts}  # nothing under the file's [crm] name
        with pytest.raises(ConfigError, match=r"no portal named 'nope'; see lifecycle portals list"):
            registry.get("nope")
        with pytest.raises(ConfigError, match="exists; pass --replace"):
            registry.add("acme", csv_config("acme"), base_dir=tmp_path)
        replaced = registry.add("acme", csv_config("acme", '\n[kpi]\nactive_share_target = 0.5\n'), replace=True,
                                base_dir=tmp_path)
        assert replaced.created_at == portal.created_at
        assert registry.load("acme").settings.kpi.active_share_target == 0.5
    finally:
        registry.close()


def test_a_broken_config_is_refused_with_what_to_fix(tmp_path, state_url):
    registry = Registry.open(state_url)
    try:
        with pytest.raises(ConfigError, match=r"portal acme: not valid TOML"):
            registry.add("acme", '[crm\nkind = "csv"\n')
        with pytest.raises(ConfigError) as err:
            registry.add("acme", '[crm]\nkind = "csv"\npath = "x"\ntimezon = "Europe/Moscow"\n', origin="acme.toml")
        assert "acme.toml" in str(err.value) and "crm.timezon: unknown key" in str(err.value)
        with pytest.raises(ConfigError, match="kind = 'bitrix24' needs webhook_url"):
            registry.add("acme", '[crm]\nkind = "bitrix24"\n')
        with pytest.raises(ConfigError, match=r"unknown CRM kind 'sap'"):
            registry.add("acme", '[crm]\nkind = "sap"\n')
        for bad in ("Acme", "-acme", "a" * 64, "a/b", ""):
            with pytest.raises(ConfigError, match="portal name .* is not allowed"):
                registry.add(bad, csv_config("x"))
        assert registry.list() == []  # nothing half-added
    finally:
        registry.close()


def test_environment_overrides_do_not_reach_registry_portals(tmp_path, state_url, monkeypatch):
    monkeypatch.setenv("LIFECYCLE_CRM__TIMEZONE", "Asia/Yekaterinburg")
    registry = Registry.open(state_url)
    try:
        registry.add("acme", csv_config("acme"), base_dir=tmp_path)
        assert registry.load("acme").crm.timezone == "Europe/Moscow"
    finally:
        registry.close()


def test_state_transitions(tmp_path, state_url):
    registry = Registry.open(state_url)
    try:
        for name in ("a", "b"):
            registry.add(name, csv_config("x"), base_dir=tmp_path)
        for n in range(1, 3):
            p = registry.record_result("a", ok=False, error=f"boom {n}\nsecond line", failing_after=3)
            assert (p.state, p.failures, p.last_error) == ("active", n, f"boom {n} / second line")
        p = registry.record_result("a", ok=False, error="boom 3", failing_after=3)
        assert (p.state, p.failures) == ("failing", 3) and p.last_run_at is not None
        p = registry.record_result("a", ok=False, error="boom 4", failing_after=3)
        assert (p.state, p.failures) == ("failing", 4)
        p = registry.record_result("a", ok=True)
        assert (p.state, p.failures, p.last_error) == ("active", 0, None)
        assert registry.get("b").state == "active"  # another portal untouched

        registry.set_state("b", "paused")
        for _ in range(6):
            p = registry.record_result("b", ok=False, error="x", failing_after=2)
        assert (p.state, p.failures) == ("paused", 6)  # paused never changes by a result
        assert registry.record_result("b", ok=True).state == "paused"
        assert registry.set_state("b", "active").state == "active"
        registry.set_state("b", "uninstalled", error="the app was removed from the portal")
        assert registry.record_result("b", ok=True).state == "uninstalled"
        with pytest.raises(ConfigError, match="portal state 'gone' is not one of"):
            registry.set_state("b", "gone")
        assert set(PORTAL_STATES) == {"active", "paused", "failing", "uninstalled"}

        when = datetime(2026, 11, 24, 7, 0, tzinfo=timezone.utc)
        registry.set_next_run("a", when)
        assert registry.get("a").next_run_at == when
        registry.set_next_run("a", datetime(2026, 11, 24, 8, 0))  # naive: UTC
        assert registry.get("a").next_run_at == datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)
        registry.set_next_run("a", None)
        assert registry.get("a").next_run_at is None
    finally:
        registry.close()


def test_an_error_recorded_for_a_portal_is_redacted(tmp_path, state_url):
    from connector import logs

    registry = Registry.open(state_url)
    try:
        registry.add("a", csv_config("x"), base_dir=tmp_path)
        logs.register_secrets(["s3cr3t-token-value"])
        p = registry.record_result("a", ok=False, error="401 for token s3cr3t-token-value")
        assert "s3cr3t" not in p.last_error and "***" in p.last_error
        p = registry.record_result("a", ok=False, error=RuntimeError("refused s3cr3t-token-value\n" + "x" * 900))
        assert p.last_error.startswith("RuntimeError: refused *** / xxx") and len(p.last_error) == 500
    finally:
        logs._secrets.clear()
        registry.close()


def test_remove_keeps_data_and_purge_deletes_every_row_of_one_portal_only(tmp_path, state_url):
    csv_crm(tmp_path / "crm", [1, 2, 3], [(1, 1, 10), (2, 2, 40), (3, 3, 400)])
    registry = Registry.open(state_url)
    try:
        for name in ("a", "b"):
            registry.add(name, csv_config("crm"), base_dir=tmp_path)
            sync(registry.load(name), as_of=AS_OF)
        before_a, before_b = rows_of(registry, "a"), rows_of(registry, "b")
        assert before_a == before_b and before_a["customers"] == 3 and before_a["membership"] > 0
        assert before_a["dash_snapshots"] >= 1  # the dashboard's tables are portal tables too

        registry.remove("a")
        assert [p.name for p in registry.list()] == ["b"]
        assert [(p.name, p.state, p.removed) for p in registry.list(include_removed=True)][0] == ("a", "uninstalled", True)
        with pytest.raises(ConfigError, match="no portal named 'a'"):
            registry.load("a")
        assert rows_of(registry, "a") == before_a  # kept
        again = registry.add("a", csv_config("crm"), base_dir=tmp_path)  # comes back with its data
        assert (again.state, again.removed) == ("active", False)
        assert rows_of(registry, "a") == before_a

        copy_a, copy_b = registry._columnar_folder("a"), registry._columnar_folder("b")
        assert list(copy_a.glob("*.parquet")) and list(copy_b.glob("*.parquet"))  # the mirror's columnar copies
        registry.remove("a", purge=True)
        assert set(rows_of(registry, "a").values()) == {0}
        assert rows_of(registry, "b") == before_b
        assert not copy_a.exists() and list(copy_b.glob("*.parquet"))  # personal data on disk goes too
        assert [p.name for p in registry.list(include_removed=True)] == ["b"]
        with pytest.raises(ConfigError, match="no portal named 'a'"):
            registry.remove("a", purge=True)
    finally:
        registry.close()
