"""Applications installed into the portal: the install callback, tokens, event and placement bindings,
app options, the events the portal SENDS, placement frames, and uninstall.

Sources (b24restdocs = apidocs.bitrix24.com, HEAD 5988ed1):

* settings/app-installation/local-apps/installation-callback.md: "immediately after adding a local
  application, Bitrix24 will automatically call this URL and send a POST request with OAuth 2.0
  authorization data, including access_token and refresh_token"; the handler reads ``$_POST['auth']``.
  The sandbox POSTs the ``ONAPPINSTALL`` body there (api-reference/common/events/on-app-install.md:
  ``event``, ``data[VERSION|ACTIVE|INSTALLED|LANGUAGE_ID]``, ``ts``, ``auth[domain|scope|access_token|
  refresh_token|expires_in|server_endpoint|status|client_endpoint|member_id|application_token]``).
  That the callback and the event are one request is what the docs' example implies (the handler finds
  ``auth`` in the POST); a second, different callback body is not documented. ``event_handler_id`` is added
  although on-app-install.md's example lacks it: events/index.md says "the set of top-level keys is the same
  for all events", and b24pysdk's ``OAuthEventData`` requires it.
* installation-master.md: an app with an "installation wizard" page is "not installed" (no events, widgets
  hidden) until ``BX24.installFinish()``; the wizard page, like any frame of the app, gets the frame form of
  api-reference/widgets/_includes/widget_data.md (``DOMAIN``, ``PROTOCOL``, ``LANG``, ``APP_SID`` in the
  query; ``AUTH_ID``, ``AUTH_EXPIRES``, ``REFRESH_ID``, ``SERVER_ENDPOINT``, ``APPLICATION_TOKEN``,
  ``APPLICATION_SCOPE``, ``member_id``, ``status``, ``PLACEMENT``, ``PLACEMENT_OPTIONS`` (a JSON string) in
  the body). The body is form-encoded: the docs' own Python example reads ``request.form``.
* api-reference/events/index.md: events are POSTed ``application/x-www-form-urlencoded`` with ``event``,
  ``event_handler_id``, ``data[FIELDS][ID]``, ``ts``, ``auth[access_token|expires_in|scope|domain|
  server_endpoint|status|client_endpoint|member_id|application_token]`` (no ``refresh_token`` except
  OnAppInstall); "No retries"; crm/contacts/events/on-crm-contact-*.md and the company/deal pages: the
  same shape for ONCRM{CONTACT,COMPANY,DEAL}{ADD,UPDATE,DELETE}. The docs' examples have no ``expires``
  and no ``user_id`` in ``auth``; b24pysdk (the official SDK) requires ``expires`` and reads ``user_id``
  when it parses an event, so the sandbox sends both (the acting user; ``expires`` = wall-clock epoch).
* api-reference/common/events/on-app-uninstall.md: ``data[LANGUAGE_ID|CLEAN]``, ``auth`` without tokens
  (``domain, server_endpoint, client_endpoint, member_id, application_token``); all API access is revoked.
* api-reference/events/event-{bind,get,unbind}.md: ``{"result":true}``; 400 ``ERROR_EVENT_NOT_FOUND``
  "Event not found"; ``event.get`` rows ``event, handler, auth_type (string), offline (int)``;
  ``event.unbind`` -> ``{"count": n}``. event.bind "works only in the context of application
  authorization" (local-webhooks.md); the error a webhook gets is not given for event.*: the sandbox uses
  placement.bind's documented 403 ``WRONG_AUTH_TYPE`` (INFERENCE).
* api-reference/widgets/placement-{bind,get,unbind}.md: ``PLACEMENT``*, ``HANDLER``*, ``TITLE``,
  ``DESCRIPTION``, ``GROUP_NAME``, ``LANG_ALL``, ``OPTIONS``, ``USER_ID``; ``ERROR_ARGUMENT`` "Argument
  'PLACEMENT' is null or empty" with ``argument`` (HTTP 200 for bind, 400 for unbind, as documented),
  ``ERROR_PLACEMENT_USER_MODE`` "User mode is not available" (200), 403 ``WRONG_AUTH_TYPE`` "Current
  authorization type is denied for this method Application context required"; placement.get rows
  ``placement, userId, handler, options, title, description, langAll``; unbind -> ``{"count": n}``.
* A second bind of the same handler: ``ERROR_CORE`` "Handler already binded" (not in the official docs;
  seen in several public integrations handling exactly that answer). HTTP 400 (UNCONFIRMED).
* api-reference/common/settings/app-option-{set,get}.md: ``options`` map -> true; 400
  ``ArgumentNullException`` "options is empty"; 400 ``AccessException`` "Application context required";
  get with ``option`` -> the value or null, without -> every option.
* common/users/user-admin.md: ``user.admin`` -> true/false. Tokens (install, events, frames) act for the
  user given (``user_id``, default 1 = the administrator), so ``user.current``/``user.admin`` with a frame's
  ``AUTH_ID`` tell who opened it.
* api-reference/common/system/app-info.md: ``ID, CODE, VERSION, STATUS, INSTALLED, PAYMENT_EXPIRED, DAYS,
  LANGUAGE_ID, LICENSE, LICENSE_TYPE, LICENSE_FAMILY``.

Delivery: a queue thread per portal POSTs the events in order after the REST answer (the portal's queue
server); the timeout is not documented (UNCONFIRMED; 5 s here, ``POST /_sandbox/apps/delivery``). Nothing
is retried. Every delivery is logged (``GET /_sandbox/apps/deliveries``).
"""

