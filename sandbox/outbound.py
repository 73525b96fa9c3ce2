"""Requests a sandbox SENDS (a CRM calling an application's handler): one HTTP call, and an ordered queue.

Used by the Bitrix24 sandbox (install callback, bound events, placement frames; apps.py) and the amoCRM
sandbox (the OAuth redirect, account webhooks, the disconnect hook; hooks.py). Only loopback and whatever
URL a test hands to a control route are ever called: the sandboxes never reach the Internet by themselves.
"""

from __future__ import annotations

import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

FORM = "application/x-www-form-urlencoded"
# No proxy from the environment (HTTPS_PROXY may point at the Bitrix24 sandbox itself in TLS trials): a CRM
# calls the handler's address directly.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def send(verb: str, url: str, body: bytes | None = None, *, headers: dict | None = None,
         timeout: float = 10.0, keep: int = 200_000) -> dict:
    """One request; never raises. ``status`` is None when no HTTP answer came (refused, timeout, reset)."""
    req = urllib.request.Request(url, data=body, method=verb, headers=headers or {})
    started = time.monotonic()
    out: dict = {"status": None, "error": None, "response": "", "headers": {}}
    try:
        with _OPENER.open(req, timeout=timeout) as resp:  # noqa: S310 (a URL a test asked for)
            out["status"] = resp.status
            out["headers"] = {k.lower(): v for k, v in resp.headers.items()}
            out["response"] = resp.read(keep).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        out["status"] = exc.code
        out["headers"] = {k.lower(): v for k, v in (exc.headers or {}).items()}
        try:
            out["response"] = exc.read(keep).decode("utf-8", "replace")
        except OSError:
            pass
    except (OSError, ValueError) as exc:  # URLError, timeouts, resets, a malformed URL
        reason = getattr(exc, "reason", exc)
        out["error"] = "timeout" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else \
            f"{type(reason).__name__}: {reason}"[:300]
    out["elapsed"] = round(time.monotonic() - started, 3)
    return out


class Outbox:
    """Jobs run one after another on a daemon thread (a CRM's queue server: order kept, caller not blocked)."""

    def __init__(self, name: str):
        self.name = name
        self.jobs: "queue.Queue[Callable[[], None]]" = queue.Queue()
        self.pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, job: Callable[[], None]) -> None:
        with self._lock:
            self.pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self.jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                job()
            except Exception:  # noqa: BLE001 - a failing delivery must not stop the queue
                pass
            finally:
                with self._lock:
                    self.pending -= 1

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued job has run (bounded); True when the queue is empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.pending == 0:
                    return True
            time.sleep(0.01)
        return False
