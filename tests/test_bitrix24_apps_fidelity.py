"""The Bitrix24 sandbox as the portal side of an application, checked with clients nobody here wrote.

* b24pysdk (the official SDK) parses what the sandbox SENDS: ``OAuthEventData.from_dict`` for the
  installation callback, the CRM events and ONAPPUNINSTALL, ``OAuthPlacementData.from_dict`` for a
  placement frame (query + form, as its Flask/Django helpers merge them).
* fast-bitrix24 calls the application-context methods (event.*, placement.*, app.option.*, app.info) with
  the installed application's OAuth token (``token_func``), as an app's install handler would.
* ``requests`` shows the documented errors a webhook gets, and refreshes the app's tokens at the OAuth
  server (``GET /oauth/token/?grant_type=refresh_token``, settings/oauth/auto-renewal.md).

Every request the sandbox sends goes to a loopback receiver (tests/receiver.py).
"""

from __future__ import annotations

import json

import pytest
import requests

from connector.apps.verify import check_application_token, parse_bitrix24_event, parse_placement
from sandbox.bitrix24 import running_portal
from tests.receiver import receiving

pytest.importorskip("fast_bitrix24")
b24pysdk_credentials = pytest.importorskip("b24pysdk.credentials")
from aiohttp import ClientResponseError  # noqa: E402
from fast_bitrix24 import Bitrix  # noqa: E402

OAuthEventData = b24pysdk_credentials.OAuthEventData
OAuthPlacementData = b24pysdk_credentials.OAuthPlacementData
CRM_EVENTS = ["ONCRMCONTACTADD", "ONCRMCONTACTUPDATE", "ONCRMCONTACTDELETE", "ONCRMCOMPANYUPDATE", "ONCRMDEALADD"]


@pytest.fixture
def rx():
    with receiving() as receiver:
        yield receiver


@pytest.fixture
def portal():
    with running_portal(generate=(30, 60)) as handle:
        yield handle


def _installed(portal, rx, **options):
    """Install an app; returns (install answer, the parsed callback, a fast-bitrix24 client on its token)."""
    answer = portal.install_app(rx.url + "/install", scope="crm,placement,user_brief", **options)
    callback = rx.wait_for(1)[-1]
    event = OAuthEventData.from_dict(callback["form"])
    token = event.auth.oauth_token.access_token

    async def token_func() -> str:
        return token

    return answer, event, Bitrix(portal.info["client_endpoint"], token_func=token_func, verbose=False)


