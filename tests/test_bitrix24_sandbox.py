"""The Bitrix24 sandbox portal over real HTTP on loopback (behaviour from shared/research/bitrix24.md)."""

from __future__ import annotations

import csv
import json
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from sandbox.bitrix24 import running_portal
from sandbox.bitrix24.limits import (BUCKET_SIZE, DRAIN_RATE, OPERATING_LIMIT, OPERATING_WINDOW, LeakyBucket,
                                     OperatingLedger, list_cost)
from sandbox.bitrix24.clock import Clock

ROOT = Path(__file__).resolve().parents[1]
TIME_KEYS = {"start", "finish", "duration", "processing", "date_start", "date_finish", "operating_reset_at", "operating"}


@pytest.fixture(scope="module")
def portal():
    with running_portal(generate=(120, 300), limits=False, today=datetime(2026, 6, 1).date()) as handle:
        yield handle


def ok(response):
    status, body = response
    assert status == 200, body
    return body


# -- CLI ------------------------------------------------------------------------------------------

def _first_line(args: list[str]) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.bitrix24", "--port", "0", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def test_cli_first_line_and_webhook_call():
    proc, info = _first_line(["--generate", "30:60", "--time-scale", "100", "--no-limits"])
    try:
        for key in ("webhook_url", "client_id", "client_secret", "access_token", "refresh_token", "client_endpoint",
                    "oauth_token_url", "application_token", "member_id", "domain"):
            assert info[key], key
        assert info["webhook_url"].startswith("http://127.0.0.1:") and info["webhook_url"].endswith("/")
        assert info["oauth_token_url"] == info["base_url"] + "/oauth/token/"
        assert info["counts"] == {"contact": 30, "company": 0, "deal": 60} and info["limits"] is False
        with urllib.request.urlopen(info["webhook_url"] + "crm.contact.list", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["total"] == 30 and len(body["result"]) == 30
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_cli_tls_and_import_csv(tmp_path: Path):
    _write_csv(tmp_path)
    proc, info = _first_line(["--tls", "--import-csv", str(tmp_path)])
    try:
        assert info["webhook_url"].startswith("https://127.0.0.1:")
        assert Path(info["ca_file"]).is_file() and info["https_proxy"].startswith("http://127.0.0.1:")
        context = ssl.create_default_context(cafile=info["ca_file"])
        with urllib.request.urlopen(info["webhook_url"] + "crm.contact.get?id=7", timeout=10, context=context) as resp:
            assert json.loads(resp.read())["result"]["NAME"] == "Anna"
        # a cloud portal refuses plain http: 400 INVALID_REQUEST "Https required."
        plain = info["webhook_url"].replace("https://", "http://") + "crm.contact.get?id=7"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(plain, timeout=10)
        assert caught.value.code == 400 and json.loads(caught.value.read())["error"] == "INVALID_REQUEST"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_rejects_bad_arguments(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "sandbox.bitrix24", "--import-csv", str(tmp_path / "nope")],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "error:" in done.stderr


# -- envelope, values, pagination ----------------------------------------------------------------

def test_envelope_and_string_values(portal):
    body = ok(portal.call("crm.contact.get", {"id": 1}))
    assert set(body["time"]) == TIME_KEYS
    assert isinstance(body["time"]["operating_reset_at"], int)
    assert body["time"]["date_start"].endswith("+03:00")
    contact = body["result"]
    assert contact["ID"] == "1" and isinstance(contact["ASSIGNED_BY_ID"], str)
    assert all(v is None or isinstance(v, (str, list)) for v in contact.values())
    assert contact["DATE_CREATE"].endswith("+03:00") and contact["PHOTO"] is None
    deal = ok(portal.call("crm.deal.get", {"id": 1}))["result"]
    assert deal["OPPORTUNITY"].count(".") == 1 and len(deal["OPPORTUNITY"].split(".")[1]) == 2
    assert deal["CATEGORY_ID"] == "0" and deal["STAGE_SEMANTIC_ID"] in ("P", "S", "F")


def test_pagination_total_next_and_fast_mode(portal):
    first = ok(portal.call("crm.contact.list", {"order": {"ID": "ASC"}, "select": ["ID"]}))
    assert first["total"] == 120 and first["next"] == 50 and len(first["result"]) == 50
    last = ok(portal.call("crm.contact.list", {"start": 100, "select": ["ID"]}))
    assert "next" not in last and [r["ID"] for r in last["result"]][0] == "101" and len(last["result"]) == 20
    aligned = ok(portal.call("crm.contact.list", {"start": 70, "select": ["ID"]}))
    assert aligned["result"][0]["ID"] == "51" and aligned["next"] == 100
    fast = ok(portal.call("crm.contact.list", {"start": -1, "select": ["ID"]}))
    assert fast["total"] == 0 and "next" not in fast and len(fast["result"]) == 50
    seen, last_id = [], 0
    while True:
        page = ok(portal.call("crm.contact.list", {"start": -1, "order": {"ID": "ASC"}, "filter": {">ID": last_id},
                                                   "select": ["ID"]}))["result"]
        seen += [int(r["ID"]) for r in page]
        if len(page) < 50:
            break
        last_id = int(page[-1]["ID"])
    assert seen == list(range(1, 121))


def test_list_filters_compare_match_case_insensitively_and_ignore_unknown_fields(portal):
    def ids(flt, entity="contact", **extra):
        body = ok(portal.call(f"crm.{entity}.list", {"filter": flt, "select": ["ID"], **extra}))
        return [int(r["ID"]) for r in body["result"]]

    assert ids({">ID": 115}) == [116, 117, 118, 119, 120]
    assert ids({">=ID": 118, "<ID": 120}) == [118, 119]
    assert ids({"<=ID": 2}) == [1, 2]
    assert ids({"@ID": [3, 5, 7]}) == [3, 5, 7]
    assert ids({"!@ID": list(range(1, 118)), "<=ID": 120}) == [118, 119, 120]
    assert ids({"!ID": 1, "<ID": 4}) == [2, 3] == ids({"!=ID": 1, "<ID": 4})
    assert ids({"ID": [4, 6]}) == [4, 6]
    assert ids({"%NAME": "customer 11"}) == [11] + list(range(110, 120))  # LIKE, case-insensitive
    assert ids({"=%NAME": "Customer 1_"}) == list(range(10, 20))
    assert ids({"NAME": "CUSTOMER 7"}) == [7]                               # equality is case-insensitive too
    with_email = next(c for c in portal.state("contacts")["contacts"] if c.get("EMAIL"))
    assert ids({"EMAIL": with_email["EMAIL"][0]["VALUE"].upper()}) == [int(with_email["ID"])]
    assert ids({"UF_CRM_SOURCE": "site", "<=ID": 20}) == [
        int(r["ID"]) for r in portal.state("contacts")["contacts"] if r["UF_CRM_SOURCE"] == "site" and int(r["ID"]) <= 20]
    assert set(ids({"=BIRTHDATE": ""})) == {int(r["ID"]) for r in portal.state("contacts")["contacts"]
                                            if r["BIRTHDATE"] == ""}
    won = ids({"STAGE_SEMANTIC_ID": "S"}, "deal", start=-1)
    assert won and all(portal.call("crm.deal.get", {"id": i})[1]["result"]["STAGE_ID"] == "WON" for i in won[:5])
    closed = ok(portal.call("crm.deal.list", {"filter": {">=CLOSEDATE": "2026-01-01", "<CLOSEDATE": "2026-02-01T00:00:00+03:00"},
                                              "select": ["ID", "CLOSEDATE"]}))["result"]
    assert closed and all(r["CLOSEDATE"].startswith("2026-01") for r in closed)
    assert ids({">=DATE_CREATE": "not a date"}) == []  # unparsable dates match nothing (user-get.md)
    assert ids({"NO_SUCH_FIELD": 1, "<ID": 3}) == [1, 2]  # ignored, with a warning
    assert any("NO_SUCH_FIELD" in w for w in portal.counters()["warnings"])
    status, body = portal.call("crm.contact.list", {"filter": "oops"})
    assert (status, body["error"], body["error_description"]) == (400, "", "Parameter 'filter' must be array.")


def test_order_and_select(portal):
    body = ok(portal.call("crm.contact.list", {"order": {"NAME": "DESC"}, "filter": {"<ID": 12}, "select": ["ID", "NAME"]}))
    names = [r["NAME"] for r in body["result"]]
    assert names == sorted(names, key=str.casefold, reverse=True)
    default = ok(portal.call("crm.contact.list", {"filter": {"ID": 1}}))["result"][0]
    assert "PHONE" not in default and "EMAIL" not in default and "UF_CRM_SOURCE" in default and "NAME" in default
    star = ok(portal.call("crm.contact.list", {"filter": {"ID": 1}, "select": ["*"]}))["result"][0]
    assert "UF_CRM_SOURCE" not in star and "EMAIL" not in star and "DATE_MODIFY" in star
    with_email = next(c["ID"] for c in portal.state("contacts")["contacts"] if c.get("EMAIL"))
    named = ok(portal.call("crm.contact.list", {"filter": {"ID": with_email}, "select": ["EMAIL", "UF_*"]}))["result"][0]
    assert set(named) == {"ID", "EMAIL", "UF_CRM_SOURCE", "UF_CRM_POINTS"}
    lower = ok(portal.call("crm.contact.list", {"filter": {"ID": 1}, "select": ["ID", "name"]}))["result"][0]
    assert lower == {"ID": "1"} and any("'name'" in w for w in portal.counters()["warnings"])
    assert named["EMAIL"][0]["TYPE_ID"] == "EMAIL" and named["EMAIL"][0]["ID"].isdigit()


def test_date_modify_maintained_on_add_and_update(portal):
    new_id = ok(portal.call("crm.contact.add", {"fields": {"NAME": "Fresh", "BIRTHDATE": "29.02.1988",
                                                           "PHONE": [{"VALUE": "+7 900 000-00-01", "VALUE_TYPE": "MOBILE"}]}}))["result"]
    assert isinstance(new_id, int) and new_id == 121
    fresh = ok(portal.call("crm.contact.get", {"id": new_id}))["result"]
    assert fresh["DATE_CREATE"] == fresh["DATE_MODIFY"] and fresh["HAS_PHONE"] == "Y"
    assert fresh["BIRTHDATE"].startswith("1988-02-29T00:00:00")
    before = ok(portal.call("crm.contact.get", {"id": 2}))["result"]["DATE_MODIFY"]
    assert ok(portal.call("crm.contact.update", {"id": 2, "fields": {"LAST_NAME": "Changed", "UNKNOWN": 1}}))["result"] is True
    after = ok(portal.call("crm.contact.get", {"id": 2}))["result"]
    assert after["LAST_NAME"] == "Changed" and datetime.fromisoformat(after["DATE_MODIFY"]) > datetime.fromisoformat(before)
    recent = ok(portal.call("crm.contact.list", {"filter": {">=DATE_MODIFY": after["DATE_MODIFY"]}, "select": ["ID"]}))
    assert {"2", str(new_id)} <= {r["ID"] for r in recent["result"]}
    # multifield update: overwrite by ID, add without ID, delete with DELETE=Y
    phone_id = fresh["PHONE"][0]["ID"]
    ok(portal.call("crm.contact.update", {"id": new_id, "fields": {"PHONE": [
        {"ID": phone_id, "DELETE": "Y"}, {"VALUE": "+7 900 000-00-02", "VALUE_TYPE": "WORK"}]}}))
    phones = ok(portal.call("crm.contact.get", {"id": new_id}))["result"]["PHONE"]
    assert [p["VALUE"] for p in phones] == ["+7 900 000-00-02"]
    status, body = portal.call("crm.contact.update", {"id": new_id, "fields": {"EMAIL": [{"VALUE": "not-an-email"}]}})
    assert status == 400 and body["error"] == "ERROR_CORE"
    ok(portal.call("crm.contact.delete", {"id": new_id}))


def test_deals_stages_and_contact_bindings(portal):
    deal_id = ok(portal.call("crm.deal.add", {"fields": {"TITLE": "Upsell", "CONTACT_IDS": [3, 4], "OPPORTUNITY": 1500.5}}))["result"]
    deal = ok(portal.call("crm.deal.get", {"id": deal_id}))["result"]
    assert (deal["STAGE_ID"], deal["STAGE_SEMANTIC_ID"], deal["CLOSED"], deal["CONTACT_ID"]) == ("NEW", "P", "N", "3")
    assert deal["OPPORTUNITY"] == "1500.50" and deal["ASSIGNED_BY_ID"] == "1"
    items = ok(portal.call("crm.deal.contact.items.get", {"id": deal_id}))["result"]
    assert items == [{"CONTACT_ID": 3, "SORT": 10, "ROLE_ID": 0, "IS_PRIMARY": "Y"},
                     {"CONTACT_ID": 4, "SORT": 20, "ROLE_ID": 0, "IS_PRIMARY": "N"}]
    ok(portal.call("crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "WON"}}))
    won = ok(portal.call("crm.deal.get", {"id": deal_id}))["result"]
    assert (won["STAGE_SEMANTIC_ID"], won["CLOSED"]) == ("S", "Y")
    status, body = portal.call("crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "C1:WON"}})
    assert status == 400 and body["error"] == "ERROR_CORE"
    c1 = ok(portal.call("crm.deal.add", {"fields": {"CATEGORY_ID": 1}}))["result"]
    assert ok(portal.call("crm.deal.get", {"id": c1}))["result"]["STAGE_ID"] == "C1:NEW"
    stages = ok(portal.call("crm.status.list", {"filter": {"ENTITY_ID": "DEAL_STAGE"}}))["result"]
    assert {s["STATUS_ID"]: s["EXTRA"]["SEMANTICS"] for s in stages}["LOSE"] == "failure"
    categories = ok(portal.call("crm.category.list", {"entityTypeId": 2}))
    assert {c["id"] for c in categories["result"]["categories"]} == {0, 1} and categories["total"] == 2


# -- batch ------------------------------------------------------------------------------------

def test_batch_references_halt_errors_and_limit(portal):
    before = portal.counters()
    body = ok(portal.call("batch", {"halt": 0, "cmd": {
        "page": "crm.contact.list?filter[%3EID]=110&select[]=ID&order[ID]=ASC",
        "one": "crm.contact.get?id=$result[page][0][ID]",
        "deals": "crm.deal.list?filter[CONTACT_ID]=$result[one][ID]&select[0]=ID",
        "missing": "crm.contact.get?id=999999",
        "nested": "batch?cmd[x]=scope",
    }}))["result"]
    assert body["result"]["one"]["ID"] == "111"
    assert body["result_total"]["page"] == 10 and "deals" in body["result_total"]
    assert body["result_error"]["missing"] == {"error": "", "error_description": "Not found"}
    assert body["result_error"]["nested"]["error"] == "ERROR_BATCH_METHOD_NOT_ALLOWED"
    assert body["result_next"] == [] and set(body["result_time"]["one"]) == TIME_KEYS
    after = portal.counters()
    assert after["http_requests"] - before["http_requests"] == 1
    assert after["methods"]["crm.contact.get"] - before["methods"].get("crm.contact.get", 0) == 2
    # numeric keys 0..n-1 come back as JSON arrays; halt stops at the first error; no errors -> PHP []
    halted = ok(portal.call("batch", {"halt": 1, "cmd": ["crm.contact.get?id=1", "crm.contact.get?id=0", "crm.contact.get?id=2"]}))["result"]
    assert isinstance(halted["result"], list) and len(halted["result"]) == 1 and list(halted["result_error"]) == ["1"]
    clean = ok(portal.call("batch", {"cmd": {"a": "scope"}}))
    assert clean["result"]["result_error"] == [] and "operating" not in clean["time"]
    # more than 50: the extra commands end with ERROR_BATCH_LENGTH_EXCEEDED
    big = ok(portal.call("batch", {"cmd": {f"c{i}": f"crm.contact.get?id={i + 1}" for i in range(53)}}))["result"]
    assert len(big["result"]) == 50
    assert {k: v["error"] for k, v in big["result_error"].items()} == {f"c{i}": "ERROR_BATCH_LENGTH_EXCEEDED" for i in (50, 51, 52)}


# -- request decoding -------------------------------------------------------------------------

def test_case_insensitive_methods_and_params(portal):
    upper = ok(portal.call("CRM.CONTACT.LIST", {"FILTER": {"@ID": [1, 2]}, "SELECT": ["ID"], "ORDER": {"ID": "DESC"}}))
    assert [r["ID"] for r in upper["result"]] == ["2", "1"]
    status, body = portal.request("POST", portal.webhook_url + "crm.contact.Get.json", b'{"ID": 3}',
                                  {"Content-Type": "application/json"})
    assert status == 200 and body["result"]["ID"] == "3"
    # crm.timeline.comment.add reads only lower-case "fields" (crm 23.100.0)
    status, body = portal.call("crm.timeline.comment.add", {"FIELDS": {"ENTITY_ID": 1, "ENTITY_TYPE": "contact", "COMMENT": "x"}})
    assert status == 400 and body["error"] == "100"


def test_form_and_query_encodings(portal):
    via_form = ok(portal.call("crm.contact.list", {"filter": {">ID": 117}, "select": ["ID", "PHONE"]}, encoding="form"))
    via_query = ok(portal.call("crm.contact.list", {"filter": {">ID": 117}, "select": ["ID", "PHONE"]}, encoding="query"))
    via_json = ok(portal.call("crm.contact.list", {"filter": {">ID": 117}, "select": ["ID", "PHONE"]}))
    assert via_form["result"] == via_query["result"] == via_json["result"]
    raw = "fields[NAME]=Form&fields[PHONE][0][VALUE]=%2B79990001122&fields[PHONE][0][VALUE_TYPE]=WORK"
    status, body = portal.request("POST", portal.webhook_url + "crm.contact.add", raw.encode(),
                                  {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    created = ok(portal.call("crm.contact.get", {"id": body["result"]}, encoding="query"))["result"]
    assert created["NAME"] == "Form" and created["PHONE"][0]["VALUE"] == "+79990001122"
    query = "select[]=ID&filter[%3EID]=117&filter[!ID]=119&filter[%3CID]=121"
    status, body = portal.request("GET", portal.webhook_url + "crm.contact.list?" + query)
    assert status == 200 and [r["ID"] for r in body["result"]] == ["118", "120"]
    multipart = (b"--XyZ\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n5\r\n--XyZ--\r\n")
    status, body = portal.request("POST", portal.webhook_url + "crm.contact.get", multipart,
                                  {"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert status == 200 and body["result"]["ID"] == "5"


# -- user fields --------------------------------------------------------------------------------

def test_userfield_enumeration_lifecycle(portal):
    uf_id = ok(portal.call("crm.contact.userfield.add", {"fields": {
        "FIELD_NAME": "lc_segment", "USER_TYPE_ID": "enumeration", "MULTIPLE": "Y", "LABEL": "Lifecycle",
        "LIST": [{"VALUE": "New", "XML_ID": "lifecycle.new"}, {"VALUE": "Regular", "XML_ID": "lifecycle.regular"}]}}))["result"]
    assert isinstance(uf_id, int)
    listed = ok(portal.call("crm.contact.userfield.list", {"filter": {"FIELD_NAME": "UF_CRM_LC_SEGMENT"}}))["result"]
    assert len(listed) == 1 and listed[0]["ID"] == str(uf_id) and listed[0]["MULTIPLE"] == "Y"
    options = {o["XML_ID"]: o["ID"] for o in listed[0]["LIST"]}
    ok(portal.call("crm.contact.userfield.update", {"id": uf_id, "fields": {"LIST": [
        {"VALUE": "Asleep", "XML_ID": "lifecycle.asleep"}, {"ID": options["lifecycle.new"], "VALUE": "New!"}]}}))
    options = {o["XML_ID"]: o for o in ok(portal.call("crm.contact.userfield.get", {"id": uf_id}))["result"]["LIST"]}
    assert set(options) == {"lifecycle.new", "lifecycle.regular", "lifecycle.asleep"}
    assert options["lifecycle.new"]["VALUE"] == "New!"
    chosen = [options["lifecycle.new"]["ID"], options["lifecycle.asleep"]["ID"]]
    ok(portal.call("crm.contact.update", {"id": 9, "fields": {"UF_CRM_LC_SEGMENT": chosen}}))
    assert ok(portal.call("crm.contact.get", {"id": 9}))["result"]["UF_CRM_LC_SEGMENT"] == [int(i) for i in chosen]
    hit = ok(portal.call("crm.contact.list", {"filter": {"UF_CRM_LC_SEGMENT": chosen[1]}, "select": ["ID", "UF_CRM_LC_SEGMENT"]}))
    assert [r["ID"] for r in hit["result"]] == ["9"]
    default = ok(portal.call("crm.contact.list", {"filter": {"ID": 9}}))["result"][0]
    assert "UF_CRM_LC_SEGMENT" not in default  # UF_* excludes multiple fields (crm-contact-list.md)
    status, body = portal.call("crm.contact.update", {"id": 9, "fields": {"UF_CRM_LC_SEGMENT": ["lifecycle.new"]}})
    assert status == 400 and body["error"] == "ERROR_CORE"  # option IDs, not XML_IDs
    ok(portal.call("crm.contact.update", {"id": 9, "fields": {"UF_CRM_LC_SEGMENT": []}}))
    assert ok(portal.call("crm.contact.get", {"id": 9}))["result"]["UF_CRM_LC_SEGMENT"] == []
    described = ok(portal.call("crm.contact.fields", {}))["result"]["UF_CRM_LC_SEGMENT"]
    assert described["isDynamic"] and described["isMultiple"] and len(described["items"]) == 3
    status, body = portal.call("crm.contact.userfield.add", {"fields": {"FIELD_NAME": "bad-name", "USER_TYPE_ID": "string"}})
    assert status == 400 and body["error"] == "ERROR_CORE"
    status, body = portal.call("crm.contact.userfield.add", {"fields": {"FIELD_NAME": "X"}})
    assert (status, body["error"]) == (400, "") and "USER_TYPE_ID" in body["error_description"]
    status, body = portal.call("crm.contact.userfield.update", {"id": 99999, "fields": {"SORT": 5}})
    assert (status, body["error"]) == (400, "ERROR_NOT_FOUND")


# -- errors and auth ----------------------------------------------------------------------------

def test_documented_errors(portal):
    assert portal.call("crm.contact.get", {"id": 99999}) == (400, {"error": "", "error_description": "Not found"})
    assert portal.call("crm.contact.get", {}) == (400, {"error": "", "error_description": "ID is not defined or invalid."})
    assert portal.call("crm.contact.update", {"id": 99999, "fields": {}})[1]["error_description"] == "Contact is not found"
    assert portal.call("crm.contact.add", {"fields": "x"})[1] == {"error": "", "error_description": "Parameter 'fields' must be array."}
    assert portal.call("crm.nothing.here", {}) == (404, {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"})
    wrong = portal.webhook_url.replace(portal.info["webhook_code"], "x" * 16)
    assert portal.call("crm.contact.get", {"id": 1}, base=wrong) == (401, {"error": "NO_AUTH_FOUND", "error_description": "Wrong authorization data"})
    assert portal.call("crm.contact.get", {"id": 1}, auth="not-a-token")[0] == 401


def test_oauth_expiry_and_refresh_rotation():
    with running_portal(generate=(5, 5), frozen_clock=True) as p:
        info = p.info
        assert ok(p.call("crm.contact.get", {"id": 1}, auth=info["access_token"]))["result"]["ID"] == "1"
        p.advance(3601)  # access tokens live 3600 portal-seconds
        assert p.call("crm.contact.get", {"id": 1}, auth=info["access_token"]) == (
            401, {"error": "expired_token", "error_description": "The access token provided has expired."})
        query = f"?grant_type=refresh_token&client_id={info['client_id']}&client_secret={info['client_secret']}"
        status, fresh = p.request("GET", info["oauth_token_url"] + query + f"&refresh_token={info['refresh_token']}")
        assert status == 200 and fresh["refresh_token"] != info["refresh_token"]
        assert {"access_token", "expires", "expires_in", "client_endpoint", "server_endpoint", "member_id", "scope",
                "status", "user_id", "domain"} <= set(fresh)
        assert fresh["client_endpoint"] == info["client_endpoint"] and fresh["expires_in"] == 3600
        assert ok(p.call("crm.contact.get", {"id": 1}, auth=fresh["access_token"]))["result"]["ID"] == "1"
        again = p.request("GET", info["oauth_token_url"] + query + f"&refresh_token={info['refresh_token']}")
        assert again == (400, {"error": "invalid_grant", "error_description": "Invalid refresh token"})
        bad = p.request("POST", info["oauth_token_url"], (query[1:].replace(info["client_secret"], "nope")
                                                          + f"&refresh_token={fresh['refresh_token']}").encode(),
                        {"Content-Type": "application/x-www-form-urlencoded"})
        assert bad[0] == 400 and bad[1]["error"] == "invalid_client"
        assert p.expire_tokens() >= 1
        assert p.call("crm.contact.get", {"id": 1}, auth=fresh["access_token"])[1]["error"] == "expired_token"
        assert p.counters()["oauth_refreshes"] == 1


# -- limits -----------------------------------------------------------------------------------

def test_leaky_bucket_503_and_batch_is_one_request():
    with running_portal(generate=(5, 5), frozen_clock=True) as p:
        statuses = [p.call("batch" if i % 2 else "scope", {"cmd": {"a": "scope", "b": "scope"}})[0] for i in range(50)]
        assert statuses == [200] * 50
        assert p.call("scope") == (503, {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
        assert p.call("crm.contact.get", {"id": 1})[0] == 503
        p.advance(1.0)  # drains 2 requests per portal-second
        assert [p.call("scope")[0] for _ in range(3)] == [200, 200, 503]
        counters = p.counters()
        assert counters["query_limit_exceeded"] == 3 and counters["http_status"]["503"] == 3
        assert counters["http_requests"] == 55 and counters["batch_commands"] == 50


def test_time_scale_speeds_up_the_clock():
    fake = [1000.0]
    clock = Clock(100, real=lambda: fake[0])
    bucket = LeakyBucket(BUCKET_SIZE, DRAIN_RATE)
    assert all(bucket.try_acquire(clock.portal()) for _ in range(BUCKET_SIZE))
    assert not bucket.try_acquire(clock.portal())
    fake[0] += 0.01  # 10 ms of wall time = 1 portal-second at x100 -> 2 requests drained
    assert bucket.try_acquire(clock.portal()) and bucket.try_acquire(clock.portal())
    assert not bucket.try_acquire(clock.portal())
    assert clock.to_real(clock.portal() + OPERATING_WINDOW) == pytest.approx(fake[0] + 6.0)


def test_operating_limit_429_and_reset():
    with running_portal(generate=(60, 60), frozen_clock=True, operating_limit=0.05) as p:
        last_ok = None
        for _ in range(30):
            status, body = p.call("crm.contact.list", {"select": ["ID"]})
            if status != 200:
                break
            last_ok = body
        assert (status, body) == (429, {"error": "OPERATION_TIME_LIMIT",
                                        "error_description": "Method is blocked due to operation time limit."})
        assert last_ok["time"]["operating"] > 0.05
        reset_at = last_ok["time"]["operating_reset_at"]
        assert 0 < reset_at - last_ok["time"]["start"] <= 601
        assert ok(p.call("crm.deal.list", {"select": ["ID"]}))  # other methods are not blocked
        mixed = ok(p.call("batch", {"cmd": {"c": "crm.contact.list?select[]=ID", "d": "crm.deal.get?id=1"}}))["result"]
        assert mixed["result_error"]["c"]["error"] == "OPERATION_TIME_LIMIT" and "d" in mixed["result"]
        p.advance(OPERATING_WINDOW)  # the oldest basket leaves the sum
        assert p.call("crm.contact.list", {"select": ["ID"]})[0] == 200
        counters = p.counters()
        assert counters["operation_time_limit"] == 2 and counters["http_status"]["429"] == 1


def test_operating_constants_model_naive_offset_pull_vs_fast_chain():
    """The cost constants (limits.py): counting offset pulls of 100k rows hit 480 s, start=-1 chains never do."""

    def pull(rows: int, fast: bool) -> tuple[int, bool]:
        ledger, bucket = OperatingLedger(limit=OPERATING_LIMIT), LeakyBucket(BUCKET_SIZE, DRAIN_RATE)
        now, page, pages = 0.0, 0, -(-rows // 50)
        while page < pages and now < 3600:
            if not bucket.try_acquire(now):  # the client waits for the bucket, as fast as allowed
                now += 1 / DRAIN_RATE
                continue
            for _ in range(50):  # one batch of 50 list commands
                if page >= pages:
                    break
                if ledger.blocked(("app", "crm.contact.list"), now):
                    return page, True
                returned = min(50, rows - page * 50)
                cost = list_cost(table_rows=rows, offset=0 if fast else page * 50, returned=returned, counted=not fast)
                ledger.charge(("app", "crm.contact.list"), now, cost)
                page += 1
        return page, False

    done, blocked = pull(100_000, fast=False)
    assert blocked and done * 50 < 20_000
    for rows in (100_000, 1_000_000, 5_000_000):
        done, blocked = pull(rows, fast=True)
        assert not blocked, rows


# -- faults, counters, tasks, state -----------------------------------------------------------

def test_faults_and_counters():
    with running_portal(generate=(10, 10), limits=False) as p:
        p.reset_counters()
        p.faults(kind="status", status=500, count=2, method="crm.contact.get")
        assert [p.call("crm.contact.get", {"id": 1})[0] for _ in range(3)] == [500, 500, 200]
        assert p.call("crm.contact.list")[0] == 200
        p.faults(kind="status", status=502, count=1)
        status, body = p.call("scope")
        assert status == 502 and b"nginx" in body
        p.faults(kind="reset", count=1)
        with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
            p.call("scope")
        p.faults(kind="slow", delay=0.05, count=1)
        assert p.call("scope")[0] == 200
        p.faults(kind="expired_token", probability=1.0, method="crm.deal.get")
        assert p.call("crm.deal.get", {"id": 1})[1]["error"] == "expired_token"
        p.clear_faults()
        assert p.call("crm.deal.get", {"id": 1})[0] == 200
        counters = p.counters()
        assert counters["faults"] == {"status": 3, "reset": 1, "slow": 1, "expired_token": 1}
        assert counters["http_status"]["500"] == 2 and counters["top_level"]["crm.contact.get"] == 3
        assert counters["http_requests"] == 9


def test_tasks_todos_and_comments(portal):
    task = ok(portal.call("tasks.task.add", {"fields": {"TITLE": "Call back", "RESPONSIBLE_ID": 1,
                                                        "UF_CRM_TASK": ["C_5"], "DEADLINE": "2026-12-31T23:59:59"}}))
    task_id = task["result"]["task"]["id"]
    assert task["result"]["task"]["title"] == "Call back" and task["result"]["task"]["responsibleId"] == "1"
    listed = ok(portal.call("tasks.task.list", {"filter": {"UF_CRM_TASK": "C_5"}, "select": ["ID", "TITLE", "UF_CRM_TASK"]}))
    assert listed["result"]["tasks"] == [{"id": task_id, "title": "Call back", "ufCrmTask": ["C_5"]}] and listed["total"] == 1
    assert portal.call("tasks.task.add", {"fields": {"RESPONSIBLE_ID": 1}})[1]["error"] == "ERROR_CORE"
    todo = ok(portal.call("crm.activity.todo.add", {"ownerTypeId": 3, "ownerId": 5, "deadline": "2026-12-01T10:00:00",
                                                     "title": "Birthday"}))
    assert isinstance(todo["result"]["id"], int)
    assert portal.call("crm.activity.todo.add", {"ownerTypeId": 3, "ownerId": 99999, "deadline": "2026-12-01T10:00:00"})[1]["error"] == "OWNER_NOT_FOUND"
    assert portal.call("crm.activity.todo.add", {"ownerTypeId": 3, "ownerId": 5, "deadline": "soon"})[1]["error"] == "WRONG_DATETIME_FORMAT"
    comment = ok(portal.call("crm.timeline.comment.add", {"fields": {"ENTITY_ID": 5, "ENTITY_TYPE": "contact", "COMMENT": "Hi"}}))
    assert isinstance(comment["result"], int)
    assert portal.call("crm.timeline.comment.add", {"fields": {"ENTITY_ID": 5, "ENTITY_TYPE": "contact", "COMMENT": ""}})[1]["error"] == "INVALID_ARG_VALUE"
    users = ok(portal.call("user.get", {"FILTER": {"ID": 1}}))
    assert users["result"][0]["ID"] == "1" and users["result"][0]["ACTIVE"] is True
    state = portal.state()
    assert any(t["TITLE"] == "Call back" for t in state["tasks"])
    assert any(a["TITLE"] == "Birthday" and a["OWNER_ID"] == 5 for a in state["activities"])
    assert any(c["COMMENT"] == "Hi" for c in state["comments"])


# -- CSV import -------------------------------------------------------------------------------

def _write_csv(folder: Path) -> None:
    with (folder / "contacts.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "phone", "email", "birthday", "responsible_id", "created_at", "loyalty tier"])
        writer.writerow([7, "Anna", "+79001234567", "anna@example.ru", "1990-02-28", "4", "2024-01-10T12:00:00+03:00", "gold"])
        writer.writerow([12, "Boris", "", "", "", "", "2024-02-01", ""])
    with (folder / "companies.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["id", "name"], [3, "Acme"]])
    with (folder / "deals.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "contact_id", "company_id", "status", "amount", "currency", "created_at", "closed_at"])
        writer.writerow([40, 7, "", "won", "1234.5", "RUB", "2024-03-01T10:00:00+03:00", "2024-03-05T23:30:00+03:00"])
        writer.writerow([41, 7, "", "lost", "10", "", "2024-04-01", "2024-04-02"])
        writer.writerow([42, 12, 3, "open", "99", "USD", "2024-05-01", ""])


def test_import_csv_keeps_ids_and_maps_fields(tmp_path: Path):
    _write_csv(tmp_path)
    with running_portal(import_csv=tmp_path, limits=False) as p:
        anna = ok(p.call("crm.contact.get", {"id": 7}))["result"]
        assert (anna["NAME"], anna["ASSIGNED_BY_ID"], anna["UF_CRM_LOYALTY_TIER"]) == ("Anna", "4", "gold")
        assert anna["PHONE"][0]["VALUE"] == "+79001234567" and anna["EMAIL"][0]["VALUE"] == "anna@example.ru"
        assert anna["BIRTHDATE"] == "1990-02-28T00:00:00+03:00" and anna["DATE_CREATE"] == "2024-01-10T12:00:00+03:00"
        boris = ok(p.call("crm.contact.get", {"id": 12}))["result"]
        assert boris["BIRTHDATE"] == "" and "PHONE" not in boris and boris["HAS_PHONE"] == "N"
        fields = ok(p.call("crm.contact.userfield.list", {}))["result"]
        assert [(f["FIELD_NAME"], f["USER_TYPE_ID"], f["EDIT_FORM_LABEL"]) for f in fields] == [
            ("UF_CRM_LOYALTY_TIER", "string", "loyalty tier")]
        deals = {d["ID"]: d for d in ok(p.call("crm.deal.list", {"select": ["*"]}))["result"]}
        assert set(deals) == {"40", "41", "42"}
        assert (deals["40"]["STAGE_ID"], deals["40"]["STAGE_SEMANTIC_ID"], deals["40"]["CLOSEDATE"][:10]) == ("WON", "S", "2024-03-05")
        assert (deals["41"]["STAGE_ID"], deals["41"]["STAGE_SEMANTIC_ID"], deals["41"]["CURRENCY_ID"]) == ("LOSE", "F", "RUB")
        assert (deals["42"]["STAGE_ID"], deals["42"]["STAGE_SEMANTIC_ID"], deals["42"]["COMPANY_ID"]) == ("NEW", "P", "3")
        assert deals["40"]["OPPORTUNITY"] == "1234.50" and deals["40"]["CONTACT_ID"] == "7"
        assert ok(p.call("crm.company.get", {"id": 3}))["result"]["TITLE"] == "Acme"
        state = p.state()
        assert [c["ID"] for c in state["contacts"]] == ["7", "12"] and state["deals"][0]["CONTACT_IDS"] == ["7"]
        assert {u["ID"] for u in state["users"]} >= {"1", "4"}
        # new records continue after the highest imported id
        assert ok(p.call("crm.contact.add", {"fields": {"NAME": "New"}}))["result"] == 13


def test_connect_proxy_only_for_oauth_hosts():
    with running_portal(generate=(1, 1), tls=True) as p:
        host, port = p.info["domain"].split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 403")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"CONNECT oauth.bitrix24.tech:443 HTTP/1.1\r\nHost: oauth.bitrix24.tech:443\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
            tls = p.ssl_context.wrap_socket(sock, server_hostname="oauth.bitrix24.tech")
            tls.sendall(b"GET /oauth/token/?grant_type=refresh_token HTTP/1.1\r\nHost: oauth.bitrix24.tech\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
            assert data.startswith(b"HTTP/1.1 400") and b"invalid_client" in data


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
    with running_portal(generate=(5, 5), limits=False) as p:
        p.reset_counters()
        p.faults(kind="slow_after", method="tasks.task.add", delay=1.5, count=1)
        thread, box = _call_in_thread(lambda: p.call("tasks.task.add", {"fields": {
            "TITLE": "Late answer", "RESPONSIBLE_ID": 1, "UF_CRM_TASK": ["C_3"]}}))
        task = _poll(lambda: next((t for t in p.state()["tasks"] if t["TITLE"] == "Late answer"), None))
        assert task is not None and thread.is_alive()  # stored, answer not yet sent
        thread.join(10)
        status, body = box["answer"]
        assert status == 200 and body["result"]["task"]["id"] == str(task["ID"])
        # the fault was count=1: the next add answers at once
        assert ok(p.call("tasks.task.add", {"fields": {"TITLE": "Prompt", "RESPONSIBLE_ID": 1}}))

        # a whole batch, selected by method "batch"
        p.faults(kind="slow_after", method="batch", delay=1.5, probability=1.0)
        cmd = {"d1": "crm.deal.add?" + "fields[TITLE]=Batch%20deal&fields[ORIGIN_ID]=k-slow&fields[ORIGINATOR_ID]=crm-lifecycle"}
        thread, box = _call_in_thread(lambda: p.call("batch", {"halt": 0, "cmd": cmd}))
        deal = _poll(lambda: next((d for d in p.state("deals")["deals"] if d.get("ORIGIN_ID") == "k-slow"), None))
        assert deal is not None and thread.is_alive()
        thread.join(10)
        status, body = box["answer"]
        assert status == 200 and str(body["result"]["result"]["d1"]) == str(deal["ID"])
        assert p.call("scope")[0] == 200  # other methods are not held
        p.clear_faults()
        counters = p.counters()
        assert counters["faults"] == {"slow_after": 2}
        assert counters["methods"]["crm.deal.add"] == 1 and counters["http_status"]["200"] == 4


# -- what the campaigns executor reads and writes ----------------------------------------------------

def test_tasks_by_bound_entity_with_select_and_paging():
    with running_portal(generate=(5, 0), limits=False) as p:
        for i in range(53):
            ok(p.call("tasks.task.add", {"fields": {"TITLE": f"Call {i}", "RESPONSIBLE_ID": 1, "DESCRIPTION": f"key-{i}",
                                                    "UF_CRM_TASK": ["C_7", "D_10"], "DEADLINE": "2026-12-31T18:00:00"}}))
        ok(p.call("tasks.task.add", {"fields": {"TITLE": "Other", "RESPONSIBLE_ID": 1, "UF_CRM_TASK": ["C_70"]}}))
        select = ["ID", "TITLE", "DESCRIPTION", "UF_CRM_TASK", "RESPONSIBLE_ID", "DEADLINE"]
        first = ok(p.call("tasks.task.list", {"filter": {"UF_CRM_TASK": "C_7"}, "select": select, "order": {"ID": "ASC"}}))
        assert first["total"] == 53 and first["next"] == 50 and len(first["result"]["tasks"]) == 50
        row = first["result"]["tasks"][0]
        assert set(row) == {"id", "title", "description", "ufCrmTask", "responsibleId", "deadline"}
        assert row["title"] == "Call 0" and row["description"] == "key-0" and row["ufCrmTask"] == ["C_7", "D_10"]
        assert row["responsibleId"] == "1" and row["deadline"].startswith("2026-12-31T18:00:00")
        second = ok(p.call("tasks.task.list", {"filter": {"UF_CRM_TASK": "C_7"}, "select": select,
                                               "order": {"ID": "ASC"}, "start": 50}))
        assert [t["title"] for t in second["result"]["tasks"]] == ["Call 50", "Call 51", "Call 52"]
        assert "next" not in second
        by_deal = ok(p.call("tasks.task.list", {"filter": {"UF_CRM_TASK": "D_10"}, "select": ["ID"]}))
        assert by_deal["total"] == 53
        assert ok(p.call("tasks.task.list", {"filter": {"UF_CRM_TASK": "C_70"}}))["total"] == 1


def test_deals_by_origin_pipelines_stages_and_users():
    with running_portal(generate=(5, 0), limits=False) as p:
        cats = ok(p.call("crm.category.list", {"entityTypeId": 2}))["result"]["categories"]
        assert {c["id"]: c["name"] for c in cats} == {0: "General", 1: "Repeat sales"}
        stages = ok(p.call("crm.status.list", {"filter": {"ENTITY_ID": "DEAL_STAGE_1"}}))["result"]
        assert [s["STATUS_ID"] for s in stages] == ["C1:NEW", "C1:PREPARATION", "C1:EXECUTING", "C1:WON", "C1:LOSE"]
        assert all(s["CATEGORY_ID"] == "1" for s in stages)
        contact = p.state("contacts")["contacts"][0]
        responsible = int(contact["ASSIGNED_BY_ID"])
        fields = {"TITLE": "Repeat offer", "ORIGINATOR_ID": "crm-lifecycle", "ORIGIN_ID": "k1", "COMMENTS": "campaign x",
                  "CATEGORY_ID": 1, "STAGE_ID": "C1:PREPARATION", "CONTACT_IDS": [contact["ID"]],
                  "ASSIGNED_BY_ID": responsible}
        d1 = ok(p.call("crm.deal.add", {"fields": fields}))["result"]
        d2 = ok(p.call("crm.deal.add", {"fields": {**fields, "ORIGIN_ID": "k2", "CATEGORY_ID": 0, "STAGE_ID": "NEW"}}))["result"]
        ok(p.call("crm.deal.add", {"fields": {**fields, "ORIGIN_ID": "k3"}}))
        ok(p.call("crm.deal.add", {"fields": {**fields, "ORIGINATOR_ID": "someone-else", "ORIGIN_ID": "k1"}}))
        select = ["ID", "ORIGIN_ID", "ORIGINATOR_ID", "CATEGORY_ID", "STAGE_ID", "CONTACT_ID", "ASSIGNED_BY_ID",
                  "COMMENTS", "TITLE"]
        rows = ok(p.call("crm.deal.list", {"filter": {"ORIGINATOR_ID": "crm-lifecycle", "@ORIGIN_ID": ["k1", "k2"]},
                                           "select": select, "order": {"ID": "ASC"}}))["result"]
        assert [r["ID"] for r in rows] == [str(d1), str(d2)]
        assert rows[0] == {"ID": str(d1), "TITLE": "Repeat offer", "CATEGORY_ID": "1", "STAGE_ID": "C1:PREPARATION",
                           "CONTACT_ID": str(contact["ID"]), "ASSIGNED_BY_ID": str(responsible), "COMMENTS": "campaign x",
                           "ORIGINATOR_ID": "crm-lifecycle", "ORIGIN_ID": "k1"}
        assert rows[1]["CATEGORY_ID"] == "0" and rows[1]["STAGE_ID"] == "NEW"
        assert ok(p.call("crm.deal.contact.items.get", {"id": d1}))["result"][0]["CONTACT_ID"] == int(contact["ID"])
        # a stage of another pipeline is refused, nothing is written
        before = len(p.state("deals")["deals"])
        status, body = p.call("crm.deal.add", {"fields": {**fields, "ORIGIN_ID": "k4", "CATEGORY_ID": 1, "STAGE_ID": "NEW"}})
        assert status == 400 and body["error"] == "ERROR_CORE"
        assert len(p.state("deals")["deals"]) == before
        # users: the admin and the seeded responsible users
        users = ok(p.call("user.get"))["result"]
        ids = {int(u["ID"]) for u in users}
        assert 1 in ids and responsible in ids
        only = ok(p.call("user.get", {"filter": {"ID": [1, responsible]}}))["result"]
        assert {int(u["ID"]) for u in only} == {1, responsible}
        for value, encoding in ((True, "json"), (True, "form"), ("Y", "json"), ("Y", "query")):
            active = ok(p.call("user.get", {"filter": {"ACTIVE": value}}, encoding=encoding))["result"]
            assert {int(u["ID"]) for u in active} == ids, (value, encoding)
        assert ok(p.call("user.get", {"filter": {"ACTIVE": False}}))["result"] == []
        assert ok(p.call("user.get", {"FILTER": {"ID": responsible}}))["result"][0]["ID"] == str(responsible)


def test_activity_list_finds_todos_by_owner_and_provider():
    with running_portal(generate=(5, 3), limits=False) as p:
        a = ok(p.call("crm.activity.todo.add", {"ownerTypeId": 3, "ownerId": 2, "deadline": "2026-12-01T10:00:00",
                                                 "title": "Call", "description": "campaign c1 key k1", "responsibleId": 1}))
        ok(p.call("crm.activity.todo.add", {"ownerTypeId": 3, "ownerId": 3, "deadline": "2026-12-02T10:00:00",
                                             "title": "Other", "description": "k2"}))
        ok(p.call("crm.activity.todo.add", {"ownerTypeId": 2, "ownerId": 2, "deadline": "2026-12-03T10:00:00",
                                             "title": "Deal todo"}))
        select = ["ID", "SUBJECT", "DESCRIPTION", "OWNER_ID", "OWNER_TYPE_ID", "PROVIDER_ID", "RESPONSIBLE_ID", "DEADLINE"]
        found = ok(p.call("crm.activity.list", {"filter": {"OWNER_TYPE_ID": 3, "OWNER_ID": 2, "PROVIDER_ID": "CRM_TODO"},
                                                 "select": select}))
        assert found["total"] == 1 and "next" not in found
        assert found["result"] == [{"ID": str(a["result"]["id"]), "SUBJECT": "Call", "DESCRIPTION": "campaign c1 key k1",
                                    "OWNER_ID": "2", "OWNER_TYPE_ID": "3", "PROVIDER_ID": "CRM_TODO",
                                    "RESPONSIBLE_ID": "1", "DEADLINE": "2026-12-01T10:00:00+03:00"}]
        assert ok(p.call("crm.activity.list", {"filter": {"TYPE_ID": 6}}))["total"] == 3
        assert ok(p.call("crm.activity.list", {"filter": {"OWNER_TYPE_ID": 2}}))["result"][0]["SUBJECT"] == "Deal todo"
        assert ok(p.call("crm.activity.list", {"filter": {"%DESCRIPTION": "key k1"}}))["total"] == 1
        every = ok(p.call("crm.activity.list", {"order": {"ID": "DESC"}}, encoding="form"))["result"]
        assert [r["SUBJECT"] for r in every] == ["Deal todo", "Other", "Call"] and every[0]["COMPLETED"] == "N"
        assert ok(p.call("crm.activity.list", {"filter": {"PROVIDER_ID": "CRM_EMAIL"}}))["total"] == 0
