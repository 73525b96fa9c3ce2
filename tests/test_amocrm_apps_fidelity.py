"""The amoCRM sandbox as the account side of an integration, checked with code nobody here wrote.

* aioamocrm (PyPI) exchanges the redirect's code (``exchange_code``), drives ``/api/v4/webhooks`` through its
  generic ``request`` and parses the webhooks the sandbox sends (``parse_webhook``).
* PyJWT decodes the widget's one-time token with the integration secret.
* The docs' own examples (amocrm.ru/developers, crm_platform/webhooks-api.md) are quoted where a shape is
  compared.

What the sandbox sends goes to a loopback receiver (tests/receiver.py). Retries run on the account clock:
the clock is frozen and pushed forward, nothing waits for minutes.
"""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from connector.apps.verify import parse_amocrm_webhook, parse_oauth_redirect, verify_disconnect, verify_widget_token
from sandbox.amocrm import running_account
from tests.receiver import receiving

aioamocrm = pytest.importorskip("aioamocrm")


@pytest.fixture
def rx():
    with receiving() as receiver:
        yield receiver


@pytest.fixture
def acct():
    with running_account(generate=(40, 80), limits=False, frozen_clock=True) as handle:
        yield handle


def run(coro):
    return asyncio.run(coro)


def _client(acct, token: str | None = None):
    auth = aioamocrm.LongLivedToken(token or acct.info["access_token"])
    return aioamocrm.AmoCRMClient(auth=auth, base_url=acct.info["base_url"], rate_limit=None)


def _subscribe(acct, destination: str, settings: list[str]) -> dict:
    async def go():
        async with _client(acct) as amo:
            return await amo.request("POST", "webhooks", json={"destination": destination, "settings": settings})
    return run(go())


def test_oauth_redirect_and_code_exchange_with_aioamocrm(acct, rx):
    answer = acct.redirect(rx.url + "/apps/amocrm/oauth", state="install-42")
    request = rx.wait_for(1)[0]
    assert request["verb"] == "GET" and request["path"] == "/apps/amocrm/oauth" and answer["status"] == 200
    # oauth/step-by-step.md: "GET-параметрами code, referer, state, from_widget, platform"
    assert set(request["query"]) == {"code", "referer", "state", "platform"}
    assert request["query"]["referer"] == "sandbox.amocrm.ru" and request["query"]["state"] == "install-42"
    redirect = parse_oauth_redirect(request["query"])
    assert redirect.referer == "sandbox.amocrm.ru" and not redirect.from_widget

    async def exchange(code: str):
        storage = aioamocrm.MemoryTokenStorage()
        auth = aioamocrm.OAuth2(acct.info["client_id"], acct.info["client_secret"], rx.url + "/apps/amocrm/oauth",
                                storage=storage)
        async with aioamocrm.AmoCRMClient(auth=auth, base_url=acct.info["base_url"], rate_limit=None) as amo:
            tokens = await amo.exchange_code(code)
            account = await amo.request("GET", "account")
            return tokens, account

    tokens, account = run(exchange(redirect.code))
    assert tokens.refresh_token and account["id"] == acct.info["account_id"]
    with pytest.raises(aioamocrm.AuthError):  # a code is exchanged once
        run(exchange(redirect.code))
    # after a widget install amoCRM itself calls the redirect URI, with from_widget
    acct.redirect(None, from_widget=True)
    widget = rx.wait_for(2)[1]
    assert widget["query"]["from_widget"] == "1" and widget["headers"]["user-agent"] == "amoService-oAuth-Code-Sender/1.0"
    assert parse_oauth_redirect(widget["query"]).from_widget
    # "Отказать": error=access_denied and the state
    acct.redirect(None, error="access_denied", state="s")
    declined = rx.wait_for(3)[2]["query"]
    assert declined == {"error": "access_denied", "client_id": acct.info["client_id"], "state": "s"}


