"""What the amoCRM account SENDS: the OAuth redirect, account webhooks (with retries and switch-off), the
disconnect hook, and the widget's one-time JWTs; plus ``/api/v4/webhooks``.

Sources (amocrm.ru/developers, Markdown copy biradrags/amo-docs 001c0f3; shared/research/wave2-crm-apis.md §4.2):

* oauth/step-by-step.md: after "Разрешить" the user is sent to the Redirect URI "c GET-параметрами code,
  referer, state, from_widget, platform" (``referer`` = the account's address, ``state`` only if one was
  given, ``platform`` 1 for amocrm.ru, ``from_widget`` only when amoCRM itself sends the request after a
  widget installation). The code lives 20 minutes and is exchanged once at ``/oauth2/access_token`` (auth.py).
* the same page, "Хук об отключении интеграции": a GET to the integration's disconnect URL when a user
  switches it off; ``client_uuid``, ``account_id`` and ``signature`` = hex HMAC-SHA256 of
  ``"{client_id}|{account_id}"`` keyed with the client secret (the page's PHP check). The page's prose names
  the parameters "account_id и client_id"; its code reads ``client_uuid``: the sandbox sends what the code
  checks. The integration's OAuth tokens stop working (401).
* crm_platform/webhooks-api.md: ``GET /api/v4/webhooks`` (``filter[destination]``; ``_total_items`` and
  ``_embedded.webhooks``), ``POST`` ``{"destination","settings":[...],"sort"}`` (201; the same destination
  updates that hook), ``DELETE`` ``{"destination"}`` (204; 404 when unknown); at most 100 hooks; model
  ``id, destination, created_at, updated_at, account_id, created_by, sort, disabled, settings``.
* crm_platform/webhooks-format.md: POST ``x-www-form-urlencoded``, PHP-style nested keys
  (``contacts[add][0][id]``), values as strings, contacts and companies both under ``contacts`` with
  ``type``; plus ``account[subdomain]``, ``account[id]``, ``account[_links][self]``.
* developers.kommo.com/docs/webhooks-general (research §4.2): no answer in 2 s or a code outside 100-299 is
  a failure; retries 5 min (2nd), 15 min (3rd) after any failure, 15 min (4th) and 1 h (5th) only after a
  499 or 5xx; a hook is switched off when more than 100 failures fall in the last 2 hours and the latest
  attempt failed. Delays run on the account clock (``POST /_sandbox/clock {"advance": s}`` or
  ``--time-scale``). User-Agent ``amoCRM-WebHook-client/1.0`` (captured headers, research amocrm.md §7).
* oauth/disposable-tokens.md and web_sdk/mechanics.md: ``$authorizedAjax`` adds ``X-Auth-Token``, a JWT
  signed HS256 with the integration's secret; claims ``iss`` (account address), ``aud`` (base address of the
  redirect_uri), ``jti`` (UUID), ``iat``, ``nbf``, ``exp``, ``account_id``, ``user_id``, ``subdomain``,
  ``client_uuid`` (the docs' example: exp - iat = 1800 s). The remote server must allow CORS from the
  account's domain.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from sandbox.bitrix24.decode import http_build_query
from sandbox.outbound import FORM, send

from .errors import ApiError, ValidationFailed

if TYPE_CHECKING:
    from .account import Account
    from .api import Request

SETTINGS = {f"{a}_{e}" for a in ("add", "update", "delete", "responsible") for e in ("lead", "contact", "company", "customer", "task")}
SETTINGS |= {f"restore_{e}" for e in ("lead", "contact", "company")} | {"status_lead"}
SETTINGS |= {f"note_{e}" for e in ("lead", "contact", "company", "customer")} | {"add_talk", "update_talk", "add_chat_template_review"}
MAX_HOOKS = 100
TIMEOUT = 2.0
RETRY_DELAYS = {2: 300.0, 3: 900.0, 4: 900.0, 5: 3600.0}  # attempt -> account seconds after the previous one
DISABLE_WINDOW = 7200.0
DISABLE_OVER = 100
WIDGET_TOKEN_TTL = 1800
HOOK_AGENT = "amoCRM-WebHook-client/1.0"
OAUTH_AGENT = "amoService-oAuth-Code-Sender/1.0"
_SINGULAR = {"leads": "lead", "contacts": "contact", "companies": "company"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_hs256(claims: dict, secret: str) -> str:
    header = {"typ": "JWT", "alg": "HS256"}
    signing = _b64(json.dumps(header, separators=(",", ":")).encode()) + "." + _b64(
        json.dumps(claims, separators=(",", ":")).encode())
    return signing + "." + _b64(hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest())


def retry_allowed(attempt: int, previous: int) -> bool:
    """May attempt number ``attempt`` (2..5) follow a failed one that answered ``previous`` (0 = no answer)?"""
    failed = previous < 100 or previous >= 300
    if attempt in (2, 3):
        return failed
    if attempt in (4, 5):
        return previous == 499 or 500 <= previous <= 599
    return False


@dataclass
class Hook:
    id: int
    destination: str
    settings: list[str]
    sort: int
    created_at: int
    updated_at: int
    created_by: int
    disabled: bool = False
    failures: list[float] = field(default_factory=list)  # account-clock moments of invalid answers

    def render(self, account_id: int) -> dict:
        return {"id": self.id, "destination": self.destination, "created_at": self.created_at,
                "updated_at": self.updated_at, "account_id": account_id, "created_by": self.created_by,
                "sort": self.sort, "disabled": self.disabled, "settings": list(self.settings)}


@dataclass
class Delivery:
    hook_id: int
    form: dict
    setting: str
    attempt: int = 1
    due: float = 0.0  # account clock
    id: int = 0


class Hooks:
    def __init__(self, account: "Account"):
        self.account = account
        self.hooks: dict[int, Hook] = {}
        self.next_id = 1000001
        self.queue: list[Delivery] = []
        self.log: list[dict] = []
        self.timeout = TIMEOUT
        self.disconnect_url: str | None = None
        self.disconnected = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._next_delivery = 1
        self.in_flight = 0
        account.store.on_change = self.on_change

    # -- /api/v4/webhooks ------------------------------------------------------------------------

    def routes(self) -> dict:
        return {"GET": self.api_list, "POST": self.api_subscribe, "DELETE": self.api_unsubscribe}

    def api_list(self, req: "Request") -> tuple[int, Any]:
        wanted = req.params.get("filter", {}).get("destination") if isinstance(req.params.get("filter"), dict) else None
        hooks = [h.render(self.account.account_id) for h in sorted(self.hooks.values(), key=lambda h: (h.sort, h.id))
                 if wanted is None or h.destination == wanted]
        if not hooks:
            return 204, None
        return 200, {"_total_items": len(hooks), "_embedded": {"webhooks": hooks}}

    @staticmethod
    def _destination(body: Any) -> str:
        destination = body.get("destination") if isinstance(body, dict) else None
        if not isinstance(destination, str) or not destination:
            raise ValidationFailed([("0", [("NotBlank", "destination", "This value should not be blank.")])])
        parts = urlsplit(destination)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValidationFailed([("0", [("InvalidUrl", "destination", "This value is not a valid URL.")])])
        return destination

    def api_subscribe(self, req: "Request") -> tuple[int, Any]:
        destination = self._destination(req.body)
        settings = req.body.get("settings")
        if not isinstance(settings, list) or not settings or not all(isinstance(s, str) for s in settings):
            raise ValidationFailed([("0", [("NotBlank", "settings", "This value should not be blank.")])])
        unknown = [s for s in settings if s not in SETTINGS]
        if unknown:
            raise ValidationFailed([("0", [("InvalidChoice", "settings", f"Unknown action: {unknown[0]}")])])
        sort = req.body.get("sort")
        if sort is not None and (not isinstance(sort, int) or isinstance(sort, bool)):
            raise ValidationFailed([("0", [("InvalidType", "sort", "This value should be of type int.")])])
        now = int(self.account.clock.real())
        for hook in self.hooks.values():
            if hook.destination == destination:
                hook.settings, hook.updated_at = list(dict.fromkeys(settings)), now
                hook.sort = hook.sort if sort is None else sort
                hook.disabled, hook.failures = False, []
                return 201, hook.render(self.account.account_id)
        if len(self.hooks) >= MAX_HOOKS:
            raise ApiError(400, f"No more than {MAX_HOOKS} webhooks per account")  # wording UNCONFIRMED
        hook = Hook(self.next_id, destination, list(dict.fromkeys(settings)), 1 if sort is None else sort, now, now,
                    req.user_id)
        self.hooks[hook.id] = hook
        self.next_id += 1
        return 201, hook.render(self.account.account_id)

    def api_unsubscribe(self, req: "Request") -> tuple[int, Any]:
        destination = self._destination(req.body)
        for hook_id, hook in list(self.hooks.items()):
            if hook.destination == destination:
                del self.hooks[hook_id]
                self.queue = [d for d in self.queue if d.hook_id != hook_id]
                return 204, None
        raise ApiError(404, "Webhook not found")

    # -- payloads --------------------------------------------------------------------------------

    def _fields(self, entity: str, rec: dict, old: dict) -> dict:
        s = lambda v: "" if v is None else str(v)  # noqa: E731  (webhook values are strings)
        out: dict[str, Any] = {"id": s(rec["id"]), "name": s(rec.get("name"))}
        if entity == "leads":
            out.update(status_id=s(rec.get("status_id")), old_status_id=s(old.get("status_id")), price=s(rec.get("price")),
                       pipeline_id=s(rec.get("pipeline_id")), old_pipeline_id=s(old.get("pipeline_id")))
        out.update(responsible_user_id=s(rec.get("responsible_user_id")),
                   last_modified=s(rec.get("updated_at")), modified_user_id=s(rec.get("updated_by")),
                   created_user_id=s(rec.get("created_by")), date_create=s(rec.get("created_at")),
                   account_id=s(self.account.account_id), created_at=s(rec.get("created_at")),
                   updated_at=s(rec.get("updated_at")))
        if old.get("responsible_user_id") not in (None, rec.get("responsible_user_id")):
            out["old_responsible_user_id"] = s(old["responsible_user_id"])
        if entity != "leads":
            out["type"] = "contact" if entity == "contacts" else "company"
            if rec.get("company_id"):
                out["linked_company_id"] = s(rec["company_id"])
        fields = []
        for value in rec.get("custom_fields_values") or []:
            item = {"id": s(value.get("field_id")), "name": s(value.get("field_name"))}
            if value.get("field_code"):
                item["code"] = value["field_code"]
            item["values"] = [{"value": s(v.get("value")), **({"enum": s(v["enum_id"])} if v.get("enum_id") else {})}
                              for v in value.get("values") or []]
            fields.append(item)
        if fields:
            out["custom_fields"] = fields
        return out

    def on_change(self, entity: str, actions: list[str], rec: dict, old: dict) -> None:
        """Called by the store (under the account lock) after each write."""
        if entity not in _SINGULAR:
            return
        key = "contacts" if entity in ("contacts", "companies") else "leads"
        base = {"account": {"subdomain": self.account.subdomain, "id": str(self.account.account_id),
                            "_links": {"self": f"https://{self.account.subdomain}.amocrm.ru"}}}
        queued = False
        for action in actions:
            setting = f"{action}_{_SINGULAR[entity]}"
            if action == "delete":
                item = {"id": str(rec["id"])}
                if key == "contacts":
                    item["type"] = "contact" if entity == "contacts" else "company"
                else:
                    item.update(status_id=str(rec.get("status_id", "")), pipeline_id=str(rec.get("pipeline_id", "")))
            else:
                item = self._fields(entity, rec, old)
            form = {key: {action: {"0": item}}, **base}
            for hook in sorted(self.hooks.values(), key=lambda h: (h.sort, h.id)):
                if hook.disabled or setting not in hook.settings:
                    continue
                self.queue.append(Delivery(hook.id, form, setting, due=self.account.clock.portal(),
                                           id=self._next_delivery))
                self._next_delivery += 1
                queued = True
        if queued:
            self.kick()

    # -- the sender ------------------------------------------------------------------------------

    def kick(self) -> None:
        if self._thread is None:
            if not self.queue:
                return  # nothing to send: no thread for accounts that never had a webhook
            self._thread = threading.Thread(target=self._run, name="amocrm-webhooks", daemon=True)
            self._thread.start()
        with self._wake:
            self._wake.notify_all()

    def _run(self) -> None:
        while True:
            with self.account.lock:
                now = self.account.clock.portal()
                due = sorted((d for d in self.queue if d.due <= now), key=lambda d: (d.due, d.id))
                job = due[0] if due else None
                if job is not None:
                    self.queue.remove(job)
                    self.in_flight += 1
            if job is None:
                with self._wake:
                    self._wake.wait(0.1)
                continue
            try:
                self._deliver(job)
            finally:
                with self.account.lock:
                    self.in_flight -= 1

    def _deliver(self, job: Delivery) -> None:
        with self.account.lock:
            hook = self.hooks.get(job.hook_id)
            if hook is None or hook.disabled:
                return
            url = hook.destination
        result = send("POST", url, http_build_query(job.form).encode("ascii"),
                      headers={"Content-Type": FORM, "User-Agent": HOOK_AGENT}, timeout=self.timeout)
        code = result["status"] or 0
        ok = 100 <= code <= 299
        with self.account.lock:
            now = self.account.clock.portal()
            entry = {"id": len(self.log) + 1, "delivery": job.id, "hook_id": job.hook_id, "url": url,
                     "setting": job.setting, "attempt": job.attempt, "status": result["status"], "error": result["error"],
                     "ok": ok, "at": now, "form": job.form}
            self.log.append(entry)
            if ok:
                return
            hook.failures = [t for t in hook.failures if t > now - DISABLE_WINDOW] + [now]
            if len(hook.failures) > DISABLE_OVER:
                hook.disabled = True
                entry["disabled_hook"] = True
                self.queue = [d for d in self.queue if d.hook_id != hook.id]
                return
            nxt = job.attempt + 1
            if nxt in RETRY_DELAYS and retry_allowed(nxt, code):
                self.queue.append(Delivery(job.hook_id, job.form, job.setting, nxt, now + RETRY_DELAYS[nxt], job.id))
                entry["next_attempt_at"] = now + RETRY_DELAYS[nxt]

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait (bounded) until nothing is due now and nothing is being sent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.account.lock:
                now = self.account.clock.portal()
                if self.in_flight == 0 and not any(d.due <= now for d in self.queue):
                    return True
            self.kick()
            time.sleep(0.01)
        return False

    # -- OAuth redirect, disconnect, widget tokens ------------------------------------------------

    def redirect(self, body: dict) -> tuple[int, Any]:
        """``{"redirect_uri": url, "state": "x", "from_widget": false, "referer": "sub.amocrm.ru",
        "disconnect_url": url, "send": true}``: a user allows the integration (or amoCRM notifies after a
        widget install, ``from_widget``); the account GETs the redirect URI with a fresh code."""
        auth = self.account.auth
        with self.account.lock:
            if body.get("redirect_uri"):
                uri = str(body["redirect_uri"])
                if urlsplit(uri).scheme not in ("http", "https"):
                    return 400, {"error": "bad_request", "detail": "redirect_uri must be an http(s) URL"}
                auth.redirect_uri = uri
            if body.get("disconnect_url"):
                self.disconnect_url = str(body["disconnect_url"])
            self.disconnected = False
            code = auth.issue_code()
        query = {"code": code, "referer": str(body.get("referer") or f"{self.account.subdomain}.amocrm.ru")}
        if body.get("state") is not None:
            query["state"] = str(body["state"])
        if body.get("from_widget"):
            query["from_widget"] = "1"
        query["platform"] = "1"
        if body.get("error") == "access_denied":  # the user pressed "Отказать"
            query = {k: v for k, v in (("error", "access_denied"), ("client_id", auth.client_id),
                                       ("state", body.get("state"))) if v is not None}
        url = auth.redirect_uri + ("&" if "?" in auth.redirect_uri else "?") + urlencode(query)
        out: dict[str, Any] = {"url": url, "query": query}
        if body.get("send", True):
            agent = OAUTH_AGENT if body.get("from_widget") else "Mozilla/5.0 (sandbox amoCRM user)"
            result = send("GET", url, headers={"User-Agent": agent}, timeout=float(body.get("timeout", 10)))
            out.update(status=result["status"], error=result["error"], body=result["response"][:20000],
                       headers=result["headers"])
        return 200, out

    def disconnect(self, body: dict) -> tuple[int, Any]:
        """A user switches the integration off: its OAuth tokens stop working; the disconnect hook is called."""
        auth = self.account.auth
        with self.account.lock:
            url = str(body.get("url") or self.disconnect_url or "")
            expired = auth.expire()
            auth.refresh.clear()
            self.disconnected = True
            account_id = self.account.account_id
            signature = hmac.new(auth.client_secret.encode(), f"{auth.client_id}|{account_id}".encode(),
                                 hashlib.sha256).hexdigest()
        out: dict[str, Any] = {"expired_tokens": expired}
        if url:
            query = {"client_uuid": auth.client_id, "account_id": str(account_id), "signature": signature}
            target = url + ("&" if "?" in url else "?") + urlencode(query)
            result = send("GET", target, headers={"User-Agent": OAUTH_AGENT}, timeout=10)
            out.update(url=target, status=result["status"], error=result["error"])
        return 200, out

    def widget_token(self, body: dict) -> tuple[int, Any]:
        """``{"user_id": 1, "ttl": 1800, "iat": epoch}``: the JWT ``$authorizedAjax`` puts in X-Auth-Token."""
        auth = self.account.auth
        now = int(body["iat"]) if body.get("iat") is not None else int(self.account.clock.real())
        ttl = int(body.get("ttl", WIDGET_TOKEN_TTL))
        parts = urlsplit(auth.redirect_uri)
        claims = {"iss": f"https://{self.account.subdomain}.amocrm.ru", "aud": f"{parts.scheme}://{parts.netloc}",
                  "jti": str(uuid.uuid4()), "iat": now, "nbf": now, "exp": now + ttl,
                  "account_id": self.account.account_id, "user_id": int(body.get("user_id", auth.user_id)),
                  "subdomain": self.account.subdomain, "client_uuid": auth.client_id}
        return 200, {"token": sign_hs256(claims, auth.client_secret), "claims": claims}

    def widget_request(self, body: dict) -> tuple[int, Any]:
        """``{"url": ..., "method": "GET", "user_id": 1}``: the widget's ``self.$authorizedAjax({url})``."""
        url = body.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            return 400, {"error": "bad_request", "detail": 'give {"url": "http://..."}'}
        _, token = self.widget_token(body)
        headers = {"X-Auth-Token": token["token"], "Origin": f"https://{self.account.subdomain}.amocrm.ru",
                   "X-Requested-With": "XMLHttpRequest"}
        result = send(str(body.get("method", "GET")).upper(), url, headers=headers, timeout=10)
        return 200, {"status": result["status"], "error": result["error"], "headers": result["headers"],
                     "body": result["response"][:200000], "token": token["token"]}

    def control(self, verb: str, route: str, body: dict) -> tuple[int, Any]:
        try:
            return self._control(verb, route, body)
        except (ValueError, TypeError) as exc:  # e.g. "ttl": "long"
            return 400, {"error": "bad_request", "detail": f"bad value in the request: {exc}"}

    def _control(self, verb: str, route: str, body: dict) -> tuple[int, Any]:
        if route == "/webhooks/deliveries":
            if verb == "DELETE":
                with self.account.lock:
                    self.log.clear()
            if body.get("drain", True) and verb == "POST":
                self.drain()
            with self.account.lock:
                return 200, {"deliveries": list(self.log), "queued": [
                    {"delivery": d.id, "hook_id": d.hook_id, "attempt": d.attempt, "due": d.due} for d in self.queue]}
        if route == "/webhooks" and verb == "GET":
            with self.account.lock:
                since = self.account.clock.portal() - DISABLE_WINDOW
                return 200, {"disconnected": self.disconnected, "webhooks": [
                    h.render(self.account.account_id) | {"failures_2h": sum(t > since for t in h.failures)}
                    for h in self.hooks.values()]}
        if route == "/webhooks/timeout" and verb == "POST":
            self.timeout = float(body.get("timeout", TIMEOUT))
            return 200, {"timeout": self.timeout}
        if route == "/oauth/redirect" and verb == "POST":
            return self.redirect(body)
        if route == "/oauth/disconnect" and verb == "POST":
            return self.disconnect(body)
        if route == "/widget/token" and verb == "POST":
            return self.widget_token(body)
        if route == "/widget/request" and verb == "POST":
            return self.widget_request(body)
        return 404, {"error": "not_found", "detail": f"no control route {verb} /_sandbox{route}"}
