"""The dashboard's data layer, JSON API and CLI reports, in process (Starlette's TestClient over the daemon's
real app) on a real SQLite store filled by real syncs against the Bitrix24 sandbox."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from starlette.testclient import TestClient

from connector.config import load_config
from connector.dashboard import auth
from connector.dashboard.auth import LoginThrottle
from connector.http import create_app
from connector.metrics import Metrics
from connector.pipeline import open_store, sync, today_in
from rules.presets import COLUMNS, ROWS
from sandbox.bitrix24 import running_portal

ROOT = Path(__file__).resolve().parents[1]
CELLS = [f"lifecycle.{r}_{c}" for r in ROWS for c in COLUMNS]
PASSWORD = "correct horse battery"


def cell_map(comp) -> dict[int, str]:
    """Independent of the snapshot code: each customer's cell from the stored membership columns."""
    frame = comp.membership
    out = {}
    for row in frame.select("id", *CELLS, "status.prospect").iter_rows(named=True):
        hit = [c for c in CELLS if row[c]]
        out[row["id"]] = hit[0] if hit else ("prospect" if row["status.prospect"] else None)
    return {k: v for k, v in out.items() if v}


def cli(config_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "connector.cli", *args, "--config", str(config_path)], input=stdin,
                          capture_output=True, text=True, cwd=config_path.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def _history_account(config) -> None:
    """An account in the store: a portal's first sync back-fills the past year only once the dashboard has one."""
    from connector.dashboard.auth import add_user

    store = open_store(config)
    try:
        add_user(store.engine, "history@example.com", "viewer", [config.crm.name], "a long enough password 1")
    finally:
        store.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dash")
    with running_portal(generate=(300, 900), seed=11) as portal:
        path = folder / "lifecycle.toml"
        path.write_text(
            f'[crm]\nkind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n'
            f'overlap_minutes = 0\nreconcile_hours = 0\n[state]\nurl = "sqlite:///{folder / "state.db"}"\n'
            f'[ui]\nlanguage = "en"\n[[segment]]\nname = "big_spenders"\nwhen = "monetary >= 100000"\n'
            '[[campaign]]\nname = "winback"\nsegment = "status.former"\ncooldown_days = 30\nauto_approve = true\n'
            'on_enter = [{ action = "call_task", title = "Call {name}", description = "Why did you stop?", due_in_days = 2 }]\n',
            encoding="utf-8")
        config = load_config(path)
        today = today_in(config.crm.timezone)
        _history_account(config)  # the past year is back-filled once the dashboard has an account
        first = sync(config, as_of=today - timedelta(days=20))
        # what `report --as-of` says for two weekly points now (later CRM changes may change the past)
        from connector.dashboard.snapshot import weekly_dates

        early = {d.isoformat(): json.loads(cli(path, "report", "--format", "json", "--as-of", d.isoformat()).stdout)
                 for d in weekly_dates(first.as_of)[0:21:20]}
        # CRM activity: some sleeping customers buy again, a prospect buys, a contact is deleted
        comp = first.computation.membership
        buyers = comp.filter(pl.col("lifecycle.new_sleeping") | pl.col("lifecycle.promising_asleep")).get_column("id").head(6).to_list()
        for cid in buyers:
            portal.call("crm.deal.add", {"fields": {"TITLE": "again", "CONTACT_ID": cid, "STAGE_ID": "WON",
                                                    "OPPORTUNITY": 5000, "CLOSEDATE": today.isoformat()}})
        # the deleted contact is never one of the buyers above (the frame's row order is not fixed)
        gone = comp.filter(pl.col("status.former") & ~pl.col("id").is_in(buyers)).get_column("id").head(1).to_list()
        portal.call("crm.contact.delete", {"id": gone[0]})
        second = sync(config, as_of=today)
        yield SimpleNamespace(folder=folder, path=path, config=config, first=first, second=second, today=today,
                              webhook=portal.webhook_url, buyers=buyers, gone=gone[0],
                              early=early)


