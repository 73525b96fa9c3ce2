"""Bitrix24 REST transport: one call loop, one table of what answers mean, two named policies.

* :data:`RULES` reads the status *and* the body's ``error`` code (Bitrix24 hides its rate limit in a 503
  ``QUERY_LIMIT_EXCEEDED`` body and its operating limit in a 429 ``OPERATION_TIME_LIMIT``; research/
  bitrix24.md); :func:`classify` gives a :class:`~adapters.retry.Decision` with the operator's message.
* :data:`READ` retries transport errors, 5xx and the rate limits, and refreshes an expired token once;
  :data:`WRITE` (:meth:`Bitrix24Client.call_once`) retries only answers that prove nothing ran (503
  QUERY_LIMIT_EXCEEDED, 429 OPERATION_TIME_LIMIT, 401 expired/invalid token); anything else is "outcome
  unknown" and the caller settles it by looking the record up.
* Every request, read or write, goes through fast-bitrix24's limiter of the portal (``srh.request_attempt``:
  the leaky bucket of 2 req/s with a burst of 50, the per-method operating-time throttle, the concurrency
  cap). fast-bitrix24's own retry loop is not used: the loop here decides.
* 4xx bodies: our ``aiohttp.ClientSession`` has a ``raise_for_status`` callback that reads the JSON body
  and raises :class:`BitrixHTTPError` with ``error`` / ``error_description``.
* 429 ``OPERATION_TIME_LIMIT``: wait until ``time.operating_reset_at`` (the last one the portal told us for
  that method, per docs settings/performance/limits.md), else a growing back-off; other waits take a
  capped exponential back-off with jitter (:data:`BACKOFF`); ``sleep``, ``clock`` and ``random`` are injected.
* per-command errors inside ``batch`` come back with HTTP 200 in ``result_error``: callers get them;
* a portal that cannot be reached at all (connection refused, unknown host, https to a plain-HTTP port
  or the reverse) fails on the first request with what to check instead of being retried. Once the
  portal has answered, a lost connection is retried (reads only).

Errors never contain the webhook URL or a token: ``str()`` of every error here is written for the operator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from random import random
from typing import Any

import aiohttp
from fast_bitrix24 import BitrixAsync
from fast_bitrix24.srh import ServerError, TokenRejectedError

from adapters.retry import Backoff, CallPolicy, Decision, Outcome, Rule, decide

# fast_bitrix24 sets its own logger to DEBUG when it is imported, which would log every request's parameters
# (customers' personal data) whatever the command's level, when the import comes after logs.setup()
logging.getLogger("fast_bitrix24").setLevel(logging.WARNING)



class BitrixError(Exception):
    """A Bitrix24 call failed in a way retrying will not fix; the message says what to do."""


class BitrixHTTPError(aiohttp.ClientResponseError):
    """An HTTP error from the portal with its JSON body kept (``error``, ``error_description``)."""

    def __init__(self, response: aiohttp.ClientResponse, body: dict[str, Any]):
        self.error = str(body.get("error", ""))
        self.description = str(body.get("error_description", ""))
        self.body = body
        super().__init__(
            response.request_info, response.history, status=response.status, message=self.description, headers=response.headers
        )

    def __str__(self) -> str:  # the default includes the URL, i.e. the webhook secret
        return f"Bitrix24 answered HTTP {self.status} {self.error or '(no code)'}: {self.description}"


# What an answer means: the first matching row decides (adapters/retry.py). ``nothing_ran``: the portal
# refused before running the request, so even a write may be sent again.
RULES: list[Rule] = [
    Rule(400, ".*", Outcome.FAIL, "{where} speaks https, not http (an http/https mix-up): check [crm] webhook_url "
         "(or client_endpoint)", detail=r"https required|plain http request was sent to https port"),
    Rule(401, "NO_AUTH_FOUND", Outcome.FAIL,
         "the portal rejected the webhook or token (401 NO_AUTH_FOUND): check webhook_url / re-install the app"),
    Rule(401, "expired_token", Outcome.REFRESH_AUTH, "access token expired", nothing_ran=True),
    Rule(401, "invalid_token", Outcome.REFRESH_AUTH, "access token invalid", nothing_ran=True),
    Rule(403, "insufficient_scope", Outcome.FAIL,
         "the webhook lacks a scope (403 insufficient_scope): give it crm, task and user"),
    Rule(403, "ACCESS_DENIED", Outcome.FAIL, "REST API access denied (403 ACCESS_DENIED): the plan or the user lacks rights"),
    Rule(403, "INVALID_CREDENTIALS", Outcome.FAIL, "the webhook's user lacks permissions (403 INVALID_CREDENTIALS)"),
    Rule(429, "OPERATION_TIME_LIMIT", Outcome.RATE_LIMITED, "method blocked by the operating-time limit", nothing_ran=True),
    Rule(503, "QUERY_LIMIT_EXCEEDED", Outcome.RATE_LIMITED, "too many requests", nothing_ran=True),
    Rule(range(500, 600), ".*", Outcome.RETRY, "server error {status}"),
]

# Reads retry transient failures; writes only answers that prove nothing ran (else: "outcome unknown", and
# the caller settles it by looking the record up).
READ = CallPolicy(
    "read", frozenset({Outcome.RETRY, Outcome.RATE_LIMITED, Outcome.REFRESH_AUTH}), transport=True,
    only_if_nothing_ran=False, attempts={Outcome.RETRY: 10, Outcome.RATE_LIMITED: 20, Outcome.REFRESH_AUTH: 2},
    transport_attempts=10,
)
WRITE = CallPolicy(
    "write", frozenset({Outcome.RATE_LIMITED, Outcome.REFRESH_AUTH}), transport=False,
    only_if_nothing_ran=True, attempts={Outcome.RATE_LIMITED: 60, Outcome.REFRESH_AUTH: 2},
)
BACKOFF = Backoff(base=0.25, cap=5.0)


def unreachable(exc: BaseException, host: str | None, port: int | None, scheme: str) -> str | None:
    """What an operator should know when the very first connection fails, or None for a transient error."""
    where = f"{host}:{port}"
    text = str(exc).lower()
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the TLS certificate at {where} is not trusted ({type(exc.certificate_error).__name__})"
    if isinstance(exc, aiohttp.ClientConnectorError) and (
            isinstance(exc.os_error, ConnectionRefusedError) or "refused" in text):
        return f"connection refused at {where}"
    if isinstance(exc, aiohttp.ClientSSLError) or "wrong version number" in text:
        return (f"TLS handshake with {where} failed: the server may speak plain http, not {scheme} "
                "(an http/https mix-up)")
    dns_error = getattr(aiohttp, "ClientConnectorDNSError", None)
    if dns_error is not None and isinstance(exc, dns_error):
        return f"the host {host} is not known (DNS)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if "name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
            return f"the host {host} is not known (DNS)"
    return None


async def _speaks_tls(host: str | None, port: int | None) -> bool:
    """Whether host:port completes a TLS handshake (a plain-http request to it was just dropped)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), 5)
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        return False
    writer.close()
    return True


