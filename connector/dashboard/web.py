"""The dashboard's routes, mounted on the daemon's ASGI app (connector/http.py) at ``/ui`` and ``/api/v1``.

Pages (server-rendered, readable with JavaScript off, usable at phone width), per portal:

==========================================  ================================================================
GET  /ui/login, POST /ui/login              sign in (CSRF token, 5 attempts a minute per address + e-mail)
POST /ui/logout, POST /ui/language          sign out; the account's language (ru | en)
GET  /ui/                                   the portfolio (every portal the account may see)
GET  /ui/p/{portal}/                        overview: matrix, other segments (change on the week), KPI history
GET  /ui/p/{portal}/flows                   transition table between ``from`` and ``to``; a cell lists customers
GET  /ui/p/{portal}/segments/{segment}      members: sort, search, paging, CSV / XLSX export
GET  /ui/p/{portal}/customers/{id}          one customer: segments, history, features, actions, audiences
GET  /ui/p/{portal}/campaigns|audiences|runs
GET  /ui/p/{portal}/settings                the portal's settings (administrators only; 403 for viewers)
==========================================  ================================================================

Many-portal mode (:func:`build_many`, on ``lifecycle run --state-url``): the same pages over the portal
registry, and the Bitrix24 application's main page opens them as an *app session*: a session scoped to one
portal and one portal user (connector/apps/app_session.py), framed by that portal only.

JSON API (same data, same access rules; 401 without a session, 404 for a portal the account may not see):

==========================================================  ====================================================
GET /api/v1/portals                                         the portfolio
GET /api/v1/portals/{portal}/overview                       matrix, segments, KPI and its weekly history
GET /api/v1/portals/{portal}/trend?from=&to=                stored KPI points (weekly, plus each sync day)
GET /api/v1/portals/{portal}/flows?from=&to=                transitions between two dates (default 30 days)
GET /api/v1/portals/{portal}/flows/members?from=&to=&src=&dst=  the customers of one transition
GET /api/v1/portals/{portal}/segments/{segment}/members     ?sort=&order=asc|desc&q=&page=&size=
GET /api/v1/portals/{portal}/segments/{segment}/members.csv  (and .xlsx): every member, streamed
GET /api/v1/portals/{portal}/customers/{id}
GET /api/v1/portals/{portal}/campaigns                      per campaign totals, skips by reason, per rep, recent
GET /api/v1/portals/{portal}/campaigns/preview              the next run's actions (as ``lifecycle plan``)
GET /api/v1/portals/{portal}/audiences
GET /api/v1/portals/{portal}/runs
==========================================================  ====================================================

No secret (webhook URL, token, password hash) is rendered or served: CRM links use the host only.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route

from connector.dashboard import auth, queries
from connector.dashboard.i18n import translations
from connector.dashboard.labels import LANGUAGES, label
from connector.logs import safe_error

log = logging.getLogger("lifecycle.dashboard")
STATIC = Path(__file__).with_name("static")
SESSION_COOKIE = "lifecycle_session"
SESSION_SECONDS = 12 * 3600
MAX_FORM = 10_000


class Portals:
    """The portals this service shows: today the daemon's one; the many-portal registry plugs in here."""

    def __init__(self, daemon: Any):
        self.daemon = daemon
        self._stores: dict[str, Any] = {}
        self._lock = threading.Lock()

    def configs(self) -> dict[str, Any]:
        config = self.daemon.config
        return {config.crm.name: config}

    def config(self, portal: str) -> Any | None:
        return self.configs().get(portal)

    def default_language(self) -> str:
        return self.daemon.config.settings.ui.language

    def status(self, portal: str) -> Any | None:
        """The registry row (state, last and next run, last error); the single-portal daemon has none."""
        return None

    def store(self, portal: str) -> Any:
        from connector.store import StateStore

        with self._lock:
            if portal not in self._stores:
                self._stores[portal] = StateStore.open(self.configs()[portal].state_url, portal)
            return self._stores[portal]

    def users_engine(self) -> Any:
        return self.store(next(iter(self.configs()))).engine


