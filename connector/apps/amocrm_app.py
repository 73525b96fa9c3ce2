"""The connector as an amoCRM external integration, on the many-portal web service.

==========================================  ===========================================================
GET  /apps/amocrm/oauth                     the integration's redirect URI: exchanges ``code`` at the
                                            account named by ``referer`` (LIFECYCLE_AMOCRM_ACCOUNT_URLS
                                            maps it when it is not ``https://<referer>``), registers the
                                            account (``amo-`` + hash of its id), stores the tokens
                                            encrypted, subscribes the account's webhook
                                            (``POST /api/v4/webhooks``) and queues the first sync
GET  /apps/amocrm/disconnect                the disconnect hook (``client_uuid``, ``account_id``,
                                            ``signature`` = HMAC-SHA256 of ``client_id|account_id``):
                                            tokens deleted, portal uninstalled
POST /apps/amocrm/widget/session            the widget's ``$authorizedAjax``: checks the one-time JWT in
                                            ``X-Auth-Token`` and answers ``{"url": ...}``, a page address
                                            under the public URL valid for 5 minutes (CORS: the account's
                                            own origin)
GET  /apps/amocrm/page?t=...                that page: the customer in the account's language
==========================================  ===========================================================

The code exchange is what makes the redirect trustworthy: only amoCRM can hand out a code that this
integration's secret turns into tokens. Webhooks go to the per-portal receiver
``/webhooks/amocrm/<portal>/<secret>`` (connector/portals_web.py) with a random secret kept in the portal's
encrypted config.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from connector.apps import verify
from connector.apps.common import TOO_MANY_REFUSALS_TEXT, REFUSAL_WINDOW, Installations, customer_page, \
    language, refusal_page
from connector.apps.settings import portal_name
from connector.dashboard.auth import client_address

log = logging.getLogger("lifecycle.apps.amocrm")

WEBHOOK_EVENTS = ["add_contact", "update_contact", "delete_contact", "restore_contact",
                  "add_company", "update_company", "delete_company", "restore_company",
                  "add_lead", "update_lead", "delete_lead", "restore_lead", "status_lead"]
PAGE_TTL = 300.0
DONE = {"en": "The Lifecycle integration is connected: the first sync has been queued. You can close this page.",
        "ru": "Интеграция «Жизненный цикл» подключена: первая синхронизация поставлена в очередь. Страницу можно закрыть."}


def name_of(account_id: int) -> str:
    return portal_name("amo", str(int(account_id)))


def _origin_allowed(origin: str, subdomain: str | None) -> bool:
    parts = urlsplit(origin)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not subdomain:
        return False
    return any(host == f"{subdomain.lower()}.{d}" for d in verify.AMOCRM_DOMAINS)


class AmoApp:
    def __init__(self, inst: Installations):
        self.inst = inst
        self.settings = inst.settings

    def configured(self) -> bool:
        s = self.settings
        return bool(s.amo_client_id and s.amo_client_secret and s.amo_redirect_uri and s.public_url)

    # -- OAuth -----------------------------------------------------------------------------------------

    def connect(self, query: dict[str, str]) -> str:
        """Exchange the code, register the account, subscribe its webhook; returns the portal name."""
        redirect = verify.parse_oauth_redirect(query)
        base = self.settings.amo_base_url(redirect.referer)
        try:
            answer = requests.post(f"{base}/oauth2/access_token", timeout=15, json={
                "client_id": self.settings.amo_client_id, "client_secret": self.settings.amo_client_secret,
                "grant_type": "authorization_code", "code": redirect.code, "redirect_uri": self.settings.amo_redirect_uri})
            tokens = answer.json()
        except (requests.RequestException, ValueError):
            raise verify.Refused("unverified", "the amoCRM account could not be reached to exchange the code") from None
        if answer.status_code != 200 or not isinstance(tokens, dict) or not tokens.get("access_token"):
            raise verify.Refused("forged", "amoCRM did not accept the code for this integration: install it again")
        access = tokens["access_token"]
        try:
            account = requests.get(f"{base}/api/v4/account", timeout=15,
                                   headers={"Authorization": f"Bearer {access}"}).json()
            account_id = int(account["id"])
        except (requests.RequestException, ValueError, KeyError, TypeError):
            raise verify.Refused("unverified", "the amoCRM account did not say its id") from None
        name = name_of(account_id)
        previous = self.inst.config(name)
        secret = (previous.settings.daemon.amocrm_webhook_secret.get_secret_value()
                  if previous is not None and previous.settings.daemon.amocrm_webhook_secret else secrets.token_urlsafe(24))
        crm = {"kind": "amocrm", "base_url": base, "client_id": self.settings.amo_client_id,
               "client_secret": self.settings.amo_client_secret, "redirect_uri": self.settings.amo_redirect_uri}
        expires = int(time.time() + int(tokens.get("expires_in") or 86400))
        self.inst.register(name, crm, {"amocrm_webhook_secret": secret},
                           (access, str(tokens.get("refresh_token") or ""), expires))
        destination = f"{self.settings.public_url}/webhooks/amocrm/{name}/{secret}"
        try:
            hooked = requests.post(f"{base}/api/v4/webhooks", timeout=15, headers={"Authorization": f"Bearer {access}"},
                                   json={"destination": destination, "settings": WEBHOOK_EVENTS, "sort": 10})
            if hooked.status_code not in (200, 201):
                log.error("portal %s: amoCRM refused the webhook subscription (HTTP %s)", name, hooked.status_code)
        except requests.RequestException as exc:
            log.error("portal %s: webhook subscription failed: %s", name, type(exc).__name__)
        self.inst.defer_first_sync(name)
        log.info("portal %s: amoCRM integration connected", name)
        return name

    def disconnect(self, query: dict[str, str]) -> str:
        account = verify.verify_disconnect(query, client_id=self.settings.amo_client_id or "",
                                           secret=self.settings.amo_client_secret or "")
        name = name_of(account)
        if self.inst.config(name) is None:
            raise verify.Refused("unknown_portal", "no connected amoCRM account has this id")
        self.inst.uninstall(name)
        return name

    # -- the widget ------------------------------------------------------------------------------------

    def session(self, token: str | None, args: dict[str, str]) -> tuple[dict[str, Any], str]:
        """(answer, subdomain) for a valid widget JWT; Refused otherwise."""
        try:
            unverified = jwt.decode(token or "", options={"verify_signature": False})
            account_id = int(unverified.get("account_id"))
        except (jwt.PyJWTError, TypeError, ValueError):
            raise verify.Refused("malformed", "the widget token is not a JWT with an account_id") from None
        claims = verify.verify_widget_token(token, secret=self.settings.amo_client_secret or "", account_id=account_id,
                                            client_id=self.settings.amo_client_id)
        name = name_of(claims.account_id)
        config = self.inst.config(name)
        if config is None or config.crm.kind != "amocrm":
            raise verify.Refused("other_account", "this amoCRM account has not connected the integration")
        try:
            customer_id = int(args.get("id", ""))
        except ValueError:
            raise verify.Refused("malformed", "give the card's id (id=...)") from None
        entity = {"contacts": "contact", "companies": "company"}.get(args.get("entity") or "", args.get("entity"))
        if (entity or config.crm.customer) != config.crm.customer:
            raise verify.Refused("malformed", f"this tab shows {config.crm.customer} cards only")
        page = self.inst.sign({"portal": name, "id": customer_id, "lang": language(args.get("lang")),
                               "sub": claims.subdomain or ""}, ttl=PAGE_TTL)
        return {"url": f"{self.settings.public_url}/apps/amocrm/page?t={page}"}, claims.subdomain or ""

    # -- routes ----------------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        async def oauth(request: Request) -> Response:
            lang = language(request.headers.get("accept-language"))
            if not self.configured():
                return HTMLResponse(refusal_page(lang, "set LIFECYCLE_PUBLIC_URL, LIFECYCLE_AMOCRM_CLIENT_ID and "
                                                       "LIFECYCLE_AMOCRM_CLIENT_SECRET"), 503)
            address = client_address(request)
            if self.inst.too_many_refusals(address, "amocrm_oauth"):
                log.warning("amoCRM connection refused: too many refused from one address")
                return HTMLResponse(refusal_page(lang, TOO_MANY_REFUSALS_TEXT[lang]), 429,
                                    headers={"Cache-Control": "no-store", "Retry-After": str(int(REFUSAL_WINDOW))})
            try:
                await run_in_threadpool(self.connect, dict(request.query_params))
            except verify.Refused as refused:
                log.warning("amoCRM connection refused: %s", refused.reason)
                self.inst.note_refusal(address, "amocrm_oauth")
                return HTMLResponse(refusal_page(lang, str(refused)), 400 if refused.reason != "forged" else 401,
                                    headers={"Cache-Control": "no-store"})
            body = f'<!doctype html><meta charset="utf-8"><p id="message">{DONE[lang]}</p>'
            return HTMLResponse(body, 200, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

        async def disconnect(request: Request) -> Response:
            try:
                await run_in_threadpool(self.disconnect, dict(request.query_params))
            except verify.Refused as refused:
                log.warning("amoCRM disconnect hook refused: %s", refused.reason)
                return JSONResponse({"error": str(refused)}, 404 if refused.reason == "unknown_portal" else 401)
            return JSONResponse({"result": "uninstalled"})

        def cors(request: Request, subdomain: str | None) -> dict[str, str]:
            origin = request.headers.get("origin", "")
            if _origin_allowed(origin, subdomain):
                return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                        "Access-Control-Allow-Headers": "X-Auth-Token, X-Requested-With, Content-Type",
                        "Access-Control-Allow-Methods": "POST, GET, OPTIONS"}
            return {"Vary": "Origin"}

        async def preflight(request: Request) -> Response:
            origin = request.headers.get("origin", "")
            host = (urlsplit(origin).hostname or "").lower()
            sub = host.split(".", 1)[0] if any(host.endswith("." + d) for d in verify.AMOCRM_DOMAINS) else None
            return Response(status_code=204, headers={**cors(request, sub), "Access-Control-Max-Age": "600"})

        async def session(request: Request) -> Response:
            args = dict(request.query_params)
            if request.method == "POST" and request.headers.get("content-type", "").startswith(
                    "application/x-www-form-urlencoded"):
                from connector.http import BodyRefused, read_body

                try:
                    args.update(dict(verify.to_pairs(await read_body(request, limit=10_000))))
                except BodyRefused as refused:
                    return refused.response
            try:
                answer, sub = await run_in_threadpool(self.session, request.headers.get("x-auth-token"), args)
            except verify.Refused as refused:
                log.warning("amoCRM widget session refused: %s", refused.reason)
                return JSONResponse({"error": str(refused), "reason": refused.reason},
                                    403 if refused.reason == "other_account" else 401, headers={"Vary": "Origin"})
            return JSONResponse(answer, headers={**cors(request, sub), "Cache-Control": "no-store"})

        async def page(request: Request) -> Response:
            payload = self.inst.unsign(request.query_params.get("t", ""))
            lang = language(payload.get("lang") if payload else request.headers.get("accept-language"))
            if payload is None or self.inst.config(str(payload.get("portal"))) is None:
                return HTMLResponse(refusal_page(lang, "the address has expired: open the tab again"), 403,
                                    headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})
            sub = str(payload.get("sub") or "")
            ancestors = [f"https://{sub}.{d}" for d in verify.AMOCRM_DOMAINS] if sub else ["'none'"]
            status, body, headers = await run_in_threadpool(customer_page, self.inst, str(payload["portal"]),
                                                            int(payload["id"]), lang, ancestors)
            return HTMLResponse(body, status, headers=headers)

        return [Route("/apps/amocrm/oauth", oauth, methods=["GET"]),
                Route("/apps/amocrm/disconnect", disconnect, methods=["GET"]),
                Route("/apps/amocrm/widget/session", session, methods=["POST", "GET"]),
                Route("/apps/amocrm/widget/session", preflight, methods=["OPTIONS"]),
                Route("/apps/amocrm/page", page, methods=["GET"])]


__all__ = ["AmoApp", "WEBHOOK_EVENTS", "name_of"]
