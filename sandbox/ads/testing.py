"""``running_ads()``: the four cabinets on a loopback port in a background thread, for tests and the demo."""

from __future__ import annotations

import json
import threading
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator


class AdsHandle:
    def __init__(self, server: Any):
        self.server = server
        self.info = server.info()
        self.base_url = server.base_url

    def control(self, verb: str, route: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base_url}/_sandbox/{route}", data=data, method=verb,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read() or b"null")

    def state(self) -> dict[str, Any]:
        return self.control("GET", "state")

    def counters(self) -> dict[str, Any]:
        return self.control("GET", "counters")

    def requests(self) -> list[str]:
        """Every cabinet request received so far: method, path and query, body."""
        return self.control("GET", "requests")["requests"]

    def reset_counters(self) -> None:
        self.control("POST", "counters/reset", {})

    def faults(self, **spec: Any) -> None:
        self.control("POST", "faults", spec)

    def clear_faults(self) -> None:
        self.control("DELETE", "faults")

    def advance(self, seconds: float) -> None:
        self.control("POST", "clock", {"advance": seconds})

    def cabinet(self, name: str, action: str, **body: Any) -> Any:
        return self.control("POST", f"{name}/{action}", body)


@contextmanager
def running_ads(*, port: int = 0, time_scale: float = 1.0, limits: bool = True, seed: int = 7,
                cabinets: list[str] | None = None) -> Iterator[AdsHandle]:
    from sandbox.ads.server import create_server

    server = create_server(port=port, time_scale=time_scale, limits=limits, seed=seed, cabinets=cabinets)
    thread = threading.Thread(target=server.serve_forever, name="ads-sandbox", daemon=True)
    thread.start()
    try:
        yield AdsHandle(server)
    finally:
        server.shutdown()
        server.server_close()