class Dashboard:
    def __init__(self, daemon: Any = None, portals: Any = None):
        self.portals = portals if portals is not None else Portals(daemon)
        self.throttle = auth.LoginThrottle()
        self.envs = {}
        for lang in LANGUAGES:
            env = Environment(loader=PackageLoader("connector.dashboard", "templates"),
                              autoescape=select_autoescape(["html"]), extensions=["jinja2.ext.i18n"])
            env.install_gettext_translations(translations(lang), newstyle=True)  # type: ignore[attr-defined]
            env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}%"
            env.filters["num"] = lambda v: "–" if v is None else (f"{v:,.0f}".replace(",", "\u202f") if isinstance(v, (int, float)) else v)
            self.envs[lang] = env

    # -- who is asking -----------------------------------------------------------------------------

    def user(self, request: Request) -> dict[str, Any] | None:
        app = request.session.get("app")
        if app is not None:
            return app_user(app)
        uid = request.session.get("uid")
        if not isinstance(uid, int):
            return None
        return auth.get_user(self.portals.users_engine(), uid)

    def language(self, request: Request, user: dict[str, Any] | None) -> str:
        if user and user.get("language") in LANGUAGES:
            return user["language"]
        return self.portals.default_language()

    def portal(self, request: Request, user: dict[str, Any]) -> tuple[str, Any, Any]:
        """(name, config, store) of the portal in the path, 404 if unknown or not granted to ``user``."""
        name = request.path_params["portal"]
        if not auth.may_see(user, name):
            raise HTTPException(404, "no such portal")
        config = self.portals.config(name)
        if config is None:
            raise HTTPException(404, "no such portal")
        return name, config, self.portals.store(name)

    def visible(self, user: dict[str, Any]) -> dict[str, Any]:
        if user.get("scope"):  # an app session: its portal only
            config = self.portals.config(user["scope"])
            return {user["scope"]: config} if config is not None else {}
        return {n: c for n, c in self.portals.configs().items() if auth.may_see(user, n)}

    def settings_rows(self, name: str, config: Any) -> list[tuple[str, str]]:
        """The portal's settings as (key, value) rows for administrators; no secret among them."""
        schedule = config.settings.schedule
        rows = [("customer", config.crm.customer), ("schedule", schedule.every or ", ".join(schedule.at) or "1h"),
                ("timezone", str(config.crm.timezone)), ("rules", str(len(config.rules.segment_names)))]
        row = self.portals.status(name)
        if row is not None:
            rows = [("state", row.state), *rows,
                    ("last_run", row.last_run_at.isoformat(timespec="minutes") if row.last_run_at else "–"),
                    ("next_run", row.next_run_at.isoformat(timespec="minutes") if row.next_run_at else "–"),
                    ("last_error", row.last_error or "–")]
        return rows

    def overview(self, request: Request, user: dict[str, Any], name: str, config: Any, store: Any) -> Response:
        """The portal's overview; an app session also gets the settings (administrators) or a read-only note."""
        lang = self.language(request, user)
        data = queries.overview(store, config, lang)
        from connector.dashboard.charts import kpi_chart

        chart = kpi_chart(data["history"], data["kpi"]["target"], translations(lang).gettext("Active base")) if data["history"] else None
        settings = self.settings_rows(name, config) if user.get("app") and auth.may_configure(user, name) else None
        return self.page(request, "overview.html", user, portal=name, config=config, data=data, chart=chart,
                         settings=settings)

    # -- rendering -----------------------------------------------------------------------------------

    def page(self, request: Request, template: str, user: dict[str, Any] | None, status: int = 200, *,
             frame_origin: str | None = None, lang: str | None = None, **ctx: Any) -> Response:
        lang = lang if lang in LANGUAGES else self.language(request, user)
        frame_origin = frame_origin or (user.get("origin") if user else None)
        env = self.envs[lang]
        body = env.get_template(template).render(
            user=user, lang=lang, csrf=auth.csrf_token(request.session), path=request.url.path,
            may_configure=bool(user and ctx.get("portal") and auth.may_configure(user, ctx["portal"])),
            query=str(request.url.query), portals=sorted(self.visible(user)) if user else [],
            label=lambda s, cfg=ctx.get("config"): label(s, lang, dict(cfg.settings.labels) if cfg else None),
            url=lambda **kw: "?" + urlencode({**dict(request.query_params), **{k: v for k, v in kw.items() if v is not None}}),
            **ctx)
        csp = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; script-src 'none'"
        if frame_origin:  # an app session: framed by its portal only, nothing else
            return Response(body, status, media_type="text/html; charset=utf-8", headers={
                "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": f"{csp}; frame-ancestors {frame_origin}"})
        return Response(body, status, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "SAMEORIGIN",
                                 "Content-Security-Policy": csp})