@pytest.fixture(scope="module")
def app(env):
    store = open_store(env.config)
    auth.add_user(store.engine, "admin@example.com", "admin", [], PASSWORD)
    auth.add_user(store.engine, "other@example.com", "viewer", ["portal-b"], PASSWORD)
    store.close()
    daemon = SimpleNamespace(config=env.config, metrics=Metrics(env.config.crm.name, "bitrix24"),
                             ready=lambda: (True, "ready"), crm_changed=lambda: None)
    return create_app(daemon)


def login(client: TestClient, email: str, password: str = PASSWORD) -> int:
    page = client.get("/ui/login")
    token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return client.post("/ui/login", data={"email": email, "password": password, "csrf": token},
                       follow_redirects=False).status_code


@pytest.fixture
def admin(app):
    client = TestClient(app, client=("10.0.0.1", 5000))
    assert login(client, "admin@example.com") == 303
    return client


def test_snapshot_stores_a_year_of_weekly_kpi_points_equal_to_report_as_of(env, admin):
    points = admin.get("/api/v1/portals/default/trend").json()["points"]
    assert len(points) >= 53  # 52 Mondays before the first sync, that sync's day and today's
    assert points[-1]["date"] == env.today.isoformat()
    assert [points[0]["date"], points[20]["date"]] == sorted(env.early)
    for point in (points[0], points[20], points[-1]):
        out = env.early.get(point["date"]) or json.loads(cli(env.path, "report", "--format", "json", "--as-of", point["date"]).stdout)
        assert point["active_share"] == out["active_share"], point["date"]
        assert point["segments"] == out["segments"]
    trend = json.loads(cli(env.path, "report", "--trend", "--from", points[-3]["date"], "--to", env.today.isoformat(),
                           "--every", "day", "--format", "json").stdout)["points"]
    by_day = {p["date"]: p for p in trend}
    for p in points[-3:]:
        assert by_day[p["date"]]["active_share"] == p["active_share"]


def test_overview_matrix_equals_report_json_for_the_same_day(env, admin):
    data = admin.get("/api/v1/portals/default/overview").json()
    report = json.loads(cli(env.path, "report", "--format", "json").stdout)
    got = {c["segment"]: c["customers"] for row in data["matrix"]["rows"] for c in row["cells"]}
    assert got == {c: report["segments"][c] for c in CELLS}
    assert data["kpi"]["active_share"] == report["active_share"]
    others = {s["segment"]: s["customers"] for s in data["segments"]}
    assert others["big_spenders"] == report["segments"]["big_spenders"]
    assert sum(c["share"] for row in data["matrix"]["rows"] for c in row["cells"]) == pytest.approx(1.0)
    page = admin.get("/ui/p/default/")
    assert page.status_code == 200 and 'id="matrix"' in page.text and "<svg" in page.text
    assert "New active" in page.text and "kozea" not in page.text  # labels; no script from the internet


def test_flows_between_two_syncs_equal_an_independent_computation(env, admin):
    before, after = cell_map(env.first.computation), cell_map(env.second.computation)
    expected: dict[tuple[str, str], list[int]] = {}
    for cid in sorted(set(before) | set(after)):
        expected.setdefault((before.get(cid, "absent"), after.get(cid, "absent")), []).append(cid)
    start = env.first.as_of.isoformat()
    end = env.today.isoformat()
    data = admin.get(f"/api/v1/portals/default/flows?from={start}&to={end}").json()
    assert {(t["from"], t["to"]): t["customers"] for t in data["transitions"]} == {k: len(v) for k, v in expected.items()}
    assert expected[(before[env.gone], "absent")]  # the deleted contact left the matrix
    moved = [k for k in expected if k[0] != k[1] and "absent" not in k]
    assert moved, "the sandbox activity moved customers between cells"
    for src, dst in moved:
        got = admin.get(f"/api/v1/portals/default/flows/members?from={start}&to={end}&src={src}&dst={dst}").json()
        assert got["customers"] == expected[(src, dst)]
    cli_out = json.loads(cli(env.path, "report", "--flows", start, end, "--format", "json").stdout)
    assert {(t["from"], t["to"]): t["members"] for t in cli_out["transitions"]} == expected
    csv_out = cli(env.path, "report", "--flows", start, end, "--format", "csv").stdout
    assert csv_out.splitlines()[0] == "from_date,to_date,from,to,customers,customer_ids"
    src, dst = moved[0]
    page = admin.get(f"/ui/p/default/flows?from={start}&to={end}&src={src}&dst={dst}")
    assert page.status_code == 200
    assert sorted(int(x) for x in page.text.split('id="flow-members"')[1].split("</ul>")[0].split('data-id="')[1:]
                  for x in [x.split('"')[0]]) == expected[(src, dst)]


