"""The connector as an amoCRM integration, end to end over loopback: the sandbox account's OAuth redirect
registers the account and subscribes its webhook, the first sync runs on a real `lifecycle worker`, a change
in the account reaches the connector through the account's own webhook (and its retry after a failure),
the widget's `$authorizedAjax` gets a short-lived page address behind a valid JWT, and the disconnect hook
uninstalls. Forged, expired and other-account JWTs and a forged disconnect are refused with nothing changed."""

from __future__ import annotations

import time

import pytest

from connector.apps.amocrm_app import WEBHOOK_EVENTS, name_of
from sandbox.amocrm import running_account
from sandbox.amocrm.hooks import sign_hs256
from tests.apps_stack import app_env, free_port, http, snapshot, sync_runs, wait_for, web_service, worker


def _env(tmp_path, port: int, acct) -> dict[str, str]:
    return app_env(tmp_path, port, LIFECYCLE_AMOCRM_CLIENT_ID=acct.info["client_id"],
                   LIFECYCLE_AMOCRM_CLIENT_SECRET=acct.info["client_secret"],
                   LIFECYCLE_AMOCRM_ACCOUNT_URLS=f"sandbox.amocrm.ru={acct.base_url}")


def _connect(acct, port: int) -> dict:
    return acct.control("POST", "oauth/redirect", {"redirect_uri": f"http://127.0.0.1:{port}/apps/amocrm/oauth",
                                                   "disconnect_url": f"http://127.0.0.1:{port}/apps/amocrm/disconnect"})


def _ok_runs(engine, name: str) -> int:
    return len([s for s, _ in sync_runs(engine, name) if s == "ok"])


@pytest.mark.slow
def test_connect_sync_webhook_retry_widget_disconnect(postgres_url, tmp_path, monkeypatch):
    port = free_port()
    with running_account(generate=(30, 60), limits=False, frozen_clock=True) as acct:
        env = _env(tmp_path, port, acct)
        with web_service(postgres_url, env, port, monkeypatch) as service, worker(postgres_url, env, tmp_path):
            engine = service.workers.registry().engine
            answer = _connect(acct, port)
            assert answer["status"] == 200, answer.get("body", "")[:300]
            assert "first sync" in answer["body"] or "первая синхронизация" in answer["body"]
            name = name_of(acct.info["account_id"])
            registry = service.workers.registry()
            assert registry.get(name).kind == "amocrm" and registry.get(name).state == "active"
            with engine.connect() as conn:
                stored = conn.exec_driver_sql("SELECT p.config, t.access_token, t.refresh_token FROM portals p JOIN "
                                              "oauth_tokens t ON t.portal = p.name WHERE p.name = %(n)s", {"n": name}).one()
            assert all(v.startswith("fernet:") for v in stored)
            secret = registry.load(name).settings.daemon.amocrm_webhook_secret.get_secret_value()
            status, hooks = acct.api("GET", "/api/v4/webhooks")
            hooks = hooks["_embedded"]["webhooks"]
            assert [h["destination"] for h in hooks] == [f"http://127.0.0.1:{port}/webhooks/amocrm/{name}/{secret}"]
            assert sorted(hooks[0]["settings"]) == sorted(WEBHOOK_EVENTS)

            wait_for(lambda: _ok_runs(engine, name) >= 1, 90, "the first sync on the worker")

            # a change in the account: the webhook is refused once (the registry "down"), retried after 5 min
            real_config = service.config
            service.config = lambda portal: (_ for _ in ()).throw(RuntimeError("registry down"))  # type: ignore
            runs = _ok_runs(engine, name)
            status, _ = acct.api("PATCH", "/api/v4/contacts/3", json={"name": "Changed"})
            assert status == 200
            first = acct.webhook_deliveries()["deliveries"]
            assert [(d["attempt"], d["status"]) for d in first] == [(1, 503)]
            service.config = real_config  # type: ignore
            acct.advance(300)
            assert [(d["attempt"], d["status"]) for d in acct.webhook_deliveries()["deliveries"]] == [(1, 503), (2, 200)]
            wait_for(lambda: _ok_runs(engine, name) > runs, 60, "the redelivered webhook's sync")

            # the widget tab: the JWT checked, a short-lived page under the public URL, CORS for the account
            url = f"http://127.0.0.1:{port}/apps/amocrm/widget/session?entity=contact&id=3&lang=ru"
            got = acct.control("POST", "widget/request", {"url": url, "method": "POST"})
            assert got["status"] == 200, got["body"][:300]
            headers = {k.lower(): v for k, v in got["headers"].items()}
            assert headers["access-control-allow-origin"] == "https://sandbox.amocrm.ru"
            import json

            page_url = json.loads(got["body"])["url"]
            assert page_url.startswith(f"http://127.0.0.1:{port}/apps/amocrm/page?t=")
            status, headers, body = http("GET", page_url)
            assert status == 200 and "Сегменты сейчас" in body
            assert "frame-ancestors https://sandbox.amocrm.ru" in headers["content-security-policy"]
            assert "x-frame-options" not in headers
            assert http("GET", page_url[:-3] + "abc")[0] == 403  # a tampered address

            # the disconnect hook: tokens deleted, state uninstalled, the webhook receiver closed
            acct.control("POST", "oauth/disconnect", {})
            assert registry.get(name).state == "uninstalled"
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT count(*) FROM oauth_tokens WHERE portal = %(n)s",
                                            {"n": name}).scalar() == 0
            assert http("GET", page_url)[0] == 403