# -- app sessions (the Bitrix24 application's main page: connector/apps/app_session.py) ------------------

APP_SESSION_SECONDS = 3600  # as long as the frame's AUTH_ID lives; opening the app again starts a new one


def open_app_session(session: dict[str, Any], *, portal: str, user_id: int, admin: bool, lang: str,
                     origin: str, now: float | None = None) -> None:
    """Replace whatever the cookie held with a session of ``user_id`` of ``portal`` (no token is kept in it:
    the cookie is signed, not encrypted)."""
    session.clear()
    session["app"] = {"portal": portal, "user": int(user_id), "admin": bool(admin),
                      "lang": lang if lang in LANGUAGES else "ru", "origin": origin,
                      "exp": int((time.time() if now is None else now) + APP_SESSION_SECONDS)}
    auth.csrf_token(session)


def app_user(app: Any, now: float | None = None) -> dict[str, Any] | None:
    """The account of an app session, scoped to its portal; None when malformed or expired."""
    if not isinstance(app, dict) or not isinstance(app.get("portal"), str) or not isinstance(app.get("exp"), int):
        return None
    if app["exp"] <= (time.time() if now is None else now):
        return None
    return {"id": None, "email": f"Bitrix24 #{app.get('user')}", "role": "admin" if app.get("admin") else "viewer",
            "portals": [app["portal"]], "scope": app["portal"], "language": app.get("lang"),
            "origin": app.get("origin"), "app": True}


def session_middleware(key: str, *, secure: bool) -> list[Middleware]:
    """The session cookie. ``secure`` (the service is reached over https): ``SameSite=None; Secure;
    Partitioned`` so it works inside the CRM's third-party frame; over plain http browsers drop
    ``SameSite=None`` cookies, so it is ``Lax`` there (loopback tests frame from the same site)."""
    import inspect

    options: dict[str, Any] = {"same_site": "none", "https_only": True} if secure else {"same_site": "lax",
                                                                                         "https_only": False}
    if secure and "partitioned" in inspect.signature(SessionMiddleware.__init__).parameters:
        options["partitioned"] = True
    return [Middleware(SessionMiddleware, secret_key=key, session_cookie=SESSION_COOKIE, max_age=SESSION_SECONDS,
                       **options)]


def _dates(request: Request, config: Any) -> tuple[date, date]:
    """``from``/``to`` of a flows request; by default the 30 days up to the portal's today (its time zone: the
    runs record each day's segments under the portal's date, which is not the server's every evening)."""
    from connector.pipeline import today_in

    today = today_in(config.crm.timezone)
    try:
        end = date.fromisoformat(request.query_params.get("to") or today.isoformat())
        start = date.fromisoformat(request.query_params.get("from") or (end - timedelta(days=30)).isoformat())
    except ValueError:
        raise HTTPException(400, "from and to must be dates: YYYY-MM-DD") from None
    if start > end:
        raise HTTPException(400, "from must not be after to")
    return start, end


def _members_args(request: Request) -> dict[str, Any]:
    q = request.query_params
    try:
        page = max(int(q.get("page", "1")), 1)
        size = int(q.get("size", "50"))
    except ValueError:
        raise HTTPException(400, "page and size must be whole numbers") from None
    if size not in queries.PAGE_SIZES:
        raise HTTPException(400, f"size must be one of {', '.join(map(str, queries.PAGE_SIZES))}")
    sort = q.get("sort", "customer_id")
    if sort not in queries.MEMBER_COLUMNS:
        raise HTTPException(400, f"sort must be one of {', '.join(queries.MEMBER_COLUMNS)}")
    return {"sort": sort, "descending": q.get("order") == "desc", "search": q.get("q") or None, "page": page, "size": size}


