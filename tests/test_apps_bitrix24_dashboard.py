"""The Bitrix24 application's main page is the portal's dashboard, signed in as the portal user who opened it,
and the installation page of an app with an installation wizard; end to end over loopback: two sandbox
portals on one sandbox server (one OAuth server for both, as in reality), the many-portal web service,
a real `lifecycle worker` process for the first sync. Security: forged, foreign, mismatched and uninstalled
frames are refused with no session, and a session sees its own portal only."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests

from connector.apps.bitrix24_app import APP_EVENTS, name_of
from sandbox.bitrix24.testing import running_portals
from tests.apps_stack import B24_CLIENT_ID, B24_CLIENT_SECRET, app_env, free_port, snapshot, sync_runs, wait_for, \
    web_service, worker


def _install(portal, port: int, **extra) -> dict:
    return portal.install_app(f"http://127.0.0.1:{port}/apps/bitrix24/install", scope="crm,placement,user_brief",
                              client_id=B24_CLIENT_ID, client_secret=B24_CLIENT_SECRET, **extra)


def _app(portal) -> dict:
    return next(a for a in portal.control("GET", "apps")["apps"] if a["client_id"] == B24_CLIENT_ID)


def _bound(portal) -> bool:
    app = _app(portal)
    return len(app["events"]) == len(APP_EVENTS) and len(app["placements"]) == 1 and bool(app["options"])


def _query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def _oauth_url(sandbox) -> str:
    return sandbox[0].base_url.rsplit("/p/", 1)[0] + "/oauth/token/"


def _framed_by(answer: requests.Response, origin: str) -> None:
    assert answer.headers["content-security-policy"].endswith(f"frame-ancestors {origin}")
    assert "x-frame-options" not in {k.lower() for k in answer.headers}


def _open(session: requests.Session, portal, **options) -> requests.Response:
    frame = portal.open_placement("DEFAULT", send=False, **options)
    return session.post(frame["url"], data=frame["form"], allow_redirects=False, timeout=20)


@pytest.mark.slow
def test_the_main_page_is_the_portal_dashboard_of_the_user_who_opened_it(postgres_url, tmp_path, monkeypatch):
    port = free_port()
    with running_portals(2, generate=(30, 60), limits=False) as sandbox:
        a, b = sandbox[0], sandbox[1]
        env = app_env(tmp_path, port, LIFECYCLE_BITRIX24_OAUTH_URL=_oauth_url(sandbox))
        with web_service(postgres_url, env, port, monkeypatch) as service, worker(postgres_url, env, tmp_path):
            base = f"http://127.0.0.1:{port}"
            engine = service.workers.registry().engine
            for portal in (a, b):
                assert _install(portal, port, main_url=base + "/apps/bitrix24/app")["delivery"]["status"] == 200
            name_a, name_b = name_of(a.info["member_id"]), name_of(b.info["member_id"])
            assert name_a != name_b
            wait_for(lambda: _bound(a) and _bound(b), 30, "the bindings of both portals")
            wait_for(lambda: "ok" in [s for s, _ in sync_runs(engine, name_a)], 90, "portal A's first sync on the worker")
            # the run is marked ok before the dashboard's snapshot (with its weekly back-fill) is written
            wait_for(lambda: 'id="matrix"' in _open(requests.Session(), a, user_id=1, lang="en").text, 90,
                     "portal A's dashboard snapshot after its first sync")
            origin = "http://" + urlsplit(a.base_url).netloc

            # an administrator of portal A opens the app: the dashboard's overview, with the settings
            admin = requests.Session()
            answer = _open(admin, a, user_id=1, lang="en")
            assert answer.status_code == 200, answer.text[:300]
            assert 'id="matrix"' in answer.text and 'id="kpi"' in answer.text
            assert 'id="settings"' in answer.text and "Settings (administrators)" in answer.text
            assert 'id="settings-tab"' in answer.text and '<html lang="en">' in answer.text
            _framed_by(answer, origin)
            cookie = answer.headers["set-cookie"].lower()
            assert "lifecycle_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie  # plain http
            config = service.workers.registry().load(name_a)
            segment = config.rules.segment_names[0]
            for path in ("", "flows", "campaigns", "audiences", "runs", "settings", f"segments/{segment}"):
                page = admin.get(f"{base}/ui/p/{name_a}/{path}", allow_redirects=False, timeout=20)
                assert page.status_code == 200, (path, page.status_code)
                _framed_by(page, origin)
            assert admin.get(f"{base}/api/v1/portals/{name_a}/overview", timeout=20).json()["kpi"]["buyers"] > 0
            assert [p["portal"] for p in admin.get(f"{base}/api/v1/portals", timeout=20).json()] == [name_a]
            home = admin.get(f"{base}/ui/", allow_redirects=False, timeout=20)
            assert home.status_code == 303 and home.headers["location"] == f"/ui/p/{name_a}/"

            # portal A's session never reaches portal B (installed, active, with its own data)
            for path in (f"/ui/p/{name_b}/", f"/ui/p/{name_b}/settings", f"/ui/p/{name_b}/flows",
                         f"/api/v1/portals/{name_b}/overview", f"/api/v1/portals/{name_b}/runs"):
                assert admin.get(base + path, allow_redirects=False, timeout=20).status_code in (403, 404), path

            # a user who is not an administrator: the read-only views, no settings; Russian by LANG
            viewer = requests.Session()
            answer = _open(viewer, a, user_id=3, lang="ru")
            assert answer.status_code == 200 and '<html lang="ru">' in answer.text
            assert 'id="settings"' not in answer.text and "Только просмотр" in answer.text
            assert 'id="settings-tab"' not in answer.text
            assert viewer.get(f"{base}/ui/p/{name_a}/settings", timeout=20).status_code == 403
            assert viewer.get(f"{base}/ui/p/{name_a}/flows", timeout=20).status_code == 200
            assert viewer.get(f"{base}/ui/p/{name_b}/", timeout=20).status_code == 404
            # no LANG sent: Russian
            frame = a.open_placement("DEFAULT", send=False, user_id=3)
            answer = requests.post(_query(frame["url"], LANG=None), data=frame["form"], timeout=20)
            assert answer.status_code == 200 and '<html lang="ru">' in answer.text

            # a session of portal B sees B only
            other = requests.Session()
            assert _open(other, b, user_id=1, lang="en").status_code == 200
            assert other.get(f"{base}/ui/p/{name_b}/settings", timeout=20).status_code == 200
            assert other.get(f"{base}/ui/p/{name_a}/", timeout=20).status_code == 404
            assert other.get(f"{base}/api/v1/portals/{name_a}/overview", timeout=20).status_code == 404


def test_forged_foreign_and_uninstalled_frames_open_no_session(postgres_url, tmp_path, monkeypatch):
    port = free_port()
    with running_portals(2, generate=(5, 5), limits=False) as sandbox:
        a, b = sandbox[0], sandbox[1]
        env = app_env(tmp_path, port, LIFECYCLE_BITRIX24_OAUTH_URL=_oauth_url(sandbox))
        with web_service(postgres_url, env, port, monkeypatch) as service:
            base = f"http://127.0.0.1:{port}"
            engine = service.workers.registry().engine
            installed = {}
            for portal in (a, b):
                installed[portal.info["member_id"]] = _install(portal, port, main_url=base + "/apps/bitrix24/app")
            name_a, name_b = name_of(a.info["member_id"]), name_of(b.info["member_id"])
            wait_for(lambda: _bound(a) and _bound(b), 30, "the bindings")
            mine = a.open_placement("DEFAULT", send=False, user_id=1, lang="en")
            theirs = b.open_placement("DEFAULT", send=False, user_id=1, lang="en")
            secrets = [mine["form"]["AUTH_ID"], mine["form"]["REFRESH_ID"], mine["form"]["APPLICATION_TOKEN"],
                       theirs["form"]["AUTH_ID"], theirs["form"]["APPLICATION_TOKEN"], B24_CLIENT_SECRET]
            before = snapshot(engine, name_a)
            b_domain = urlsplit(b.base_url).netloc + urlsplit(b.base_url).path
            forgeries = {
                "made-up AUTH_ID": (mine["url"], {**mine["form"], "AUTH_ID": "f" * 32}, 403),
                "no AUTH_ID": (mine["url"], {k: v for k, v in mine["form"].items() if k != "AUTH_ID"}, 403),
                "portal B's user token on A": (mine["url"], {**mine["form"], "AUTH_ID": theirs["form"]["AUTH_ID"]}, 403),
                "portal B's member id, A's token": (mine["url"], {**mine["form"], "member_id": b.info["member_id"]}, 403),
                "a member id never installed": (mine["url"], {**mine["form"], "member_id": "0" * 32}, 404),
                "B's DOMAIN": (_query(mine["url"], DOMAIN=b_domain), mine["form"], 403),
                "a made-up DOMAIN": (_query(mine["url"], DOMAIN="evil.example.com"), mine["form"], 403),
                # login CSRF: a genuine frame's form, auto-posted by another site's page (the browser says whence)
                "posted from another site": (mine["url"], mine["form"], 403, {"Origin": "https://evil.example"}),
                "posted from portal B's site": (mine["url"], mine["form"], 403,
                                                {"Origin": "http://" + urlsplit(b.base_url).netloc + ".evil"}),
            }
            for what, (url, form, status, *headers) in forgeries.items():
                answer = requests.post(url, data=form, allow_redirects=False, timeout=20,
                                       headers=headers[0] if headers else None)
                assert answer.status_code == status, (what, answer.status_code)
                assert "set-cookie" not in {k.lower() for k in answer.headers}, f"{what}: a session was opened"
                assert answer.headers.get("x-frame-options") == "DENY", what
                for secret in secrets:
                    assert secret not in answer.text, f"{what}: the answer repeats a secret"
            assert snapshot(engine, name_a) == before
            # the same form posted from the portal's own pages (as the portal's frame does) opens the session
            fresh = a.open_placement("DEFAULT", send=False, user_id=1, lang="en")
            answer = requests.post(fresh["url"], data=fresh["form"], allow_redirects=False, timeout=20,
                                   headers={"Origin": "http://" + urlsplit(a.base_url).netloc})
            assert answer.status_code == 200 and "lifecycle_session=" in answer.headers.get("set-cookie", "")

            # portal B uninstalled: its frame (taken before) opens nothing; its open session loses its pages
            session_b = requests.Session()
            assert _open(session_b, b, user_id=1).status_code == 200
            assert session_b.get(f"{base}/ui/p/{name_b}/", timeout=20).status_code == 200
            late = b.open_placement("DEFAULT", send=False, user_id=1)
            b.uninstall_app(B24_CLIENT_ID)
            wait_for(lambda: service.workers.registry().get(name_b).state == "uninstalled", 30, "B uninstalled")
            answer = requests.post(late["url"], data=late["form"], allow_redirects=False, timeout=20)
            assert answer.status_code == 404 and "set-cookie" not in {k.lower() for k in answer.headers}
            assert session_b.get(f"{base}/ui/p/{name_b}/", timeout=20).status_code == 404

            # a password account (lifecycle users add) signs in on the many-portal dashboard as on the daemon's
            from connector.dashboard.auth import add_user

            add_user(engine, "ops@example.com", "admin", [], "correct-horse-battery")
            ops = requests.Session()
            login = ops.get(f"{base}/ui/login", timeout=20)
            assert login.status_code == 200 and login.headers["x-frame-options"] == "SAMEORIGIN"
            csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
            signed = ops.post(f"{base}/ui/login", data={"email": "ops@example.com", "password": "correct-horse-battery",
                                                      "csrf": csrf}, allow_redirects=False, timeout=20)
            assert signed.status_code == 303
            assert [p["portal"] for p in ops.get(f"{base}/api/v1/portals", timeout=20).json()] == [name_a]  # B is gone
            assert ops.get(f"{base}/ui/p/{name_a}/settings", timeout=20).status_code == 200

            # a session cookie cannot be made up or moved to another portal: the signature covers it
            admin = requests.Session()
            assert _open(admin, a, user_id=1).status_code == 200
            value = admin.cookies.get("lifecycle_session")
            payload, _, rest = value.partition(".")
            import base64
            import json

            data = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
            assert data["app"]["portal"] == name_a and data["app"]["admin"] is True
            assert not any(s in json.dumps(data) for s in secrets), "the cookie holds a token"
            data["app"]["portal"] = name_b
            forged = base64.b64encode(json.dumps(data).encode()).decode().rstrip("=") + "." + rest
            stolen = requests.Session()
            stolen.cookies.set("lifecycle_session", forged, domain="127.0.0.1", path="/")
            assert stolen.get(f"{base}/ui/p/{name_b}/", allow_redirects=False, timeout=20).status_code == 303  # sign in

            # an expired app session (signed with the service's key): a framable page saying so, no data
            import time

            import itsdangerous

            signer = itsdangerous.TimestampSigner(env["LIFECYCLE_SECRET_KEY"])
            expired = {"app": {**data["app"], "portal": name_a, "lang": "ru", "exp": int(time.time()) - 1}, "csrf": "c"}
            late_session = requests.Session()
            late_session.cookies.set("lifecycle_session", signer.sign(base64.b64encode(json.dumps(expired).encode()))
                                     .decode(), domain="127.0.0.1", path="/")
            answer = late_session.get(f"{base}/ui/p/{name_a}/", allow_redirects=False, timeout=20)
            assert answer.status_code == 401 and "Сеанс истёк" in answer.text and 'id="kpi"' not in answer.text
            _framed_by(answer, "http://" + urlsplit(a.base_url).netloc)
            assert late_session.get(f"{base}/api/v1/portals/{name_a}/overview", timeout=20).status_code == 401


def test_app_sessions_expire_and_stay_in_their_portal():
    from connector.dashboard import auth
    from connector.dashboard.web import APP_SESSION_SECONDS, app_user, open_app_session

    session: dict = {"uid": 7}
    open_app_session(session, portal="b24-aaaa", user_id=5, admin=False, lang="de", origin="https://x.bitrix24.ru",
                     now=1000.0)
    assert "uid" not in session and session["csrf"]
    user = app_user(session["app"], now=1000.0 + APP_SESSION_SECONDS - 1)
    assert user is not None and user["role"] == "viewer" and user["language"] == "ru"
    assert auth.may_see(user, "b24-aaaa") and not auth.may_see(user, "b24-bbbb")
    assert not auth.may_configure(user, "b24-aaaa")
    assert app_user(session["app"], now=1000.0 + APP_SESSION_SECONDS) is None  # expired
    open_app_session(session, portal="b24-aaaa", user_id=1, admin=True, lang="en", origin="https://x.bitrix24.ru")
    admin = app_user(session["app"])
    assert auth.may_configure(admin, "b24-aaaa") and not auth.may_see(admin, "b24-bbbb")  # admin of ONE portal
    assert app_user({"portal": "b24-aaaa"}) is None and app_user("junk") is None


def test_the_session_cookie_works_in_a_third_party_frame_over_https():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from connector.dashboard.web import session_middleware

    def opened(request):
        request.session["app"] = {"portal": "b24-aaaa"}
        return PlainTextResponse("ok")

    for secure, flags, absent in ((True, ("samesite=none", "secure", "partitioned", "httponly"), ()),
                                  (False, ("samesite=lax", "httponly"), ("secure", "samesite=none"))):
        app = Starlette(routes=[Route("/", opened)], middleware=session_middleware("k" * 32, secure=secure))
        cookie = TestClient(app, base_url="https://testserver").get("/").headers["set-cookie"].lower()
        parts = {p.strip() for p in cookie.split(";")}
        assert all(f in parts for f in flags) and not any(a in parts for a in absent), (secure, cookie)


def test_the_installation_page_registers_the_portal_and_finishes(postgres_url, tmp_path, monkeypatch):
    port = free_port()
    with running_portals(2, generate=(5, 5), limits=False) as sandbox:
        a, b = sandbox[0], sandbox[1]
        js = a.base_url + "/_sandbox/apps/bx24.js"
        env = app_env(tmp_path, port, LIFECYCLE_BITRIX24_OAUTH_URL=_oauth_url(sandbox), LIFECYCLE_BITRIX24_JS_URL=js)
        with web_service(postgres_url, env, port, monkeypatch) as service:
            base = f"http://127.0.0.1:{port}"
            engine = service.workers.registry().engine
            registry = service.workers.registry()

            # forged installation pages first: nothing is registered
            b.install_app(base + "/apps/bitrix24/install", mode="wizard", send=False, scope="crm,placement,user_brief",
                          client_id=B24_CLIENT_ID, client_secret=B24_CLIENT_SECRET)
            a_domain = urlsplit(a.base_url).netloc + urlsplit(a.base_url).path
            for what, change in (
                    ("made-up REFRESH_ID", lambda url, form: (url, {**form, "REFRESH_ID": "r" * 32})),
                    ("no REFRESH_ID", lambda url, form: (url, {k: v for k, v in form.items() if k != "REFRESH_ID"})),
                    ("portal A's DOMAIN", lambda url, form: (_query(url, DOMAIN=a_domain), form)),
                    ("another member id", lambda url, form: (url, {**form, "member_id": "1" * 32}))):
                frame = b.open_placement(install=True, send=False, user_id=1, lang="en")  # a fresh REFRESH_ID each
                assert urlsplit(frame["url"]).path == "/apps/bitrix24/install"
                secrets = [frame["form"]["AUTH_ID"], frame["form"]["REFRESH_ID"], frame["form"]["APPLICATION_TOKEN"],
                           B24_CLIENT_SECRET]
                url, form = change(frame["url"], frame["form"])
                answer = requests.post(url, data=form, timeout=20)
                assert answer.status_code in (401, 403), (what, answer.status_code)
                assert "installFinish" not in answer.text and answer.headers.get("x-frame-options") == "DENY"
                for secret in secrets:
                    assert secret not in answer.text, f"{what}: the answer repeats a secret"
                assert snapshot(engine, name_of(b.info["member_id"]))["portal"] is None, what

            # the portal POSTs its installation page's frame form while event.bind fails: registered, but the
            # page says so and does not finish the installation (the portal shows it again next time)
            a.control("POST", "faults", {"kind": "status", "method": "event.bind", "status": 500, "count": 1})
            answer = a.install_app(base + "/apps/bitrix24/install", mode="wizard", scope="crm,placement,user_brief",
                                   client_id=B24_CLIENT_ID, client_secret=B24_CLIENT_SECRET)
            delivery = answer["delivery"]
            assert delivery["status"] == 502 and "installFinish" not in delivery["response"]
            assert 'data-state="failed"' in delivery["response"]
            name = name_of(a.info["member_id"])
            assert registry.get(name).state == "active" and not _bound(a)
            # opened again: bound now, a page calling installFinish
            again = a.open_placement(install=True, user_id=1, lang="en")
            assert again["status"] == 200, again["body"][:300]
            page = again["body"]
            assert f'<script src="{js}"></script>' in page and "BX24.installFinish()" in page
            nonce = re.search(r'<script nonce="([^"]+)">', page).group(1)
            sent = a.open_placement(install=True, user_id=1, lang="ru")  # opened again (not finished yet)
            portal_headers = {k.lower(): v for k, v in sent["headers"].items()}
            assert sent["status"] == 200 and "Жизненный цикл: установка" in sent["body"]
            csp = portal_headers["content-security-policy"]
            origin = "http://" + urlsplit(a.base_url).netloc
            assert csp.endswith(f"frame-ancestors {origin}") and f"script-src {origin} 'nonce-" in csp
            assert "x-frame-options" not in portal_headers and nonce not in csp  # a fresh nonce per page
            assert registry.get(name).state == "active"
            assert _bound(a), "the events, the tab and the options are bound before installFinish is called (once)"
            assert registry.load(name).settings.daemon.bitrix24_application_token.get_secret_value() == \
                answer["application_token"]
            assert not _app(a)["installed"], "the portal counts it installed only after installFinish"
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT count(*) FROM procrastinate_jobs WHERE args->>'portal' = %(n)s",
                                            {"n": name}).scalar() >= 1  # the first sync is queued
            assert [p.name for p in registry.list()] == [name]