def test_the_default_flows_window_ends_on_the_portals_today_not_the_servers(env, app):  # app: its users
    # Kiritimati (UTC+14) and Pago Pago (UTC-11) are always on different dates, so one of them is not on the
    # server's date, whatever the hour: that portal's runs record today's segments under its own date.
    zone = next(z for z in ("Pacific/Kiritimati", "Pacific/Pago_Pago") if today_in(z) != date.today())
    settings = env.config.settings
    config = dataclasses.replace(env.config, settings=settings.model_copy(
        update={"crm": settings.crm.model_copy(update={"timezone": zone})}))
    daemon = SimpleNamespace(config=config, metrics=Metrics(config.crm.name, "bitrix24"),
                             ready=lambda: (True, "ready"), crm_changed=lambda: None)
    client = TestClient(create_app(daemon), client=("10.0.0.2", 5000))
    assert login(client, "admin@example.com") == 303
    data = client.get("/api/v1/portals/default/flows").json()
    assert data["to"] == today_in(zone).isoformat() != date.today().isoformat()
    assert data["from"] == (today_in(zone) - timedelta(days=30)).isoformat()
    members = client.get("/api/v1/portals/default/flows/members?src=absent&dst=prospect").json()
    assert members["to"] == today_in(zone).isoformat()