def build(daemon: Any) -> list[BaseRoute]:
    """The ``/ui`` and ``/api/v1`` mounts for the daemon's app; none when the dashboard cannot run (logged)."""
    config = getattr(daemon, "config", None)
    if config is None or not hasattr(config, "settings"):
        return []
    try:
        key = auth.secret_key(config.state_url)
    except Exception as exc:  # noqa: BLE001 - the daemon still serves health, metrics and webhooks
        log.warning("dashboard disabled: %s", safe_error(exc))
        return []
    return routes(Dashboard(daemon), session_middleware(key, secure=False))


def build_many(portals: Any, state_url: str, public_url: str | None) -> tuple[list[BaseRoute], Dashboard | None, list[Middleware]]:
    """The dashboard over the many-portal registry (``portals``: connector/apps/app_session.RegistryPortals):
    routes, the Dashboard and the session middleware (the app's main page opens sessions with it); no routes
    when there is no session key (logged)."""
    try:
        key = auth.secret_key(state_url)
    except Exception as exc:  # noqa: BLE001 - the service still serves status, webhooks and the apps
        log.warning("dashboard disabled: %s", safe_error(exc))
        return [], None, []
    dash = Dashboard(portals=portals)
    middleware = session_middleware(key, secure=bool(public_url and public_url.startswith("https://")))
    return routes(dash, middleware), dash, middleware


