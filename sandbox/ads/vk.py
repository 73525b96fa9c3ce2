"""VK Ads emulator: remarketing users lists (``/vk/api/v3/remarketing/users_lists...``) and its token endpoint.

Behaviour and its sources: shared/research/ad_audiences.md section 2; every choice the documentation leaves
open is listed in sandbox/ads/README.md ("VK Ads"). In short:

* ``POST /api/v2/oauth2/token.json`` (form ``grant_type=client_credentials|refresh_token``) issues Bearer
  tokens living 86,400 clock-seconds; the token in ``credentials()`` never expires.
* A list is uploaded as multipart ``file`` + ``name`` + ``type`` (+ ``base``): a *base* list needs
  2,000..5,000,000 lines, a *diff* (``base=<id>`` adds, ``base=-<id>`` removes) 25..5,000,000 and gets its
  own new id; the diff is applied to the base list's members at once, so ``state()`` shows per base list
  the effective members (base plus additions minus removals).
* Values plain or MD5 (32 hex); plain phones and e-mails are MD5-hashed by the cabinet, so members are
  MD5 hex for ``phones`` / ``emails``. Any invalid line refuses the whole upload (400, every bad line listed).
* Status ``receiving -> received -> mapping -> mapped -> writing -> ready``, one step every
  :attr:`STAGE_SECONDS` clock-seconds (ready after 60 s).
* Rate limits on the clock (research's example values, :attr:`LIMITS`): CREATE 1/min and 10/hour,
  READ 200/hour; ``X-RateLimit-*`` headers; 429 with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections import deque
from typing import Any

from sandbox.ads import multipart
from sandbox.ads.base import Cabinet, Request, Response

MD5_HEX = re.compile(r"^[0-9a-fA-F]{32}$")
PHONE = re.compile(r"^[1-9][0-9]{10,14}$")
EMAIL = re.compile(r"^[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}$")
UINT = re.compile(r"^[0-9]{1,20}$")
TYPES = ("ok", "mm", "phones", "emails", "device_id", "android_id", "advertising_id", "idfa", "dmp_id", "dmp_top",
         "vk", "mac", "mparticle", "human")
STAGES = ("receiving", "received", "mapping", "mapped", "writing", "ready")
LISTS = "/api/v3/remarketing/users_lists.json"
ONE_LIST = re.compile(r"^/api/v3/remarketing/users_lists/(\d+)\.json$")
TOKEN = "/api/v2/oauth2/token.json"
WINDOWS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
HEADER_NAMES = {"second": "RPS", "hour": "Hourly", "day": "Daily"}


class VKError(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        super().__init__(str(body))
        self.status, self.body, self.headers = status, body, headers or {}


def _field_error(field: str, code: str, message: str | None = None, status: int = 400, **extra: Any) -> VKError:
    item: dict[str, Any] = {"code": code}
    if message:
        item["message"] = message
    item.update(extra)
    return VKError(status, {"error": {"fields": {field: [item]}}})


class VKAds(Cabinet):
    name = "vk"
    prefix = "/vk"

    BASE_MIN, DIFF_MIN, MAX_LINES = 2000, 25, 5_000_000
    MAX_BYTES = 128 * 1024 * 1024
    STAGE_SECONDS = 12.0
    TOKEN_SECONDS = 86400
    MAX_ERRORS = 100
    # research 2.2, the documentation's example values for REMARKETINGUSERSLIST (change with control "limits")
    LIMITS = {"READ": {"hour": 200}, "CREATE": {"minute": 1, "hour": 10}}

    def __init__(self, clock: Any, *, seed: int = 7, limits: bool = True):
        super().__init__(clock, seed=seed, limits=limits)
        self.client_id = "sandbox-client-" + secrets.token_hex(4)
        self.client_secret = secrets.token_urlsafe(24)
        self.token = secrets.token_urlsafe(32)
        self.tokens: dict[str, float] = {self.token: float("inf")}   # access token -> expiry (clock)
        self.refresh: set[str] = set()
        self.lists: dict[int, dict[str, Any]] = {}
        self.next_id = 1_000_001
        self.limits_conf = {kind: dict(windows) for kind, windows in self.LIMITS.items()}
        self.calls: dict[str, deque[float]] = {"READ": deque(), "CREATE": deque()}
        self.exhausted_until: dict[str, float] = {}

    # ------------------------------------------------------------------ cabinet interface
    def credentials(self, base_url: str) -> dict[str, Any]:
        return {"base_url": base_url, "token": self.token, "client_id": self.client_id,
                "client_secret": self.client_secret, "token_url": base_url + TOKEN}

    def handle(self, request: Request) -> Response:
        now = self.clock.portal()
        headers: dict[str, str] = {}
        try:
            if request.path == TOKEN:
                return self._token_endpoint(request, now)
            self._authorize(request, now)
            kind = "READ" if request.verb == "GET" else "CREATE" if request.verb == "POST" and request.path == LISTS \
                else None
            if kind:
                headers = self._throttle(kind, now)
            response = self._route(request, now)
        except VKError as exc:
            response = Response(exc.status, exc.body, headers=exc.headers)
        response.headers = {**headers, **response.headers}
        return response

    def state(self) -> dict[str, Any]:
        now = self.clock.portal()
        out = []
        for item in sorted(self.lists.values(), key=lambda i: i["id"]):
            if item["base"]:
                continue
            diffs = [self.lists[d] for d in item["diffs"] if d in self.lists]
            out.append({
                "id": item["id"], "name": item["name"], "type": item["type"], "status": self._status(item, now),
                "members": sorted(item["members"]), "lines": item["lines"], "used": item["used"],
                "diffs": [{"id": d["id"], "base": d["base"], "op": "add" if d["base"] > 0 else "remove",
                           "name": d["name"], "lines": d["lines"], "status": self._status(d, now)} for d in diffs],
            })
        return {"lists": out}

    def control(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.portal()
        if action == "exhaust_quota":
            kind = str(body.get("kind", "CREATE")).upper()
            window = str(body.get("window", "minute"))
            if kind not in self.calls or window not in WINDOWS:
                raise KeyError(action)
            self.exhausted_until[f"{kind}:{window}"] = now + WINDOWS[window]
            return {"exhausted": kind, "window": window, "until": now + WINDOWS[window]}
        if action == "limits":  # {"CREATE": {"minute": 5, "hour": 100}, "READ": {...}}; {} restores the defaults
            if not body:
                self.limits_conf = {kind: dict(windows) for kind, windows in self.LIMITS.items()}
            for kind, windows in body.items():
                if kind.upper() not in self.calls or not all(w in WINDOWS for w in windows):
                    raise KeyError(action)
                self.limits_conf[kind.upper()] = {w: int(n) for w, n in windows.items()}
            return {"limits": self.limits_conf}
        if action == "reset_quota":
            self.exhausted_until.clear()
            for log in self.calls.values():
                log.clear()
            return {"reset": True}
        if action == "use_in_segment":  # the list is used by an audience segment: DELETE answers 409
            item = self.lists[int(body["id"])]
            item["used"] = bool(body.get("used", True))
            return {"id": item["id"], "used": item["used"]}
        if action == "expire_tokens":  # every issued token (not the one in credentials()) expires now
            for token in list(self.tokens):
                if token != self.token:
                    self.tokens[token] = now
            return {"expired": len(self.tokens) - 1}
        raise KeyError(action)

    # ------------------------------------------------------------------ auth
    def _token_endpoint(self, request: Request, now: float) -> Response:
        if request.verb != "POST":
            raise VKError(405, {"error": "invalid_request", "error_description": "POST the form"})
        form = {k: v[-1] for k, v in request.form().items()}
        grant = form.get("grant_type")
        if not grant:
            raise VKError(400, {"error": "invalid_request", "error_description": "grant_type is required"})
        if form.get("client_id") != self.client_id or (grant == "client_credentials"
                                                       and form.get("client_secret") != self.client_secret):
            raise VKError(401, {"error": "invalid_client", "error_description": "Unknown client_id or wrong client_secret"})
        if grant == "refresh_token":
            if form.get("refresh_token") not in self.refresh:
                raise VKError(400, {"error": "invalid_grant", "error_description": "Unknown refresh_token"})
            refresh = form["refresh_token"]
        elif grant == "client_credentials":
            refresh = secrets.token_urlsafe(32)
            self.refresh.add(refresh)
        else:
            raise VKError(400, {"error": "unsupported_grant_type", "error_description": f"{grant!r} is not supported here"})
        access = secrets.token_urlsafe(32)
        self.tokens[access] = now + self.TOKEN_SECONDS
        return Response(200, {"access_token": access, "token_type": "Bearer", "expires_in": self.TOKEN_SECONDS,
                              "refresh_token": refresh})

    def _authorize(self, request: Request, now: float) -> None:
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        if scheme != "Bearer" or not token:
            raise VKError(401, {"error": {"code": "invalid_token", "message": "Send 'Authorization: Bearer <access_token>'"}})
        expiry = self.tokens.get(token.strip())
        if expiry is None:
            raise VKError(401, {"error": {"code": "invalid_token", "message": "Unknown access token"}})
        if now >= expiry:
            raise VKError(401, {"error": {"code": "expired_token", "message": "The access token has expired"}})

    # ------------------------------------------------------------------ rate limits
    def _throttle(self, kind: str, now: float) -> dict[str, str]:
        for window, seconds in WINDOWS.items():
            until = self.exhausted_until.get(f"{kind}:{window}", 0.0)
            if now < until:
                raise self._limited(kind, window, 0, until - now)
        if not self.limits:
            return {}
        log = self.calls[kind]
        while log and log[0] <= now - WINDOWS["day"]:
            log.popleft()
        windows = self.limits_conf.get(kind, {})
        for window, limit in windows.items():
            recent = [t for t in log if t > now - WINDOWS[window]]
            if len(recent) >= limit:
                raise self._limited(kind, window, limit, recent[0] + WINDOWS[window] - now,
                                    self._headers(kind, now, windows))
        log.append(now)
        return self._headers(kind, now, windows)

    def _headers(self, kind: str, now: float, windows: dict[str, int]) -> dict[str, str]:
        headers = {}
        for window, limit in windows.items():
            label = HEADER_NAMES.get(window)
            if label is None:
                continue
            used = sum(1 for t in self.calls[kind] if t > now - WINDOWS[window])
            headers[f"X-RateLimit-{label}-Limit"] = str(limit)
            headers[f"X-RateLimit-{label}-Remaining"] = str(max(0, limit - used))
        return headers

    def _limited(self, kind: str, window: str, limit: int, wait_portal: float,
                 headers: dict[str, str] | None = None) -> VKError:
        retry = max(1, int(wait_portal / self.clock.scale + 0.999))
        what = f"REMARKETINGUSERSLIST {kind}: {limit} per {window}" if limit else f"REMARKETINGUSERSLIST {kind} per {window}"
        return VKError(429, {"error": {"code": "too_many_requests", "message": f"Rate limit exceeded: {what}",
                                       "resource": "REMARKETINGUSERSLIST", "method": kind, "window": window}},
                       {**(headers or {}), "Retry-After": str(retry)})

    # ------------------------------------------------------------------ routes
    def _route(self, request: Request, now: float) -> Response:
        if request.path == LISTS:
            if request.verb == "GET":
                return self._list(request, now)
            if request.verb == "POST":
                return self._upload(request, now)
            raise VKError(405, {"error": {"code": "method_not_allowed", "message": f"{request.verb} not allowed"}})
        match = ONE_LIST.match(request.path)
        if not match:
            raise VKError(404, {"error": {"code": "not_found", "message": f"No resource {request.path}"}})
        item = self.lists.get(int(match.group(1)))
        if item is None:
            raise VKError(404, {"error": {"code": "not_found", "message": f"Users list {match.group(1)} not found"}})
        if request.verb == "GET":
            return Response(200, self._public(item, now))
        if request.verb == "DELETE":
            if item["used"]:
                raise VKError(409, {"error": {"code": "used_in_segment",
                                              "message": "The list is used in an audience segment or look-alike"}})
            del self.lists[item["id"]]
            for diff_id in item["diffs"]:
                self.lists.pop(diff_id, None)
            return Response(204)
        if request.verb == "POST":
            try:
                body = json.loads(request.body or b"{}")
            except ValueError:
                body = None
            name = body.get("name") if isinstance(body, dict) else None
            if not isinstance(name, str) or not name.strip():
                raise VKError(400, {"error": {"code": "validation_failed",
                                              "fields": {"name": [{"code": "required", "message": "name is required"}]}}})
            item["name"] = name.strip()[:255]
            item["updated"] = now
            return Response(204)
        raise VKError(405, {"error": {"code": "method_not_allowed", "message": f"{request.verb} not allowed"}})

    def _list(self, request: Request, now: float) -> Response:
        try:
            limit = int(request.arg("limit", "20") or 20)
            offset = int(request.arg("offset", "0") or 0)
        except ValueError:
            raise VKError(400, {"error": {"code": "validation_failed",
                                          "fields": {"limit": [{"code": "invalid_int"}]}}}) from None
        if not 1 <= limit <= 50 or offset < 0:
            raise VKError(400, {"error": {"code": "validation_failed", "fields": {
                "limit" if not 1 <= limit <= 50 else "offset": [{"code": "invalid_value",
                                                                 "message": "limit is 1..50, offset >= 0"}]}}})
        q = (request.arg("_q") or "").lower()
        items = [i for i in sorted(self.lists.values(), key=lambda i: i["id"]) if q in i["name"].lower()]
        return Response(200, {"count": len(items), "offset": offset, "limit": limit,
                              "items": [self._public(i, now) for i in items[offset:offset + limit]]})

    def _upload(self, request: Request, now: float) -> Response:
        if request.content_type != "multipart/form-data":
            raise _field_error("file", "required", "Send multipart/form-data with file, name and type")
        if len(request.body) > self.MAX_BYTES:
            raise VKError(413, {"error": {"code": "request_entity_too_large", "message": "The file is over 128 MB"}})
        parts = multipart.parse(request.headers.get("content-type", ""), request.body)
        text = {k: v[1].decode("utf-8", "replace").strip() for k, v in parts.items() if k != "file"}
        name = text.get("name", "")
        if not name:
            raise _field_error("name", "required", "name is required")
        kind = text.get("type", "")
        if kind not in TYPES:
            raise _field_error("type", "invalid_choice", f"type must be one of {', '.join(TYPES)}")
        base_text = text.get("base", "0") or "0"
        try:
            base = int(base_text)
        except ValueError:
            raise _field_error("base", "invalid_int", "base is an integer list id (negative removes)") from None
        target = None
        if base:
            target = self.lists.get(abs(base))
            if target is None:
                raise _field_error("base", "not_found", "Unknown base list")
            if target["base"]:
                raise _field_error("base", "unallowed_value", "A differential list cannot be based on another diff")
            if target["type"] != kind:
                raise _field_error("type", "type_mismatch", f"The diff must have the base list's type {target['type']!r}")
        if "file" not in parts:
            raise _field_error("file", "required", "file is required")
        lines = self._read(parts["file"][1], kind)
        minimum = self.DIFF_MIN if base else self.BASE_MIN
        if len(lines) < minimum:
            raise _field_error("file", "not_enough_ids",
                               f"The list has {len(lines)} lines; {'a diff' if base else 'a list'} needs at least {minimum}")
        if len(lines) > self.MAX_LINES:
            raise _field_error("file", "too_many_ids", f"The list has more than {self.MAX_LINES} lines")
        values = set(lines)
        list_id = self.next_id
        self.next_id += 1
        item = {"id": list_id, "name": name[:255], "type": kind, "created": now, "updated": now, "base": base,
                "lines": len(lines), "values": values, "members": set(values) if not base else set(),
                "diffs": [], "used": False}
        self.lists[list_id] = item
        if target is not None:
            target["members"] = target["members"] | values if base > 0 else target["members"] - values
            target["diffs"].append(list_id)
            target["updated"] = now
        return Response(200, self._public(item, now))

    def _read(self, raw: bytes, kind: str) -> list[str]:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise _field_error("file", "file_reading_error", "The file is not UTF-8 text") from None
        rows = text.splitlines()
        column = None
        start = 0
        if rows and kind != "dmp_id":
            head = [h.strip().lower() for h in re.split(r"[,;]", rows[0])]
            if len(head) > 1 or head == ["id"]:
                if "id" not in head:
                    raise _field_error("file", "invalid_csv_header", "A CSV file needs an 'id' column in its header")
                column, start = head.index("id"), 1
        out: list[str] = []
        errors: list[dict[str, Any]] = []
        for number, row in enumerate(rows[start:], start=start + 1):
            line = row.strip()
            if not line:
                continue
            value = line
            if column is not None:
                cells = re.split(r"[,;]", line)
                if column >= len(cells):
                    errors.append({"line_number": number, "line": line[:100], "code": "csv_line_column_index_error"})
                    continue
                value = cells[column].strip()
            value, code = self._value(value, kind)
            if code:
                errors.append({"line_number": number, "line": line[:100], "code": code})
            else:
                out.append(value)
        if errors:
            raise VKError(400, {"error": {"fields": {"file": errors[: self.MAX_ERRORS]}}})
        return out

    @staticmethod
    def _value(value: str, kind: str) -> tuple[str, str | None]:
        if kind == "phones":
            if MD5_HEX.match(value):
                return value.lower(), None
            if PHONE.match(value):
                return hashlib.md5(value.encode()).hexdigest(), None
            return value, "invalid_phone"
        if kind == "emails":
            if MD5_HEX.match(value):
                return value.lower(), None
            if EMAIL.match(value):
                return hashlib.md5(value.lower().encode()).hexdigest(), None
            return value, "invalid_email"
        if kind in ("vk", "ok", "mm"):
            return (value, None) if UINT.match(value) else (value, "invalid_uint")
        return value, None

    # ------------------------------------------------------------------ views
    def _status(self, item: dict[str, Any], now: float) -> str:
        return STAGES[min(len(STAGES) - 1, int((now - item["created"]) // self.STAGE_SECONDS))]

    @staticmethod
    def _time(ts: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))

    def _public(self, item: dict[str, Any], now: float) -> dict[str, Any]:
        status = self._status(item, now)
        out = {
            "id": item["id"], "name": item["name"], "type": item["type"], "status": status,
            "created": self._time(item["created"]), "updated": self._time(item["updated"]),
            "base": item["base"], "has_history": bool(item["base"]) or bool(item["diffs"]),
            "ids_count": item["lines"], "entries_count": len(item["values"]),
            "matched_ids_count": len(item["values"]) if status == "ready" else 0,
        }
        if not item["base"]:
            out["history"] = [{"created": self._time(self.lists[d]["created"]), "diff": d,
                               "status": self._status(self.lists[d], now)} for d in item["diffs"] if d in self.lists]
        return out


CABINET = VKAds
