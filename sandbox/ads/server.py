"""One loopback HTTP server for the four cabinets, plus control routes.

``/yandex/...``, ``/vk/...``, ``/google/...``, ``/meta/...`` go to their cabinet (see base.py). Control:

=====================================  ==============================================================
GET  /_sandbox/info                    the first-line JSON (each cabinet's base URL and credentials)
GET  /_sandbox/state                   every cabinet's audiences with their current hashed members
GET  /_sandbox/counters                requests per cabinet and per route, HTTP statuses, faults fired
GET  /_sandbox/requests                every cabinet request received (method, path+query, body as text)
POST /_sandbox/counters/reset
POST /_sandbox/faults                  ``{"cabinet": "meta", "kind": "status"|"reset"|"reset_after",
                                       "status": 500, "path": prefix, "method": verb, "count": N |
                                       "probability": p}``; DELETE clears
POST /_sandbox/clock                   ``{"advance": seconds}``: move the cabinets' clock (async processing)
POST /_sandbox/{cabinet}/{action}      the cabinet's own controls (e.g. exhaust a quota)
=====================================  ==============================================================
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sandbox.ads.base import Cabinet, Request, Response
from sandbox.httpbase import BaseHandler, QuietServer, RestVerbs


class Faults:
    def __init__(self, seed: int = 7):
        self.items: list[dict[str, Any]] = []
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.fired: Counter = Counter()

    def add(self, spec: dict[str, Any]) -> None:
        if spec.get("kind", "status") not in ("status", "reset", "reset_after"):
            raise ValueError("fault kind must be status, reset or reset_after")
        with self.lock:
            self.items.append(dict(spec))

    def pick(self, cabinet: str, verb: str, path: str) -> dict[str, Any] | None:
        with self.lock:
            for fault in list(self.items):
                if fault.get("cabinet") not in (None, cabinet):
                    continue
                if fault.get("method") and str(fault["method"]).upper() != verb:
                    continue
                if fault.get("path") and not path.startswith(str(fault["path"])):
                    continue
                if fault.get("count") is not None:
                    if fault["count"] <= 0:
                        continue
                    fault["count"] -= 1
                elif fault.get("probability") is not None and self.rng.random() >= float(fault["probability"]):
                    continue
                self.fired[f"{cabinet}:{fault.get('kind', 'status')}"] += 1
                return fault
            return None


class AdsServer(QuietServer):
    def __init__(self, address: tuple[str, int], cabinets: list[Cabinet], clock: Any, *, seed: int = 7,
                 verbose: bool = False):
        self.cabinets = {c.prefix: c for c in cabinets}
        self.clock = clock
        self.verbose = verbose
        self.faults = Faults(seed)
        self.counters: Counter = Counter()
        self.statuses: Counter = Counter()
        self.count_lock = threading.Lock()
        self.bodies: list[str] = []  # every request (path, query and body) as text, for "nothing raw was sent" checks
        super().__init__(address, Handler)
        self.base_url = f"http://{self.server_address[0]}:{self.server_address[1]}"

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"base_url": self.base_url, "control_url": self.base_url + "/_sandbox/",
                               "time_scale": self.clock.scale}
        for cabinet in self.cabinets.values():
            out[cabinet.name] = cabinet.credentials(self.base_url + cabinet.prefix)
        return out

    def state(self) -> dict[str, Any]:
        out = {}
        for cabinet in self.cabinets.values():
            with cabinet.lock:
                out[cabinet.name] = cabinet.state()
        return out


class Handler(RestVerbs, BaseHandler):
    server: AdsServer

    def _dispatch(self, verb: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if parts.path.startswith("/_sandbox"):
            self._send(self._control(verb, parts.path[len("/_sandbox"):].strip("/"), body))
            return
        for prefix, cabinet in self.server.cabinets.items():
            if parts.path == prefix or parts.path.startswith(prefix + "/"):
                break
        else:
            self._send(Response(404, {"error": f"no cabinet at {parts.path}"}))
            return
        sub = parts.path[len(prefix):] or "/"
        with self.server.count_lock:
            if len(self.server.bodies) < 100_000:
                self.server.bodies.append(f"{verb} {self.path}\n" + body.decode("utf-8", "replace"))
            self.server.counters[f"{cabinet.name} {verb} {sub}"] += 1
            self.server.counters[cabinet.name] += 1
        fault = self.server.faults.pick(cabinet.name, verb, sub)
        if fault is not None and fault.get("kind") == "reset":
            self._reset()
            return
        if fault is not None and fault.get("kind", "status") == "status":
            self._send(Response(int(fault.get("status", 500)), fault.get("body") or {"error": "injected fault"}),
                       cabinet.name)
            return
        request = Request(
            verb=verb, path=sub, query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()}, body=body,
            content_type=(self.headers.get("Content-Type") or "").split(";")[0].strip().lower(),
        )
        with cabinet.lock:
            cabinet.requests += 1
            try:
                response = cabinet.handle(request)
            except Exception as exc:  # a sandbox bug must still look like a server error
                import traceback

                traceback.print_exc()
                response = Response(500, {"error": f"sandbox error: {type(exc).__name__}"})
        if fault is not None and fault.get("kind") == "reset_after":
            self._reset()
            return
        self._send(response, cabinet.name)

    def _control(self, verb: str, route: str, body: bytes) -> Response:
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            return Response(400, {"error": "control bodies are JSON"})
        server = self.server
        if route == "info":
            return Response(200, server.info())
        if route == "state":
            return Response(200, server.state())
        if route == "counters":
            with server.count_lock:
                return Response(200, {"requests": dict(server.counters), "http_status": dict(server.statuses),
                                      "faults": dict(server.faults.fired)})
        if route == "requests":
            with server.count_lock:
                return Response(200, {"requests": list(server.bodies)})
        if route == "counters/reset" and verb == "POST":
            with server.count_lock:
                server.counters.clear()
                server.statuses.clear()
                server.faults.fired.clear()
            return Response(200, {"reset": True})
        if route == "faults":
            if verb == "DELETE":
                with server.faults.lock:
                    server.faults.items.clear()
                return Response(200, {"faults": []})
            if verb == "POST":
                try:
                    for spec in data if isinstance(data, list) else [data]:
                        server.faults.add(spec)
                except ValueError as exc:
                    return Response(400, {"error": str(exc)})
            return Response(200, {"faults": server.faults.items})
        if route == "clock":
            if verb == "POST":
                server.clock.advance(float(data.get("advance", 0)))
            return Response(200, {"now": server.clock.portal(), "time_scale": server.clock.scale})
        name, _, action = route.partition("/")
        for cabinet in server.cabinets.values():
            if cabinet.name == name and action:
                try:
                    with cabinet.lock:
                        return Response(200, cabinet.control(action, data))
                except KeyError:
                    return Response(404, {"error": f"no control {action!r} for {name}"})
        return Response(404, {"error": f"no control route {verb} /_sandbox/{route}"})

    def _send(self, response: Response, cabinet: str | None = None) -> None:
        body = response.body
        if isinstance(body, (dict, list)):
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:
            data = body or b""
        with self.server.count_lock:
            self.server.statuses[f"{cabinet or '_sandbox'} {response.status}"] += 1
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        if data or response.status != 204:
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)



def create_server(*, port: int = 0, host: str = "127.0.0.1", time_scale: float = 1.0, limits: bool = True,
                  seed: int = 7, verbose: bool = False, cabinets: list[str] | None = None) -> AdsServer:
    from sandbox.bitrix24.clock import Clock

    from sandbox.ads import registry

    clock = Clock(time_scale)
    chosen = [cls(clock, seed=seed, limits=limits) for name, cls in registry.CABINETS.items()
              if cabinets is None or name in cabinets]
    return AdsServer((host, port), chosen, clock, seed=seed, verbose=verbose)
