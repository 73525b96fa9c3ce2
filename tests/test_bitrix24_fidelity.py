"""Clients nobody here wrote must work against the Bitrix24 sandbox unchanged: fast-bitrix24 and b24pysdk.

b24pysdk builds ``https://{domain}/rest/...``, so it runs against ``--tls`` with ``REQUESTS_CA_BUNDLE``
pointing at the sandbox CA, and refreshes OAuth tokens at its hard-coded ``oauth.bitrix24.tech`` through
``HTTPS_PROXY`` = the sandbox (which answers CONNECT for the OAuth hosts locally). No SDK code is patched.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
import urllib.request
from datetime import datetime, timedelta

import pytest

from sandbox.bitrix24 import running_portal

fast_bitrix24 = pytest.importorskip("fast_bitrix24")
b24pysdk = pytest.importorskip("b24pysdk")

import aiohttp  # noqa: E402  (fast-bitrix24 depends on aiohttp)
from aiohttp import ClientResponseError  # noqa: E402
from fast_bitrix24 import Bitrix, BitrixAsync  # noqa: E402
from fast_bitrix24.server_response import ErrorInServerResponseException  # noqa: E402

CONTACTS, DEALS = 260, 700


def _state_ids(portal, table: str) -> list[int]:
    return sorted(int(r["ID"]) for r in portal.state(table)[table])


# -- fast-bitrix24 ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fb_portal():
    with running_portal(generate=(CONTACTS, DEALS), time_scale=100) as portal:
        yield portal


def test_fast_bitrix24_get_all_and_get_by_id(fb_portal):
    b = Bitrix(fb_portal.webhook_url, verbose=False)
    fb_portal.reset_counters()
    contacts = b.get_all("crm.contact.list", {"select": ["ID", "NAME", "PHONE", "UF_*"]})
    assert sorted(int(c["ID"]) for c in contacts) == _state_ids(fb_portal, "contacts")
    assert all(isinstance(c["ID"], str) for c in contacts) and any("PHONE" in c for c in contacts)
    counters = fb_portal.counters()
    assert counters["top_level"] == {"crm.contact.list": 1, "batch": 1}  # first page, then one batch of offsets
    won = b.get_all("crm.deal.list", {"filter": {"STAGE_SEMANTIC_ID": "S"}, "select": ["ID", "CONTACT_ID", "CLOSEDATE"]})
    expected = [d for d in fb_portal.state("deals")["deals"] if d["STAGE_SEMANTIC_ID"] == "S"]
    assert len(won) == len(expected) and {d["ID"] for d in won} == {d["ID"] for d in expected}
    bindings = b.get_by_ID("crm.deal.contact.items.get", [1, 2, 3])
    assert set(bindings) == {"1", "2", "3"}
    assert all(item[0]["IS_PRIMARY"] == "Y" and isinstance(item[0]["CONTACT_ID"], int) for item in bindings.values() if item)
    single = b.get_by_ID("crm.contact.get", [5])  # fast-bitrix24 unwraps a single id
    assert single["ID"] == "5"


def test_fast_bitrix24_call_raw_and_batch(fb_portal):
    b = Bitrix(fb_portal.webhook_url, verbose=False)
    created = b.call("crm.contact.add", [{"fields": {"NAME": "FB one"}},
                                         {"fields": {"NAME": "FB two", "EMAIL": [{"VALUE": "two@example.ru", "VALUE_TYPE": "WORK"}]}}])
    assert isinstance(created, tuple) and all(isinstance(i, int) for i in created)
    assert b.call("crm.contact.update", {"id": created[0], "fields": {"LAST_NAME": "Updated"}}) is True
    raw = b.call("crm.contact.list", {"filter": {"@ID": list(created)}, "select": ["ID", "LAST_NAME", "EMAIL"]}, raw=True)
    assert raw["total"] == 2 and "operating" in raw["time"]
    assert raw["result"][0]["LAST_NAME"] == "Updated" and raw["result"][1]["EMAIL"][0]["VALUE"] == "two@example.ru"
    chained = b.call_batch({"halt": 0, "cmd": {
        "c": f"crm.contact.get?id={created[1]}",
        "same": "crm.contact.list?filter[ID]=$result[c][ID]&select[]=ID&select[]=NAME",
    }})
    assert chained["same"] == [{"ID": str(created[1]), "NAME": "FB two"}]
    with pytest.raises(ErrorInServerResponseException):
        b.call_batch({"halt": 0, "cmd": {"ok": "crm.contact.get?id=1", "bad": "crm.contact.get?id=999999"}})
    uf = b.call("crm.contact.userfield.add", {"fields": {"FIELD_NAME": "FB_SEGMENT", "USER_TYPE_ID": "enumeration",
                                                          "LIST": [{"VALUE": "A"}, {"VALUE": "B"}]}})
    option = b.get_all("crm.contact.userfield.list", {"filter": {"ID": uf}})[0]["LIST"][1]["ID"]
    assert b.call("crm.contact.update", {"id": created[0], "fields": {"UF_CRM_FB_SEGMENT": option}}) is True
    assert b.get_by_ID("crm.contact.get", [created[0]])["UF_CRM_FB_SEGMENT"] == option


def test_fast_bitrix24_retries_5xx_and_resets(fb_portal):
    b = Bitrix(fb_portal.webhook_url, verbose=False)
    fb_portal.reset_counters()
    fb_portal.faults(kind="status", status=503, count=1)
    fb_portal.faults(kind="reset", count=1)
    fb_portal.faults(kind="status", status=502, count=1)
    assert b.call("crm.contact.get", {"id": 3}, raw=True)["result"]["ID"] == "3"
    counters = fb_portal.counters()
    assert counters["faults"] == {"status": 2, "reset": 1} and counters["http_requests"] == 4


def test_fast_bitrix24_oauth_token_func_refreshes():
    with running_portal(generate=(60, 60), time_scale=100) as portal:
        info = portal.info
        tokens = {"access": info["access_token"], "refresh": info["refresh_token"], "calls": 0}

        async def token_func() -> str:
            tokens["calls"] += 1
            if tokens["calls"] == 1:
                return tokens["access"]
            query = urllib.parse.urlencode({"grant_type": "refresh_token", "client_id": info["client_id"],
                                            "client_secret": info["client_secret"], "refresh_token": tokens["refresh"]})
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(None, lambda: urllib.request.urlopen(info["oauth_token_url"] + "?" + query).read())
            fresh = json.loads(raw)
            tokens.update(access=fresh["access_token"], refresh=fresh["refresh_token"])
            return fresh["access_token"]

        b = Bitrix(info["client_endpoint"], token_func=token_func, verbose=False)
        assert len(b.get_all("crm.contact.list", {"select": ["ID"]})) == 60
        portal.expire_tokens()
        assert len(b.get_all("crm.deal.list", {"select": ["ID"]})) == 60
        assert tokens["calls"] == 2 and portal.counters()["oauth_refreshes"] == 1
        assert portal.counters()["http_status"]["401"] == 1


def test_fast_bitrix24_over_tls_and_429_surfaces():
    with running_portal(generate=(80, 10), tls=True, frozen_clock=True, operating_limit=0.05) as portal:
        context = ssl.create_default_context(cafile=portal.ca_file)

        async def scenario() -> int:
            # fast-bitrix24's own ssl flag is a bool; a caller-provided session carries the CA instead
            async with aiohttp.ClientSession(raise_for_status=True, connector=aiohttp.TCPConnector(ssl=context)) as session:
                b = BitrixAsync(portal.webhook_url, verbose=False, client=session)
                assert len(await b.get_all("crm.contact.list", {"select": ["ID"]})) == 80
                with pytest.raises(ClientResponseError) as caught:
                    for _ in range(20):
                        await b.call("crm.contact.list", {"select": ["ID"]}, raw=True)
                return caught.value.status

        assert asyncio.run(scenario()) == 429  # fast-bitrix24 does not retry OPERATION_TIME_LIMIT
        assert portal.counters()["operation_time_limit"] >= 1


# -- b24pysdk -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_portal():
    with running_portal(generate=(CONTACTS, DEALS), time_scale=100, tls=True) as portal:
        yield portal


@pytest.fixture
def sdk(tls_portal, monkeypatch):
    from b24pysdk import Config

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_portal.ca_file)
    config = Config()
    saved = (config.default_initial_retry_delay, config.default_retry_delay_increment)
    config.configure(default_initial_retry_delay=0.01, default_retry_delay_increment=0)
    yield tls_portal
    config.configure(default_initial_retry_delay=saved[0], default_retry_delay_increment=saved[1])


def _webhook_client(portal):
    from b24pysdk import BitrixWebhook, Client

    return Client(BitrixWebhook(domain=portal.info["domain"], webhook_token=f"1/{portal.info['webhook_code']}"))


def test_b24pysdk_lists_as_list_and_as_list_fast(sdk):
    client = _webhook_client(sdk)
    first = client.crm.contact.list(select=["ID", "NAME", "PHONE"])
    assert len(first.result) == 50 and first.response.total == CONTACTS and first.response.next == 50
    assert len(list(client.crm.contact.list(select=["ID"]).as_list().result)) == CONTACTS
    sdk.reset_counters()
    fast = list(client.crm.contact.list(select=["ID", "NAME"]).as_list_fast().result)
    assert [int(c["ID"]) for c in fast] == _state_ids(sdk, "contacts")
    counters = sdk.counters()
    assert counters["http_requests"] == 2 and counters["top_level"] == {"crm.contact.list": 1, "batch": 1}
    assert counters["methods"]["crm.contact.list"] == 51  # first page + 50 chained commands in one batch
    sites = list(client.crm.contact.list(select=["ID"], filter={"UF_CRM_SOURCE": "site"}).as_list_fast().result)
    expected = [int(c["ID"]) for c in sdk.state("contacts")["contacts"] if c["UF_CRM_SOURCE"] == "site"]
    assert sorted(int(c["ID"]) for c in sites) == sorted(expected)
    deal = client.crm.deal.get(bitrix_id=5).result
    assert deal["ID"] == "5" and deal["STAGE_ID"] in ("WON", "LOSE", "NEW")


def test_b24pysdk_writes_batch_todo_comment_task(sdk):
    client = _webhook_client(sdk)
    new_id = client.crm.contact.add(fields={"NAME": "SDK", "PHONE": [{"VALUE": "+7000", "VALUE_TYPE": "WORK"}]}).result
    assert isinstance(new_id, int)
    assert client.crm.contact.update(bitrix_id=new_id, fields={"LAST_NAME": "Made"}).result is True
    batch = client.call_batch({
        "get": client.crm.contact.get(bitrix_id=new_id),
        "deals": client.crm.deal.list(select=["ID"], filter={"<ID": 3}),
    }).result
    assert batch.result["get"]["LAST_NAME"] == "Made" and len(batch.result["deals"]) == 2
    # b24pysdk 1.3.2's typed crm.activity.todo.add insists on a datetime it then cannot JSON-encode (SDK bug),
    # so the to-do goes through the SDK's generic call_method with the documented ISO string
    deadline = (datetime.now() + timedelta(days=1)).isoformat(timespec="seconds")
    todo = client.get_token().call_method(api_method="crm.activity.todo.add", params={
        "ownerTypeId": 3, "ownerId": new_id, "deadline": deadline, "title": "Birthday call"})["result"]
    assert isinstance(todo["id"], int)
    assert todo
    comment = client.crm.timeline.comment.add(fields={"ENTITY_ID": new_id, "ENTITY_TYPE": "contact", "COMMENT": "Hi"}).result
    assert isinstance(comment, int)
    task = client.tasks.task.add(fields={"TITLE": "Follow up", "RESPONSIBLE_ID": 1, "UF_CRM_TASK": [f"C_{new_id}"]}).result
    assert task["task"]["title"] == "Follow up"
    state = sdk.state()
    assert any(a["OWNER_ID"] == new_id and a["TITLE"] == "Birthday call" for a in state["activities"])
    assert any(t["UF_CRM_TASK"] == [f"C_{new_id}"] for t in state["tasks"])


def test_b24pysdk_error_mapping_and_503_retry(sdk):
    from b24pysdk import BitrixWebhook, Client
    from b24pysdk.errors import BitrixAPIBadRequest
    from b24pysdk.errors.oauth import BitrixOAuthNoAuthFound

    client = _webhook_client(sdk)
    with pytest.raises(BitrixAPIBadRequest) as caught:
        client.crm.contact.get(bitrix_id=999999).result
    assert (caught.value.error, caught.value.error_description) == ("", "Not found")
    wrong = Client(BitrixWebhook(domain=sdk.info["domain"], webhook_token="1/wrongwrongwrong1"))
    with pytest.raises(BitrixOAuthNoAuthFound):
        wrong.crm.contact.get(bitrix_id=1).result
    sdk.reset_counters()
    sdk.faults(kind="status", status=503, count=1)
    assert client.crm.contact.get(bitrix_id=2).result["ID"] == "2"  # b24pysdk retries 503 only
    assert sdk.counters()["http_status"] == {"503": 1, "200": 1}


def test_b24pysdk_operation_time_limit(monkeypatch):
    from b24pysdk.errors import BitrixAPIOperationTimeLimit

    with running_portal(generate=(30, 10), tls=True, frozen_clock=True, operating_limit=0.03) as portal:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", portal.ca_file)
        client = _webhook_client(portal)
        with pytest.raises(BitrixAPIOperationTimeLimit):
            for _ in range(20):
                client.crm.contact.list(select=["ID"]).result


def test_b24pysdk_oauth_refresh_through_the_sandbox(monkeypatch):
    from b24pysdk import BitrixApp, BitrixToken, Client

    with running_portal(generate=(20, 20), tls=True, time_scale=100) as portal:
        info = portal.info
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", portal.ca_file)
        for name in ("HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(name, info["https_proxy"])
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        token = BitrixToken(domain=info["domain"], auth_token=info["access_token"], refresh_token=info["refresh_token"],
                            bitrix_app=BitrixApp(client_id=info["client_id"], client_secret=info["client_secret"]))
        client = Client(token)
        assert client.crm.contact.get(bitrix_id=1).result["ID"] == "1"
        portal.expire_tokens()
        assert client.crm.contact.get(bitrix_id=2).result["ID"] == "2"  # 401 expired_token -> refresh -> retry
        assert token.auth_token != info["access_token"] and token.refresh_token != info["refresh_token"]
        assert portal.counters()["oauth_refreshes"] == 1
        stale = urllib.parse.urlencode({"grant_type": "refresh_token", "client_id": info["client_id"],
                                        "client_secret": info["client_secret"], "refresh_token": info["refresh_token"]})
        assert portal.request("GET", info["oauth_token_url"] + "?" + stale)[1]["error"] == "invalid_grant"


# -- product rows and the catalogue (wave2-crm-apis.md §1.1) -----------------------------------------------

def _rows_of(portal, owners) -> list[int]:
    return sorted(r["id"] for r in portal.state("product_rows")["product_rows"] if r["ownerId"] in owners)


def test_fast_bitrix24_reads_product_rows_and_the_catalogue(fb_portal):
    b = Bitrix(fb_portal.webhook_url, verbose=False)
    owners = sorted({r["ownerId"] for r in fb_portal.state("product_rows")["product_rows"]})[:60]
    expected = _rows_of(fb_portal, owners)
    assert len(expected) > 50
    small = owners[:12]
    assert len(_rows_of(fb_portal, small)) <= 50
    fb_portal.reset_counters()
    rows = b.get_all("crm.item.productrow.list", {"filter": {"=ownerType": "D", "=ownerId": small}})
    assert sorted(r["id"] for r in rows) == _rows_of(fb_portal, small)
    assert all(isinstance(r["price"], (int, float)) for r in rows)
    assert fb_portal.counters()["top_level"] == {"crm.item.productrow.list": 1}
    # More than one page: get_all sends the later pages in a batch whose command strings fast-bitrix24
    # 1.8.14 builds as "filter[%3DownerType]=D&filter[=ownerId][0]=1": the "=" inside the nested key is not
    # encoded, so PHP's parse_str (and the sandbox) split "filter[=ownerId][0]=1" at that "=", the array
    # is lost and the command fails. An adapter must build such batch commands itself (below).
    with pytest.raises(ErrorInServerResponseException) as caught:
        b.get_all("crm.item.productrow.list", {"filter": {"=ownerType": "D", "=ownerId": owners}})
    assert "REQUIRED_ARG_MISSING" in str(caught.value)
    # the recommended pull: about 20 deals a command, many commands in one batch
    chunks = [owners[i:i + 20] for i in range(0, len(owners), 20)]
    answer = b.call_batch({"halt": 0, "cmd": {
        f"c{i}": "crm.item.productrow.list?" + urllib.parse.urlencode(
            [("filter[=ownerType]", "D"), *((f"filter[=ownerId][{k}]", v) for k, v in enumerate(chunk)),
             ("order[id]", "asc")])
        for i, chunk in enumerate(chunks)}})
    for i, chunk in enumerate(chunks):
        got = answer[f"c{i}"]
        got = got["productRows"] if isinstance(got, dict) else got
        assert [r["id"] for r in got] == _rows_of(fb_portal, chunk)[:50]
    legacy = b.get_by_ID("crm.deal.productrows.get", owners[:3])
    assert {int(k) for k in legacy} == set(owners[:3]) and all(v[0]["OWNER_TYPE"] == "D" for v in legacy.values())
    products = b.get_all("catalog.product.list", {"select": ["id", "iblockId", "name", "iblockSectionId"],
                                                  "filter": {"iblockId": 25}})
    sections = {s["id"]: s["name"] for s in b.get_all("catalog.section.list", {"filter": {"iblockId": 25}})}
    names = {p["id"]: p["name"] for p in products}
    assert {r["productId"] for r in rows} <= set(names) and {sections[p["iblockSectionId"]] for p in products}


def test_b24pysdk_lists_product_rows_as_list_and_as_list_fast(sdk):
    client = _webhook_client(sdk)
    owners = sorted({r["ownerId"] for r in sdk.state("product_rows")["product_rows"]})[:60]
    expected = _rows_of(sdk, owners)
    request = client.crm.item.productrow.list(filter={"=ownerType": "D", "=ownerId": owners})
    first = request.response
    assert first.total == len(expected) and first.next == 50 and len(first.result["productRows"]) == 50
    assert sorted(r["id"] for r in client.crm.item.productrow.list(
        filter={"=ownerType": "D", "=ownerId": owners}).as_list().result) == expected
    sdk.reset_counters()
    fast = [r["id"] for r in client.crm.item.productrow.list(
        filter={"=ownerType": "D", "=ownerId": owners}).as_list_fast(descending=True).result]
    assert fast == sorted(expected, reverse=True)  # the docs' own as_list_fast example, no duplicates
    assert sdk.counters()["top_level"] == {"crm.item.productrow.list": 1, "batch": 1}
    products = client.catalog.product.list(select=["id", "iblockId", "name"], filter={"iblockId": 25}).result
    assert {p["name"] for p in products["products"]} >= {"Картридж для фильтра воды", "Кофе в зёрнах, 1 кг"}


def test_fast_bitrix24_adds_and_lists_task_comments(fb_portal):
    """task.commentitem.add / .getlist (rest_help/tasks/task/commentitem/*), which close_on_exit reads before
    adding its comment, as fast-bitrix24 sends them."""
    b = Bitrix(fb_portal.webhook_url, verbose=False)
    task = b.call("tasks.task.add", {"fields": {"TITLE": "FB comments", "RESPONSIBLE_ID": 1}})
    task_id = int(task["id"])  # fast-bitrix24 unwraps the documented {"task": {...}}
    first = b.call("task.commentitem.add", {"TASKID": task_id, "FIELDS": {"POST_MESSAGE": "first"}})
    second = b.call("task.commentitem.add", {"TASKID": task_id, "FIELDS": {"POST_MESSAGE": "second"}})
    assert isinstance(first, int) and second > first
    listed = b.call("task.commentitem.getlist", {"TASKID": task_id, "ORDER": {"ID": "asc"}}, raw=True)["result"]
    assert [c["POST_MESSAGE"] for c in listed] == ["first", "second"] and all(isinstance(c["ID"], str) for c in listed)
    newest_first = b.call("task.commentitem.getlist", {"TASKID": task_id}, raw=True)["result"]
    assert [c["POST_MESSAGE"] for c in newest_first] == ["second", "first"]  # the documented default: ID desc
    with pytest.raises(ErrorInServerResponseException):
        b.call("task.commentitem.add", {"TASKID": task_id, "FIELDS": {"POST_MESSAGE": "  "}})
