"""Many portals in one deployment: procrastinate workers on the state store's PostgreSQL (``lifecycle worker``).

The web service (``lifecycle run --state-url URL``, connector/portals_web.py) and any number of worker
processes, on any number of machines, share one PostgreSQL: the portal registry (connector/registry.py),
every portal's data, and procrastinate's job tables. Jobs:

* ``lifecycle.sync_portal(portal, reason)``: one :func:`connector.pipeline.sync` of a registry portal.
  Always deferred with ``lock = "portal:<name>"`` (one sync of a portal at a time, on any machine) and
  ``queueing_lock = "sync:<name>"`` (at most one waiting: a refused defer means one is queued already,
  which is what the caller wanted, so :func:`defer_sync` folds it).
* ``lifecycle.dispatch`` (periodic, every ``tick`` seconds; every worker runs the deferrer, the database
  makes sure each tick is deferred once): reads each portal's ``[schedule]`` in its time zone
  (:func:`connector.daemon.next_run`, the single-portal daemon's rule) and defers the portals that are due;
  a ``failing`` portal is tried once every ``failing_retry`` seconds (an hour).
* the stalled-job sweep (every tick, in every worker beside its job slots, one at a time across workers,
  so busy slots never delay it): jobs whose worker stopped heart-beating for
  ``stalled_after`` seconds (killed, frozen, its machine gone) are retried; when procrastinate refuses the
  retry because a sibling sync of that portal is queued (procrastinate#1446), the stalled job is marked
  failed, which releases the portal's lock so the queued sibling runs.

House rules (shared/research/wave2-engine-and-science.md, part 1): no ``retry=`` on a locked job (a failed
retry next to a queued sibling deadlocks the portal); a failed sync is booked in the registry
(``record_result``) and a fresh job is deferred with capped exponential back-off, the failed job ends
``failed``; after ``failing_after`` failures in a row the portal is ``failing``.

SIGTERM / SIGINT: the worker takes no new job, running syncs stop at their next safe point (pipeline.STOP,
as the daemon does), the interrupted portals are deferred again for another worker, and the process exits
0; a second signal exits at once (the stalled-job sweep recovers what was running).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

log = logging.getLogger("lifecycle.worker")

SYNC_TASK = "lifecycle.sync_portal"
DISPATCH_TASK = "lifecycle.dispatch"
SCHEMA_LOCK_KEY = 0x6C69666563  # pg_advisory_lock key: one process applies procrastinate's schema
SWEEP_LOCK_KEY = 0x6C69666564   # one stalled-job sweep at a time


def portal_lock(portal: str) -> str:
    return f"portal:{portal}"


def queue_lock(portal: str) -> str:
    return f"sync:{portal}"


@dataclass(frozen=True)
class WorkerSettings:
    """Timings of the worker side; the defaults suit production, tests shorten them (seconds)."""

    tick: int = 60               # dispatcher and stalled-job sweep period; divides 60 when under a minute
    heartbeat: float = 10.0      # procrastinate's update_heartbeat_interval
    stalled_after: float = 30.0  # a job whose worker has not heart-beaten for this long is stalled
    failing_after: int = 5       # failed syncs in a row before a portal is ``failing``
    failing_retry: float = 3600.0  # a failing portal is tried this often
    backoff_base: float = 30.0   # a failed sync is retried after base * 2**(failures-1) seconds ...
    backoff_cap: float = 1800.0  # ... at most this long
    keep_jobs_hours: int = 168   # finished jobs are deleted after a week

    @classmethod
    def from_env(cls, **overrides: Any) -> WorkerSettings:
        """``LIFECYCLE_WORKER_<FIELD>`` environment variables, then ``overrides`` (None: not given)."""
        values: dict[str, Any] = {}
        for name, field in cls.__dataclass_fields__.items():
            raw = os.environ.get(f"LIFECYCLE_WORKER_{name.upper()}")
            if raw is not None:
                kind = int if field.type in ("int", int) else float
                try:
                    values[name] = kind(raw)
                except ValueError:
                    from connector.config import ConfigError

                    raise ConfigError(f"LIFECYCLE_WORKER_{name.upper()}={raw!r} is not a number") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.tick < 1 or (settings.tick < 60 and 60 % settings.tick) or (settings.tick >= 60 and settings.tick % 60):
            from connector.config import ConfigError

            raise ConfigError(f"worker tick {settings.tick} s: use a divisor of 60 (1, 2, 3, 5, 10, 15, 20, 30) "
                              "or a whole number of minutes")
        return settings

    def cron(self) -> str:
        if self.tick < 60:
            return f"* * * * * */{self.tick}"  # procrastinate: the sixth column is seconds, placed last
        minutes = self.tick // 60
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"


def conninfo(url: str) -> str:
    """The libpq URL of a SQLAlchemy PostgreSQL URL (``postgresql+psycopg://...``); ConfigError otherwise."""
    import sqlalchemy as sa

    from connector.config import ConfigError

    try:
        parsed = sa.make_url(url)
    except Exception:  # noqa: BLE001 - any unparsable URL
        raise ConfigError("the state URL is not a database URL; use postgresql+psycopg://user:password@host/db") from None
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError("many-portal mode (lifecycle worker, lifecycle run --state-url) needs PostgreSQL: "
                          "use postgresql+psycopg://user:password@host/db (SQLite serves one portal: "
                          "lifecycle run --config F)")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def ensure_schema(url: str) -> None:
    """Apply procrastinate's schema once: several workers starting together take an advisory lock and
    only the first one finds the tables missing."""
    import psycopg
    from procrastinate.schema import SchemaManager

    with psycopg.connect(conninfo(url), autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            row = conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()
            if row is None or row[0] is None:
                with conn.transaction():
                    conn.execute(SchemaManager.get_schema())  # type: ignore[arg-type]
                log.info("applied procrastinate's schema")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class SyncFailed(Exception):
    """A portal's sync failed; the message is the redacted one-line error (no secrets, no personal data)."""


class Workers:
    """The procrastinate App with the lifecycle jobs, bound to one state store."""

    def __init__(self, url: str, settings: WorkerSettings | None = None, *, key: str | None = None,
                 pool_size: int = 4):
        import procrastinate

        self.url = url
        self.key = key
        self.settings = settings or WorkerSettings.from_env()
        self._registry: Any = None
        self._registry_lock = threading.Lock()
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=conninfo(url), min_size=1, max_size=pool_size,
                                                     kwargs={"connect_timeout": 10}),
            worker_defaults={"update_heartbeat_interval": self.settings.heartbeat,
                             "stalled_worker_timeout": self.settings.stalled_after},
        )
        self.app.task(name=SYNC_TASK)(self.sync_portal)
        cron = self.settings.cron()
        self.app.periodic(cron=cron, periodic_id="dispatch")(
            self.app.task(name=DISPATCH_TASK, lock="lifecycle:dispatch", queueing_lock="lifecycle:dispatch")(self.dispatch))

    # -- shared --------------------------------------------------------------------------------------

    def registry(self) -> Any:
        with self._registry_lock:
            if self._registry is None:
                from connector.registry import Registry

                self._registry = Registry.open(self.url, key=self.key)
            return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def defer_sync(self, portal: str, reason: str, *, delay: float = 0) -> int | None:
        """Queue a sync of ``portal`` in ``delay`` seconds; None when one is queued already (folded)."""
        from procrastinate.exceptions import AlreadyEnqueued

        options: dict[str, Any] = {"lock": portal_lock(portal), "queueing_lock": queue_lock(portal)}
        if delay > 0:
            options["schedule_in"] = {"seconds": delay}
        try:
            return self.app.configure_task(SYNC_TASK, allow_unknown=True, **options).defer(portal=portal, reason=reason)
        except AlreadyEnqueued:
            return None

    async def defer_sync_async(self, portal: str, reason: str, *, delay: float = 0) -> int | None:
        from procrastinate.exceptions import AlreadyEnqueued

        options: dict[str, Any] = {"lock": portal_lock(portal), "queueing_lock": queue_lock(portal)}
        if delay > 0:
            options["schedule_in"] = {"seconds": delay}
        try:
            return await self.app.configure_task(SYNC_TASK, allow_unknown=True, **options).defer_async(
                portal=portal, reason=reason)
        except AlreadyEnqueued:
            return None

    def backoff(self, failures: int) -> float:
        return min(self.settings.backoff_cap, self.settings.backoff_base * 2 ** max(failures - 1, 0))

    # -- jobs ------------------------------------------------------------------------------------------

    def sync_portal(self, portal: str, reason: str = "schedule") -> str:
        """One sync of a registry portal (runs in a worker thread; the job's lock keeps it alone)."""
        from connector import pipeline
        from connector.config import ConfigError
        from connector.logs import safe_error
        from connector.synclock import LockLost, SyncLocked

        registry = self.registry()
        try:
            state = registry.get(portal).state
        except ConfigError:
            log.info("portal %s is no longer in the registry: sync dropped", portal)
            return "removed"
        if state in ("paused", "uninstalled"):
            log.info("portal %s is %s: sync (%s) dropped", portal, state, reason)
            return state
        try:
            config = self._short_lease(registry.load(portal))
            log.info("portal %s: sync (%s) started", portal, reason)
            result = pipeline.sync(config)
        except SyncLocked as exc:  # a single-portal process on the same store holds it: try again later
            log.info("portal %s: sync (%s) put off: %s", portal, reason, exc)
            self.defer_sync(portal, reason, delay=self.settings.backoff_base)
            return "locked"
        except (pipeline.Interrupted, LockLost) as exc:
            log.info("portal %s: sync (%s) stopped at a safe point (%s); queued again", portal, reason, exc)
            self.defer_sync(portal, reason)
            return "interrupted"
        except Exception as exc:  # noqa: BLE001 - booked, retried later; one portal never stops the others
            error = safe_error(exc)
            booked = registry.record_result(portal, ok=False, error=error, failing_after=self.settings.failing_after)
            if booked.state == "failing":
                registry.set_next_run(portal, utcnow() + timedelta(seconds=self.settings.failing_retry))
                log.error("portal %s: sync failed %d times in a row, now failing (tried again every %.0f s): %s",
                          portal, booked.failures, self.settings.failing_retry, error)
            else:
                delay = self.backoff(booked.failures)
                self.defer_sync(portal, "retry", delay=delay)
                log.error("portal %s: sync (%s) failed (%d in a row), retried in %.1f s: %s", portal, reason,
                          booked.failures, delay, error)
            raise SyncFailed(f"portal {portal}: {error}") from None
        registry.record_result(portal, ok=True)
        summary = result.summary()
        log.info("portal %s: sync (%s) done: %s customers", portal, reason, summary.get("customers"))
        return "ok"

    def _short_lease(self, config: Any) -> Any:
        """The store's lock row (belt and braces beside procrastinate's lock) lapses after ``[daemon]
        lock_seconds`` when its holder died on another machine: here at most max(60 s, 2 x stalled_after),
        so a portal whose worker vanished is not kept waiting an hour after the sweep retried its job."""
        from connector.config import LoadedConfig

        daemon = config.settings.daemon
        seconds = min(daemon.lock_seconds, max(60.0, 2 * self.settings.stalled_after))
        if seconds == daemon.lock_seconds:
            return config
        settings = config.settings.model_copy(update={"daemon": daemon.model_copy(update={"lock_seconds": seconds})})
        return LoadedConfig(settings=settings, path=config.path, rules=config.rules)

    def dispatch(self, timestamp: int) -> int:
        """Defer the syncs that are due; returns how many were deferred (or found queued)."""
        from connector.daemon import next_run
        from connector.logs import safe_error

        registry = self.registry()
        now = utcnow()
        due = 0
        for portal in registry.list():
            if portal.state not in ("active", "failing"):
                continue
            if portal.next_run_at is not None and portal.next_run_at > now:
                continue
            try:
                if portal.state == "failing":
                    following = now + timedelta(seconds=self.settings.failing_retry)
                else:
                    config = registry.load(portal.name)
                    following = next_run(config.settings.schedule, config.crm.timezone, now, portal.next_run_at)
                self.defer_sync(portal.name, "schedule" if portal.state == "active" else "failing retry")
                registry.set_next_run(portal.name, following)
                due += 1
            except Exception as exc:  # noqa: BLE001 - one portal's broken config never stops the others
                log.error("portal %s: cannot schedule: %s", portal.name, safe_error(exc))
        try:
            from connector.apps.settings import retention_days

            for name in registry.purge_uninstalled(now - timedelta(days=retention_days())):
                log.info("portal %s: uninstalled longer than the retention: its data is purged", name)
        except Exception as exc:  # noqa: BLE001 - tried again on the next tick
            log.error("purging uninstalled portals failed: %s", safe_error(exc))
        return due

    async def recover(self, timestamp: int) -> int:
        """Retry the jobs of workers that stopped heart-beating; free the lock of those that cannot be.
        One sweep at a time across all workers (an advisory lock), so a job another sweep just retried,
        and a healthy worker then took, is never reset under it."""
        import psycopg
        from procrastinate import jobs
        from procrastinate.exceptions import ConnectorException, UniqueViolation

        manager = self.app.job_manager
        recovered = 0
        async with await psycopg.AsyncConnection.connect(conninfo(self.url), autocommit=True,
                                                         connect_timeout=10) as conn:
            got = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (SWEEP_LOCK_KEY,))).fetchone()
            if not got or not got[0]:
                return 0  # another worker sweeps right now
            try:
                for job in await manager.get_stalled_jobs(seconds_since_heartbeat=self.settings.stalled_after):
                    try:
                        await manager.retry_job(job)
                        log.warning("job %s (%s, lock %s) lost its worker: retried", job.id, job.task_name, job.lock)
                    except UniqueViolation:  # a sibling holds the queueing lock (procrastinate#1446)
                        await manager.finish_job(job, status=jobs.Status.FAILED, delete_job=False)
                        log.warning("job %s (%s, lock %s) lost its worker and a sibling is queued: marked failed, "
                                    "its lock released", job.id, job.task_name, job.lock)
                    except ConnectorException as exc:  # finished meanwhile: nothing to recover
                        log.info("job %s: not recovered: %s", job.id, type(exc).__name__)
                        continue
                    recovered += 1
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (SWEEP_LOCK_KEY,))
        if timestamp % 3600 < self.settings.tick:
            await manager.delete_old_jobs(nb_hours=self.settings.keep_jobs_hours, include_failed=True,
                                          include_cancelled=True, include_aborted=True)
        return recovered

    # -- the process -------------------------------------------------------------------------------

    def run(self, concurrency: int = 4, *, name: str | None = None) -> int:
        """``lifecycle worker``: serve jobs until SIGTERM/SIGINT (graceful) or a second one (at once)."""
        ensure_schema(self.url)
        self.registry()  # migrates the store, checks the secret key: fail at start, not on the first job
        try:
            asyncio.run(self._serve(concurrency, name))
        finally:
            self.close()
        log.info("worker stopped")
        return 0

    async def _sweep_forever(self) -> None:
        """The stalled-job sweep, every tick, beside the job slots: a worker whose slots are all busy with
        syncs still frees a dead worker's portals within ``stalled_after`` + one tick."""
        import time

        from connector.logs import safe_error

        while True:
            await asyncio.sleep(self.settings.tick)
            try:
                await self.recover(int(time.time()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database away for a moment: the next tick tries again
                log.warning("stalled-job sweep failed: %s", safe_error(exc))

    async def _serve(self, concurrency: int, name: str | None) -> None:
        from connector import pipeline

        loop = asyncio.get_running_loop()
        async with self.app.open_async():
            worker = self.app._worker(concurrency=concurrency, name=name, install_signal_handlers=False, wait=True,
                                      delete_jobs="never")  # as App.run_worker_async, keeping the Worker at hand
            worker_task = asyncio.ensure_future(worker.run())
            signals = 0
            beats: list[asyncio.Task] = []

            async def keep_beating() -> None:
                """procrastinate stops the heartbeat first when it shuts down, then waits for the running
                jobs: a sync longer than ``stalled_after`` would be swept (retried) under its feet. Go on
                beating until the worker has unregistered."""
                while worker.worker_id is not None:
                    try:
                        await self.app.job_manager.update_heartbeat(worker.worker_id)
                    except Exception:  # noqa: BLE001 - unregistered meanwhile, or the database away a moment
                        pass
                    await asyncio.sleep(self.settings.heartbeat)

            def on_signal(signum: int) -> None:
                nonlocal signals
                signals += 1
                if signals > 1:
                    log.warning("second signal: stopping at once")
                    os._exit(1)
                log.info("signal %s: running syncs stop at their next safe point, then the worker exits",
                         signal.Signals(signum).name)
                pipeline.STOP.set()
                beats.append(asyncio.ensure_future(keep_beating()))
                worker_task.cancel()  # procrastinate: stop fetching, wait for the running jobs

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
            log.info("worker started: concurrency %d, tick %d s", concurrency, self.settings.tick)
            sweeper = asyncio.ensure_future(self._sweep_forever())
            try:
                await worker_task
            except asyncio.CancelledError:
                pass
            finally:
                sweeper.cancel()
                for beat in beats:
                    beat.cancel()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
