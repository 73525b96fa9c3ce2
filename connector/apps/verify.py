"""Checks and parsers for what a CRM POSTs to the connector's app handlers (issue 15).

Ground floor: standard library and PyJWT only, nothing else from ``connector``, so the install, event,
placement and widget handlers (built on the portal registry) can all use it. Every refusal is a
:class:`Refused` with a one-line message saying what is wrong; no message ever contains a token, a secret
or a signature (they are only compared, in constant time).

Bitrix24 (b24restdocs = apidocs.bitrix24.com):

* events and the installation callback: ``application/x-www-form-urlencoded`` with PHP-style keys
  (``auth[member_id]``, ``data[FIELDS][ID]``); keys ``event``, ``event_handler_id``, ``data``, ``ts``,
  ``auth[domain|member_id|application_token|client_endpoint|server_endpoint]`` always, plus
  ``access_token``, ``expires_in``, ``scope``, ``status`` for an application and ``refresh_token`` only on
  ONAPPINSTALL (api-reference/events/index.md, common/events/on-app-install.md, on-app-uninstall.md).
  ``application_token`` is the proof that the request comes from the portal (events/safe-event-handlers.md).
* a placement (widget) frame: ``DOMAIN``, ``PROTOCOL``, ``LANG``, ``APP_SID`` in the query string;
  ``AUTH_ID``, ``AUTH_EXPIRES``, ``REFRESH_ID``, ``SERVER_ENDPOINT``, ``APPLICATION_TOKEN``,
  ``APPLICATION_SCOPE``, ``member_id``, ``status``, ``PLACEMENT``, ``PLACEMENT_OPTIONS`` (a JSON string,
  ``ID`` of the CRM item for detail tabs) in the form body (widgets/_includes/widget_data.md).

amoCRM (amocrm.ru/developers: oauth/step-by-step.md, oauth/disposable-tokens.md, crm_platform/webhooks-format.md):

* the redirect URI gets ``code``, ``referer`` (the account's host), ``state``, ``from_widget``,
  ``platform``; a refusal comes as ``error=access_denied``;
* the disconnect hook: ``client_uuid``, ``account_id``, ``signature`` = hex HMAC-SHA256 of
  ``"{client_id}|{account_id}"`` with the client secret;
* ``$authorizedAjax`` sends ``X-Auth-Token``: a JWT, HS256 with the integration's secret, claims ``iss``,
  ``aud``, ``jti``, ``iat``, ``nbf``, ``exp``, ``account_id``, ``user_id``, ``client_uuid`` (+ ``subdomain``);
* account webhooks: form-encoded ``{entity}[{action}][{i}][id]`` with ``account[id]``, ``account[subdomain]``;
  contacts and companies both arrive under ``contacts`` with ``[type]``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping
from urllib.parse import parse_qsl

import jwt

WIDGET_CLAIMS = ("iss", "aud", "jti", "iat", "nbf", "exp", "account_id", "user_id", "client_uuid")
AMOCRM_DOMAINS = ("amocrm.ru", "amocrm.com", "kommo.com")
_KEY = re.compile(r"\[([^\[\]]*)\]")
_HOST = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")


class Refused(ValueError):
    """A request that must be refused; ``str()`` is a one-line reason without any secret."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # a stable code for counters and tests ("forged", "expired", ...)


# -- shared helpers ---------------------------------------------------------------------------------

