"""Fault injection and request counters (``/_sandbox/faults``, ``/_sandbox/counters``).

A fault spec (JSON): ``{"kind": "status"|"reset"|"slow"|"slow_after"|"expired_token"|"too_many_requests",
"path": "/api/v4/contacts" (optional prefix of the request path), "method": "GET" (optional),
"count": N (the next N matching requests) or "probability": p (neither = every matching request until
cleared), "status": 500|502|503|504 (kind status), "delay": wall seconds (kinds slow and slow_after), "retry_after":
seconds (kind too_many_requests), "body": optional JSON object or text}``.

* ``status``: that HTTP status without running the handler; 500 -> amoCRM's ``ErrInternalServer``
  problem+json (docs/http-codes), 502/504 -> an nginx HTML page (a proxy in front of the API; docs/limitations
  tells clients to shrink batches on 504), 503 -> problem+json.
* ``reset``: close the TCP connection with RST and no answer.
* ``reset_after``: run the request (its effect is stored), then close the connection with RST: the
  client cannot tell whether the account acted (the case that makes a blind resend duplicate a write).
* ``slow``: sleep ``delay`` wall seconds, then answer normally.
* ``slow_after``: run the request normally (rate limit, handler, writes), then hold the answer for
  ``delay`` wall seconds before sending it: "amoCRM created it, the client never saw the answer" when
  the client is killed or times out meanwhile.
* ``expired_token``: 401 problem+json whatever the token.
* ``too_many_requests``: 429 problem+json with ``retry_after`` (does not count towards the block).
Faults are checked in the order they were added (before the rate limit); the first that fires wins.
Faulted requests never run the handler, except ``slow``, ``slow_after`` and ``reset_after``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sandbox.bitrix24.faults import NGINX_PAGE  # the same nginx error page in front of both CRMs
from sandbox.faultsbase import FaultRegistry

KINDS = ("status", "reset", "reset_after", "slow", "slow_after", "expired_token", "too_many_requests")
__all__ = ["KINDS", "NGINX_PAGE", "Counters", "Fault", "Faults"]


@dataclass
class Fault:
    id: int
    kind: str
    path: str | None = None
    method: str | None = None
    count: int | None = None
    probability: float | None = None
    status: int = 500
    delay: float = 1.0
    retry_after: float = 1
    body: Any = None
    fired: int = 0

    def describe(self) -> dict:
        return dict(self.__dict__)


class Faults(FaultRegistry):
    KINDS = KINDS

    def _build(self, fault_id: int, kind: str, count: int | None, probability: float | None, spec: dict) -> Fault:
        return Fault(fault_id, kind, spec.get("path") or None,
                     str(spec["method"]).upper() if spec.get("method") else None, count, probability,
                     int(spec.get("status", 500)), float(spec.get("delay", 1.0)), spec.get("retry_after", 1),
                     spec.get("body"))

    def _matches(self, fault: Fault, verb: str, path: str) -> bool:
        return (not fault.method or fault.method == verb) and (not fault.path or path.startswith(fault.path))


@dataclass
class Counters:
    http_requests: int = 0        # API and OAuth requests (not control routes), whatever their outcome
    oauth_requests: int = 0       # POST /oauth2/access_token
    by_route: Counter = field(default_factory=Counter)     # "GET /api/v4/contacts", "PATCH /api/v4/leads/{id}"
    http_status: Counter = field(default_factory=Counter)
    too_many_requests: int = 0    # 429 from the rate limit (not from faults)
    blocked_403: int = 0
    unauthorized_401: int = 0
    entities_created: int = 0
    entities_patched: int = 0
    faults: Counter = field(default_factory=Counter)

    def snapshot(self) -> dict:
        return {"http_requests": self.http_requests, "oauth_requests": self.oauth_requests,
                "by_route": dict(self.by_route), "http_status": {str(k): v for k, v in self.http_status.items()},
                "too_many_requests": self.too_many_requests, "blocked_403": self.blocked_403,
                "unauthorized_401": self.unauthorized_401, "entities_created": self.entities_created,
                "entities_patched": self.entities_patched, "faults": dict(self.faults)}
