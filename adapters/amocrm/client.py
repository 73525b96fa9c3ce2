"""amoCRM API v4 client: requests, one rule table and call loop, one shared rate limiter, tokens that rotate safely.

Facts (shared/research/amocrm.md): 7 requests/second per integration; over it HTTP 429 with a body field
``retry_after`` (seconds, no header); repeated 429s get the account blocked with 403 on every request; 401
problem+json when a token is invalid or expired; empty lists are HTTP 204 with no body; errors are
``application/problem+json`` (``title``, ``status``, ``detail``, ``validation-errors``).

What this client does about them:

* :class:`RateLimiter`, one per account in the process (:func:`shared_limiter`): a request takes one of N
  slots (N = ``requests_per_second``) and gives it back a second after its answer, so never more than N
  requests reach the account in any one second, whichever client or thread sends them.
* :data:`RULES` says what an answer means, :data:`READ` / :data:`WRITE` whether it is tried again:
* 429: every thread holds ``retry_after`` from the body (or 1 s), then retries; at most :data:`MAX_429` in a
  row, since insisting is what gets an account blocked. 403: stop at once with a message (no retry makes
  it worse), and the client sends nothing more: every later call on it raises :class:`AmoStopped` without
  a request, so a write-back's remaining batches (and the requests other threads had queued) do not
  prolong the block. 402: the account is not paid, a clear error.
* 5xx, 502/504 HTML pages and connection errors: retried with capped exponential back-off with jitter
  (:data:`BACKOFF`, ``sleep`` and ``random`` injected), for reads and for idempotent writes only (tag
  PATCHes with ``tags_to_add`` / ``tags_to_delete`` are idempotent).
* 401: one token refresh (OAuth) and one retry; a long-lived token that is refused is a clear error.
* Nothing secret reaches an exception or a log line: errors carry the method, the path and the
  problem+json ``detail`` only.
"""

from __future__ import annotations

import dataclasses
import email.utils
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import requests

from adapters.retry import Backoff, CallPolicy, Decision, Outcome, Rule, decide

MAX_429 = 8
BURST = 7
MARGIN = 0.02  # seconds added to the one-second window (clock granularity)

# What an answer means (adapters/retry.py); amoCRM's problem+json has no error codes worth matching, the
# status decides. ``nothing_ran``: the account refused before running the request.
RULES: list[Rule] = [
    Rule(401, ".*", Outcome.REFRESH_AUTH, "amoCRM rejected the token (401): re-authorise the integration",
         nothing_ran=True),
    Rule(402, ".*", Outcome.FAIL, "the amoCRM account is not paid (402): renew the subscription"),
    Rule(403, ".*", Outcome.STOP, "the account or this address is blocked (usually after too many 429 answers) or "
         "the integration lacks access; stopping so as not to prolong the block"),
    Rule(429, ".*", Outcome.RATE_LIMITED, "too many requests (429)", nothing_ran=True),
    Rule(range(500, 600), ".*", Outcome.RETRY, "server error {status}"),
]

# Reads and idempotent writes (tag PATCHes) retry 5xx and lost connections; other writes only answers that
# prove nothing ran (401 refreshed once, 429 held ``retry_after``).
READ = CallPolicy(
    "read", frozenset({Outcome.RETRY, Outcome.RATE_LIMITED, Outcome.REFRESH_AUTH}), transport=True,
    only_if_nothing_ran=False, attempts={Outcome.RETRY: 5, Outcome.RATE_LIMITED: MAX_429 + 1, Outcome.REFRESH_AUTH: 2},
    transport_attempts=5,
)
WRITE = CallPolicy(
    "write", frozenset({Outcome.RATE_LIMITED, Outcome.REFRESH_AUTH}), transport=False, only_if_nothing_ran=True,
    attempts={Outcome.RATE_LIMITED: MAX_429 + 1, Outcome.REFRESH_AUTH: 2},
)
BACKOFF = Backoff(base=0.5, cap=30.0)
HOLD_MIN, HOLD_MAX, HOLD_DEFAULT = 0.05, 900.0, 1.0  # a 429's retry_after, clamped; 1 s when it gives none


