"""The daemon's HTTP service: an ASGI application (Starlette) served by uvicorn in a background thread.

==============================  ===================================================================
GET  /healthz                   200 while the process runs
GET  /readyz                    200 when the state store answers and the last sync did not fail, else 503
GET  /metrics                   Prometheus text format
POST /webhooks/bitrix24         Bitrix24 outbound events (form-encoded): ONCRMCONTACT|COMPANY|DEAL ADD,
                                UPDATE, DELETE; ``auth[application_token]`` must equal
                                ``[daemon] bitrix24_application_token`` (401 otherwise, nothing changes)
POST /webhooks/amocrm/<secret>  amoCRM webhooks (form-encoded ``contacts|companies|leads[add|update|
                                delete|status|...][i][id]``); the path must carry
                                ``[daemon] amocrm_webhook_secret`` (amoCRM signs nothing; 401 otherwise)
==============================  ===================================================================

Bodies that are not what the CRM sends get 400 and a log line without their secrets. The routes answer
plain text, as before; a wrong method or path is 404 ``not found``.

Hostile or broken clients get a JSON answer ``{"status": ..., "error": "..."}`` with ``Connection: close``
and cost neither memory nor other clients' time:

* ``Content-Length`` that is negative or not a number (``-1``, ``abc``) or two different ones: 400, from
  the HTTP parser (h11) before any body is read.
* A webhook without ``Content-Length`` and not chunked: 411.
* A declared length over :data:`MAX_BODY` (1 MB): 413 without reading; a chunked body, or one sent on a
  connection that keeps going, is counted while it is read and refused with 413 as soon as the count
  passes the cap.
* A body not complete within ``body_timeout`` seconds: 408; request line and headers not complete within
  ``header_timeout`` seconds (a byte-by-byte sender or an idle half-request): 408 and the connection closed.
* More than ``max_connections`` open connections: the oldest one that is idle or still sending its head
  makes way (503 if it sent part of a request); if every one is serving a request, the newcomer gets 503.
* A request head still incomplete past 16 KB: 400 from the parser (one that arrives whole in a single read,
  at most 256 KB, is parsed).

The event loop does no blocking work: ``ready()`` (which opens the state store) runs in a worker thread,
``crm_changed()`` and the metrics rendering only take short locks. Syncs run in the daemon's main thread.
Later services (the dashboard, CRM apps) mount on :attr:`ServiceServer.app`. No access log: paths carry
secrets.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import resource
import socket
import threading
import time
from typing import Any
from urllib.parse import parse_qsl

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("lifecycle.http")

BITRIX_EVENTS = {f"ONCRM{entity}{action}" for entity in ("CONTACT", "COMPANY", "DEAL")
                 for action in ("ADD", "UPDATE", "DELETE")}
AMO_KEY = re.compile(r"^(contacts|companies|leads)\[(add|update|delete|restore|status|responsible|note)\]\[\d+\]\[id\]$")
MAX_BODY = 1_000_000
MAX_HEAD = 16_384            # request line + headers (h11's incomplete-event limit)
BODY_TIMEOUT = 30.0          # seconds to receive a whole body
HEADER_TIMEOUT = 10.0        # seconds to receive the request line and headers
KEEP_ALIVE = 5.0             # an idle keep-alive connection closes after this long
MAX_CONNECTIONS = 1000
TEXT = "text/plain; charset=utf-8"
REASONS = {400: "Bad Request", 408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
           503: "Service Unavailable"}


def problem(status: int, error: str) -> Response:
    """A refusal of the transport (length, size, time, load): JSON, and the connection closes after it."""
    return Response(json.dumps({"status": status, "error": error}) + "\n", status,
                    media_type="application/json", headers={"Connection": "close"})


def raw_problem(status: int, error: str) -> bytes:
    """The same answer as :func:`problem`, as bytes, for the places below the ASGI application."""
    body = (json.dumps({"status": status, "error": error}) + "\n").encode()
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class BodyRefused(Exception):
    def __init__(self, response: Response):
        self.response = response


async def read_body(request: Request, *, limit: int = MAX_BODY, timeout: float = BODY_TIMEOUT) -> bytes:
    """The whole body, at most ``limit`` bytes within ``timeout`` seconds; :class:`BodyRefused` otherwise."""
    length = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if length is None and not chunked:
        raise BodyRefused(problem(411, "Content-Length required: send the form-encoded body with its length"))
    if length is not None and not re.fullmatch(r"[0-9]+", length.strip()):  # h11 refuses these first; a guard
        raise BodyRefused(problem(400, "Content-Length must be a non-negative decimal number"))
    if length is not None and int(length) > limit:
        raise BodyRefused(problem(413, f"body too large: at most {limit} bytes"))

    async def collect() -> bytes:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise BodyRefused(problem(413, f"body too large: at most {limit} bytes"))
        return bytes(data)

    try:
        return await asyncio.wait_for(collect(), timeout)
    except TimeoutError:
        raise BodyRefused(problem(408, f"the body did not arrive within {timeout:g} seconds")) from None
    except ClientDisconnect:
        raise BodyRefused(problem(400, "the client went away before the body was complete")) from None


def parse_form(raw: bytes) -> dict[str, str] | None:
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw)))
    except (UnicodeDecodeError, ValueError):
        return None


def text(status: int, body: str) -> Response:
    return Response(body, status, media_type=TEXT)


def bitrix24_verdict(config: Any, form: dict[str, str] | None) -> tuple[int, str, str]:
    """(HTTP status, plain-text answer, metrics result) for a Bitrix24 outbound event to the portal of
    ``config``: 200 means it is authentic and a sync should follow. Used by the single-portal daemon and
    the many-portal service (connector/portals_web.py) alike."""
    expected = config.settings.daemon.bitrix24_application_token
    if expected is None or config.crm.kind != "bitrix24":
        return 404, "the Bitrix24 webhook receiver is not configured\n", "not_configured"
    if form is None or "event" not in form:
        log.warning("Bitrix24 webhook refused: not a form-encoded outbound event")
        return (400, "expected a form-encoded Bitrix24 outbound event (event=..., auth[application_token]=...)\n",
                "malformed")
    token = form.get("auth[application_token]", "")
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        log.warning("Bitrix24 webhook refused: wrong application_token (event %s)", form.get("event", "")[:40])
        return 401, "wrong application_token\n", "unauthorized"
    event = form["event"].strip().upper()
    if event not in BITRIX_EVENTS:
        log.warning("Bitrix24 webhook refused: event %r is not one this receiver handles", event[:40])
        return 400, f"unsupported event; expected one of {', '.join(sorted(BITRIX_EVENTS))}\n", "malformed"
    record = form.get("data[FIELDS][ID]", "")
    if not record.isdigit():
        return 400, "data[FIELDS][ID] is missing or not a number\n", "malformed"
    log.info("Bitrix24 %s for record %s: an incremental sync follows", event, record)
    return 200, "ok\n", "accepted"


def amocrm_verdict(config: Any, form: dict[str, str] | None, secret: str) -> tuple[int, str, str]:
    """As :func:`bitrix24_verdict`, for an amoCRM webhook whose path carried ``secret``."""
    expected = config.settings.daemon.amocrm_webhook_secret
    if expected is None or config.crm.kind != "amocrm":
        return 404, "the amoCRM webhook receiver is not configured\n", "not_configured"
    if not hmac.compare_digest(secret.encode(), expected.get_secret_value().encode()):
        log.warning("amoCRM webhook refused: wrong secret in the path")
        return 401, "unknown webhook\n", "unauthorized"
    keys = [k for k in (form or {}) if AMO_KEY.match(k)]
    if form is None or not keys:
        log.warning("amoCRM webhook refused: no contacts/companies/leads event in the body")
        return 400, "expected form-encoded amoCRM webhook fields such as leads[update][0][id]=...\n", "malformed"
    log.info("amoCRM webhook with %d changed records: an incremental sync follows", len(keys))
    return 200, "ok\n", "accepted"


def create_app(daemon: Any, *, body_timeout: float = BODY_TIMEOUT) -> Starlette:
    """The daemon's routes; ``daemon`` needs ``config``, ``metrics``, ``ready()`` and ``crm_changed()``."""

    def count(source: str, result: str) -> None:
        daemon.metrics.webhooks.labels(daemon.metrics.portal, source, result).inc()

    async def healthz(_: Request) -> Response:
        return text(200, "ok\n")

    async def readyz(_: Request) -> Response:
        ok, why = await run_in_threadpool(daemon.ready)
        return text(200 if ok else 503, why + "\n")

    async def metrics(_: Request) -> Response:
        return Response(daemon.metrics.render(), 200, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def bitrix24(request: Request) -> Response:
        try:
            form = parse_form(await read_body(request, timeout=body_timeout))
        except BodyRefused as refused:
            return refused.response
        status, body, result = bitrix24_verdict(daemon.config, form)
        count("bitrix24", result)
        if status == 200:
            daemon.crm_changed()
        return text(status, body)

    async def amocrm(request: Request) -> Response:
        try:
            form = parse_form(await read_body(request, timeout=body_timeout))
        except BodyRefused as refused:
            return refused.response
        status, body, result = amocrm_verdict(daemon.config, form, request.path_params.get("secret", ""))
        count("amocrm", result)
        if status == 200:
            daemon.crm_changed()
        return text(status, body)

    async def not_found(_: Request, __: Exception) -> Response:
        return text(404, "not found\n")

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/webhooks/bitrix24", bitrix24, methods=["POST"]),
        Route("/webhooks/amocrm", amocrm, methods=["POST"]),
        Route("/webhooks/amocrm/{secret:path}", amocrm, methods=["POST"]),
    ]
    from connector.dashboard.web import build as dashboard_routes

    routes += dashboard_routes(daemon)  # /ui and /api/v1 (connector/dashboard/web.py)
    # 405 answers 404 as the daemon always did; applications mounted later keep their own handlers
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.router.redirect_slashes = False  # /healthz/ is 404, as it always was
    return app


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for request heads, a connection cap and JSON refusals."""

    header_timeout = HEADER_TIMEOUT
    max_connections = MAX_CONNECTIONS
    _head_timer: asyncio.TimerHandle | None = None
    opened_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened_at = self.loop.time()
        if len(self.connections) > self.max_connections:
            # idle and half-sent requests make way for the newcomer, oldest first; busy ones never do
            waiting = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol)
                       and c.waiting_for_head() and not c.transport.is_closing()]
            if waiting:
                min(waiting, key=lambda c: c.opened_at).drop(503, "too many connections; this one waited longest")
            else:
                log.warning("HTTP connection refused: %d connections are busy", len(self.connections) - 1)
                self.transport.write(raw_problem(503, "too many connections; try again shortly"))
                self.transport.close()
                return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()  # the next request on this connection gets its own deadline

    def send_400_response(self, msg: str) -> None:
        self.transport.write(raw_problem(400, "malformed HTTP request: the request line and headers must be valid "
                                              "HTTP/1.1, not too long, and Content-Length a non-negative number"))
        self.transport.close()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_deadline)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def waiting_for_head(self) -> bool:
        """No request is being served: the connection is idle or has part of a request head."""
        return (self.cycle is None or self.cycle.response_complete) and self.conn.their_state in (h11.IDLE, h11.DONE)

    def drop(self, status: int, error: str) -> None:
        """Close a connection waiting for its head; a client that sent part of one is told why."""
        if self.conn.trailing_data[0]:
            self.transport.write(raw_problem(status, error))
        self.transport.close()

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self.waiting_for_head():
            return  # a request is being served: its body has its own deadline in read_body
        self.drop(408, f"the request line and headers did not arrive within {self.header_timeout:g} seconds")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _raise_file_limit(wanted: int) -> None:
    """Room for ``wanted`` sockets besides the store's files: lift the soft descriptor limit if it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


