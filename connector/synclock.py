"""One sync of a portal at a time: a lease on the state store's ``locks`` row, held for the whole sync.

Every entry point that writes (``lifecycle sync``, ``lifecycle run``, anything calling
:func:`connector.pipeline.sync`) takes the portal's lock before the run starts and gives it back when it
ends. A background thread renews it every ``lock_seconds / 3`` while the sync runs, so a lock outlives a
long sync but lapses ``lock_seconds`` after its holder was killed (at once when the killed holder ran on
the same machine: its pid is gone). If a renewal finds the lock taken over
(the holder was frozen for longer than ``lock_seconds``), :attr:`SyncLease.lost` is set and the sync stops
at its next safe point; the executor's claims also check the lock, so nothing is sent after that.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from datetime import datetime
from typing import Any

log = logging.getLogger("lifecycle.lock")
RETRY_SECONDS = 0.5


def new_holder() -> str:
    """host:pid:random, unique per process and per sync."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _who(holder: str | None) -> str:
    return ":".join(holder.split(":")[:2]) if holder else "unknown"


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds") if epoch else "an unknown time"


def died_here(holder: str | None) -> bool:
    """True if ``holder`` names a process on this machine that no longer runs (killed, crashed): its lock
    need not wait ``lock_seconds`` to lapse. Holders elsewhere, or not of the form host:pid:..., are alive."""
    parts = (holder or "").split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed child its parent has not reaped yet still answers signal 0
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
    except OSError:
        return False


class SyncLocked(Exception):
    """Another process holds the portal's sync lock."""

    def __init__(self, portal: str, holder: str | None, since: float | None):
        self.portal, self.holder, self.since = portal, holder, since
        super().__init__(f"another sync of portal {portal!r} is running since {_when(since)} "
                         f"(holder {_who(holder)}); try again later")


class LockLost(Exception):
    """The sync lock was taken over while this sync ran; it stopped at a safe point."""


class SyncLease:
    """The portal's sync lock for one sync: :meth:`acquire`, then :meth:`release` in ``finally``."""

    def __init__(self, store: Any, seconds: float, holder: str | None = None):
        self.store = store
        self.seconds = float(seconds)
        self.holder = holder or new_holder()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait: float = 0) -> None:
        """Take the lock, waiting up to ``wait`` seconds for another holder to finish; SyncLocked if not."""
        deadline = time.monotonic() + max(wait, 0)
        while not self.store.try_lock(self.holder, self.seconds):
            info = self.store.lock_info()
            if info is None:
                continue  # released between the two reads: try again at once
            if died_here(info["holder"]):
                log.info("the sync lock of a killed process on this machine (%s) is taken over", _who(info["holder"]))
                if self.store.try_lock(self.holder, self.seconds, replace=info["holder"]):
                    break
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise SyncLocked(self.store.portal, info["holder"], info["locked_since"])
            time.sleep(min(RETRY_SECONDS, left))
        self._thread = threading.Thread(target=self._renew, name="sync-lock", daemon=True)
        self._thread.start()

    def check(self) -> None:
        if self.lost.is_set():
            raise LockLost(f"the sync lock of portal {self.store.portal!r} was taken over by another process; "
                           "stopped at a safe point")

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.store.renew_lock(self.holder, self.seconds):
                    log.error("the sync lock was taken over by another process; stopping at the next safe point")
                    self.lost.set()
                    return
            except Exception as exc:  # the store unreachable for a moment: the next beat tries again
                log.warning("could not renew the sync lock: %s: %s", type(exc).__name__, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.store.release_lock(self.holder)
        except Exception as exc:  # it lapses after lock_seconds anyway
            log.warning("could not release the sync lock: %s: %s", type(exc).__name__, exc)