from __future__ import annotations

import html
import json
import math
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from sandbox.outbound import FORM, Outbox, send

from .auth import ACCESS_LIFETIME
from .decode import http_build_query, php_intval
from .errors import ApiError
from .records import apply_fields, create, delete
from .registry import Call, Result, method

if TYPE_CHECKING:
    from .portal import Portal

ENTITY_EVENTS = [f"ONCRM{e}{a}" for e in ("CONTACT", "COMPANY", "DEAL", "LEAD") for a in ("ADD", "UPDATE", "DELETE")]
KNOWN_EVENTS = set(ENTITY_EVENTS) | {"ONAPPINSTALL", "ONAPPUNINSTALL", "ONAPPUPDATE", "ONAPPTEST", "ONAPPPAYMENT",
                                     "ONUSERADD", "ONOFFLINEEVENT", "ONCRMDEALMOVETOCATEGORY"}
USER_MODE_PLACEMENTS = {"PAGE_BACKGROUND_WORKER"}
WRONG_AUTH = (403, "WRONG_AUTH_TYPE", "Current authorization type is denied for this method Application context required")
ADMIN_ID = 1  # the portal's administrator (store.ensure_user(1, name="Admin"))
USER_AGENT = "Bitrix24 Webhook Engine"  # as handlers log it (third-party logs; not in the docs)


@dataclass
class App:
    client_id: str
    client_secret: str
    application_token: str
    app_id: int
    handler: str | None = None        # installation callback / wizard URL
    main_url: str | None = None       # the app's page in the left menu (PLACEMENT=DEFAULT)
    scope: frozenset[str] | None = None
    version: str = "1"
    language: str = "ru"
    installed: bool = False
    uninstalled: bool = False
    events: list[dict] = field(default_factory=list)
    placements: list[dict] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict:
        return {"app_id": self.app_id, "client_id": self.client_id, "client_secret": self.client_secret,
                "application_token": self.application_token, "handler": self.handler, "main_url": self.main_url,
                "scope": sorted(self.scope - {"basic"}) if self.scope else None, "version": self.version,
                "installed": self.installed, "uninstalled": self.uninstalled,
                "events": [dict(e) for e in self.events], "placements": [dict(p) for p in self.placements],
                "options": dict(self.options)}


# A stand-in for the BX24 JS library (https://api.bitrix24.com/api/v1/) as far as an installation page uses it:
# ``BX24.init(cb)`` runs ``cb`` once the page is loaded, ``BX24.installFinish()`` tells the portal's window
# (the frame's parent: ``PROTOCOL``/``DOMAIN`` of the frame URL, with its ``APP_SID``) that the installation
# is finished; the real library talks to the portal by ``postMessage`` the same way. Calls are recorded
# in ``window.BX24.calls``.
BX24_JS = """(function () {
  var q = new URLSearchParams(window.location.search);
  var portal = (q.get("PROTOCOL") === "1" ? "https://" : "http://") + (q.get("DOMAIN") || "").split("/")[0];
  var calls = [];
  function send(method) { calls.push(method); window.parent.postMessage({method: method, app_sid: q.get("APP_SID")}, portal); }
  window.BX24 = {
    calls: calls,
    init: function (callback) {
      if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", function () { callback(); }); }
      else { callback(); }
    },
    installFinish: function () { send("installFinish"); },
    getLang: function () { return q.get("LANG"); },
    getDomain: function () { return q.get("DOMAIN"); }
  };
})();
"""


