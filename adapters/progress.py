"""Progress reporting: the small protocol the loops report counts through.

The adapters and the connector's loops (pull per entity, write-back, campaign actions, audiences) take an
optional ``progress`` and call ``stage(name, total)`` once, then ``advance(n)`` as records go by and
``done()`` at the end. ``total`` is None when the API does not say how many there are (Bitrix24's
``start=-1`` chain and amoCRM's lists skip the count). The default :data:`NO_PROGRESS` does nothing; the
renderers (rich bars on a terminal, a log line every few seconds otherwise) live in connector/progress.py,
so adapters never import the connector.
"""

from __future__ import annotations

from typing import Protocol


class StageHandle(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def set_total(self, total: int | None) -> None: ...

    def done(self) -> None: ...


class Progress(Protocol):
    def stage(self, name: str, total: int | None = None) -> StageHandle: ...


class _NoStage:
    def advance(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        pass

    def done(self) -> None:
        pass


class NoProgress:
    """Reports nothing (the default)."""

    def stage(self, name: str, total: int | None = None) -> StageHandle:
        return _NoStage()


NO_PROGRESS: Progress = NoProgress()


def or_none(progress: Progress | None) -> Progress:
    """``progress`` or the no-op default."""
    return progress if progress is not None else NO_PROGRESS