class ServiceServer:
    """Binds at construction (a taken port fails here), serves in a thread with its own event loop."""

    def __init__(self, daemon: Any, *, host: str, port: int, header_timeout: float = HEADER_TIMEOUT,
                 body_timeout: float = BODY_TIMEOUT, max_connections: int = MAX_CONNECTIONS, app: Any = None):
        self.daemon = daemon  # ``app``: another ASGI application (the many-portal service) in place of the daemon's
        self.app = create_app(daemon, body_timeout=body_timeout) if app is None else app
        self.socket = _bind(host, port)
        self.port = self.socket.getsockname()[1]
        protocol = type("LifecycleH11Protocol", (GuardedH11Protocol,),
                        {"header_timeout": header_timeout, "max_connections": max_connections})
        config = uvicorn.Config(
            self.app, http=protocol, ws="none", lifespan="on", loop="asyncio", log_config=None,
            log_level="warning", access_log=False, server_header=False, headers=[("server", "crm-lifecycle")],
            timeout_keep_alive=int(KEEP_ALIVE), timeout_graceful_shutdown=3, h11_max_incomplete_event_size=MAX_HEAD,
            limit_concurrency=max_connections + 10,  # a backstop; GuardedH11Protocol refuses connections first
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name="lifecycle-http", daemon=True)
        self.failure: BaseException | None = None
        _raise_file_limit(max_connections + 256)

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        except BaseException as exc:  # SystemExit from a failed startup included: start() reports it
            self.failure = exc

    def start(self, timeout: float = 30) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP service did not start on port {self.port}: {self.failure!r}")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.socket.close()
