"""amoCRM OAuth 2.0 tokens, rotated and persisted so that no crash can lock the integration out.

Facts (shared/research/amocrm.md section 1): ``POST {account}/oauth2/access_token`` with
``grant_type=authorization_code`` (a code lives 20 minutes, single use) or ``refresh_token``; access tokens
live 24 h, refresh tokens 3 months; every refresh returns a NEW refresh token, and the old one keeps working
until the new pair is first used (the documented retry-after-a-network-error case).

So: the new pair is written to the state store (``oauth_tokens``, its own committed transaction) before the
new access token is used. A crash before that write leaves the old refresh token in the store, still valid
because the new pair was never used; a crash after it leaves the new pair. Either way the next run goes on.

Several clients of one account in a process (the pull, the write-back, the campaign actions) each hold an
``AmoOAuth``; before renewing, one first looks at the store: another may already have exchanged the
single-use authorization code or rotated the refresh token (using the stale one would revoke the pair).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

from adapters.amocrm.client import AmoError, TokenSource
from adapters.base import TokenStore

EARLY_SECONDS = 300  # refresh this long before the access token's end rather than wait for a 401
MAX_REFRESHES_PER_RUN = 5


class AmoOAuth(TokenSource):
    def __init__(self, store: TokenStore, *, base_url: str, client_id: str, client_secret: str, redirect_uri: str,
                 refresh_token: str | None = None, authorization_code: str | None = None, ca_file: str | None = None,
                 clock: Any = time.time):
        self.store = store
        self.url = base_url.rstrip("/") + "/oauth2/access_token"
        self.client_id, self.client_secret, self.redirect_uri = client_id, client_secret, redirect_uri
        self.authorization_code = authorization_code
        self.verify: Any = ca_file or True
        self.clock = clock
        saved = store.oauth_token()
        self.access_token: str | None = saved["access_token"] if saved else None
        self.expires_at: int = int(saved["expires_at"] or 0) if saved else 0
        self.refresh_token: str | None = saved["refresh_token"] if saved else refresh_token
        self.refreshes = 0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self.access_token and self.expires_at > self.clock() + EARLY_SECONDS:
                return self.access_token
            return self._renew()

    def refresh(self, rejected: str) -> str:
        with self._lock:
            if self.access_token and self.access_token != rejected:
                return self.access_token  # another thread already renewed it
            return self._renew(rejected)

    def _adopt_stored(self, rejected: str | None) -> bool:
        """Take a pair another client saved meanwhile; True when its access token can be used as is."""
        saved = self.store.oauth_token()
        if not saved:
            return False
        self.refresh_token = saved["refresh_token"]
        self.authorization_code = None  # a pair exists: the code has been exchanged
        stored_access, stored_expiry = saved["access_token"], int(saved["expires_at"] or 0)
        if stored_access and stored_access not in (rejected, self.access_token) and stored_expiry > self.clock() + EARLY_SECONDS:
            self.access_token, self.expires_at = stored_access, stored_expiry
            return True
        return False

    def _renew(self, rejected: str | None = None) -> str:
        if self._adopt_stored(rejected):
            return self.access_token  # type: ignore[return-value]
        self.refreshes += 1
        if self.refreshes > MAX_REFRESHES_PER_RUN:
            raise AmoError("amoCRM keeps refusing fresh access tokens: check that the integration is enabled")
        base = {"client_id": self.client_id, "client_secret": self.client_secret, "redirect_uri": self.redirect_uri}
        if self.refresh_token:
            grant = {"grant_type": "refresh_token", "refresh_token": self.refresh_token}
            what = "the refresh token"
        elif self.authorization_code:
            grant = {"grant_type": "authorization_code", "code": self.authorization_code}
            what = "the authorization code"
        else:
            raise AmoError(
                "amoCRM OAuth: no refresh token in the state store and no authorization_code in the config; "
                "install the integration and set [crm] authorization_code (LIFECYCLE_CRM__AUTHORIZATION_CODE) once"
            )
        try:
            response = requests.post(self.url, json={**base, **grant}, timeout=60, verify=self.verify)
        except requests.RequestException as exc:
            raise AmoError(f"amoCRM OAuth: token endpoint unreachable ({type(exc).__name__})") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
            detail = body.get("hint") or body.get("detail") or body.get("title") if isinstance(body, dict) else None
            raise AmoError(
                f"amoCRM OAuth: {what} was refused (HTTP {response.status_code}"
                + (f": {detail}" if detail else "")
                + "); re-authorise the integration and set a fresh authorization_code"
            )
        expires_at = int(body.get("server_time") or self.clock()) + int(body.get("expires_in", 86400))
        # Persist before use: this is the only copy of the new refresh token.
        self.store.save_oauth_token(body["access_token"], body["refresh_token"], expires_at)
        self.access_token, self.refresh_token, self.expires_at = body["access_token"], body["refresh_token"], expires_at
        self.authorization_code = None
        return self.access_token
