"""Webhook and OAuth authorization, and the OAuth token endpoint.

Sources (b24restdocs): local-integrations/local-webhooks.md (``/rest/{user_id}/{code}/{method}``),
settings/how-to-call-rest-api/authorization.md and settings/oauth/index.md (``/rest/{method}`` with
``auth=ACCESS_TOKEN``), settings/oauth/auto-renewal.md (``/oauth/token/?grant_type=refresh_token&client_id=
..&client_secret=..&refresh_token=..``; response keys access_token, client_endpoint, domain, expires,
expires_in, member_id, refresh_token, scope, server_endpoint, status, user_id; a new refresh token on every
refresh — the old one stops working; access token lives one hour, refresh token 180 days),
settings/oauth/error-codes.md (``invalid_grant``, ``invalid_client``, ``invalid_request``),
_includes/system-errors.md (401 ``NO_AUTH_FOUND``, 401 ``expired_token``).
Lifetimes run on the portal clock; ``expires`` is reported as the wall-clock epoch of expiry and
``expires_in`` in wall seconds (3600 at time scale 1). HTTP status of OAuth-server errors is not documented;
the sandbox uses 400 (UNCONFIRMED). An access token stays valid after a refresh until it expires.
"""

from __future__ import annotations

import math
import secrets
import string
from dataclasses import dataclass

from .clock import Clock
from .errors import EXPIRED, NO_AUTH, err

ACCESS_LIFETIME = 3600.0
REFRESH_LIFETIME = 180 * 86400.0
SCOPE = "crm,task,user,user_brief,basic"


def _alnum(n: int) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


@dataclass
class Identity:
    key: str  # who the operating-time limit is counted for
    user_id: int
    via: str  # "webhook" | "oauth"
    scopes: frozenset[str] | None = None  # a webhook made with chosen scopes (POST /_sandbox/webhooks); None: all
    app: str | None = None  # the application (client_id) whose OAuth token made the call; None: a webhook


