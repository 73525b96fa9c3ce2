"""The amoCRM sandbox account over real HTTP on loopback (behaviour from shared/research/amocrm.md)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sandbox.amocrm import account_fixture, running_account

ROOT = Path(__file__).resolve().parents[1]
MSK = ZoneInfo("Europe/Moscow")

amo = account_fixture(scope="module", generate=(60, 180), limits=False, today=date(2026, 6, 1))


def ok(response):
    status, body = response
    assert status == 200, body
    return body


def raw_get(url: str, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# -- CLI ------------------------------------------------------------------------------------------

def test_cli_prints_one_json_line_with_tokens_and_counts():
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.amocrm", "--port", "0", "--generate", "5:12",
                             "--time-scale", "10", "--no-limits"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert info["base_url"].startswith("http://127.0.0.1:")
    assert info["control_url"] == info["base_url"] + "/_sandbox/"
    assert info["counts"] == {"contacts": 5, "companies": 0, "leads": 12}
    assert info["limits"] is False and info["time_scale"] == 10.0 and info["timezone"] == "Europe/Moscow"
    assert info["redirect_uri"] == "https://example.com/amocrm/oauth"
    for key in ("access_token", "client_id", "client_secret", "authorization_code", "refresh_token", "subdomain"):
        assert info[key]
    claims = json.loads(base64.urlsafe_b64decode(info["access_token"].split(".")[1] + "=="))
    assert claims["exp"] > datetime.now().timestamp() + 365 * 86400  # long-lived
    assert claims["api_domain"] and claims["account_id"] == info["account_id"]


# -- lists ----------------------------------------------------------------------------------------

def test_paging_ends_with_a_page_without_next_and_204_beyond(amo):
    seen, page, last = [], 1, None
    while True:
        status, body = amo.api("GET", "/api/v4/contacts", params={"limit": 25, "page": page})
        assert status == 200
        assert body["_page"] == page and "_total_items" not in body
        seen += [c["id"] for c in body["_embedded"]["contacts"]]
        last = body
        if "next" not in body["_links"]:
            break
        assert f"page={page + 1}" in body["_links"]["next"]["href"]
        page += 1
    assert page == 3 and len(last["_embedded"]["contacts"]) == 10
    assert seen == sorted(seen) and len(set(seen)) == 60
    status, headers, raw = raw_get(f"{amo.base_url}/api/v4/contacts?limit=25&page=4",
                                   {"Authorization": f"Bearer {amo.access_token}"})
    assert (status, raw) == (204, b"")


def test_limit_over_250_is_422_and_default_limit_is_50(amo):
    status, body = amo.api("GET", "/api/v4/leads", params={"limit": 251})
    assert status == 422 and body["detail"] == "Limit 250 per page" and body["type"] == "https://httpstatus.es/422"
    assert len(ok(amo.api("GET", "/api/v4/leads"))["_embedded"]["leads"]) == 50
    assert len(ok(amo.api("GET", "/api/v4/leads", params={"limit": 250}))["_embedded"]["leads"]) == 180


def test_filters_by_id_and_inclusive_updated_at_range(amo):
    by_brackets = ok(amo.api("GET", "/api/v4/contacts", params={"filter": {"id": [3, 5, 999]}}))
    assert [c["id"] for c in by_brackets["_embedded"]["contacts"]] == [3, 5]
    status, headers, raw = raw_get(f"{amo.base_url}/api/v4/contacts?filter%5Bid%5D%5B0%5D=7",
                                   {"Authorization": f"Bearer {amo.access_token}"})
    assert status == 200 and [c["id"] for c in json.loads(raw)["_embedded"]["contacts"]] == [7]
    stamp = ok(amo.api("PATCH", "/api/v4/contacts/11", json={"first_name": "Changed"}))["updated_at"]
    window = ok(amo.api("GET", "/api/v4/contacts", params={"filter": {"updated_at": {"from": stamp, "to": stamp}}}))
    assert 11 in [c["id"] for c in window["_embedded"]["contacts"]]
    assert all(c["updated_at"] == stamp for c in window["_embedded"]["contacts"])
    assert amo.api("GET", "/api/v4/contacts", params={"filter": {"updated_at": {"from": stamp + 3600}}})[0] == 204
    newest = ok(amo.api("GET", "/api/v4/contacts", params={"order": {"updated_at": "desc"}, "limit": 1}))
    assert newest["_embedded"]["contacts"][0]["updated_at"] >= stamp
    leads = ok(amo.api("GET", "/api/v4/leads", params={"limit": 250}))["_embedded"]["leads"]
    cut = sorted(lead["created_at"] for lead in leads)[len(leads) // 2]
    early = ok(amo.api("GET", "/api/v4/leads", params={"filter": {"created_at": {"to": cut}}, "limit": 250}))
    assert {x["id"] for x in early["_embedded"]["leads"]} == {x["id"] for x in leads if x["created_at"] <= cut}


def test_with_contacts_embeds_main_contact_on_leads_only_when_asked(amo):
    plain = ok(amo.api("GET", "/api/v4/leads", params={"limit": 10}))["_embedded"]["leads"]
    assert all("contacts" not in lead["_embedded"] for lead in plain)
    leads = ok(amo.api("GET", "/api/v4/leads", params={"limit": 10, "with": "contacts"}))["_embedded"]["leads"]
    linked = [lead for lead in leads if lead["_embedded"]["contacts"]]
    assert linked and all(lead["_embedded"]["contacts"][0]["is_main"] is True for lead in linked)
    lead = linked[0]
    for key in ("id", "name", "price", "responsible_user_id", "group_id", "status_id", "pipeline_id", "loss_reason_id",
                "created_by", "updated_by", "created_at", "updated_at", "closed_at", "closest_task_at", "is_deleted",
                "custom_fields_values", "score", "account_id", "labor_cost", "_links"):
        assert key in lead
    assert isinstance(lead["price"], int) and lead["_embedded"]["tags"] == []
    contact_id = lead["_embedded"]["contacts"][0]["id"]
    contact = ok(amo.api("GET", f"/api/v4/contacts/{contact_id}", params={"with": "leads"}))
    assert lead["id"] in [x["id"] for x in contact["_embedded"]["leads"]]
    assert amo.api("GET", "/api/v4/contacts/999999")[0] == 204


def test_pipelines_custom_fields_account_and_users(amo):
    pipeline = ok(amo.api("GET", "/api/v4/leads/pipelines"))["_embedded"]["pipelines"][0]
    statuses = {s["id"]: s for s in pipeline["_embedded"]["statuses"]}
    assert {142, 143} <= set(statuses) and any(s["type"] == 1 for s in statuses.values())
    fields = ok(amo.api("GET", "/api/v4/contacts/custom_fields"))["_embedded"]["custom_fields"]
    by_code = {f["code"]: f for f in fields if f["code"]}
    assert by_code["PHONE"]["type"] == "multitext" and "MOB" in [e["value"] for e in by_code["PHONE"]["enums"]]
    assert any(f["type"] == "birthday" for f in fields) and {"source", "points"} <= {f["name"] for f in fields}
    account = ok(amo.api("GET", "/api/v4/account", params={"with": "datetime_settings"}))
    assert account["subdomain"] == amo.info["subdomain"] and account["id"] == amo.info["account_id"]
    assert account["_embedded"]["datetime_settings"]["timezone"] == "Europe/Moscow"
    users = ok(amo.api("GET", "/api/v4/users"))["_embedded"]["users"]
    responsible = {c["responsible_user_id"] for c in amo.state("contacts")["contacts"]}
    assert responsible <= {u["id"] for u in users}


# -- writes ---------------------------------------------------------------------------------------

def tag_names(amo, entity, rid):
    return sorted(t["name"] for t in ok(amo.api("GET", f"/api/v4/{entity}/{rid}"))["_embedded"]["tags"])


def test_tags_embedded_replaces_and_wins_over_tags_to_add_and_delete(amo):
    ok(amo.api("PATCH", "/api/v4/contacts/2", json={"_embedded": {"tags": [{"name": "a"}, {"name": "b"}]}}))
    assert tag_names(amo, "contacts", 2) == ["a", "b"]
    ok(amo.api("PATCH", "/api/v4/contacts", json=[{"id": 2, "tags_to_add": [{"name": "c"}], "tags_to_delete": [{"name": "a"}]}]))
    assert tag_names(amo, "contacts", 2) == ["b", "c"]
    ok(amo.api("PATCH", "/api/v4/contacts/2", json={"_embedded": {"tags": [{"name": "d"}]}, "tags_to_add": [{"name": "e"}]}))
    assert tag_names(amo, "contacts", 2) == ["d"]
    tag_id = next(t["id"] for t in amo.state()["tags"]["contacts"] if t["name"] == "b")
    ok(amo.api("PATCH", "/api/v4/contacts/2", json={"tags_to_add": [{"id": tag_id}]}))
    assert tag_names(amo, "contacts", 2) == ["b", "d"]
    ok(amo.api("PATCH", "/api/v4/contacts/2", json={"_embedded": {"tags": None}}))
    assert tag_names(amo, "contacts", 2) == []
    status, body = amo.api("PATCH", "/api/v4/contacts/2", json={"_embedded": {"tags": [{"id": 1}]}})
    assert status == 400 and body["validation-errors"][0]["errors"][0]["path"] == "_embedded.tags.0.id"
    listed = ok(amo.api("GET", "/api/v4/contacts/tags", params={"filter": {"name": "d"}}))["_embedded"]["tags"]
    assert [t["name"] for t in listed] == ["d"]
    assert amo.api("GET", "/api/v4/companies/tags")[0] == 204
    types = [e["type"] for e in amo.state()["events"] if e["entity_id"] == 2 and e["entity_type"] == "contact"]
    assert "entity_tag_added" in types and "entity_tag_deleted" in types


def test_writes_bump_updated_at_and_updated_by(amo):
    before = ok(amo.api("GET", "/api/v4/leads/3"))
    after = ok(amo.api("PATCH", "/api/v4/leads/3", json={"price": 777}))
    lead = ok(amo.api("GET", "/api/v4/leads/3"))
    assert lead["price"] == 777 and lead["updated_at"] == after["updated_at"] >= before["updated_at"]
    assert lead["updated_at"] >= int(datetime.now().timestamp()) - 5 and lead["updated_by"] == amo.info["user_id"]


def test_post_echoes_request_id_and_validates_the_whole_batch(amo):
    body = ok(amo.api("POST", "/api/v4/leads", json=[
        {"name": "A", "price": 10, "request_id": "first", "_embedded": {"contacts": [{"id": 4}], "tags": [{"name": "web"}]}},
        {"name": "B"}]))
    created = body["_embedded"]["leads"]
    assert [c["request_id"] for c in created] == ["first", "1"]
    lead = ok(amo.api("GET", f"/api/v4/leads/{created[0]['id']}", params={"with": "contacts"}))
    assert lead["status_id"] != 142 and lead["closed_at"] is None
    assert lead["_embedded"]["contacts"][0] == {"id": 4, "is_main": True, "_links": lead["_embedded"]["contacts"][0]["_links"]}
    assert [t["name"] for t in lead["_embedded"]["tags"]] == ["web"]
    count = len(amo.state("leads")["leads"])
    status, error = amo.api("POST", "/api/v4/leads", json=[{"name": "ok"}, {"name": "bad", "status_id": 5, "request_id": "x"}])
    assert status == 400 and error["detail"] == "Request validation failed"
    assert error["validation-errors"] == [{"request_id": "x", "errors": [
        {"code": "NotSupportedChoice", "path": "status_id", "detail": "The value you selected is not a valid choice."}]}]
    assert len(amo.state("leads")["leads"]) == count  # nothing written
    status, error = amo.api("POST", "/api/v4/contacts", json=[{"name": str(i)} for i in range(251)])
    assert status == 422
    won = ok(amo.api("PATCH", f"/api/v4/leads/{created[1]['id']}", json={"status_id": 142}))
    lead = ok(amo.api("GET", f"/api/v4/leads/{created[1]['id']}"))
    assert lead["closed_at"] == won["updated_at"]
    assert any(e["type"] == "lead_status_changed" and e["entity_id"] == created[1]["id"] for e in amo.state()["events"])


def test_tasks_need_text_and_deadline_and_filter_by_entity(amo):
    status, error = amo.api("POST", "/api/v4/tasks", json=[{"entity_id": 6, "entity_type": "contacts"}])
    assert status == 400
    paths = {e["path"] for e in error["validation-errors"][0]["errors"]}
    assert {"text", "complete_till"} <= paths
    till = int(datetime(2026, 7, 1, 12, tzinfo=MSK).timestamp())
    created = ok(amo.api("POST", "/api/v4/tasks", json=[
        {"text": "Call back", "complete_till": till, "entity_id": 6, "entity_type": "contacts", "task_type_id": 1}]))
    task_id = created["_embedded"]["tasks"][0]["id"]
    found = ok(amo.api("GET", "/api/v4/tasks", params={"filter": {"entity_type": "contacts", "entity_id": [6],
                                                                  "is_completed": 0}}))["_embedded"]["tasks"]
    assert [(t["id"], t["text"], t["complete_till"], t["is_completed"]) for t in found] == [(task_id, "Call back", till, False)]
    assert ok(amo.api("GET", "/api/v4/contacts/6"))["closest_task_at"] == till
    assert amo.api("GET", "/api/v4/tasks", params={"filter": {"entity_type": "leads", "entity_id": [6]}})[0] == 204


def test_notes_on_one_entity_and_by_type(amo):
    ok(amo.api("POST", "/api/v4/contacts/8/notes", json=[{"note_type": "common", "params": {"text": "hello"}}]))
    ok(amo.api("POST", "/api/v4/contacts/notes", json=[{"entity_id": 9, "note_type": "common", "params": {"text": "hi"}}]))
    mine = ok(amo.api("GET", "/api/v4/contacts/8/notes"))["_embedded"]["notes"]
    assert [(n["entity_id"], n["params"]["text"]) for n in mine] == [(8, "hello")]
    every = ok(amo.api("GET", "/api/v4/contacts/notes"))["_embedded"]["notes"]
    assert {n["entity_id"] for n in every} >= {8, 9}
    status, error = amo.api("POST", "/api/v4/contacts/8/notes", json=[{"note_type": "nope"}])
    assert status == 400 and error["validation-errors"][0]["errors"][0]["path"] == "note_type"
    assert amo.api("GET", "/api/v4/leads/1/notes")[0] == 204


def test_deleting_in_the_ui_leaves_a_deleted_event(amo):
    amo.delete("contacts", 20)
    assert amo.api("GET", "/api/v4/contacts/20")[0] == 204
    assert 20 not in [c["id"] for c in amo.state("contacts")["contacts"]]
    events = ok(amo.api("GET", "/api/v4/events", params={"filter": {"type": "contact_deleted,lead_deleted"}}))
    found = [e for e in events["_embedded"]["events"] if e["entity_id"] == 20]
    assert found and found[0]["entity_type"] == "contact" and isinstance(found[0]["id"], str) and len(found[0]["id"]) == 26
    by_entity = ok(amo.api("GET", "/api/v4/events", params={"filter": {"entity": ["contact"], "type": ["contact_deleted"]}}))
    assert {e["entity_id"] for e in by_entity["_embedded"]["events"]} == {20}
    assert amo.api("GET", "/api/v4/events", params={"filter": {"type": "company_deleted"}})[0] == 204
    trash = ok(amo.api("GET", "/api/v4/contacts", params={"with": "only_deleted"}))["_embedded"]["contacts"]
    assert [(c["id"], c["is_deleted"]) for c in trash] == [(20, True)]


def test_corrupt_serves_raw_values_verbatim(amo):
    amo.corrupt("contacts", 12, updated_at="yesterday")
    assert ok(amo.api("GET", "/api/v4/contacts/12"))["updated_at"] == "yesterday"


# -- auth -----------------------------------------------------------------------------------------

def test_unauthorized_is_problem_json(amo):
    status, headers, raw = raw_get(f"{amo.base_url}/api/v4/contacts")
    assert status == 401 and headers["Content-Type"].startswith("application/problem+json")
    assert json.loads(raw) == {"title": "Unauthorized", "type": "https://httpstatus.es/401", "status": 401,
                               "detail": "Invalid user name or password"}
    assert amo.api("GET", "/api/v4/contacts", token="nope")[0] == 401
    assert amo.api("GET", "/api/v4/contacts", token="")[0] == 401
    assert amo.api("GET", "/api/v4/contacts/1", token=None)[0] == 200  # None = the long-lived token
    status, body = amo.api("GET", "/api/v4/nothing-here")
    assert status == 404 and body["status"] == 404


def test_oauth_code_exchange_and_refresh_rotation():
    with running_account(generate=(3, 3), limits=False) as acct:
        code = acct.info["authorization_code"]
        status, tokens = acct.oauth(grant_type="authorization_code", code=code)
        assert status == 200 and tokens["token_type"] == "Bearer" and tokens["expires_in"] == 86400
        assert isinstance(tokens["server_time"], int)
        status, again = acct.oauth(grant_type="authorization_code", code=code)
        assert status == 400 and again["hint"] == "Authorization code has been revoked"
        assert acct.oauth(grant_type="authorization_code", code=code, client_secret="wrong")[0] == 401
        assert acct.api("GET", "/api/v4/account", token=tokens["access_token"])[0] == 200

        old_refresh = tokens["refresh_token"]
        status, first = acct.oauth(grant_type="refresh_token", refresh_token=old_refresh)
        assert status == 200 and first["refresh_token"] != old_refresh
        # The answer was "lost": the old refresh token still works until the new pair is used.
        status, second = acct.oauth(as_form=True, grant_type="refresh_token", refresh_token=old_refresh)
        assert status == 200 and second["refresh_token"] not in (old_refresh, first["refresh_token"])
        assert acct.api("GET", "/api/v4/account", token=second["access_token"])[0] == 200
        status, revoked = acct.oauth(grant_type="refresh_token", refresh_token=old_refresh)
        assert status == 401 and revoked["hint"] == "Token has been revoked"
        assert acct.counters()["oauth_refreshes"] == 2

        assert acct.expire_tokens() >= 1
        assert acct.api("GET", "/api/v4/account", token=second["access_token"])[0] == 401
        assert acct.api("GET", "/api/v4/account")[0] == 200  # long-lived token unaffected
        status, third = acct.oauth(grant_type="refresh_token", refresh_token=second["refresh_token"])
        assert status == 200
        acct.advance(86400 + 1)
        assert acct.api("GET", "/api/v4/account", token=third["access_token"])[0] == 401
        fresh = acct.new_code()
        acct.advance(20 * 60 + 1)
        status, late = acct.oauth(grant_type="authorization_code", code=fresh)
        assert status == 400 and late["hint"] == "Authorization code has expired"


# -- limits and faults ----------------------------------------------------------------------------

def test_eighth_request_in_a_second_is_429_with_body_retry_after_then_403_block():
    with running_account(generate=(3, 3), frozen_clock=True, block_after=3) as acct:
        statuses = [acct.api("GET", "/api/v4/account")[0] for _ in range(7)]
        assert statuses == [200] * 7
        status, headers, raw = raw_get(f"{acct.base_url}/api/v4/account", {"Authorization": f"Bearer {acct.access_token}"})
        body = json.loads(raw)
        assert status == 429 and body["retry_after"] == 1 and body["title"] == "Too Many Requests"
        assert "Retry-After" not in headers
        acct.advance(1.0)
        assert acct.api("GET", "/api/v4/account")[0] == 200
        acct.advance(1.0)
        [acct.api("GET", "/api/v4/account") for _ in range(7)]
        assert [acct.api("GET", "/api/v4/account")[0] for _ in range(2)] == [429, 429]
        acct.advance(5.0)
        status, body = acct.api("GET", "/api/v4/account")
        assert status == 403 and body["status"] == 403
        counters = acct.counters()
        assert counters["too_many_requests"] == 3 and counters["blocked_403"] == 1 and counters["http_status"]["429"] == 3
        acct.unblock()
        assert acct.api("GET", "/api/v4/account")[0] == 200


def test_time_scale_shortens_the_rate_window_and_retry_after():
    with running_account(generate=(3, 3), frozen_clock=True, time_scale=100, rate_limit=2) as acct:
        assert [acct.api("GET", "/api/v4/account")[0] for _ in range(3)] == [200, 200, 429]
        assert acct.api("GET", "/api/v4/account")[1]["retry_after"] == 0.01


def test_faults_fire_without_running_the_handler(amo):
    amo.faults(kind="status", status=502, path="/api/v4/contacts", method="PATCH", count=1)
    status, headers, raw = None, None, None
    req = urllib.request.Request(f"{amo.base_url}/api/v4/contacts/15", method="PATCH",
                                 data=json.dumps({"name": "never"}).encode(),
                                 headers={"Authorization": f"Bearer {amo.access_token}", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    assert status == 502 and b"nginx" in raw
    assert ok(amo.api("GET", "/api/v4/contacts/15"))["name"] != "never"
    amo.faults(kind="reset", path="/api/v4/leads", count=1)
    with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
        amo.api("GET", "/api/v4/leads")
    amo.faults(kind="expired_token", count=1)
    assert amo.api("GET", "/api/v4/leads")[0] == 401
    amo.faults(kind="too_many_requests", retry_after=2, count=1)
    assert amo.api("GET", "/api/v4/leads")[1]["retry_after"] == 2
    amo.faults(kind="status", status=500, probability=1.0)
    assert amo.api("GET", "/api/v4/leads")[0] == 500
    amo.clear_faults()
    assert amo.api("GET", "/api/v4/leads")[0] == 200
    faults = amo.counters()["faults"]
    assert faults["status"] >= 2 and faults["reset"] == 1 and faults["expired_token"] == 1


def test_counters_by_route(amo):
    amo.reset_counters()
    amo.api("GET", "/api/v4/contacts")
    amo.api("GET", "/api/v4/contacts/1")
    counters = amo.counters()
    assert counters["http_requests"] == 2
    assert counters["by_route"] == {"GET /api/v4/contacts": 1, "GET /api/v4/contacts/{id}": 1}


# -- CSV import -----------------------------------------------------------------------------------

def test_csv_import_round_trip_keeps_ids_and_dates(tmp_path):
    (tmp_path / "contacts.csv").write_text(
        "id,name,phone,email,birthday,responsible_id,created_at,tier\n"
        "10,Анна Петрова,+79001112233,anna@example.ru,1988-02-29,7,2024-01-15T10:00:00+03:00,gold\n"
        "11,Bob,,,,,2024-02-01,\n", encoding="utf-8")
    (tmp_path / "companies.csv").write_text("id,name\n5,ООО Ромашка\n", encoding="utf-8")
    (tmp_path / "deals.csv").write_text(
        "id,contact_id,company_id,status,amount,currency,created_at,closed_at\n"
        "100,10,5,won,1500.40,RUB,2024-03-01T09:00:00+03:00,2024-03-31T23:59:59+03:00\n"
        "101,10,,lost,10,RUB,2024-04-01,2024-04-02T00:00:00+03:00\n"
        "102,11,,open,99,RUB,2024-05-01,\n", encoding="utf-8")
    with running_account(import_csv=tmp_path, limits=False) as acct:
        assert acct.info["counts"] == {"contacts": 2, "companies": 1, "leads": 3}
        leads = {lead["id"]: lead for lead in ok(acct.api("GET", "/api/v4/leads", params={"with": "contacts"}))["_embedded"]["leads"]}
        won, lost, open_ = leads[100], leads[101], leads[102]
        assert won["status_id"] == 142 and lost["status_id"] == 143 and open_["closed_at"] is None
        assert datetime.fromtimestamp(won["closed_at"], MSK).isoformat() == "2024-03-31T23:59:59+03:00"
        assert datetime.fromtimestamp(lost["closed_at"], MSK).date() == date(2024, 4, 2)
        assert won["price"] == 1500 and won["_embedded"]["contacts"][0]["id"] == 10
        assert won["_embedded"]["companies"][0]["id"] == 5 and won["responsible_user_id"] == 7
        anna = ok(acct.api("GET", "/api/v4/contacts/10"))
        values = {v["field_code"] or v["field_name"]: v for v in anna["custom_fields_values"]}
        assert values["PHONE"]["values"][0]["value"] == "+79001112233"
        assert values["EMAIL"]["values"][0]["enum_code"] == "WORK"
        birthday = next(v for v in anna["custom_fields_values"] if v["field_type"] == "birthday")
        assert datetime.fromtimestamp(birthday["values"][0]["value"], MSK).isoformat() == "1988-02-29T00:00:00+03:00"
        assert values["tier"]["values"] == [{"value": "gold"}] and values["tier"]["field_type"] == "text"
        assert datetime.fromtimestamp(anna["created_at"], MSK).isoformat() == "2024-01-15T10:00:00+03:00"
        bob = ok(acct.api("GET", "/api/v4/contacts/11"))
        assert bob["custom_fields_values"] is None and bob["responsible_user_id"] == 1
        assert ok(acct.api("GET", "/api/v4/companies/5"))["name"] == "ООО Ромашка"
        assert 7 in [u["id"] for u in ok(acct.api("GET", "/api/v4/users"))["_embedded"]["users"]]


# -- slow_after: the write happens, the answer comes late ------------------------------------------

def _call_in_thread(fn):
    import threading
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("answer", fn()), daemon=True)
    thread.start()
    return thread, box


def _poll(predicate, timeout: float = 5.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.02)
    return None


def test_slow_after_stores_the_effect_before_the_answer_is_sent():
    with running_account(generate=(5, 5), limits=False) as acct:
        acct.reset_counters()
        acct.faults(kind="slow_after", path="/api/v4/tasks", method="POST", delay=1.5, count=1)
        till = int(datetime(2026, 7, 1, 12, tzinfo=MSK).timestamp())
        thread, box = _call_in_thread(lambda: acct.api("POST", "/api/v4/tasks", json=[
            {"text": "Late answer", "complete_till": till, "entity_id": 2, "entity_type": "contacts",
             "task_type_id": 1, "request_id": "campaign-1"}]))
        task = _poll(lambda: next((t for t in acct.state()["tasks"] if t["text"] == "Late answer"), None))
        assert task is not None and thread.is_alive()  # stored, answer not yet sent
        thread.join(10)
        status, body = box["answer"]
        assert status == 200 and body["_embedded"]["tasks"][0]["id"] == task["id"]
        assert body["_embedded"]["tasks"][0]["request_id"] == "campaign-1"

        # PATCH, selected by path prefix and verb; a GET on the same prefix is not held
        acct.faults(kind="slow_after", path="/api/v4/leads", method="PATCH", delay=1.5, probability=1.0)
        assert acct.api("GET", "/api/v4/leads")[0] == 200
        thread, box = _call_in_thread(lambda: acct.api("PATCH", "/api/v4/leads/3", json={"name": "Renamed late"}))
        lead = _poll(lambda: next((l for l in acct.state("leads")["leads"] if l["name"] == "Renamed late"), None))
        assert lead is not None and lead["id"] == 3 and thread.is_alive()
        thread.join(10)
        status, body = box["answer"]
        assert status == 200 and body["id"] == 3
        acct.clear_faults()
        counters = acct.counters()
        assert counters["faults"] == {"slow_after": 2}
        assert counters["http_status"]["200"] == 3


# -- what the campaigns executor reads and writes ----------------------------------------------------

def test_second_pipeline_and_status_must_belong_to_the_pipeline():
    with running_account(generate=(5, 5), limits=False) as acct:
        pipelines = ok(acct.api("GET", "/api/v4/leads/pipelines"))
        assert pipelines["_total_items"] == 2
        by_id = {p["id"]: p for p in pipelines["_embedded"]["pipelines"]}
        assert by_id[7000001]["is_main"] is True and by_id[7000002]["is_main"] is False
        assert by_id[7000002]["name"] == "Повторные продажи"
        repeat = ok(acct.api("GET", "/api/v4/leads/pipelines/7000002"))
        statuses = [(s["id"], s["type"], s["pipeline_id"]) for s in repeat["_embedded"]["statuses"]]
        assert statuses == [(70000020, 1, 7000002), (70000021, 0, 7000002), (70000022, 0, 7000002),
                            (70000023, 0, 7000002), (142, 0, 7000002), (143, 0, 7000002)]
        listed = ok(acct.api("GET", "/api/v4/leads/pipelines/7000002/statuses"))["_embedded"]["statuses"]
        assert [s["id"] for s in listed] == [s[0] for s in statuses]
        assert acct.api("GET", "/api/v4/leads/pipelines/7000003")[0] == 404
        assert len(acct.state()["pipelines"]) == 2

        created = ok(acct.api("POST", "/api/v4/leads", json=[
            {"name": "Repeat", "pipeline_id": 7000002, "status_id": 70000022, "request_id": "k1"},
            {"name": "Repeat default", "pipeline_id": 7000002},
            {"name": "Main", "pipeline_id": 7000001, "status_id": 70000012},
            {"name": "By status only", "status_id": 70000023}]))["_embedded"]["leads"]
        got = {c["request_id"]: ok(acct.api("GET", f"/api/v4/leads/{c['id']}")) for c in created}
        assert (got["k1"]["pipeline_id"], got["k1"]["status_id"]) == (7000002, 70000022)
        assert (got["1"]["pipeline_id"], got["1"]["status_id"]) == (7000002, 70000021)
        assert (got["2"]["pipeline_id"], got["2"]["status_id"]) == (7000001, 70000012)
        assert (got["3"]["pipeline_id"], got["3"]["status_id"]) == (7000002, 70000023)
        found = ok(acct.api("GET", "/api/v4/leads", params={"filter": {"pipeline_id": [7000002]}}))["_embedded"]["leads"]
        assert {l["id"] for l in found} == {got["k1"]["id"], got["1"]["id"], got["3"]["id"]}

        before = len(acct.state("leads")["leads"])
        status, error = acct.api("POST", "/api/v4/leads", json=[
            {"name": "ok", "pipeline_id": 7000002, "status_id": 142},
            {"name": "bad", "pipeline_id": 7000002, "status_id": 70000012, "request_id": "x"}])
        assert status == 400 and error["validation-errors"] == [{"request_id": "x", "errors": [
            {"code": "NotSupportedChoice", "path": "status_id", "detail": "The value you selected is not a valid choice."}]}]
        status, error = acct.api("POST", "/api/v4/leads", json=[{"name": "bad", "pipeline_id": 1234}])
        assert status == 400 and error["validation-errors"][0]["errors"][0]["path"] == "pipeline_id"
        assert len(acct.state("leads")["leads"]) == before

        lead_id = got["2"]["id"]
        status, error = acct.api("PATCH", f"/api/v4/leads/{lead_id}", json={"pipeline_id": 7000001, "status_id": 70000021})
        assert status == 400 and error["validation-errors"][0]["errors"][0]["code"] == "NotSupportedChoice"
        ok(acct.api("PATCH", f"/api/v4/leads/{lead_id}", json={"pipeline_id": 7000002, "status_id": 70000021}))
        lead = ok(acct.api("GET", f"/api/v4/leads/{lead_id}"))
        assert (lead["pipeline_id"], lead["status_id"]) == (7000002, 70000021)
        ok(acct.api("PATCH", "/api/v4/leads", json=[{"id": lead_id, "status_id": 142}]))
        lead = ok(acct.api("GET", f"/api/v4/leads/{lead_id}"))
        assert (lead["pipeline_id"], lead["status_id"]) == (7000002, 142) and lead["closed_at"] is not None
        moves = [e for e in acct.state()["events"] if e["type"] == "lead_status_changed" and e["entity_id"] == lead_id]
        assert moves[0]["value_before"][0]["lead_status"] == {"id": 70000012, "pipeline_id": 7000001}
        assert moves[0]["value_after"][0]["lead_status"] == {"id": 70000021, "pipeline_id": 7000002}


def test_tasks_by_entity_lead_search_and_contact_leads(amo):
    till = int(datetime(2026, 8, 1, 18, tzinfo=MSK).timestamp())
    users = ok(amo.api("GET", "/api/v4/users"))["_embedded"]["users"]
    other = max(u["id"] for u in users)
    created = ok(amo.api("POST", "/api/v4/tasks", json=[
        {"text": "campaign c1 key k1", "complete_till": till, "entity_id": 11, "entity_type": "contacts",
         "task_type_id": 1, "responsible_user_id": other, "request_id": "c1:k1"},
        {"text": "lead call", "complete_till": till, "entity_id": 12, "entity_type": "leads", "task_type_id": 2,
         "request_id": "c1:k2"}]))["_embedded"]["tasks"]
    assert [t["request_id"] for t in created] == ["c1:k1", "c1:k2"]
    found = ok(amo.api("GET", "/api/v4/tasks", params={"filter": {"entity_type": "contacts", "entity_id": [11]}}))
    rows = [(t["id"], t["text"], t["task_type_id"], t["complete_till"], t["responsible_user_id"], t["entity_type"])
            for t in found["_embedded"]["tasks"]]
    assert rows == [(created[0]["id"], "campaign c1 key k1", 1, till, other, "contacts")]
    found = ok(amo.api("GET", "/api/v4/tasks", params={"filter": {"entity_type": "leads", "entity_id": [12]}}))
    assert [(t["text"], t["task_type_id"], t["responsible_user_id"]) for t in found["_embedded"]["tasks"]] == \
        [("lead call", 2, amo.info["user_id"])]
    # an unknown responsible user is refused, nothing written
    count = len(amo.state()["tasks"])
    status, error = amo.api("POST", "/api/v4/tasks", json=[
        {"text": "x", "complete_till": till, "entity_id": 11, "entity_type": "contacts", "responsible_user_id": 987654,
         "request_id": "bad"}])
    assert status == 400 and error["validation-errors"] == [{"request_id": "bad", "errors": [
        {"code": "NotSupportedChoice", "path": "responsible_user_id", "detail": "The value you selected is not a valid choice."}]}]
    assert len(amo.state()["tasks"]) == count

    lead = ok(amo.api("POST", "/api/v4/leads", json=[{"name": "Повторная продажа zq-4471 весна",
                                                       "_embedded": {"contacts": [{"id": 11}]}}]))["_embedded"]["leads"][0]
    hits = ok(amo.api("GET", "/api/v4/leads", params={"query": "zq-4471"}))["_embedded"]["leads"]
    assert [l["id"] for l in hits] == [lead["id"]]
    assert amo.api("GET", "/api/v4/leads", params={"query": "no-such-text-zz"})[0] == 204
    contact = ok(amo.api("GET", "/api/v4/contacts/11", params={"with": "leads"}))
    assert lead["id"] in [l["id"] for l in contact["_embedded"]["leads"]]


# -- issue 19 item 6: where a client nobody here wrote disagreed ----------------------------------

def test_import_drops_a_link_to_a_contact_or_company_not_in_the_base(tmp_path):
    # In amoCRM a link always points to an existing entity: a lead never names a missing main contact.
    (tmp_path / "contacts.csv").write_text("id,name\n10,Анна\n", encoding="utf-8")
    (tmp_path / "companies.csv").write_text("id,name\n5,ООО Ромашка\n", encoding="utf-8")
    (tmp_path / "deals.csv").write_text(
        "id,contact_id,company_id,status,amount,currency,created_at,closed_at\n"
        "100,10,5,won,100,RUB,2024-03-01,2024-03-02\n"
        "101,77,6,open,10,RUB,2024-04-01,\n", encoding="utf-8")
    with running_account(import_csv=tmp_path, limits=False) as acct:
        assert acct.info["counts"] == {"contacts": 1, "companies": 1, "leads": 2}
        leads = {x["id"]: x for x in ok(acct.api("GET", "/api/v4/leads", params={"with": "contacts"}))["_embedded"]["leads"]}
        assert [c["id"] for c in leads[100]["_embedded"]["contacts"]] == [10]
        assert leads[100]["_embedded"]["companies"][0]["id"] == 5
        assert leads[101]["_embedded"]["contacts"] == [] and leads[101]["_embedded"]["companies"] == []
        # every link the account hands out answers 200
        for lead in leads.values():
            for ref in lead["_embedded"]["contacts"] + lead["_embedded"]["companies"]:
                path = ref["_links"]["self"]["href"][len(acct.base_url):]
                assert acct.api("GET", path)[0] == 200, path
        assert acct.api("GET", "/api/v4/contacts/77")[0] == 204
        contact = ok(acct.api("GET", "/api/v4/contacts/10", params={"with": "leads"}))
        assert [x["id"] for x in contact["_embedded"]["leads"]] == [100]
        notes = acct.server.notes
        assert any("deal 101" in n and "contact 77" in n for n in notes)
        assert any("deal 101" in n and "company 6" in n for n in notes)


def test_statuses_filter_is_a_pipeline_and_status_pair():
    with running_account(generate=(5, 0), limits=False) as acct:
        created = ok(acct.api("POST", "/api/v4/leads", json=[
            {"name": "won main", "pipeline_id": 7000001, "status_id": 142},
            {"name": "won repeat", "pipeline_id": 7000002, "status_id": 142},
            {"name": "open repeat", "pipeline_id": 7000002, "status_id": 70000022}]))["_embedded"]["leads"]
        won_main, won_repeat, open_repeat = (c["id"] for c in created)

        def ids(*stages):
            params = {"filter": {"statuses": {str(i): stage for i, stage in enumerate(stages)}}}
            status, body = acct.api("GET", "/api/v4/leads", params=params)
            return set() if status == 204 else {x["id"] for x in body["_embedded"]["leads"]}

        assert ids({"pipeline_id": 7000002, "status_id": 142}) == {won_repeat}
        assert ids({"pipeline_id": 7000001, "status_id": 142}) == {won_main}
        assert ids({"pipeline_id": 7000001, "status_id": 70000022}) == set()  # not a stage of that pipeline
        assert acct.api("GET", "/api/v4/leads", params={"filter": {"statuses": {"0": {
            "pipeline_id": 7000001, "status_id": 70000022}}}})[0] == 204
        assert ids({"pipeline_id": 7000002, "status_id": 142},
                   {"pipeline_id": 7000002, "status_id": 70000022}) == {won_repeat, open_repeat}
        assert ids({"status_id": 142}) == {won_main, won_repeat}  # no pipeline: that status in every pipeline


def test_account_with_amojo_rights_entity_names_and_drive_url(amo):
    plain = ok(amo.api("GET", "/api/v4/account"))
    assert "entity_names" not in plain and "_embedded" not in plain
    account = ok(amo.api("GET", "/api/v4/account", params={"with": "amojo_rights,entity_names,drive_url,version"}))
    rights = account["_embedded"]["amojo_rights"]
    assert set(rights) == {"can_direct", "can_create_groups"} and all(isinstance(v, bool) for v in rights.values())
    names = account["entity_names"]
    assert names["leads"]["ru"]["singular_form"]["default"] == "сделка"
    assert names["leads"]["en"]["plural_form"]["default"] == "leads"
    assert {"contacts", "companies"} <= set(names)
    assert account["drive_url"].startswith("http") and isinstance(account["version"], int)