def unflatten(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict:
    """PHP-style form keys to nested dicts: ``auth[member_id]=x`` -> ``{"auth": {"member_id": "x"}}``.

    Lists stay dicts keyed by their index strings (``{"0": {...}}``), as amoCRM documents its arrays.
    """
    out: dict = {}
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    for key, value in items:
        head, _, rest = str(key).partition("[")
        path = [head] + (_KEY.findall("[" + rest) if rest else [])
        node = out
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if last:
                if not isinstance(node.get(part), dict):
                    node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
    return out


def same_secret(given: object, expected: str | None) -> bool:
    """Constant-time comparison of a received token with the stored one (either missing: False)."""
    if not isinstance(given, str) or not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


# -- Bitrix24 ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PortalAuth:
    """The ``auth`` block of a Bitrix24 event (tokens only when the portal sent them)."""

    domain: str
    member_id: str
    application_token: str
    client_endpoint: str
    server_endpoint: str
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_in: int | None = None
    scope: tuple[str, ...] = ()
    status: str | None = None


@dataclass(frozen=True)
class Bitrix24Event:
    event: str                    # upper case, e.g. "ONCRMCONTACTUPDATE"
    handler_id: int | None        # event_handler_id (absent on the installation callback)
    ts: int
    data: dict
    auth: PortalAuth

    @property
    def entity_id(self) -> int | None:
        """``data[FIELDS][ID]`` of a CRM event."""
        fields = self.data.get("FIELDS") if isinstance(self.data, dict) else None
        return _int(fields.get("ID")) if isinstance(fields, dict) else None


def check_application_token(given: object, expected: str | None) -> None:
    """Refuse unless ``given`` is the application token stored at installation (constant time)."""
    if not isinstance(given, str) or not given:
        raise Refused("missing_token", "no application token in the request: it did not come from the portal")
    if not expected:
        raise Refused("unknown_portal", "this portal has no stored application token: install the application first")
    if not same_secret(given, expected):
        raise Refused("forged", "the application token does not match this portal's installation")


def parse_bitrix24_event(form: Mapping[str, str] | Iterable[tuple[str, str]], *, need_tokens: bool = False) -> Bitrix24Event:
    """An event (or the installation callback) POSTed by a portal; ``need_tokens`` for ONAPPINSTALL."""
    body = unflatten(form)
    event = body.get("event")
    if not isinstance(event, str) or not event.strip():
        raise Refused("malformed", "the request has no 'event': it is not a Bitrix24 event")
    auth = body.get("auth")
    if not isinstance(auth, dict):
        raise Refused("malformed", f"the {event.upper()} request has no auth block")
    for key in ("domain", "member_id", "application_token"):
        if not isinstance(auth.get(key), str) or not auth[key]:
            raise Refused("malformed", f"the {event.upper()} request lacks auth[{key}]")
    if need_tokens and not (auth.get("access_token") and auth.get("refresh_token")):
        raise Refused("malformed", f"the {event.upper()} request carries no access and refresh tokens")
    ts = _int(body.get("ts"))
    if ts is None:
        raise Refused("malformed", f"the {event.upper()} request has no valid 'ts'")
    data = body.get("data")
    scope = tuple(s for s in re.split(r"[,\s]+", str(auth.get("scope") or "")) if s)
    return Bitrix24Event(
        event=event.strip().upper(), handler_id=_int(body.get("event_handler_id")), ts=ts,
        data=data if isinstance(data, dict) else {},
        auth=PortalAuth(domain=auth["domain"], member_id=auth["member_id"], application_token=auth["application_token"],
                        client_endpoint=str(auth.get("client_endpoint") or ""),
                        server_endpoint=str(auth.get("server_endpoint") or ""),
                        access_token=auth.get("access_token") or None, refresh_token=auth.get("refresh_token") or None,
                        expires_in=_int(auth.get("expires_in")), scope=scope, status=auth.get("status") or None))


@dataclass(frozen=True)
class PlacementOpen:
    """What a portal POSTs into a widget frame (a CRM card tab, or the app's page when ``DEFAULT``)."""

    domain: str
    member_id: str
    application_token: str
    placement: str
    options: dict
    lang: str
    protocol: int
    app_sid: str | None
    status: str | None
    scope: tuple[str, ...]
    auth_id: str | None = field(default=None, repr=False)
    refresh_id: str | None = field(default=None, repr=False)
    auth_expires: int | None = None
    server_endpoint: str | None = None

    @property
    def entity_id(self) -> int | None:
        """``PLACEMENT_OPTIONS.ID``: the CRM item whose card holds the tab."""
        return _int(self.options.get("ID"))


def parse_placement(form: Mapping[str, str], query: Mapping[str, str] | None = None) -> PlacementOpen:
    """The frame POST: form body plus the query string (``DOMAIN``, ``PROTOCOL``, ``LANG``, ``APP_SID``)."""
    query = query or {}
    merged = {**{k: v for k, v in query.items()}, **{k: v for k, v in form.items()}}
    for key in ("member_id", "APPLICATION_TOKEN", "PLACEMENT", "DOMAIN"):
        if not isinstance(merged.get(key), str) or not merged[key]:
            raise Refused("malformed", f"the placement request lacks {key}: it did not come from a Bitrix24 portal")
    raw = merged.get("PLACEMENT_OPTIONS") or "{}"
    try:
        options = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        raise Refused("malformed", "PLACEMENT_OPTIONS is not a JSON object") from None
    if not isinstance(options, dict):
        raise Refused("malformed", "PLACEMENT_OPTIONS is not a JSON object")
    protocol = _int(merged.get("PROTOCOL"))
    return PlacementOpen(
        domain=merged["DOMAIN"], member_id=merged["member_id"], application_token=merged["APPLICATION_TOKEN"],
        placement=merged["PLACEMENT"].upper(), options=options, lang=str(merged.get("LANG") or "ru"),
        protocol=protocol if protocol in (0, 1) else 1, app_sid=merged.get("APP_SID"), status=merged.get("status"),
        scope=tuple(s for s in str(merged.get("APPLICATION_SCOPE") or "").split(",") if s),
        auth_id=merged.get("AUTH_ID") or None, refresh_id=merged.get("REFRESH_ID") or None,
        auth_expires=_int(merged.get("AUTH_EXPIRES")), server_endpoint=merged.get("SERVER_ENDPOINT"))


# -- amoCRM ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WidgetClaims:
    account_id: int
    user_id: int
    client_uuid: str
    jti: str
    issuer: str
    audience: str
    issued_at: int
    expires_at: int
    subdomain: str | None = None


def verify_widget_token(token: object, *, secret: str, account_id: int, client_id: str | None = None,
                        audience: str | None = None, now: float | None = None, leeway: int = 30) -> WidgetClaims:
    """Check the one-time JWT that ``$authorizedAjax`` sends in ``X-Auth-Token``.

    Refuses: no token, not a JWT, another algorithm, a wrong signature (another secret), a missing claim,
    not yet valid, expired, another account, another integration (``client_id``), another audience.
    """
    if not isinstance(token, str) or not token.strip():
        raise Refused("missing_token", "no X-Auth-Token header: open the tab from the amoCRM card")
    if not secret:
        raise Refused("not_configured", "the amoCRM integration secret is not configured")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Refused("malformed", "the widget token is not a JWT") from None
    if header.get("alg") != "HS256":
        raise Refused("forged", "the widget token is not signed with HS256")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"],
                            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                     "verify_aud": False, "verify_iss": False})
    except jwt.InvalidSignatureError:
        raise Refused("forged", "the widget token is not signed with this integration's secret") from None
    except jwt.PyJWTError:
        raise Refused("malformed", "the widget token cannot be decoded") from None
    missing = [name for name in WIDGET_CLAIMS if claims.get(name) in (None, "")]
    if missing:
        raise Refused("malformed", f"the widget token lacks the claim(s) {', '.join(missing)}")
    times = {name: _int(claims[name]) for name in ("iat", "nbf", "exp")}
    if None in times.values() or _int(claims["account_id"]) is None or _int(claims["user_id"]) is None:
        raise Refused("malformed", "the widget token has a non-numeric time, account or user claim")
    moment = time.time() if now is None else now
    if times["exp"] <= moment - leeway:
        raise Refused("expired", "the widget token has expired: reload the amoCRM card")
    if times["nbf"] > moment + leeway:
        raise Refused("not_yet_valid", "the widget token is not valid yet: check the server clock")
    if _int(claims["account_id"]) != int(account_id):
        raise Refused("other_account", "the widget token belongs to another amoCRM account")
    if client_id is not None and not same_secret(str(claims["client_uuid"]), client_id):
        raise Refused("other_integration", "the widget token was issued to another integration")
    if audience is not None and str(claims["aud"]).rstrip("/") != audience.rstrip("/"):
        raise Refused("other_audience", "the widget token was issued for another address")
    return WidgetClaims(account_id=int(claims["account_id"]), user_id=int(claims["user_id"]),
                        client_uuid=str(claims["client_uuid"]), jti=str(claims["jti"]), issuer=str(claims["iss"]),
                        audience=str(claims["aud"]), issued_at=times["iat"], expires_at=times["exp"],
                        subdomain=claims.get("subdomain"))


