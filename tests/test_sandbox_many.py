"""One sandbox process serves many independent portals / accounts (``--portals N`` / ``--accounts N``).

Portal i of the Bitrix24 sandbox lives under ``/p/{i}``, account i of the amoCRM sandbox under ``/a/{i}``;
each has its own credentials, data (``--generate`` seeds it with seed + i), limits, faults, counters and
control routes. Checked here: 50 of each in one process (also as the CLI, with its RSS), clients nobody
here wrote (fast-bitrix24, aioamocrm) against two portals of one process, isolation, and a real
``lifecycle sync`` of the product against portal 2 of a 3-portal sandbox, by its URLs only.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.request
from datetime import date

import pytest

from sandbox.amocrm import running_account, running_accounts
from sandbox.bitrix24 import running_portal, running_portals
from tests.conftest import ROOT, run_cli

TODAY = date(2026, 6, 1)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=60) as answer:
        return json.loads(answer.read())


# -- 50 in one process -----------------------------------------------------------------------------

def test_fifty_bitrix24_portals_in_one_server_each_with_its_own_seeded_data():
    with running_portals(50, generate=(40, 100), today=TODAY) as sandbox:
        info = sandbox.info
        assert len(sandbox) == 50 and [p["index"] for p in info["portals"]] == list(range(50))
        assert len({p["webhook_code"] for p in info["portals"]}) == 50
        assert len({p["client_id"] for p in info["portals"]}) == 50
        assert len({p["base_url"] for p in info["portals"]}) == 50
        amounts = set()
        for index, portal in enumerate(sandbox.portals):
            assert portal.webhook_url.startswith(f"{sandbox.base_url}/p/{index}/rest/1/")
            status, body = portal.call("crm.deal.list", {"select": ["ID", "OPPORTUNITY"], "order": {"ID": "ASC"}})
            assert status == 200 and body["total"] == 100
            amounts.add(tuple(d["OPPORTUNITY"] for d in body["result"]))
            assert portal.counters()["http_requests"] == 1  # counters are the portal's own
        assert len(amounts) == 50  # 50 different data sets
        assert _get(f"{sandbox.base_url}/_sandbox/info") == info
        # portal i is exactly what a one-portal sandbox with seed 7 + i serves
        mine = sandbox[13].call("crm.deal.list", {"select": ["ID", "OPPORTUNITY", "STAGE_ID", "CONTACT_ID", "CLOSEDATE"]})[1]
    with running_portal(generate=(40, 100), today=TODAY, seed=7 + 13) as alone:
        theirs = alone.call("crm.deal.list", {"select": ["ID", "OPPORTUNITY", "STAGE_ID", "CONTACT_ID", "CLOSEDATE"]})[1]
    assert mine["result"] == theirs["result"]


def test_fifty_amocrm_accounts_in_one_server_each_with_its_own_seeded_data():
    with running_accounts(50, generate=(40, 100), today=TODAY) as sandbox:
        info = sandbox.info
        assert len(sandbox) == 50 and [a["index"] for a in info["accounts"]] == list(range(50))
        assert len({a["access_token"] for a in info["accounts"]}) == 50
        assert len({a["account_id"] for a in info["accounts"]}) == 50
        assert len({a["subdomain"] for a in info["accounts"]}) == 50
        prices = set()
        for index, acct in enumerate(sandbox.accounts):
            assert acct.base_url == f"{sandbox.base_url}/a/{index}"
            status, body = acct.api("GET", "/api/v4/leads", params={"limit": 250})
            assert status == 200 and len(body["_embedded"]["leads"]) == 100
            assert body["_links"]["self"]["href"].startswith(f"{acct.base_url}/api/v4/leads")
            prices.add(tuple(lead["price"] for lead in body["_embedded"]["leads"]))
            assert acct.api("GET", "/api/v4/account")[1]["id"] == info["accounts"][index]["account_id"]
            assert acct.counters()["http_requests"] == 2
        assert len(prices) == 50
        assert _get(f"{sandbox.base_url}/_sandbox/info") == info
        mine = sandbox[21].api("GET", "/api/v4/leads", params={"limit": 250})[1]["_embedded"]["leads"]
    with running_account(generate=(40, 100), today=TODAY, seed=7 + 21) as alone:
        theirs = alone.api("GET", "/api/v4/leads", params={"limit": 250})[1]["_embedded"]["leads"]
    keys = ("id", "price", "status_id", "pipeline_id", "created_at", "closed_at")
    assert [{k: x[k] for k in keys} for x in mine] == [{k: x[k] for k in keys} for x in theirs]


@pytest.mark.parametrize("system,flag,key", [("bitrix24", "--portals", "portals"), ("amocrm", "--accounts", "accounts")])
def test_the_cli_serves_fifty_in_one_process_with_modest_memory(system, flag, key):
    sandbox = subprocess.Popen([sys.executable, "-m", "sandbox." + system, "--port", "0", flag, "50",
                                "--generate", "200:600", "--today", TODAY.isoformat()],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(sandbox.stdout.readline())
        rss_mb = int(next(line for line in open(f"/proc/{sandbox.pid}/status") if line.startswith("VmRSS")).split()[1]) / 1024
        entries = info[key]
        assert len(entries) == 50 and all(e["counts"]["contacts" if system == "amocrm" else "contact"] == 200 for e in entries)
        assert rss_mb < 400, f"50 x 200:600 took {rss_mb:.0f} MB"
        last = entries[49]
        if system == "bitrix24":
            assert _get(last["webhook_url"] + "crm.contact.list")["total"] == 200
        else:
            request = urllib.request.Request(last["base_url"] + "/api/v4/contacts?limit=1",
                                             headers={"Authorization": f"Bearer {last['access_token']}"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                assert json.loads(answer.read())["_embedded"]["contacts"][0]["id"] == 1
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)


@pytest.mark.parametrize("system,flag", [("bitrix24", "--portals"), ("amocrm", "--accounts")])
def test_one_portal_keeps_the_single_portal_first_line(system, flag):
    sandbox = subprocess.Popen([sys.executable, "-m", "sandbox." + system, "--port", "0", flag, "1", "--generate", "5:5"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(sandbox.stdout.readline())
        assert "portals" not in info and "accounts" not in info and "index" not in info
        assert info["base_url"].count("/") == 2  # served at the root, as without the flag
        assert "access_token" in info and "control_url" in info
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)


def test_zero_portals_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "sandbox.bitrix24", "--portals", "0"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "--portals: must be >= 1" in proc.stderr


# -- third-party clients against two portals of one process ----------------------------------------

def test_fast_bitrix24_reads_two_portals_of_one_process_with_different_data():
    fast_bitrix24 = pytest.importorskip("fast_bitrix24")
    with running_portals(3, generate=(120, 300), today=TODAY, time_scale=100) as sandbox:
        seen = []
        for portal in (sandbox[0], sandbox[2]):
            b = fast_bitrix24.Bitrix(portal.webhook_url, verbose=False)
            contacts = b.get_all("crm.contact.list", {"select": ["ID", "PHONE", "BIRTHDATE"]})
            deals = b.get_all("crm.deal.list", {"select": ["ID", "OPPORTUNITY", "CONTACT_ID"]})
            state = portal.state()
            assert sorted(int(c["ID"]) for c in contacts) == sorted(int(c["ID"]) for c in state["contacts"])
            assert {d["ID"]: d["OPPORTUNITY"] for d in deals} == {d["ID"]: d["OPPORTUNITY"] for d in state["deals"]}
            assert portal.counters()["top_level"]["batch"] >= 1  # fast-bitrix24 batched on this portal
            seen.append(({c["ID"]: c.get("BIRTHDATE") for c in contacts}, {d["ID"]: d["OPPORTUNITY"] for d in deals}))
        assert seen[0][0].keys() == seen[1][0].keys() and seen[0][0] != seen[1][0]
        assert seen[0][1] != seen[1][1]
        assert sandbox[1].counters()["http_requests"] == 0  # the portal between was never touched


def test_aioamocrm_reads_two_accounts_of_one_process_with_different_data():
    aioamocrm = pytest.importorskip("aioamocrm")

    async def pull(info):
        auth = aioamocrm.LongLivedToken(info["access_token"])
        async with aioamocrm.AmoCRMClient(auth=auth, base_url=info["base_url"]) as amo:
            leads = [lead async for lead in amo.leads.iterate(limit=100)]
            account = await amo.account.get()
            return {lead.id: lead.price for lead in leads}, account

    with running_accounts(3, generate=(60, 150), today=TODAY) as sandbox:
        first, first_account = asyncio.run(pull(sandbox[0].info))
        second, second_account = asyncio.run(pull(sandbox[2].info))
        assert len(first) == len(second) == 150 and first.keys() == second.keys() and first != second
        assert first == {x["id"]: x["price"] for x in sandbox[0].state("leads")["leads"]}
        assert second == {x["id"]: x["price"] for x in sandbox[2].state("leads")["leads"]}
        assert (first_account.subdomain, second_account.subdomain) == ("sandbox0", "sandbox2")
        assert first_account.id != second_account.id
        assert sandbox[0].counters()["by_route"]["GET /api/v4/leads"] == 2
        assert sandbox[1].counters()["http_requests"] == 0


# -- isolation ---------------------------------------------------------------------------------------

def test_bitrix24_portals_are_isolated():
    with running_portals(5, generate=(20, 40), today=TODAY, frozen_clock=True) as sandbox:
        p1, p2, p3, p4 = sandbox[1], sandbox[2], sandbox[3], sandbox[4]
        # portal 3's credentials on portal 4's paths: refused like a wrong token
        wrong_hook = f"{p4.base_url}/rest/1/{p3.info['webhook_code']}/"
        status, body = p4.call("crm.contact.list", base=wrong_hook)
        assert status == 401 and body["error"] == "NO_AUTH_FOUND"
        status, body = p4.call("crm.contact.list", auth=p3.info["access_token"])
        assert status == 401 and body["error"] == "NO_AUTH_FOUND"
        assert p3.call("crm.contact.list", auth=p3.info["access_token"])[0] == 200
        refresh = {"grant_type": "refresh_token", "client_id": p3.info["client_id"],
                   "client_secret": p3.info["client_secret"], "refresh_token": p3.info["refresh_token"]}
        status, body = p4.request("POST", p4.info["oauth_token_url"], json.dumps(refresh).encode(),
                                  {"Content-Type": "application/json"})
        assert status == 400 and body["error"] == "invalid_client"
        # the shared OAuth server (no prefix) finds portal 3 by its app and answers with portal 3's endpoints
        status, body = p4.request("POST", f"{sandbox.base_url}/oauth/token/", json.dumps(refresh).encode(),
                                  {"Content-Type": "application/json"})
        assert status == 200 and body["client_endpoint"] == f"{p3.base_url}/rest/"
        assert p3.call("crm.contact.list", auth=body["access_token"])[0] == 200
        assert p4.call("crm.contact.list", auth=body["access_token"])[0] == 401
        # a write on portal 1 is invisible on portal 2
        before = p2.call("crm.contact.get", {"id": 5})[1]["result"]["NAME"]
        assert p1.call("crm.contact.update", {"id": 5, "fields": {"NAME": "Renamed on 1"}})[0] == 200
        assert p1.call("crm.contact.get", {"id": 5})[1]["result"]["NAME"] == "Renamed on 1"
        assert p2.call("crm.contact.get", {"id": 5})[1]["result"]["NAME"] == before != "Renamed on 1"
        created = p1.call("crm.contact.add", {"fields": {"NAME": "Only on 1"}})[1]["result"]
        assert p2.call("crm.contact.get", {"id": created})[0] == 400  # not found there
        # faults are per portal
        p1.faults(kind="status", status=500, count=2)
        assert p2.call("crm.contact.list")[0] == 200
        assert [p1.call("crm.contact.list")[0] for _ in range(3)] == [500, 500, 200]
        assert p2.control("GET", "faults")["faults"] == []
        # limits are per portal: a tiny bucket on portal 1 (clock frozen) throttles it alone
        p1.limits(reset=True, bucket_size=3)
        answers = [p1.call("crm.contact.list")[0] for _ in range(5)]
        assert answers[:3] == [200, 200, 200] and answers[3:] == [503, 503]
        assert [p2.call("crm.contact.list")[0] for _ in range(5)] == [200] * 5
        assert p1.counters()["query_limit_exceeded"] == 2 and p2.counters()["query_limit_exceeded"] == 0
        # counters are per portal
        assert p3.counters()["http_requests"] == 2 and p4.counters()["http_requests"] == 3
        assert p3.counters()["oauth_requests"] == 1 and p4.counters()["oauth_requests"] == 1
        # unknown portals and paths outside every portal
        status, body = p1.request("GET", f"{sandbox.base_url}/p/5/rest/1/x/crm.contact.list")
        assert status == 404 and "/p/0 .. /p/4" in body["error_description"]
        assert p1.request("GET", f"{sandbox.base_url}/rest/1/{p1.info['webhook_code']}/crm.contact.list")[0] == 404
        assert p1.request("GET", f"{sandbox.base_url}/p/01/_sandbox/info")[0] == 404


def test_amocrm_accounts_are_isolated():
    with running_accounts(5, generate=(20, 40), today=TODAY, frozen_clock=True) as sandbox:
        a1, a2, a3, a4 = sandbox[1], sandbox[2], sandbox[3], sandbox[4]
        # account 3's tokens and OAuth app on account 4: refused like a wrong token / app
        assert a4.api("GET", "/api/v4/contacts", token=a3.access_token)[0] == 401
        assert a4.api("GET", "/api/v4/contacts", token=a3.info["oauth_access_token"])[0] == 401
        assert a3.api("GET", "/api/v4/contacts", token=a3.info["oauth_access_token"])[0] == 200
        status, body = a4.request("POST", a4.base_url + "/oauth2/access_token", json.dumps(
            {"client_id": a3.info["client_id"], "client_secret": a3.info["client_secret"],
             "redirect_uri": a3.info["redirect_uri"], "grant_type": "authorization_code",
             "code": a3.info["authorization_code"]}).encode(), {"Content-Type": "application/json"})
        assert status == 401 and body["title"] == "Некорректный клиент"
        status, tokens = a3.oauth(grant_type="authorization_code", code=a3.info["authorization_code"])
        assert status == 200 and a3.api("GET", "/api/v4/account", token=tokens["access_token"])[0] == 200
        assert a4.api("GET", "/api/v4/account", token=tokens["access_token"])[0] == 401
        # a write on account 1 is invisible on account 2
        before = a2.api("GET", "/api/v4/contacts/5")[1]["name"]
        assert a1.api("PATCH", "/api/v4/contacts/5", json={"name": "Renamed on 1"})[0] == 200
        assert a1.api("GET", "/api/v4/contacts/5")[1]["name"] == "Renamed on 1"
        assert a2.api("GET", "/api/v4/contacts/5")[1]["name"] == before != "Renamed on 1"
        # faults are per account
        a1.faults(kind="status", status=502, count=2)
        assert a2.api("GET", "/api/v4/account")[0] == 200
        assert [a1.api("GET", "/api/v4/account")[0] for _ in range(3)] == [502, 502, 200]
        # limits are per account: 2 requests a second on account 1 (clock frozen) throttle it alone
        a1.unblock()
        a1.limits(rate=2)
        answers = [a1.api("GET", "/api/v4/account")[0] for _ in range(4)]
        assert answers == [200, 200, 429, 429]
        assert [a2.api("GET", "/api/v4/account")[0] for _ in range(4)] == [200] * 4
        assert a1.counters()["too_many_requests"] == 2 and a2.counters()["too_many_requests"] == 0
        assert a3.counters()["http_requests"] == 3 and a4.counters()["unauthorized_401"] == 3
        status, body = a1.request("GET", f"{sandbox.base_url}/a/9/api/v4/account")
        assert status == 404 and "/a/0 .. /a/4" in body["detail"]
        assert a1.request("GET", f"{sandbox.base_url}/api/v4/account")[0] == 404


def test_bitrix24_portals_over_tls_share_the_ca_and_the_proxy():
    with running_portals(2, generate=(10, 20), today=TODAY, tls=True) as sandbox:
        assert sandbox.info["tls"] and sandbox.info["ca_file"] and sandbox.base_url.startswith("https://")
        for index, portal in enumerate(sandbox.portals):
            assert portal.info["ca_file"] == sandbox.info["ca_file"]
            assert portal.info["https_proxy"] == sandbox.info["https_proxy"] == "http://" + sandbox.base_url.split("://")[1]
            status, body = portal.call("crm.contact.list")
            assert status == 200 and body["total"] == 10
        plain = sandbox[1].info["webhook_url"].replace("https://", "http://")
        status, body = sandbox[1].request("POST", plain + "crm.contact.list", b"{}", {"Content-Type": "application/json"})
        assert status == 400 and body["error_description"] == "Https required."
        info = sandbox[1].info
        status, body = sandbox[1].request("POST", f"{sandbox.base_url}/oauth/token/", json.dumps(
            {"grant_type": "refresh_token", "client_id": info["client_id"], "client_secret": info["client_secret"],
             "refresh_token": info["refresh_token"]}).encode(), {"Content-Type": "application/json"})
        assert status == 200 and body["client_endpoint"] == f"{sandbox[1].base_url}/rest/"


# -- the product against portal 2 of a 3-portal sandbox ----------------------------------------------

def _sync_against_the_third(tmp_path, system: str, flag: str, key: str, env_from_info):
    sandbox = subprocess.Popen([sys.executable, "-m", "connector.cli", "sandbox", system, "--port", "0", flag, "3",
                                "--generate", "60:150"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(sandbox.stdout.readline())
        target = info[key][2]
        config = tmp_path / f"{system}.toml"
        shutil.copy(ROOT / "examples" / f"{system}.toml", config)
        proc = run_cli(["sync", "--config", str(config)], env=env_from_info(target), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "pull (full)" in proc.stdout and "write-back:" in proc.stdout
        counters = [_get(entry["control_url"] + "counters") for entry in info[key]]
        entity = "contacts"
        states = [_get(entry["control_url"] + f"state?entity={entity}")[entity] for entry in info[key]]
        return target, proc.stdout + proc.stderr, counters, states
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)


def test_lifecycle_sync_against_portal_2_of_a_three_portal_bitrix24_sandbox(tmp_path):
    target, output, counters, states = _sync_against_the_third(
        tmp_path, "bitrix24", "--portals", "portals", lambda info: {"LIFECYCLE_CRM__WEBHOOK_URL": info["webhook_url"]})
    assert target["webhook_code"] not in output
    assert counters[2]["http_requests"] > 0 and counters[0]["http_requests"] == counters[1]["http_requests"] == 0
    assert sum(1 for c in states[2] if c.get("UF_CRM_LIFECYCLE")) == 60  # every contact got its segments
    assert not any(c.get("UF_CRM_LIFECYCLE") for c in states[0] + states[1])


def test_lifecycle_sync_against_account_2_of_a_three_account_amocrm_sandbox(tmp_path):
    target, output, counters, states = _sync_against_the_third(
        tmp_path, "amocrm", "--accounts", "accounts",
        lambda info: {"LIFECYCLE_CRM__BASE_URL": info["base_url"], "LIFECYCLE_CRM__ACCESS_TOKEN": info["access_token"]})
    assert target["access_token"] not in output
    assert counters[2]["http_requests"] > 0 and counters[0]["http_requests"] == counters[1]["http_requests"] == 0
    tagged = [c for c in states[2] if (c.get("_embedded") or {}).get("tags")]
    assert len(tagged) == 60
    assert not any((c.get("_embedded") or {}).get("tags") for c in states[0] + states[1])
