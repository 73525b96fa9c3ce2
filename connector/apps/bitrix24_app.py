"""The connector as a Bitrix24 application, on the many-portal web service (connector/portals_web.py).

==========================================  ===========================================================
POST /apps/bitrix24/install                 the installation callback (the ``ONAPPINSTALL`` body with
                                            ``auth[...]`` tokens): registers or re-activates the portal
                                            keyed by ``member_id``, then binds events, the card tab and
                                            the app's options, and queues the first sync; opened in the
                                            portal's frame (an app with an installation page: the frame
                                            form, ``AUTH_ID``/``REFRESH_ID``/``PLACEMENT=DEFAULT``) it does
                                            the same and answers a page calling ``BX24.installFinish()``
POST /apps/bitrix24/events/{portal}         the events the app binds: ``ONCRM{CONTACT,COMPANY,DEAL}
                                            {ADD,UPDATE,DELETE}`` (a debounced sync) and
                                            ``ONAPPUNINSTALL`` (tokens deleted, portal uninstalled)
POST /apps/bitrix24/placement               the "Lifecycle" tab of the contact (company) card
POST /apps/bitrix24/app                     the app's own page (its left-menu entry, ``PLACEMENT=DEFAULT``):
                                            the portal's dashboard signed in as the portal user who opened
                                            it (``user.current`` / ``user.admin`` asked with the frame's
                                            ``AUTH_ID``; connector/apps/app_session.py)
==========================================  ===========================================================

Trust: a first installation is believed only when the OAuth server (``LIFECYCLE_BITRIX24_OAUTH_URL``,
reached with one of the configured applications' client id and secret) renews the callback's refresh
token and names the same ``member_id``: made-up tokens, or tokens of an application not configured here,
are refused. Several applications (a local application per portal: connector/apps/b24_credentials.py)
are told apart the same way, since the callback does not name its application: the pairs are tried in
turn, the handler URL's ``?client_id=`` hint and the pair recorded for the portal first, up to the first
the OAuth server accepts; that pair is recorded in the portal's (encrypted) config and serves every later
token refresh of the portal. The renewed pair is stored
(the callback's pair is then spent) and the client endpoint is the OAuth server's, not the callback's.
A portal that is installed (not ``uninstalled``) also needs ``auth[application_token]`` equal to the stored
one (constant time) for every later callback, event and tab. Nothing is changed by a refused request, and
no answer or log line repeats a token.

The portal's registry name is ``b24-`` + 12 hex characters of SHA-256(member_id): a renamed domain keeps
its portal and its data.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from connector.apps import verify
from connector.apps.b24_credentials import ClientPair
from connector.apps.common import TOO_MANY_REFUSALS, REFUSAL_WINDOW, Installations, customer_page, \
    frame_headers, install_page, language, refusal_page
from connector.apps.settings import portal_name
from connector.dashboard.auth import client_address
from connector.http import BodyRefused, read_body, text

log = logging.getLogger("lifecycle.apps.bitrix24")

CRM_EVENTS = tuple(f"ONCRM{e}{a}" for e in ("CONTACT", "COMPANY", "DEAL") for a in ("ADD", "UPDATE", "DELETE"))
APP_EVENTS = (*CRM_EVENTS, "ONAPPUNINSTALL")
TAB_TITLES = {"ru": "Жизненный цикл", "en": "Lifecycle"}


def name_of(member_id: str) -> str:
    return portal_name("b24", member_id)


def tab_for(customer: str) -> str:
    return "CRM_COMPANY_DETAIL_TAB" if customer == "company" else "CRM_CONTACT_DETAIL_TAB"


class RestError(Exception):
    """A REST call of the app failed; the message carries the method and the portal's error code only."""


def rest(endpoint: str, method: str, token: str, params: dict[str, Any] | None = None) -> Any:
    """One REST call with the app's access token (JSON body; ``auth`` as the docs' OAuth calls pass it)."""
    try:
        answer = requests.post(f"{endpoint.rstrip('/')}/{method}", json={**(params or {}), "auth": token},
                               timeout=15)
    except requests.RequestException as exc:
        raise RestError(f"{method}: {type(exc).__name__}") from None
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if answer.status_code != 200 or not isinstance(body, dict) or "error" in body:
        code = body.get("error", f"HTTP {answer.status_code}") if isinstance(body, dict) else f"HTTP {answer.status_code}"
        raise RestError(f"{method}: {code}")
    return body.get("result")