def _bad(text: str, status: int = 400) -> tuple[int, dict]:
    return status, {"error": "BAD_REQUEST", "error_description": text}


class Apps:
    def __init__(self, portal: "Portal"):
        self.portal = portal
        auth = portal.auth
        # the portal's pre-made OAuth app (the first-line JSON's client_id) counts as installed
        self.apps: dict[str, App] = {auth.client_id: App(auth.client_id, auth.client_secret, auth.application_token,
                                                           app_id=1, installed=True)}
        self.next_handler_id = 1
        self.timeout = 5.0
        self.deliveries: list[dict] = []
        self.outbox = Outbox("bitrix24-events")

    # -- helpers ---------------------------------------------------------------------------------

    def _auth_block(self, app: App, *, tokens: bool, refresh: bool = False, user_id: int = 1) -> dict:
        with self.portal.lock:
            return self._auth_block_locked(app, tokens=tokens, refresh=refresh, user_id=user_id)

    def _auth_block_locked(self, app: App, *, tokens: bool, refresh: bool, user_id: int) -> dict:
        ep = self.portal.endpoints()
        scope = ",".join(sorted((app.scope or frozenset({"crm"})) - {"basic"}))
        out: dict[str, Any] = {}
        if tokens:
            auth = self.portal.auth
            expires = str(int(auth.clock.to_real(auth.clock.portal() + ACCESS_LIFETIME)))
            expires_in = str(max(1, math.ceil(ACCESS_LIFETIME / auth.clock.scale)))  # wall seconds, as issue() gives
            if refresh:
                pair = auth.issue(app.client_id, user_id)
                out.update(access_token=pair["access_token"], expires=str(pair["expires"]),
                           expires_in=pair["expires_in"], scope=scope, user_id=str(user_id), refresh_token=pair["refresh_token"])
            else:
                out.update(access_token=auth.issue_access(app.client_id, user_id), expires=expires, expires_in=expires_in,
                           scope=scope, user_id=str(user_id))
        out.update(domain=ep["domain"], server_endpoint=ep["server_endpoint"])
        if tokens:
            out["status"] = "L"
        out.update(client_endpoint=ep["client_endpoint"], member_id=self.portal.auth.member_id,
                   application_token=app.application_token)
        return out

    def _log(self, kind: str, url: str, form: dict, result: dict, **extra: Any) -> dict:
        entry = {"kind": kind, "url": url, "form": form, "status": result["status"],
                 "error": result["error"], "response": result["response"][:2000], "elapsed": result.get("elapsed"),
                 "ts": int(self.portal.clock.real()), **extra}
        with self.portal.lock:
            entry = {"id": len(self.deliveries) + 1, **entry}
            self.deliveries.append(entry)
        return entry

    def _post(self, kind: str, url: str, form: dict, *, query: dict | None = None, agent: str = USER_AGENT,
              **extra: Any) -> tuple[dict, dict]:
        target = url + (("&" if "?" in url else "?") + urlencode(query) if query else "")
        result = send("POST", target, http_build_query(form).encode("ascii"),
                      headers={"Content-Type": FORM, "User-Agent": agent}, timeout=self.timeout)
        return self._log(kind, target, form, result, **extra), result

    def find(self, ref: Any) -> App | None:
        with self.portal.lock:
            for app in self.apps.values():
                if ref in (app.client_id, app.app_id, str(app.app_id)):
                    return app
        return None

    # -- events the portal sends -----------------------------------------------------------------

    def emit(self, event: str, record_id: int, user_id: int, *, tokens: bool = True) -> int:
        """Queue ``event`` for every installed app's online handlers (called under the portal lock).
        ``tokens=False``: the change came from an automation rule, workflow or agent, so ``auth`` carries no
        tokens (events/index.md)."""
        queued = 0
        for app in self.apps.values():
            if not app.installed or app.uninstalled:
                continue
            for binding in app.events:
                if binding["event"] != event or binding["offline"]:
                    continue
                form = {"event": event, "event_handler_id": str(binding["id"]),
                        "data": {"FIELDS": {"ID": str(record_id)}}, "ts": str(int(self.portal.clock.real())),
                        "auth": self._auth_block(app, tokens=tokens, user_id=user_id)}
                url = binding["handler"]
                self.outbox.put(lambda url=url, form=form, app=app: self._post(
                    "event", url, form, event=form["event"], client_id=app.client_id))
                queued += 1
        return queued

    # -- control routes --------------------------------------------------------------------------

    def control(self, verb: str, route: str, body: dict) -> tuple[int, Any]:
        try:
            return self._control(verb, route, body)
        except (ValueError, TypeError) as exc:  # e.g. "user_id": "five"
            return _bad(f"bad value in the request: {exc}")

    def _control(self, verb: str, route: str, body: dict) -> tuple[int, Any]:
        if route == "/apps" and verb == "GET":
            with self.portal.lock:
                return 200, {"apps": [a.describe() for a in self.apps.values()]}
        if route == "/apps/deliveries":
            if verb == "DELETE":
                with self.portal.lock:
                    self.deliveries.clear()
            with self.portal.lock:
                return 200, {"deliveries": list(self.deliveries), "pending": self.outbox.pending}
        if route == "/apps/delivery" and verb == "POST":
            if body.get("timeout") is not None:
                self.timeout = float(body["timeout"])
            return 200, {"timeout": self.timeout}
        if route == "/apps/drain" and verb == "POST":
            return 200, {"drained": self.outbox.drain(float(body.get("timeout", 30)))}
        if route == "/apps/install" and verb == "POST":
            return self.install(body)
        if route == "/apps/finish" and verb == "POST":
            return self.finish(body)
        if route == "/apps/uninstall" and verb == "POST":
            return self.uninstall(body)
        if route == "/apps/open" and verb == "POST":
            return self.open_frame(body)
        if route == "/apps/frame" and verb == "GET":
            return self.frame_page(body)
        if route == "/apps/bx24.js" and verb == "GET":
            return 200, BX24_JS.encode("utf-8")
        if route == "/records" and verb == "POST":
            return self.ui_edit(body)
        return 404, {"error": "NOT_FOUND", "error_description": f"no control route {verb} /_sandbox{route}"}

    def install(self, body: dict) -> tuple[int, Any]:
        """``{"handler": url, "scope": "crm,placement", "main_url": url, "mode": "callback"|"wizard",
        "language": "ru", "version": "1", "app": client_id (re-install), "client_id"/"client_secret": the
        credentials of an app registered before its installation (a Market app, or a local app whose form
        the connector was configured from)}``."""
        handler = body.get("handler")
        if not isinstance(handler, str) or not handler.startswith(("http://", "https://")):
            return _bad('give {"handler": "http://host/path"}: the installation callback URL')
        scope = body.get("scope", "crm,placement,user_brief")
        scopes = [s.strip() for s in (scope.split(",") if isinstance(scope, str) else scope or []) if s.strip()]
        mode = body.get("mode", "callback")
        if mode not in ("callback", "wizard"):
            return _bad('mode must be "callback" (an API-only app) or "wizard" (an installation page)')
        with self.portal.lock:
            app = self.find(body["app"]) if body.get("app") else None
            if body.get("app") and app is None:
                return _bad(f"no application {body['app']!r} in this portal")
            if app is None and body.get("client_id"):  # the app's credentials, given before its installation
                app = self.find(str(body["client_id"]))
            if app is None:
                client_id, secret = self.portal.auth.add_client(
                    frozenset(scopes), str(body["client_id"]) if body.get("client_id") else None,
                    str(body["client_secret"]) if body.get("client_secret") else None)
                app = App(client_id, secret, secrets.token_hex(16), app_id=len(self.apps) + 1)
                self.apps[client_id] = app
            else:
                self.portal.auth.client_scopes[app.client_id] = frozenset(scopes) | {"basic"}
            app.handler, app.main_url = handler, body.get("main_url") or app.main_url or handler
            app.scope = frozenset(scopes) | {"basic"}
            app.version, app.language = str(body.get("version", app.version)), str(body.get("language", app.language))
            app.uninstalled = False
            app.installed = mode == "callback"
        if mode == "wizard" and body.get("send") is False:  # the browser opens the page: apps/frame?install=1
            entry = None
        elif mode == "wizard":
            entry, _ = self._frame(app, handler, "DEFAULT", {}, user_id=int(body.get("user_id", 1)), kind="install")
        else:
            with self.portal.lock:  # "the set of top-level keys is the same for all events" (events/index.md)
                handler_id = self.next_handler_id
                self.next_handler_id += 1
            form = {"event": "ONAPPINSTALL", "event_handler_id": str(handler_id),
                    "data": {"VERSION": app.version, "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": app.language},
                    "ts": str(int(self.portal.clock.real())), "auth": self._auth_block(app, tokens=True, refresh=True,
                                                                                 user_id=int(body.get("user_id", 1)))}
            entry, _ = self._post("install", handler, form, event="ONAPPINSTALL", client_id=app.client_id)
        return 200, {**app.describe(), "member_id": self.portal.auth.member_id, "delivery": entry}

    def finish(self, body: dict) -> tuple[int, Any]:
        """What ``BX24.installFinish()`` in the wizard page does: the app counts as installed from now on."""
        app = self.find(body.get("app"))
        if app is None:
            return _bad('give {"app": client_id}')
        with self.portal.lock:
            app.installed = True
        return 200, app.describe()

    def uninstall(self, body: dict) -> tuple[int, Any]:
        """``{"app": client_id, "clean": 0|1}``: ONAPPUNINSTALL to the handlers bound for it; tokens revoked."""
        app = self.find(body.get("app"))
        if app is None or app.uninstalled:
            return _bad('give {"app": client_id} of an installed application')
        clean = 1 if body.get("clean") in (1, "1", True, "Y") else 0
        with self.portal.lock:
            targets = [b for b in app.events if b["event"] == "ONAPPUNINSTALL" and not b["offline"]]
            app.installed, app.uninstalled = False, True
            revoked = self.portal.auth.revoke_client(app.client_id)
            app.events, app.placements = [], []
            if clean:
                app.options = {}
        sent = []
        for binding in targets:
            form = {"event": "ONAPPUNINSTALL", "event_handler_id": str(binding["id"]),
                    "data": {"LANGUAGE_ID": app.language, "CLEAN": clean}, "ts": str(int(self.portal.clock.real())),
                    "auth": self._auth_block(app, tokens=False)}
            sent.append(self._post("uninstall", binding["handler"], form, event="ONAPPUNINSTALL",
                                   client_id=app.client_id)[0])
        return 200, {"app": app.client_id, "revoked_tokens": revoked, "deliveries": sent}

    def open_frame(self, body: dict) -> tuple[int, Any]:
        """``{"app": client_id, "placement": "CRM_CONTACT_DETAIL_TAB", "id": 5, "user_id": 1, "lang": "ru",
        "send": true, "install": false}``: what the portal's page POSTs into the widget frame (``DEFAULT`` = the
        app's page; ``install``: the installation page of an app with a wizard, shown until installFinish)."""
        app = self.find(body.get("app")) if body.get("app") else None
        placement = str(body.get("placement") or "DEFAULT").upper()
        install = body.get("install") not in (None, False, "", "0", 0)
        with self.portal.lock:
            candidates = [app] if app else [a for a in self.apps.values() if a.installed or install]
            handler, owner = None, None
            for each in candidates:
                if each.uninstalled or not (each.installed or install):
                    continue
                if install:
                    handler, owner, placement = each.handler, each, "DEFAULT"
                elif placement == "DEFAULT":
                    handler, owner = each.main_url, each
                else:
                    bound = [p for p in each.placements if p["placement"] == placement]
                    if body.get("handler"):
                        bound = [p for p in bound if p["handler"] == body["handler"]]
                    if bound:
                        handler, owner = bound[0]["handler"], each
                if handler:
                    break
        if handler is None or owner is None:
            return 404, {"error": "NOT_FOUND", "error_description": f"no installed application has {placement} bound"}
        options = {"ID": str(body["id"])} if body.get("id") is not None else {}
        if isinstance(body.get("options"), dict):
            options.update(body["options"])
        entry, result = self._frame(owner, handler, placement, options, user_id=int(body.get("user_id", 1)),
                                    lang=str(body.get("lang", owner.language)), send_it=body.get("send", True),
                                    kind="install" if install else "placement")
        out = {"url": entry["url"], "form": entry["form"], "app": owner.client_id,
               "sid": parse_qs(urlsplit(entry["url"]).query).get("APP_SID", [""])[0]}
        if result is not None:
            out.update(status=result["status"], error=result["error"], headers=result["headers"],
                       body=result["response"], delivery=entry["id"])
        return 200, out

    def frame_page(self, args: dict) -> tuple[int, Any]:
        """``GET /_sandbox/apps/frame?placement=CRM_CONTACT_DETAIL_TAB&id=5&user_id=1&lang=ru``: a portal page
        (text/html) that POSTs the frame form into an iframe, as the card's page does in a browser: the
        handler's framing headers (X-Frame-Options, CSP frame-ancestors) are enforced by the browser itself.
        ``install=1``: the installation page of a wizard app; the page listens for the frame's
        ``BX24.installFinish()`` (the stand-in library ``GET /_sandbox/apps/bx24.js`` posts it to this window)
        and then marks the app installed (``POST apps/finish``), showing ``#install-state`` = ``finished``."""
        status, opened = self.open_frame({**args, "send": False})
        if status != 200:
            return status, opened
        from urllib.parse import urlsplit

        target = urlsplit(opened["url"])
        listener = ('<p id="install-state">waiting</p><script>window.addEventListener("message", function (e) {'
                    f'if (e.origin !== {json.dumps(f"{target.scheme}://{target.netloc}")} || !e.data || '
                    f'e.data.method !== "installFinish" || e.data.app_sid !== {json.dumps(opened["sid"])}) return;'
                    'fetch("finish", {method: "POST", body: JSON.stringify({app: '
                    f'{json.dumps(opened["app"])}, sid: e.data.app_sid}})}}).then(function (r) {{'
                    'document.getElementById("install-state").textContent = r.ok ? "finished" : "failed"; });'
                    '});</script>') if args.get("install") not in (None, "", "0") else ""
        fields = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(str(v))}">'
                         for k, v in opened["form"].items())
        title = html.escape(f"{args.get('placement') or 'DEFAULT'} {args.get('id') or ''}".strip())
        page = (f'<!doctype html><html><head><meta charset="utf-8"><title>Sandbox portal: {title}</title></head>'
                f'<body><h1 id="portal-card">{title}</h1>'
                f'<form id="placement-form" method="POST" target="placement-frame" action="{html.escape(opened["url"])}">'
                f'{fields}</form><iframe name="placement-frame" id="placement-frame" title="{title}" '
                f'style="width:100%;height:900px;border:0"></iframe>{listener}'
                f'<script>document.getElementById("placement-form").submit();</script></body></html>')
        return 200, page.encode("utf-8")

    def _frame(self, app: App, handler: str, placement: str, options: dict, *, user_id: int, kind: str = "placement",
               lang: str | None = None, send_it: bool = True) -> tuple[dict, dict | None]:
        ep = self.portal.endpoints()
        with self.portal.lock:
            self.portal.store.ensure_user(user_id, self.portal.clock.real())
            pair = self.portal.auth.issue(app.client_id, user_id)
        query = {"DOMAIN": ep["domain"], "PROTOCOL": "1" if self.portal.tls else "0", "LANG": lang or app.language,
                 "APP_SID": secrets.token_hex(16)}
        form = {"AUTH_ID": pair["access_token"], "AUTH_EXPIRES": str(pair["expires_in"]),
                "REFRESH_ID": pair["refresh_token"], "SERVER_ENDPOINT": ep["server_endpoint"],
                "APPLICATION_TOKEN": app.application_token,
                "APPLICATION_SCOPE": ",".join(sorted((app.scope or frozenset()) - {"basic"})),
                "member_id": self.portal.auth.member_id, "status": "L", "PLACEMENT": placement,
                "PLACEMENT_OPTIONS": json.dumps(options, ensure_ascii=False)}
        url = handler + ("&" if "?" in handler else "?") + urlencode(query)
        if not send_it:
            return {"url": url, "form": form}, None
        entry, result = self._post(kind, handler, form, query=query, placement=placement, client_id=app.client_id,
                                   agent="Mozilla/5.0 (sandbox portal frame)")
        return entry, result

    def ui_edit(self, body: dict) -> tuple[int, Any]:
        """``{"entity": "contact", "action": "add|update|delete", "id": 5, "fields": {...}, "user_id": 1,
        "automation": false}``: a user changes a record in the portal's UI (the bound events go out as for a
        REST write); ``automation``: a robot or workflow did it (events without tokens)."""
        entity, action = body.get("entity"), body.get("action", "update")
        if entity not in ("contact", "company", "deal") or action not in ("add", "update", "delete"):
            return _bad("need entity (contact|company|deal) and action (add|update|delete)")
        fields = body.get("fields") or {}
        user_id = int(body.get("user_id", 1))
        portal = self.portal
        with portal.lock:
            table = portal.store.tables[entity]
            try:
                if action == "add":
                    record_id = create(portal.store, entity, fields, user_id=user_id, now=portal.clock.real())
                else:
                    record_id = php_intval(body.get("id"))
                    if record_id not in table.rows:
                        return 404, {"error": "NOT_FOUND", "error_description": f"no {entity} {record_id}"}
                    if action == "update":
                        table.rows[record_id] = apply_fields(portal.store, entity, table.rows[record_id], fields,
                                                             is_new=False, user_id=user_id, now=portal.clock.real())
                    else:
                        delete(portal.store, entity, record_id)
            except ApiError as exc:
                return exc.status, exc.body()
            queued = self.emit(f"ONCRM{entity.upper()}{action.upper()}", record_id, user_id,
                               tokens=not body.get("automation"))
        return 200, {"id": record_id, "events_queued": queued}