def test_forged_tokens_and_hooks_are_refused_with_nothing_changed(postgres_url, tmp_path, monkeypatch):
    port = free_port()
    with running_account(generate=(5, 5), limits=False) as acct:
        env = _env(tmp_path, port, acct)
        with web_service(postgres_url, env, port, monkeypatch) as service:
            engine = service.workers.registry().engine
            assert _connect(acct, port)["status"] == 200
            name = name_of(acct.info["account_id"])
            before = snapshot(engine, name)
            base = f"http://127.0.0.1:{port}"
            secret = acct.info["client_secret"]
            now = int(time.time())
            claims = {"iss": "https://sandbox.amocrm.ru", "aud": base, "jti": "j", "iat": now, "nbf": now,
                      "exp": now + 1800, "account_id": acct.info["account_id"], "user_id": 1, "subdomain": "sandbox",
                      "client_uuid": acct.info["client_id"]}
            session = base + "/apps/amocrm/widget/session?entity=contact&id=3"
            valid = http("POST", session, b"", {"X-Auth-Token": sign_hs256(claims, secret)})
            assert valid[0] == 200
            for token, expected in ((sign_hs256(claims, "another-secret-" + "x" * 20), 401),
                                    (sign_hs256({**claims, "iat": now - 4000, "nbf": now - 4000, "exp": now - 2200},
                                                secret), 401),
                                    (sign_hs256({**claims, "account_id": claims["account_id"] + 1}, secret), 403),
                                    (sign_hs256({**claims, "client_uuid": "another-integration"}, secret), 401),
                                    ("", 401), ("not.a.jwt", 401)):
                status, headers, body = http("POST", session, b"", {"X-Auth-Token": token,
                                                                    "Origin": "https://sandbox.amocrm.ru"})
                assert status == expected, (status, body)
                assert "access-control-allow-origin" not in headers and secret not in body and (len(token) < 20 or token[-20:] not in body)
            # a forged disconnect hook (wrong signature, another integration), an unknown redirect code
            for query in (f"client_uuid={acct.info['client_id']}&account_id={acct.info['account_id']}&signature={'0' * 64}",
                          f"client_uuid=other&account_id={acct.info['account_id']}&signature={'0' * 64}"):
                assert http("GET", f"{base}/apps/amocrm/disconnect?{query}")[0] == 401
            status, _, body = http("GET", f"{base}/apps/amocrm/oauth?code=made-up-code&referer=sandbox.amocrm.ru")
            assert status == 401 and "made-up-code" not in body
            status, _, _ = http("GET", f"{base}/apps/amocrm/oauth?code=c&referer=evil.example.com")
            assert status == 400
            assert snapshot(engine, name) == before
            assert registry_names(service) == [name]

            # a flood of made-up codes: each costs a code exchange with amoCRM until the address is cut off
            from connector.apps.common import REFUSALS_PER_ADDRESS

            statuses = [http("GET", f"{base}/apps/amocrm/oauth?code=flood-{i}&referer=sandbox.amocrm.ru")[0]
                        for i in range(REFUSALS_PER_ADDRESS)]
            assert statuses == [401] * (REFUSALS_PER_ADDRESS - 2) + [429, 429]  # 2 refused above
            exchanges = acct.counters()["oauth_requests"]
            url = f"{base}/apps/amocrm/oauth?code=flood-x&referer=sandbox.amocrm.ru"
            status, headers, body = http("GET", url, None, {"Accept-Language": "en-US,en;q=0.8"})
            assert status == 429 and "try again in 10 minutes" in body and headers.get("retry-after") == "600"
            status, _, body = http("GET", url, None, {"Accept-Language": "ru-RU,ru;q=0.9"})
            assert status == 429 and "повторите через 10 минут" in body
            assert acct.counters()["oauth_requests"] == exchanges  # the cut-off sends amoCRM nothing
            assert snapshot(engine, name) == before


def registry_names(service) -> list[str]:
    return [p.name for p in service.workers.registry().list()]
