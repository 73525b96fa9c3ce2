"""The amoCRM rate limiter on an injected clock: every hold is asserted exactly, nothing sleeps."""

from __future__ import annotations

import pytest

from adapters.amocrm.client import MARGIN, RateLimiter


class FakeTime:
    """A clock that moves only when the limiter waits; records each wait it was asked for."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float | None] = []

    def clock(self) -> float:
        return self.now

    def wait(self, _cond: object, seconds: float | None) -> None:
        self.waits.append(seconds)
        if seconds is None:
            raise AssertionError("waited for an answer that can never come in a single-threaded test")
        self.now += seconds


def limiter(rate: float = 7) -> tuple[RateLimiter, FakeTime]:
    time = FakeTime()
    return RateLimiter(rate, clock=time.clock, wait=time.wait), time


def test_seven_requests_in_a_second_go_at_once():
    rl, time = limiter()
    for _ in range(7):
        rl.acquire()
        rl.release()
    assert time.waits == [] and time.now == 0.0


def test_the_eighth_request_within_a_second_waits_until_the_first_answer_is_a_second_old():
    rl, time = limiter()
    for answered_at in (0.125, 0.25, 0.25, 0.375, 0.5, 0.5, 0.5):
        rl.acquire()
        time.now = answered_at
        rl.release()
    time.now = 0.5
    rl.acquire()  # the 8th: the first slot frees 1 s (+ margin) after its answer at 0.125
    assert time.waits == [pytest.approx(0.125 + 1.0 + MARGIN - 0.5, abs=1e-12)]
    assert time.now == pytest.approx(1.145, abs=1e-12)


def test_the_ninth_waits_for_the_second_answer():
    rl, time = limiter()
    for answered_at in (0.125, 0.25, 0.375, 0.375, 0.375, 0.375, 0.375):
        rl.acquire()
        time.now = answered_at
        rl.release()
    rl.acquire()
    rl.release()  # the 8th, answered at once at 1.145
    time.waits.clear()
    rl.acquire()  # the 9th: the slot of the answer at 0.25 frees at 1.27
    assert time.waits == [pytest.approx(1.27 - 1.145, abs=1e-12)]


def test_a_429_hold_stops_every_request_for_exactly_retry_after():
    rl, time = limiter()
    rl.acquire()
    rl.release()
    time.now = 2.0
    rl.hold(3.5)
    rl.acquire()
    assert time.waits == [3.5] and time.now == 5.5


def test_a_shorter_hold_never_shortens_a_longer_one():
    rl, time = limiter()
    rl.hold(4.0)
    rl.hold(1.0)
    rl.acquire()
    assert time.waits == [4.0]


def test_requests_in_flight_count_against_the_second():
    rl, time = limiter()
    for _ in range(7):
        rl.acquire()  # none answered yet
    assert rl.hold_for(time.now) is None  # the 8th must wait for an answer, not for a time
    time.now = 0.25
    rl.release()
    assert rl.hold_for(0.25) == pytest.approx(1.0 + MARGIN, abs=1e-12)


def test_a_faster_rate_keeps_bursts_of_seven_over_a_shorter_window():
    rl, time = limiter(rate=14)
    for _ in range(7):
        rl.acquire()
        rl.release()
    rl.acquire()
    assert time.waits == [pytest.approx(0.5 + MARGIN, abs=1e-12)]