def test_webhooks_api_as_documented(acct):
    async def go():
        async with _client(acct) as amo:
            # the docs' request: {"destination": "https://example.test", "settings": ["add_lead"], "sort": 10}
            created = await amo.request("POST", "webhooks", json={"destination": "https://example.test",
                                                                    "settings": ["add_lead"], "sort": 10})
            updated = await amo.request("POST", "webhooks", json={"destination": "https://example.test",
                                                                    "settings": ["add_lead", "update_contact"]})
            other = await amo.request("POST", "webhooks", json={"destination": "https://other.test/hook",
                                                                  "settings": ["delete_contact"], "sort": 1})
            listed = await amo.request("GET", "webhooks")
            one = await amo.request("GET", "webhooks", params={"filter": {"destination": "https://other.test/hook"}})
            gone = await amo.request("DELETE", "webhooks", json={"destination": "https://example.test"})
            with pytest.raises(aioamocrm.NotFoundError):
                await amo.request("DELETE", "webhooks", json={"destination": "https://example.test"})
            with pytest.raises(aioamocrm.AmoCRMError) as bad:
                await amo.request("POST", "webhooks", json={"destination": "not a url", "settings": ["add_lead"]})
            with pytest.raises(aioamocrm.AmoCRMError) as unknown:
                await amo.request("POST", "webhooks", json={"destination": "https://x.test", "settings": ["fly_lead"]})
            return created, updated, other, listed, one, gone, bad.value, unknown.value
    created, updated, other, listed, one, gone, bad, unknown = run(go())
    # the docs' answer: id, destination, created_at, updated_at, account_id, created_by, sort, disabled, settings
    assert set(created) == {"id", "destination", "created_at", "updated_at", "account_id", "created_by", "sort",
                            "disabled", "settings"}
    assert created["settings"] == ["add_lead"] and created["sort"] == 10 and created["disabled"] is False
    assert updated["id"] == created["id"] and updated["settings"] == ["add_lead", "update_contact"]  # same destination
    assert listed["_total_items"] == 2 and [h["id"] for h in listed["_embedded"]["webhooks"]] == [other["id"], created["id"]]
    assert [h["destination"] for h in one["_embedded"]["webhooks"]] == ["https://other.test/hook"]
    assert gone is None  # 204
    assert bad.status_code == 400 and unknown.status_code == 400


def test_webhooks_are_sent_as_amocrm_sends_them(acct, rx):
    _subscribe(acct, rx.url + "/hook", ["add_contact", "update_contact", "delete_contact", "update_company", "status_lead"])

    async def changes():
        async with _client(acct) as amo:
            company = await amo.request("POST", "companies", json=[{"name": "ООО"}])  # add_company: not subscribed
            added = await amo.request("POST", "contacts", json=[{"name": "Новый клиент"}])
            await amo.request("PATCH", "contacts/3", json={"name": "Изменён"})
            company_id = company["_embedded"]["companies"][0]["id"]
            await amo.request("PATCH", f"companies/{company_id}", json={"name": "ООО Ромашка"})
            await amo.request("PATCH", "leads/4", json={"status_id": 142})  # lead 4 is in a working stage
            return added["_embedded"]["contacts"][0]["id"], company_id

    new_id, company_id = run(changes())
    acct.delete("contacts", 4)  # a user deletes it in the UI
    deliveries = acct.webhook_deliveries()["deliveries"]
    got = rx.wait_for(5)
    assert [d["status"] for d in deliveries] == [200] * 5 and len(got) == 5
    parsed = [aioamocrm.parse_webhook(r["raw"]) for r in got]
    assert [(e.entity, e.action, int(e.payload["id"])) for p in parsed for e in p.events] == [
        ("contacts", "add", new_id), ("contacts", "update", 3), ("contacts", "update", company_id), ("leads", "status", 4),
        ("contacts", "delete", 4)]
    # webhooks-format.md: companies also arrive under "contacts", told apart by type
    assert [p.events[0].payload["type"] for p in parsed if p.events[0].entity == "contacts"] == [
        "contact", "contact", "company", "contact"]
    assert parsed[3].events[0].payload["status_id"] == "142"
    assert parsed[4].events[0].payload == {"id": "4", "type": "contact"}  # a deletion carries the id only
    for p, request in zip(parsed, got):
        assert p.subdomain == "sandbox" and p.account_id == acct.info["account_id"]
        assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
        assert request["headers"]["user-agent"] == "amoCRM-WebHook-client/1.0"
        assert all(isinstance(v, str) for v in request["form"].values())
    assert "contacts[update][0][id]" in got[1]["form"]
    ours = [parse_amocrm_webhook(r["form"]) for r in got]
    assert [(c.entity, c.action, c.id) for w in ours for c in w.changes] == [
        ("contact", "add", new_id), ("contact", "update", 3), ("company", "update", company_id), ("lead", "status", 4),
        ("contact", "delete", 4)]


