"""Google Data Manager API (Customer Match) below ``/google`` (standing for ``https://datamanager.googleapis.com``).

Behaviour and sources: shared/research/ad_audiences.md §3.3 (routes, body, limits, request status) plus the
API's published protos (``google.ads.datamanager.v1``: ErrorReason, ConsentStatus, ProductAccount.AccountType,
RequestStatusPerDestination, MatchRateRange, ProcessingErrorReason). Every place the docs are silent is marked
``CHOICE`` here and listed in sandbox/ads/README.md (section "Google Data Manager").

Routes:

* ``POST /v1/audienceMembers:ingest``      add members to each destination's user list -> ``{"requestId"}``
* ``POST /v1/audienceMembers:remove``      remove them (same body without termsOfService) -> ``{"requestId"}``
* ``POST /v1/audienceMembers:removeAll``   ``{"destinations", "removeAsOfTime"?, "validateOnly"?}``
* ``GET  /v1/requestStatus:retrieve?requestId=...``  PROCESSING, then SUCCESS / PARTIAL_SUCCESS / FAILED

Auth ``Authorization: Bearer <access_token>``. Members are applied when a request is accepted; the request
status only reports processing, which ends ``processing_seconds`` clock-seconds later. Quota per project:
300 requests/minute and 100,000/day over all four routes (429 RESOURCE_EXHAUSTED with ErrorInfo
``quota_limit``). Field names are accepted in lowerCamelCase (as documented) or snake_case (proto3 JSON).
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from sandbox.ads.base import Cabinet, Request, Response

ACCESS_TOKEN = "google-sandbox-access-token"
OPERATING_ACCOUNT_ID = "1234567890"
LOGIN_ACCOUNT_ID = "9876543210"
USER_LIST_ID = "5550001"
PROJECT = "projects/123456789012"

MAX_MEMBERS = 10_000
MAX_IDENTIFIERS = 10
MAX_DESTINATIONS = 10
PER_MINUTE = 300
PER_DAY = 100_000
PROCESSING_SECONDS = 300.0       # CHOICE: the docs give no processing time; advance the clock past it

ACCOUNT_TYPES = {"GOOGLE_ADS", "DISPLAY_VIDEO_PARTNER", "DISPLAY_VIDEO_ADVERTISER", "DATA_PARTNER",
                 "GOOGLE_ANALYTICS_PROPERTY"}
CONSENT = {"CONSENT_STATUS_UNSPECIFIED", "CONSENT_GRANTED", "CONSENT_DENIED"}
TOS = {"TERMS_OF_SERVICE_STATUS_UNSPECIFIED", "ACCEPTED", "REJECTED"}
HEX = re.compile(r"^[0-9a-fA-F]+$")
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED"}


class RpcError(Exception):
    def __init__(self, code: int, message: str, *, reason: str | None = None, field_path: str | None = None,
                 metadata: dict[str, str] | None = None, domain: str = "datamanager.googleapis.com",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code, self.message, self.reason, self.field_path = code, message, reason, field_path
        self.metadata, self.domain, self.headers = metadata, domain, headers or {}

    def body(self) -> dict[str, Any]:
        details: list[dict[str, Any]] = []
        if self.reason:
            details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": self.reason,
                            "domain": self.domain, "metadata": self.metadata or {}})
        if self.field_path:
            details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": [{"field": self.field_path, "description": self.message,
                                                 **({"reason": self.reason} if self.reason else {})}]})
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": STATUS_NAMES[self.code]}
        if details:
            error["details"] = details
        return {"error": error}


def invalid(message: str, reason: str, path: str | None = None) -> RpcError:
    return RpcError(400, f"{path}: {message}" if path else message, reason=reason, field_path=path)


def enum_error(path: str, enum: str, value: Any) -> RpcError:
    """An enum name the API does not know is refused while the JSON is parsed (proto3 JSON), before validation."""
    return RpcError(400, f"Invalid value at '{path}' (type.googleapis.com/google.ads.datamanager.v1.{enum}), "
                    f"{json.dumps(value)}", field_path=path)


def get(obj: dict[str, Any], camel: str) -> Any:
    """A field by its lowerCamelCase JSON name or its proto snake_case name."""
    if camel in obj:
        return obj[camel]
    return obj.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel))


def snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)


def check_fields(obj: Any, allowed: set[str], path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise invalid("Invalid value, expected an object", "INVALID_ARGUMENT", path or None)
    known = allowed | {snake(a) for a in allowed}
    for key in obj:
        if key not in known:
            where = f" at '{path}'" if path else ""
            raise RpcError(400, f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.',
                           field_path=f"{path}.{key}" if path else key)
    return obj


@dataclass
class UserList:
    id: str
    account_id: str
    name: str
    members: dict[str, dict[str, float]] = field(default_factory=dict)   # key -> identifier -> time added

    def all_members(self) -> list[str]:
        return sorted(set().union(*[set(v) for v in self.members.values()])) if self.members else []


@dataclass
class UploadRequest:
    request_id: str
    kind: str                         # ingest | remove | removeAll
    accepted_at: float
    destinations: list[dict[str, Any]]
    per_destination: list[dict[str, int]]   # record_count, identifier_count, denied


class GoogleCabinet(Cabinet):
    name = "google"
    prefix = "/google"

    def __init__(self, clock: Any, *, seed: int = 7, limits: bool = True):
        super().__init__(clock, seed=seed, limits=limits)
        self.rng = random.Random(seed)
        self.access_token = ACCESS_TOKEN
        self.user_lists: dict[str, UserList] = {
            USER_LIST_ID: UserList(USER_LIST_ID, OPERATING_ACCOUNT_ID, "CRM lifecycle (Customer Match)")}
        self.next_list = int(USER_LIST_ID) + 1
        self.requests_log: dict[str, UploadRequest] = {}
        self.terms_accepted = False
        self.processing_seconds = PROCESSING_SECONDS
        self.per_minute, self.per_day = PER_MINUTE, PER_DAY
        self.minute: deque[float] = deque()
        self.day: deque[float] = deque()
        self.exhausted_until = {"minute": 0.0, "day": 0.0}
        self.quota_errors = 0

    # ---- Cabinet interface -------------------------------------------------------------------------------

    def credentials(self, base_url: str) -> dict[str, Any]:
        return {"base_url": base_url, "access_token": self.access_token,
                "operating_account_id": OPERATING_ACCOUNT_ID, "operating_account_type": "GOOGLE_ADS",
                "login_account_id": LOGIN_ACCOUNT_ID, "login_account_type": "GOOGLE_ADS",
                "user_list_id": USER_LIST_ID, "processing_seconds": self.processing_seconds}

    def state(self) -> dict[str, Any]:
        now = self.clock.portal()
        return {
            "audiences": [{"id": ul.id, "user_list_id": ul.id, "operating_account_id": ul.account_id,
                           "name": ul.name, "members": ul.all_members(),
                           "members_by_key": {k: sorted(v) for k, v in sorted(ul.members.items()) if v}}
                          for ul in self.user_lists.values()],
            "requests": [{"request_id": r.request_id, "kind": r.kind,
                          "statuses": [self._status(r, n, now) for n in range(len(r.destinations))],
                          "destinations": [str(get(d, "productDestinationId")) for d in r.destinations],
                          "record_count": sum(p["record_count"] for p in r.per_destination)}
                         for r in self.requests_log.values()],
            "terms_accepted": self.terms_accepted, "quota_errors": self.quota_errors,
        }

    def control(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        if action == "exhaust_quota":
            window = body.get("window", "minute")
            if window not in self.exhausted_until:
                raise KeyError(action)
            span = 60.0 if window == "minute" else 86400.0
            self.exhausted_until[window] = self.clock.portal() + float(body.get("seconds", span))
            return {"exhausted_until": self.exhausted_until}
        if action == "create_user_list":
            ul = UserList(str(self.next_list), OPERATING_ACCOUNT_ID, str(body.get("name") or f"list {self.next_list}"))
            self.next_list += 1
            self.user_lists[ul.id] = ul
            return {"user_list_id": ul.id}
        if action == "set_processing":
            self.processing_seconds = float(body["seconds"])
            return {"processing_seconds": self.processing_seconds}
        if action == "set_quota":
            self.per_minute = int(body.get("per_minute", self.per_minute))
            self.per_day = int(body.get("per_day", self.per_day))
            return {"per_minute": self.per_minute, "per_day": self.per_day}
        if action == "revoke_token":
            self.access_token = f"{ACCESS_TOKEN}-{self.rng.randrange(10**6)}"
            return {"access_token": self.access_token}
        if action == "reset_terms":
            self.terms_accepted = False
            return {"terms_accepted": False}
        raise KeyError(action)

    def handle(self, request: Request) -> Response:
        try:
            return self._handle(request)
        except RpcError as exc:
            return Response(exc.code, exc.body(), headers=exc.headers)

    # ---- dispatch ----------------------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        path = unquote(request.path).rstrip("/")
        routes = {("POST", "/v1/audienceMembers:ingest"): "ingest", ("POST", "/v1/audienceMembers:remove"): "remove",
                  ("POST", "/v1/audienceMembers:removeAll"): "removeAll",
                  ("GET", "/v1/requestStatus:retrieve"): "status"}
        route = routes.get((request.verb, path))
        if route is None:
            raise RpcError(404, f"Method not found: {request.verb} {path}")
        auth = request.headers.get("authorization", "")
        if not auth:
            raise RpcError(401, "Request is missing required authentication credential. Expected OAuth 2 access "
                           "token, login cookie or other valid authentication credential.",
                           reason="CREDENTIALS_MISSING", domain="googleapis.com",
                           headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'})
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.access_token:
            raise RpcError(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                           "login cookie or other valid authentication credential.",
                           reason="ACCESS_TOKEN_TYPE_UNSUPPORTED" if scheme.lower() != "bearer"
                           else "ACCESS_TOKEN_INVALID", domain="googleapis.com",
                           headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
                                                        'error="invalid_token"'})
        self._quota()
        if route == "status":
            return self._retrieve(request)
        if request.content_type not in ("application/json", ""):
            raise RpcError(400, f"Invalid content type {request.content_type!r}: the body must be JSON")
        try:
            body = json.loads(request.body or b"{}")
        except ValueError as exc:
            raise RpcError(400, f"Invalid JSON payload received. {exc}") from None
        if route == "removeAll":
            return self._remove_all(body)
        return self._members(body, route)

    # ---- quota -------------------------------------------------------------------------------------------

    def _quota(self) -> None:
        now = self.clock.portal()
        for window, span in ((self.minute, 60.0), (self.day, 86400.0)):
            while window and window[0] <= now - span:
                window.popleft()
        for name, window, limit, limit_name in (
                ("minute", self.minute, self.per_minute, "RequestsPerMinutePerProject"),
                ("day", self.day, self.per_day, "RequestsPerDayPerProject")):
            if now < self.exhausted_until[name] or (self.limits and len(window) >= limit):
                self.quota_errors += 1
                per = "minute" if name == "minute" else "day"
                raise RpcError(
                    429, f"Quota exceeded for quota metric 'Ingestion requests' and limit 'Ingestion requests per "
                    f"{per} per project' of service 'datamanager.googleapis.com' for consumer "
                    f"'project_number:{PROJECT.split('/')[1]}'.", reason="RATE_LIMIT_EXCEEDED",
                    domain="googleapis.com",
                    metadata={"quota_limit": limit_name, "quota_limit_value": str(limit),
                              "quota_metric": "datamanager.googleapis.com/ingestion_requests",
                              "quota_location": "global", "consumer": PROJECT,
                              "service": "datamanager.googleapis.com"})
        self.minute.append(now)
        self.day.append(now)

    # ---- validation --------------------------------------------------------------------------------------

    def _destinations(self, body: dict[str, Any]) -> list[tuple[dict[str, Any], UserList]]:
        raw = get(body, "destinations")
        if not raw:
            raise invalid("At least one destination is required.", "REQUIRED_FIELD_MISSING", "destinations")
        if not isinstance(raw, list):
            raise invalid("Invalid value, expected a list", "INVALID_ARGUMENT", "destinations")
        if len(raw) > MAX_DESTINATIONS:
            raise invalid(f"At most {MAX_DESTINATIONS} destinations are allowed per request.",
                          "TOO_MANY_DESTINATIONS", "destinations")
        out = []
        references: set[str] = set()
        for i, dest in enumerate(raw):
            path = f"destinations[{i}]"
            check_fields(dest, {"reference", "operatingAccount", "loginAccount", "linkedAccount",
                                "productDestinationId"}, path)
            ref = get(dest, "reference")
            if ref is not None:
                if ref in references:
                    raise invalid("Two or more destinations have the same reference.",
                                  "DUPLICATE_DESTINATION_REFERENCE", f"{path}.reference")
                references.add(ref)
            operating = self._account(get(dest, "operatingAccount"), f"{path}.operating_account", required=True)
            login = self._account(get(dest, "loginAccount"), f"{path}.login_account", required=False)
            if operating[1] != OPERATING_ACCOUNT_ID:
                # CHOICE: an account the token cannot reach is PERMISSION_DENIED, like any Google API.
                raise RpcError(403, f"The caller does not have permission to access operating account "
                               f"{operating[1]}.", reason="PERMISSION_DENIED", field_path=f"{path}.operating_account")
            if login is not None and login[1] not in (LOGIN_ACCOUNT_ID, OPERATING_ACCOUNT_ID):
                raise RpcError(403, f"The caller does not have permission to access login account {login[1]}.",
                               reason="PERMISSION_DENIED", field_path=f"{path}.login_account")
            product_id = get(dest, "productDestinationId")
            if not product_id:
                raise invalid("The product destination ID (user list ID) is required.", "REQUIRED_FIELD_MISSING",
                              f"{path}.product_destination_id")
            user_list = self.user_lists.get(str(product_id))
            if user_list is None or user_list.account_id != operating[1]:
                # CHOICE: an unknown user list is INVALID_ARGUMENT / INVALID_USER_LIST_ID (an ErrorReason of the
                # API), not NOT_FOUND.
                raise invalid(f"User list {product_id} is not valid for operating account {operating[1]}.",
                              "INVALID_USER_LIST_ID", f"{path}.product_destination_id")
            out.append((dest, user_list))
        return out

    @staticmethod
    def _account(raw: Any, path: str, *, required: bool) -> tuple[str, str] | None:
        if raw is None:
            if required:
                raise invalid("The operating account is required.", "REQUIRED_FIELD_MISSING", path)
            return None
        check_fields(raw, {"accountType", "accountId", "product"}, path)
        kind = get(raw, "accountType") or get(raw, "product")
        if kind not in ACCOUNT_TYPES:
            raise enum_error(f"{path}.account_type", "ProductAccount.AccountType", kind)
        account_id = get(raw, "accountId")
        if not account_id:
            raise invalid("The account ID is required.", "REQUIRED_FIELD_MISSING", f"{path}.account_id")
        return str(kind), str(account_id)

    @staticmethod
    def _consent(raw: Any, path: str) -> dict[str, str]:
        if raw is None:
            return {}
        check_fields(raw, {"adUserData", "adPersonalization"}, path)
        out = {}
        for name in ("adUserData", "adPersonalization"):
            value = get(raw, name)
            if value is None:
                continue
            if value not in CONSENT:
                raise enum_error(f"{path}.{snake(name)}", "ConsentStatus", value)
            out[name] = value
        return out

    @staticmethod
    def _hash(value: Any, encoding: str, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise invalid("A hashed value is required.", "REQUIRED_FIELD_MISSING", path)
        if encoding == "HEX":
            if not HEX.match(value):
                raise invalid("The value is not HEX encoded (hash it with SHA-256 and encode the digest as hex).",
                              "INVALID_HEX_ENCODING", path)
            if len(value) != 64:
                raise invalid("The value is not a SHA-256 digest (64 hex characters).", "INVALID_SHA256_FORMAT",
                              path)
            return value.lower()     # CHOICE: hex accepted in either case, kept lower-case
        try:
            digest = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            try:
                digest = base64.urlsafe_b64decode(value)
            except (binascii.Error, ValueError):
                raise invalid("The value is not base64 encoded.", "INVALID_BASE64_ENCODING", path) from None
        if len(digest) != 32:
            raise invalid("The value is not a SHA-256 digest (32 bytes).", "INVALID_SHA256_FORMAT", path)
        return digest.hex()          # CHOICE: BASE64 members are kept as hex, like HEX ones

    def _identifiers(self, member: dict[str, Any], encoding: str | None, path: str) -> list[tuple[str, str]]:
        data_kinds = [k for k in ("userData", "pairData", "mobileData", "userIdData", "ppidData", "compositeData")
                      if get(member, k) is not None]
        if not data_kinds:
            raise invalid("The audience member has no data.", "INVALID_AUDIENCE_MEMBER", path)
        if data_kinds != ["userData"]:
            # CHOICE: the sandbox's lists are Customer Match contact lists: only userData is emulated.
            raise invalid(f"{', '.join(data_kinds)} cannot be sent to a Customer Match contact-info list; use "
                          "userData.", "INVALID_USER_LIST_TYPE", f"{path}.{snake(data_kinds[-1])}")
        if encoding is None:
            raise invalid("encoding is required for UserData uploads (HEX or BASE64).", "REQUIRED_FIELD_MISSING",
                          "encoding")
        user_data = check_fields(get(member, "userData"), {"userIdentifiers"}, f"{path}.user_data")
        identifiers = get(user_data, "userIdentifiers")
        ipath = f"{path}.user_data.user_identifiers"
        if not identifiers or not isinstance(identifiers, list):
            raise invalid("At least one user identifier is required.", "REQUIRED_FIELD_MISSING", ipath)
        if len(identifiers) > MAX_IDENTIFIERS:
            raise invalid(f"At most {MAX_IDENTIFIERS} user identifiers are allowed per audience member.",
                          "TOO_MANY_USER_IDENTIFIERS", ipath)
        out = []
        for j, ident in enumerate(identifiers):
            jpath = f"{ipath}[{j}]"
            check_fields(ident, {"emailAddress", "phoneNumber", "address"}, jpath)
            if len(ident) != 1:
                raise invalid("Exactly one of email_address, phone_number or address must be set.",
                              "INVALID_ARGUMENT", jpath)
            if get(ident, "emailAddress") is not None:
                out.append(("emailAddress", self._hash(get(ident, "emailAddress"), encoding, f"{jpath}.email_address")))
            elif get(ident, "phoneNumber") is not None:
                out.append(("phoneNumber", self._hash(get(ident, "phoneNumber"), encoding, f"{jpath}.phone_number")))
            else:
                address = check_fields(get(ident, "address"), {"givenName", "familyName", "regionCode",
                                                               "postalCode"}, f"{jpath}.address")
                given = self._hash(get(address, "givenName"), encoding, f"{jpath}.address.given_name")
                family = self._hash(get(address, "familyName"), encoding, f"{jpath}.address.family_name")
                region, postal = get(address, "regionCode"), get(address, "postalCode")
                if not isinstance(region, str) or not re.match(r"^[A-Za-z]{2}$", region):
                    raise invalid("region_code must be a two-letter ISO-3166-1 code.", "INVALID_ARGUMENT",
                                  f"{jpath}.address.region_code")
                if not isinstance(postal, str) or not postal.strip():
                    raise invalid("postal_code is required.", "INVALID_POSTAL_CODE", f"{jpath}.address.postal_code")
                # CHOICE: an address is one identifier "given:family:REGION:postal" (names hashed, rest as sent).
                out.append(("address", f"{given}:{family}:{region.upper()}:{postal.strip()}"))
        return out

    # ---- ingest / remove ---------------------------------------------------------------------------------

    def _members(self, body: Any, kind: str) -> Response:
        allowed = {"destinations", "audienceMembers", "consent", "validateOnly", "encoding", "encryptionInfo"}
        if kind == "ingest":
            allowed.add("termsOfService")
        check_fields(body, allowed, "")
        destinations = self._destinations(body)
        members = get(body, "audienceMembers")
        if not members:
            raise invalid("At least one audience member is required.", "REQUIRED_FIELD_MISSING", "audience_members")
        if not isinstance(members, list):
            raise invalid("Invalid value, expected a list", "INVALID_ARGUMENT", "audience_members")
        if len(members) > MAX_MEMBERS:
            raise invalid(f"At most {MAX_MEMBERS} audience members are allowed per request (got {len(members)}).",
                          "TOO_MANY_AUDIENCE_MEMBERS", "audience_members")
        if get(body, "encryptionInfo") is not None:
            # CHOICE: encrypted identifiers are not emulated.
            raise invalid("encryption_info is not supported by the sandbox.", "INVALID_ARGUMENT", "encryption_info")
        encoding = get(body, "encoding")
        if encoding in (None, "ENCODING_UNSPECIFIED"):
            encoding = None
        elif encoding not in ("HEX", "BASE64"):
            raise enum_error("encoding", "Encoding", encoding)
        request_consent = self._consent(get(body, "consent"), "consent")
        if kind == "ingest":
            tos = get(body, "termsOfService")
            status = None
            if tos is not None:
                check_fields(tos, {"customerMatchTermsOfServiceStatus"}, "terms_of_service")
                status = get(tos, "customerMatchTermsOfServiceStatus")
                if status not in TOS:
                    raise enum_error("terms_of_service.customer_match_terms_of_service_status",
                                     "TermsOfServiceStatus", status)
            # CHOICE: the account starts without the Customer Match terms; an ingest must carry ACCEPTED until one
            # has; REJECTED is always refused.
            if status == "REJECTED" or (status != "ACCEPTED" and not self.terms_accepted):
                raise invalid("The Customer Match terms of service must be accepted "
                              "(terms_of_service.customer_match_terms_of_service_status = ACCEPTED).",
                              "TERMS_AND_CONDITIONS_NOT_SIGNED", "terms_of_service")
        refs = {get(d, "reference"): n for n, (d, _) in enumerate(destinations) if get(d, "reference") is not None}
        parsed: list[tuple[list[int], list[tuple[str, str]], bool]] = []
        for i, member in enumerate(members):
            path = f"audience_members[{i}]"
            check_fields(member, {"destinationReferences", "consent", "userData", "pairData", "mobileData",
                                  "userIdData", "ppidData", "compositeData"}, path)
            targets = list(range(len(destinations)))
            member_refs = get(member, "destinationReferences")
            if member_refs:
                targets = []
                for ref in member_refs:
                    if ref not in refs:
                        raise invalid(f"Destination reference {ref!r} is not one of the request's destinations.",
                                      "INVALID_DESTINATION", f"{path}.destination_references")
                    targets.append(refs[ref])
            consent = {**request_consent, **self._consent(get(member, "consent"), f"{path}.consent")}
            ids = self._identifiers(member, encoding, path)
            parsed.append((targets, ids, consent.get("adUserData") == "CONSENT_DENIED"))
        if get(body, "validateOnly"):
            return Response(200, {})
        if kind == "ingest":
            self.terms_accepted = True
        now = self.clock.portal()
        stats = [{"record_count": 0, "identifier_count": 0, "denied": 0} for _ in destinations]
        for targets, ids, denied in parsed:
            for n in targets:
                user_list = destinations[n][1]
                stats[n]["record_count"] += 1
                stats[n]["identifier_count"] += len(ids)
                if kind == "ingest" and denied:
                    # CHOICE: a member whose ad_user_data consent is DENIED is not added; the request status
                    # reports it (PROCESSING_ERROR_REASON_DENIED_CONSENT).
                    stats[n]["denied"] += 1
                    continue
                for key, value in ids:
                    bucket = user_list.members.setdefault(key, {})
                    if kind == "ingest":
                        bucket[value] = now
                    else:
                        bucket.pop(value, None)
        return Response(200, {"requestId": self._log(kind, now, [d for d, _ in destinations], stats)})

    def _remove_all(self, body: Any) -> Response:
        check_fields(body, {"destinations", "removeAsOfTime", "validateOnly"}, "")
        destinations = self._destinations(body)
        now = self.clock.portal()
        cutoff = now
        raw = get(body, "removeAsOfTime")
        if raw is not None:
            try:
                cutoff = datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise invalid("remove_as_of_time must be an RFC 3339 timestamp.", "INVALID_FORMAT",
                              "remove_as_of_time") from None
            if cutoff > now + 1:
                raise invalid("remove_as_of_time must not be in the future.", "INVALID_REMOVE_AS_OF_TIME",
                              "remove_as_of_time")
        if get(body, "validateOnly"):
            return Response(200, {})
        stats = []
        for _, user_list in destinations:
            removed = 0
            for bucket in user_list.members.values():
                for value in [v for v, added in bucket.items() if added <= cutoff]:
                    del bucket[value]
                    removed += 1
            stats.append({"record_count": removed, "identifier_count": removed, "denied": 0})
        return Response(200, {"requestId": self._log("removeAll", now, [d for d, _ in destinations], stats)})

    def _log(self, kind: str, now: float, destinations: list[dict[str, Any]], stats: list[dict[str, int]]) -> str:
        request_id = "%08x-%04x-4%03x-a%03x-%012x" % (self.rng.getrandbits(32), self.rng.getrandbits(16),
                                                     self.rng.getrandbits(12), self.rng.getrandbits(12),
                                                     self.rng.getrandbits(48))
        self.requests_log[request_id] = UploadRequest(request_id, kind, now, destinations, stats)
        return request_id

    # ---- request status ----------------------------------------------------------------------------------

    def _status(self, upload: UploadRequest, n: int, now: float) -> str:
        if now < upload.accepted_at + self.processing_seconds:
            return "PROCESSING"
        stats = upload.per_destination[n]
        if stats["denied"] and stats["denied"] >= stats["record_count"]:
            return "FAILED"
        return "PARTIAL_SUCCESS" if stats["denied"] else "SUCCESS"

    def _retrieve(self, request: Request) -> Response:
        request_id = request.arg("requestId") or request.arg("request_id")
        if not request_id:
            raise invalid("request_id is required.", "REQUIRED_FIELD_MISSING", "request_id")
        upload = self.requests_log.get(request_id)
        if upload is None:
            raise invalid(f"Request ID {request_id} is not valid (status exists only for accepted requests that "
                          "were not validate_only).", "INVALID_REQUEST_ID", "request_id")
        now = self.clock.portal()
        out = []
        for n, dest in enumerate(upload.destinations):
            stats = upload.per_destination[n]
            status = self._status(upload, n, now)
            item: dict[str, Any] = {"destination": dest, "requestStatus": status}
            counts = {"recordCount": str(stats["record_count"]),
                      "userIdentifierCount": str(stats["identifier_count"])}
            if upload.kind == "ingest":
                if status != "PROCESSING":
                    # CHOICE: every uploaded identifier "matches" in the sandbox.
                    counts["uploadMatchRateRange"] = ("MATCH_RATE_RANGE_91_TO_100" if stats["record_count"] >
                                                      stats["denied"] else "MATCH_RATE_RANGE_NOT_ELIGIBLE")
                item["audienceMembersIngestionStatus"] = {"userDataIngestionStatus": counts}
            elif upload.kind == "remove":
                item["audienceMembersRemovalStatus"] = {"userDataRemovalStatus": counts}
            else:
                item["removeAllAudienceMembersStatus"] = {}
            if status in ("FAILED", "PARTIAL_SUCCESS"):
                item["errorInfo"] = {"errorCounts": [{"recordCount": str(stats["denied"]),
                                                      "reason": "PROCESSING_ERROR_REASON_DENIED_CONSENT"}]}
            out.append(item)
        return Response(200, {"requestStatusPerDestination": out})


CABINET = GoogleCabinet
