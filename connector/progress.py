"""Progress of a sync, rendered for whoever watches.

* On a terminal (or ``force_terminal``): rich progress bars, one per stage (pull per entity with counts
  and an ETA when the total is known, write-back, campaign actions, audiences).
* Off a terminal: one log line per running stage every ``interval`` seconds (default 10), "N of M, ETA
  ...", plus one when the stage ends. The clock is injectable, so tests never wait.

The loops report through the tiny protocol in adapters/progress.py; they never know which renderer runs.
Stages can be advanced from worker threads (the amoCRM pull reads two lists at once), so counts are
guarded by a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from adapters.progress import NO_PROGRESS, Progress, StageHandle

log = logging.getLogger("lifecycle.progress")
LOG_INTERVAL = 10.0


def _eta(done: int, total: int | None, elapsed: float) -> str:
    if not total or done <= 0 or elapsed <= 0 or done >= total:
        return ""
    seconds = int(elapsed * (total - done) / done)
    return f", ETA {seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f", ETA {seconds}s"


class _LogStage:
    def __init__(self, owner: LogProgress, name: str, total: int | None):
        self.owner, self.name, self.total = owner, name, total
        self.count = 0
        self.started = self.last = owner.clock()
        self.finished = False

    def advance(self, n: int = 1) -> None:
        with self.owner.lock:
            self.count += n
            now = self.owner.clock()
            if now - self.last < self.owner.interval:
                return
            self.last = now
        self._line(now)

    def set_total(self, total: int | None) -> None:
        self.total = total

    def done(self) -> None:
        if self.finished:
            return
        self.finished = True
        log.info("%s: done, %d%s in %.0fs", self.name, self.count,
                 "" if self.total is None else f" of {self.total}", self.owner.clock() - self.started)

    def _line(self, now: float) -> None:
        of = "" if self.total is None else f" of {self.total}"
        log.info("%s: %d%s%s", self.name, self.count, of, _eta(self.count, self.total, now - self.started))


class LogProgress:
    """A log line every ``interval`` seconds per stage, "N of M, ETA"."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self.lock = threading.Lock()

    def stage(self, name: str, total: int | None = None) -> StageHandle:
        return _LogStage(self, name, total)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _RichStage:
    def __init__(self, bars: Any, name: str, total: int | None):
        self.bars = bars
        self.task = bars.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        self.bars.advance(self.task, n)

    def set_total(self, total: int | None) -> None:
        self.bars.update(self.task, total=total)

    def done(self) -> None:
        task = self.bars.tasks[self.task] if self.task < len(self.bars.tasks) else None
        if task is not None and task.total is None:
            self.bars.update(self.task, total=task.completed)
        elif task is not None:
            self.bars.update(self.task, completed=task.total)


class RichProgress:
    """rich progress bars (use as a context manager around the sync)."""

    def __init__(self, console: Any = None):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bars, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.bars = Bars(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(), console=console,
                         transient=False)

    def stage(self, name: str, total: int | None = None) -> StageHandle:
        return _RichStage(self.bars, name, total)

    def __enter__(self) -> RichProgress:
        import sys

        self.bars.__enter__()
        # Log lines go above the bars: point our log handler at the stream rich redirected while it runs.
        from rich.file_proxy import FileProxy

        self.restore = []
        if isinstance(sys.stderr, FileProxy):
            for handler in logging.getLogger().handlers:
                if handler.get_name() == "lifecycle" and isinstance(handler, logging.StreamHandler):
                    try:
                        self.restore.append((handler, handler.setStream(sys.stderr)))
                    except ValueError:  # its old stream is closed already: leave that handler alone
                        pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for handler, stream in self.restore:
            if stream is not None:
                handler.setStream(stream)  # type: ignore[attr-defined]
        self.bars.__exit__(*exc)


class _Quiet:
    def stage(self, name: str, total: int | None = None) -> StageHandle:
        return NO_PROGRESS.stage(name, total)

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def for_output(console: Any = None, *, quiet: bool = False, interval: float | None = None,
               clock: Callable[[], float] = time.monotonic) -> Any:
    """The renderer for this output: rich bars when ``console`` is a terminal, log lines otherwise,
    nothing when ``quiet``. A context manager that is also a :class:`Progress`. ``interval``: seconds
    between log lines (default :data:`LOG_INTERVAL`, read at call time so a test can shorten it)."""
    if quiet:
        return _Quiet()
    if console is not None and console.is_terminal:
        return RichProgress(console)
    return LogProgress(LOG_INTERVAL if interval is None else interval, clock)


__all__ = ["LogProgress", "RichProgress", "for_output", "Progress"]