def routes(dash: Dashboard, middleware: list[Middleware]) -> list[BaseRoute]:
    """The ``/ui`` and ``/api/v1`` mounts of ``dash``."""

    # -- pages -------------------------------------------------------------------------------------

    def signed_in(request: Request) -> dict[str, Any]:
        user = dash.user(request)
        if user is None:
            raise HTTPException(303, "sign in")
        return user

    async def login_form(request: Request) -> Response:
        return await run_in_threadpool(dash.page, request, "login.html", None, error=None, email="")

    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10)
        email = str(form.get("email", ""))[:254]
        password = str(form.get("password", ""))[:1024]
        if not auth.csrf_ok(request.session, form.get("csrf")):
            return await run_in_threadpool(dash.page, request, "login.html", None, 403, error="csrf", email=email)
        address = auth.client_address(request)
        if not dash.throttle.allow(address, email):
            log.warning("dashboard login throttled for a client (too many attempts)")
            return await run_in_threadpool(dash.page, request, "login.html", None, 429, error="throttled", email=email)
        user = await run_in_threadpool(auth.authenticate, dash.portals.users_engine(), email, password)
        if user is None:
            log.info("dashboard login refused (wrong e-mail or password)")
            return await run_in_threadpool(dash.page, request, "login.html", None, 401, error="wrong", email=email)
        dash.throttle.reset(address, email)
        request.session.clear()
        request.session["uid"] = user["id"]
        auth.csrf_token(request.session)
        return RedirectResponse("/ui/", 303)

    async def logout(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10)
        if not auth.csrf_ok(request.session, form.get("csrf")):
            raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")
        request.session.clear()
        return RedirectResponse("/ui/login", 303)

    async def set_language(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10)
        user = await run_in_threadpool(signed_in, request)
        if not auth.csrf_ok(request.session, form.get("csrf")):
            raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")
        lang = str(form.get("language", ""))
        if user.get("app"):  # an app session keeps its language in the session
            request.session["app"] = {**request.session["app"], "lang": lang if lang in LANGUAGES else "ru"}
        else:
            await run_in_threadpool(auth.set_language, dash.portals.users_engine(), user["id"],
                                    lang if lang in LANGUAGES else None)
        back = str(form.get("next", "/ui/"))
        return RedirectResponse(back if back.startswith("/ui/") else "/ui/", 303)

    def portfolio_page(request: Request) -> Response:
        user = signed_in(request)
        rows = [queries.portfolio_entry(dash.portals.store(n), c) for n, c in sorted(dash.visible(user).items())]
        if len(rows) == 1 and (user["role"] != "admin" or user.get("scope")):
            return RedirectResponse(f"/ui/p/{rows[0]['portal']}/", 303)
        return dash.page(request, "portfolio.html", user, rows=rows)

    def overview_page(request: Request) -> Response:
        user = signed_in(request)
        return dash.overview(request, user, *dash.portal(request, user))

    def settings_page(request: Request) -> Response:
        user = signed_in(request)
        name, config, _ = dash.portal(request, user)
        if not auth.may_configure(user, name):
            raise HTTPException(403, "the settings are for administrators")
        return dash.page(request, "settings.html", user, portal=name, config=config,
                         settings=dash.settings_rows(name, config))

    def flows_page(request: Request) -> Response:
        user = signed_in(request)
        name, config, store = dash.portal(request, user)
        start, end = _dates(request, config)
        data = queries.flows(store, start, end)
        table = {(t["from"], t["to"]): t["customers"] for t in data["transitions"]}
        src, dst = request.query_params.get("src"), request.query_params.get("dst")
        listed = None
        if src and dst:
            ids = queries.flow_members(store, start, end, src, dst)
            listed = {"src": src, "dst": dst, "ids": ids}
        return dash.page(request, "flows.html", user, portal=name, config=config, data=data, table=table, listed=listed,
                         start=start.isoformat(), end=end.isoformat())

    def members_page(request: Request) -> Response:
        user = signed_in(request)
        name, config, store = dash.portal(request, user)
        segment = request.path_params["segment"]
        if segment not in config.rules.segment_names:
            raise HTTPException(404, "no such segment")
        args = _members_args(request)
        data = queries.members_page(store, segment, **args)
        pages = max((data["total"] + args["size"] - 1) // args["size"], 1)
        return dash.page(request, "members.html", user, portal=name, config=config, segment=segment, data=data,
                         pages=pages, custom=list(config.rules.fields), args=args, reps=store.user_names(),
                         crm_url=lambda cid: queries.crm_customer_url(config, cid))

    def customer_page(request: Request) -> Response:
        user = signed_in(request)
        name, config, store = dash.portal(request, user)
        data = queries.customer(store, config, int(request.path_params["customer"]), dash.language(request, user))
        if data is None:
            raise HTTPException(404, "no such customer")
        return dash.page(request, "customer.html", user, portal=name, config=config, data=data, reps=store.user_names())

    def campaigns_page(request: Request) -> Response:
        user = signed_in(request)
        name, config, store = dash.portal(request, user)
        preview = None
        if request.query_params.get("preview"):
            preview = _preview(config)
        from connector.campaign_report import campaign_results

        results = {r["campaign"]: r for r in campaign_results(config, store)} if config.settings.campaign else {}
        return dash.page(request, "campaigns.html", user, portal=name, config=config,
                         data=queries.campaigns(store, config), preview=preview, reps=store.user_names(), results=results)

    def audiences_page(request: Request) -> Response:
        user = signed_in(request)
        name, config, store = dash.portal(request, user)
        return dash.page(request, "audiences.html", user, portal=name, config=config,
                         data=queries.audiences(store, config, dash.language(request, user)))

    def runs_page(request: Request) -> Response:
        user = signed_in(request)
        name, config, store = dash.portal(request, user)
        return dash.page(request, "runs.html", user, portal=name, config=config, data=queries.run_history(store))

    def style(_: Request) -> Response:
        return FileResponse(STATIC / "style.css", media_type="text/css")

    async def ui_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        if status == 303:
            expired = request.session.get("app")
            if isinstance(expired, dict) and isinstance(expired.get("origin"), str):
                # an app session ran out inside the portal's frame: say so there (a login page is not framable)
                return await run_in_threadpool(dash.page, request, "error.html", None, 401, status_code=401,
                                               message="expired", frame_origin=expired["origin"],
                                               lang=expired.get("lang"))
            nxt = request.url.path if request.method == "GET" else "/ui/"
            return RedirectResponse("/ui/login?" + urlencode({"next": nxt}), 303)
        user = await run_in_threadpool(dash.user, request)
        return await run_in_threadpool(dash.page, request, "error.html", user, status, status_code=status,
                                       message=getattr(exc, "detail", "error"))

    ui = Starlette(routes=[
        Route("/", portfolio_page, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/language", set_language, methods=["POST"]),
        Route("/static/style.css", style, methods=["GET"]),
        Route("/p/{portal}/", overview_page, methods=["GET"]),
        Route("/p/{portal}/flows", flows_page, methods=["GET"]),
        Route("/p/{portal}/segments/{segment}", members_page, methods=["GET"]),
        Route("/p/{portal}/customers/{customer:int}", customer_page, methods=["GET"]),
        Route("/p/{portal}/campaigns", campaigns_page, methods=["GET"]),
        Route("/p/{portal}/audiences", audiences_page, methods=["GET"]),
        Route("/p/{portal}/runs", runs_page, methods=["GET"]),
        Route("/p/{portal}/settings", settings_page, methods=["GET"]),
    ], middleware=middleware, exception_handlers={HTTPException: ui_error})
    ui.router.redirect_slashes = False

    # -- the JSON API ----------------------------------------------------------------------------------

    def api_user(request: Request) -> dict[str, Any]:
        user = dash.user(request)
        if user is None:
            raise HTTPException(401, "sign in at /ui/login first (the API uses the dashboard's session cookie)")
        return user

    def api(fn):  # noqa: ANN001, ANN202 - a route body returning JSON-ready data
        def endpoint(request: Request) -> Response:
            user = api_user(request)
            ctx = dash.portal(request, user) if "portal" in request.path_params else (None, None, None)
            out = fn(request, user, *ctx)
            return out if isinstance(out, Response) else JSONResponse(out)
        return endpoint

    def segment_of(request: Request, config: Any) -> str:
        segment = request.path_params["segment"]
        if segment not in config.rules.segment_names:
            raise HTTPException(404, "no such segment")
        return segment

    @api
    def api_portals(request, user, *_):  # noqa: ANN001, ANN202
        return [queries.portfolio_entry(dash.portals.store(n), c) for n, c in sorted(dash.visible(user).items())]

    @api
    def api_overview(request, user, name, config, store):  # noqa: ANN001, ANN202
        return queries.overview(store, config, dash.language(request, user))

    @api
    def api_trend(request, user, name, config, store):  # noqa: ANN001, ANN202
        q = request.query_params
        try:
            start = date.fromisoformat(q["from"]) if q.get("from") else None
            end = date.fromisoformat(q["to"]) if q.get("to") else None
        except ValueError:
            raise HTTPException(400, "from and to must be dates: YYYY-MM-DD") from None
        return {"portal": name, "points": queries.trend_points(store, start, end)}

    @api
    def api_flows(request, user, name, config, store):  # noqa: ANN001, ANN202
        start, end = _dates(request, config)
        return queries.flows(store, start, end)

    @api
    def api_flow_members(request, user, name, config, store):  # noqa: ANN001, ANN202
        start, end = _dates(request, config)
        src, dst = request.query_params.get("src"), request.query_params.get("dst")
        states = [*queries.FLOW_STATES, queries.ABSENT]
        if src not in states or dst not in states:
            raise HTTPException(400, f"src and dst must be one of {', '.join(states)}")
        return {"from": start.isoformat(), "to": end.isoformat(), "src": src, "dst": dst,
                "customers": queries.flow_members(store, start, end, src, dst)}

    @api
    def api_members(request, user, name, config, store):  # noqa: ANN001, ANN202
        return queries.members_page(store, segment_of(request, config), **_members_args(request))

    def export_args(request: Request, config: Any) -> tuple[str, dict[str, Any], list[str]]:
        args = _members_args(request)
        args.pop("page"), args.pop("size")
        return segment_of(request, config), args, list(config.rules.fields)

    def header(custom: list[str]) -> list[str]:
        return [*queries.MEMBER_COLUMNS, *custom]

    def line(row: dict[str, Any], custom: list[str]) -> list[Any]:
        return [row[c] for c in queries.MEMBER_COLUMNS] + [row["custom"].get(c) for c in custom]

    @api
    def api_export_csv(request, user, name, config, store):  # noqa: ANN001, ANN202
        segment, args, custom = export_args(request, config)

        def lines():
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(header(custom))
            for n, row in enumerate(queries.iter_members(store, segment, **args), 1):
                writer.writerow(line(row, custom))
                if n % 2000 == 0:
                    yield buf.getvalue().encode()
                    buf.seek(0)
                    buf.truncate()
            yield buf.getvalue().encode()

        return StreamingResponse(lines(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{name}-{segment}.csv"', "Cache-Control": "no-store"})

    @api
    def api_export_xlsx(request, user, name, config, store):  # noqa: ANN001, ANN202
        import xlsxwriter

        segment, args, custom = export_args(request, config)
        fd, path = tempfile.mkstemp(suffix=".xlsx", prefix="lifecycle-export-")
        os.close(fd)
        book = xlsxwriter.Workbook(path, {"constant_memory": True, "strings_to_numbers": False,
                                          "strings_to_formulas": False, "strings_to_urls": False})
        sheet = book.add_worksheet(segment[:31])
        sheet.write_row(0, 0, header(custom))
        for n, row in enumerate(queries.iter_members(store, segment, **args), 1):
            sheet.write_row(n, 0, ["" if v is None else v for v in line(row, custom)])
        book.close()
        return FileResponse(path, filename=f"{name}-{segment}.xlsx", background=BackgroundTask(os.unlink, path),
                            media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")

    @api
    def api_customer(request, user, name, config, store):  # noqa: ANN001, ANN202
        data = queries.customer(store, config, int(request.path_params["customer"]), dash.language(request, user))
        if data is None:
            raise HTTPException(404, "no such customer")
        return data

    @api
    def api_campaigns(request, user, name, config, store):  # noqa: ANN001, ANN202
        from connector.campaign_report import campaign_results

        return {"portal": name, "campaigns": queries.campaigns(store, config),
                "results": campaign_results(config, store) if config.settings.campaign else []}

    @api
    def api_preview(request, user, name, config, store):  # noqa: ANN001, ANN202
        return {"portal": name, "actions": _preview(config)}

    @api
    def api_audiences(request, user, name, config, store):  # noqa: ANN001, ANN202
        return {"portal": name, "audiences": queries.audiences(store, config, dash.language(request, user))}

    @api
    def api_runs(request, user, name, config, store):  # noqa: ANN001, ANN202
        return {"portal": name, "runs": queries.run_history(store)}

    async def api_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return JSONResponse({"status": status, "error": getattr(exc, "detail", "error")}, status)

    p = "/portals/{portal}"
    api_app = Starlette(routes=[
        Route("/portals", api_portals, methods=["GET"]),
        Route(p + "/overview", api_overview, methods=["GET"]),
        Route(p + "/trend", api_trend, methods=["GET"]),
        Route(p + "/flows", api_flows, methods=["GET"]),
        Route(p + "/flows/members", api_flow_members, methods=["GET"]),
        Route(p + "/segments/{segment}/members", api_members, methods=["GET"]),
        Route(p + "/segments/{segment}/members.csv", api_export_csv, methods=["GET"]),
        Route(p + "/segments/{segment}/members.xlsx", api_export_xlsx, methods=["GET"]),
        Route(p + "/customers/{customer:int}", api_customer, methods=["GET"]),
        Route(p + "/campaigns", api_campaigns, methods=["GET"]),
        Route(p + "/campaigns/preview", api_preview, methods=["GET"]),
        Route(p + "/audiences", api_audiences, methods=["GET"]),
        Route(p + "/runs", api_runs, methods=["GET"]),
    ], middleware=middleware, exception_handlers={HTTPException: api_error})
    api_app.router.redirect_slashes = False
    return [Mount("/ui", app=ui), Mount("/api/v1", app=api_app)]


def _preview(config: Any) -> list[dict[str, Any]]:
    """The rows of ``lifecycle plan`` (what the next run would do), without the title's personal text."""
    from connector.pipeline import preview_plan

    return [{k: r[k] for k in ("campaign", "action", "customer_id", "key", "skip_reason", "responsible_id", "origin", "due")}
            for r in preview_plan(config, pull=False)]
