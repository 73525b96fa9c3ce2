"""Meta Marketing API customer-file custom audiences, below ``/meta`` (standing for ``https://graph.facebook.com``).

Behaviour and sources: shared/research/ad_audiences.md §4 (endpoints, payload, session, errors) and §5 (the
``facebook-business`` SDK, pointed here with ``FacebookSession.GRAPH``). Every place the docs are silent is
marked ``CHOICE`` here and listed in sandbox/ads/README.md (section "Meta").

Routes (an optional version prefix ``/vNN.N`` is accepted and ignored):

* ``POST   /act_{ad_account_id}/customaudiences``  name, subtype=CUSTOM, customer_file_source -> ``{"id"}``
* ``GET    /act_{ad_account_id}/customaudiences``  ``{"data": [...], "paging": {...}}`` (``fields``, ``limit``, ``after``)
* ``GET    /{audience_id}``                         the audience (``fields``)
* ``DELETE /{audience_id}``                         ``{"success": true}``
* ``POST   /{audience_id}/users``                   add (``payload``, ``session``)
* ``DELETE /{audience_id}/users``                   remove (same parameters)
* ``POST   /{audience_id}/usersreplace``            replace all, applied when the session's last batch arrives
* ``GET    /{audience_id}/sessions``                upload sessions

Parameters come from the query string, a form-encoded body, a multipart body or a JSON body (in that order of
precedence, later wins); ``payload`` and ``session`` may be JSON text (form/query, as the SDK sends them) or
objects (JSON body). Members are applied when a request is accepted; sessions and ``operation_status`` only
report processing, which ends ``PROCESSING_SECONDS`` clock-seconds after a session's last batch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import string
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sandbox.ads import multipart
from sandbox.ads.base import Cabinet, Request, Response

ACCESS_TOKEN = "meta-sandbox-access-token"
AD_ACCOUNT_ID = "100200300400500"
API_VERSION = "v25.0"

MAX_ROWS = 10_000                 # research §4.2: max 10,000 rows per request
CALLS_PER_MINUTE = 120            # CHOICE: the custom-audience BUC formula is unconfirmed (research §8.4)
PROCESSING_SECONDS = 60.0         # CHOICE: docs say "usually up to 24 hours"; the sandbox clock can be advanced
MAX_INVALID_SAMPLES = 10          # CHOICE

HEX64 = re.compile(r"^[0-9a-f]{64}$")
VERSION = re.compile(r"^/v\d+\.\d+(?=/|$)")
SINGLE_SCHEMAS = {"EMAIL_SHA256": "EMAIL", "PHONE_SHA256": "PHONE", "MOBILE_ADVERTISER_ID": "MADID"}
MULTI_KEYS = {"EXTERN_ID", "EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT", "ST", "ZIP",
              "MADID", "COUNTRY"}
UNHASHED_KEYS = {"EXTERN_ID", "MADID"}
FILE_SOURCES = {"USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"}
AUDIENCE_FIELDS = ("id", "account_id", "name", "description", "subtype", "customer_file_source",
                   "approximate_count_lower_bound", "approximate_count_upper_bound", "operation_status",
                   "delivery_status", "data_source", "time_created", "time_updated")


class GraphError(Exception):
    def __init__(self, code: int, message: str, *, subcode: int | None = None, status: int = 400,
                 kind: str = "OAuthException", transient: bool = False):
        super().__init__(message)
        self.code, self.message, self.subcode, self.status, self.kind = code, message, subcode, status, kind
        self.transient = transient


@dataclass
class Session:
    session_id: int
    kind: str                                   # add | remove | replace
    audience_id: str
    start_time: float
    estimated_num_total: int | None = None
    batches: dict[int, int] = field(default_factory=dict)   # batch_seq -> rows received
    invalid: dict[int, int] = field(default_factory=dict)   # batch_seq -> invalid rows
    last_seq: int | None = None
    end_time: float | None = None
    replacement: dict[str, set[str]] = field(default_factory=dict)

    @property
    def num_received(self) -> int:
        return sum(self.batches.values())

    @property
    def num_invalid_entries(self) -> int:
        return sum(self.invalid.values())


@dataclass
class Audience:
    id: str
    account_id: str
    name: str
    description: str
    subtype: str
    customer_file_source: str
    time_created: float
    time_updated: float
    members: dict[str, set[str]] = field(default_factory=dict)   # key (EMAIL, PHONE, ...) -> identifiers
    sessions: dict[int, Session] = field(default_factory=dict)

    def all_members(self) -> list[str]:
        return sorted(set().union(*self.members.values())) if self.members else []


class MetaCabinet(Cabinet):
    name = "meta"
    prefix = "/meta"

    def __init__(self, clock: Any, *, seed: int = 7, limits: bool = True):
        super().__init__(clock, seed=seed, limits=limits)
        self.rng = random.Random(seed)
        self.access_token = ACCESS_TOKEN
        self.accounts = {AD_ACCOUNT_ID}
        self.audiences: dict[str, Audience] = {}
        self.next_audience = 23850000000000001
        self.next_session = 9000000000000001
        self.calls_per_minute = CALLS_PER_MINUTE
        self.processing_seconds = PROCESSING_SECONDS
        self.calls: dict[str, deque[float]] = {}
        self.forced_throttles = 0
        self.throttled = 0
        self._last_account: str | None = None

    # ---- Cabinet interface -------------------------------------------------------------------------------

    def credentials(self, base_url: str) -> dict[str, Any]:
        return {"base_url": base_url, "access_token": self.access_token, "ad_account_id": AD_ACCOUNT_ID,
                "api_version": API_VERSION, "calls_per_minute": self.calls_per_minute if self.limits else None,
                "processing_seconds": self.processing_seconds}

    def state(self) -> dict[str, Any]:
        now = self.clock.portal()
        return {"audiences": [
            {"id": a.id, "account_id": a.account_id, "name": a.name, "subtype": a.subtype,
             "customer_file_source": a.customer_file_source, "members": a.all_members(),
             "members_by_key": {k: sorted(v) for k, v in sorted(a.members.items()) if v},
             "operation_status": self._operation_status(a, now)["code"],
             "sessions": [self._session_json(s, now) for s in a.sessions.values()]}
            for a in self.audiences.values()], "throttled": self.throttled}

    def control(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        if action == "exhaust_quota":
            self.forced_throttles += int(body.get("count", 1))
            return {"forced_throttles": self.forced_throttles}
        if action == "set_limit":
            self.calls_per_minute = int(body["calls_per_minute"])
            return {"calls_per_minute": self.calls_per_minute}
        if action == "set_processing":
            self.processing_seconds = float(body["seconds"])
            return {"processing_seconds": self.processing_seconds}
        if action == "revoke_token":
            self.access_token = f"{ACCESS_TOKEN}-{self.rng.randrange(10**6)}"
            return {"access_token": self.access_token}
        raise KeyError(action)

    def handle(self, request: Request) -> Response:
        try:
            return self._handle(request)
        except GraphError as exc:
            error: dict[str, Any] = {"message": exc.message, "type": exc.kind, "code": exc.code}
            if exc.subcode is not None:
                error["error_subcode"] = exc.subcode
            if exc.transient:
                error["is_transient"] = True
            error["fbtrace_id"] = "".join(self.rng.choice(string.ascii_letters + string.digits) for _ in range(11))
            return Response(exc.status, {"error": error}, headers=self._usage_headers())

    # ---- dispatch ----------------------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        params = self._params(request)
        if params.get("access_token") != self.access_token:
            raise GraphError(190, "Invalid OAuth access token - Cannot parse access token")
        path = VERSION.sub("", request.path).strip("/")
        parts = path.split("/") if path else []
        verb = request.verb
        if not parts:
            raise GraphError(100, "(#100) Unknown path components: /")
        node, edge = parts[0], "/".join(parts[1:])
        if node.startswith("act_"):
            account = node[4:]
            if account not in self.accounts:
                raise self._no_object(verb, node)
            self._throttle(account)
            if edge == "customaudiences" and verb == "POST":
                return self._create(account, params)
            if edge == "customaudiences" and verb == "GET":
                return self._list(account, params)
            raise GraphError(100, f"(#100) Unknown path components: /{edge}" if edge else
                             f"Unsupported {verb.lower()} request.")
        audience = self.audiences.get(node)
        if audience is None:
            raise self._no_object(verb, node)
        self._throttle(audience.account_id)
        if not edge and verb == "GET":
            return Response(200, self._audience_json(audience, params.get("fields")))
        if not edge and verb == "DELETE":
            del self.audiences[node]
            return Response(200, {"success": True})
        if edge == "users" and verb in ("POST", "DELETE"):
            return self._users(audience, params, "add" if verb == "POST" else "remove")
        if edge == "usersreplace" and verb == "POST":
            return self._users(audience, params, "replace")
        if edge == "sessions" and verb == "GET":
            now = self.clock.portal()
            data = sorted(audience.sessions.values(), key=lambda s: -s.start_time)
            return Response(200, {"data": [self._session_json(s, now) for s in data]})
        raise GraphError(100, f"(#100) Unknown path components: /{edge}" if edge else
                         f"Unsupported {verb.lower()} request.")

    @staticmethod
    def _no_object(verb: str, node: str) -> GraphError:
        return GraphError(100, f"Unsupported {verb.lower()} request. Object with ID '{node}' does not exist, "
                          "cannot be loaded due to missing permissions, or does not support this operation. "
                          "Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api",
                          subcode=33)

    @staticmethod
    def _params(request: Request) -> dict[str, Any]:
        params: dict[str, Any] = {k: v[-1] for k, v in request.query.items() if v}
        if not request.body:
            return params
        if request.content_type == "application/json":
            try:
                data = json.loads(request.body)
            except ValueError:
                raise GraphError(100, "(#100) The request body is not valid JSON") from None
            if isinstance(data, dict):
                params.update(data)
        elif request.content_type == "multipart/form-data":
            for key, (_, value) in multipart.parse(request.headers.get("content-type", ""), request.body).items():
                params[key] = value.decode("utf-8", "replace")
        else:
            params.update({k: v[-1] for k, v in request.form().items() if v})
        return params

    # ---- rate limit (error 80003) ------------------------------------------------------------------------

    def _throttle(self, account: str) -> None:
        now = self.clock.portal()
        window = self.calls.setdefault(account, deque())
        while window and window[0] <= now - 60.0:
            window.popleft()
        if self.forced_throttles > 0 or (self.limits and len(window) >= self.calls_per_minute):
            if self.forced_throttles > 0:
                self.forced_throttles -= 1
            self.throttled += 1
            self._last_account = account
            raise GraphError(80003, "(#80003) There have been too many calls to this ad-account. Wait a bit and "
                             "try again. For more info, please refer to https://developers.facebook.com/docs/"
                             "graph-api/overview/rate-limiting#custom-audience.", transient=True)
        window.append(now)
        self._last_account = account

    def _usage_headers(self) -> dict[str, str]:
        account = self._last_account
        if account is None:
            return {}
        now = self.clock.portal()
        window = self.calls.get(account, deque())
        used = sum(1 for t in window if t > now - 60.0)
        pct = min(100, int(100 * used / max(1, self.calls_per_minute))) if self.limits else 0
        regain = 0 if pct < 100 or not window else max(1, int((window[0] + 60.0 - now + 59) // 60))
        usage = {account: [{"type": "custom_audience", "call_count": pct, "total_cputime": 0, "total_time": 0,
                            "estimated_time_to_regain_access": regain}]}
        return {"X-Business-Use-Case-Usage": json.dumps(usage, separators=(",", ":"))}

    # ---- audiences ---------------------------------------------------------------------------------------

    def _create(self, account: str, params: dict[str, Any]) -> Response:
        name = str(params.get("name") or "").strip()
        if not name:
            raise GraphError(100, "(#100) The parameter name is required")
        subtype = str(params.get("subtype") or "CUSTOM")
        if subtype != "CUSTOM":
            # CHOICE: only customer-file audiences are emulated.
            raise GraphError(100, f"(#100) Param subtype must be CUSTOM in this sandbox (got {subtype!r})")
        source = params.get("customer_file_source")
        if source is None:
            # CHOICE: Meta has required customer_file_source for customer-file audiences since 2018.
            raise GraphError(100, "(#100) The parameter customer_file_source is required")
        if source not in FILE_SOURCES:
            raise GraphError(100, "(#100) Param customer_file_source must be one of {"
                             + ", ".join(sorted(FILE_SOURCES)) + "}")
        now = self.clock.portal()
        audience = Audience(id=str(self.next_audience), account_id=account, name=name,
                            description=str(params.get("description") or ""), subtype=subtype,
                            customer_file_source=str(source), time_created=now, time_updated=now)
        self.next_audience += 1
        self.audiences[audience.id] = audience
        return Response(200, {"id": audience.id})

    def _list(self, account: str, params: dict[str, Any]) -> Response:
        items = [a for a in self.audiences.values() if a.account_id == account]
        try:
            limit = max(1, min(500, int(params.get("limit") or 25)))
            start = int(base64.b64decode(params["after"]).decode()) if params.get("after") else 0
        except (ValueError, TypeError):
            raise GraphError(100, "(#100) Invalid limit or after cursor") from None
        page = items[start:start + limit]
        out: dict[str, Any] = {"data": [self._audience_json(a, params.get("fields")) for a in page]}
        if page:
            cursors = {"before": base64.b64encode(str(start).encode()).decode(),
                       "after": base64.b64encode(str(start + len(page)).encode()).decode()}
            out["paging"] = {"cursors": cursors}
            if start + len(page) < len(items):
                out["paging"]["next"] = f"?after={cursors['after']}&limit={limit}"
        return Response(200, out)

    def _operation_status(self, audience: Audience, now: float) -> dict[str, Any]:
        # CHOICE: code 200 "Normal" unless a session is still uploading or processing (code 300, our label).
        busy = any(self._stage(s, now) != "finished" for s in audience.sessions.values())
        if busy:
            return {"code": 300, "description": "Processing: the audience is being updated"}
        return {"code": 200, "description": "Normal"}

    def _audience_json(self, audience: Audience, fields: Any) -> dict[str, Any]:
        # CHOICE: like most Marketing API nodes, only ``id`` unless ``fields`` asks for more.
        wanted = [f.strip() for f in str(fields or "id").split(",") if f.strip()]
        now = self.clock.portal()
        count = len(audience.all_members())
        values = {
            "id": audience.id, "account_id": audience.account_id, "name": audience.name,
            "description": audience.description, "subtype": audience.subtype,
            "customer_file_source": audience.customer_file_source,
            "approximate_count_lower_bound": count, "approximate_count_upper_bound": count,
            "operation_status": self._operation_status(audience, now),
            # CHOICE: "too small" below 100 identifiers (research §4.2: Meta needs >= 100 matched people).
            "delivery_status": ({"code": 200, "description": "This audience is ready for use."} if count >= 100
                                else {"code": 300, "description": "This audience is too small to deliver."}),
            "data_source": {"type": "FILE_IMPORTED", "sub_type": "HASHES_OR_USER_IDS"},
            "time_created": int(audience.time_created), "time_updated": int(audience.time_updated),
        }
        out: dict[str, Any] = {}
        for name in wanted:
            if name not in values:
                raise GraphError(100, f"(#100) Tried accessing nonexisting field ({name}) on node type "
                                 "(CustomAudience)")
            out[name] = values[name]
        out.setdefault("id", audience.id)
        return out

    # ---- sessions and users ------------------------------------------------------------------------------

    def _stage(self, session: Session, now: float) -> str:
        if session.end_time is None:
            return "uploading"
        if now < session.end_time + self.processing_seconds:
            return "processing"
        return "finished"

    def _session_json(self, session: Session, now: float) -> dict[str, Any]:
        stage = self._stage(session, now)
        if stage == "finished":
            progress = 100
        elif stage == "processing":
            progress = min(99, int(100 * (now - session.end_time) / max(1e-9, self.processing_seconds)))
        else:
            progress = 0
        return {"session_id": session.session_id, "kind": session.kind, "num_received": session.num_received,
                "num_matched": session.num_received - session.num_invalid_entries if stage == "finished" else 0,
                "num_invalid_entries": session.num_invalid_entries, "stage": stage, "progress": progress,
                "batches": sorted(session.batches), "last_batch_seq": session.last_seq,
                "estimated_num_total": session.estimated_num_total,
                "start_time": int(session.start_time), "end_time": int(session.end_time or 0)}

    @staticmethod
    def _json_param(params: dict[str, Any], name: str) -> Any:
        value = params.get(name)
        if isinstance(value, (str, bytes)):
            try:
                return json.loads(value)
            except ValueError:
                raise GraphError(100, f"(#100) param {name} must be JSON") from None
        return value

    def _session(self, audience: Audience, params: dict[str, Any], kind: str) -> tuple[Session, int, bool]:
        raw = self._json_param(params, "session")
        now = self.clock.portal()
        if raw is None:
            # CHOICE: no session -> a one-batch session the cabinet numbers itself.
            sid = self.next_session
            self.next_session += 1
            session = Session(sid, kind, audience.id, now)
            audience.sessions[sid] = session
            return session, 1, True
        if not isinstance(raw, dict):
            raise GraphError(100, "(#100) param session must be a JSON object")
        sid, seq, last = raw.get("session_id"), raw.get("batch_seq"), raw.get("last_batch_flag", False)
        if isinstance(sid, str) and sid.isdigit():
            sid = int(sid)
        if isinstance(seq, str) and seq.isdigit():
            seq = int(seq)
        if not isinstance(sid, int) or isinstance(sid, bool) or sid <= 0:
            raise GraphError(100, "(#100) param session[session_id] must be a positive integer")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise GraphError(100, "(#100) param session[batch_seq] must be an integer >= 1")
        if not isinstance(last, bool):
            raise GraphError(100, "(#100) param session[last_batch_flag] must be a boolean")
        for other in self.audiences.values():
            found = other.sessions.get(sid)
            if found is not None and (other.id != audience.id or found.kind != kind):
                # CHOICE: session ids are unique per ad account and bound to one audience and one operation.
                raise GraphError(100, f"(#100) session_id {sid} is already used by another audience or operation")
        session = audience.sessions.get(sid)
        if session is None:
            if kind == "replace" and seq != 1:
                raise GraphError(2650, "(#2650) Failed to update the custom audience: the first batch_seq was "
                                 "not detected for this replace session", subcode=1870147)
            session = Session(sid, kind, audience.id, now, estimated_num_total=raw.get("estimated_num_total"))
            audience.sessions[sid] = session
        elif session.end_time is not None and seq not in session.batches:
            # CHOICE: a new batch after the last one is refused; a repeated batch_seq is accepted (idempotent).
            raise GraphError(2650, f"(#2650) Failed to update the custom audience: session {sid} has already "
                             "ended (its last batch was received)")
        return session, seq, last

    def _users(self, audience: Audience, params: dict[str, Any], kind: str) -> Response:
        if params.get("payload") is None:
            raise GraphError(100, "(#100) The parameter payload is required")
        payload = self._json_param(params, "payload")
        if not isinstance(payload, dict):
            raise GraphError(100, "(#100) param payload must be a JSON object")
        schema, data = payload.get("schema"), payload.get("data")
        if isinstance(schema, str):
            if schema not in SINGLE_SCHEMAS:
                raise GraphError(100, f"(#100) Invalid schema: {schema}")
            keys = [SINGLE_SCHEMAS[schema]]
            multi = False
        elif isinstance(schema, list) and schema and all(isinstance(k, str) for k in schema):
            unknown = [k for k in schema if k not in MULTI_KEYS]
            if unknown or len(set(schema)) != len(schema):
                raise GraphError(100, f"(#100) Invalid schema: {', '.join(unknown) or 'repeated key'}")
            keys = list(schema)
            multi = True
        else:
            raise GraphError(100, "(#100) param payload[schema] is required")
        if not isinstance(data, list) or not data:
            raise GraphError(100, "(#100) param payload[data] must be a non-empty array")
        if len(data) > MAX_ROWS:
            raise GraphError(100, f"(#100) Too many users in a request: {len(data)} rows, at most {MAX_ROWS}")
        session, seq, last = self._session(audience, params, kind)

        accepted: list[dict[str, str]] = []
        invalid = 0
        samples: dict[str, str] = {}

        def reject(value: Any, reason: str) -> None:
            nonlocal invalid
            invalid += 1
            if len(samples) < MAX_INVALID_SAMPLES:
                samples[str(value)] = reason

        for row in data:
            values = row if multi else [row]
            if not isinstance(values, list) or len(values) != len(keys):
                reject(json.dumps(row), "Number of values does not match the schema")
                continue
            ids: dict[str, str] = {}
            bad = None
            for key, value in zip(keys, values):
                if value in (None, ""):
                    continue
                if not isinstance(value, str):
                    bad = (value, f"Invalid {key}: not a string")
                    break
                if key not in UNHASHED_KEYS and not HEX64.match(value):
                    bad = (value, f"Invalid {key}: not a lower-case hex SHA-256 hash")
                    break
                ids[key] = value
            if bad is not None:
                reject(*bad)
            elif not ids:
                reject(json.dumps(row), "Empty entry")
            else:
                accepted.append(ids)

        if kind == "replace":
            for ids in accepted:
                for key, value in ids.items():
                    session.replacement.setdefault(key, set()).add(value)
        else:
            for ids in accepted:
                for key, value in ids.items():
                    bucket = audience.members.setdefault(key, set())
                    (bucket.add if kind == "add" else bucket.discard)(value)
        now = self.clock.portal()
        session.batches[seq] = len(data)
        session.invalid[seq] = invalid
        if last and session.end_time is None:
            session.last_seq = seq
            session.end_time = now
            if kind == "replace":
                audience.members = {k: set(v) for k, v in session.replacement.items()}
        audience.time_updated = now
        return Response(200, {"audience_id": audience.id, "session_id": session.session_id,
                              "num_received": len(data), "num_invalid_entries": invalid,
                              "invalid_entry_samples": samples}, headers=self._usage_headers())


def sha256(value: str) -> str:
    """Test helper: lower-case hex SHA-256 of ``value`` as given."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


CABINET = MetaCabinet
