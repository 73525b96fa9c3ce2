"""HTTP(S) front end: routes, request decoding, TLS, the CONNECT proxy, and a background runner.

Routes (local-integrations/local-webhooks.md, settings/oauth/index.md, settings/oauth/auto-renewal.md):

* ``/rest/{user_id}/{webhook_code}/{method}[.json|.xml]`` — inbound webhook;
* ``/rest/{method}[.json]`` with ``auth=ACCESS_TOKEN`` in the query or body — OAuth app;
* ``/oauth/token/`` — the token endpoint (GET or POST; also reachable as ``oauth.bitrix24.tech`` /
  ``oauth.bitrix.info`` through the CONNECT proxy);
* ``/_sandbox/...`` — control routes (control.py).

With ``--portals N`` one server holds N independent portals (:class:`Portal` each: data, credentials,
limits, faults, counters, clock). A portal is a host in reality; here portal ``i`` (0-based) lives under
the path prefix ``/p/{i}``: ``/p/{i}/rest/...``, ``/p/{i}/oauth/token/``, ``/p/{i}/_sandbox/...``. Its
``base_url`` includes the prefix, so every URL it hands out (webhook, ``client_endpoint``, ``next`` links)
stays on that portal. Credentials of one portal are unknown to the others (401 ``NO_AUTH_FOUND``, as a
wrong token is on a real portal). The unprefixed ``/oauth/token/`` (the shared OAuth server, also behind
the CONNECT proxy) finds the portal by ``client_id``; ``/_sandbox/info`` gives the first-line JSON.

Bodies: JSON, x-www-form-urlencoded or multipart, plus the query string (decode.py). Method names are
lower-cased. With TLS the socket's first byte tells TLS from plain HTTP on the same port: plain REST calls
get 400 INVALID_REQUEST "Https required." like a cloud portal, while control routes and ``CONNECT`` (for
``HTTPS_PROXY``) work on plain HTTP. ``CONNECT`` is only accepted for the OAuth hosts and for the sandbox
itself; the tunnel is terminated here with the sandbox certificate, so nothing ever leaves the machine.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from socketserver import _SocketWriter  # type: ignore[attr-defined]
from typing import Any
from urllib.parse import urlsplit

from sandbox.httpbase import BackgroundServing, BaseHandler, QuietServer

from . import control
from .decode import DecodeError, parse_body, parse_php_query
from .errors import EXPIRED, HTTPS_REQUIRED, INTERNAL, QUERY_LIMIT, ApiError, err
from .faults import NGINX_PAGE
from .portal import Portal
from .tlsutil import OAUTH_HOSTS

_REASONS = {502: "Bad Gateway", 504: "Gateway Time-out", 500: "Internal Server Error", 503: "Service Unavailable"}


PREFIX = "/p/"


class SandboxServer(QuietServer):
    def __init__(self, address, portal: Portal, ssl_context: ssl.SSLContext | None, verbose: bool = False,
                 portals: list[Portal] | None = None):
        self.portal = portal
        self.portals = portals  # None: one portal at the root; else portal i under /p/{i}
        self.ssl_context = ssl_context
        self.verbose = verbose
        self.info: dict = {}
        self.infos: list[dict] = []
        super().__init__(address, Handler)

    def route(self, path: str) -> tuple[Portal | None, dict, str]:
        """(portal, its info, the path below its prefix); portal None = no such portal."""
        if self.portals is None:
            return self.portal, self.info, path
        if path.startswith(PREFIX):
            index, _, rest = path[len(PREFIX):].partition("/")
            if index.isdigit() and str(int(index)) == index and int(index) < len(self.portals):
                return self.portals[int(index)], self.infos[int(index)], "/" + rest
        return None, self.info, path

    def portal_for_client(self, client_id: object, refresh_token: object = None) -> Portal:
        """The shared OAuth server (unprefixed ``/oauth/token/``) knows every portal's app by client id; one
        application (a Market app, or the same local app's credentials) installed in several portals is told
        apart by the refresh token being renewed."""
        having = [p for p in (self.portals or [self.portal]) if client_id in p.auth.clients]
        for portal in having:
            if refresh_token is not None and refresh_token in portal.auth.refresh:
                return portal
        return (having or self.portals or [self.portal])[0]  # answers invalid_client / invalid_grant

    def finish_request(self, request, client_address):
        if self.ssl_context is not None:
            try:
                request.settimeout(Handler.timeout)
                first = request.recv(1, socket.MSG_PEEK)
                if first == b"\x16":
                    request = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
        Handler(request, client_address, self)



class Handler(BaseHandler):
    server_version = "nginx"
    timeout = 120
    server: SandboxServer

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def is_tls(self) -> bool:
        return isinstance(self.connection, ssl.SSLSocket)

    def _send(self, status: int, body: Any, content_type: str = "application/json; charset=utf-8") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # -- verbs -----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_CONNECT(self) -> None:
        host, _, port = self.path.rpartition(":")
        own = host in ("127.0.0.1", "localhost") and port == str(self.server.server_address[1])
        if self.server.ssl_context is None or not (host in OAUTH_HOSTS or own):
            self._send(403, {"error": "FORBIDDEN", "error_description": f"the sandbox only tunnels to itself, not {self.path}"})
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        try:
            tunnel = self.server.ssl_context.wrap_socket(self.connection, server_side=True)
        except (OSError, ssl.SSLError):
            self.close_connection = True
            return
        self.connection = self.request = tunnel
        self.rfile = tunnel.makefile("rb", self.rbufsize)
        self.wfile = _SocketWriter(tunnel)
        self.close_connection = False

    def _dispatch(self, verb: str) -> None:
        url = urlsplit(self.path)
        portal, self.info, path = self.server.route(url.path)
        try:
            raw = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        if portal is None:
            self._multi_root(verb, path, url.query, raw)
            return
        self.portal = portal
        if path.startswith("/_sandbox"):
            try:
                body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                body = {}
            status, payload = control.handle(portal, self.info, verb, path, url.query, body)
            if isinstance(payload, bytes):  # /_sandbox/apps/frame: a portal page for a browser (bx24.js: a script)
                self._send(status, payload, "text/javascript; charset=utf-8" if path.endswith(".js")
                           else "text/html; charset=utf-8")
            else:
                self._send(status, payload)
            return
        try:
            params = parse_php_query(url.query)
            params.update(parse_body(self.headers.get("Content-Type", ""), raw))
        except DecodeError as exc:
            self._send(400, {"error": "INVALID_REQUEST", "error_description": str(exc)})
            return
        if path.rstrip("/") in ("/oauth/token", "/oauth/token/"):
            client = params.get("client_id")
            elsewhere = any(isinstance(client, str) and client in p.auth.clients for p in self.server.portals or [])
            with portal.lock:
                portal.counters.oauth_requests += 1
                status, payload = portal.auth.token_endpoint(params, portal.endpoints(), known_elsewhere=elsewhere)
            self._send(status, payload)
            return
        if path.startswith("/rest/"):
            self._rest(path, params)
            return
        self._send(404, {"error": "NOT_FOUND", "error_description": f"unknown path {path}"})

    def _multi_root(self, verb: str, path: str, query: str, raw: bytes) -> None:
        """Paths outside every ``/p/{i}`` of a multi-portal server: the info and the shared OAuth server."""
        if path.rstrip("/") == "/_sandbox/info" and verb == "GET":
            self._send(200, self.server.info)
            return
        if path.rstrip("/") == "/oauth/token":
            try:
                params = parse_php_query(query)
                params.update(parse_body(self.headers.get("Content-Type", ""), raw))
            except DecodeError as exc:
                self._send(400, {"error": "INVALID_REQUEST", "error_description": str(exc)})
                return
            portal = self.server.portal_for_client(params.get("client_id"), params.get("refresh_token"))
            with portal.lock:
                portal.counters.oauth_requests += 1
                status, payload = portal.auth.token_endpoint(params, portal.endpoints())
            self._send(status, payload)
            return
        self._send(404, {"error": "NOT_FOUND", "error_description": f"no portal at {path} (portals are /p/0 .. "
                                                                   f"/p/{len(self.server.portals or []) - 1})"})

    def _rest(self, path: str, params: dict) -> None:
        portal = self.portal
        parts = [p for p in path[len("/rest/"):].split("/") if p]
        if parts[:1] == ["api"]:  # REST 3.0 (/rest/api/{user}/{code}/{method}): the methods the sandbox has
            parts = parts[1:]
        method = parts[-1] if parts else ""
        for suffix in (".json", ".xml"):
            if method.lower().endswith(suffix):
                method = method[: -len(suffix)]
        method = method.strip().lower()
        with portal.lock:
            portal.counters.http_requests += 1
            portal.counters.top_level[method] += 1
        status, body = self._rest_answer(portal, parts, method, params)
        if status is None:
            return  # connection was reset
        with portal.lock:
            portal.counters.http_status[status] += 1
        if isinstance(body, bytes):
            self._send(status, body, "text/html")
        else:
            self._send(status, body)

    def _rest_answer(self, portal: Portal, parts: list[str], method: str, params: dict):
        fault = portal.faults.pick(method)
        if fault is not None and fault.kind == "reset_after":
            with portal.lock:
                portal.counters.faults[fault.kind] += 1
            self._rest_answer_unfaulted(portal, parts, method, params)  # the effect is stored; the client only sees the connection drop
            self._reset()
            return None, None
        if fault is not None and fault.kind == "slow_after":
            with portal.lock:
                portal.counters.faults[fault.kind] += 1
            answer = self._rest_answer_unfaulted(portal, parts, method, params)
            time.sleep(fault.delay)  # the effect is stored; the client waits for (or never sees) the answer
            return answer
        if fault is not None:
            with portal.lock:
                portal.counters.faults[fault.kind] += 1
            if fault.kind == "reset":
                self._reset()
                return None, None
            if fault.kind == "slow":
                time.sleep(fault.delay)
            elif fault.kind == "expired_token":
                return EXPIRED[0], err(EXPIRED).body()
            else:
                if fault.body is not None:
                    return fault.status, fault.body if isinstance(fault.body, dict) else str(fault.body).encode()
                if fault.status in (502, 504):
                    return fault.status, NGINX_PAGE.format(code=fault.status, reason=_REASONS[fault.status]).encode()
                if fault.status == 503:
                    return 503, err(QUERY_LIMIT).body()
                return fault.status, err(INTERNAL).body()
        return self._rest_answer_unfaulted(portal, parts, method, params)

    def _rest_answer_unfaulted(self, portal: Portal, parts: list[str], method: str, params: dict):
        if self.server.ssl_context is not None and not self.is_tls:
            return HTTPS_REQUIRED[0], err(HTTPS_REQUIRED).body()
        try:
            with portal.lock:
                if len(parts) >= 3 and parts[0] != "api":
                    identity = portal.auth.webhook(parts[0], parts[1])
                else:
                    token = params.pop("auth", None)
                    identity = portal.auth.token(token if isinstance(token, str) else None)
            rejected = portal.admit()
            if rejected is not None:
                raise rejected
        except ApiError as exc:
            return exc.status, exc.body()
        params.pop("auth", None)
        return portal.run_method(method, params, identity)


class RunningServer(BackgroundServing):
    """A portal served on a background thread (used by the CLI and by :func:`testing.running_portal`).

    With ``portals`` (a list) the server holds them all, portal i under ``/p/{i}``; ``self.portal`` is the
    first, ``self.infos[i]`` portal i's first-line JSON and ``self.info`` the multi-portal first line.
    """
    thread_name = "bitrix24-sandbox"

    def __init__(self, portal: Portal | None, *, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None, ca_file: str | None = None, verbose: bool = False,
                 portals: list[Portal] | None = None):
        self.portals = portals
        self.portal = portal if portal is not None else (portals or [None])[0]
        self.httpd = SandboxServer((host, port), self.portal, ssl_context, verbose, portals)
        self.host, self.port = self.httpd.server_address[:2]
        scheme = "https" if ssl_context else "http"
        root = f"{scheme}://{host}:{self.port}"
        if portals is None:
            self.portal.base_url = root
            self.portal.tls = ssl_context is not None
            self.info = build_info(self.portal, ca_file)
            self.infos = [self.info]
        else:
            self.infos = []
            for index, each in enumerate(portals):
                each.base_url = f"{root}{PREFIX}{index}"
                each.tls = ssl_context is not None
                self.infos.append({"index": index, **build_info(each, ca_file, proxy=f"http://{host}:{self.port}")})
            self.info = {"base_url": root, "control_url": f"{root}/_sandbox/", "oauth_token_url": f"{root}/oauth/token/",
                         "tls": ssl_context is not None, "portals": self.infos}
            if ssl_context is not None:
                self.info["ca_file"] = ca_file
                self.info["https_proxy"] = f"http://{host}:{self.port}"
        self.httpd.info = self.info
        self.httpd.infos = self.infos



def build_info(portal: Portal, ca_file: str | None, proxy: str | None = None) -> dict:
    base = portal.base_url
    auth = portal.auth
    tokens = auth.initial
    info = {
        "webhook_url": f"{base}/rest/{auth.user_id}/{auth.webhook_code}/",
        "base_url": base,
        "domain": base.split("://", 1)[1],
        "user_id": auth.user_id,
        "webhook_code": auth.webhook_code,
        "client_id": auth.client_id,
        "client_secret": auth.client_secret,
        "access_token": tokens["access_token"],
        "refresh_token": tokens["refresh_token"],
        "expires": tokens["expires"],
        "expires_in": tokens["expires_in"],
        "client_endpoint": f"{base}/rest/",
        "server_endpoint": f"{base}/rest/",
        "oauth_token_url": f"{base}/oauth/token/",
        "member_id": auth.member_id,
        "application_token": auth.application_token,
        "timezone": str(portal.tz),
        "time_scale": portal.clock.scale,
        "limits": portal.limits.enabled,
        "control_url": f"{base}/_sandbox/",
        "tls": portal.tls,
        "counts": portal.counts(),
    }
    if portal.tls:
        info["ca_file"] = ca_file
        info["https_proxy"] = proxy or f"http://{info['domain']}"
    return info