def _attempts(acct) -> list[tuple[int, int | None]]:
    return [(d["attempt"], d["status"]) for d in acct.webhook_deliveries()["deliveries"]]


def test_failed_webhooks_are_retried_after_5_15_15_60_minutes(acct, rx):
    _subscribe(acct, rx.url + "/hook", ["update_contact"])
    rx.answer = (503, "down", {})
    run(_patch(acct, 3))
    assert _attempts(acct) == [(1, 503)]
    acct.advance(299)
    assert _attempts(acct) == [(1, 503)]  # not before 5 minutes
    for seconds, expected in ((1, 2), (900, 3), (900, 4), (3600, 5)):
        acct.advance(seconds)
        assert _attempts(acct)[-1] == (expected, 503)
    acct.advance(86400)
    assert len(_attempts(acct)) == 5 and acct.webhook_deliveries()["queued"] == []
    assert len(rx.requests) == 5
    # a 404 is not a 5xx: only the 2nd and 3rd attempts follow it (webhooks-general's table)
    rx.answer = (404, "gone", {})
    run(_patch(acct, 4))
    # each attempt is awaited before the clock moves on (a delivery may still be on its way when advance()
    # returns; on a loaded machine the next advance then overtook it and its retry was scheduled too late)
    for seconds, total in ((0, 6), (300, 7), (900, 8), (900, 8), (3600, 8), (86400, 8)):
        if seconds:
            acct.advance(seconds)
        deadline = time.monotonic() + 10
        while len(_attempts(acct)) < total and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _attempts(acct)[5:] == [(1, 404), (2, 404), (3, 404)]


def test_a_handler_slower_than_2_seconds_counts_as_failed(acct, rx):
    _subscribe(acct, rx.url + "/hook", ["update_contact"])
    rx.delay = 2.4
    run(_patch(acct, 5))
    first = acct.webhook_deliveries()["deliveries"]
    assert [(d["attempt"], d["status"], d["error"]) for d in first] == [(1, None, "timeout")]
    rx.delay = 0
    acct.advance(300)
    assert _attempts(acct) == [(1, None), (2, 200)]
    acct.advance(3600)
    assert len(_attempts(acct)) == 2  # delivered: nothing more


def test_a_hook_failing_more_than_100_times_in_2_hours_is_switched_off(acct, rx):
    _subscribe(acct, rx.url + "/hook", ["update_contact"])
    rx.answer = (500, "broken", {})

    async def patch_many(ids):
        async with _client(acct) as amo:
            for rid in ids:
                await amo.request("PATCH", f"contacts/{rid}", json={"name": f"n{rid}"})

    run(patch_many(range(1, 41)))
    run(patch_many(range(1, 41)))
    run(patch_many(range(1, 21)))
    assert len(acct.webhook_deliveries()["deliveries"]) == 100

    async def hooks():
        async with _client(acct) as amo:
            return (await amo.request("GET", "webhooks"))["_embedded"]["webhooks"][0]["disabled"]

    assert run(hooks()) is False  # 100 failures: still on
    run(patch_many([21]))
    state = acct.webhook_deliveries()
    assert state["deliveries"][-1].get("disabled_hook") is True and state["queued"] == []
    assert run(hooks()) is True
    rx.answer = (200, "OK", {})
    run(patch_many([22]))
    acct.advance(7200)
    assert len(acct.webhook_deliveries()["deliveries"]) == 101  # switched off: nothing more is sent


