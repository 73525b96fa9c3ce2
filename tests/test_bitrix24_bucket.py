"""The Bitrix24 client's own leaky bucket (adapters/bitrix24/client.LeakyBucket) on an injected clock:
concurrent callers never push the portal's bucket over its 50, even when every request reaches the portal
later than it was sent; nothing really sleeps."""

from __future__ import annotations

import asyncio
import random

from adapters.bitrix24.client import BUCKET_MARGIN, LeakyBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def _portal_level(arrivals: list[float], rate: float) -> float:
    """The highest level the portal's bucket reaches counting requests as they arrive."""
    level, at, peak = 0.0, None, 0.0
    for t in sorted(arrivals):
        if at is not None:
            level = max(0.0, level - (t - at) * rate)
        at = t
        level += 1
        peak = max(peak, level)
    return peak


def test_concurrent_callers_stay_under_the_portals_bucket_with_latency() -> None:
    time = FakeTime()
    rate = 2.0  # the documented 2 req/s; each request reaches the portal 0 to 1 s after it was sent
    bucket = LeakyBucket(50, rate, clock=time.clock, sleep=time.sleep)
    sent: list[float] = []

    async def caller(n: int) -> None:
        for _ in range(n):
            await bucket.acquire()
            sent.append(time.now)
            await asyncio.sleep(0)  # another caller runs while this request is "in flight"

    async def main() -> None:
        await asyncio.gather(*(caller(40) for _ in range(3)))

    asyncio.run(main())
    assert len(sent) == 120
    rng = random.Random(7)
    for _ in range(200):
        assert _portal_level([t + rng.uniform(0.0, 1.0) for t in sent], rate) <= 50
    assert _portal_level([t + (1.0 if k < 60 else 0.0) for k, t in enumerate(sent)], rate) <= 50
    # and the bucket is used: after the first (50 - margin) at once, the steady rate is the portal's
    assert sum(1 for t in sent if t == 0.0) == 50 - BUCKET_MARGIN
    assert abs(sent[-1] - (120 - (50 - BUCKET_MARGIN)) / rate) < 1e-6


def test_without_the_margin_the_same_latency_would_overflow_the_portal() -> None:
    """What the margin is for: a client that fills the bucket to 50 overflows the portal's when requests arrive
    late (the check above could not fail otherwise)."""
    rate = 2.0
    sent = [0.0] * 50 + [0.5 * k for k in range(1, 5)]  # full at once, then the steady rate
    # the burst reaches the portal 1 s late, the next requests at once
    assert _portal_level([t + (1.0 if k < 50 else 0.0) for k, t in enumerate(sent)], rate) > 50
