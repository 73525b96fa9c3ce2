"""Fault registries of the Bitrix24 and amoCRM sandboxes: specs added by tests, picked per request.

A spec fires for the next ``count`` matching requests, or with ``probability`` (seeded), or, with
neither, for every matching request until cleared; faults are checked in the order they were added and
the first that fires wins. Subclasses say which kinds exist, how a spec becomes a fault and what
"matching" means (a method name, or a verb and a path prefix).
"""

from __future__ import annotations

import random
import threading
from typing import Any


class FaultRegistry:
    KINDS: tuple[str, ...] = ()

    def __init__(self, seed: int | None = None):
        self._lock = threading.Lock()
        self._faults: list[Any] = []
        self._next = 1
        self._rng = random.Random(seed)

    def _build(self, fault_id: int, kind: str, count: int | None, probability: float | None, spec: dict) -> Any:
        raise NotImplementedError

    def _matches(self, fault: Any, *request: Any) -> bool:
        raise NotImplementedError

    def add(self, spec: dict) -> Any:
        kind = str(spec.get("kind", "status"))
        if kind not in self.KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(self.KINDS)}, got {kind!r}")
        count = spec.get("count")
        probability = spec.get("probability")
        if probability is not None and not 0 <= float(probability) <= 1:
            raise ValueError("probability must be between 0 and 1")
        with self._lock:
            fault = self._build(self._next, kind, None if count is None else int(count),
                                None if probability is None else float(probability), spec)
            self._next += 1
            self._faults.append(fault)
            return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict]:
        with self._lock:
            return [f.describe() for f in self._faults]

    def pick(self, *request: Any) -> Any | None:
        with self._lock:
            for fault in list(self._faults):
                if not self._matches(fault, *request):
                    continue
                if fault.count is not None:
                    if fault.count <= 0:
                        continue
                    fault.count -= 1
                elif fault.probability is not None and self._rng.random() >= fault.probability:
                    continue
                fault.fired += 1
                if fault.count == 0:
                    self._faults.remove(fault)
                return fault
            return None
