"""Clients of the four ad cabinets' audience APIs: create an audience, add and remove hashed members.

Routes and rules: shared/research/ad_audiences.md. Every client takes hashed identifiers only (see
normalize.py) and raises :class:`AdsError` (or :class:`QuotaError` for quota / rate refusals) with a
message that never contains a token.

* Yandex Audience: a CRM segment is a CSV file with ``phone,email`` columns of SHA-256 hashes, created by
  ``segments/upload_csv_file`` + ``segment/{id}/confirm`` (hashed, SHA256, content_type crm) and changed by
  ``segment/{id}/modify_data?modification_type=addition|subtraction``.
* VK Ads: a remarketing users list of one identifier type (MD5 phones or e-mails); members are added and
  removed by diff uploads with ``base=<id>`` / ``base=-<id>`` (at least 25 lines each).
* Google Data Manager: ``audienceMembers:ingest`` / ``:remove`` to the configured Customer Match list.
* Meta: ``act_{id}/customaudiences`` creates the audience; ``POST`` / ``DELETE {id}/users`` with a
  multi-key ``EMAIL``/``PHONE`` payload in sessions of at most 10,000 rows.
"""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Callable
from typing import Any

import requests

from adapters.retry import Backoff, CallPolicy, Outcome, Rule, decide

TIMEOUT = 120

# What a cabinet's answer means (a quota refusal is also recognised by each cabinet's body, ``_is_quota``).
# Quotas are per minute to per day, so a rate or quota refusal is left for the next run, not retried here.
RULES: list[Rule] = [
    Rule(429, ".*", Outcome.RATE_LIMITED, "refused by a quota or rate limit", nothing_ran=True),
    Rule(401, ".*", Outcome.FAIL, "HTTP {status}"),
    Rule(403, ".*", Outcome.FAIL, "HTTP {status}"),
    Rule(range(500, 600), ".*", Outcome.RETRY, "server error {status}"),
]
# Reads (GET) retry 5xx and lost connections within the run; writes are never resent here: a write whose
# answer was lost or a 5xx may have landed, and the audience sync settles it on the next run (it re-reads
# the cabinet and sends the difference).
READ = CallPolicy("read", frozenset({Outcome.RETRY}), transport=True, only_if_nothing_ran=False,
                  attempts={Outcome.RETRY: 4}, transport_attempts=4)
WRITE = CallPolicy("write", frozenset(), transport=False, only_if_nothing_ran=True, attempts={})
BACKOFF = Backoff(base=0.5, cap=8.0)


class AdsError(Exception):
    pass


class QuotaError(AdsError):
    """The cabinet refused for a quota or rate limit: try again later (the next run)."""


class CredentialsError(AdsError):
    """The cabinet refused the token or client credentials (HTTP 401 / 403)."""


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return json.dumps(body, ensure_ascii=False)[:400]


class Client:
    cabinet = "cabinet"
    label = "Cabinet"
    min_size = 100
    min_diff = 1
    batch = 10_000

    def __init__(self, audience: Any, settings: Any, *, sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random):
        self.audience = audience
        self.settings = settings
        self.sleep = sleep
        self.rand = rand
        self.session = requests.Session()
        if settings.ca_file:
            self.session.verify = str(settings.ca_file)
        self.requests = 0

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, url: str, what: str, **kw: Any) -> Any:
        policy = READ if method == "GET" else WRITE
        failures = 0
        while True:
            self.requests += 1
            try:
                response = self.session.request(method, url, timeout=TIMEOUT, **kw)
            except requests.RequestException as exc:
                failures += 1
                if not policy.retries_transport(failures):
                    raise AdsError(f"{self.label}: {what}: connection failed ({type(exc).__name__})") from None
                self.sleep(BACKOFF.delay(failures - 1, rand=self.rand))
                continue
            if response.status_code < 400 and not self._is_quota(response):
                break
            decision = decide(RULES, response.status_code)
            if decision.outcome is Outcome.RATE_LIMITED or self._is_quota(response):
                raise QuotaError(f"{self.label}: {what}: refused by a quota or rate limit: {_detail(response)}")
            if response.status_code in (401, 403):
                raise CredentialsError(f"{self.label}: {what}: HTTP {response.status_code}: {_detail(response)}; "
                                       f"check the {self.cabinet} credentials in [audiences]")
            failures += decision.outcome is Outcome.RETRY
            if not policy.retries(decision, failures):
                raise AdsError(f"{self.label}: {what}: HTTP {response.status_code}: {_detail(response)}")
            self.sleep(BACKOFF.delay(failures - 1, rand=self.rand))
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def _is_quota(self, response: requests.Response) -> bool:
        return False

    # the interface the audience sync uses
    def find(self, name: str) -> str | None:
        return None

    def create(self, name: str, members: list[dict[str, str]]) -> str:
        raise NotImplementedError

    def add(self, remote_id: str, members: list[dict[str, str]]) -> None:
        raise NotImplementedError

    def remove(self, remote_id: str, members: list[dict[str, str]]) -> None:
        raise NotImplementedError

    def status(self, remote_id: str) -> str | None:
        return None

    def busy(self, remote_id: str) -> bool:
        """The cabinet is still processing the audience and refuses changes until it is done."""
        return False