def classify(status: int, body: Any = None) -> Decision:
    """What an amoCRM answer means; a 429's ``retry_after`` becomes the decision's hint."""
    hint = None
    if status == 429:
        wait = body.get("retry_after") if isinstance(body, dict) else None
        try:
            hint = float(wait) if wait is not None else HOLD_DEFAULT
        except (TypeError, ValueError):
            hint = HOLD_DEFAULT
        hint = min(max(hint, HOLD_MIN), HOLD_MAX)
    detail = str(body.get("detail") or body.get("title") or "") if isinstance(body, dict) else ""
    return decide(RULES, status, "", detail, hint)


class AmoError(Exception):
    """amoCRM refused or failed a request; the message says what to check (never the token)."""


class AmoStopped(AmoError):
    """amoCRM answered 403: the account or this address is blocked, or the integration lost its access.
    The client that heard it sends no further request."""


class AmoHTTPError(AmoError):
    def __init__(self, method: str, path: str, status: int, body: Any, advice: str = ""):
        self.method, self.path, self.status = method, path, status
        self.body = body if isinstance(body, (dict, list)) else None
        detail = ""
        if isinstance(body, dict):
            detail = str(body.get("detail") or body.get("title") or "")
            problems = [
                f"{e.get('path')}: {e.get('detail')}"
                for item in body.get("validation-errors") or []
                if isinstance(item, dict)
                for e in item.get("errors") or []
                if isinstance(e, dict)
            ]
            if problems:
                detail += " (" + "; ".join(problems[:5]) + ")"
        super().__init__(f"amoCRM answered HTTP {status} to {method} {path}" + (f": {detail}" if detail else "")
                         + (f"; {advice}" if advice else ""))


