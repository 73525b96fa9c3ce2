"""OAuth 2.0 (authorization code + refresh rotation), the long-lived token, and Bearer checks.

Sources (shared/research/amocrm.md §1): developers.kommo.com/docs/oauth-20 and /reference/get-token
(``POST /oauth2/access_token`` with ``client_id, client_secret, grant_type, code|refresh_token,
redirect_uri``; JSON or form, amocrm/amocrm-api-php#150 "API принимает как application/json, так и
application/x-www-form-urlencoded"); answer ``token_type, expires_in, server_time, access_token,
refresh_token``. The code lives 20 minutes and is exchanged once; an access token lives 24 hours, a
refresh token 3 months; every refresh returns a NEW refresh token, and "the old refresh token will still
be functional ... until you use the new one" (network-error retry case). docs/long-lived-token: private
integrations get a token with a chosen lifetime (up to 5 years) and no refresh token.

The access token is a JWT (``exp``, ``api_domain``, ``account_id``, ``sub``, ``aud`` = client id, as clients
such as Krukov/amocrm_api and amocrm-sdk decode ``exp``). Choices where the docs are silent:

* Signed HS256 with a secret of this sandbox (amoCRM uses RS256 with its own key; no client verifies it).
* "Until you use the new one": the old refresh token dies the first time the new access token is
  accepted by the API or the new refresh token is accepted by the token endpoint. Retrying with the old
  one before that issues yet another pair (the earlier pair stays valid until it expires).
* Access tokens already issued stay valid after a refresh until they expire.
* Lifetimes run on the account clock (``--time-scale``), except the long-lived token's (5 wall years); ``exp`` and ``expires_in`` are wall-clock
  (``expires_in`` = 86400 / time_scale, rounded) so a client that trusts them acts at the right moment.
* Errors: bad client id/secret/redirect_uri -> 401 "Некорректный клиент" (issue #150); a used, expired or
  unknown code -> 400 with ``hint`` "Authorization code has been revoked" / "... has expired" / "Cannot
  decrypt the authorization code"; a used or unknown refresh token -> 401 ``hint`` "Token has been
  revoked" (issue #123); missing fields or grant type -> 400.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass

from sandbox.bitrix24.clock import Clock

from .errors import bad_client, bad_oauth_request

CODE_LIFETIME = 20 * 60.0
ACCESS_LIFETIME = 86400.0
REFRESH_LIFETIME = 90 * 86400.0
LONG_LIVED_LIFETIME = 5 * 365 * 86400.0
API_DOMAIN = "api-b.amocrm.ru"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class Grant:
    expires: float              # account clock
    kind: str                   # "oauth" | "long_lived"
    parent_refresh: str | None  # the refresh token this pair replaced (revoked on first use)
    user_id: int | None = None  # whose token: None is the integration's user (Auth.user_id)


class Auth:
    def __init__(self, clock: Clock, *, account_id: int, user_id: int, subdomain: str,
                 redirect_uri: str = "https://example.com/amocrm/oauth"):
        self.clock = clock
        self.account_id = account_id
        self.user_id = user_id
        self.subdomain = subdomain
        self.client_id = str(uuid.uuid4())
        self.client_secret = secrets.token_urlsafe(48)
        self.redirect_uri = redirect_uri
        self._key = secrets.token_bytes(32)
        self.access: dict[str, Grant] = {}
        self.refresh: dict[str, Grant] = {}
        self.codes: dict[str, float] = {}
        self.refreshes = 0  # successful refresh_token grants
        now = clock.portal()
        long_until = now + LONG_LIVED_LIFETIME * clock.scale  # 5 wall-clock years whatever the time scale
        self.long_lived_token = self._jwt(long_until, "long_lived")
        self.access[self.long_lived_token] = Grant(long_until, "long_lived", None)
        self.initial_code = self.issue_code()
        self.initial = self._issue_pair(None)

    # -- issuing ---------------------------------------------------------------------------------

    def issue_long_lived(self, user_id: int) -> str:
        """A long-lived token another user of the account made in the integration's settings: the API then acts
        as that user (``updated_by``, ``created_by`` of events, ``current_user_id``)."""
        until = self.clock.portal() + LONG_LIVED_LIFETIME * self.clock.scale
        token = self._jwt(until, "long_lived", user_id)
        self.access[token] = Grant(until, "long_lived", None, user_id)
        return token

    def _jwt(self, expires_account: float, grant: str, user_id: int | None = None) -> str:
        now_real = self.clock.real()
        header = {"typ": "JWT", "alg": "HS256"}
        claims = {"aud": self.client_id, "jti": secrets.token_hex(20), "iat": int(now_real), "nbf": int(now_real),
                  "exp": int(self.clock.to_real(expires_account)), "sub": str(user_id or self.user_id), "grant_type": grant,
                  "account_id": self.account_id, "base_domain": "amocrm.ru", "version": 2,
                  "scopes": ["crm", "notifications"], "hash_uuid": str(uuid.uuid4()), "api_domain": API_DOMAIN}
        signing = _b64(json.dumps(header, separators=(",", ":")).encode()) + "." + _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._key, signing.encode(), hashlib.sha256).digest()
        return signing + "." + _b64(signature)

    def issue_code(self) -> str:
        code = "def50200" + secrets.token_hex(180)
        self.codes[code] = self.clock.portal() + CODE_LIFETIME
        return code

    def _issue_pair(self, parent_refresh: str | None) -> dict:
        now = self.clock.portal()
        access = self._jwt(now + ACCESS_LIFETIME, "")
        refresh = "def50200" + secrets.token_hex(200)
        self.access[access] = Grant(now + ACCESS_LIFETIME, "oauth", parent_refresh)
        self.refresh[refresh] = Grant(now + REFRESH_LIFETIME, "oauth", parent_refresh)
        return {"token_type": "Bearer", "expires_in": max(1, round(ACCESS_LIFETIME / self.clock.scale)),
                "server_time": int(self.clock.real()), "access_token": access, "refresh_token": refresh}

    # -- the token endpoint ----------------------------------------------------------------------

    def token_endpoint(self, params: dict) -> dict:
        """``POST /oauth2/access_token``; raises :class:`errors.OAuthError`."""
        grant_type = params.get("grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise bad_oauth_request("Check the `grant_type` parameter")
        for name in ("client_id", "client_secret", "redirect_uri"):
            if not params.get(name):
                raise bad_oauth_request(f"Check the `{name}` parameter")
        if (params.get("client_id") != self.client_id or params.get("client_secret") != self.client_secret
                or params.get("redirect_uri") != self.redirect_uri):
            raise bad_client()
        now = self.clock.portal()
        if grant_type == "authorization_code":
            code = params.get("code")
            if not code:
                raise bad_oauth_request("Check the `code` parameter")
            if code not in self.codes:
                raise bad_oauth_request("Cannot decrypt the authorization code" if not str(code).startswith("def502")
                                        else "Authorization code has been revoked")
            expires = self.codes.pop(code)
            self.codes[code] = float("-inf")  # single use: remembered as revoked
            if expires == float("-inf"):
                raise bad_oauth_request("Authorization code has been revoked")
            if expires <= now:
                raise bad_oauth_request("Authorization code has expired")
            return self._issue_pair(None)
        token = params.get("refresh_token")
        if not token:
            raise bad_oauth_request("Check the `refresh_token` parameter")
        grant = self.refresh.get(str(token))
        if grant is None:
            raise bad_oauth_request("Token has been revoked", status=401)
        if grant.expires <= now:
            raise bad_oauth_request("Token has expired", status=401)
        self._revoke_parent(grant)
        self.refreshes += 1
        return self._issue_pair(str(token))

    def _revoke_parent(self, grant: Grant) -> None:
        if grant.parent_refresh is not None:
            self.refresh.pop(grant.parent_refresh, None)
            grant.parent_refresh = None

    # -- API authorization -----------------------------------------------------------------------

    def check_bearer(self, header: str | None) -> bool:
        return self.user_of(header) is not None

    def user_of(self, header: str | None) -> int | None:
        """The user a valid ``Authorization: Bearer`` header acts as; None when it is missing or not valid."""
        if not header or not header.lower().startswith("bearer "):
            return None
        grant = self.access.get(header[7:].strip())
        if grant is None or grant.expires <= self.clock.portal():
            return None
        self._revoke_parent(grant)
        return grant.user_id or self.user_id

    def expire(self, token: str | None = None) -> int:
        """Expire one OAuth access token or all of them (the long-lived token is never touched)."""
        done = 0
        for value, grant in self.access.items():
            if grant.kind == "oauth" and (token is None or token == value) and grant.expires > float("-inf"):
                grant.expires = float("-inf")
                done += 1
        return done
