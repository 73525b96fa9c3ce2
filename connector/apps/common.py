"""What the Bitrix24 application and the amoCRM integration share: registering an installation in the portal
registry with its tokens, uninstalling (tokens deleted at once, data kept for the retention, then purged),
the customer page shown in the CRM's frame, and short-lived signed page addresses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import sqlalchemy as sa

from connector.apps.settings import AppSettings, portal_config
from connector.config import ConfigError

log = logging.getLogger("lifecycle.apps")
HTTP_TIMEOUT = 15.0
# Refused installation callbacks (Bitrix24 install, amoCRM OAuth redirect) per client address: each costs the
# service outbound OAuth requests (one per configured application pair), so a flood of forged ones would make
# the CRMs' OAuth servers limit this service's address and refuse genuine installs. Over the limit: 429.
REFUSALS_PER_ADDRESS = 20
REFUSAL_WINDOW = 600.0


class Installations:
    """Installations of the apps over the many-portal service's registry."""

    def __init__(self, service: Any, settings: AppSettings | None = None):
        from connector.dashboard.auth import LoginThrottle

        self.service = service
        self.settings = settings or AppSettings.from_env()
        self.refusals = LoginThrottle(REFUSALS_PER_ADDRESS, REFUSAL_WINDOW)
        for lang in TEXTS:  # compile the pages' templates and catalogues now, not on a portal's first request
            for template in ("app_customer.html", "app_install.html", "app_message.html"):
                _env(lang).get_template(template)

    def registry(self) -> Any:
        return self.service.workers.registry()

    def too_many_refusals(self, address: str, route: str) -> bool:
        """``address`` had :data:`REFUSALS_PER_ADDRESS` callbacks of ``route`` refused in the window."""
        return self.refusals.exhausted(address, route)

    def note_refusal(self, address: str, route: str) -> None:
        self.refusals.allow(address, route)

    def portal(self, name: str) -> Any | None:
        """The registry row (None when unknown or removed)."""
        try:
            return self.registry().get(name)
        except ConfigError:
            return None

    def config(self, name: str) -> Any | None:
        """The portal's loaded config, None unless it is installed (any state but uninstalled)."""
        portal = self.portal(name)
        if portal is None or portal.state == "uninstalled":
            return None
        return self.registry().load(name)

    def store(self, name: str) -> Any:
        """The portal's part of the store, on the registry's engine (one pool for every portal's pages)."""
        from connector.store import StateStore

        return StateStore(self.registry().engine, name)

    def register(self, name: str, crm: dict[str, Any], daemon: dict[str, Any], tokens: tuple[str, str, int]) -> Any:
        """Add or update the portal with a generated config; store the OAuth pair (encrypted by the registry's
        key); an uninstalled portal becomes active again, keeping its data."""
        from connector.store.tokens import Tokens

        import tomllib

        registry = self.registry()
        try:
            previous = tomllib.loads(registry.config_text(name))
        except (ConfigError, tomllib.TOMLDecodeError):  # a new portal (or one purged): the template
            previous = None
        text = portal_config(self.settings, crm, daemon, previous)
        registry.validate(name, text)  # a clear ConfigError before anything is written
        registry.add(name, text, replace=True)
        if registry.get(name).state == "uninstalled":
            registry.set_state(name, "active")
        registry.set_next_run(name, None)
        access, refresh, expires_at = tokens
        Tokens(registry.engine, name).save_oauth_token(access, refresh, expires_at)
        self.service.forget(name)
        return registry.get(name)

    def uninstall(self, name: str) -> None:
        """The app was removed from the CRM: state uninstalled, OAuth tokens deleted now, no sync runs (the
        worker drops them); the data stays ``retention_days`` (then the worker purges it)."""
        from connector.store.base import write_lock
        from connector.store.schema import oauth_tokens

        registry = self.registry()
        registry.set_state(name, "uninstalled")
        registry.set_next_run(name, None)
        with registry.engine.begin() as conn:
            write_lock(conn)
            conn.execute(sa.delete(oauth_tokens).where(oauth_tokens.c.portal == name))
        self.service.forget(name)
        log.info("portal %s: the application was uninstalled; tokens deleted, data kept %.0f days", name,
                 self.settings.retention_days)

    def defer_first_sync(self, name: str) -> None:
        try:
            self.service.workers.defer_sync(name, "install")
        except Exception as exc:  # noqa: BLE001 - the schedule catches up
            from connector.logs import safe_error

            log.error("portal %s: could not queue the first sync: %s", name, safe_error(exc))

    # -- signed page addresses ---------------------------------------------------------------------------

    def sign(self, payload: dict[str, Any], ttl: float = 300.0) -> str:
        if not self.settings.signing_key:
            raise ConfigError("no signing key: set LIFECYCLE_APPS_SIGNING_KEY (or the apps' client secrets)")
        body = base64.urlsafe_b64encode(json.dumps({**payload, "exp": int(time.time() + ttl)},
                                                   separators=(",", ":")).encode()).decode().rstrip("=")
        mac = hmac.new(self.settings.signing_key, body.encode(), hashlib.sha256).hexdigest()
        return f"{body}.{mac}"

    def unsign(self, token: str) -> dict[str, Any] | None:
        if not self.settings.signing_key or not isinstance(token, str) or "." not in token:
            return None
        body, _, mac = token.rpartition(".")
        expected = hmac.new(self.settings.signing_key, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(payload, dict) or int(payload.get("exp", 0)) < time.time():
            return None
        return payload


# -- the customer page in the CRM's frame ---------------------------------------------------------------

TEXTS = {
    "en": {"title": "Lifecycle", "missing": "This customer is not in the connector's data yet (the first sync may "
                                            "still be running).", "refused": "This page cannot be shown: {why}"},
    "ru": {"title": "Жизненный цикл", "missing": "Этого клиента пока нет в данных коннектора (возможно, первая "
                                                 "синхронизация ещё идёт).", "refused": "Страницу нельзя показать: {why}"},
}


def language(value: str | None) -> str:
    value = (value or "").lower()[:2]
    return "ru" if value in ("ru", "ua", "uk", "by", "be", "kz") else "en"


def frame_headers(ancestors: list[str]) -> dict[str, str]:
    return {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                       f"frame-ancestors {' '.join(ancestors)}"}


def customer_page(inst: Installations, name: str, customer_id: int, lang: str, ancestors: list[str]) -> tuple[int, str, dict]:
    """(status, html, headers) of the customer page for the CRM frame; 404 when the customer is not known."""
    from starlette.concurrency import run_in_threadpool  # noqa: F401 - callers run this in a thread

    from connector.dashboard import queries
    from connector.dashboard.labels import label

    config = inst.registry().load(name)
    store = inst.store(name)
    data = queries.customer(store, config, customer_id, lang)
    env = _env(lang)
    if data is None:
        body = env.get_template("app_message.html").render(lang=lang, title=TEXTS[lang]["title"],
                                                           message=TEXTS[lang]["missing"])
        return 404, body, frame_headers(ancestors)
    body = env.get_template("app_customer.html").render(
        lang=lang, data=data, config=config, title=TEXTS[lang]["title"],
        label=lambda s: label(s, lang, dict(config.settings.labels)))
    return 200, body, frame_headers(ancestors)


def install_page(settings: AppSettings, lang: str, origin: str | None, *, finished: bool) -> tuple[str, dict]:
    """The installation page in the portal's frame (an app with an installation wizard): loads the BX24 JS
    library (``LIFECYCLE_BITRIX24_JS_URL``) and, when the portal is registered and bound, calls
    ``BX24.installFinish()`` (settings/app-installation/installation-finish.md: "called only from the
    frontend, from the application setup page"); the inline script runs by its CSP nonce only."""
    import secrets
    from urllib.parse import urlsplit

    nonce = secrets.token_urlsafe(16)
    library = settings.b24_js_url
    parts = urlsplit(library)
    source = f"{parts.scheme}://{parts.netloc}" if parts.scheme else library
    env = _env(lang)
    body = env.get_template("app_install.html").render(lang=lang, library=library, nonce=nonce, finished=finished)
    ancestors = origin or "'none'"
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; script-src {source} 'nonce-{nonce}'; "
           f"frame-ancestors {ancestors}")
    return body, {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "Content-Security-Policy": csp}