def test_members_page_sorts_searches_pages_and_exports_equal_report_members(env, admin):
    segment = "status.current"
    report = json.loads(cli(env.path, "report", "--format", "json", "--segment", segment).stdout)
    ids = sorted(int(i) for i in report["members"][segment])
    page = admin.get(f"/api/v1/portals/default/segments/{segment}/members?size=25&sort=monetary&order=desc").json()
    assert page["total"] == len(ids) and len(page["rows"]) == min(25, len(ids))
    money = [r["monetary"] for r in page["rows"]]
    assert money == sorted(money, reverse=True)
    second = admin.get(f"/api/v1/portals/default/segments/{segment}/members?size=25&page=2").json()["rows"]
    first = admin.get(f"/api/v1/portals/default/segments/{segment}/members?size=25&page=1").json()["rows"]
    assert [r["customer_id"] for r in first + second] == ids[:50]
    someone = first[3]
    assert someone["name"] and {"phone", "email", "responsible_id", "last_purchase", "days_to_birthday"} <= set(someone)
    found = admin.get(f"/api/v1/portals/default/segments/{segment}/members",
                      params={"q": someone["name"].lower()}).json()["rows"]
    assert someone["customer_id"] in [r["customer_id"] for r in found]
    exported = admin.get(f"/api/v1/portals/default/segments/{segment}/members.csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sorted(int(r["customer_id"]) for r in rows) == ids
    xlsx = admin.get(f"/api/v1/portals/default/segments/{segment}/members.xlsx")
    assert xlsx.status_code == 200 and xlsx.content[:2] == b"PK"
    import zipfile

    sheet = zipfile.ZipFile(io.BytesIO(xlsx.content)).read("xl/worksheets/sheet1.xml").decode()
    assert sheet.count("<row ") == len(ids) + 1
    html = admin.get(f"/ui/p/default/segments/{segment}?size=25")
    assert html.status_code == 200 and f"/crm/contact/details/{first[0]['customer_id']}/" in html.text


def test_customer_page_shows_segments_history_and_crm_link(env, admin):
    cid = env.buyers[0]
    answer = admin.get(f"/api/v1/portals/default/customers/{cid}")
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert {s["segment"] for s in data["segments"]} >= {"status.current"}
    events = [(h["event"], h["date"]) for h in data["history"]]
    assert ("enter", env.first.as_of.isoformat()) in events and ("enter", env.today.isoformat()) in events
    assert data["crm_url"].endswith(f"/crm/contact/details/{cid}/")
    assert data["features"]["purchases"] >= 2
    assert admin.get(f"/ui/p/default/customers/{cid}").status_code == 200
    assert admin.get("/api/v1/portals/default/customers/999999999").status_code == 404


def test_runs_campaigns_audiences_and_portfolio(env, admin):
    runs = admin.get("/api/v1/portals/default/runs").json()["runs"]
    assert [r["status"] for r in runs[:2]] == ["ok", "ok"] and runs[0]["requests"] > 0
    assert runs[0]["duration_seconds"] > 0
    campaigns = admin.get("/api/v1/portals/default/campaigns").json()["campaigns"]
    assert [c["campaign"] for c in campaigns] == ["winback"]
    store = open_store(env.config)
    ledger = store.ledger()
    store.close()
    done = [r for r in ledger if r["status"] == "done"]
    assert done and campaigns[0]["totals"]["created"] == len(done)
    assert campaigns[0]["totals"]["skipped"] == sum(1 for r in ledger if r["status"] == "skipped")
    assert sum(t.get("created", 0) for t in campaigns[0]["per_rep"].values()) == len(done)
    recent = campaigns[0]["recent"]
    assert recent and all("/tasks/task/view/" in a["crm_url"] for a in recent if a["status"] == "done")
    preview = admin.get("/api/v1/portals/default/campaigns/preview").json()["actions"]
    plan = json.loads(cli(env.path, "plan", "--format", "json").stdout)
    assert sorted(r["key"] for r in preview) == sorted(r["key"] for r in plan)
    assert admin.get("/ui/p/default/campaigns?preview=1").status_code == 200
    assert admin.get("/api/v1/portals/default/audiences").json()["audiences"] == []
    portfolio = admin.get("/api/v1/portals").json()
    assert portfolio[0]["portal"] == "default" and portfolio[0]["health"] == "ok"
    for path in ("runs", "campaigns", "audiences", "flows"):
        assert admin.get(f"/ui/p/default/{path}").status_code == 200, path
    # issue 18: the campaign's results (contacted vs holdout) and the reps by name
    results = admin.get("/api/v1/portals/default/campaigns").json()["results"]
    contacted = {r["customer_id"] for r in done if r["action"] == "call_task"}
    assert [r["campaign"] for r in results] == ["winback"] and results[0]["contacted"]["customers"] == len(contacted)
    page = admin.get("/ui/p/default/campaigns").text
    assert "Results: contacted vs holdout" in page and "Sandbox (" in page  # "User2 Sandbox (2)", not a bare id
    assert admin.get("/ui/").status_code == 200


def test_a_viewer_of_another_portal_reaches_nothing_of_this_one(app, env):
    client = TestClient(app, client=("10.0.0.2", 5000))
    assert login(client, "other@example.com") == 303
    for path in ("/api/v1/portals/default/overview", "/api/v1/portals/default/segments/status.current/members",
                 f"/api/v1/portals/default/customers/{env.buyers[0]}", "/api/v1/portals/default/segments/status.current/members.csv",
                 "/api/v1/portals/default/flows", "/ui/p/default/", "/ui/p/default/segments/status.current",
                 f"/ui/p/default/customers/{env.buyers[0]}"):
        answer = client.get(path)
        assert answer.status_code == 404, path
    assert client.get("/api/v1/portals").json() == []
    anonymous = TestClient(app)
    assert anonymous.get("/api/v1/portals/default/overview").status_code == 401
    assert anonymous.get("/ui/p/default/", follow_redirects=False).headers["location"].startswith("/ui/login")


def test_login_refuses_wrong_passwords_throttles_the_sixth_and_needs_csrf(app):
    client = TestClient(app, client=("10.0.0.3", 5000))
    assert [login(client, "admin@example.com", "wrong password") for _ in range(5)] == [401] * 5
    assert login(client, "admin@example.com") == 429  # the sixth quick attempt, even with the right password
    other = TestClient(app, client=("10.0.0.4", 5000))
    assert other.post("/ui/login", data={"email": "admin@example.com", "password": PASSWORD}).status_code == 403
    assert login(other, "admin@example.com") == 303
    assert other.post("/ui/logout", data={}, follow_redirects=False).status_code == 403  # no CSRF token
    token = other.get("/ui/").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert other.post("/ui/logout", data={"csrf": token}, follow_redirects=False).status_code == 303
    assert other.get("/api/v1/portals").status_code == 401


def test_throttle_window_slides():
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    assert all(throttle.allow("ip", "a@b.c") for _ in range(5)) and not throttle.allow("ip", "a@b.c")
    assert throttle.allow("ip", "x@b.c") and throttle.allow("other", "a@b.c")
    now[0] = 61
    assert throttle.allow("ip", "a@b.c")


def test_no_secret_is_rendered_or_served(env, admin):
    secret_path = env.webhook.split("/rest/", 1)[1]
    store = open_store(env.config)
    import sqlalchemy as sa

    from connector.dashboard.schema import users

    with store.engine.connect() as conn:
        hashes = list(conn.execute(sa.select(users.c.password_hash)).scalars())
    store.close()
    bodies = [admin.get(p).text for p in (
        "/ui/", "/ui/p/default/", "/ui/p/default/runs", "/ui/p/default/campaigns", "/ui/p/default/segments/status.current",
        f"/ui/p/default/customers/{env.buyers[0]}", "/api/v1/portals", "/api/v1/portals/default/overview",
        f"/api/v1/portals/default/customers/{env.buyers[0]}", "/api/v1/portals/default/runs")]
    for body in bodies:
        assert secret_path not in body
        assert not any(h in body for h in hashes) and "$argon2" not in body


def test_users_cli_adds_lists_and_language_switch(env, app):
    out = cli(env.path, "users", "add", "Viewer@Example.com", "--role", "viewer", "--portal", "default",
              stdin="another password\n").stdout
    assert "added viewer@example.com" in out
    listed = cli(env.path, "users", "list").stdout
    assert "viewer@example.com" in listed and "$argon2" not in listed
    client = TestClient(app, client=("10.0.0.5", 5000))
    assert login(client, "viewer@example.com", "another password") == 303
    assert client.get("/ui/", follow_redirects=False).headers["location"] == "/ui/p/default/"
    page = client.get("/ui/p/default/")
    assert "Lifecycle matrix" in page.text
    token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    client.post("/ui/language", data={"csrf": token, "language": "ru", "next": "/ui/p/default/"})
    page = client.get("/ui/p/default/")
    assert "Матрица жизненного цикла" in page.text and "Новые активные" in page.text
    bad = subprocess.run([sys.executable, "-m", "connector.cli", "users", "add", "x@y.z", "--role", "viewer",
                          "--config", str(env.path)], input="short\n", capture_output=True, text=True, cwd=env.folder)
    assert bad.returncode == 2 and "at least 8 characters" in bad.stderr


def test_two_syncs_on_one_day_keep_one_state_per_day_and_flows_follow_the_last(ws):
    """Cells of a second sync on the same day replace the first's; the next day's flows start from them."""
    from datetime import date

    from connector.dashboard import queries

    day = date(2026, 11, 23)
    ws.write_contacts([{"id": 1}, {"id": 2}, {"id": 3}])
    ws.write_deals([{"id": 1, "contact_id": 1, "status": "won", "amount": 10, "closed_at": "2026-11-20"}])
    config = ws.config()
    sync(config, as_of=day)
    ws.write_deals([{"id": 1, "contact_id": 1, "status": "won", "amount": 10, "closed_at": "2026-11-20"},
                    {"id": 2, "contact_id": 2, "status": "won", "amount": 10, "closed_at": "2026-11-23"}])
    sync(config, as_of=day)  # contact 2: prospect -> new_active on the same day
    ws.write_contacts([{"id": 1}, {"id": 2}])
    ws.write_deals([{"id": 1, "contact_id": 1, "status": "won", "amount": 10, "closed_at": "2026-11-20"},
                    {"id": 3, "contact_id": 1, "status": "won", "amount": 10, "closed_at": "2026-11-24"}])
    sync(config, as_of=day + timedelta(days=1))  # 1 buys again, 2's deal deleted, 3 deleted
    store = open_store(config)
    try:
        data = queries.flows(store, day, day + timedelta(days=1), members=True)
        import sqlalchemy as sa

        from connector.dashboard.schema import cells

        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(cells.c.customer_id, cells.c.valid_from, cells.c.valid_to)).all()
    finally:
        store.close()
    got = {(t["from"], t["to"]): t["members"] for t in data["transitions"]}
    assert got == {("lifecycle.new_active", "lifecycle.promising_active"): [1],
                   ("lifecycle.new_active", "prospect"): [2], ("prospect", "absent"): [3]}
    for cid in (1, 2, 3):  # intervals of one customer never overlap and none is empty
        spans = sorted((f, t) for c, f, t in rows if c == cid)
        assert all(t is None or t > f for f, t in spans)
        assert all(spans[k][1] is not None and spans[k][1] <= spans[k + 1][0] for k in range(len(spans) - 1))


