"""In-process use for tests and benchmarks.

>>> with running_account(generate=(200, 600), time_scale=100) as acct:
...     status, body = acct.api("GET", "/api/v4/contacts", params={"limit": 250})
...     acct.counters()["by_route"]["GET /api/v4/contacts"]

``acct.info`` (the CLI's first line), ``acct.base_url``, ``acct.access_token`` (long-lived),
``acct.api(...)``, ``acct.oauth(...)`` (the token endpoint), ``acct.state()``, ``acct.counters()``,
``acct.reset_counters()``, ``acct.faults(...)``, ``acct.clear_faults()``, ``acct.expire_tokens()``,
``acct.advance(seconds)``, ``acct.delete(entity, id)``, ``acct.corrupt(entity, id, **fields)``,
``acct.unblock()``, ``acct.new_code()``, ``acct.limits(...)``. Control operations go through the
``/_sandbox`` HTTP routes, so they are what an out-of-process test would see. ``account_fixture(...)``
makes a pytest fixture.

Many accounts in one server (``--accounts N``):

>>> with running_accounts(50, generate=(200, 600)) as sandbox:
...     sandbox.accounts[3].api("GET", "/api/v4/contacts")   # account 3: its own URLs, tokens, data
...     sandbox.info["accounts"][3]["access_token"]           # the CLI's first line

Each ``sandbox.accounts[i]`` is an :class:`AccountHandle` of that account (control routes under ``/a/{i}``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import urlencode

def _flatten(params: dict, prefix: str | None = None) -> list[tuple[str, str]]:
    """``{"filter": {"id": [1, 2]}}`` -> ``filter[id][]=1&filter[id][]=2`` (PHP bracket notation)."""
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, dict):
            out += _flatten(value, name)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, dict):
                    out += _flatten(item, name + "[]")
                else:
                    out.append((name + "[]", str(item)))
        elif value is not None:
            out.append((name, str(value).lower() if isinstance(value, bool) else str(value)))
    return out


class AccountHandle:
    def __init__(self, server, index: int | None = None):
        self.server = server
        self.index = index  # None: a single-account server; else account ``index`` of a multi-account one
        self.account = server.account if index is None else server.accounts[index]  # white-box access
        self.info: dict = server.info if index is None else server.infos[index]
        self.base_url: str = self.info["base_url"]
        self.access_token: str = self.info["access_token"]

    # -- raw HTTP --------------------------------------------------------------------------------

    def request(self, verb: str, url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(url, data=data, method=verb, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        if not raw:
            return status, None
        try:
            return status, json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return status, raw

    def api(self, verb: str, path: str, params: dict | None = None, json: Any = None, token: str | None = None,
            form: dict | None = None) -> tuple[int, Any]:
        """One API call with ``Authorization: Bearer`` (the long-lived token when ``token`` is None;
        ``token=""`` sends no header). ``params`` may be nested dicts/lists (PHP brackets)."""
        import json as _json

        url = self.base_url + path
        if params:
            url += "?" + urlencode(_flatten(params))
        headers = {}
        token = self.access_token if token is None else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if json is not None:
            data = _json.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urlencode(_flatten(form)).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        return self.request(verb, url, data, headers)

    def oauth(self, as_form: bool = False, **fields: Any) -> tuple[int, Any]:
        """``POST /oauth2/access_token``; client_id/secret/redirect_uri default to the sandbox app's."""
        body = {"client_id": self.info["client_id"], "client_secret": self.info["client_secret"],
                "redirect_uri": self.info["redirect_uri"], **fields}
        if as_form:
            return self.request("POST", self.base_url + "/oauth2/access_token", urlencode(body).encode(),
                                {"Content-Type": "application/x-www-form-urlencoded"})
        return self.request("POST", self.base_url + "/oauth2/access_token", json.dumps(body).encode(),
                            {"Content-Type": "application/json"})

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

    def faults(self, **spec: Any) -> dict:
        return self.control("POST", "faults", spec)

    def clear_faults(self) -> None:
        self.control("DELETE", "faults")

    def expire_tokens(self, access_token: str | None = None) -> int:
        return self.control("POST", "oauth/expire", {"access_token": access_token} if access_token else {})["expired"]

    def new_code(self) -> str:
        return self.control("POST", "oauth/code", {})["authorization_code"]

    def user_token(self, user_id: int) -> str:
        """A long-lived token of another user of the account (``api(..., token=...)`` then acts as that user)."""
        return self.control("POST", "oauth/long_lived", {"user_id": user_id})["access_token"]

    def advance(self, seconds: float) -> dict:
        return self.control("POST", "clock", {"advance": seconds})

    # -- what the account sends (hooks.py) -----------------------------------------------------

    def redirect(self, redirect_uri: str | None = None, **options: Any) -> dict:
        """A user allows the integration: the account GETs ``redirect_uri?code=..&referer=..&state=..``."""
        return self.control("POST", "oauth/redirect", {"redirect_uri": redirect_uri, **options})

    def disconnect(self, url: str | None = None) -> dict:
        """A user switches the integration off (tokens revoked, the disconnect hook called)."""
        return self.control("POST", "oauth/disconnect", {"url": url} if url else {})

    def webhook_deliveries(self, drain: bool = True) -> dict:
        """Sent webhooks (after everything due now has gone out) and the queued retries."""
        return self.control("POST", "webhooks/deliveries", {"drain": drain})

    def widget_token(self, **options: Any) -> dict:
        return self.control("POST", "widget/token", options)

    def delete(self, entity: str, record_id: int) -> dict:
        return self.control("POST", "delete", {"entity": entity, "id": record_id})

    def corrupt(self, entity: str, record_id: int, **fields: Any) -> dict:
        return self.control("POST", "corrupt", {"entity": entity, "id": record_id, "fields": fields})

    def salesbots(self, bots: dict | None = None, *, replace: bool = False) -> dict:
        """The account's Salesbots (``{"<id>": {"name", "steps": [...]}}``, sandbox/amocrm/salesbot.py); with
        ``bots``, add those (``replace``: only those)."""
        if bots is None:
            return self.control("GET", "salesbots")
        return self.control("PUT" if replace else "POST", "salesbots", bots)

    def unblock(self) -> dict:
        return self.control("POST", "unblock", {})

    def limits(self, **settings: Any) -> dict:
        return self.control("POST", "limits", settings) if settings else self.control("GET", "limits")