def refusal_page(lang: str, why: str) -> str:
    return _env(lang).get_template("app_message.html").render(lang=lang, title=TEXTS[lang]["title"],
                                                              message=TEXTS[lang]["refused"].format(why=why))


_envs: dict[str, Any] = {}


def _env(lang: str) -> Any:
    if lang not in _envs:
        from jinja2 import Environment, PackageLoader, select_autoescape

        from connector.dashboard.i18n import translations

        env = Environment(loader=PackageLoader("connector.dashboard", "templates"), autoescape=select_autoescape(["html"]),
                          extensions=["jinja2.ext.i18n"])
        env.install_gettext_translations(translations(lang), newstyle=True)  # type: ignore[attr-defined]
        _envs[lang] = env
    return _envs[lang]


TOO_MANY_REFUSALS = (f"too many refused installation requests from this address: try again in "
                     f"{int(REFUSAL_WINDOW // 60)} minutes (check the application's client id and secret)")
TOO_MANY_REFUSALS_TEXT = {  # the same, for a person's browser (the amoCRM connection page)
    "en": TOO_MANY_REFUSALS,
    "ru": (f"слишком много отклонённых попыток установки с этого адреса: повторите через "
           f"{int(REFUSAL_WINDOW // 60)} минут (проверьте client id и секрет интеграции)"),
}
