"""A loopback HTTP server that records what a sandbox SENDS (install callbacks, events, webhooks, frames).

``answer`` decides the reply per request: a (status, body, headers) tuple or a callable of the recorded
request; ``delay`` makes it slow (a handler past the CRM's timeout).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qsl, urlsplit


class Receiver:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answer: tuple[int, str, dict] | Callable[[dict], tuple[int, str, dict]] = (200, "OK", {})
        self.delay = 0.0
        self.lock = threading.Lock()
        self.url = ""

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.01)
        with self.lock:
            raise AssertionError(f"expected {count} requests, got {len(self.requests)}: "
                                 f"{[r['path'] for r in self.requests]}")

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            record = {"verb": self.command, "path": url.path, "query": dict(parse_qsl(url.query, keep_blank_values=True)),
                      "headers": {k.lower(): v for k, v in self.headers.items()}, "raw": raw,
                      "form": dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
                      if "form-urlencoded" in (self.headers.get("Content-Type") or "") else {}}
            with receiver.lock:
                receiver.requests.append(record)
            if receiver.delay:
                time.sleep(receiver.delay)
            answer = receiver.answer(record) if callable(receiver.answer) else receiver.answer
            status, body, headers = answer
            data = body.encode("utf-8")
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass

        do_GET = do_POST = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