async def _patch(acct, rid: int) -> None:
    async with _client(acct) as amo:
        await amo.request("PATCH", f"contacts/{rid}", json={"name": f"changed {rid}"})


def test_disconnect_hook_is_signed_and_tokens_stop_working(acct, rx):
    status, tokens = acct.oauth(grant_type="authorization_code", code=acct.new_code())
    assert status == 200
    answer = acct.disconnect(rx.url + "/apps/amocrm/disconnect")
    request = rx.wait_for(1)[0]
    assert request["verb"] == "GET" and request["headers"]["user-agent"] == "amoService-oAuth-Code-Sender/1.0"
    assert set(request["query"]) == {"client_uuid", "account_id", "signature"} and answer["status"] == 200
    assert verify_disconnect(request["query"], client_id=acct.info["client_id"],
                             secret=acct.info["client_secret"]) == acct.info["account_id"]
    status, _ = acct.api("GET", "/api/v4/account", token=tokens["access_token"])
    assert status == 401
    assert acct.oauth(grant_type="refresh_token", refresh_token=tokens["refresh_token"])[0] == 401


def test_widget_token_is_hs256_with_the_integration_secret(acct, rx):
    acct.redirect(rx.url + "/apps/amocrm/oauth", send=False)  # the integration's redirect URI sets the audience
    issued = acct.widget_token(user_id=7)
    claims = jwt.decode(issued["token"], acct.info["client_secret"], algorithms=["HS256"], audience=rx.url)
    # oauth/disposable-tokens.md: iss, aud, jti, iat, nbf, exp, account_id, user_id, client_uuid (+ subdomain)
    assert set(claims) == {"iss", "aud", "jti", "iat", "nbf", "exp", "account_id", "user_id", "subdomain", "client_uuid"}
    assert claims["iss"] == "https://sandbox.amocrm.ru" and claims["account_id"] == acct.info["account_id"]
    assert claims["exp"] - claims["iat"] == 1800 and claims["user_id"] == 7
    assert claims["client_uuid"] == acct.info["client_id"]
    checked = verify_widget_token(issued["token"], secret=acct.info["client_secret"], account_id=acct.info["account_id"],
                                  client_id=acct.info["client_id"], audience=rx.url)
    assert checked.user_id == 7
    sent = acct.control("POST", "widget/request", {"url": rx.url + "/apps/amocrm/widget/session", "method": "POST"})
    request = rx.wait_for(1)[0]
    assert sent["status"] == 200 and request["headers"]["origin"] == "https://sandbox.amocrm.ru"
    assert jwt.decode(request["headers"]["x-auth-token"], acct.info["client_secret"], algorithms=["HS256"],
                      audience=rx.url)["account_id"] == acct.info["account_id"]


def test_retry_table_by_the_previous_answer():
    from sandbox.amocrm.hooks import RETRY_DELAYS, retry_allowed

    assert RETRY_DELAYS == {2: 300.0, 3: 900.0, 4: 900.0, 5: 3600.0}  # 5 min, 15 min, 15 min, 1 h
    for code in (0, 99, 300, 404, 499, 500, 503, 599, 600):
        assert retry_allowed(2, code) and retry_allowed(3, code), code
    for code, later in ((0, False), (301, False), (404, False), (498, False), (499, True), (500, True), (599, True), (600, False)):
        assert retry_allowed(4, code) is later and retry_allowed(5, code) is later, code
    assert not retry_allowed(2, 200) and not retry_allowed(6, 500)
