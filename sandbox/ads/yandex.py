"""Yandex Audience emulator: CRM segments from CSV files (``/yandex/v1/management/...``).

Behaviour and its sources: shared/research/ad_audiences.md section 1; every choice the documentation leaves
open is listed in sandbox/ads/README.md ("Yandex Audience"). In short:

* ``Authorization: OAuth <token>`` only (missing: 401 ``unauthorized``; wrong token or another scheme such
  as ``Bearer``: 403 ``invalid_token``), errors in the Yandex management-API shape
  ``{"errors": [{"error_type", "message", "location"}], "code", "message"}``.
* ``POST segments/upload_csv_file`` checks the CSV *structure* (header with ``phone`` and/or ``email``,
  at least one data row) and returns the segment in status ``uploaded``; ``POST segment/{id}/confirm``
  checks the *values* (hashing) and the size (>= 100 data rows unless ``check_size=false``), then the
  members exist and the segment is ``is_processed`` for :attr:`PROCESSING_SECONDS` clock-seconds, then
  ``processed`` (>= 100 members) or ``few_data``.
* ``modify_data`` (addition | subtraction | replace) needs a confirmed segment that is *not*
  ``is_processed`` (refused with 400, as Bitrix24 skips such segments), the original column set, and the
  original hashing; it applies at once and puts the segment back into ``is_processed``.
* Quota for creating/modifying segments (upload_csv_file, modify_data): 10/min, 100/hour, 500/day on the
  clock, plus 5,000 requests/day separately for reads and writes; 429 with the quota in ``error_type``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import secrets
import time
from collections import deque
from typing import Any

from sandbox.ads import multipart
from sandbox.ads.base import Cabinet, Request, Response

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
RAW_PHONE = re.compile(r"^[1-9][0-9]{9,14}$")
RAW_EMAIL = re.compile(r"^[a-z0-9._%+\-]+@[a-z0-9.\-]+\.[a-z]{2,}$")
ID_COLUMNS = ("phone", "email")
EXTRA_COLUMNS = ("external_id", "ext_id")
MIN_RECORDS = 100

SEGMENTS = "/v1/management/segments"
SEGMENT = re.compile(r"^/v1/management/segment/(\d+)(?:/(confirm|modify_data))?/?$")


class YandexError(Exception):
    def __init__(self, status: int, error_type: str, message: str, location: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error_type, self.message, self.location = status, error_type, message, location
        self.headers = headers or {}

    def response(self) -> Response:
        error: dict[str, Any] = {"error_type": self.error_type, "message": self.message}
        if self.location:
            error["location"] = self.location
        return Response(self.status, {"errors": [error], "code": self.status, "message": self.message},
                        headers=self.headers)


def _bad(message: str, location: str | None = None, error_type: str = "invalid_parameter") -> YandexError:
    return YandexError(400, error_type, message, location)


class YandexAudience(Cabinet):
    name = "yandex"
    prefix = "/yandex"

    PROCESSING_SECONDS = 60.0
    # quota for creating / modifying segments (research 1.7): window seconds -> (limit, error_type)
    MODIFY_QUOTAS = {60.0: (10, "quota_segments_modify_per_minute"),
                     3600.0: (100, "quota_segments_modify_per_hour"),
                     86400.0: (500, "quota_segments_modify_per_day")}
    DAILY_REQUESTS = 5000  # per user, separately for client_read and client_write

    def __init__(self, clock: Any, *, seed: int = 7, limits: bool = True):
        super().__init__(clock, seed=seed, limits=limits)
        self.token = "y0_" + secrets.token_urlsafe(24)
        self.login = "sandbox-advertiser"
        self.segments: dict[int, dict[str, Any]] = {}
        self.next_id = 20_000_001
        self.modify_log: deque[float] = deque()
        self.request_log: dict[str, deque[float]] = {"client_read": deque(), "client_write": deque()}
        self.exhausted_until: dict[str, float] = {}

    # ------------------------------------------------------------------ cabinet interface
    def credentials(self, base_url: str) -> dict[str, Any]:
        return {"base_url": base_url, "token": self.token, "login": self.login,
                "auth_header": f"OAuth {self.token}"}

    def handle(self, request: Request) -> Response:
        try:
            self._authorize(request)
            now = self.clock.portal()
            self._count_request(request, now)
            self._tick(now)
            return self._route(request, now)
        except YandexError as exc:
            return exc.response()

    def state(self) -> dict[str, Any]:
        self._tick(self.clock.portal())
        return {"segments": [self._state_item(s) for s in sorted(self.segments.values(), key=lambda s: s["id"])]}

    def control(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.portal()
        if action == "exhaust_quota":
            window = str(body.get("window", "minute"))
            seconds = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}.get(window)
            if seconds is None:
                raise KeyError(action)
            self.exhausted_until[window] = now + seconds
            return {"exhausted": window, "until": now + seconds}
        if action == "reset_quota":
            self.exhausted_until.clear()
            self.modify_log.clear()
            for log in self.request_log.values():
                log.clear()
            return {"reset": True}
        if action == "fail_processing":  # the next processing of segment id ends in processing_failed
            segment = self.segments[int(body["id"])]
            segment["fail_next"] = True
            return {"id": segment["id"], "fail_next": True}
        raise KeyError(action)

    # ------------------------------------------------------------------ plumbing
    def _authorize(self, request: Request) -> None:
        header = request.headers.get("authorization", "").strip()
        if not header:
            raise YandexError(401, "unauthorized", "Authorization header is missing: send 'Authorization: OAuth <token>'")
        scheme, _, token = header.partition(" ")
        if scheme != "OAuth":
            raise YandexError(403, "invalid_token", f"Unsupported authorization scheme {scheme!r}: use 'OAuth <token>'")
        if token.strip() != self.token:
            raise YandexError(403, "invalid_token", "Invalid oauth_token")

    def _count_request(self, request: Request, now: float) -> None:
        if not self.limits:
            return
        kind = "client_read" if request.verb == "GET" else "client_write"
        log = self.request_log[kind]
        while log and log[0] <= now - 86400.0:
            log.popleft()
        if len(log) >= self.DAILY_REQUESTS:
            raise self._quota_error(f"quota_requests_by_uid_{kind}", f"{self.DAILY_REQUESTS} {kind} requests per day",
                                    log[0] + 86400.0 - now)
        log.append(now)

    def _check_modify_quota(self, now: float) -> None:
        for window, until in self.exhausted_until.items():
            if now < until:
                raise self._quota_error(f"quota_segments_modify_per_{window}",
                                        f"segment create/modify quota per {window} exhausted", until - now)
        if not self.limits:
            return
        log = self.modify_log
        while log and log[0] <= now - 86400.0:
            log.popleft()
        for window, (limit, error_type) in self.MODIFY_QUOTAS.items():
            recent = [t for t in log if t > now - window]
            if len(recent) >= limit:
                raise self._quota_error(error_type, f"{limit} segment creations/modifications per {int(window)} s",
                                        recent[0] + window - now)
        log.append(now)

    def _quota_error(self, error_type: str, what: str, wait_portal: float) -> YandexError:
        retry = max(1, int(wait_portal / self.clock.scale + 0.999))
        return YandexError(429, error_type, f"Quota exceeded: {what}", "quota", headers={"Retry-After": str(retry)})

    def _tick(self, now: float) -> None:
        for segment in self.segments.values():
            if segment["status"] == "is_processed" and now >= segment["ready_at"]:
                if segment.pop("fail_next", False):
                    segment["status"] = "processing_failed"
                else:
                    segment["status"] = "processed" if self._size(segment["members"]) >= MIN_RECORDS else "few_data"

    def _route(self, request: Request, now: float) -> Response:
        path = request.path.rstrip("/") or "/"
        if path == SEGMENTS:
            if request.verb != "GET":
                raise YandexError(405, "method_not_allowed", f"{request.verb} {path} is not allowed")
            return Response(200, {"segments": [self._public(s) for s in sorted(self.segments.values(),
                                                                                 key=lambda s: s["id"])]})
        if path == SEGMENTS + "/upload_csv_file":
            if request.verb != "POST":
                raise YandexError(405, "method_not_allowed", f"{request.verb} {path} is not allowed")
            return self._upload(request, now)
        match = SEGMENT.match(path)
        if not match:
            raise YandexError(404, "not_found", f"Unknown method {request.verb} {path}")
        segment_id, action = int(match.group(1)), match.group(2)
        segment = self.segments.get(segment_id)
        if segment is None:
            raise YandexError(404, "not_found", f"Segment {segment_id} not found", "segmentId")
        if action is None:
            if request.verb == "DELETE":
                del self.segments[segment_id]
                return Response(200, {"success": True})
            raise YandexError(405, "method_not_allowed", f"{request.verb} {path} is not allowed")
        if request.verb != "POST":
            raise YandexError(405, "method_not_allowed", f"{request.verb} {path} is not allowed")
        if action == "confirm":
            return self._confirm(segment, request, now)
        return self._modify(segment, request, now)

    # ------------------------------------------------------------------ methods
    def _upload(self, request: Request, now: float) -> Response:
        header, rows = self._read_file(request)
        self._check_modify_quota(now)
        segment_id = self.next_id
        self.next_id += 1
        self.segments[segment_id] = {
            "id": segment_id, "name": "", "status": "uploaded", "create_time": now, "columns": header,
            "hashed": None, "hashing_alg": None, "pending": rows, "members": {}, "ready_at": None,
            "history": [{"action": "upload", "rows": len(rows), "at": now}],
        }
        return Response(200, {"segment": self._public(self.segments[segment_id])})

    def _confirm(self, segment: dict[str, Any], request: Request, now: float) -> Response:
        if segment["status"] != "uploaded":
            raise _bad(f"Segment {segment['id']} is already confirmed (status {segment['status']})", "segment.id")
        body = self._json(request)
        data = body.get("segment")
        if not isinstance(data, dict):
            raise _bad("Body must be {\"segment\": {...}}", "segment", "missing_parameter")
        if "id" in data and str(data["id"]) != str(segment["id"]):
            raise _bad(f"segment.id {data['id']!r} does not match the path id {segment['id']}", "segment.id")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _bad("segment.name is required", "segment.name", "missing_parameter")
        content_type = data.get("content_type", "crm")
        if content_type != "crm":
            raise _bad(f"content_type {content_type!r} does not fit a CSV file upload: use 'crm'", "segment.content_type")
        hashed = data.get("hashed", False)
        if hashed in (True, 1, "1", "true"):
            hashed = True
        elif hashed in (False, 0, "0", "false"):
            hashed = False
        else:
            raise _bad(f"segment.hashed must be a boolean (or 0/1), got {hashed!r}", "segment.hashed")
        alg = None
        if hashed:
            alg = str(data.get("hashing_alg") or "")
            if alg.upper() == "MD5":
                raise _bad("Uploading new MD5 hashes is no longer supported. Please use SHA256.", "segment.hashing_alg")
            if alg != "SHA256":
                raise _bad(f"segment.hashing_alg must be 'SHA256' when hashed is true, got {alg!r}",
                           "segment.hashing_alg")
        rows = segment["pending"]
        members = self._members(segment["columns"], rows, hashed)
        if self._check_size(request) and len(rows) < MIN_RECORDS:
            raise _bad(f"The file has {len(rows)} records; a segment needs at least {MIN_RECORDS} "
                       "(pass check_size=false to save it anyway)", "file")
        segment.update(name=name.strip(), hashed=hashed, hashing_alg=alg, pending=None, members=members,
                       status="is_processed", ready_at=now + self.PROCESSING_SECONDS)
        segment["history"].append({"action": "confirm", "at": now})
        return Response(200, {"segment": self._public(segment)})

    def _modify(self, segment: dict[str, Any], request: Request, now: float) -> Response:
        kind = request.arg("modification_type")
        if kind not in ("addition", "subtraction", "replace"):
            raise _bad("modification_type must be addition, subtraction or replace", "modification_type",
                       "missing_parameter" if kind is None else "invalid_parameter")
        if segment["status"] == "uploaded":
            raise _bad(f"Segment {segment['id']} is not confirmed yet", "segment.status")
        if segment["status"] == "is_processed":
            raise _bad(f"Segment {segment['id']} is being processed (status is_processed); "
                       "modify it after processing ends", "segment.status")
        header, rows = self._read_file(request)
        if set(header) != set(segment["columns"]):
            raise _bad(f"The file columns {header} differ from the columns the segment was created with "
                       f"{segment['columns']}", "file")
        members = self._members(header, rows, segment["hashed"])
        if kind == "addition":
            result = {col: segment["members"].get(col, set()) | members.get(col, set()) for col in ID_COLUMNS}
        elif kind == "subtraction":
            result = {col: segment["members"].get(col, set()) - members.get(col, set()) for col in ID_COLUMNS}
        else:
            result = {col: set(members.get(col, set())) for col in ID_COLUMNS}
        result = {col: values for col, values in result.items() if col in segment["columns"]}
        size = len(rows) if kind == "replace" else self._size(result)
        if self._check_size(request) and size < MIN_RECORDS:
            raise _bad(f"After {kind} the segment would hold {size} records; at least {MIN_RECORDS} are needed "
                       "(pass check_size=false to modify it anyway)", "file")
        self._check_modify_quota(now)
        segment.update(members=result, status="is_processed", ready_at=now + self.PROCESSING_SECONDS)
        segment["history"].append({"action": kind, "rows": len(rows), "at": now})
        return Response(200, {"segment": self._public(segment)})

    # ------------------------------------------------------------------ file and values
    @staticmethod
    def _check_size(request: Request) -> bool:
        return (request.arg("check_size", "true") or "true").strip().lower() not in ("false", "0", "no")

    @staticmethod
    def _json(request: Request) -> dict[str, Any]:
        import json

        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            raise _bad("Body is not valid JSON", "body") from None
        if not isinstance(body, dict):
            raise _bad("Body must be a JSON object", "body")
        return body

    def _read_file(self, request: Request) -> tuple[list[str], list[dict[str, str]]]:
        if request.content_type != "multipart/form-data":
            raise _bad("Send the file as multipart/form-data in the field 'file'", "file", "missing_parameter")
        parts = multipart.parse(request.headers.get("content-type", ""), request.body)
        if "file" not in parts:
            raise _bad("Multipart field 'file' is missing", "file", "missing_parameter")
        raw = parts["file"][1]
        if len(raw) > 1 << 30:
            raise _bad("The file is larger than 1 GB", "file")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("cp1251", "replace")
        reader = csv.reader(io.StringIO(text))
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise _bad("The file is empty", "file") from None
        if not any(col in header for col in ID_COLUMNS):
            raise _bad("The first line must name the columns and include 'phone' and/or 'email'", "file")
        if len(set(header)) != len(header):
            raise _bad(f"Duplicate column names in the header {header}", "file")
        rows: list[dict[str, str]] = []
        for line_no, cells in enumerate(reader, start=2):
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise _bad(f"Line {line_no}: {len(cells)} fields, the header has {len(header)}", f"file:{line_no}")
            row = {col: cell.strip() for col, cell in zip(header, cells)}
            row["__line"] = str(line_no)
            rows.append(row)
        if not rows:
            raise _bad("The file has no records after the header line", "file")
        return header, rows

    @staticmethod
    def _members(columns: list[str], rows: list[dict[str, str]], hashed: bool) -> dict[str, set[str]]:
        members: dict[str, set[str]] = {col: set() for col in ID_COLUMNS if col in columns}
        for row in rows:
            line = row["__line"]
            present = False
            for col in members:
                value = row.get(col, "")
                if not value:
                    continue
                present = True
                if hashed:
                    if not SHA256_HEX.match(value):
                        raise _bad(f"Line {line}: {col} value {value[:80]!r} is not a lowercase hex SHA-256 hash "
                                   "(the segment is confirmed as hashed with SHA256)", f"file:{line}:{col}")
                    members[col].add(value)
                    continue
                if col == "phone" and not RAW_PHONE.match(value):
                    raise _bad(f"Line {line}: phone {value!r} must be digits only with the country code "
                               "(e.g. 79995551111)", f"file:{line}:phone")
                if col == "email" and not RAW_EMAIL.match(value):
                    raise _bad(f"Line {line}: email {value!r} must be a lowercase address with a domain",
                               f"file:{line}:email")
                members[col].add(hashlib.sha256(value.encode("utf-8")).hexdigest())
            if not present:
                raise _bad(f"Line {line}: no phone or email value", f"file:{line}")
        return members

    @staticmethod
    def _size(members: dict[str, set[str]]) -> int:
        return len(set().union(*members.values())) if members else 0

    # ------------------------------------------------------------------ views
    def _public(self, segment: dict[str, Any]) -> dict[str, Any]:
        processed = segment["status"] in ("processed", "few_data")
        out = {
            "id": segment["id"],
            "name": segment["name"],
            "type": "uploading",
            "status": segment["status"],
            "create_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(segment["create_time"])),
            "owner": self.login,
            "content_type": "crm",
            "hashed": bool(segment["hashed"]) if segment["hashed"] is not None else False,
            "item_quantity": self._size(segment["members"]) if segment["pending"] is None else len(segment["pending"]),
            "cookies_matched_quantity": self._size(segment["members"]) if processed else 0,
        }
        if segment["hashing_alg"]:
            out["used_hashing_alg"] = segment["hashing_alg"]
        return out

    def _state_item(self, segment: dict[str, Any]) -> dict[str, Any]:
        members = segment["members"]
        return {
            "id": segment["id"],
            "name": segment["name"],
            "status": segment["status"],
            "hashed": segment["hashed"],
            "hashing_alg": segment["hashing_alg"],
            "columns": segment["columns"],
            "members": sorted(set().union(*members.values())) if members else [],
            "members_by_column": {col: sorted(values) for col, values in members.items()},
            "pending_rows": len(segment["pending"]) if segment["pending"] is not None else 0,
            "history": [dict(h) for h in segment["history"]],
        }


CABINET = YandexAudience
