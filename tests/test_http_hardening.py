"""The daemon's HTTP service under hostile clients: 300 MB bodies with a lying, missing or chunked length,
200 slow half-requests, byte-by-byte senders, too many connections. Memory stays flat, /healthz keeps
answering within a second, and every refusal is a status line with a JSON body, not a dropped connection.

The first test runs `lifecycle run` as a subprocess against the Bitrix24 sandbox and reads its RSS from
/proc; the others serve the same application in-process (ServiceServer of a real Daemon) with short
deadlines so timeouts are seen in seconds."""

from __future__ import annotations

import json
from collections import Counter
import select
import socket
import threading
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import pytest

from connector.config import load_config
from connector.daemon import Daemon
from connector.http import HEADER_TIMEOUT, MAX_BODY, ServiceServer
from sandbox.bitrix24 import running_portal
from tests.test_daemon import TOKEN, daemon, event, free_port, get, metric, wait_for, write_config

MB = 1_000_000
STREAM = 300 * MB


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def status_of(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), answer[:200]
    return int(head.split(b" ", 2)[1]), body


def stream(port: int, head: bytes, chunk: bytes, total: int = STREAM, seconds: float = 30) -> tuple[bytes, int]:
    """Send ``head`` then ``chunk`` repeatedly up to ``total`` bytes, until the server answers or closes.
    Returns what the server sent and how many bytes the kernel took from us."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    answer, sent, pending, sending = b"", 0, head, True
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            want_write = sending and (bool(pending) or sent < total)
            readable, writable, _ = select.select([sock], [sock] if want_write else [], [], 0.5)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                answer += data
                continue
            if writable:
                if not pending:
                    pending = chunk
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    sending = False  # the server closed its side; what it said is still to be read
                    continue
                pending, sent = pending[n:], sent + n
    finally:
        sock.close()
    return answer, sent


class Watch:
    """Polls /healthz (latency of each answer) and samples a process's RSS in a thread."""

    def __init__(self, port: int, pid: int | None = None):
        self.port, self.pid = port, pid
        self.latencies: list[float] = []
        self.failures: list[tuple[int, str]] = []
        self.rss: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set() and len(self.latencies) < 5000:
            started = time.perf_counter()
            status, body = get(self.port, "/healthz")
            self.latencies.append(time.perf_counter() - started)
            if status != 200 or body != "ok\n":
                self.failures.append((status, body))
            if self.pid:
                self.rss.append(rss_bytes(self.pid))
            self.done.wait(0.05)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)


class SlowClients:
    """``n`` connections sending a request head one byte per round, never finishing it; collects answers."""

    def __init__(self, port: int, n: int, path: str = "/webhooks/bitrix24"):
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        for sock in self.socks:
            sock.setblocking(False)
        self.head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode()
        self.answers: dict[int, bytes] = {i: b"" for i in range(n)}
        self.closed: set[int] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        position = 0
        deadline = time.monotonic() + HEADER_TIMEOUT + 20
        while not self.done.is_set() and len(self.closed) < len(self.socks) and time.monotonic() < deadline:
            byte = self.head[position:position + 1] or b"a"
            position += 1
            for i, sock in enumerate(self.socks):
                if i in self.closed:
                    continue
                try:
                    sock.send(byte)
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed.add(i)
            open_socks = [s for i, s in enumerate(self.socks) if i not in self.closed]
            readable, _, _ = select.select(open_socks, [], [], 0.05) if open_socks else ([], [], [])
            for sock in readable:
                i = self.socks.index(sock)
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                self.answers[i] += data
                if not data:
                    self.closed.add(i)

    def __enter__(self) -> SlowClients:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)
        for sock in self.socks:
            sock.close()


def chunked(size: int) -> bytes:
    return f"{size:x}\r\n".encode() + b"a" * size + b"\r\n"


