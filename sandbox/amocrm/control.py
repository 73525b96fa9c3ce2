"""Control routes for tests and benchmarks, under ``/_sandbox/`` (never part of a real account).

=============================  ======================================================================
GET  /_sandbox/info            the first-line JSON (base URL, tokens, OAuth app, counts)
GET  /_sandbox/state           entities in their API JSON, tasks, notes, events, tags, custom fields,
                               users, pipelines (``?entity=contacts|companies|leads`` for one list)
GET  /_sandbox/counters        request counters; POST /_sandbox/counters/reset (or DELETE) zeroes them
GET  /_sandbox/faults          active faults; POST adds one spec or a list (faults.py); DELETE clears
GET  /_sandbox/clock           account and wall clocks; POST ``{"advance": account_seconds}``
GET  /_sandbox/limits          rate limit settings; POST ``{"enabled", "rate", "block_after"}``
POST /_sandbox/unblock         lift the 403 block (and forget recent 429s)
POST /_sandbox/oauth/expire    ``{"access_token": optional}``: that OAuth access token (or all) expires now;
                               the long-lived token is never touched
POST /_sandbox/oauth/code      a fresh authorization code (20 minutes, single use)
POST /_sandbox/oauth/long_lived  ``{"user_id": 7}``: a long-lived token of that user (added to the account's
                               users if new); requests with it act as that user (``updated_by``, events)
POST /_sandbox/delete          ``{"entity": "contacts", "id": 5}``: a user deletes it in the UI (API v4 has
                               no DELETE for contacts/companies/leads): recycle bin + ``*_deleted`` event
/_sandbox/webhooks/...         sent webhooks (``POST .../deliveries`` waits for what is due), timeout (hooks.py)
POST /_sandbox/oauth/redirect  a user allows the integration: GET redirect_uri?code=..&referer=.. (hooks.py)
POST /_sandbox/oauth/disconnect  a user switches it off: tokens revoked, the disconnect hook called
POST /_sandbox/widget/token    a widget JWT (``$authorizedAjax``'s X-Auth-Token); /widget/request sends one
GET  /_sandbox/salesbots        the Salesbots and their steps; POST adds ``{"<id>": {"name", "steps"}}``, PUT
                               replaces them all (sandbox/amocrm/salesbot.py)
POST /_sandbox/corrupt         ``{"entity": "contacts", "id": 5, "fields": {"updated_at": "yesterday"}}``:
                               serve these raw JSON values for that entity from now on
=============================  ======================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .faults import Counters
from .store import ENTITY_TYPES

if TYPE_CHECKING:
    from .account import Account


def _bad(text: str) -> tuple[int, dict]:
    return 400, {"error": "bad_request", "detail": text}


def handle(account: "Account", info: dict, verb: str, path: str, query: str, body: Any) -> tuple[int, Any]:
    route = path[len("/_sandbox"):].rstrip("/") or "/"
    args = {k: v[-1] for k, v in parse_qs(query).items()}
    body = body if isinstance(body, (dict, list)) else {}
    if route in ("/", "/info"):
        return 200, info
    if route.startswith(("/webhooks", "/widget/")) or route in ("/oauth/redirect", "/oauth/disconnect"):
        return account.hooks.control(verb, route, body if isinstance(body, dict) else {})
    if route == "/state" and verb == "GET":
        entity = args.get("entity")
        if entity is not None and entity not in (*ENTITY_TYPES, "catalog_elements"):
            return _bad(f"entity must be one of {', '.join(ENTITY_TYPES)}, catalog_elements")
        with account.lock:
            return 200, account.store.state(entity)
    if route == "/counters":
        if verb == "DELETE":
            return _reset_counters(account)
        return 200, _counters(account)
    if route == "/counters/reset" and verb == "POST":
        return _reset_counters(account)
    if route == "/faults":
        if verb == "DELETE":
            account.faults.clear()
            return 200, {"faults": []}
        if verb == "POST":
            specs = body if isinstance(body, list) else [body]
            try:
                added = [account.faults.add(spec).describe() for spec in specs]
            except (ValueError, TypeError) as exc:
                return _bad(str(exc))
            return 200, {"added": added, "faults": account.faults.list()}
        return 200, {"faults": account.faults.list()}
    if route == "/clock":
        if verb == "POST":
            account.clock.advance(float(body.get("advance", 0)))
            account.hooks.kick()  # webhook retries that have come due
        return 200, {"account_time": account.clock.portal(), "real_time": account.clock.real(),
                     "time_scale": account.clock.scale, "frozen": account.clock.frozen}
    if route == "/limits":
        with account.lock:
            limiter = account.limiter
            if verb == "POST":
                if body.get("enabled") is not None:
                    limiter.enabled = bool(body["enabled"])
                if body.get("rate") is not None:
                    limiter.rate = int(body["rate"])
                if body.get("block_after") is not None:
                    limiter.block_after = int(body["block_after"])
            return 200, limiter.describe()
    if route == "/unblock" and verb == "POST":
        with account.lock:
            was = account.limiter.blocked
            account.limiter.unblock()
            return 200, {"unblocked": was}
    if route == "/oauth/expire" and verb == "POST":
        with account.lock:
            return 200, {"expired": account.auth.expire(body.get("access_token"))}
    if route == "/oauth/code" and verb == "POST":
        with account.lock:
            return 200, {"authorization_code": account.auth.issue_code()}
    if route == "/oauth/long_lived" and verb == "POST":
        user = body.get("user_id")
        if not isinstance(user, int) or isinstance(user, bool) or user <= 0:
            return _bad("need user_id, a positive integer")
        with account.lock:
            account.store.ensure_user(user)
            return 200, {"access_token": account.auth.issue_long_lived(user), "user_id": user}
    if route == "/delete" and verb == "POST":
        entity, rid = body.get("entity"), body.get("id")
        if entity not in ENTITY_TYPES or not isinstance(rid, int):
            return _bad("need entity (contacts|companies|leads) and an integer id")
        with account.lock:
            if not account.store.delete(entity, rid):
                return 404, {"error": "not_found", "detail": f"no {entity} {rid}"}
            return 200, {"deleted": rid, "entity": entity}
    if route == "/salesbots":  # the account's Salesbots and their steps (sandbox/amocrm/salesbot.py)
        from .salesbot import describe, set_bots

        with account.lock:
            if verb in ("POST", "PUT"):
                try:
                    return 200, set_bots(account.store, body, replace=verb == "PUT")
                except ValueError as exc:
                    return _bad(str(exc))
            return 200, describe(account.store)
    if route == "/corrupt" and verb == "POST":
        entity, rid, fields = body.get("entity"), body.get("id"), body.get("fields")
        with account.lock:
            if entity not in ENTITY_TYPES or rid not in account.store.rows[entity] or not isinstance(fields, dict):
                return _bad("need entity (contacts|companies|leads), an existing id and fields")
            account.store.overrides.setdefault((entity, rid), {}).update(fields)
            account.store.version += 1
            return 200, {"corrupted": rid, "fields": account.store.overrides[(entity, rid)]}
    return 404, {"error": "not_found", "detail": f"no control route {verb} {path}"}


def _counters(account: "Account") -> dict:
    with account.lock:
        snapshot = account.counters.snapshot()
        snapshot["oauth_refreshes"] = account.auth.refreshes
        snapshot["blocked"] = account.limiter.blocked
        return snapshot


def _reset_counters(account: "Account") -> tuple[int, dict]:
    with account.lock:
        account.counters = Counters()
        account.auth.refreshes = 0
        return 200, _counters(account)
