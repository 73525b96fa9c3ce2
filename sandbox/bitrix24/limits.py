"""Request-rate and resource (operating-time) limits, on the portal clock.

Sources: settings/performance/limits.md and settings/performance/huge-data.md in bitrix24/b24restdocs
(apidocs.bitrix24.com/limits.html), helpdesk.bitrix24.com/open/15961972 ("Changes in REST 22.0.0").

* Leaky bucket (limits.md "Request Rate Limits"): every REST HTTP request adds 1 to a per-portal
  counter that drains ``drain_rate`` per second (2/s on non-Enterprise plans); a request arriving when
  the counter is at ``bucket_size`` (50) is refused with HTTP 503 ``QUERY_LIMIT_EXCEEDED``. One
  ``batch`` is one request. Choice (not documented): refused requests do not add to the counter, and
  exactly 50 requests fit in an instant burst.
* Operating time (limits.md "Resource Intensity Limits"): per method and per webhook/app, the time
  spent executing is summed in one-minute baskets; a basket starts at the first call in it and leaves
  the sum 10 minutes later (``operating_reset_at`` = when the oldest basket leaves). The value is
  checked *before* each call: once it exceeds the limit (480 s, the doc's example and the helpdesk
  figure), the next call of that method gets HTTP 429 ``OPERATION_TIME_LIMIT``; the call that crosses
  the limit itself completes. The outer ``batch`` is not counted; each nested command is counted and
  checked against its own method.

Cost model (portal-seconds; the emulator answers instantly, ``operating`` is what it *charges*).
huge-data.md measures a list call on 2,387,743 items: 49.9 s with the ``total`` count, 0.097 s with
``start=-1``. So:

=======================  ==========  ===================================================================
``BASE_COST``            0.004 s     every method call
``ROW_COST``             0.00005 s   per record returned (a 50-row page: 0.0025 s)
``COUNT_COST_PER_ROW``   2.0e-5 s    per record in the table, whenever ``total`` is computed
                                     (``start`` >= 0); 49.9 s / 2,387,743 = 2.09e-5
``OFFSET_COST_PER_ROW``  1.0e-5 s    per record skipped by ``start`` (MySQL OFFSET walks the rows)
``WRITE_COST``           0.02 s      add / update / delete and other writes
=======================  ==========  ===================================================================

Why these numbers: pulling 100,000 contacts with ``start=0,50,100,...`` costs about 2.0 s per page
for the count alone plus 0.5 s per 1,000 rows of offset: ~5,000 s over 2,000 pages, so the method is
blocked after ~230 pages (~11,500 records). A ``start=-1`` + ``>ID`` chain costs 0.0065 s per page
whatever the table size; the bucket lets through at most 50 + 2*600 = 1,250 HTTP requests (62,500
batched pages) per 10 minutes, i.e. at most ~406 s < 480 s, so it never hits the limit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

BASE_COST = 0.004
ROW_COST = 0.00005
COUNT_COST_PER_ROW = 2.0e-5
OFFSET_COST_PER_ROW = 1.0e-5
WRITE_COST = 0.02

BUCKET_SIZE = 50
DRAIN_RATE = 2.0
OPERATING_LIMIT = 480.0
OPERATING_WINDOW = 600.0
BASKET_SECONDS = 60.0


def list_cost(*, table_rows: int, offset: int, returned: int, counted: bool) -> float:
    """Operating seconds for one list page (see the module docstring)."""
    cost = BASE_COST + ROW_COST * returned + OFFSET_COST_PER_ROW * max(offset, 0)
    if counted:
        cost += COUNT_COST_PER_ROW * table_rows
    return cost


class LeakyBucket:
    def __init__(self, size: int = BUCKET_SIZE, rate: float = DRAIN_RATE):
        self.size = size
        self.rate = rate
        self.level = 0.0
        self._last: float | None = None

    def _drain(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self.level = max(0.0, self.level - (now - self._last) * self.rate)
        self._last = now if self._last is None else max(now, self._last)

    def try_acquire(self, now: float) -> bool:
        self._drain(now)
        if self.level + 1 > self.size + 1e-9:
            return False
        self.level += 1
        return True

    def peek(self, now: float) -> float:
        self._drain(now)
        return self.level


@dataclass
class _Basket:
    start: float
    seconds: float = 0.0


@dataclass
class OperatingLedger:
    limit: float = OPERATING_LIMIT
    window: float = OPERATING_WINDOW
    basket_seconds: float = BASKET_SECONDS
    _baskets: dict[tuple[str, str], deque] = field(default_factory=dict)

    def _live(self, key: tuple[str, str], now: float) -> deque:
        baskets = self._baskets.setdefault(key, deque())
        while baskets and baskets[0].start + self.window <= now:
            baskets.popleft()
        return baskets

    def operating(self, key: tuple[str, str], now: float) -> float:
        return sum(b.seconds for b in self._live(key, now))

    def blocked(self, key: tuple[str, str], now: float) -> bool:
        return self.operating(key, now) > self.limit

    def charge(self, key: tuple[str, str], now: float, seconds: float) -> None:
        baskets = self._live(key, now)
        if not baskets or now >= baskets[-1].start + self.basket_seconds:
            baskets.append(_Basket(now))
        baskets[-1].seconds += seconds

    def reset_at(self, key: tuple[str, str], now: float) -> float:
        """Portal time when the oldest live basket leaves the sum (now + window if none)."""
        baskets = self._live(key, now)
        return baskets[0].start + self.window if baskets else now + self.window

    def snapshot(self, now: float) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (who, method) in list(self._baskets):
            value = self.operating((who, method), now)
            if value:
                out.setdefault(who, {})[method] = round(value, 6)
        return out


class Limits:
    """Both limits plus the on/off switch; all times are portal seconds."""

    def __init__(self, *, enabled: bool = True, bucket_size: int = BUCKET_SIZE, drain_rate: float = DRAIN_RATE,
                 operating_limit: float = OPERATING_LIMIT):
        self.enabled = enabled
        self.bucket = LeakyBucket(bucket_size, drain_rate)
        self.ledger = OperatingLedger(limit=operating_limit)

    def configure(self, *, enabled: bool | None = None, bucket_size: int | None = None, drain_rate: float | None = None,
                  operating_limit: float | None = None) -> None:
        if enabled is not None:
            self.enabled = bool(enabled)
        if bucket_size is not None:
            self.bucket.size = int(bucket_size)
        if drain_rate is not None:
            self.bucket.rate = float(drain_rate)
        if operating_limit is not None:
            self.ledger.limit = float(operating_limit)

    def admit_request(self, now: float) -> bool:
        """Leaky bucket check for one HTTP request; True when it may proceed."""
        if not self.enabled:
            return True
        return self.bucket.try_acquire(now)

    def method_blocked(self, key: tuple[str, str], now: float) -> bool:
        return self.enabled and self.ledger.blocked(key, now)

    def describe(self, now: float) -> dict:
        return {
            "enabled": self.enabled,
            "bucket_size": self.bucket.size,
            "drain_rate": self.bucket.rate,
            "bucket_level": round(self.bucket.peek(now), 3),
            "operating_limit": self.ledger.limit,
            "operating_window": self.ledger.window,
            "operating": self.ledger.snapshot(now),
            "costs": {
                "base": BASE_COST, "row": ROW_COST, "count_per_row": COUNT_COST_PER_ROW,
                "offset_per_row": OFFSET_COST_PER_ROW, "write": WRITE_COST,
            },
        }
