"""HTTP front end: routes, body decoding, faults, the background runner.

Routes: ``/api/v4/...`` (Bearer token; api.py), ``POST /oauth2/access_token`` (auth.py), ``/_sandbox/...``
(control.py). Success answers are ``application/hal+json``, errors ``application/problem+json``, an empty
result is 204 with no body (shared/research/amocrm.md §1, §2, §9). Plain HTTP on loopback only: the
real API is HTTPS, clients here are pointed at ``base_url``.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

from sandbox.bitrix24.decode import parse_php_query
from sandbox.httpbase import BackgroundServing, BaseHandler, QuietServer, RestVerbs

from . import control
from .account import Account
from .api import decode_body
from .errors import ApiError, OAuthError, problem, too_many, unauthorized
from .faults import NGINX_PAGE

_REASONS = {502: "Bad Gateway", 504: "Gateway Time-out"}
HAL = "application/hal+json"
PROBLEM = "application/problem+json"


class SandboxServer(QuietServer):
    def __init__(self, address, account: Account, verbose: bool = False):
        self.account = account
        self.verbose = verbose
        self.info: dict = {}
        super().__init__(address, Handler)


class Handler(RestVerbs, BaseHandler):
    server_version = "nginx"
    timeout = 120
    server: SandboxServer

    def _send(self, status: int, body: Any, content_type: str | None = None) -> None:
        self.send_response(status)
        if status == 204 or body is None:
            if status != 204:
                self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if isinstance(body, bytes):
            data, ctype = body, content_type or "text/html"
        else:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            ctype = content_type or (PROBLEM if status >= 400 else HAL)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8" if "charset" not in ctype else ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, verb: str) -> None:
        account = self.server.account
        url = urlsplit(self.path)
        path = url.path
        try:
            raw = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        if path.startswith("/_sandbox"):
            try:
                body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                body = {}
            status, payload = control.handle(account, self.server.info, verb, path, url.query, body)
            self._send(status, payload, "application/json")
            return
        with account.lock:
            account.counters.http_requests += 1
            account.counters.by_route[account.api.route_key(verb, path)] += 1
        status, payload = self._answer(account, verb, path, url.query, raw)
        if status is None:
            return  # connection reset by a fault
        with account.lock:
            account.counters.http_status[status] += 1
        self._send(status, payload)

    def _answer(self, account: Account, verb: str, path: str, query: str, raw: bytes):
        fault = account.faults.pick(verb, path)
        if fault is not None and fault.kind == "reset_after":
            with account.lock:
                account.counters.faults[fault.kind] += 1
            self._answer_unfaulted(account, verb, path, query, raw)  # the effect is stored; the client only sees the connection drop
            self._reset()
            return None, None
        if fault is not None and fault.kind == "slow_after":
            with account.lock:
                account.counters.faults[fault.kind] += 1
            answer = self._answer_unfaulted(account, verb, path, query, raw)
            time.sleep(fault.delay)  # the effect is stored; the client waits for (or never sees) the answer
            return answer
        if fault is not None:
            with account.lock:
                account.counters.faults[fault.kind] += 1
            if fault.kind == "reset":
                self._reset()
                return None, None
            if fault.kind == "slow":
                time.sleep(fault.delay)
            elif fault.kind == "expired_token":
                return 401, unauthorized().body()
            elif fault.kind == "too_many_requests":
                return 429, too_many(fault.retry_after).body()
            else:
                if fault.body is not None:
                    return fault.status, fault.body if isinstance(fault.body, dict) else str(fault.body).encode()
                if fault.status in (502, 504):
                    return fault.status, NGINX_PAGE.format(code=fault.status, reason=_REASONS[fault.status]).encode()
                if fault.status == 500:
                    return 500, problem(500, "Internal server error", trace_id="sandbox-fault")
                return fault.status, problem(fault.status, "Service temporarily unavailable")
        return self._answer_unfaulted(account, verb, path, query, raw)

    def _answer_unfaulted(self, account: Account, verb: str, path: str, query: str, raw: bytes):
        if path.rstrip("/") == "/oauth2/access_token":
            return self._token(account, verb, raw)
        if not path.startswith("/api/v4/"):
            return 404, problem(404, f"Cannot {verb} {account.base_url}{path}")
        refused = account.admit()
        if refused is not None:
            return refused.status, refused.body()
        try:
            params = parse_php_query(query)
            body = decode_body(self.headers.get("Content-Type", ""), raw)
            return account.run_api(verb, path, query, params, body, self.headers.get("Authorization"))
        except ApiError as exc:
            return exc.status, exc.body()

    def _token(self, account: Account, verb: str, raw: bytes):
        with account.lock:
            account.counters.oauth_requests += 1
        if verb != "POST":
            return 405, problem(405, f"Method {verb} is not allowed for /oauth2/access_token")
        try:
            params = decode_body(self.headers.get("Content-Type", ""), raw) or {}
        except ApiError as exc:
            return exc.status, exc.body()
        if not isinstance(params, dict):
            params = {}
        with account.lock:
            try:
                return 200, account.auth.token_endpoint({k: (str(v) if v is not None else None) for k, v in params.items()})
            except OAuthError as exc:
                return exc.status, exc.payload


class RunningServer(BackgroundServing):
    """An account served on a background thread (used by the CLI and by :func:`testing.running_account`)."""
    thread_name = "amocrm-sandbox"

    def __init__(self, account: Account, *, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self.account = account
        self.httpd = SandboxServer((host, port), account, verbose)
        self.host, self.port = self.httpd.server_address[:2]
        account.set_base_url(f"http://{host}:{self.port}")
        self.info = build_info(account)
        self.httpd.info = self.info



def build_info(account: Account) -> dict:
    base = account.base_url
    auth = account.auth
    return {
        "base_url": base,
        "access_token": auth.long_lived_token,
        "subdomain": account.subdomain,
        "account_id": account.account_id,
        "client_id": auth.client_id,
        "client_secret": auth.client_secret,
        "redirect_uri": auth.redirect_uri,
        "authorization_code": auth.initial_code,
        "refresh_token": auth.initial["refresh_token"],
        "oauth_access_token": auth.initial["access_token"],
        "expires_in": auth.initial["expires_in"],
        "token_url": f"{base}/oauth2/access_token",
        "user_id": auth.user_id,
        "control_url": f"{base}/_sandbox/",
        "timezone": str(account.tz),
        "time_scale": account.clock.scale,
        "limits": account.limiter.enabled,
        "rate_limit": account.limiter.rate,
        "block_after": account.limiter.block_after,
        "counts": account.counts(),
    }
