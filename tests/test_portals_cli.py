"""`lifecycle portals ...` end to end through the CLI (in-process, see conftest.run_cli), and the isolation of two
portals with the same customer ids in one database (mirror, membership, ledger, tokens, audiences)."""

from __future__ import annotations

import json
from datetime import date, timedelta

import sqlalchemy as sa

from connector.pipeline import open_store, sync
from connector.registry import Registry
from connector.store import actions
from tests.conftest import run_cli
from tests.registry_fixtures import _no_process_key, state_url  # noqa: F401 - fixtures

AS_OF = date(2026, 11, 23)
WEBHOOK = "https://b24-shop.example.ru/rest/1/k3yc0de9x7w2/"


def write_crm(folder, names: dict[int, str], deals: list[tuple[int, int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "contacts.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in names.items()), encoding="utf-8")
    (folder / "deals.csv").write_text("id,contact_id,status,amount,closed_at\n" + "".join(
        f"{d},{c},won,100,{(AS_OF - timedelta(days=ago)).isoformat()}\n" for d, c, ago in deals), encoding="utf-8")


def lifecycle(*args: str, url: str, env: dict | None = None):
    return run_cli([*args, "--state-url", url], env=env)


def one_error_line(result) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_add_list_show_pause_resume_remove(tmp_path, state_url):
    (tmp_path / "acme.toml").write_text(f'[crm]\nkind = "bitrix24"\nwebhook_url = "{WEBHOOK}"\ntimezone = "Asia/Omsk"\n',
                                        encoding="utf-8")
    write_crm(tmp_path / "crm", {1: "A"}, [])
    (tmp_path / "shop.toml").write_text('[crm]\nkind = "csv"\npath = "crm"\n', encoding="utf-8")
    result = lifecycle("portals", "add", "acme", "--config", str(tmp_path / "acme.toml"), url=state_url)
    assert result.returncode == 0, result
    assert "portal 'acme' (bitrix24) added" in result.stdout
    assert "stored unencrypted" in result.stderr  # no key: said so
    result = lifecycle("portals", "add", "shop", "--config", str(tmp_path / "shop.toml"), url=state_url)
    assert result.returncode == 0, result

    listed = json.loads(lifecycle("portals", "list", "--format", "json", url=state_url).stdout)
    assert [(p["name"], p["kind"], p["state"], p["failures"]) for p in listed] == [("acme", "bitrix24", "active", 0),
                                                                                  ("shop", "csv", "active", 0)]
    table = lifecycle("portals", "list", url=state_url)
    assert table.returncode == 0 and "acme" in table.stdout and "bitrix24" in table.stdout and "next run" in table.stdout

    shown = lifecycle("portals", "show", "acme", "--format", "json", url=state_url)
    assert shown.returncode == 0, shown
    assert "k3yc0de9x7w2" not in shown.stdout + shown.stderr
    settings = {s["key"]: s for s in json.loads(shown.stdout)["settings"]}
    assert settings["crm.webhook_url"]["value"] == "*** (set)"
    assert settings["crm.timezone"] == {"key": "crm.timezone", "value": '"Asia/Omsk"', "source": "file"}
    assert settings["crm.name"]["source"] == "registry" and settings["crm.name"]["value"] == '"acme"'
    assert settings["kpi.active_share_target"]["source"] == "default"
    text = lifecycle("portals", "show", "acme", url=state_url)
    assert "k3yc0de9x7w2" not in text.stdout and "state: active" in text.stdout

    assert lifecycle("portals", "pause", "acme", url=state_url).returncode == 0
    assert json.loads(lifecycle("portals", "list", "--format", "json", url=state_url).stdout)[0]["state"] == "paused"
    assert lifecycle("portals", "resume", "acme", url=state_url).returncode == 0
    assert json.loads(lifecycle("portals", "list", "--format", "json", url=state_url).stdout)[0]["state"] == "active"

    registry = Registry.open(state_url)
    sync(registry.load("shop"))
    registry.close()
    result = lifecycle("portals", "remove", "shop", url=state_url)
    assert result.returncode == 0 and "its data stays" in result.stdout
    assert [p["name"] for p in json.loads(lifecycle("portals", "list", "--format", "json", url=state_url).stdout)] == ["acme"]
    registry = Registry.open(state_url)
    with registry.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM customers JOIN portal_keys k ON k.id = portal_id WHERE k.name = 'shop'")).scalar_one() == 1
    registry.close()
    assert lifecycle("portals", "remove", "shop", "--purge", url=state_url).returncode == 0
    registry = Registry.open(state_url)
    with registry.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM customers JOIN portal_keys k ON k.id = portal_id WHERE k.name = 'shop'")).scalar_one() == 0
    registry.close()


def test_every_error_is_one_line_with_exit_2(tmp_path, state_url):
    (tmp_path / "bad.toml").write_text('[crm]\nkind = "bitrix24"\nwebhook_url = "ftp://x"\n', encoding="utf-8")
    (tmp_path / "typo.toml").write_text('[crm]\nkind = "csv"\npath = "."\n[kpii]\nx = 1\n', encoding="utf-8")
    (tmp_path / "ok.toml").write_text('[crm]\nkind = "csv"\npath = "."\n', encoding="utf-8")
    line = one_error_line(lifecycle("portals", "show", "nope", url=state_url))
    assert "no portal named 'nope'; see lifecycle portals list" in line
    for verb in ("pause", "resume", "remove"):
        assert "no portal named 'nope'" in one_error_line(lifecycle("portals", verb, "nope", url=state_url))
    assert "not found" in one_error_line(lifecycle("portals", "add", "x", "--config", str(tmp_path / "no.toml"), url=state_url))
    assert "webhook_url must look like" in one_error_line(
        lifecycle("portals", "add", "x", "--config", str(tmp_path / "bad.toml"), url=state_url))
    result = lifecycle("portals", "add", "x", "--config", str(tmp_path / "typo.toml"), url=state_url)
    assert result.returncode == 2 and "kpii: unknown key" in result.stderr  # the config's own multi-line message
    assert "is not allowed" in one_error_line(
        lifecycle("portals", "add", "Bad Name", "--config", str(tmp_path / "ok.toml"), url=state_url))
    assert lifecycle("portals", "add", "x", "--config", str(tmp_path / "ok.toml"), url=state_url).returncode == 0
    assert "pass --replace" in one_error_line(
        lifecycle("portals", "add", "x", "--config", str(tmp_path / "ok.toml"), url=state_url))
    no_url = run_cli(["portals", "list"])
    assert "--state-url URL or set LIFECYCLE_STATE_URL" in one_error_line(no_url)
    assert "not a database URL" in one_error_line(run_cli(["portals", "list", "--state-url", "nonsense"]))
    assert run_cli(["portals", "list"], env={"LIFECYCLE_STATE_URL": state_url}).returncode == 0
    assert "does not exist" in one_error_line(lifecycle("portals", "sync-dir", str(tmp_path / "none"), url=state_url))
    assert "--new-key-file" in one_error_line(run_cli(["secrets", "rotate", "--new-key-file", str(tmp_path / "ok.toml"),
                                                      "--state-url", state_url]))


def test_sync_dir_imports_a_folder_of_portal_files(tmp_path, state_url):
    folder = tmp_path / "portals"
    write_crm(folder / "crm", {1: "A"}, [])
    (folder / "alpha.toml").write_text('[crm]\nkind = "csv"\npath = "crm"\n', encoding="utf-8")
    (folder / "beta.toml").write_text(f'[crm]\nkind = "bitrix24"\nwebhook_url = "{WEBHOOK}"\n', encoding="utf-8")
    (folder / "Gamma.toml").write_text('[crm]\nkind = "csv"\npath = "crm"\n', encoding="utf-8")
    (folder / "delta.toml").write_text('[crm]\nkind = "amocrm"\n', encoding="utf-8")
    (folder / "notes.txt").write_text("not a portal", encoding="utf-8")
    result = lifecycle("portals", "sync-dir", str(folder), url=state_url)
    assert result.returncode == 2  # two bad files, reported; the good ones imported all the same
    assert "2 added, 0 updated, 0 unchanged, 2 with errors" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert any(e.startswith("error: Gamma.toml: portal name 'Gamma' is not allowed") for e in errors)
    assert any(e.startswith("error: delta.toml:") and "needs base_url" in e for e in errors)
    assert "k3yc0de9x7w2" not in result.stdout + result.stderr
    registry = Registry.open(state_url)
    try:
        assert [p.name for p in registry.list()] == ["alpha", "beta"]
        assert registry.load("alpha").crm.path == (folder / "crm").resolve()
    finally:
        registry.close()
    (folder / "Gamma.toml").unlink()
    (folder / "delta.toml").unlink()
    again = lifecycle("portals", "sync-dir", str(folder), url=state_url)
    assert again.returncode == 0 and "0 added, 0 updated, 2 unchanged" in again.stdout
    (folder / "alpha.toml").write_text('[crm]\nkind = "csv"\npath = "crm"\ntimezone = "Asia/Omsk"\n', encoding="utf-8")
    (folder / "omega.toml").write_text('[crm]\nkind = "csv"\npath = "crm"\n', encoding="utf-8")
    listed = lifecycle("portals", "list", "--format", "json", "--portals-dir", str(folder), url=state_url)
    assert listed.returncode == 0, listed
    assert [p["name"] for p in json.loads(listed.stdout.strip().splitlines()[-1])] == ["alpha", "beta", "omega"]
    registry = Registry.open(state_url)
    try:
        assert registry.load("alpha").crm.timezone == "Asia/Omsk"
    finally:
        registry.close()


def test_two_portals_with_the_same_customer_ids_never_see_each_other(tmp_path, state_url):
    write_crm(tmp_path / "a", {1: "Anna", 2: "Boris", 3: "Vera"}, [(1, 1, 5), (2, 1, 40), (3, 2, 300)])
    write_crm(tmp_path / "b", {1: "Gleb", 2: "Dina", 3: "Egor"}, [(1, 3, 2), (2, 3, 9), (3, 3, 20)])
    registry = Registry.open(state_url)
    try:
        for name in ("a", "b"):
            registry.add(name, f'[crm]\nkind = "csv"\npath = "{name}"\n', base_dir=tmp_path)
            sync(registry.load(name), as_of=AS_OF)
        stores = {name: open_store(registry.load(name)) for name in ("a", "b")}
        try:
            assert stores["a"].customer_ids("contact") == stores["b"].customer_ids("contact") == {1, 2, 3}
            names = {n: {i: c["name"] for i, c in s.customer_cards("contact", [1, 2, 3]).items()} for n, s in stores.items()}
            assert names == {"a": {1: "Anna", 2: "Boris", 3: "Vera"}, "b": {1: "Gleb", 2: "Dina", 3: "Egor"}}
            deals = {n: sorted((d["id"], d["contact_id"]) for d in s.deals_frame().to_dicts()) for n, s in stores.items()}
            assert deals == {"a": [(1, 1), (2, 1), (3, 2)], "b": [(1, 3), (2, 3), (3, 3)]}
            members = {n: {(r["segment"], r["customer_id"]) for r in s.membership_frame().to_dicts()}
                       for n, s in stores.items()}
            assert ("status.prospect", 3) in members["a"] and ("status.prospect", 3) not in members["b"]
            assert ("status.current", 3) in members["b"] and ("status.current", 3) not in members["a"]
            # the ledger: the same key in both portals, each sees only its own row
            with registry.engine.begin() as conn:
                for name, title in (("a", "Call Anna"), ("b", "Call Gleb")):
                    conn.execute(sa.insert(actions).values(
                        portal=name, key="winback:1:2026-11-23", campaign="winback", action="call_task", customer_id=1,
                        entry_date=AS_OF, event="enter", payload=json.dumps({"title": title}), status="planned",
                        attempts=0, planned_run=1, updated_at=sa.func.now()))
            assert [r["payload"]["title"] if isinstance(r["payload"], dict) else json.loads(r["payload"])["title"]
                    for r in stores["a"].ledger()] == ["Call Anna"]
            assert stores["b"].claim_actions(["winback:1:2026-11-23"], "holder-b", fenced=False) == {"winback:1:2026-11-23"}
            assert [r["status"] for r in stores["a"].ledger()] == ["planned"]  # b's claim left a's row alone
            # tokens and audiences
            stores["a"].save_oauth_token("access-a", "refresh-a", 1)
            assert stores["b"].oauth_token() is None
            stores["b"].save_oauth_token("access-b", "refresh-b", 2)
            assert stores["a"].oauth_token()["refresh_token"] == "refresh-a"
            stores["a"].set_audience_members("aud", {1: ({"email": "h"}, "in")})
            assert stores["b"].audience_members("aud") == {}
            assert stores["a"].last_runs()[0]["id"] != stores["b"].last_runs()[0]["id"]
            assert len(stores["a"].last_runs()) == len(stores["b"].last_runs()) == 1
        finally:
            for s in stores.values():
                s.close()
    finally:
        registry.close()