@contextmanager
def running_account(*, generate: tuple[int, int] | None = (200, 600), import_csv=None, time_scale: float = 1.0,
                    limits: bool = True, seed: int = 7, timezone: str = "Europe/Moscow", today=None,
                    frozen_clock: bool = False, rate_limit: int | None = None, block_after: int | None = None,
                    port: int = 0, subdomain: str = "sandbox", verbose: bool = False) -> Iterator[AccountHandle]:
    """Serve a seeded account on 127.0.0.1 in a background thread for the duration of the block.

    ``frozen_clock=True`` stops the account clock (rate window, token lifetimes) except for explicit
    ``advance()`` calls, so limit tests do not depend on how fast the machine is. ``import_csv`` wins over
    the default ``generate``.
    """
    from .cli import create_server

    if import_csv:
        generate = None
    server = create_server(port=port, import_csv=import_csv, generate=generate, time_scale=time_scale, limits=limits,
                           timezone=timezone, today=today, seed=seed, frozen_clock=frozen_clock,
                           rate_limit=rate_limit, block_after=block_after, subdomain=subdomain, verbose=verbose)
    server.start()
    try:
        yield AccountHandle(server)
    finally:
        server.stop()


class AccountsHandle:
    """A multi-account server: ``accounts[i]`` is account i's :class:`AccountHandle`, ``info`` the first line."""

    def __init__(self, server):
        self.server = server
        self.info: dict = server.info
        self.base_url: str = self.info["base_url"]
        self.accounts = [AccountHandle(server, index) for index in range(len(server.accounts))]

    def __len__(self) -> int:
        return len(self.accounts)

    def __getitem__(self, index: int) -> AccountHandle:
        return self.accounts[index]


@contextmanager
def running_accounts(count: int, **options: Any) -> Iterator[AccountsHandle]:
    """Serve ``count`` (>= 2) independent accounts from one server; options as :func:`running_account`
    (account i is generated with ``seed + i``)."""
    from .cli import create_server

    if count < 2:
        raise ValueError("running_accounts needs at least 2 accounts; use running_account for one")
    options.setdefault("generate", (200, 600))
    if options.get("import_csv"):
        options["generate"] = None
    server = create_server(accounts=count, **options)
    server.start()
    try:
        yield AccountsHandle(server)
    finally:
        server.stop()


def account_fixture(scope: str = "module", **options: Any):
    """A pytest fixture serving ``running_account(**options)``: ``amo = account_fixture(generate=(50, 150))``."""
    import pytest

    @pytest.fixture(scope=scope)
    def _account() -> Iterator[AccountHandle]:
        with running_account(**options) as handle:
            yield handle

    return _account