# -- REST methods (application context) ------------------------------------------------------------

def _app(call: Call, error: tuple[int, str, str] = WRONG_AUTH) -> App:
    app = call.portal.apps.apps.get(call.app) if call.app else None
    if app is None or app.uninstalled:
        raise ApiError(*error)
    return app


def _text(call: Call, *names: str) -> str:
    for name in names:
        value = call.params.get(name)
        if value not in (None, ""):
            return str(value)
    return ""


@method("event.bind")
def event_bind(call: Call) -> Result:
    app = _app(call)
    event = _text(call, "event").upper()
    handler = _text(call, "handler")
    if event not in KNOWN_EVENTS:
        raise ApiError(400, "ERROR_EVENT_NOT_FOUND", "Event not found")
    if not handler:
        raise ApiError(400, "ERROR_ARGUMENT", "Argument 'handler' is null or empty")  # UNCONFIRMED wording
    auth_type = str(php_intval(call.params.get("auth_type"))) if call.params.get("auth_type") not in (None, "") else "0"
    offline = 1 if _text(call, "event_type").lower() == "offline" else 0
    if call.user_id != ADMIN_ID and offline:
        raise ApiError(403, "ACCESS_DENIED", "Access denied! Offline events binding requires administrator access rights")
    if call.user_id != ADMIN_ID and auth_type not in ("0", str(call.user_id)):
        raise ApiError(403, "ACCESS_DENIED", "Access denied! Event binding with AUTH_TYPE requires administrator access rights")
    for binding in app.events:
        if (binding["event"], binding["handler"], binding["auth_type"], binding["offline"]) == (event, handler, auth_type, offline):
            raise ApiError(400, "ERROR_CORE", "Handler already binded")
    apps = call.portal.apps
    app.events.append({"id": apps.next_handler_id, "event": event, "handler": handler, "auth_type": auth_type,
                       "offline": offline})
    apps.next_handler_id += 1
    return Result(True)


