"""What every cabinet emulator implements, and the request/response shapes the server hands it.

A cabinet is plain Python behind one lock (the server serialises calls per cabinet): it gets a decoded
:class:`Request` with the path below its prefix (``/yandex/v1/management/segments`` reaches the Yandex
cabinet as ``/v1/management/segments``) and returns a :class:`Response`. Time comes from the shared
:class:`sandbox.bitrix24.clock.Clock` (``clock.portal()`` runs ``time_scale`` times faster than the wall
clock and moves with ``POST /_sandbox/clock``), so asynchronous processing and quotas can be sped up.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs


@dataclass
class Request:
    verb: str                      # GET | POST | DELETE | PUT | PATCH
    path: str                      # below the cabinet prefix, e.g. "/v1/management/segments"
    query: dict[str, list[str]]    # parse_qs of the query string (keep_blank_values)
    headers: dict[str, str]        # lower-cased names
    body: bytes
    content_type: str = ""         # lower-cased, without parameters

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def form(self) -> dict[str, list[str]]:
        """application/x-www-form-urlencoded body (multipart bodies: see :func:`sandbox.ads.multipart.parse`)."""
        return parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)


@dataclass
class Response:
    status: int
    body: Any = None               # dict/list -> JSON; bytes/str -> as is; None -> empty
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class Cabinet:
    """Base class: subclasses set ``name`` / ``prefix`` and implement the four methods."""

    name = "cabinet"
    prefix = "/cabinet"

    def __init__(self, clock: Any, *, seed: int = 7, limits: bool = True):
        self.clock = clock
        self.seed = seed
        self.limits = limits
        self.lock = threading.RLock()
        self.requests = 0

    def credentials(self, base_url: str) -> dict[str, Any]:
        """This cabinet's part of the first-line JSON: its base URL and test credentials."""
        raise NotImplementedError

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """Every audience with its current hashed members (and status), for ``GET /_sandbox/state``."""
        raise NotImplementedError

    def control(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Cabinet-specific test controls (``POST /_sandbox/{name}/{action}``), e.g. exhaust a quota."""
        raise KeyError(action)