class RateLimiter:
    """At most ``rate`` requests in any sliding second, shared by every thread of the client.

    A request holds one of ``rate`` slots from before it is sent until a second after its answer came
    back. The account counts a request when it arrives, which is after it was sent and before it was
    answered, so counting from the answer can never put ``rate + 1`` requests into one of its seconds,
    whatever the network or the server's queue does (the cost: a slot is held for a second plus the
    latency). ``hold()`` after a 429 stops everyone for ``retry_after``.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[threading.Condition, float | None], object] | None = None):
        """``clock`` and ``wait`` (``wait(condition, seconds)``, default ``condition.wait``) are the test seams:
        a test moves a fake clock in ``wait`` and sees every hold exactly, without sleeping."""
        # Slots: the documented 7 per second; a higher rate (a faster test clock, a raised limit) keeps
        # bursts of 7 and shortens the window: 7 per 7 / rate seconds.
        self.size = max(1, min(int(rate), BURST))
        self.window = self.size / rate + MARGIN
        self.done: deque[float] = deque()
        self.in_flight = 0
        self.resume_at = 0.0
        self.cond = threading.Condition()
        self.clock = clock
        self.wait = wait or (lambda cond, seconds: cond.wait(seconds))

    def acquire(self) -> None:
        with self.cond:
            while True:
                hold = self.hold_for(self.clock())
                if hold == 0:
                    self.in_flight += 1
                    return
                self.wait(self.cond, hold)  # None: every slot is in flight, wait for an answer

    def hold_for(self, now: float) -> float | None:
        """Seconds a request arriving at ``now`` must wait: 0 (a slot is free), the time until the oldest
        answered slot frees or a 429 hold ends, or None when every slot is in flight (until a release)."""
        while self.done and self.done[0] + self.window <= now:
            self.done.popleft()
        if now < self.resume_at:
            return self.resume_at - now
        if self.in_flight + len(self.done) < self.size:
            return 0
        if self.done:
            return self.done[0] + self.window - now
        return None

    def release(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.done.append(self.clock())
            self.cond.notify_all()

    def hold(self, seconds: float) -> None:
        with self.cond:
            self.resume_at = max(self.resume_at, self.clock() + seconds)


_LIMITERS: dict[tuple[str, float], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(base_url: str, rate: float) -> RateLimiter:
    """The one limiter of an account in this process: the pull, the write-back and anything else that
    talks to the same account share its seconds."""
    with _LIMITERS_LOCK:
        key = (base_url.rstrip("/").lower(), float(rate))
        if key not in _LIMITERS:
            _LIMITERS[key] = RateLimiter(rate)
        return _LIMITERS[key]


class TokenSource:
    """Gives the Bearer token; ``refresh()`` replaces it after a 401 (OAuth only)."""

    def token(self) -> str:  # pragma: no cover - protocol
        raise NotImplementedError

    def refresh(self, rejected: str) -> str:
        """A new token after ``rejected`` got a 401 (if another thread already replaced it, that one)."""
        raise AmoError(
            "amoCRM refused the long-lived access_token (401): it expired or the integration was disabled; "
            "generate a new one in the integration's Keys and scopes tab"
        )


class StaticToken(TokenSource):
    def __init__(self, token: str):
        self._token = token

    def token(self) -> str:
        return self._token


class AmoClient:
    """Calls ``{base_url}/api/v4/...``; counts requests and answers; remembers the server clock."""

    def __init__(self, base_url: str, tokens: TokenSource, *, requests_per_second: float = 7.0,
                 ca_file: str | None = None, timeout: float = 60.0, retries: int = 5,
                 sleep: Callable[[float], None] = time.sleep, random: Callable[[], float] = random.random):
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.limiter = shared_limiter(self.base_url, requests_per_second)
        self.ca_file = ca_file
        self._local = threading.local()  # one requests.Session per thread (pulls run two lists at once)
        self._sessions: list[requests.Session] = []
        self.timeout = timeout
        self.retries = retries
        self.read_policy = READ if retries == READ.attempts[Outcome.RETRY] else dataclasses.replace(
            READ, attempts={**READ.attempts, Outcome.RETRY: retries}, transport_attempts=retries)
        self.sleep = sleep
        self.random = random
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.server_time: int | None = None  # unix seconds of the first answer's Date header
        self.last_time: int | None = None  # unix seconds of the latest answer's Date header
        self.stopped: str | None = None  # the 403's message once one came: no request is sent after it
        self._lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "crm-lifecycle/0.1 (+amoCRM API v4)"
            if self.ca_file:
                session.verify = self.ca_file
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        for session in self._sessions:
            session.close()

    def __enter__(self) -> AmoClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- public calls ------------------------------------------------------------------------------

    def get(self, path: str, params: dict[str, Any] | list[tuple[str, Any]] | None = None) -> Any:
        """GET; returns the parsed body, or None for 204 No Content."""
        return self.request("GET", path, params=params)

    def patch(self, path: str, body: Any, *, idempotent: bool = True) -> Any:
        return self.request("PATCH", path, json=body, idempotent=idempotent)

    def post(self, path: str, body: Any, *, idempotent: bool = False) -> Any:
        return self.request("POST", path, json=body, idempotent=idempotent)

    def request(self, method: str, path: str, *, params: Any = None, json: Any = None, idempotent: bool = True) -> Any:
        """One call under :data:`READ` (reads and idempotent writes) or :data:`WRITE`: the one call loop."""
        policy = self.read_policy if idempotent else WRITE
        tries: dict[Outcome, int] = {}
        transient = 0  # 5xx and lost connections count together, as one budget
        while True:
            self._check_stopped(method, path)
            token = self.tokens.token()
            self.limiter.acquire()
            if self.stopped is not None:  # another thread heard a 403 while this one waited for a slot
                self.limiter.release()
                self._check_stopped(method, path)
            try:
                response = self.session.request(
                    method, self.base_url + path, params=params, json=json, timeout=self.timeout,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except requests.RequestException as exc:
                self.limiter.release()
                with self._lock:
                    self.requests += 1
                    answered = bool(self.statuses)
                message = None if answered else unreachable(exc, self.base_url)
                if message:  # nothing ever answered: retrying a refused connection only hides the cause
                    raise AmoError(f"amoCRM: {message}: check [crm] base_url") from None
                transient += 1
                if not policy.retries_transport(transient):
                    # The exception text holds the URL (no secret in it for amoCRM, but keep messages short).
                    raise AmoError(f"amoCRM {method} {path}: connection failed ({type(exc).__name__})") from None
                self.sleep(BACKOFF.delay(transient - 1, rand=self.random))
                continue
            self.limiter.release()
            self._note(response)
            status = response.status_code
            if status == 204:
                return None
            if status < 300:
                try:
                    return response.json()
                except ValueError:
                    error: AmoError = AmoError(f"amoCRM {method} {path}: answer is not JSON")
                    transient += 1
                    if not policy.retries(Decision(Outcome.RETRY, "", status), transient):
                        raise error from None
                    self.sleep(BACKOFF.delay(transient - 1, rand=self.random))
                    continue
            body = _body(response)
            decision = classify(status, body)
            if decision.outcome is Outcome.RETRY:
                transient += 1
                count = transient
            else:
                count = tries[decision.outcome] = tries.get(decision.outcome, 0) + 1
            if decision.outcome is Outcome.STOP:
                message = f"amoCRM answered {status} to {method} {path}: {decision.message}"
                with self._lock:
                    self.stopped = self.stopped or message
                raise AmoStopped(message)
            if not policy.retries(decision, count):
                if decision.outcome is Outcome.REFRESH_AUTH and count == 1:
                    self.tokens.refresh(token)  # a long-lived token cannot be refreshed: raises with what to do
                advice = decision.message if decision.rule is not None and decision.outcome is Outcome.FAIL else ""
                raise AmoHTTPError(method, path, status, body, advice)
            if decision.outcome is Outcome.REFRESH_AUTH:
                self.tokens.refresh(token)
            elif decision.outcome is Outcome.RATE_LIMITED:
                self.limiter.hold(decision.hint or HOLD_DEFAULT)  # everyone waits, not just this thread
            else:
                self.sleep(BACKOFF.delay(count - 1, rand=self.random))

    def _check_stopped(self, method: str, path: str) -> None:
        if self.stopped is not None:
            raise AmoStopped(f"not sent: {method} {path}, because {self.stopped}")

    def _note(self, response: requests.Response) -> None:
        with self._lock:
            self.requests += 1
            self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
            if response.headers.get("Date"):
                try:
                    stamp = int(email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp())
                except (TypeError, ValueError):
                    return
                if self.server_time is None:
                    self.server_time = stamp
                self.last_time = max(stamp, self.last_time or stamp)


def unreachable(exc: requests.RequestException, base_url: str) -> str | None:
    """What an operator should know when the first connection to the account fails; None if transient."""
    import urllib.parse

    parts = urllib.parse.urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    where = f"{parts.hostname}:{port}"
    text = str(exc).lower()
    if isinstance(exc, requests.exceptions.SSLError):
        if "certificate" in text:
            return f"the TLS certificate at {where} is not trusted"
        return f"TLS handshake with {where} failed: the server may speak plain http, not https (an http/https mix-up)"
    if isinstance(exc, requests.ConnectionError):
        if "name or service not known" in text or "nodename nor servname" in text or "failed to resolve" in text:
            return f"the host {parts.hostname} is not known (DNS)"
        if "refused" in text:
            return f"connection refused at {where}"
    return None  # a reset or a time-out: transient, retried


def _body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