@method("event.get")
def event_get(call: Call) -> Result:
    app = _app(call)
    return Result([{"event": b["event"], "handler": b["handler"], "auth_type": b["auth_type"], "offline": b["offline"]}
                   for b in app.events])


@method("event.unbind")
def event_unbind(call: Call) -> Result:
    app = _app(call)
    event, handler = _text(call, "event").upper(), _text(call, "handler")
    auth_type = call.params.get("auth_type")
    offline = 1 if _text(call, "event_type").lower() == "offline" else 0
    keep, count = [], 0
    for binding in app.events:
        match = (binding["event"] == event and binding["handler"] == handler and binding["offline"] == offline
                 and (auth_type is None or str(php_intval(auth_type)) == binding["auth_type"]))
        if match:
            count += 1
        else:
            keep.append(binding)
    app.events = keep
    return Result({"count": count})


@method("placement.bind")
def placement_bind(call: Call) -> Result:
    app = _app(call)
    if call.user_id != ADMIN_ID:  # "administrator" (placement-bind.md); the answer as placement-unbind.md gives it
        raise ApiError(403, "ACCESS_DENIED", "Access denied!")
    placement = _text(call, "PLACEMENT").upper()
    handler = _text(call, "HANDLER")
    for name, value in (("PLACEMENT", placement), ("HANDLER", handler)):
        if not value:
            raise ApiError(200, "ERROR_ARGUMENT", f"Argument '{name}' is null or empty", argument=name)
    user_id = php_intval(call.params.get("USER_ID"))
    if user_id and placement not in USER_MODE_PLACEMENTS:
        raise ApiError(200, "ERROR_PLACEMENT_USER_MODE", "User mode is not available")
    if any(p["placement"] == placement and p["handler"] == handler for p in app.placements):
        raise ApiError(400, "ERROR_CORE", "Handler already binded")
    lang_all = call.params.get("LANG_ALL")
    options = call.params.get("OPTIONS")
    title = _text(call, "TITLE")
    app.placements.append({
        "placement": placement, "userId": user_id, "handler": handler,
        "options": options if isinstance(options, dict) and options else [],
        "title": title, "description": _text(call, "DESCRIPTION"),
        "langAll": {lang: {"TITLE": str(v.get("TITLE", "")), "DESCRIPTION": str(v.get("DESCRIPTION", "")),
                           "GROUP_NAME": str(v.get("GROUP_NAME", ""))}
                    for lang, v in (lang_all.items() if isinstance(lang_all, dict) else []) if isinstance(v, dict)}})
    return Result(True)