def test_install_callback_is_the_documented_onappinstall_form(portal, rx):
    answer, event, client = _installed(portal, rx)
    request = rx.requests[0]
    assert request["verb"] == "POST" and request["path"] == "/install"
    assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
    # on-app-install.md: event, data[VERSION|ACTIVE|INSTALLED|LANGUAGE_ID], ts, auth[...] incl. refresh_token
    # (+ event_handler_id, auth[expires], auth[user_id]: see sandbox/bitrix24/apps.py on why)
    assert set(request["form"]) == {"event", "event_handler_id", "ts", "data[VERSION]", "data[ACTIVE]", "data[INSTALLED]", "data[LANGUAGE_ID]",
                                    *(f"auth[{k}]" for k in ("access_token", "expires", "expires_in", "user_id", "scope", "refresh_token",
                                                             "domain", "server_endpoint", "status", "client_endpoint",
                                                             "member_id", "application_token"))}
    assert event.event == "ONAPPINSTALL" and event.data == {"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "ru"}
    assert event.auth.member_id == portal.info["member_id"] == answer["member_id"]
    assert event.auth.application_token == answer["application_token"] != portal.info["application_token"]
    assert event.auth.oauth_token.refresh_token and event.auth.status.value == "L"
    assert answer["delivery"]["status"] == 200 and answer["installed"] is True
    # the connector's own parser agrees, and the token in it works for REST calls
    ours = parse_bitrix24_event(request["form"], need_tokens=True)
    assert ours.auth.refresh_token == event.auth.oauth_token.refresh_token
    info = client.call("app.info", {}, raw=True)["result"]
    assert info["CODE"] == answer["client_id"] and info["INSTALLED"] is True and info["STATUS"] == "L"
    scope = client.call("scope", {}, raw=True)["result"]
    assert "crm" in scope


def test_the_installed_app_refreshes_its_own_tokens(portal, rx):
    answer, event, _ = _installed(portal, rx)
    url = portal.info["oauth_token_url"]
    refresh = event.auth.oauth_token.refresh_token
    wrong = requests.get(url, params={"grant_type": "refresh_token", "client_id": answer["client_id"],
                                      "client_secret": portal.info["client_secret"], "refresh_token": refresh}, timeout=10)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_client"
    other = requests.get(url, params={"grant_type": "refresh_token", "client_id": portal.info["client_id"],
                                      "client_secret": portal.info["client_secret"], "refresh_token": refresh}, timeout=10)
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant"  # another app's refresh token
    fresh = requests.get(url, params={"grant_type": "refresh_token", "client_id": answer["client_id"],
                                      "client_secret": answer["client_secret"], "refresh_token": refresh}, timeout=10)
    assert fresh.status_code == 200
    body = fresh.json()
    assert body["member_id"] == portal.info["member_id"] and body["refresh_token"] != refresh
    assert body["scope"] == "crm,placement,user_brief"
    again = requests.get(url, params={"grant_type": "refresh_token", "client_id": answer["client_id"],
                                      "client_secret": answer["client_secret"], "refresh_token": refresh}, timeout=10)
    assert again.json()["error"] == "invalid_grant"  # a refresh token works once


def test_bindings_and_options_through_fast_bitrix24(portal, rx):
    _, _, client = _installed(portal, rx)
    for name in CRM_EVENTS:
        assert client.call("event.bind", {"event": name, "handler": rx.url + "/events"}, raw=True)["result"] is True
    with pytest.raises(ClientResponseError) as dup:  # ERROR_CORE "Handler already binded" (HTTP 400)
        client.call("event.bind", {"event": "ONCRMCONTACTADD", "handler": rx.url + "/events"}, raw=True)
    assert dup.value.status == 400
    with pytest.raises(ClientResponseError) as unknown:
        client.call("event.bind", {"event": "ONNOSUCHTHING", "handler": rx.url + "/events"}, raw=True)
    assert unknown.value.status == 400
    bound = client.call("event.get", {}, raw=True)["result"]
    assert [b["event"] for b in bound] == CRM_EVENTS
    assert all(b == {"event": b["event"], "handler": rx.url + "/events", "auth_type": "0", "offline": 0} for b in bound)
    tab = {"PLACEMENT": "CRM_CONTACT_DETAIL_TAB", "HANDLER": rx.url + "/tab", "TITLE": "Lifecycle",
           "LANG_ALL": {"ru": {"TITLE": "Жизненный цикл"}, "en": {"TITLE": "Lifecycle"}}}
    assert client.call("placement.bind", tab, raw=True)["result"] is True
    placements = client.call("placement.get", {}, raw=True)["result"]
    assert placements == [{"placement": "CRM_CONTACT_DETAIL_TAB", "userId": 0, "handler": rx.url + "/tab", "options": [],
                           "title": "Lifecycle", "description": "",
                           "langAll": {"ru": {"TITLE": "Жизненный цикл", "DESCRIPTION": "", "GROUP_NAME": ""},
                                       "en": {"TITLE": "Lifecycle", "DESCRIPTION": "", "GROUP_NAME": ""}}}]
    missing = client.call("placement.bind", {"HANDLER": rx.url + "/tab"}, raw=True)  # documented: HTTP 200 + error
    assert missing["error"] == "ERROR_ARGUMENT" and missing["argument"] == "PLACEMENT"
    assert client.call("app.option.set", {"options": {"customer": "contact", "receiver": "p1"}}, raw=True)["result"] is True
    assert client.call("app.option.get", {}, raw=True)["result"] == {"customer": "contact", "receiver": "p1"}
    assert client.call("app.option.get", {"option": "customer"}, raw=True)["result"] == "contact"
    assert client.call("app.option.get", {"option": "nothing"}, raw=True)["result"] is None
    assert client.call("event.unbind", {"event": "ONCRMDEALADD", "handler": rx.url + "/events"}, raw=True)["result"] == {"count": 1}
    assert client.call("placement.unbind", {"PLACEMENT": "CRM_CONTACT_DETAIL_TAB"}, raw=True)["result"] == {"count": 1}
    assert len(client.call("event.get", {}, raw=True)["result"]) == 4
    assert client.call("placement.get", {}, raw=True)["result"] == []


def test_app_context_methods_refuse_a_webhook_as_documented(portal):
    hook = portal.webhook_url
    for method, params in (("event.bind", {"event": "ONCRMCONTACTADD", "handler": "https://x.example/h"}),
                           ("event.get", {}), ("placement.bind", {"PLACEMENT": "CRM_CONTACT_DETAIL_TAB", "HANDLER": "h"}),
                           ("placement.get", {})):
        answer = requests.post(hook + method, json=params, timeout=10)
        assert answer.status_code == 403, method
        assert answer.json() == {"error": "WRONG_AUTH_TYPE", "error_description":
                                 "Current authorization type is denied for this method Application context required"}
    for method in ("app.option.set", "app.option.get"):
        answer = requests.post(hook + method, json={"options": {"a": 1}}, timeout=10)
        assert answer.status_code == 400
        assert answer.json() == {"error": "AccessException", "error_description": "Application context required"}


def test_bound_events_are_sent_for_rest_and_ui_changes(portal, rx):
    answer, _, client = _installed(portal, rx)
    for name in CRM_EVENTS:
        client.call("event.bind", {"event": name, "handler": rx.url + "/events"}, raw=True)
    bindings = {b["event"]: b for b in portal.control("GET", "apps")["apps"][-1]["events"]}
    hook = Bitrix(portal.webhook_url, verbose=False)  # another user edits through the REST API
    company = hook.call("crm.company.add", {"fields": {"TITLE": "Shop"}}, raw=True)["result"]  # ONCRMCOMPANYADD: not bound
    portal.deliveries()
    rx.clear()
    hook.call("crm.contact.update", {"id": 5, "fields": {"NAME": "Changed"}}, raw=True)
    new_id = hook.call("crm.contact.add", {"fields": {"NAME": "New"}}, raw=True)["result"]
    portal.edit_record("company", "update", id=company, fields={"TITLE": "Renamed"})  # a user in the portal's UI
    portal.edit_record("contact", "delete", id=7)
    portal.edit_record("deal", "add", fields={"TITLE": "From the UI", "CONTACT_ID": 5})
    got = rx.wait_for(5)
    assert [(r["path"], r["form"]["event"]) for r in got] == [
        ("/events", "ONCRMCONTACTUPDATE"), ("/events", "ONCRMCONTACTADD"), ("/events", "ONCRMCOMPANYUPDATE"),
        ("/events", "ONCRMCONTACTDELETE"), ("/events", "ONCRMDEALADD")]
    ids = []
    for request in got:
        assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
        event = OAuthEventData.from_dict(request["form"])
        assert event.event_handler_id == bindings[event.event]["id"]
        assert event.auth.member_id == portal.info["member_id"]
        check_application_token(event.auth.application_token, answer["application_token"])
        assert event.auth.oauth_token.access_token and not event.auth.oauth_token.refresh_token  # events/index.md
        assert "auth[refresh_token]" not in request["form"]
        ids.append(parse_bitrix24_event(request["form"]).entity_id)
    assert ids[:4] == [5, new_id, company, 7]
    deliveries = portal.deliveries()
    assert [d["status"] for d in deliveries if d["kind"] == "event"] == [200] * 5
    assert len(rx.requests) == 5
    # a robot or workflow changed it: no tokens in auth (events/index.md), still the application token
    portal.edit_record("contact", "update", id=5, fields={"NAME": "By a robot"}, automation=True)
    robot = rx.wait_for(6)[5]
    sdk = OAuthEventData.from_dict(robot["form"])
    assert sdk.is_system and "auth[access_token]" not in robot["form"]
    check_application_token(parse_bitrix24_event(robot["form"]).auth.application_token, answer["application_token"])


def test_a_failing_handler_is_not_retried(portal, rx):
    _, _, client = _installed(portal, rx)
    client.call("event.bind", {"event": "ONCRMCONTACTUPDATE", "handler": rx.url + "/events"}, raw=True)
    rx.clear()
    rx.answer = (500, "broken", {})
    portal.edit_record("contact", "update", id=3, fields={"NAME": "A"})
    portal.deliveries()  # the queue has sent it
    portal.control("POST", "apps/delivery", {"timeout": 0.3})
    rx.answer, rx.delay = (200, "OK", {}), 1.0
    portal.edit_record("contact", "update", id=4, fields={"NAME": "B"})
    events = [d for d in portal.deliveries() if d["kind"] == "event"]
    assert [(d["status"], d["error"]) for d in events] == [(500, None), (None, "timeout")]
    assert len(rx.wait_for(2)) == 2  # nothing sent again (events/index.md: "No retries")


def test_opening_the_tab_posts_the_documented_frame_form(portal, rx):
    answer, _, client = _installed(portal, rx)
    client.call("placement.bind", {"PLACEMENT": "CRM_CONTACT_DETAIL_TAB", "HANDLER": rx.url + "/tab?x=1"}, raw=True)
    rx.clear()
    rx.answer = (200, "<html>tab</html>", {"Content-Type": "text/html", "X-Frame-Options": "DENY"})
    opened = portal.open_placement("CRM_CONTACT_DETAIL_TAB", id=5, lang="en")
    request = rx.wait_for(1)[0]
    assert request["path"] == "/tab" and request["query"]["x"] == "1"
    assert set(request["query"]) == {"x", "DOMAIN", "PROTOCOL", "LANG", "APP_SID"}
    assert set(request["form"]) == {"AUTH_ID", "AUTH_EXPIRES", "REFRESH_ID", "SERVER_ENDPOINT", "APPLICATION_TOKEN",
                                    "APPLICATION_SCOPE", "member_id", "status", "PLACEMENT", "PLACEMENT_OPTIONS"}
    sdk = OAuthPlacementData.from_dict({**request["query"], **request["form"]})
    assert sdk.placement == "CRM_CONTACT_DETAIL_TAB" and sdk.placement_options == {"ID": "5"} and sdk.lang == "en"
    assert sdk.member_id == portal.info["member_id"]
    ours = parse_placement(request["form"], request["query"])
    assert ours.entity_id == 5 and ours.application_token == answer["application_token"]
    assert json.loads(request["form"]["PLACEMENT_OPTIONS"]) == {"ID": "5"}  # a JSON *string* (widget_data.md)
    # the viewing user's AUTH_ID is an OAuth token of the app
    assert requests.post(portal.info["client_endpoint"] + "user.current", json={"auth": ours.auth_id}, timeout=10).status_code == 200
    # what the portal saw: the page and its framing headers
    assert opened["status"] == 200 and opened["body"] == "<html>tab</html>" and opened["headers"]["x-frame-options"] == "DENY"
    form_only = portal.open_placement("CRM_CONTACT_DETAIL_TAB", id=6, send=False)
    assert form_only["url"].startswith(rx.url + "/tab?x=1&DOMAIN=") and "status" not in form_only
    assert len(rx.requests) == 1


def test_uninstall_sends_onappuninstall_and_stops_everything(portal, rx):
    answer, event, client = _installed(portal, rx)
    for name in ("ONAPPUNINSTALL", "ONCRMCONTACTUPDATE"):
        client.call("event.bind", {"event": name, "handler": rx.url + "/events"}, raw=True)
    client.call("app.option.set", {"options": {"k": "v"}}, raw=True)
    rx.clear()
    gone = portal.uninstall_app(answer["client_id"], clean=1)
    request = rx.wait_for(1)[0]
    sdk = OAuthEventData.from_dict(request["form"])
    assert sdk.event == "ONAPPUNINSTALL" and sdk.is_system and sdk.data == {"LANGUAGE_ID": "ru", "CLEAN": "1"}
    assert set(request["form"]) == {"event", "event_handler_id", "ts", "data[LANGUAGE_ID]", "data[CLEAN]",
                                    "auth[domain]", "auth[server_endpoint]", "auth[client_endpoint]",
                                    "auth[member_id]", "auth[application_token]"}  # on-app-uninstall.md: no tokens
    assert gone["revoked_tokens"] >= 2
    stale = requests.post(portal.info["client_endpoint"] + "app.info",
                          json={"auth": event.auth.oauth_token.access_token}, timeout=10)
    assert stale.status_code == 401 and stale.json()["error"] == "NO_AUTH_FOUND"
    portal.edit_record("contact", "update", id=3, fields={"NAME": "after"})
    assert [d["kind"] for d in portal.deliveries()] == ["install", "uninstall"]
    assert len(rx.requests) == 1
    app = next(a for a in portal.control("GET", "apps")["apps"] if a["client_id"] == answer["client_id"])
    assert app["uninstalled"] and app["events"] == [] and app["options"] == {}


def test_a_wizard_app_is_silent_until_install_finish(portal, rx):
    answer = portal.install_app(rx.url + "/wizard", mode="wizard", main_url=rx.url + "/app")
    page = rx.wait_for(1)[0]
    assert page["form"]["PLACEMENT"] == "DEFAULT" and page["form"]["PLACEMENT_OPTIONS"] == "{}"
    token = page["form"]["AUTH_ID"]
    assert requests.post(portal.info["client_endpoint"] + "event.bind", timeout=10, json={
        "auth": token, "event": "ONCRMCONTACTUPDATE", "handler": rx.url + "/events"}).json()["result"] is True
    portal.edit_record("contact", "update", id=3, fields={"NAME": "x"})
    portal.deliveries()
    assert len(rx.requests) == 1  # not installed yet: no events (installation-master.md)
    portal.control("POST", "apps/finish", {"app": answer["client_id"]})  # BX24.installFinish()
    portal.edit_record("contact", "update", id=3, fields={"NAME": "y"})
    assert rx.wait_for(2)[1]["form"]["event"] == "ONCRMCONTACTUPDATE"
    main = portal.open_placement("DEFAULT", app=answer["client_id"])
    assert main["status"] == 200 and rx.wait_for(3)[2]["path"] == "/app"


def test_a_second_install_callback_keeps_one_app_and_its_bindings(portal, rx):
    answer, _, client = _installed(portal, rx)
    client.call("event.bind", {"event": "ONCRMCONTACTUPDATE", "handler": rx.url + "/events"}, raw=True)
    again = portal.install_app(rx.url + "/install", app=answer["client_id"], scope="crm,placement,user_brief")
    second = OAuthEventData.from_dict(rx.wait_for(2)[1]["form"])
    assert again["client_id"] == answer["client_id"] and again["application_token"] == answer["application_token"]
    assert second.auth.oauth_token.access_token != rx.requests[0]["form"]["auth[access_token]"]
    assert [a["client_id"] for a in portal.control("GET", "apps")["apps"]].count(answer["client_id"]) == 1
    assert [e["event"] for e in again["events"]] == ["ONCRMCONTACTUPDATE"]


def test_an_app_in_one_of_many_portals_stays_in_that_portal(rx):
    from sandbox.bitrix24 import running_portals

    with running_portals(2, generate=(10, 10)) as sandbox:
        second = sandbox.portals[1]
        answer = second.install_app(rx.url + "/install", scope="crm")
        callback = OAuthEventData.from_dict(rx.wait_for(1)[0]["form"])
        assert callback.auth.member_id == second.info["member_id"] != sandbox.portals[0].info["member_id"]
        assert callback.auth.domain == second.info["domain"]
        token = callback.auth.oauth_token.access_token
        elsewhere = requests.post(sandbox.portals[0].info["client_endpoint"] + "app.info", json={"auth": token}, timeout=10)
        assert elsewhere.status_code == 401  # another portal does not know the app's token
        # the shared OAuth server (unprefixed /oauth/token/) finds the portal by the app's client_id
        fresh = requests.get(sandbox.info["oauth_token_url"], timeout=10, params={
            "grant_type": "refresh_token", "client_id": answer["client_id"], "client_secret": answer["client_secret"],
            "refresh_token": callback.auth.oauth_token.refresh_token})
        assert fresh.status_code == 200 and fresh.json()["member_id"] == second.info["member_id"]
        assert fresh.json()["client_endpoint"] == second.info["client_endpoint"]


def test_a_frame_acts_for_the_user_who_opened_it(portal, rx):
    _, _, client = _installed(portal, rx)
    client.call("placement.bind", {"PLACEMENT": "CRM_CONTACT_DETAIL_TAB", "HANDLER": rx.url + "/tab"}, raw=True)
    seen = {}
    for user in (1, 5):
        portal.open_placement("CRM_CONTACT_DETAIL_TAB", id=3, user_id=user)
        auth_id = rx.requests[-1]["form"]["AUTH_ID"]
        me = requests.post(portal.info["client_endpoint"] + "user.current", json={"auth": auth_id}, timeout=10).json()
        admin = requests.post(portal.info["client_endpoint"] + "user.admin", json={"auth": auth_id}, timeout=10).json()
        option = requests.post(portal.info["client_endpoint"] + "app.option.set", timeout=10,
                               json={"auth": auth_id, "options": {"by": str(user)}})
        seen[user] = (me["result"]["ID"], admin["result"], option.status_code)
    assert seen == {1: ("1", True, 200), 5: ("5", False, 400)}  # app-option-set.md: "Administrator authorization required"
    rep = rx.requests[-1]["form"]["AUTH_ID"]  # user 5, not an administrator

    def call(method, **params):
        answer = requests.post(portal.info["client_endpoint"] + method, json={"auth": rep, **params}, timeout=10)
        return answer.status_code, answer.json()
    assert call("placement.bind", PLACEMENT="CRM_DEAL_DETAIL_TAB", HANDLER=rx.url + "/x") == (
        403, {"error": "ACCESS_DENIED", "error_description": "Access denied!"})
    assert call("event.bind", event="ONCRMDEALADD", handler=rx.url + "/e", event_type="offline")[1]["error_description"] == (
        "Access denied! Offline events binding requires administrator access rights")
    assert call("event.bind", event="ONCRMDEALADD", handler=rx.url + "/e", auth_type=1)[0] == 403
    status, body = call("event.bind", event="ONCRMDEALADD", handler=rx.url + "/e")  # own online handler: allowed
    assert status == 200 and body["result"] is True  # events/index.md "Access Permissions"
