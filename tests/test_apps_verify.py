"""connector/apps/verify.py: every refusal, and that no refusal echoes a secret.

Tokens are made by the sandboxes where they can be (the amoCRM account's widget JWT, the Bitrix24 portal's
install callback); forged ones are signed here with another secret, as an attacker would.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import jwt
import pytest

from connector.apps.verify import (Refused, check_application_token, parse_amocrm_webhook, parse_bitrix24_event,
                                   parse_oauth_redirect, parse_placement, same_secret, unflatten, verify_disconnect,
                                   verify_widget_token)

SECRET = "s3cr3t-of-the-integration-0123456789abcdefghijklmnop"
CLIENT = "0b0832f6-d123-4123-9123-e73f236833c1"
ACCOUNT = 12345678
NOW = 1_800_000_000


def claims(**over):
    base = {"iss": "https://example.amocrm.ru", "aud": "https://lifecycle.example.com", "jti": "d628f123",
            "iat": NOW, "nbf": NOW, "exp": NOW + 1800, "account_id": ACCOUNT, "user_id": 87654321,
            "subdomain": "example", "client_uuid": CLIENT}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def token(secret: str = SECRET, **over) -> str:
    return jwt.encode(claims(**over), secret, algorithm="HS256")


def refused(reason: str, fn, *args, **kwargs) -> str:
    with pytest.raises(Refused) as caught:
        fn(*args, **kwargs)
    assert caught.value.reason == reason, str(caught.value)
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message
    return message


def check(tok, **kwargs):
    options = {"secret": SECRET, "account_id": ACCOUNT, "client_id": CLIENT, "now": NOW + 10}
    options.update(kwargs)
    return verify_widget_token(tok, **options)


# -- amoCRM widget token ------------------------------------------------------------------------------

def test_a_valid_widget_token_gives_typed_claims():
    got = check(token(), audience="https://lifecycle.example.com/")
    assert (got.account_id, got.user_id, got.client_uuid, got.subdomain) == (ACCOUNT, 87654321, CLIENT, "example")
    assert got.expires_at == NOW + 1800


def test_widget_token_refusals():
    tok = token()
    refused("missing_token", check, None)
    refused("missing_token", check, "  ")
    refused("malformed", check, "not.a.jwt")
    forged = token(secret="another-integration-secret-0123456789abcdefghij")
    message = refused("forged", check, forged)
    assert forged not in message and tok not in message
    refused("forged", check, jwt.encode(claims(), "x" * 64, algorithm="HS512"))
    unsigned = jwt.encode(claims(), None, algorithm="none")
    refused("forged", check, unsigned)
    refused("expired", check, token(exp=NOW - 100))
    refused("not_yet_valid", check, token(nbf=NOW + 3600))
    refused("other_account", check, token(account_id=ACCOUNT + 1))
    refused("other_integration", check, token(client_uuid="11111111-2222-3333-4444-555555555555"))
    refused("other_audience", check, tok, audience="https://evil.example.com")
    for name in ("exp", "account_id", "user_id", "client_uuid", "jti", "iat", "nbf", "iss", "aud"):
        assert name in refused("malformed", check, token(**{name: None}))
    refused("malformed", check, token(account_id="abc"))
    refused("not_configured", check, tok, secret="")
    # the real clock is the default
    assert verify_widget_token(token(iat=int(time.time()), nbf=int(time.time()), exp=int(time.time()) + 60),
                               secret=SECRET, account_id=ACCOUNT).account_id == ACCOUNT


def test_the_sandbox_widget_token_passes_and_another_accounts_does_not():
    from sandbox.amocrm import running_account

    with running_account(generate=(5, 5), limits=False) as acct:
        issued = acct.widget_token(user_id=3)["token"]
        info = acct.info
        assert check(issued, secret=info["client_secret"], account_id=info["account_id"], client_id=info["client_id"],
                     now=None).user_id == 3
        refused("other_account", check, issued, secret=info["client_secret"], account_id=info["account_id"] + 1,
                client_id=info["client_id"], now=None)
        refused("forged", check, issued, secret=SECRET, account_id=info["account_id"], now=None)
        expired = acct.widget_token(iat=int(time.time()) - 4000)["token"]
        refused("expired", check, expired, secret=info["client_secret"], account_id=info["account_id"], now=None)


# -- amoCRM redirect, disconnect hook, webhook ---------------------------------------------------------

def test_oauth_redirect_checks():
    ok = parse_oauth_redirect({"code": "def502abc", "referer": "Example.amocrm.ru", "state": "x", "platform": "1"})
    assert (ok.referer, ok.state, ok.platform, ok.from_widget) == ("example.amocrm.ru", "x", 1, False)
    assert parse_oauth_redirect({"code": "c", "referer": "a.kommo.com", "from_widget": "1"}).from_widget
    refused("declined", parse_oauth_redirect, {"error": "access_denied", "state": "x"})
    refused("malformed", parse_oauth_redirect, {"referer": "example.amocrm.ru"})
    for referer in ("evil.example.com", "amocrm.ru.evil.com", "", "example.amocrm.ru/../x", "127.0.0.1:8080"):
        refused("bad_referer", parse_oauth_redirect, {"code": "c", "referer": referer})
    sandboxed = parse_oauth_redirect({"code": "c", "referer": "sandbox.amocrm.test"}, allowed_domains=("amocrm.test",))
    assert sandboxed.referer == "sandbox.amocrm.test"


def test_disconnect_hook_checks():
    signature = hmac.new(SECRET.encode(), f"{CLIENT}|{ACCOUNT}".encode(), hashlib.sha256).hexdigest()
    good = {"client_uuid": CLIENT, "account_id": str(ACCOUNT), "signature": signature}
    assert verify_disconnect(good, client_id=CLIENT, secret=SECRET) == ACCOUNT
    message = refused("forged", verify_disconnect, {**good, "account_id": str(ACCOUNT + 1)}, client_id=CLIENT, secret=SECRET)
    assert signature not in message
    refused("forged", verify_disconnect, {**good, "signature": "0" * 64}, client_id=CLIENT, secret=SECRET)
    refused("other_integration", verify_disconnect, {**good, "client_uuid": "x"}, client_id=CLIENT, secret=SECRET)
    refused("malformed", verify_disconnect, {"client_uuid": CLIENT}, client_id=CLIENT, secret=SECRET)


def test_amocrm_webhook_parsing():
    form = {"contacts[update][0][id]": "5", "contacts[update][0][type]": "contact",
            "contacts[update][1][id]": "9", "contacts[update][1][type]": "company",
            "leads[status][0][id]": "7", "leads[status][0][status_id]": "142",
            "account[id]": "29013640", "account[subdomain]": "drvorobjev"}
    hook = parse_amocrm_webhook(form)
    assert (hook.account_id, hook.subdomain) == (29013640, "drvorobjev")
    assert [(c.entity, c.action, c.id) for c in hook.changes] == [("contact", "update", 5), ("company", "update", 9),
                                                                   ("lead", "status", 7)]
    refused("malformed", parse_amocrm_webhook, {"contacts[update][0][id]": "5"})
    refused("malformed", parse_amocrm_webhook, {**form, "contacts[add][0][name]": "no id"})


# -- Bitrix24 -----------------------------------------------------------------------------------------

EVENT = {"event": "ONCRMCONTACTUPDATE", "event_handler_id": "12", "data[FIELDS][ID]": "82", "ts": "1724697689",
         "auth[access_token]": "s6p6eclrvim6da22ft9ch94ekreb52lv", "auth[expires_in]": "3600", "auth[scope]": "crm",
         "auth[domain]": "some-domain.bitrix24.com", "auth[server_endpoint]": "https://oauth.bitrix.info/rest/",
         "auth[status]": "F", "auth[client_endpoint]": "https://some-domain.bitrix24.com/rest/",
         "auth[member_id]": "a223c6b3710f85df22e9377d6c4f7553", "auth[application_token]": "51856fefc120afa4b628cc82d3935cce"}


def test_bitrix24_event_parsing_and_refusals():
    event = parse_bitrix24_event(EVENT)  # the docs' ONCRMCONTACTUPDATE example, form-encoded
    assert (event.event, event.handler_id, event.entity_id, event.auth.member_id) == (
        "ONCRMCONTACTUPDATE", 12, 82, "a223c6b3710f85df22e9377d6c4f7553")
    assert event.auth.refresh_token is None and event.auth.scope == ("crm",)
    assert "s6p6" not in repr(event)  # tokens stay out of reprs (and so out of logs)
    refused("malformed", parse_bitrix24_event, {k: v for k, v in EVENT.items() if k != "event"})
    refused("malformed", parse_bitrix24_event, {k: v for k, v in EVENT.items() if k != "auth[member_id]"})
    refused("malformed", parse_bitrix24_event, {k: v for k, v in EVENT.items() if k != "auth[application_token]"})
    refused("malformed", parse_bitrix24_event, {**EVENT, "ts": "yesterday"})
    refused("malformed", parse_bitrix24_event, EVENT, need_tokens=True)  # ONAPPINSTALL needs the refresh token too
    refused("malformed", parse_bitrix24_event, {"event": "ONCRMCONTACTUPDATE", "auth": "x"})


def test_application_token_check():
    stored = "51856fefc120afa4b628cc82d3935cce"
    check_application_token(stored, stored)
    message = refused("forged", check_application_token, "51856fefc120afa4b628cc82d3935ccf", stored)
    assert stored not in message and "51856fefc120afa4b628cc82d3935ccf" not in message
    refused("missing_token", check_application_token, None, stored)
    refused("missing_token", check_application_token, "", stored)
    refused("unknown_portal", check_application_token, stored, None)
    assert same_secret("a", "a") and not same_secret("a", "b") and not same_secret(None, "a") and not same_secret("a", "")


def test_placement_parsing_and_refusals():
    query = {"DOMAIN": "xxx.bitrix24.com", "PROTOCOL": "1", "LANG": "en", "APP_SID": "5552d735db7b7b4d5c16dd9c272bfe7d"}
    form = {"AUTH_ID": "9d4c71", "AUTH_EXPIRES": "3600", "REFRESH_ID": "8c3b99",
            "SERVER_ENDPOINT": "https://oauth.bitrix.info/rest/", "APPLICATION_TOKEN": "ec1b2074a9d3f5c81b6e40d27a95cf38",
            "APPLICATION_SCOPE": "crm,placement", "member_id": "d897063e1ce7c5eb9f04b9751eef5915", "status": "L",
            "PLACEMENT": "CRM_DEAL_DETAIL_TAB",
            "PLACEMENT_OPTIONS": '{"ID":"8061","URI":"\\/crm\\/deal\\/details\\/8061\\/?IFRAME=Y"}'}
    opened = parse_placement(form, query)  # the docs' example (widget_data.md)
    assert (opened.entity_id, opened.placement, opened.lang, opened.protocol, opened.scope) == (
        8061, "CRM_DEAL_DETAIL_TAB", "en", 1, ("crm", "placement"))
    assert "9d4c71" not in repr(opened)
    for key in ("member_id", "APPLICATION_TOKEN", "PLACEMENT"):
        assert key in refused("malformed", parse_placement, {k: v for k, v in form.items() if k != key}, query)
    refused("malformed", parse_placement, form, {})  # no DOMAIN
    refused("malformed", parse_placement, {**form, "PLACEMENT_OPTIONS": "{not json"}, query)
    refused("malformed", parse_placement, {**form, "PLACEMENT_OPTIONS": "[1, 2]"}, query)
    assert parse_placement({**form, "PLACEMENT_OPTIONS": ""}, query).entity_id is None


def test_unflatten_keeps_php_nesting():
    assert unflatten([("a[b][0][c]", "1"), ("a[b][0][d]", "2"), ("a[b][1][c]", "3"), ("x", "")]) == {
        "a": {"b": {"0": {"c": "1", "d": "2"}, "1": {"c": "3"}}}, "x": ""}
    assert unflatten({"a": "scalar", "a[b]": "nested"}) == {"a": {"b": "nested"}}