class Auth:
    def __init__(self, clock: Clock, *, user_id: int = 1):
        self.clock = clock
        self.user_id = user_id
        self.webhook_code = _alnum(16)
        self.scoped_webhooks: dict[str, frozenset[str]] = {}  # extra webhook code -> its scopes
        self.user_webhooks: dict[str, tuple[int, frozenset[str]]] = {}  # another user's webhook code -> user, scopes
        self.client_id = f"local.{secrets.token_hex(7)[:13]}.{secrets.randbelow(10**8):08d}"
        self.client_secret = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(50))
        self.member_id = secrets.token_hex(16)
        self.application_token = secrets.token_hex(16)
        self.access: dict[str, float] = {}   # token -> portal expiry
        self.refresh: dict[str, float] = {}  # token -> portal expiry
        self.refreshes = 0
        # every application of this portal (apps.py): client_id -> secret / granted scope; token -> client_id
        self.clients: dict[str, str] = {self.client_id: self.client_secret}
        self.client_scopes: dict[str, frozenset[str] | None] = {self.client_id: None}
        self.token_client: dict[str, str] = {}
        self.refresh_client: dict[str, str] = {}
        self.token_user: dict[str, int] = {}  # OAuth token -> the portal user it acts for (default: user_id)
        self.initial = self.issue()

    # -- calls -----------------------------------------------------------------------------------

    def webhook(self, user_id: str, code: str) -> Identity:
        if code in self.user_webhooks and user_id == str(self.user_webhooks[code][0]):
            other, scopes = self.user_webhooks[code]
            return Identity(f"webhook:{other}", other, "webhook", scopes)
        if user_id == str(self.user_id) and code in self.scoped_webhooks:
            return Identity(f"webhook:{self.user_id}", self.user_id, "webhook", self.scoped_webhooks[code])
        if user_id != str(self.user_id) or code != self.webhook_code:
            raise err(NO_AUTH)
        return Identity(f"webhook:{self.user_id}", self.user_id, "webhook")

    def add_webhook(self, scopes: list[str], user_id: int | None = None) -> str:
        """Another inbound webhook allowed only ``scopes`` (plus ``basic``); its code. ``user_id``: another
        user's webhook (local-webhooks.md: each user makes their own, ``/rest/{that user's id}/{code}/``;
        what it writes carries that user in MODIFY_BY_ID)."""
        code = _alnum(16)
        if user_id is not None and user_id != self.user_id:
            self.user_webhooks[code] = (int(user_id), frozenset(scopes) | {"basic"})
        else:
            self.scoped_webhooks[code] = frozenset(scopes) | {"basic"}
        return code

    def token(self, access_token: str | None) -> Identity:
        if not access_token or access_token not in self.access:
            raise err(NO_AUTH)
        if self.access[access_token] <= self.clock.portal():
            raise err(EXPIRED)
        client = self.token_client.get(access_token, self.client_id)
        user = self.token_user.get(access_token, self.user_id)
        return Identity(f"app:{client}", user, "oauth", self.client_scopes.get(client), client)

    def expire(self, access_token: str | None = None) -> int:
        """Make one (or every) access token expire now; returns how many."""
        now = self.clock.portal()
        targets = [access_token] if access_token else list(self.access)
        count = 0
        for token in targets:
            if token in self.access:
                self.access[token] = min(self.access[token], now)
                count += 1
        return count

    # -- applications (apps.py) -----------------------------------------------------------------

    def add_client(self, scopes: frozenset[str], client_id: str | None = None,
                   secret: str | None = None) -> tuple[str, str]:
        """A new application of this portal: (client_id, client_secret), its tokens limited to ``scopes``;
        ``client_id``/``secret``: credentials the developer form showed before the installation."""
        client_id = client_id or f"local.{secrets.token_hex(7)[:13]}.{secrets.randbelow(10**8):08d}"
        secret = secret or "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(50))
        self.clients[client_id] = secret
        self.client_scopes[client_id] = scopes | {"basic"}
        return client_id, secret

    def issue_access(self, client_id: str, user_id: int | None = None) -> str:
        """An access token alone (what an event handler gets in ``auth[access_token]``)."""
        access = _alnum(32)
        self.access[access] = self.clock.portal() + ACCESS_LIFETIME
        self.token_client[access] = client_id
        if user_id is not None:
            self.token_user[access] = user_id
        return access

    def revoke_client(self, client_id: str) -> int:
        """Every token of an application stops working at once (uninstall); returns how many."""
        gone = [t for t, c in self.token_client.items() if c == client_id]
        for token in gone:
            self.access.pop(token, None)
            self.token_user.pop(token, None)
            del self.token_client[token]
        dead = [t for t, c in self.refresh_client.items() if c == client_id]
        for token in dead:
            self.refresh.pop(token, None)
            del self.refresh_client[token]
        return len(gone) + len(dead)

    # -- tokens ----------------------------------------------------------------------------------

    def issue(self, client_id: str | None = None, user_id: int | None = None) -> dict:
        now = self.clock.portal()
        client = client_id or self.client_id
        access, refresh = _alnum(32), _alnum(32)
        self.access[access] = now + ACCESS_LIFETIME
        self.refresh[refresh] = now + REFRESH_LIFETIME
        self.token_client[access] = self.refresh_client[refresh] = client
        if user_id is not None:
            self.token_user[access] = user_id
        scopes = self.client_scopes.get(client)
        return {
            "access_token": access,
            "expires": int(self.clock.to_real(now + ACCESS_LIFETIME)),
            "expires_in": max(1, math.ceil(ACCESS_LIFETIME / self.clock.scale)),
            "scope": SCOPE if scopes is None else ",".join(sorted(scopes - {"basic"})),
            "status": "L",
            "member_id": self.member_id,
            "user_id": self.user_id if user_id is None else user_id,
            "refresh_token": refresh,
        }

    def token_endpoint(self, params: dict, endpoints: dict, *, known_elsewhere: bool = False) -> tuple[int, dict]:
        """``GET|POST /oauth/token/``; ``endpoints`` holds client_endpoint, server_endpoint, domain.

        A ``client_id`` no application has (``known_elsewhere``: another portal of a multi-portal server has
        it) answers HTTP 200 ``{"error": "wrong_client"}`` as b24pysdk, the official SDK, documents the
        OAuth server's answer (errors/oauth.py ``BitrixOauthWrongClient``: "OAuth app client_id is invalid",
        HTTP 200); a known one with another secret 400 ``invalid_client`` (the SDK: "Invalid OAuth
        client_secret"; error-codes.md); a valid pair with a refresh token issued to another application
        400 ``invalid_grant`` (UNCONFIRMED: not documented; the token is not spent by a refused request)."""
        grant = str(params.get("grant_type") or "")
        if grant != "refresh_token":
            return 400, {"error": "invalid_request",
                         "error_description": "grant_type must be refresh_token in the sandbox"}
        client = params.get("client_id")
        if isinstance(client, str) and client and client not in self.clients and not known_elsewhere:
            return 200, {"error": "wrong_client"}
        if not isinstance(client, str) or client not in self.clients or params.get("client_secret") != self.clients[client]:
            return 400, {"error": "invalid_client", "error_description": "Invalid client credentials"}
        refresh = str(params.get("refresh_token") or "")
        if self.refresh_client.get(refresh, self.client_id) != client:
            return 400, {"error": "invalid_grant", "error_description": "Invalid refresh token"}
        expiry = self.refresh.pop(refresh, None)
        self.refresh_client.pop(refresh, None)
        if expiry is None or expiry <= self.clock.portal():
            return 400, {"error": "invalid_grant", "error_description": "Invalid refresh token"}
        self.refreshes += 1
        body = self.issue(client)
        ordered = {"access_token": body["access_token"], "expires": body["expires"], "expires_in": body["expires_in"],
                   "scope": body["scope"], "domain": endpoints["domain"], "server_endpoint": endpoints["server_endpoint"],
                   "status": body["status"], "client_endpoint": endpoints["client_endpoint"],
                   "member_id": body["member_id"], "user_id": body["user_id"], "refresh_token": body["refresh_token"]}
        return 200, ordered
