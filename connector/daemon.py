"""``lifecycle run``: syncs on a schedule and on CRM webhooks; health, readiness and Prometheus metrics.

* Schedule: ``[schedule] every = "1h"`` or ``at = ["07:00", "13:00"]`` (the CRM time zone), through the
  ``schedule`` library; a first sync runs at start.
* One sync of a portal at a time: every sync holds the portal's lock row in the state store (``locks``,
  taken inside pipeline.sync, see connector.synclock), across processes and machines that share the
  store; it is renewed while the sync runs and a crashed holder's lock lapses after ``[daemon]
  lock_seconds``. A sync that finds the lock held is skipped (logged and counted).
* Webhooks (``POST /webhooks/bitrix24``, ``POST /webhooks/amocrm/<secret>``) mark the CRM as changed; an
  incremental sync starts once no webhook has arrived for ``debounce_seconds``, so a deal won in the CRM
  moves its customer within seconds, not at the next scheduled run; a steady stream of webhooks cannot
  postpone it for ever: it starts at the latest ``max_wait_seconds`` after the first unsynced webhook.
* HTTP (connector/http.py) is served by uvicorn in a background thread; syncs run in the main thread.
* SIGTERM / SIGINT: the sync in flight stops at its next safe point (after the batch in flight; every
  stage is recorded, see pipeline.STOP), the run is recorded as interrupted and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import schedule

from connector.http import ServiceServer
from connector.metrics import Metrics

log = logging.getLogger("lifecycle.daemon")
TICK = 0.2


class Daemon:
    def __init__(self, config: Any, *, port: int | None = None):
        self.config = config
        self.metrics = Metrics(config.crm.name, config.crm.kind)
        self.stop = threading.Event()
        self.changed_at: float | None = None  # last webhook
        self.first_changed_at: float | None = None  # first webhook not yet covered by a sync
        self.changed_lock = threading.Lock()
        self.last_status: str | None = None
        self.server = ServiceServer(self, host=config.settings.daemon.host,
                                    port=config.settings.daemon.port if port is None else port)

    # -- webhooks call this ------------------------------------------------------------------------

    def crm_changed(self) -> None:
        with self.changed_lock:
            self.changed_at = time.monotonic()
            if self.first_changed_at is None:
                self.first_changed_at = self.changed_at

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        from connector import pipeline

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.server.start()
        log.info("serving health, metrics and webhooks on port %s", self.server.port)
        self._schedule()
        self.sync("start")
        try:
            while not self.stop.is_set():
                schedule.run_pending()
                self._maybe_webhook_sync()
                self.stop.wait(TICK)
        finally:
            self.server.stop()
            schedule.clear()
            pipeline.STOP.clear()
        log.info("stopped")
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        from connector import pipeline

        log.info("signal %s: finishing the batch in flight, then stopping", signal.Signals(signum).name)
        self.stop.set()
        pipeline.STOP.set()

    def _schedule(self) -> None:
        plan = self.config.settings.schedule
        schedule.clear()
        if plan.every:
            schedule.every(every_seconds(plan.every)).seconds.do(self.sync, "schedule")
        tz = self.config.crm.timezone
        for at in plan.at:
            schedule.every().day.at(at, tz).do(self.sync, "schedule")
        if not plan.every and not plan.at:
            schedule.every(1).hours.do(self.sync, "schedule")

    def _maybe_webhook_sync(self) -> None:
        settings = self.config.settings.daemon
        with self.changed_lock:
            if self.changed_at is None or self.first_changed_at is None:
                return
            now = time.monotonic()
            quiet = now - self.changed_at >= settings.debounce_seconds
            waited = now - self.first_changed_at
            if not quiet and waited < settings.max_wait_seconds:
                return
            self.changed_at = self.first_changed_at = None
        if not quiet:
            log.info("webhooks kept arriving for %.0f s: syncing now (max_wait_seconds)", waited)
        self.sync("webhook")

    # -- one sync ----------------------------------------------------------------------------------

    def sync(self, reason: str) -> str:
        from connector.pipeline import Interrupted, sync
        from connector.synclock import LockLost, SyncLocked

        if self.stop.is_set():
            return "stopped"
        started = time.perf_counter()
        status = "ok"
        try:
            log.info("sync (%s) started", reason)
            result = sync(self.config)
            self.metrics.observe(result.summary())
            self.metrics.sizes(result.computation.counts)
            self.metrics.kpi(result.computation, self.config.settings.kpi.active_share_target)
            log.info("sync (%s) done: %s customers, %s entered, %s left", reason, result.summary()["customers"],
                     sum(result.summary()["entered"].values()), sum(result.summary()["left"].values()))
        except SyncLocked as exc:
            log.info("sync (%s) skipped: %s holds the lock since %s", reason, exc.holder or "another process",
                     exc.since)
            self.metrics.skipped.inc()
            return "locked"
        except (Interrupted, LockLost) as exc:
            status = "interrupted"
            log.info("sync (%s) interrupted at a safe point (%s); the next run goes on from there", reason, exc)
        except Exception as exc:  # logged (redacted) and counted; the daemon keeps running
            status = "failed"
            log.error("sync (%s) failed: %s", reason, exc, exc_info=True)
        self.metrics.finished(status, time.perf_counter() - started)
        self.metrics.refresh_state(self.config)
        self.last_status = status
        return status

    def ready(self) -> tuple[bool, str]:
        from connector.pipeline import open_store

        try:
            store = open_store(self.config)
            try:
                runs = store.last_runs(5)
            finally:
                store.close()
        except Exception as exc:
            return False, f"state store unreachable: {type(exc).__name__}"
        finished = [r for r in runs if r["status"] in ("ok", "failed")]
        if finished and finished[0]["status"] == "failed":
            return False, "the last sync failed"
        return True, "ready"


UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_EVERY = 3600.0  # no [schedule]: hourly


def every_seconds(every: str) -> int:
    """``[schedule] every`` ("30m", "1h", "5 s") in seconds."""
    text = every.strip()
    return int(text[:-1].strip()) * UNIT_SECONDS[text[-1]]


def next_run(plan: Any, tz: str, now: datetime, previous: datetime | None = None) -> datetime:
    """When a portal with ``[schedule]`` ``plan`` is next due after ``now`` (aware), as this daemon schedules
    it: every ``every`` counted from the previous due time (not from a late start), and each ``at`` time of
    the day in the CRM time zone ``tz``; hourly when neither is set. The many-portal dispatcher
    (connector/worker.py) uses it for every portal in the registry."""
    from datetime import timedelta

    candidates: list[datetime] = []
    if plan.every or not plan.at:
        step = timedelta(seconds=every_seconds(plan.every) if plan.every else DEFAULT_EVERY)
        due = (previous or now) + step
        candidates.append(due if due > now else now + step)
    local = now.astimezone(ZoneInfo(tz))
    for at in plan.at:
        hour, minute = (int(x) for x in at.split(":"))
        due = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if due <= local:
            due = (local + timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
        candidates.append(due)
    return min(candidates)


def now_in(tz: str) -> datetime:
    return datetime.now(ZoneInfo(tz))
