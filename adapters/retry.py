"""The error and retry vocabulary every adapter speaks: a table of rules, a decision, a call policy, a back-off.

An adapter lists what its API's answers mean as :class:`Rule` rows (status, body code pattern, outcome,
operator's message) and asks :func:`decide` for the first matching row. A :class:`CallPolicy` then says
whether that decision is retried for a given kind of call: reads retry transient failures; writes retry
only answers that prove the request did not run (anything else is settled upstream by looking the
record up, because resending a write that did run makes a duplicate). :class:`Backoff` takes the
server's hint first (``Retry-After``, a body ``retry_after``, an ``operating_reset_at``), then a capped
exponential delay with jitter. Nothing here sleeps or reads a clock: the callers inject both.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    RETRY = "retry"                # transient (5xx, a reset): try again after a back-off
    RATE_LIMITED = "rate_limited"  # the server asked us to slow down: wait (its hint first) and try again
    REFRESH_AUTH = "refresh_auth"  # the token expired: refresh it once and try again
    FAIL = "fail"                  # this request is wrong or not allowed; retrying will not help
    STOP = "stop"                  # stop talking to this server now (retrying makes it worse, e.g. a block)


@dataclass(frozen=True)
class Rule:
    """One row: ``status`` (None: any; an int; or a ``range``), ``code`` a regular expression matched in full
    (case-insensitive) against the body's error code ("" matches only an empty code, ".*" anything),
    ``detail`` an optional expression searched in the error's description. ``nothing_ran``: the answer
    proves the server did not execute the request (a write may be resent). ``message`` is written for the
    operator and may use ``{status}``, ``{code}`` and ``{detail}``."""

    status: int | range | None
    code: str
    outcome: Outcome
    message: str
    nothing_ran: bool = False
    detail: str | None = None

    def matches(self, status: int, code: str, detail: str) -> bool:
        if self.status is not None:
            if isinstance(self.status, range):
                if status not in self.status:
                    return False
            elif status != self.status:
                return False
        if not re.fullmatch(self.code, code or "", re.IGNORECASE):
            return False
        return self.detail is None or re.search(self.detail, detail or "", re.IGNORECASE) is not None


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    message: str
    status: int
    code: str = ""
    nothing_ran: bool = False
    hint: float | None = None  # seconds the server asked us to wait, if it said
    rule: Rule | None = field(default=None, compare=False)


def decide(rules: Sequence[Rule], status: int, code: str = "", detail: str = "", hint: float | None = None,
           **extra: object) -> Decision:
    """The first rule matching the answer; an answer no rule covers fails with its status and code.
    ``extra`` fills further ``{names}`` in the rule's message (e.g. the host)."""
    for rule in rules:
        if rule.matches(status, code, detail):
            message = rule.message.format(status=status, code=code or "(no code)", detail=detail, **extra)
            return Decision(rule.outcome, message, status, code, rule.nothing_ran, hint, rule)
    return Decision(Outcome.FAIL, f"HTTP {status} {code or '(no code)'}", status, code, False, hint, None)


@dataclass(frozen=True)
class CallPolicy:
    """Which decisions a kind of call retries, and how many times in a row.

    ``transport``: retry connection resets and time-outs (the request may have run, so reads only).
    ``only_if_nothing_ran``: retry a decision only when its rule proves the request did not run.
    ``attempts``: the most tries per outcome before giving up (a refresh is tried once).
    """

    name: str
    retry: frozenset[Outcome]
    transport: bool
    only_if_nothing_ran: bool
    attempts: dict[Outcome, int]
    transport_attempts: int = 10

    def retries(self, decision: Decision, tries: int) -> bool:
        """Whether to try again after ``tries`` answers with this decision's outcome."""
        if decision.outcome not in self.retry:
            return False
        if self.only_if_nothing_ran and not decision.nothing_ran:
            return False
        return tries < self.attempts.get(decision.outcome, 1)

    def retries_transport(self, tries: int) -> bool:
        return self.transport and tries < self.transport_attempts


@dataclass(frozen=True)
class Backoff:
    """The server's hint first (capped at ``hint_cap``), else ``base * 2**attempt`` capped at ``cap``, with
    up to ``jitter`` of it taken off at random so that many clients do not retry in step."""

    base: float = 0.5
    cap: float = 30.0
    jitter: float = 0.25
    hint_cap: float = 900.0

    def delay(self, attempt: int, hint: float | None = None, rand: Callable[[], float] = random.random) -> float:
        if hint is not None and hint > 0:
            return min(float(hint), self.hint_cap)
        raw = min(self.cap, self.base * 2 ** max(attempt, 0))
        return raw * (1.0 - self.jitter * rand())
