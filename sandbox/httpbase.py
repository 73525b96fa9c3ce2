"""What the three sandbox servers (Bitrix24, amoCRM, ad cabinets) share: a quiet threading server, the
handler basics and the connection reset that fault injection uses."""

from __future__ import annotations

import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    verbose = False

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], OSError):  # incl. ssl.SSLError
            return  # clients that hang up (or faults that reset) are not sandbox errors
        super().handle_error(request, client_address)


class BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sys_version = ""
    # TCP_NODELAY, as production web servers set it: without it every keep-alive answer written in two parts
    # (headers, then body) waited about 40 ms for the client's delayed ACK (Nagle), a latency no CRM has
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _read_body(self) -> bytes:
        """The request body, Content-Length or chunked (what curl and some SDKs send)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reset(self) -> None:
        """Close the connection with RST and no answer (the ``reset`` faults)."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True

    def _dispatch(self, verb: str) -> None:
        raise NotImplementedError


class RestVerbs:
    """GET, POST, PUT, PATCH and DELETE all go to ``_dispatch(verb)``."""

    def do_GET(self) -> None:
        self._dispatch("GET")  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self._dispatch("POST")  # type: ignore[attr-defined]

    def do_PUT(self) -> None:
        self._dispatch("PUT")  # type: ignore[attr-defined]

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")  # type: ignore[attr-defined]

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")  # type: ignore[attr-defined]


class BackgroundServing:
    """start() serves ``self.httpd`` on a daemon thread, stop() shuts it down; serve_forever() in the caller's."""

    httpd: QuietServer
    thread_name = "sandbox"
    _thread: threading.Thread | None = None

    def start(self):  # -> Self
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