def test_snapshot_and_queries_work_on_postgresql(ws, postgres_url, caplog):
    from datetime import date

    from connector.dashboard import queries

    day = date(2026, 11, 23)
    ws.write_contacts([{"id": 1, "name": "Anna"}, {"id": 2}])
    ws.write_deals([{"id": 1, "contact_id": 1, "status": "won", "amount": 10, "closed_at": "2026-11-20"}])
    ws.write_config(base=f'[crm]\nkind = "csv"\npath = "crm"\n[state]\nurl = "{postgres_url}"\n')
    config = load_config(ws.config_path)
    _history_account(config)
    sync(config, as_of=day)
    ws.write_deals([{"id": 1, "contact_id": 1, "status": "won", "amount": 10, "closed_at": "2026-11-20"},
                    {"id": 2, "contact_id": 2, "status": "won", "amount": 10, "closed_at": "2026-11-24"}])
    with caplog.at_level("ERROR", logger="lifecycle.dashboard"):
        sync(config, as_of=day + timedelta(days=1))
    assert not [r for r in caplog.records if r.name == "lifecycle.dashboard" and r.levelno >= 40]
    store = open_store(config)
    try:
        flows = queries.flows(store, day, day + timedelta(days=1), members=True)
        page = queries.members_page(store, "status.current", sort="last_purchase", descending=True)
        points = queries.trend_points(store)
    finally:
        store.close()
    assert {(t["from"], t["to"]): t["members"] for t in flows["transitions"]} == {
        ("lifecycle.new_active", "lifecycle.new_active"): [1], ("prospect", "lifecycle.new_active"): [2]}
    assert [(r["customer_id"], r["last_purchase"]) for r in page["rows"]] == [(2, "2026-11-24"), (1, "2026-11-20")]
    assert len(points) == 54 and points[-1]["active"] == 2
