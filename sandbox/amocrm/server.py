"""HTTP front end: routes, body decoding, faults, the background runner.

Routes: ``/api/v4/...`` (Bearer token; api.py), ``POST /oauth2/access_token`` (auth.py), ``/_sandbox/...``
(control.py). Success answers are ``application/hal+json``, errors ``application/problem+json``, an empty
result is 204 with no body (shared/research/amocrm.md §1, §2, §9). Plain HTTP on loopback only: the
real API is HTTPS, clients here are pointed at ``base_url``.

With ``--accounts N`` one server holds N independent accounts (an :class:`Account` each: data, tokens,
OAuth app, limits, faults, counters, clock). An account is a subdomain in reality; here account ``i``
(0-based) lives under the path prefix ``/a/{i}``: ``/a/{i}/api/v4/...``, ``/a/{i}/oauth2/access_token``,
``/a/{i}/_sandbox/...``. Its ``base_url`` includes the prefix, so ``_links`` stay on that account. Tokens
are signed per account, so another account's token gets 401 as a wrong token does on amoCRM.
``/_sandbox/info`` at the root gives the first-line JSON.
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


PREFIX = "/a/"


class SandboxServer(QuietServer):
    def __init__(self, address, account: Account, verbose: bool = False, accounts: list[Account] | None = None):
        self.account = account
        self.accounts = accounts  # None: one account at the root; else account i under /a/{i}
        self.verbose = verbose
        self.info: dict = {}
        self.infos: list[dict] = []
        super().__init__(address, Handler)

    def route(self, path: str) -> tuple[Account | None, dict, str]:
        """(account, its info, the path below its prefix); account None = no such account."""
        if self.accounts is None:
            return self.account, self.info, path
        if path.startswith(PREFIX):
            index, _, rest = path[len(PREFIX):].partition("/")
            if index.isdigit() and str(int(index)) == index and int(index) < len(self.accounts):
                return self.accounts[int(index)], self.infos[int(index)], "/" + rest
        return None, self.info, path


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
        url = urlsplit(self.path)
        account, info, path = self.server.route(url.path)
        try:
            raw = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        if account is None:
            if path.rstrip("/") == "/_sandbox/info" and verb == "GET":
                self._send(200, self.server.info, "application/json")
            else:
                last = len(self.server.accounts or []) - 1
                self._send(404, problem(404, f"No account at {path} (accounts are /a/0 .. /a/{last})"))
            return
        if path.startswith("/_sandbox"):
            try:
                body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                body = {}
            status, payload = control.handle(account, info, verb, path, url.query, body)
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
        if not path.startswith(("/api/v4/", "/api/v2/salesbot/")):
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
    """An account served on a background thread (used by the CLI and by :func:`testing.running_account`).

    With ``accounts`` (a list) the server holds them all, account i under ``/a/{i}``; ``self.account`` is
    the first, ``self.infos[i]`` account i's first-line JSON and ``self.info`` the multi-account first line.
    """
    thread_name = "amocrm-sandbox"

    def __init__(self, account: Account | None, *, host: str = "127.0.0.1", port: int = 0, verbose: bool = False,
                 accounts: list[Account] | None = None):
        self.accounts = accounts
        self.account = account if account is not None else (accounts or [None])[0]
        self.httpd = SandboxServer((host, port), self.account, verbose, accounts)
        self.host, self.port = self.httpd.server_address[:2]
        root = f"http://{host}:{self.port}"
        if accounts is None:
            self.account.set_base_url(root)
            self.info = build_info(self.account)
            self.infos = [self.info]
        else:
            self.infos = []
            for index, each in enumerate(accounts):
                each.set_base_url(f"{root}{PREFIX}{index}")
                self.infos.append({"index": index, **build_info(each)})
            self.info = {"base_url": root, "control_url": f"{root}/_sandbox/", "accounts": self.infos}
        self.httpd.info = self.info
        self.httpd.infos = self.infos



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