class Bitrix24App:
    def __init__(self, inst: Installations):
        self.inst = inst
        self.settings = inst.settings
        self.settings.b24_credentials().stored = self.stored_pairs

    def stored_pairs(self) -> list[ClientPair]:
        """The pairs of ``lifecycle apps bitrix24 add-credentials`` (the registry, encrypted); none when the
        store cannot be read (logged: the other sources still serve)."""
        from connector.apps.b24_credentials import stored_pairs
        from connector.logs import safe_error

        try:
            return stored_pairs(self.inst.registry().engine)
        except Exception as exc:  # noqa: BLE001 - the environment's and the file's pairs still work
            log.error("the registry's Bitrix24 application pairs cannot be read: %s", safe_error(exc))
            return []

    def push_secrets(self) -> int:
        """Installed portals whose recorded client id the configured sources (environment, registry, apps file)
        now give with another secret get that secret, so their next token refresh works after an application's
        key was regenerated and only the apps file (or the environment) was edited. Run at the service's start;
        ``lifecycle apps bitrix24 add-credentials`` does the same at once. Returns the portals changed."""
        from connector.apps.settings import portals_by_client, update_portal_secrets

        pairs = self.settings.b24_credentials().pairs()
        if not pairs:
            return 0
        registry = self.inst.registry()
        users = portals_by_client(registry)
        changed = sum(update_portal_secrets(registry, p.client_id, p.client_secret, users)
                      for p in pairs if p.client_id in users)
        if changed:
            log.info("%d installed portal(s) now refresh with their application's current secret", changed)
        return changed

    # -- install ---------------------------------------------------------------------------------------

    def handler_url(self, path: str) -> str:
        return f"{self.settings.public_url}{path}"

    NOT_CONFIGURED = ("the Bitrix24 application is not configured: set LIFECYCLE_PUBLIC_URL and "
                      "LIFECYCLE_BITRIX24_CLIENT_ID/_CLIENT_SECRET, LIFECYCLE_BITRIX24_APPS_PATH or "
                      "`lifecycle apps bitrix24 add-credentials`")

    def configured(self) -> bool:
        return bool(self.settings.public_url and self.settings.b24_credentials().configured)

    def renew(self, pair: ClientPair, refresh_token: str) -> dict[str, Any] | None:
        """The OAuth server's fresh pair for ``refresh_token`` renewed with ``pair``; None when the server
        refuses it (another application's token, or a made-up one); ``Refused`` when it cannot answer."""
        try:
            answer = requests.get(self.settings.b24_oauth_url, timeout=15, params={
                "grant_type": "refresh_token", "client_id": pair.client_id,
                "client_secret": pair.client_secret, "refresh_token": refresh_token})
            body = answer.json()
        except (requests.RequestException, ValueError):
            raise verify.Refused("unverified", "the OAuth server could not confirm the installation's tokens") from None
        if answer.status_code >= 500:
            raise verify.Refused("unverified", f"the OAuth server answered HTTP {answer.status_code}: try again later")
        if answer.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
            return None
        return body

    def identify(self, name: str, member_id: str, refresh_token: str, hint: str | None) -> tuple[ClientPair, dict]:
        """Which configured application the installation's tokens belong to: the callback does not say, so
        the refresh token is renewed with each pair in turn (the hint from the handler URL's ``client_id``
        first, then the pair recorded for this portal, then the others) until the OAuth server accepts one;
        that answer must name ``member_id``. Only the right pair can succeed (the token is spent by it), so
        the first success ends the search. Returns (pair, the renewed tokens); raises ``Refused``."""
        recorded = None
        if self.inst.portal(name) is not None:
            try:
                recorded = self.inst.registry().load(name).crm.client_id
            except Exception:  # noqa: BLE001 - a config that no longer loads: try every pair
                recorded = None
        candidates = self.settings.b24_credentials().ordered([hint, recorded])
        if not candidates:
            raise verify.Refused("unknown_app", "no Bitrix24 application is configured yet: add this portal's "
                                                "client_id and client_secret (lifecycle apps bitrix24 "
                                                "add-credentials, or LIFECYCLE_BITRIX24_APPS_PATH)")
        for tries, pair in enumerate(candidates, 1):
            fresh = self.renew(pair, refresh_token)
            if fresh is None:
                continue
            if str(fresh.get("member_id") or "") != member_id:
                raise verify.Refused("forged", "the installation's tokens belong to another portal")
            log.info("portal %s: the installation's tokens are application %s's (%d of %d configured tried)",
                     name, pair.client_id, tries, len(candidates))
            return pair, fresh
        log.warning("Bitrix24 installation: none of the %d configured applications accepts the tokens",
                    len(candidates))
        raise verify.Refused("unknown_app", "the OAuth server accepts the installation's tokens for none of the "
                                            f"{len(candidates)} configured Bitrix24 applications: add this "
                                            "portal's local application (client_id and client_secret from its "
                                            "form) with `lifecycle apps bitrix24 add-credentials` or to "
                                            "LIFECYCLE_BITRIX24_APPS_PATH, then install or open it again")

    def crm_settings(self, endpoint: str, pair: ClientPair) -> dict[str, Any]:
        """The portal config's ``[crm]``: the client endpoint and the pair that serves this portal (every
        later token refresh of the portal uses it; the config is stored encrypted)."""
        return {"kind": "bitrix24", "client_endpoint": endpoint, "client_id": pair.client_id,
                "client_secret": pair.client_secret, "oauth_token_url": self.settings.b24_oauth_url}

    def admit(self, name: str, member_id: str, application_token: str | None, refresh_token: str, hint: str | None,
              *, endpoint: str | None = None, domain: str | None = None) -> tuple[bool, str, dict[str, Any]]:
        """What the installation callback and the installation page both check, then the registration: a known
        portal's application token; the application whose pair the OAuth server accepts for the refresh token
        (:meth:`identify`); the client endpoint the OAuth server names (``endpoint``: the callback's own, when
        it names none); with ``domain`` (a frame's ``DOMAIN``), that it is that endpoint's portal. Returns
        (the portal was known, the client endpoint, the renewed tokens); raises ``Refused``, writing nothing."""
        known = self.inst.portal(name)
        if known is not None and known.state != "uninstalled":
            stored = self.inst.registry().load(name).settings.daemon.bitrix24_application_token
            verify.check_application_token(application_token, stored.get_secret_value() if stored else None)
        client, fresh = self.identify(name, member_id, refresh_token, hint)
        endpoint = str(fresh.get("client_endpoint") or endpoint or "")
        if not endpoint.startswith(("http://", "https://")):
            raise verify.Refused("malformed", "the OAuth server named no client endpoint for the portal")
        if domain is not None and portal_address(endpoint) != domain.lower():
            raise verify.Refused("forged", "the frame's DOMAIN is not the portal the tokens belong to")
        expires = int(fresh.get("expires") or time.time() + int(fresh.get("expires_in") or 3600))
        self.inst.register(name, self.crm_settings(endpoint, client), {"bitrix24_application_token": application_token},
                           (fresh["access_token"], fresh["refresh_token"], expires))
        return known is not None, endpoint, fresh

    def install(self, pairs: list[tuple[str, str]], hint: str | None = None) -> tuple[int, str, str | None, str | None]:
        """(status, answer, portal, access token for the bindings); nothing is written on a refusal.
        ``hint``: the ``client_id`` query parameter of the handler URL (which application to try first)."""
        if not self.configured():
            return 503, self.NOT_CONFIGURED + "\n", None, None
        event = verify.parse_bitrix24_event(pairs, need_tokens=True)
        if event.event != "ONAPPINSTALL":
            raise verify.Refused("malformed", "the installation callback must carry event=ONAPPINSTALL")
        name = name_of(event.auth.member_id)
        known, _, fresh = self.admit(name, event.auth.member_id, event.auth.application_token,
                                     event.auth.refresh_token or "", hint, endpoint=event.auth.client_endpoint)
        log.info("portal %s: Bitrix24 application installed (%s)", name, "again" if known else "new")
        return 200, "installed\n", name, fresh["access_token"]

    def install_in_frame(self, form: dict[str, str], query: dict[str, str]) -> tuple[str, str, str, bool]:
        """The installation page opened in the portal's frame (an app with an installation wizard): the
        frame form instead of ``auth[...]``. The same checks as the callback (a known portal's application
        token; the OAuth server renews ``REFRESH_ID`` and names the same ``member_id``; ``DOMAIN`` is the
        portal those tokens belong to); then registers, binds and queues the first sync.
        Returns (portal, language, the portal's origin, bound): ``bound`` False when binding failed (the
        portal is registered; opening the page again retries); raises ``Refused``."""
        if not self.configured():
            raise verify.Refused("not_configured", self.NOT_CONFIGURED)
        opened = verify.parse_placement(form, query)
        if not opened.refresh_id:
            raise verify.Refused("missing_token", "the installation page was opened without REFRESH_ID")
        name = name_of(opened.member_id)
        known, endpoint, fresh = self.admit(name, opened.member_id, opened.application_token, opened.refresh_id,
                                            query.get("client_id"), domain=opened.domain)
        log.info("portal %s: Bitrix24 application installed from its installation page (%s)", name,
                 "again" if known else "new")
        try:
            added = self.bind(name, fresh["access_token"])
        except RestError as exc:
            log.error("portal %s: binding events and the tab failed: %s", name, exc)
            return name, language(opened.lang), _origin(endpoint), False
        log.info("portal %s: bound %d events and %d placements", name, added["events"], added["placements"])
        self.inst.defer_first_sync(name)
        return name, language(opened.lang), _origin(endpoint), True

    def bind(self, name: str, token: str) -> dict[str, int]:
        """Events, the card tab and the app's options; idempotent (reads back first, binds what is missing)."""
        config = self.inst.registry().load(name)
        endpoint = config.crm.client_endpoint
        handler = self.handler_url(f"/apps/bitrix24/events/{name}")
        bound = {(str(b.get("event", "")).upper(), b.get("handler")) for b in rest(endpoint, "event.get", token) or []}
        added = {"events": 0, "placements": 0}
        for event in APP_EVENTS:
            if (event, handler) not in bound:
                rest(endpoint, "event.bind", token, {"event": event, "handler": handler})
                added["events"] += 1
        tab = tab_for(config.crm.customer)
        tab_handler = self.handler_url("/apps/bitrix24/placement")
        placements = rest(endpoint, "placement.get", token) or []
        if not any(p.get("placement") == tab and p.get("handler") == tab_handler for p in placements):
            rest(endpoint, "placement.bind", token, {
                "PLACEMENT": tab, "HANDLER": tab_handler, "TITLE": TAB_TITLES["ru"],
                "LANG_ALL": {lang: {"TITLE": title} for lang, title in TAB_TITLES.items()}})
            added["placements"] += 1
        rest(endpoint, "app.option.set", token, {"options": {
            "lifecycle_portal": name, "lifecycle_url": self.settings.public_url, "customer": config.crm.customer}})
        return added

    def after_install(self, name: str, token: str) -> None:
        from connector.logs import safe_error

        try:
            added = self.bind(name, token)
            log.info("portal %s: bound %d events and %d placements", name, added["events"], added["placements"])
        except Exception as exc:  # noqa: BLE001 - logged; a second install callback binds what is missing
            log.error("portal %s: binding events and the tab failed: %s", name, safe_error(exc))
        self.inst.defer_first_sync(name)

    # -- events ----------------------------------------------------------------------------------------

    def authentic(self, member_id: str, token: str, portal: str | None = None) -> tuple[str, Any]:
        """(portal name, config) of an installed portal whose stored application token is ``token``."""
        name = name_of(member_id)
        if portal is not None and portal != name:
            raise verify.Refused("unknown_portal", "the event's member_id is not this receiver's portal")
        config = self.inst.config(name)
        if config is None or config.crm.kind != "bitrix24":
            raise verify.Refused("unknown_portal", "no installed portal has this member_id")
        stored = config.settings.daemon.bitrix24_application_token
        verify.check_application_token(token, stored.get_secret_value() if stored else None)
        return name, config

    # -- routes ----------------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        service = self.inst.service

        async def form_of(request: Request) -> list[tuple[str, str]]:
            return verify.to_pairs(await read_body(request))

        async def install(request: Request) -> Response:
            address = client_address(request)
            if self.inst.too_many_refusals(address, "bitrix24_install"):
                log.warning("Bitrix24 installation refused: too many refused from one address")
                return Response(TOO_MANY_REFUSALS + "\n", 429, media_type="text/plain; charset=utf-8",
                                headers={"Retry-After": str(int(REFUSAL_WINDOW))})
            try:
                pairs = await form_of(request)
                form = dict(pairs)
                if "event" not in form and "AUTH_ID" in form and "PLACEMENT" in form:
                    return await wizard(request, form)
                status, answer, name, token = await run_in_threadpool(self.install, pairs,
                                                                      request.query_params.get("client_id"))
            except BodyRefused as refused:
                self.inst.note_refusal(address, "bitrix24_install")
                return refused.response
            except verify.Refused as refused:
                log.warning("Bitrix24 installation refused: %s", refused.reason)
                if refused.reason != "not_configured":
                    self.inst.note_refusal(address, "bitrix24_install")
                return text(401 if refused.reason in ("forged", "missing_token", "unverified", "unknown_app") else 400,
                            f"{refused}\n")
            if name is None or token is None:
                return text(status, answer)
            return Response(answer, status, media_type="text/plain; charset=utf-8",
                            background=BackgroundTask(run_in_threadpool, self.after_install, name, token))

        async def wizard(request: Request, form: dict[str, str]) -> Response:
            query = dict(request.query_params)
            lang = language(query.get("LANG") or form.get("LANG") or "ru")
            try:
                name, lang, origin, bound = await run_in_threadpool(self.install_in_frame, form, query)
            except verify.Refused as refused:
                log.warning("Bitrix24 installation page refused: %s", refused.reason)
                if refused.reason != "not_configured":
                    self.inst.note_refusal(client_address(request), "bitrix24_install")
                status = 503 if refused.reason == "not_configured" else 403 if refused.reason in (
                    "forged", "missing_token", "unverified", "unknown_app") else 400
                return HTMLResponse(refusal_page(lang, str(refused)), status,
                                    headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})
            body, headers = install_page(self.settings, lang, origin, finished=bound)
            return HTMLResponse(body, 200 if bound else 502, headers=headers)

        async def events(request: Request) -> Response:
            try:
                event = verify.parse_bitrix24_event(await form_of(request))
                name, config = await run_in_threadpool(self.authentic, event.auth.member_id,
                                                       event.auth.application_token, request.path_params.get("portal"))
            except BodyRefused as refused:
                return refused.response
            except verify.Refused as refused:
                log.warning("Bitrix24 app event refused: %s", refused.reason)
                return text(404 if refused.reason == "unknown_portal" else
                            401 if refused.reason in ("forged", "missing_token") else 400, f"{refused}\n")
            if event.event == "ONAPPUNINSTALL":
                await run_in_threadpool(self.inst.uninstall, name)
                return text(200, "uninstalled\n")
            if event.event not in CRM_EVENTS or event.entity_id is None:
                service.count(name, "bitrix24_app", "malformed")
                return text(400, f"unsupported event; expected one of {', '.join(APP_EVENTS)}\n")
            service.count(name, "bitrix24_app", "accepted")
            service.count(name, "bitrix24_app", await service._defer(name, config))
            return text(200, "ok\n")

        async def frame(request: Request, main: bool) -> Response:
            lang = language(request.query_params.get("LANG"))
            try:
                form = dict(await form_of(request))
                opened = verify.parse_placement(form, dict(request.query_params))
                lang = language(opened.lang)
                name, config = await run_in_threadpool(self.authentic, opened.member_id, opened.application_token)
                origin = _origin(config.crm.client_endpoint)
                if portal_address(config.crm.client_endpoint) != opened.domain.lower():
                    raise verify.Refused("forged", "the frame's DOMAIN is not this portal's")
                if not posted_from(request.headers.get("origin"), origin):
                    raise verify.Refused("forged", "the frame was posted from another site, not from the portal's pages")
                if main:
                    user_id, admin = await run_in_threadpool(who_opened, config.crm.client_endpoint, opened.auth_id)
                elif opened.placement != tab_for(config.crm.customer) or opened.entity_id is None:
                    raise verify.Refused("malformed", "this tab shows the customer card's PLACEMENT_OPTIONS ID only")
            except BodyRefused as refused:
                return refused.response
            except verify.Refused as refused:
                log.warning("Bitrix24 frame refused: %s", refused.reason)
                status = 404 if refused.reason == "unknown_portal" else 403 if refused.reason in (
                    "forged", "missing_token") else 400
                return HTMLResponse(refusal_page(lang, str(refused)), status,
                                    headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})
            if main:
                dash = getattr(service, "dashboard", None)
                if dash is None:
                    return HTMLResponse(refusal_page(lang, "the dashboard is off: set LIFECYCLE_SECRET_KEY"), 503,
                                        headers=frame_headers([origin]))
                from connector.dashboard.web import open_app_session

                open_app_session(request.session, portal=name, user_id=user_id, admin=admin, lang=lang, origin=origin)
                user = dash.user(request)
                log.info("portal %s: app session opened for portal user %d (%s)", name, user_id,
                         "admin" if admin else "viewer")
                return await run_in_threadpool(dash.overview, request, user, name, config, dash.portals.store(name))
            status, body, headers = await run_in_threadpool(customer_page, self.inst, name, opened.entity_id, lang,
                                                            [origin])
            return HTMLResponse(body, status, headers=headers)

        async def placement(request: Request) -> Response:
            return await frame(request, main=False)

        async def app_page(request: Request) -> Response:
            return await frame(request, main=True)

        return [Route("/apps/bitrix24/install", install, methods=["POST"]),
                Route("/apps/bitrix24/events/{portal}", events, methods=["POST"]),
                Route("/apps/bitrix24/events", events, methods=["POST"]),
                Route("/apps/bitrix24/placement", placement, methods=["POST"]),
                Route("/apps/bitrix24/app", app_page, methods=["POST"],
                      middleware=getattr(service, "dashboard_middleware", None) or None)]


