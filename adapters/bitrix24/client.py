"""Bitrix24 REST transport: fast-bitrix24 for throttling and retries, plus what it leaves out.

fast-bitrix24 (``BitrixAsync``) brings the leaky-bucket throttle (2 req/s, burst 50), retries of 5xx
(incl. 503 ``QUERY_LIMIT_EXCEEDED``), connection resets and time-outs, and a token callback on 401.
What it does not do, covered here without forking it (research/bitrix24.md section 8):

* 4xx bodies are dropped (``raise_for_status=True`` keeps only the status): we hand it our own
  ``aiohttp.ClientSession`` whose ``raise_for_status`` callback reads the JSON body first and raises
  :class:`BitrixHTTPError`, a ``ClientResponseError`` carrying ``error`` / ``error_description``, so
  fast-bitrix24's own 5xx / 401 logic still sees what it expects;
* 429 ``OPERATION_TIME_LIMIT`` is not retried: we wait until ``time.operating_reset_at`` (the last one the
  portal told us for that method, per docs settings/performance/limits.md) and try again;
* per-command errors inside ``batch`` come back with HTTP 200 in ``result_error``: callers get them;
* a portal that cannot be reached at all (connection refused, unknown host, https to a plain-HTTP port
  or the reverse) fails on the first request with what to check, instead of fast-bitrix24 retrying the
  connection for 18 s and saying "All attempts to get data from server exhausted". Once the portal has
  answered, a lost connection is retried as before.

Errors never contain the webhook URL or a token: ``str()`` of every error here is written for the operator.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from fast_bitrix24 import BitrixAsync

MAX_OPERATING_WAITS = 5


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


# What an HTTP error means for us: (status, error code) -> (kind, operator's message).
ERRORS: dict[tuple[int, str], tuple[str, str]] = {
    (401, "NO_AUTH_FOUND"): ("fail", "the portal rejected the webhook or token (401 NO_AUTH_FOUND): check webhook_url / re-install the app"),
    (401, "expired_token"): ("refresh", "access token expired"),
    (401, "invalid_token"): ("refresh", "access token invalid"),
    (403, "insufficient_scope"): ("fail", "the webhook lacks a scope (403 insufficient_scope): give it crm, task and user"),
    (403, "ACCESS_DENIED"): ("fail", "REST API access denied (403 ACCESS_DENIED): the plan or the user lacks rights"),
    (403, "INVALID_CREDENTIALS"): ("fail", "the webhook's user lacks permissions (403 INVALID_CREDENTIALS)"),
    (429, "OPERATION_TIME_LIMIT"): ("operating", "method blocked by the operating-time limit"),
    (503, "QUERY_LIMIT_EXCEEDED"): ("rate", "too many requests"),
}


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


def https_required(description: str) -> bool:
    """A plain-http request reached an https-only server (Bitrix24's "Https required.", nginx's page)."""
    low = description.lower()
    return "https required" in low or "plain http request was sent to https port" in low


def classify(status: int, error: str) -> tuple[str, str]:
    for (code_status, code), verdict in ERRORS.items():
        if status == code_status and error.lower() == code.lower():
            return verdict
    if status >= 500:
        return ("retry", f"server error {status}")
    return ("fail", f"HTTP {status} {error or '(no code)'}")


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
    ):
        self.endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        self.token_func = token_func
        self.requests_per_second = requests_per_second
        self.burst = burst
        self.ssl_context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.sleep = sleep
        self.clock = clock
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.operating_reset_at: dict[str, float] = {}
        self.server_time: str | None = None  # time.date_start of the first answer: the portal's clock
        self._operating_waits: dict[str, int] = {}
        self._answered = False  # the portal answered at least once: connection errors are transient now
        self._session: aiohttp.ClientSession | None = None
        self._bitrix: BitrixAsync | None = None

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
        """One REST call; returns the whole answer (``result``, ``time``, ``total``, ...)."""
        assert self._bitrix is not None, "use 'async with Bitrix24Client(...)'"
        waits = 0
        while True:
            try:
                answer = await self._bitrix.call(method, params or {}, raw=True)
            except BitrixHTTPError as exc:
                if exc.status == 400 and https_required(exc.description):
                    raise BitrixError(f"Bitrix24: {self.endpoint.split('/')[2]} speaks https, not http (an http/https "
                                      "mix-up): check [crm] webhook_url (or client_endpoint)") from None
                kind, message = classify(exc.status, exc.error)
                if kind == "operating" and waits < MAX_OPERATING_WAITS:
                    waits += 1
                    await self._wait_operating(method, exc.body)
                    continue
                raise BitrixError(f"Bitrix24 {method}: {message} ({exc.description})") from None
            except RuntimeError as exc:  # fast-bitrix24 gave up after its retries
                raise BitrixError(f"Bitrix24 {method}: the portal kept failing; {exc}") from None
            self._note_time(method, answer.get("time"))
            return answer

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
        for key, stamp in (body.get("result_time") or {}).items() if isinstance(body.get("result_time"), dict) else []:
            method = commands.get(key, "").split("?", 1)[0].lower()
            if method:
                self._note_time(method, stamp)
        return results, errors

    async def call_once(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A write that must never be sent twice (campaign tasks and deals).

        fast-bitrix24 resends a request after a 5xx, a reset or a timeout, which for a write whose first
        copy did reach the portal makes a duplicate. Here only answers that prove the portal did not run
        the request are retried (503 QUERY_LIMIT_EXCEEDED, 429 OPERATION_TIME_LIMIT, 401 expired token);
        anything else raises :class:`BitrixError` and the caller settles the outcome by looking it up.
        """
        assert self._session is not None and self._bitrix is not None, "use 'async with Bitrix24Client(...)'"
        srh = self._bitrix.srh
        refreshed = False
        for attempt in range(60):
            if self.token_func is not None and not srh.token:
                srh.token = await self.token_func()
            body = dict(params)
            if srh.token:
                body["auth"] = srh.token
            try:
                async with self._session.post(self.endpoint + method, json=body) as response:
                    answer = await response.json(content_type=None)
            except BitrixHTTPError as exc:
                kind, message = classify(exc.status, exc.error)
                if kind == "rate":
                    await self.sleep(min(2.0, 0.5 * (attempt + 1)))
                    continue
                if kind == "operating":
                    await self._wait_operating(method, exc.body)
                    continue
                if kind == "refresh" and self.token_func is not None and not refreshed:
                    refreshed = True
                    srh.token = await self.token_func()
                    continue
                raise BitrixError(f"Bitrix24 {method}: {message} ({exc.description}); outcome unknown") from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise BitrixError(f"Bitrix24 {method}: {type(exc).__name__}; outcome unknown") from None
            if not isinstance(answer, dict):
                raise BitrixError(f"Bitrix24 {method}: the answer is not a JSON object; outcome unknown")
            self._note_time(method, answer.get("time"))
            return answer
        raise BitrixError(f"Bitrix24 {method}: the portal kept refusing the request")

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