class Yandex(Client):
    cabinet, label, min_size, batch = "yandex", "Yandex Audience", 100, 100_000

    def __init__(self, audience: Any, settings: Any, **kw: Any):
        super().__init__(audience, settings, **kw)
        self.base = settings.yandex_url.rstrip("/") + "/v1/management"
        self.session.headers["Authorization"] = f"OAuth {settings.yandex_token.get_secret_value()}"

    @staticmethod
    def _file(members: list[dict[str, str]]) -> bytes:
        lines = ["phone,email"] + [f"{m.get('phone') or ''},{m.get('email') or ''}" for m in members]
        return ("\n".join(lines) + "\n").encode()

    def find(self, name: str) -> str | None:
        body = self._call("GET", f"{self.base}/segments", "list segments") or {}
        for segment in body.get("segments") or []:
            if segment.get("name") == name:
                return str(segment["id"])
        return None

    # Creating is two requests: upload_csv_file (takes only the file, answers the new segment's id in status
    # "uploaded", unnamed) and confirm (names it). The sync remembers the id in between (see audiences.py),
    # so a run killed after the upload confirms that segment next time instead of leaving it orphaned.
    def upload(self, members: list[dict[str, str]]) -> str:
        body = self._call("POST", f"{self.base}/segments/upload_csv_file", "upload",
                          files={"file": ("segment.csv", io.BytesIO(self._file(members)), "text/csv")})
        segment_id = ((body or {}).get("segment") or {}).get("id")
        if segment_id is None:
            raise AdsError("Yandex Audience: upload: the answer has no segment id")
        return str(segment_id)

    def confirm(self, segment_id: str, name: str) -> None:
        self._call("POST", f"{self.base}/segment/{segment_id}/confirm", "confirm", json={"segment": {
            "id": int(segment_id), "name": name, "hashed": True, "hashing_alg": "SHA256", "content_type": "crm"}})

    def segment(self, segment_id: str) -> dict[str, Any] | None:
        body = self._call("GET", f"{self.base}/segments", "list segments") or {}
        return next((s for s in body.get("segments") or [] if str(s.get("id")) == str(segment_id)), None)

    def find_unconfirmed(self, rows: int) -> str | None:
        """The one unnamed segment still waiting for confirm with exactly ``rows`` records, if exactly one."""
        body = self._call("GET", f"{self.base}/segments", "list segments") or {}
        found = [s for s in body.get("segments") or []
                 if s.get("status") == "uploaded" and not s.get("name") and s.get("item_quantity") == rows]
        return str(found[0]["id"]) if len(found) == 1 else None

    def create(self, name: str, members: list[dict[str, str]]) -> str:
        segment_id = self.upload(members)
        self.confirm(segment_id, name)
        return segment_id

    def _modify(self, remote_id: str, kind: str, members: list[dict[str, str]]) -> None:
        self._call("POST", f"{self.base}/segment/{remote_id}/modify_data", kind,
                   params={"modification_type": kind, "check_size": "false"},
                   files={"file": ("segment.csv", io.BytesIO(self._file(members)), "text/csv")})

    def add(self, remote_id: str, members: list[dict[str, str]]) -> None:
        self._modify(remote_id, "addition", members)

    def remove(self, remote_id: str, members: list[dict[str, str]]) -> None:
        self._modify(remote_id, "subtraction", members)

    def status(self, remote_id: str) -> str | None:
        body = self._call("GET", f"{self.base}/segments", "list segments") or {}
        for segment in body.get("segments") or []:
            if str(segment.get("id")) == str(remote_id):
                return segment.get("status")
        return None

    def busy(self, remote_id: str) -> bool:
        # A segment being processed refuses modify_data (research 1.5/1.6: up to two hours).
        return self.status(remote_id) in ("is_processed", "is_updated")


