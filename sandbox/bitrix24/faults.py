"""Fault injection and request counters for tests (``/_sandbox/faults``, ``/_sandbox/counters``).

A fault spec (JSON): ``{"kind": "status"|"reset"|"slow"|"slow_after"|"expired_token", "method": "crm.contact.list"
(optional, top-level REST method, lower-cased), "count": N (next N matching requests) or "probability": p
(0..1; neither = every matching request until cleared), "status": 500|502|503|504 (kind status),
"delay": seconds (kinds slow and slow_after, wall-clock), "body": optional JSON object or text}``.

* ``status``: answer that HTTP status without running the method; 500 -> INTERNAL_SERVER_ERROR JSON,
  503 -> QUERY_LIMIT_EXCEEDED JSON (both from _includes/system-errors.md), 502/504 -> an nginx HTML page
  (what a proxy in front of a portal sends; clients must not expect JSON on 5xx).
* ``reset``: close the TCP connection with RST and no answer.
* ``reset_after``: run the request (its effect is stored), then close the connection with RST: the
  client cannot tell whether the portal acted (the case that makes a blind resend duplicate a write).
* ``slow``: sleep ``delay`` wall seconds, then answer normally.
* ``slow_after``: run the request normally (auth, bucket, the method and its writes), then hold the
  answer for ``delay`` wall seconds before sending it: "the portal did it, the client never saw the
  answer" when the client is killed or times out meanwhile. ``method`` matches the top-level method, so
  ``"batch"`` holds a whole batch (its nested commands are not matched one by one).
* ``expired_token``: 401 ``expired_token`` whatever the token.
* ``command_error``: only for commands inside a ``batch`` (``method`` names the command): that command
  answers an error (``body``, default ``{"error": "ERROR_CORE", "error_description": "Action not
  allowed"}``) without running, while the batch's other commands run: one command of a batch failing
  while its neighbours succeed.
Faults are checked in the order they were added; the first one that fires wins. Faulted requests do not
enter the leaky bucket or run the method, except ``slow``/``slow_after``, which run normally.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from sandbox.faultsbase import FaultRegistry

KINDS = ("status", "reset", "reset_after", "slow", "slow_after", "expired_token", "command_error")
NGINX_PAGE = ("<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1>"
              "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


@dataclass
class Fault:
    id: int
    kind: str
    method: str | None = None
    count: int | None = None
    probability: float | None = None
    status: int = 500
    delay: float = 1.0
    body: Any = None
    fired: int = 0

    def describe(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


class Faults(FaultRegistry):
    KINDS = KINDS

    def _build(self, fault_id: int, kind: str, count: int | None, probability: float | None, spec: dict) -> Fault:
        return Fault(fault_id, kind, (str(spec["method"]).lower() if spec.get("method") else None), count, probability,
                     int(spec.get("status", 500)), float(spec.get("delay", 1.0)), spec.get("body"))

    def _matches(self, fault: Fault, method: str | None, nested: bool = False) -> bool:
        if (fault.kind == "command_error") != nested:  # batch command faults only inside a batch, the rest never
            return False
        return not fault.method or fault.method == method


@dataclass
class Counters:
    http_requests: int = 0          # REST requests (/rest/...), whatever their outcome
    oauth_requests: int = 0         # /oauth/token/ requests
    oauth_refreshes: int = 0        # successful refresh-token rotations
    methods: Counter = field(default_factory=Counter)        # top-level and nested batch commands
    top_level: Counter = field(default_factory=Counter)      # methods named in the URL only
    batch_commands: int = 0
    http_status: Counter = field(default_factory=Counter)    # by HTTP status of REST answers
    query_limit_exceeded: int = 0   # 503 QUERY_LIMIT_EXCEEDED from the leaky bucket
    operation_time_limit: int = 0   # OPERATION_TIME_LIMIT refusals (HTTP 429 and nested batch commands)
    operation_time_limit_by_method: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    warnings: deque = field(default_factory=lambda: deque(maxlen=200))

    def snapshot(self) -> dict:
        return {
            "http_requests": self.http_requests, "oauth_requests": self.oauth_requests,
            "oauth_refreshes": self.oauth_refreshes, "methods": dict(self.methods), "top_level": dict(self.top_level),
            "batch_commands": self.batch_commands, "http_status": {str(k): v for k, v in self.http_status.items()},
            "query_limit_exceeded": self.query_limit_exceeded, "operation_time_limit": self.operation_time_limit,
            "operation_time_limit_by_method": dict(self.operation_time_limit_by_method),
            "faults": dict(self.faults), "warnings": list(self.warnings),
        }