@dataclass(frozen=True)
class AmoRedirect:
    code: str = field(repr=False)
    referer: str           # the account's host, e.g. "example.amocrm.ru"
    state: str | None
    from_widget: bool
    platform: int | None


def parse_oauth_redirect(query: Mapping[str, str], *, allowed_domains: Iterable[str] = AMOCRM_DOMAINS) -> AmoRedirect:
    """The redirect URI's query. ``referer`` must be a host under one of ``allowed_domains`` (the connector
    sends the code there: anything else would hand it to a stranger)."""
    if query.get("error"):
        raise Refused("declined", "the amoCRM user declined access to the integration")
    code = query.get("code")
    if not isinstance(code, str) or not code:
        raise Refused("malformed", "the redirect has no 'code': start the installation from amoCRM again")
    referer = str(query.get("referer") or "").strip().lower()
    host = referer.split(":", 1)[0]
    if not _HOST.match(host) or not any(host == d or host.endswith("." + d) for d in allowed_domains):
        raise Refused("bad_referer", "the redirect's 'referer' is not an amoCRM account address")
    return AmoRedirect(code=code, referer=referer, state=query.get("state"),
                       from_widget=bool(query.get("from_widget")) and query.get("from_widget") not in ("0", ""),
                       platform=_int(query.get("platform")))