def test_300_mb_bodies_and_200_slow_clients_neither_grow_memory_nor_delay_health(tmp_path):
    with running_portal(generate=(30, 90), time_scale=50) as portal:
        path = write_config(tmp_path, portal)
        port = free_port()
        with daemon(path, port) as proc:
            wait_for(lambda: metric(port, "lifecycle_syncs_total", status="ok") >= 1, 60, "no first sync")
            start_rss = rss_bytes(proc.pid)
            webhook = b"POST /webhooks/bitrix24 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            with Watch(port, proc.pid) as watch, SlowClients(port, 200) as slow:
                minus_one, sent_minus_one = stream(port, webhook + b"Content-Length: -1\r\n\r\n", b"a" * 65536)
                chunks, sent_chunked = stream(port, webhook + b"Transfer-Encoding: chunked\r\n\r\n", chunked(65536))
                missing, _ = stream(port, webhook + b"\r\n", b"a" * 65536)
                declared, _ = stream(port, webhook + b"Content-Length: 300000000\r\n\r\n", b"a" * 65536)
                words, _ = stream(port, webhook + b"Content-Length: lots\r\n\r\n", b"a" * 65536)
                wait_for(lambda: len(slow.closed) == 200, HEADER_TIMEOUT + 20, "slow clients were not cut off")
                assert get(port, "/healthz") == (200, "ok\n")
            peak = max(watch.rss + [rss_bytes(proc.pid)])

            expected = {"minus_one": (minus_one, 400), "chunked": (chunks, 413), "missing": (missing, 411),
                        "declared": (declared, 413), "words": (words, 400)}
            for name, (answer, status) in expected.items():
                got, body = status_of(answer)
                assert got == status, (name, answer[:300])
                assert json.loads(body)["status"] == status and json.loads(body)["error"], name
            assert sent_chunked < 20 * MB and sent_minus_one < 20 * MB  # cut off near the cap, not at 300 MB
            timed_out = [status_of(a)[0] for a in slow.answers.values() if a]
            assert timed_out.count(408) >= 190, Counter(timed_out)  # the rest may be closed before we read
            assert not watch.failures, watch.failures[:5]
            assert len(watch.latencies) >= 20 and max(watch.latencies) < 1.0, max(watch.latencies)
            assert peak - start_rss <= 100 * MB, (start_rss, peak)
            print(f"\nRSS start {start_rss / MB:.1f} MB, peak {peak / MB:.1f} MB (+{(peak - start_rss) / MB:.1f} MB); "
                  f"/healthz max {max(watch.latencies) * 1000:.0f} ms over {len(watch.latencies)} polls; "
                  f"bytes taken: -1 {sent_minus_one}, chunked {sent_chunked}")
        assert proc.returncode == 0
        assert TOKEN not in (tmp_path / "daemon.log").read_text(encoding="utf-8")



def test_health_answers_within_a_second_while_a_sync_runs(tmp_path):
    with running_portal(generate=(60, 180), time_scale=50) as portal:
        portal.faults(kind="slow", delay=0.3)  # every CRM call takes 0.3 s: the first sync lasts seconds
        path = write_config(tmp_path, portal)
        port = free_port()
        with daemon(path, port):
            with Watch(port) as watch:
                wait_for(lambda: metric(port, "lifecycle_syncs_total") >= 1, 60, "the first sync did not end")
            assert not watch.failures, watch.failures[:5]
            assert len(watch.latencies) >= 20, "the sync was too short to watch"
            assert max(watch.latencies) < 1.0, max(watch.latencies)


@contextmanager
def served(tmp_path: Path, **limits):
    """A real Daemon's HTTP service in this process (no syncs), with the given limits."""
    config_path = tmp_path / "lifecycle.toml"
    config_path.write_text(
        '[crm]\nkind = "bitrix24"\nwebhook_url = "http://127.0.0.1:9/rest/1/abcdefgh/"\n[state]\nurl = "sqlite:///state.db"\n'
        f'[daemon]\nhost = "127.0.0.1"\nport = 0\nbitrix24_application_token = "{TOKEN}"\n', encoding="utf-8")
    owner = Daemon(load_config(config_path), port=0)
    owner.server.stop()  # the default limits; serve again with the test's
    owner.server = ServiceServer(owner, host="127.0.0.1", port=0, **limits)
    owner.server.start()
    try:
        yield owner
    finally:
        owner.server.stop()


