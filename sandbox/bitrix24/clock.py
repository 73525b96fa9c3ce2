"""Wall clock and *portal clock* for the Bitrix24 sandbox.

Limits (leaky bucket, operating-time baskets) and OAuth token lifetimes run on the portal clock, which
ticks ``time_scale`` times faster than the wall clock and can be pushed forward by tests
(``POST /_sandbox/clock {"advance": seconds}``), so nothing in a test waits on real time.
Record timestamps (DATE_CREATE, DATE_MODIFY) and the ``time`` envelope's start/finish use the wall
clock; moments a client should wait for (``operating_reset_at``, OAuth ``expires``) are converted
back to wall-clock epoch seconds with :meth:`Clock.to_real`, so a client that sleeps until them
behaves correctly under any time scale.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class Clock:
    def __init__(self, time_scale: float = 1.0, real: Callable[[], float] = time.time, *, frozen: bool = False):
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.scale = float(time_scale)
        self.frozen = frozen  # portal clock moves only by advance(): fully deterministic limits in tests
        self._real = real
        self._r0 = real()
        self._skew = 0.0
        self._lock = threading.Lock()

    def real(self) -> float:
        """Wall-clock epoch seconds."""
        return self._real()

    def portal(self) -> float:
        """Portal epoch seconds: starts equal to the wall clock, runs ``scale`` times faster."""
        with self._lock:
            return self._portal_locked()

    def _portal_locked(self) -> float:
        elapsed = 0.0 if self.frozen else (self._real() - self._r0) * self.scale
        return self._r0 + elapsed + self._skew

    def to_real(self, portal_ts: float) -> float:
        """The wall-clock moment at which the portal clock shows ``portal_ts`` (if it keeps running)."""
        with self._lock:
            return self._real() + (portal_ts - self._portal_locked()) / self.scale

    def advance(self, portal_seconds: float) -> None:
        """Jump the portal clock forward (tests: token expiry, basket reset, bucket drain)."""
        with self._lock:
            self._skew += float(portal_seconds)