@method("placement.get")
def placement_get(call: Call) -> Result:
    app = _app(call)
    return Result([dict(p) for p in app.placements])


@method("placement.unbind")
def placement_unbind(call: Call) -> Result:
    app = _app(call)
    if call.user_id != ADMIN_ID:
        raise ApiError(403, "ACCESS_DENIED", "Access denied!")
    placement = _text(call, "PLACEMENT").upper()
    if not placement:
        raise ApiError(400, "ERROR_ARGUMENT", "Argument 'PLACEMENT' is null or empty")
    handler = _text(call, "HANDLER")
    user_id = call.params.get("USER_ID")
    keep, count = [], 0
    for p in app.placements:
        if (p["placement"] == placement and (not handler or p["handler"] == handler)
                and (user_id in (None, "") or p["userId"] == php_intval(user_id))):
            count += 1
        else:
            keep.append(p)
    app.placements = keep
    return Result({"count": count})


_NO_APP = (400, "AccessException", "Application context required")


@method("app.option.set")
def app_option_set(call: Call) -> Result:
    app = _app(call, _NO_APP)
    if call.user_id != ADMIN_ID:
        raise ApiError(400, "AccessException", "Administrator authorization required")
    options = call.params.get("options")
    if not isinstance(options, dict) or not options:
        raise ApiError(400, "ArgumentNullException", "options is empty")
    app.options.update(options)
    return Result(True)


@method("app.option.get")
def app_option_get(call: Call) -> Result:
    app = _app(call, _NO_APP)
    name = call.params.get("option")
    if name not in (None, ""):
        return Result(app.options.get(str(name)))
    return Result(dict(app.options) if app.options else [])


@method("user.admin")
def user_admin(call: Call) -> Result:
    """common/users/user-admin.md: whether the current user may manage the app's settings (the sandbox's
    administrator is user 1; every other user is not an administrator)."""
    return Result(call.user_id == ADMIN_ID)


@method("app.info")
def app_info(call: Call) -> Result:
    app = _app(call)
    return Result({"ID": app.app_id, "CODE": app.client_id, "VERSION": php_intval(app.version) or 1, "STATUS": "L",
                   "INSTALLED": app.installed, "PAYMENT_EXPIRED": "N", "DAYS": None, "LANGUAGE_ID": app.language,
                   "LICENSE": "ru_project", "LICENSE_TYPE": "project", "LICENSE_FAMILY": "project"})