def verify_disconnect(query: Mapping[str, str], *, client_id: str, secret: str) -> int:
    """The disconnect hook: returns the account id after checking ``client_uuid`` and ``signature``."""
    account = _int(query.get("account_id"))
    if account is None or not query.get("client_uuid") or not query.get("signature"):
        raise Refused("malformed", "the disconnect hook lacks account_id, client_uuid or signature")
    if not same_secret(query.get("client_uuid"), client_id):
        raise Refused("other_integration", "the disconnect hook is for another integration")
    expected = hmac.new(secret.encode(), f"{client_id}|{account}".encode(), hashlib.sha256).hexdigest()
    if not same_secret(str(query.get("signature")).lower(), expected):
        raise Refused("forged", "the disconnect hook's signature does not match this integration's secret")
    return account


@dataclass(frozen=True)
class AmoChange:
    entity: str   # "contact" | "company" | "lead" | ...
    action: str   # "add" | "update" | "delete" | "status" | "responsible" | ...
    id: int


@dataclass(frozen=True)
class AmoWebhook:
    account_id: int
    subdomain: str
    changes: tuple[AmoChange, ...]


def parse_amocrm_webhook(form: Mapping[str, str] | Iterable[tuple[str, str]]) -> AmoWebhook:
    """An account webhook: which records changed and how (the connector re-reads them through the API)."""
    body = unflatten(form)
    account = body.get("account") if isinstance(body.get("account"), dict) else {}
    account_id = _int(account.get("id"))
    if account_id is None or not account.get("subdomain"):
        raise Refused("malformed", "the webhook lacks account[id] or account[subdomain]")
    changes: list[AmoChange] = []
    for key, actions in body.items():
        if key == "account" or not isinstance(actions, dict):
            continue
        for action, items in actions.items():
            if not isinstance(items, dict):
                continue
            for index in sorted(items, key=lambda i: _int(i) if _int(i) is not None else 0):
                item = items[index]
                rid = _int(item.get("id")) if isinstance(item, dict) else None
                if rid is None:
                    raise Refused("malformed", f"the webhook's {key}[{action}][{index}] has no numeric id")
                entity = {"leads": "lead", "contacts": "contact", "companies": "company", "task": "task",
                          "customers": "customer"}.get(key, key)
                if key == "contacts" and item.get("type") == "company":
                    entity = "company"
                changes.append(AmoChange(entity, str(action), rid))
    return AmoWebhook(account_id=account_id, subdomain=str(account["subdomain"]), changes=tuple(changes))


def to_pairs(raw: bytes) -> list[tuple[str, str]]:
    """A form-encoded body as ordered pairs (blank values kept)."""
    return parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)


__all__ = ["AMOCRM_DOMAINS", "AmoChange", "AmoRedirect", "AmoWebhook", "Bitrix24Event", "PlacementOpen", "PortalAuth",
           "Refused", "WidgetClaims", "check_application_token", "parse_amocrm_webhook", "parse_bitrix24_event",
           "parse_oauth_redirect", "parse_placement", "same_secret", "to_pairs", "unflatten", "verify_disconnect",
           "verify_widget_token"]