def test_a_byte_by_byte_body_does_not_block_other_requests_and_still_arrives(tmp_path):
    with served(tmp_path) as owner:
        port = owner.server.port
        body = urllib.parse.urlencode(event("ONCRMDEALUPDATE", 7)).encode()
        head = (b"POST /webhooks/bitrix24 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode())
        answer: list[bytes] = []

        def trickle() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(head)
                for i in range(len(body)):  # ~300 bytes over ~3 s
                    sock.sendall(body[i:i + 1])
                    time.sleep(0.01)
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
                answer.append(data)

        sender = threading.Thread(target=trickle)
        with Watch(port) as watch:
            sender.start()
            sender.join(timeout=30)
        assert answer and status_of(answer[0]) == (200, b"ok\n")
        assert owner.changed_at is not None  # the webhook, slow as it was, counted
        assert not watch.failures and len(watch.latencies) >= 10
        assert max(watch.latencies) < 1.0, max(watch.latencies)


def test_slow_heads_and_slow_bodies_are_answered_408(tmp_path):
    with served(tmp_path, header_timeout=1, body_timeout=1) as owner:
        port = owner.server.port
        head_only, _ = stream(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"", total=0, seconds=10)
        status, body = status_of(head_only)
        assert status == 408 and "request line and headers" in json.loads(body)["error"]

        started = time.monotonic()
        half_body, _ = stream(port, b"POST /webhooks/bitrix24 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\nevent=",
                              b"", total=0, seconds=10)
        status, body = status_of(half_body)
        assert status == 408 and "body did not arrive" in json.loads(body)["error"]
        assert time.monotonic() - started < 5
        assert owner.changed_at is None
        assert get(port, "/healthz") == (200, "ok\n")


def test_over_the_connection_cap_idle_half_requests_make_way_and_busy_ones_do_not(tmp_path):
    with served(tmp_path, max_connections=20) as owner:
        port = owner.server.port
        connections = owner.server.server.server_state.connections
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(15)]
        for sock in idle[:5]:
            sock.sendall(b"POST /webhooks/bitrix24 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Sl")  # half a head
        # busy: heads complete, bodies pending; they are being served and never make way
        busy = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        for sock in busy:
            sock.sendall(b"POST /webhooks/bitrix24 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nevent=")
        try:
            wait_for(lambda: len(connections) >= 20, 10, "connections not seen")
            # 10 newcomers that stay: each takes the place of the oldest connection waiting for its head
            newcomers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(10)]
            assert get(port, "/healthz") == (200, "ok\n")
            for sock in idle[:5]:  # the oldest had sent part of a head: they are told why
                status, body = status_of(sock.recv(4096))
                assert status == 503 and "too many connections" in json.loads(body)["error"]
            for sock in idle[5:11]:  # silent idle ones are closed (the 11th for the /healthz call)
                assert sock.recv(4096) == b""
            assert not select.select(idle[11:] + newcomers + busy, [], [], 0.2)[0]  # the rest stay open
            # 15 busy newcomers, one by one, push out the 14 idle ones left: then all 20 are serving requests
            more = []
            for n in range(15):
                more.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                more[-1].sendall(b"POST /webhooks/bitrix24 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nevent=")
                wait_for(lambda: sum(1 for c in connections if not c.waiting_for_head()) == 6 + n, 10, "not busy")
            wait_for(lambda: len(connections) == 20, 10, "evicted connections still counted")
            extra, _ = stream(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"", total=0, seconds=10)
            status, body = status_of(extra)
            assert status == 503 and json.loads(body)["error"] == "too many connections; try again shortly"
            for sock in busy + more:
                sock.sendall(b"x" * 94)  # the rest of the body: served normally (an event without the token)
                assert status_of(sock.recv(4096))[0] == 401
        finally:
            for sock in idle + busy + locals().get("newcomers", []) + locals().get("more", []):
                sock.close()
        wait_for(lambda: get(port, "/healthz") == (200, "ok\n"), 10, "the service did not recover")


@pytest.mark.parametrize("head, status", [
    (b"POST /webhooks/bitrix24 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /webhooks/bitrix24 HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n", 400),
    (b"POST /webhooks/bitrix24 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    (b"POST /webhooks/bitrix24 HTTP/1.1\r\nHost: x\r\n\r\n", 411),
    (b"POST /webhooks/amocrm/x HTTP/1.1\r\nHost: x\r\n\r\n", 411),
    (b"POST /webhooks/bitrix24 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 400_000 + b"\r\n\r\n", 400),  # over one read + 16 KB
])
def test_malformed_lengths_and_heads_get_a_json_answer(tmp_path, head, status):
    with served(tmp_path) as owner:
        answer, _ = stream(owner.server.port, head, b"", total=0, seconds=10)
        got, body = status_of(answer)
        assert got == status and json.loads(body)["status"] == status, answer[:300]
        assert b"connection: close" in answer.lower()