def _later(a: str, b: str) -> bool:
    """Whether ISO time ``a`` is after ``b`` (the portal's offsets may differ); unparsable: keep ``b``."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(a) > datetime.fromisoformat(b)
    except ValueError:
        return False


def classify(status: int, body: dict[str, Any] | str | None = None, *, where: str = "the portal") -> Decision:
    """What an HTTP answer means (``body``: the parsed JSON body, or just its ``error`` code)."""
    if isinstance(body, dict):
        code, detail = str(body.get("error", "") or ""), str(body.get("error_description", "") or "")
    else:
        code, detail = str(body or ""), ""
    return decide(RULES, status, code, detail, where=where)


def classify_command(error: Any) -> Decision:
    """A command's error inside a ``batch`` (the request itself was HTTP 200; the error sits in
    ``result_error``): the same table, matched by the code alone."""
    code = str(error.get("error", "") or "") if isinstance(error, dict) else ""
    detail = str(error.get("error_description", "") or "") if isinstance(error, dict) else str(error or "")
    for rule in RULES:
        if isinstance(rule.status, int) and rule.code != ".*" and rule.matches(rule.status, code, detail):
            return decide([rule], rule.status, code, detail, where="the portal")
    return decide((), 200, code, detail)


# Requests a portal may still be receiving when the client already counts them drained: the portal counts a
# request when it arrives, this client when it sends it, so a full bucket plus the requests on the wire would
# overflow the portal's. Three covers about 1.5 s of latency at the documented 2 req/s.
BUCKET_MARGIN = 3


class LeakyBucket:
    """The portal's leaky bucket (2 req/s, 50 at once; settings/performance/limits.md), kept by the client in
    front of fast-bitrix24's own throttler, which lets concurrent callers through together (each works out its
    wait before any of them records its request): with batches in flight and a fast network the portal then
    refused requests with 503 QUERY_LIMIT_EXCEEDED. One caller at a time: the level drains at ``rate`` and a
    request goes only when one more fits under ``capacity - BUCKET_MARGIN``."""

    def __init__(self, capacity: int, rate: float, *, clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]]):
        self.capacity = max(1.0, float(capacity - BUCKET_MARGIN))
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.level = 0.0
        self.at: float | None = None
        self._lock: asyncio.Lock | None = None

    def _drain(self) -> None:
        now = self.clock()
        if self.at is not None:
            self.level = max(0.0, self.level - (now - self.at) * self.rate)
        self.at = now

    async def acquire(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self._drain()
            while self.level + 1 > self.capacity:
                await self.sleep((self.level + 1 - self.capacity) / self.rate)
                self._drain()
            self.level += 1


class Bitrix24Client:
    """One portal. Use as ``async with Bitrix24Client(...) as client:`` inside one event loop."""

    def __init__(
        self,
        endpoint: str,
        *,
        token_func: Callable[[], Awaitable[str]] | None = None,
        requests_per_second: float = 2.0,
        burst: int = 50,
        ca_file: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        random: Callable[[], float] = random,
    ):
        self.endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        self.token_func = token_func
        self.requests_per_second = requests_per_second
        self.burst = burst
        self.ssl_context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.sleep = sleep
        self.clock = clock
        self.random = random
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.operating_reset_at: dict[str, float] = {}
        self.server_time: str | None = None  # time.date_start of the first answer: the portal's clock
        self.last_finish: str | None = None  # the latest time.date_finish of any answer (the portal's clock)
        self._operating_waits: dict[str, int] = {}
        self.last_batch_next: dict[str, Any] = {}  # result_next of the last batch: commands with more pages
        self._answered = False  # the portal answered at least once: connection errors are transient now
        self._session: aiohttp.ClientSession | None = None
        self._bitrix: BitrixAsync | None = None
        self.bucket = LeakyBucket(burst, requests_per_second, clock=clock, sleep=sleep)

    async def __aenter__(self) -> Bitrix24Client:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._count)
        trace.on_request_exception.append(self._count_exception)
        connector = aiohttp.TCPConnector(ssl=self.ssl_context) if self.ssl_context else None
        self._session = aiohttp.ClientSession(
            raise_for_status=self._check, trace_configs=[trace], connector=connector, timeout=aiohttp.ClientTimeout(total=90)
        )
        self._bitrix = BitrixAsync(
            self.endpoint,
            token_func=self.token_func,
            verbose=False,
            requests_per_second=self.requests_per_second,
            request_pool_size=self.burst,
            client=self._session,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _count(self, _session: Any, _ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        self.requests += 1
        self._answered = True
        self.statuses[params.response.status] += 1

    async def _count_exception(self, _session: Any, _ctx: Any, params: aiohttp.TraceRequestExceptionParams) -> None:
        self.requests += 1
        self.statuses[0] += 1
        if not self._answered:
            url = params.url
            message = unreachable(params.exception, url.host, url.port, url.scheme)
            if message is None and url.scheme == "http" and isinstance(params.exception, aiohttp.ServerDisconnectedError) \
                    and await _speaks_tls(url.host, url.port):
                message = f"{url.host}:{url.port} speaks https, not http (an http/https mix-up)"
            if message:
                # raised inside the request: fast-bitrix24 retries only aiohttp's errors, so this ends the call
                raise BitrixError(f"Bitrix24: {message}: check [crm] webhook_url (or client_endpoint)")

    @staticmethod
    async def _check(response: aiohttp.ClientResponse) -> None:
        if response.status < 400:
            return
        raw = await response.read()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                body = {}
        except ValueError:
            body = {"error": "", "error_description": raw[:200].decode("utf-8", "replace")}
        raise BitrixHTTPError(response, body)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One REST call under the :data:`READ` policy; returns the whole answer (``result``, ``time``, ...)."""
        return await self._send(method, params or {}, READ)

    async def _send(self, method: str, params: dict[str, Any], policy: CallPolicy) -> dict[str, Any]:
        """The one call loop. Every request, read or write, passes fast-bitrix24's limiter of this portal
        (``srh.request_attempt``: the leaky bucket, the per-method operating-time throttle, the concurrency
        cap); what an answer means comes from :data:`RULES`, whether it is tried again from ``policy``."""
        assert self._bitrix is not None, "use 'async with Bitrix24Client(...)'"
        srh = self._bitrix.srh
        unknown = "; outcome unknown" if policy.only_if_nothing_ran else ""
        tries: Counter[Outcome] = Counter()
        transport = 0
        while True:
            if self.token_func is not None and not srh.token:
                await srh.ensure_new_token()
            try:
                await self.bucket.acquire()
                answer = await srh.request_attempt(method.strip().lower(), params)
            except (ServerError, TokenRejectedError, BitrixHTTPError) as exc:
                http = exc if isinstance(exc, BitrixHTTPError) else exc.__cause__
                if not isinstance(http, BitrixHTTPError):
                    raise BitrixError(f"Bitrix24 {method}: HTTP error without a body{unknown}") from None
                decision = classify(http.status, http.body, where=self.endpoint.split("/")[2])
                tries[decision.outcome] += 1
                if decision.outcome is Outcome.REFRESH_AUTH and self.token_func is None or \
                        not policy.retries(decision, tries[decision.outcome]):
                    if decision.rule is RULES[0]:  # the http/https mix-up: the message is the whole story
                        raise BitrixError(f"Bitrix24: {decision.message}") from None
                    if decision.outcome is Outcome.RETRY and Outcome.RETRY in policy.retry:
                        raise BitrixError(f"Bitrix24 {method}: the portal kept failing; {decision.message} "
                                          f"({http.description})") from None
                    raise BitrixError(f"Bitrix24 {method}: {decision.message} ({http.description}){unknown}") from None
                await self._wait(method, decision, http.body, tries[decision.outcome])
                continue
            except (aiohttp.ClientResponseError, ValueError):  # a 2xx whose body is not JSON
                raise BitrixError(f"Bitrix24 {method}: the answer is not a JSON object{unknown}") from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                transport += 1
                if not policy.retries_transport(transport):
                    if policy.transport:
                        raise BitrixError(f"Bitrix24 {method}: the portal kept failing; "
                                          f"{type(exc).__name__}") from None
                    raise BitrixError(f"Bitrix24 {method}: {type(exc).__name__}{unknown}") from None
                await self.sleep(BACKOFF.delay(transport - 1, rand=self.random))
                continue
            if not isinstance(answer, dict):
                raise BitrixError(f"Bitrix24 {method}: the answer is not a JSON object{unknown}")
            self._note_time(method, answer.get("time"))
            return answer

    async def _wait(self, method: str, decision: Decision, body: dict[str, Any], tries: int) -> None:
        if decision.outcome is Outcome.REFRESH_AUTH:
            assert self._bitrix is not None
            await self._bitrix.srh.ensure_new_token()
        elif decision.code.upper() == "OPERATION_TIME_LIMIT":
            await self._wait_operating(method, body)
        else:  # 503 QUERY_LIMIT_EXCEEDED or a 5xx: capped exponential back-off with jitter
            await self.sleep(BACKOFF.delay(tries - 1, rand=self.random))

    async def _wait_operating(self, method: str, body: dict[str, Any]) -> None:
        """Sleep until the method's operating_reset_at; when no future reset time is known (a batch
        command's 429 carries no ``time``), back off 0.1, 0.2, 0.4 ... 60 s until the method answers again."""
        reset = (body.get("time") or {}).get("operating_reset_at") or self.operating_reset_at.get(method)
        tries = self._operating_waits.get(method, 0)
        self._operating_waits[method] = tries + 1
        if reset and float(reset) > self.clock():
            delay = float(reset) - self.clock() + 0.05
        else:
            delay = min(60.0, 0.1 * 2**tries)
        await self.sleep(min(delay, 600.0))

    def _note_time(self, method: str, stamp: Any) -> None:
        if not isinstance(stamp, dict):
            return
        if self.server_time is None and stamp.get("date_start"):
            self.server_time = str(stamp["date_start"])
        finish = stamp.get("date_finish")
        if finish and (self.last_finish is None or _later(str(finish), self.last_finish)):
            self.last_finish = str(finish)
        if stamp.get("operating_reset_at"):
            self.operating_reset_at[method] = float(stamp["operating_reset_at"])
        self._operating_waits.pop(method, None)  # it answered: the next block starts its backoff afresh

    async def batch(self, commands: dict[str, str], *, halt: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run up to 50 commands in one request; return (results by key, errors by key).

        Commands that hit the operating limit are reported in the errors with code OPERATION_TIME_LIMIT;
        :meth:`wait_for_operating` waits for their method to open again.
        """
        if len(commands) > 50:
            raise ValueError("a Bitrix24 batch holds at most 50 commands")
        answer = await self.call("batch", {"halt": 1 if halt else 0, "cmd": commands})
        body = answer.get("result") or {}
        results = body.get("result") or {}
        errors = body.get("result_error") or {}
        if isinstance(results, list):  # PHP turns keys 0..n-1 into a list
            results = {str(i): v for i, v in enumerate(results)}
        if isinstance(errors, list):
            errors = {str(i): v for i, v in enumerate(errors)}
        nexts = body.get("result_next") or {}
        self.last_batch_next = nexts if isinstance(nexts, dict) else {str(i): v for i, v in enumerate(nexts)}
        for key, stamp in (body.get("result_time") or {}).items() if isinstance(body.get("result_time"), dict) else []:
            method = commands.get(key, "").split("?", 1)[0].lower()
            if method:
                self._note_time(method, stamp)
        return results, errors

    async def call_once(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A write that must never be sent twice (campaign tasks and deals): the :data:`WRITE` policy.

        Only answers that prove the portal did not run the request are retried (503 QUERY_LIMIT_EXCEEDED,
        429 OPERATION_TIME_LIMIT, 401 expired token); anything else raises :class:`BitrixError` ("outcome
        unknown") and the caller settles the outcome by looking it up. It goes through the same limiter as
        the reads.
        """
        return await self._send(method, params, WRITE)

    async def batch_once(self, commands: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`batch` through :meth:`call_once`: for writes."""
        answer = await self.call_once("batch", {"halt": 0, "cmd": commands})
        body = answer.get("result") or {}
        results = body.get("result") or {}
        errors = body.get("result_error") or {}
        if isinstance(results, list):
            results = {str(i): v for i, v in enumerate(results)}
        if isinstance(errors, list):
            errors = {str(i): v for i, v in enumerate(errors)}
        return results, errors

    async def wait_for_operating(self, method: str) -> None:
        await self._wait_operating(method.lower(), {})