class VK(Client):
    cabinet, label, min_size, min_diff, batch = "vk", "VK Ads", 2000, 25, 5_000_000

    def __init__(self, audience: Any, settings: Any, **kw: Any):
        super().__init__(audience, settings, **kw)
        self.base = settings.vk_url.rstrip("/")
        self.kind = audience.id_type  # phones | emails
        self.key = "phone" if self.kind == "phones" else "email"
        self._token: str | None = None

    def _auth(self) -> None:
        if self._token is None:
            body = self._call("POST", f"{self.base}/api/v2/oauth2/token.json", "token", data={
                "grant_type": "client_credentials", "client_id": self.settings.vk_client_id,
                "client_secret": self.settings.vk_client_secret.get_secret_value()}) or {}
            if "access_token" not in body:
                raise AdsError("VK Ads: the token endpoint gave no access_token: check vk_client_id / vk_client_secret")
            self._token = body["access_token"]
            self.session.headers["Authorization"] = f"Bearer {self._token}"

    def _upload(self, name: str, members: list[dict[str, str]], base: int | None) -> dict[str, Any]:
        self._auth()
        values = [m[self.key] for m in members if m.get(self.key)]
        data = {"name": name, "type": self.kind}
        if base is not None:
            data["base"] = str(base)
        return self._call("POST", f"{self.base}/api/v3/remarketing/users_lists.json", "upload", data=data,
                          files={"file": ("list.txt", io.BytesIO(("\n".join(values) + "\n").encode()), "text/plain")}) or {}

    def find(self, name: str) -> str | None:
        self._auth()
        body = self._call("GET", f"{self.base}/api/v3/remarketing/users_lists.json", "list", params={"_q": name, "limit": 50}) or {}
        for item in body.get("items") or []:
            if item.get("name") == name and not item.get("base"):
                return str(item["id"])
        return None

    def create(self, name: str, members: list[dict[str, str]]) -> str:
        return str(self._upload(name, members, None)["id"])

    def add(self, remote_id: str, members: list[dict[str, str]]) -> None:
        self._upload(f"{self.audience.name or self.audience.segment} +", members, int(remote_id))

    def remove(self, remote_id: str, members: list[dict[str, str]]) -> None:
        self._upload(f"{self.audience.name or self.audience.segment} -", members, -int(remote_id))

    def status(self, remote_id: str) -> str | None:
        self._auth()
        return (self._call("GET", f"{self.base}/api/v3/remarketing/users_lists/{remote_id}.json", "read") or {}).get("status")


