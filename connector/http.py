"""The daemon's HTTP endpoints: health, readiness, Prometheus metrics and the CRM webhook receivers.

==============================  ===================================================================
GET  /healthz                   200 while the process runs
GET  /readyz                    200 when the state store answers and the last sync did not fail, else 503
GET  /metrics                   Prometheus text format
POST /webhooks/bitrix24         Bitrix24 outbound events (form-encoded): ONCRMCONTACT|COMPANY|DEAL ADD,
                                UPDATE, DELETE; ``auth[application_token]`` must equal
                                ``[daemon] bitrix24_application_token`` (401 otherwise, nothing changes)
POST /webhooks/amocrm/<secret>  amoCRM webhooks (form-encoded ``contacts|companies|leads[add|update|
                                delete|status|...][i][id]``); the path must carry
                                ``[daemon] amocrm_webhook_secret`` (amoCRM signs nothing; 401 otherwise)
==============================  ===================================================================

Bodies that are not what the CRM sends get 400 and a log line without their secrets.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger("lifecycle.http")

BITRIX_EVENTS = {f"ONCRM{entity}{action}" for entity in ("CONTACT", "COMPANY", "DEAL")
                 for action in ("ADD", "UPDATE", "DELETE")}
AMO_KEY = re.compile(r"^(contacts|companies|leads)\[(add|update|delete|restore|status|responsible|note)\]\[\d+\]\[id\]$")
MAX_BODY = 1_000_000


class ServiceServer:
    def __init__(self, daemon: Any, *, host: str, port: int):
        self.daemon = daemon
        handler = type("BoundHandler", (Handler,), {"daemon": daemon})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="lifecycle-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Handler(BaseHTTPRequestHandler):
    daemon: Any
    protocol_version = "HTTP/1.1"
    server_version = "crm-lifecycle"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - access logs would carry secret paths
        pass

    def _send(self, status: int, body: bytes | str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send(200, "ok\n")
        elif path == "/readyz":
            ok, why = self.daemon.ready()
            self._send(200 if ok else 503, why + "\n")
        elif path == "/metrics":
            self._send(200, self.daemon.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._send(404, "not found\n")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, "body too large\n")
            return
        raw = self.rfile.read(length) if length else b""
        try:
            form = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw)))
        except (UnicodeDecodeError, ValueError):
            form = None
        if path == "/webhooks/bitrix24":
            self._bitrix24(form)
        elif path.startswith("/webhooks/amocrm/") or path == "/webhooks/amocrm":
            self._amocrm(path[len("/webhooks/amocrm/"):] if path.startswith("/webhooks/amocrm/") else "", form)
        else:
            self._send(404, "not found\n")

    def _count(self, source: str, result: str) -> None:
        self.daemon.metrics.webhooks.labels(self.daemon.metrics.portal, source, result).inc()

    def _bitrix24(self, form: dict[str, str] | None) -> None:
        expected = self.daemon.config.settings.daemon.bitrix24_application_token
        if expected is None or self.daemon.config.crm.kind != "bitrix24":
            self._count("bitrix24", "not_configured")
            self._send(404, "the Bitrix24 webhook receiver is not configured\n")
            return
        if form is None or "event" not in form:
            self._count("bitrix24", "malformed")
            log.warning("Bitrix24 webhook refused: not a form-encoded outbound event")
            self._send(400, "expected a form-encoded Bitrix24 outbound event (event=..., auth[application_token]=...)\n")
            return
        token = form.get("auth[application_token]", "")
        if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
            self._count("bitrix24", "unauthorized")
            log.warning("Bitrix24 webhook refused: wrong application_token (event %s)", form.get("event", "")[:40])
            self._send(401, "wrong application_token\n")
            return
        event = form["event"].strip().upper()
        if event not in BITRIX_EVENTS:
            self._count("bitrix24", "malformed")
            log.warning("Bitrix24 webhook refused: event %r is not one this receiver handles", event[:40])
            self._send(400, f"unsupported event; expected one of {', '.join(sorted(BITRIX_EVENTS))}\n")
            return
        record = form.get("data[FIELDS][ID]", "")
        if not record.isdigit():
            self._count("bitrix24", "malformed")
            self._send(400, "data[FIELDS][ID] is missing or not a number\n")
            return
        self._count("bitrix24", "accepted")
        log.info("Bitrix24 %s for record %s: an incremental sync follows", event, record)
        self.daemon.crm_changed()
        self._send(200, "ok\n")

    def _amocrm(self, secret: str, form: dict[str, str] | None) -> None:
        expected = self.daemon.config.settings.daemon.amocrm_webhook_secret
        if expected is None or self.daemon.config.crm.kind != "amocrm":
            self._count("amocrm", "not_configured")
            self._send(404, "the amoCRM webhook receiver is not configured\n")
            return
        if not hmac.compare_digest(secret.encode(), expected.get_secret_value().encode()):
            self._count("amocrm", "unauthorized")
            log.warning("amoCRM webhook refused: wrong secret in the path")
            self._send(401, "unknown webhook\n")
            return
        keys = [k for k in (form or {}) if AMO_KEY.match(k)]
        if form is None or not keys:
            self._count("amocrm", "malformed")
            log.warning("amoCRM webhook refused: no contacts/companies/leads event in the body")
            self._send(400, "expected form-encoded amoCRM webhook fields such as leads[update][0][id]=...\n")
            return
        self._count("amocrm", "accepted")
        log.info("amoCRM webhook with %d changed records: an incremental sync follows", len(keys))
        self.daemon.crm_changed()
        self._send(200, "ok\n")
