"""Control routes for tests and benchmarks, under ``/_sandbox/`` (never part of a real portal).

=============================  ======================================================================
GET  /_sandbox/info            the first-line JSON (webhook URL, OAuth app, tokens, ca_file, ...)
GET  /_sandbox/state           the portal's data as JSON (``?entity=contacts|companies|deals`` for one table)
GET  /_sandbox/counters        request counters (total REST requests, per method incl. batch commands,
                               per HTTP status, 503 QUERY_LIMIT_EXCEEDED, OPERATION_TIME_LIMIT, faults,
                               warnings about ignored filter/order fields)
POST /_sandbox/counters/reset  zero them (also ``DELETE /_sandbox/counters``)
GET  /_sandbox/faults          active faults; POST adds one spec or a list (see faults.py); DELETE clears
GET  /_sandbox/limits          bucket level, per-method operating sums, constants
POST /_sandbox/limits          ``{"enabled", "bucket_size", "drain_rate", "operating_limit", "reset": true}``
GET  /_sandbox/clock           portal and wall clocks; POST ``{"advance": portal_seconds}``
POST /_sandbox/corrupt         ``{"entity": "contact", "id": 4, "fields": {"BIRTHDATE": "31.02.2001"}}``: serve
                               these wire values verbatim from now on (what a botched import leaves in a
                               portal's database; the REST API itself would refuse to write them)
POST /_sandbox/webhooks        ``{"scopes": ["crm", "user"], "user_id": optional}``: another webhook (of the
                               admin, or of another user, created if missing) allowed only
                               these scopes (and ``basic``); answers ``{"webhook_url", "scopes"}``. A method
                               outside them answers 401 ``insufficient_scope``; ``scope`` lists them
POST /_sandbox/oauth/expire    ``{"access_token": optional}``: make it (or all) expire now
POST /_sandbox/oauth/issue     a fresh access/refresh pair (token-endpoint shape)
/_sandbox/apps/...             applications: install, uninstall, open a placement, delivery log (apps.py)
POST /_sandbox/records         a user edits a record in the portal's UI (sends the bound events; apps.py)
=============================  ======================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .faults import Counters
from .limits import LeakyBucket, OperatingLedger

if TYPE_CHECKING:
    from .portal import Portal


def handle(portal: "Portal", info: dict, verb: str, path: str, query: str, body: Any) -> tuple[int, Any]:
    route = path[len("/_sandbox"):].rstrip("/") or "/"
    args = {k: v[-1] for k, v in parse_qs(query).items()}
    body = body if isinstance(body, (dict, list)) else {}
    if route == "/info":
        return 200, info
    if route == "/apps" or route.startswith("/apps/") or route == "/records":
        return portal.apps.control(verb, route, args if route == "/apps/frame" else body)
    if route == "/state" and verb == "GET":
        return 200, portal.state(args.get("entity"))
    if route == "/counters":
        if verb == "DELETE":
            return _reset_counters(portal)
        return 200, _counters(portal)
    if route == "/counters/reset" and verb == "POST":
        return _reset_counters(portal)
    if route == "/faults":
        if verb == "DELETE":
            portal.faults.clear()
            return 200, {"faults": []}
        if verb == "POST":
            specs = body if isinstance(body, list) else [body]
            try:
                added = [portal.faults.add(spec).describe() for spec in specs]
            except (ValueError, TypeError) as exc:
                return 400, {"error": "BAD_FAULT", "error_description": str(exc)}
            return 200, {"added": added, "faults": portal.faults.list()}
        return 200, {"faults": portal.faults.list()}
    if route == "/limits":
        with portal.lock:
            if verb == "POST":
                limits = portal.limits
                if body.get("reset"):
                    limits.bucket = LeakyBucket(limits.bucket.size, limits.bucket.rate)
                    limits.ledger = OperatingLedger(limit=limits.ledger.limit)
                limits.configure(enabled=body.get("enabled"), bucket_size=body.get("bucket_size"),
                                 drain_rate=body.get("drain_rate"), operating_limit=body.get("operating_limit"))
            described = portal.limits.describe(portal.clock.portal())
            described["time_scale"] = portal.clock.scale
            return 200, described
    if route == "/clock":
        if verb == "POST":
            portal.clock.advance(float(body.get("advance", 0)))
        return 200, {"portal_time": portal.clock.portal(), "real_time": portal.clock.real(),
                     "time_scale": portal.clock.scale}
    if route == "/webhooks" and verb == "POST":
        scopes = body.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            return 400, {"error": "BAD_WEBHOOK", "error_description": 'give {"scopes": ["crm", ...]}'}
        user = body.get("user_id")
        if user is not None and (not isinstance(user, int) or user < 1):
            return 400, {"error": "BAD_WEBHOOK", "error_description": '"user_id" is a positive integer'}
        with portal.lock:
            if user is not None:
                portal.store.ensure_user(user, portal.clock.real())
            code = portal.auth.add_webhook(scopes, user)
            owner, allowed = portal.auth.user_webhooks.get(code) or (portal.auth.user_id, portal.auth.scoped_webhooks[code])
        return 200, {"webhook_url": f"{portal.base_url}/rest/{owner}/{code}/", "scopes": sorted(allowed)}
    if route == "/corrupt" and verb == "POST":
        with portal.lock:
            table = portal.store.tables.get(str(body.get("entity", "")))
            row = table.rows.get(int(body.get("id", 0))) if table is not None else None
            if row is None or not isinstance(body.get("fields"), dict):
                return 400, {"error": "BAD_CORRUPT", "error_description": "need entity (contact|company|deal), an existing id and fields"}
            row.setdefault("_raw", {}).update(body["fields"])
            return 200, {"corrupted": row["ID"], "fields": row["_raw"]}
    if route == "/bizproc":  # business-process rights and templates (sandbox/bitrix24/bizproc.py)
        from .bizproc import Bizproc

        with portal.lock:
            if not hasattr(portal.store, "bizproc"):
                portal.store.bizproc = Bizproc()
            if verb == "POST":
                return 200, portal.store.bizproc.configure(body)
            return 200, portal.store.bizproc.describe()
    if route == "/oauth/expire" and verb == "POST":
        with portal.lock:
            return 200, {"expired": portal.auth.expire(body.get("access_token"))}
    if route == "/oauth/issue" and verb == "POST":
        with portal.lock:
            tokens = portal.auth.issue()
            tokens.update(portal.endpoints())
            return 200, tokens
    return 404, {"error": "NOT_FOUND", "error_description": f"no control route {verb} {path}"}


def _counters(portal: "Portal") -> dict:
    with portal.lock:
        snapshot = portal.counters.snapshot()
        snapshot["oauth_refreshes"] = portal.auth.refreshes
        return snapshot


def _reset_counters(portal: "Portal") -> tuple[int, dict]:
    with portal.lock:
        portal.counters = Counters()
        portal.auth.refreshes = 0
        return 200, _counters(portal)
