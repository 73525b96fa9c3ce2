"""``lifecycle run --state-url URL``: the web side of a many-portal deployment (workers: connector/worker.py).

==========================================  =============================================================
GET  /healthz                               200 while the process runs
GET  /readyz                                200 when the state store and the job queue answer, else 503
GET  /status                                JSON: every portal with its state, running / queued, last run
                                            (status, duration, requests, error) and next run
GET  /metrics                               Prometheus text: per-portal state, last sync, failures in a
                                            row; the queue depth
POST /webhooks/bitrix24/<portal>            the portal's Bitrix24 outbound events (checks as the
                                            single-portal receiver: connector/http.py)
POST /webhooks/amocrm/<portal>/<secret>     the portal's amoCRM webhooks
/apps/bitrix24/..., /apps/amocrm/...        the connector as a Bitrix24 application and an amoCRM
                                            integration (connector/apps/bitrix24_app.py, amocrm_app.py)
/ui/..., /api/v1/...                        the dashboard over every registered portal (needs
                                            LIFECYCLE_SECRET_KEY); the Bitrix24 app's main page opens it
                                            scoped to one portal and user (connector/apps/app_session.py)
==========================================  =============================================================

``/status`` and ``/metrics`` want ``Authorization: Bearer <token>`` when ``LIFECYCLE_STATUS_TOKEN`` is set;
``/status`` is refused (403) while it is not set, since it names every client portal. An accepted webhook
defers a sync of its portal in ``[daemon] debounce_seconds`` (procrastinate ``schedule_in``; a sync already
queued absorbs it, so a burst yields at most one sync besides the one running). The answer never waits
for the queue longer than :data:`DEFER_WAIT` seconds (amoCRM gives up after 2 s): a slow or unreachable
database is logged and counted, the CRM still gets 200 and the portal's schedule catches up.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connector.http import (BodyRefused, ServiceServer, amocrm_verdict, bitrix24_verdict, parse_form, read_body,
                            text)

log = logging.getLogger("lifecycle.portals")
DEFER_WAIT = 1.0          # seconds a webhook answer waits for the queue at most
CONFIG_TTL = 10.0         # a portal's config is re-read from the registry after this long


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


class PortalService:
    """The many-portal web service: registry, job queue, status and webhooks over one PostgreSQL."""

    def __init__(self, url: str, *, host: str = "0.0.0.0", port: int = 8080, token: str | None = None,
                 key: str | None = None):
        from connector.worker import Workers

        self.url = url
        self.token = token if token is not None else os.environ.get("LIFECYCLE_STATUS_TOKEN") or None
        if self.token:
            from connector import logs

            logs.register_secrets([self.token])
        self.workers = Workers(url, key=key, pool_size=4)
        self.stop = threading.Event()
        self._configs: dict[str, tuple[float, Any]] = {}
        self._configs_lock = threading.Lock()
        self._defer_pool = ThreadPoolExecutor(4, thread_name_prefix="defer")
        self.webhooks: dict[tuple[str, str, str], int] = {}
        self._counts_lock = threading.Lock()
        self.server = ServiceServer(self, host=host, port=port, app=self.create_app())

    # -- data ----------------------------------------------------------------------------------------

    def config(self, portal: str) -> Any | None:
        """The portal's loaded config (cached briefly), or None when there is no such active portal."""
        from connector.config import ConfigError

        now = time.monotonic()
        with self._configs_lock:
            cached = self._configs.get(portal)
            if cached is not None and now - cached[0] < CONFIG_TTL:
                return cached[1]
        registry = self.workers.registry()
        try:
            if registry.get(portal).state == "uninstalled":
                return None
            loaded = registry.load(portal)
        except ConfigError:
            loaded = None
        with self._configs_lock:
            self._configs[portal] = (now, loaded)
        return loaded

    def status(self) -> dict[str, Any]:
        """Every portal: registry state, running / queued, last sync run, next run; and the queue."""
        import sqlalchemy as sa

        from connector.store.schema import runs

        registry = self.workers.registry()
        portals = registry.list()
        engine = registry.engine
        with engine.connect() as conn:
            jobs = conn.exec_driver_sql(
                "SELECT args->>'portal', status, count(*) FROM procrastinate_jobs WHERE task_name = %(t)s "
                "AND status IN ('todo', 'doing') GROUP BY 1, 2", {"t": "lifecycle.sync_portal"}).all()
            depth = dict(conn.exec_driver_sql(
                "SELECT status::text, count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing') "
                "GROUP BY 1").all())
            last_ids = sa.select(sa.func.max(runs.c.id)).where(runs.c.kind == "sync").group_by(runs.c.portal)
            last = {r.portal: r for r in conn.execute(sa.select(runs).where(runs.c.id.in_(last_ids)))}
        queue: dict[str, dict[str, int]] = {}
        for name, status, n in jobs:
            queue.setdefault(name, {})[status] = int(n)
        out = []
        for p in portals:
            run = last.get(p.name)
            last_run = None
            if run is not None:
                stats = json.loads(run.stats) if run.stats else {}
                duration = ((run.finished_at - run.started_at).total_seconds()
                            if run.finished_at is not None and run.started_at is not None else None)
                last_run = {"status": run.status, "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
                            "duration_seconds": duration,
                            "requests": sum(int(stats.get(k) or 0) for k in
                                            ("pull_requests", "writeback_requests", "action_requests")),
                            "error": run.error}
            q = queue.get(p.name, {})
            out.append({"portal": p.name, "kind": p.kind, "state": p.state, "running": q.get("doing", 0) > 0,
                        "queued": q.get("todo", 0) > 0, "failures_in_row": p.failures, "last_error": p.last_error,
                        "last_run": last_run, "last_run_at": _iso(p.last_run_at), "next_run_at": _iso(p.next_run_at)})
        return {"portals": out, "queue": {"todo": int(depth.get("todo", 0)), "doing": int(depth.get("doing", 0))}}

    def metrics_text(self) -> bytes:
        from connector.metrics import portfolio_metrics

        with self._counts_lock:
            webhooks = dict(self.webhooks)
        return portfolio_metrics(self.status(), webhooks)

    def ready(self) -> tuple[bool, str]:
        try:
            self.status()
        except Exception as exc:  # noqa: BLE001
            return False, f"state store or job queue unreachable: {type(exc).__name__}"
        return True, "ready"

    def count(self, portal: str, source: str, result: str) -> None:
        with self._counts_lock:
            key = (portal, source, result)
            self.webhooks[key] = self.webhooks.get(key, 0) + 1

    def forget(self, portal: str) -> None:
        """Drop the cached config of ``portal`` (installed, uninstalled or re-configured just now)."""
        with self._configs_lock:
            self._configs.pop(portal, None)

    # -- HTTP ----------------------------------------------------------------------------------------

    def authorized(self, request: Request) -> Response | None:
        """None when the request may see /status and /metrics; else the refusal."""
        if not self.token:
            if request.url.path == "/status":
                return JSONResponse({"status": 403, "error": "set LIFECYCLE_STATUS_TOKEN to serve /status"}, 403)
            return None
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return JSONResponse({"status": 401, "error": "send Authorization: Bearer <LIFECYCLE_STATUS_TOKEN>"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
        return None

    async def _defer(self, portal: str, config: Any) -> str:
        """Queue the webhook's sync; never waits longer than DEFER_WAIT."""
        delay = config.settings.daemon.debounce_seconds
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._defer_pool, lambda: self.workers.defer_sync(portal, "webhook", delay=delay))
        try:
            job = await asyncio.wait_for(asyncio.shield(future), DEFER_WAIT)
        except TimeoutError:
            log.warning("portal %s: the job queue did not answer within %.1f s; the webhook's sync is left to "
                        "the schedule if it fails", portal, DEFER_WAIT)
            return "queue_slow"
        except Exception as exc:  # noqa: BLE001 - the CRM still gets its 200
            from connector.logs import safe_error

            log.error("portal %s: could not queue the webhook's sync: %s", portal, safe_error(exc))
            return "queue_error"
        return "queued" if job is not None else "folded"

    def create_app(self) -> Starlette:
        async def healthz(_: Request) -> Response:
            return text(200, "ok\n")

        async def readyz(_: Request) -> Response:
            ok, why = await run_in_threadpool(self.ready)
            return text(200 if ok else 503, why + "\n")

        async def status(request: Request) -> Response:
            refused = self.authorized(request)
            if refused is not None:
                return refused
            return JSONResponse(await run_in_threadpool(self.status))

        async def metrics(request: Request) -> Response:
            refused = self.authorized(request)
            if refused is not None:
                return refused
            body = await run_in_threadpool(self.metrics_text)
            return Response(body, 200, media_type="text/plain; version=0.0.4; charset=utf-8")

        async def webhook(request: Request, source: str) -> Response:
            portal = request.path_params["portal"]
            try:
                form = parse_form(await read_body(request))
            except BodyRefused as refused:
                return refused.response
            try:
                config = await run_in_threadpool(self.config, portal)
            except Exception as exc:  # noqa: BLE001 - the registry unreachable: the CRM may retry
                from connector.logs import safe_error

                log.error("webhook for portal %s: registry unreachable: %s", portal, safe_error(exc))
                return text(503, "try again later\n")
            if config is None:
                self.count(portal[:64], source, "unknown_portal")
                return text(404, "no such portal\n")
            if source == "bitrix24":
                status_code, body, result = bitrix24_verdict(config, form)
            else:
                status_code, body, result = amocrm_verdict(config, form, request.path_params.get("secret", ""))
            self.count(portal, source, result)
            if status_code == 200:
                self.count(portal, source, await self._defer(portal, config))
            return text(status_code, body)

        async def bitrix24(request: Request) -> Response:
            return await webhook(request, "bitrix24")

        async def amocrm(request: Request) -> Response:
            return await webhook(request, "amocrm")

        async def not_found(_: Request, __: Exception) -> Response:
            return text(404, "not found\n")

        routes = [
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/status", status, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/webhooks/bitrix24/{portal}", bitrix24, methods=["POST"]),
            Route("/webhooks/amocrm/{portal}", amocrm, methods=["POST"]),
            Route("/webhooks/amocrm/{portal}/{secret:path}", amocrm, methods=["POST"]),
        ]
        from connector.apps.amocrm_app import AmoApp
        from connector.apps.app_session import RegistryPortals
        from connector.apps.bitrix24_app import Bitrix24App
        from connector.apps.common import Installations
        from connector.dashboard.web import build_many

        self.installations = Installations(self)
        # the dashboard over the registry (/ui, /api/v1): password accounts and the Bitrix24 app's sessions
        dashboard, self.dashboard, self.dashboard_middleware = build_many(
            RegistryPortals(self), self.url, self.installations.settings.public_url)
        self.bitrix24_app = Bitrix24App(self.installations)
        routes += self.bitrix24_app.routes() + AmoApp(self.installations).routes() + dashboard
        app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
        app.router.redirect_slashes = False
        return app

    def push_app_secrets(self) -> None:
        """A Bitrix24 application secret changed in the apps file or the environment reaches the installed
        portals' configs (logged, never fatal: the service still starts)."""
        from connector.logs import safe_error

        try:
            self.bitrix24_app.push_secrets()
        except Exception as exc:  # noqa: BLE001 - the portals keep their recorded secret; logged
            log.error("could not update the installed portals' application secrets: %s", safe_error(exc))

    # -- the process -------------------------------------------------------------------------------

    def run(self) -> int:
        from connector.worker import ensure_schema

        ensure_schema(self.url)
        self.workers.registry()  # migrate, check the key: fail at start
        self.push_app_secrets()
        self.workers.app.open()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        try:
            self.server.start()
            log.info("serving status, metrics and the portals' webhooks on port %s", self.server.port)
            while not self.stop.wait(1):
                pass
        finally:
            self.server.stop()
            self._defer_pool.shutdown(wait=False, cancel_futures=True)
            self.workers.app.close()
            self.workers.close()
        log.info("stopped")
        return 0
