"""In-process use for tests and benchmarks.

>>> with running_portal(generate=(200, 600), time_scale=100) as portal:
...     status, body = portal.call("crm.contact.list", {"select": ["ID", "PHONE"]})
...     portal.counters()["methods"]["crm.contact.list"]

``portal.webhook_url``, ``portal.info`` (the CLI's first line), ``portal.state()``, ``portal.counters()``,
``portal.reset_counters()``, ``portal.faults(kind=..., ...)``, ``portal.clear_faults()``,
``portal.limits(...)``, ``portal.advance(seconds)``, ``portal.expire_tokens()``, ``portal.call(...)``
(a raw REST call: JSON, form or query encoding, webhook or OAuth). Control operations go through the
``/_sandbox`` HTTP routes, so they are what an out-of-process test would see. ``portal_fixture(...)``
makes a pytest fixture.

Many portals in one server (``--portals N``):

>>> with running_portals(50, generate=(200, 600)) as sandbox:
...     sandbox.portals[3].call("crm.contact.list")       # portal 3: its own URLs, credentials, data
...     sandbox.info["portals"][3]["webhook_url"]          # the CLI's first line

Each ``sandbox.portals[i]`` is a :class:`PortalHandle` of that portal (control routes under its ``/p/{i}``).
"""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator

from .decode import http_build_query