def _origin(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def posted_from(sent: str | None, portal_origin: str) -> bool:
    """Login CSRF: the portal posts its frames from its own pages, so a browser's ``Origin`` must be the
    portal's. Another site's page that auto-posts a genuine frame's form (someone's AUTH_ID and
    APPLICATION_TOKEN) would otherwise sign the visitor into that user's session. No ``Origin`` (not a
    browser) or ``null`` (a no-referrer policy serialises it so) is let through: the form's own checks
    still apply."""
    if not sent or sent.strip().lower() == "null":
        return True
    return sent.strip().rstrip("/").lower() == portal_origin.lower()


def portal_address(endpoint: str) -> str:
    """The portal's address as a frame's ``DOMAIN`` names it: the client endpoint's host (and any path before
    ``/rest/``, as a sandbox serving several portals under ``/p/{i}`` has), lower case."""
    parts = urlsplit(endpoint)
    prefix = parts.path.rstrip("/")
    prefix = prefix[: -len("/rest")] if prefix.endswith("/rest") else prefix
    return (parts.netloc + prefix).lower()


def who_opened(endpoint: str, auth_id: str | None) -> tuple[int, bool]:
    """(user id, administrator?) of the portal user whose frame carries ``auth_id``, asked of the portal."""
    if not auth_id:
        raise verify.Refused("missing_token", "the frame carries no AUTH_ID: open the app from the portal")
    try:
        me = rest(endpoint, "user.current", auth_id)
        admin = rest(endpoint, "user.admin", auth_id) is True
    except RestError:
        raise verify.Refused("forged", "the portal did not confirm the user who opened the page") from None
    try:
        user_id = int(str(me.get("ID"))) if isinstance(me, dict) else 0
    except ValueError:
        user_id = 0
    if user_id <= 0:
        raise verify.Refused("forged", "the portal did not name the user who opened the page")
    return user_id, admin
