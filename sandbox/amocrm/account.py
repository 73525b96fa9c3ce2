"""One emulated amoCRM account: data, auth, limits, faults, counters, and the request pipeline.

Pipeline of an ``/api/v4`` request (order chosen to match what clients observe): fault injection ->
403 block -> 429 rate limit (limits.py) -> Bearer authorization (401) -> route lookup (404/405) -> the
handler (400/422 or success). Faulted, 403 and 429 requests never run the handler.
``POST /oauth2/access_token`` goes through faults and then the token endpoint (auth.py), not the limits.
"""

from __future__ import annotations

import logging
import secrets
import threading
import traceback
import uuid
from typing import Any
from zoneinfo import ZoneInfo

from sandbox.bitrix24.clock import Clock

from .api import Api, Request
from .auth import Auth
from .errors import ApiError, blocked, too_many, unauthorized
from .faults import Counters, Faults
from .hooks import Hooks
from .limits import RETRY_AFTER, RateLimiter
from .model import ADMIN_USER_ID
from .store import Store

log = logging.getLogger("sandbox.amocrm")


class Account:
    def __init__(self, *, timezone_name: str = "Europe/Moscow", time_scale: float = 1.0, limits: bool = True,
                 seed: int | None = None, frozen_clock: bool = False, rate_limit: int | None = None,
                 block_after: int | None = None, subdomain: str = "sandbox", account_id: int = 31415926):
        self.lock = threading.RLock()
        self.tz = ZoneInfo(timezone_name)
        self.clock = Clock(time_scale, frozen=frozen_clock)
        self.account_id = account_id
        self.subdomain = subdomain
        self.account_name = f"Sandbox {subdomain}"
        self.amojo_id = str(uuid.uuid4())
        self.created_at = int(self.clock.real()) - 5 * 365 * 86400
        self.store = Store(self.tz, account_id, self.clock.real)
        self.auth = Auth(self.clock, account_id=account_id, user_id=ADMIN_USER_ID, subdomain=subdomain)
        self.limiter = RateLimiter(enabled=limits, **{k: v for k, v in (("rate", rate_limit), ("block_after", block_after)) if v})
        self.faults = Faults(seed)
        self.counters = Counters()
        self.api = Api(self)
        self.hooks = Hooks(self)  # webhooks, the OAuth redirect, the disconnect hook, widget tokens (hooks.py)
        self.base_url = ""
        self.request_ids = secrets.token_hex(4)

    def set_base_url(self, base: str) -> None:
        self.base_url = base
        self.store.base = base

    def retry_after(self, account_seconds: float = RETRY_AFTER) -> float:
        wall = account_seconds / self.clock.scale
        return int(wall) if wall == int(wall) else round(wall, 3)

    def admit(self) -> ApiError | None:
        with self.lock:
            verdict = self.limiter.admit(self.clock.portal())
            if verdict == "blocked":
                self.counters.blocked_403 += 1
                return blocked()
            if verdict == "too_many":
                self.counters.too_many_requests += 1
                return too_many(self.retry_after())
            return None

    def run_api(self, verb: str, path: str, query: str, params: dict, body: Any, authorization: str | None) -> tuple[int, Any]:
        """Authorization, routing and the handler (after faults and limits). Returns (status, body|None)."""
        with self.lock:
            user = self.auth.user_of(authorization)
            if user is None:
                self.counters.unauthorized_401 += 1
                raise unauthorized()
            try:
                return self.api.handle(Request(verb, path, query, params, body, user))
            except ApiError:
                raise
            except Exception:  # a sandbox bug must look like amoCRM's 500, and be visible
                log.error("sandbox error on %s %s\n%s", verb, path, traceback.format_exc())
                raise ApiError(500, "Internal server error", trace_id=secrets.token_hex(8)) from None

    def counts(self) -> dict:
        with self.lock:
            return self.store.counts()