class PortalHandle:
    def __init__(self, server, index: int | None = None):
        self.server = server
        self.index = index  # None: a single-portal server; else portal ``index`` of a multi-portal one
        self.portal = server.portal if index is None else server.portals[index]  # white-box access
        self.info: dict = server.info if index is None else server.infos[index]
        self.webhook_url: str = self.info["webhook_url"]
        self.base_url: str = self.info["base_url"]
        self.ca_file: str | None = self.info.get("ca_file")
        self.ssl_context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None

    # -- raw HTTP --------------------------------------------------------------------------------

    def request(self, verb: str, url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(url, data=data, method=verb, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ssl_context) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return status, raw

    def call(self, method: str, params: dict | None = None, *, encoding: str = "json", auth: str | None = None,
             base: str | None = None) -> tuple[int, Any]:
        """One REST call. encoding: json | form | query. ``auth`` = an access token -> OAuth route."""
        params = dict(params or {})
        if auth is not None:
            params["auth"] = auth
            url = (base or self.info["client_endpoint"]) + method
        else:
            url = (base or self.webhook_url) + method
        if encoding == "json":
            return self.request("POST", url, json.dumps(params).encode(), {"Content-Type": "application/json"})
        if encoding == "form":
            return self.request("POST", url, http_build_query(params).encode(),
                                {"Content-Type": "application/x-www-form-urlencoded"})
        query = http_build_query(params)
        return self.request("GET", url + ("?" + query if query else ""))

    def control(self, verb: str, route: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        status, payload = self.request(verb, f"{self.base_url}/_sandbox/{route.lstrip('/')}", data,
                                       {"Content-Type": "application/json"} if data else None)
        if status != 200:
            raise RuntimeError(f"control route {verb} {route} answered {status}: {payload}")
        return payload

    # -- control routes --------------------------------------------------------------------------

    def state(self, entity: str | None = None) -> dict:
        return self.control("GET", "state" + (f"?entity={entity}" if entity else ""))

    def counters(self) -> dict:
        return self.control("GET", "counters")

    def reset_counters(self) -> dict:
        return self.control("POST", "counters/reset", {})

    def corrupt(self, entity: str, record_id: int, **fields: Any) -> dict:
        """Serve these wire values for the record verbatim (see control.py ``/corrupt``)."""
        return self.control("POST", "corrupt", {"entity": entity, "id": record_id, "fields": fields})

    def faults(self, **spec: Any) -> dict:
        return self.control("POST", "faults", spec)

    def clear_faults(self) -> None:
        self.control("DELETE", "faults")

    def limits(self, **settings: Any) -> dict:
        return self.control("POST", "limits", settings) if settings else self.control("GET", "limits")

    def advance(self, portal_seconds: float) -> dict:
        return self.control("POST", "clock", {"advance": portal_seconds})

    def add_webhook(self, scopes: list[str], user_id: int | None = None) -> str:
        """The URL of another webhook allowed only ``scopes`` (see control.py); ``user_id``: another user's."""
        body: dict[str, Any] = {"scopes": scopes}
        if user_id is not None:
            body["user_id"] = user_id
        return self.control("POST", "webhooks", body)["webhook_url"]

    def expire_tokens(self, access_token: str | None = None) -> int:
        return self.control("POST", "oauth/expire", {"access_token": access_token} if access_token else {})["expired"]

    def issue_tokens(self) -> dict:
        return self.control("POST", "oauth/issue", {})

    # -- applications (apps.py) ------------------------------------------------------------------

    def install_app(self, handler: str, **options: Any) -> dict:
        """Install an application; the portal POSTs its installation callback to ``handler`` first."""
        return self.control("POST", "apps/install", {"handler": handler, **options})

    def uninstall_app(self, client_id: str, clean: int = 1) -> dict:
        return self.control("POST", "apps/uninstall", {"app": client_id, "clean": clean})

    def open_placement(self, placement: str = "DEFAULT", **options: Any) -> dict:
        """What the portal POSTs into a widget frame (``send=False``: only the URL and form)."""
        return self.control("POST", "apps/open", {"placement": placement, **options})

    def edit_record(self, entity: str, action: str = "update", **body: Any) -> dict:
        """A user changes a record in the portal's UI (bound events go out)."""
        return self.control("POST", "records", {"entity": entity, "action": action, **body})

    def deliveries(self, drain: bool = True) -> list[dict]:
        """What the portal has sent so far (after the event queue has emptied)."""
        if drain:
            self.control("POST", "apps/drain", {})
        return self.control("GET", "apps/deliveries")["deliveries"]


@contextmanager
def running_portal(*, generate: tuple[int, int] | None = None, import_csv=None, time_scale: float = 1.0,
                   limits: bool = True, tls: bool = False, timezone: str = "Europe/Moscow", today=None,
                   seed: int = 7, port: int = 0, operating_limit: float | None = None,
                   bucket_size: int | None = None, drain_rate: float | None = None, frozen_clock: bool = False,
                   verbose: bool = False) -> Iterator[PortalHandle]:
    """Serve a seeded portal on 127.0.0.1 in a background thread for the duration of the block.

    ``frozen_clock=True`` stops the portal clock (bucket drain, operating baskets, token lifetimes) except
    for explicit ``advance()`` calls, so limit tests do not depend on how fast the machine is.
    """
    from .cli import create_server

    server = create_server(port=port, import_csv=import_csv, generate=generate, time_scale=time_scale,
                           limits=limits, tls=tls, timezone=timezone, today=today, seed=seed,
                           operating_limit=operating_limit, bucket_size=bucket_size, drain_rate=drain_rate,
                           frozen_clock=frozen_clock, verbose=verbose)
    server.start()
    try:
        yield PortalHandle(server)
    finally:
        server.stop()
        if getattr(server, "temp_dir", None):
            shutil.rmtree(server.temp_dir, ignore_errors=True)


class PortalsHandle:
    """A multi-portal server: ``portals[i]`` is portal i's :class:`PortalHandle`, ``info`` the first line."""

    def __init__(self, server):
        self.server = server
        self.info: dict = server.info
        self.base_url: str = self.info["base_url"]
        self.portals = [PortalHandle(server, index) for index in range(len(server.portals))]

    def __len__(self) -> int:
        return len(self.portals)

    def __getitem__(self, index: int) -> PortalHandle:
        return self.portals[index]


@contextmanager
def running_portals(count: int, **options: Any) -> Iterator[PortalsHandle]:
    """Serve ``count`` (>= 2) independent portals from one server; options as :func:`running_portal`
    (portal i is generated with ``seed + i``)."""
    from .cli import create_server

    if count < 2:
        raise ValueError("running_portals needs at least 2 portals; use running_portal for one")
    server = create_server(portals=count, **options)
    server.start()
    try:
        yield PortalsHandle(server)
    finally:
        server.stop()
        if getattr(server, "temp_dir", None):
            shutil.rmtree(server.temp_dir, ignore_errors=True)


def portal_fixture(scope: str = "module", **options: Any):
    """A pytest fixture serving ``running_portal(**options)``: ``bitrix = portal_fixture(generate=(50, 100))``."""
    import pytest

    @pytest.fixture(scope=scope)
    def _portal() -> Iterator[PortalHandle]:
        with running_portal(**options) as handle:
            yield handle

    return _portal