class Google(Client):
    cabinet, label, min_size, batch = "google", "Google Data Manager", 100, 10_000

    def __init__(self, audience: Any, settings: Any, **kw: Any):
        super().__init__(audience, settings, **kw)
        self.base = settings.google_url.rstrip("/") + "/v1"
        self.session.headers["Authorization"] = f"Bearer {settings.google_access_token.get_secret_value()}"
        self.last_request: str | None = None

    def _is_quota(self, response: requests.Response) -> bool:
        return "RESOURCE_EXHAUSTED" in response.text[:2000]

    def _body(self, members: list[dict[str, str]], ingest: bool) -> dict[str, Any]:
        a = self.audience
        destination: dict[str, Any] = {"reference": "d1", "productDestinationId": a.user_list_id,
                                       "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": a.operating_account_id}}
        if a.login_account_id:
            destination["loginAccount"] = {"accountType": "GOOGLE_ADS", "accountId": a.login_account_id}
        rows = []
        for m in members:
            ids = [{"emailAddress": m["email"]}] if m.get("email") else []
            ids += [{"phoneNumber": m["phone"]}] if m.get("phone") else []
            row: dict[str, Any] = {"destinationReferences": ["d1"], "userData": {"userIdentifiers": ids}}
            if ingest:
                row["consent"] = {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"}
            rows.append(row)
        body: dict[str, Any] = {"destinations": [destination], "audienceMembers": rows, "encoding": "HEX"}
        if ingest:
            body["termsOfService"] = {"customerMatchTermsOfServiceStatus": "ACCEPTED"}
        return body

    def create(self, name: str, members: list[dict[str, str]]) -> str:
        self.add(self.audience.user_list_id, members)  # the Customer Match list exists already
        return str(self.audience.user_list_id)

    def find(self, name: str) -> str | None:
        return None

    def add(self, remote_id: str, members: list[dict[str, str]]) -> None:
        body = self._call("POST", f"{self.base}/audienceMembers:ingest", "ingest", json=self._body(members, True)) or {}
        self.last_request = body.get("requestId")

    def remove(self, remote_id: str, members: list[dict[str, str]]) -> None:
        body = self._call("POST", f"{self.base}/audienceMembers:remove", "remove", json=self._body(members, False)) or {}
        self.last_request = body.get("requestId")

    def status(self, remote_id: str) -> str | None:
        if not self.last_request:
            return None
        body = self._call("GET", f"{self.base}/requestStatus:retrieve", "status", params={"requestId": self.last_request}) or {}
        per = body.get("requestStatusPerDestination") or []
        return per[0].get("requestStatus") if per else None


class Meta(Client):
    cabinet, label, min_size, batch = "meta", "Meta", 100, 10_000

    def __init__(self, audience: Any, settings: Any, **kw: Any):
        super().__init__(audience, settings, **kw)
        self.base = f"{settings.meta_url.rstrip('/')}/{settings.meta_api_version}"
        self.session.params = {"access_token": settings.meta_access_token.get_secret_value()}  # type: ignore[assignment]

    def _is_quota(self, response: requests.Response) -> bool:
        try:
            return int(((response.json() or {}).get("error") or {}).get("code", 0)) in (4, 17, 32, 613, 80003)
        except (ValueError, AttributeError, TypeError):
            return False

    def find(self, name: str) -> str | None:
        body = self._call("GET", f"{self.base}/act_{self.audience.ad_account_id}/customaudiences", "list",
                          params={"fields": "id,name", "limit": 500}) or {}
        for item in body.get("data") or []:
            if item.get("name") == name:
                return str(item["id"])
        return None

    def create(self, name: str, members: list[dict[str, str]]) -> str:
        body = self._call("POST", f"{self.base}/act_{self.audience.ad_account_id}/customaudiences", "create", data={
            "name": name, "subtype": "CUSTOM", "customer_file_source": "USER_PROVIDED_ONLY",
            "description": "Kept in step with a CRM segment by crm-lifecycle"}) or {}
        audience_id = str(body["id"])
        self.add(audience_id, members)
        return audience_id

    def _users(self, verb: str, remote_id: str, members: list[dict[str, str]]) -> None:
        session_id = random.getrandbits(62)
        chunks = [members[i : i + self.batch] for i in range(0, len(members), self.batch)] or [[]]
        for seq, chunk in enumerate(chunks, start=1):
            payload = {"schema": ["EMAIL", "PHONE"], "data": [[m.get("email") or "", m.get("phone") or ""] for m in chunk]}
            session = {"session_id": session_id, "batch_seq": seq, "last_batch_flag": seq == len(chunks),
                       "estimated_num_total": len(members)}
            self._call(verb, f"{self.base}/{remote_id}/users", "users",
                       data={"payload": json.dumps(payload), "session": json.dumps(session)})

    def add(self, remote_id: str, members: list[dict[str, str]]) -> None:
        if members:
            self._users("POST", remote_id, members)

    def remove(self, remote_id: str, members: list[dict[str, str]]) -> None:
        if members:
            self._users("DELETE", remote_id, members)

    def status(self, remote_id: str) -> str | None:
        body = self._call("GET", f"{self.base}/{remote_id}", "read", params={"fields": "operation_status,approximate_count_lower_bound"}) or {}
        status = body.get("operation_status")
        return (status.get("description") if isinstance(status, dict) else status) or "ready"


CLIENTS: dict[str, type[Client]] = {"yandex": Yandex, "vk": VK, "google": Google, "meta": Meta}
