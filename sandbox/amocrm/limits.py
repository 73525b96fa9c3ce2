"""Request-rate limit and the account block, on the account clock.

Sources (shared/research/amocrm.md §6): developers.kommo.com/docs/limitations — "no more than 7 requests
per second"; exceeding it gives HTTP 429; repeated violation blocks access and then every request gets
HTTP 403. docs/http-codes — the 429 body has a ``retry_after`` field (seconds); no ``Retry-After`` header.

Choices (the docs give no algorithm, block threshold or retry value):

* A sliding one-second window of admitted requests per account: the (rate+1)-th request inside any
  second is refused. Refused requests do not enter the window.
* ``retry_after`` = 1 account second, reported in wall seconds (1 / time_scale; an int at scale 1).
* ``block_after`` (default 20) 429s within 60 account seconds block the account: every API request then
  gets 403 until ``POST /_sandbox/unblock`` (amoCRM support lifts real blocks; issue #318).
* Only ``/api/v4/*`` requests are limited; the OAuth token endpoint is not.
"""

from __future__ import annotations

from collections import deque

RATE = 7
WINDOW = 1.0
BLOCK_AFTER = 20
BLOCK_WINDOW = 60.0
RETRY_AFTER = 1.0


class RateLimiter:
    def __init__(self, *, enabled: bool = True, rate: int = RATE, block_after: int = BLOCK_AFTER):
        self.enabled = enabled
        self.rate = int(rate)
        self.block_after = int(block_after)
        self.blocked = False
        self._admitted: deque[float] = deque()
        self._refused: deque[float] = deque()

    def admit(self, now: float) -> str | None:
        """None when the request may run, else "blocked" (403) or "too_many" (429)."""
        if not self.enabled:
            return None
        if self.blocked:
            return "blocked"
        while self._admitted and self._admitted[0] <= now - WINDOW:
            self._admitted.popleft()
        if len(self._admitted) < self.rate:
            self._admitted.append(now)
            return None
        self._refused.append(now)
        while self._refused and self._refused[0] <= now - BLOCK_WINDOW:
            self._refused.popleft()
        if len(self._refused) >= self.block_after:
            self.blocked = True
        return "too_many"

    def unblock(self) -> None:
        self.blocked = False
        self._refused.clear()
        self._admitted.clear()

    def describe(self) -> dict:
        return {"enabled": self.enabled, "rate": self.rate, "window": WINDOW, "block_after": self.block_after,
                "block_window": BLOCK_WINDOW, "blocked": self.blocked}
