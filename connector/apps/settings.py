"""What the app handlers (connector/apps/bitrix24_app.py, amocrm_app.py) need to know about the application
itself: read from the environment once, documented in docs/apps.md.

==================================  ===============================================================================
LIFECYCLE_PUBLIC_URL                 the connector's https address as the CRM and the users' browsers reach it
                                     (handlers given to the CRM are built from it)
LIFECYCLE_BITRIX24_CLIENT_ID         the application's ``client_id`` (Developer resources / Market version card)
LIFECYCLE_BITRIX24_CLIENT_SECRET     its ``client_secret`` (``_FILE`` variants work: connector/envfiles.py)
LIFECYCLE_BITRIX24_APPS_PATH         a TOML (or .json) file of more ``client_id``/``client_secret`` pairs: one per
                                     portal's local application (connector/apps/b24_credentials.py); re-read
                                     when it changes
LIFECYCLE_BITRIX24_OAUTH_URL         the OAuth server (default https://oauth.bitrix.info/oauth/token/)
LIFECYCLE_BITRIX24_JS_URL            the BX24 JS library the installation page loads (default
                                     https://api.bitrix24.com/api/v1/; tests point it at the sandbox's stand-in)
LIFECYCLE_AMOCRM_CLIENT_ID           the integration's id (``client_uuid`` of the widget's JWT)
LIFECYCLE_AMOCRM_CLIENT_SECRET       its secret key (signs the widget's JWT and the disconnect hook)
LIFECYCLE_AMOCRM_REDIRECT_URI        default ``<public URL>/apps/amocrm/oauth``
LIFECYCLE_AMOCRM_ACCOUNT_URLS        ``host=base_url,...``: where an account named by ``referer`` is reached
                                     (default ``https://<referer>``; tests point it at the sandbox)
LIFECYCLE_APPS_PORTAL_TEMPLATE       a TOML file whose settings every installed portal starts from (schedule,
                                     rules, ``[crm] customer``...); ``[crm]`` connection keys are set by the app
LIFECYCLE_APPS_RETENTION_DAYS        an uninstalled portal's data is purged after this many days (default 30)
LIFECYCLE_APPS_SIGNING_KEY           signs the short-lived page addresses (default: derived from the secrets above)
==================================  ===============================================================================
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.config import ConfigError

DEFAULT_B24_OAUTH = "https://oauth.bitrix.info/oauth/token/"
DEFAULT_B24_JS = "https://api.bitrix24.com/api/v1/"


def _env(name: str) -> str | None:
    value = next((v for k, v in os.environ.items() if k.upper() == name), None)
    return value.strip() if value and value.strip() else None


@dataclass(frozen=True)
class AppSettings:
    public_url: str | None = None
    b24_client_id: str | None = None
    b24_client_secret: str | None = field(default=None, repr=False)
    b24_apps: Any = field(default=None, repr=False, compare=False)  # Bitrix24Credentials (b24_credentials())
    b24_oauth_url: str = DEFAULT_B24_OAUTH
    b24_js_url: str = DEFAULT_B24_JS
    amo_client_id: str | None = None
    amo_client_secret: str | None = field(default=None, repr=False)
    amo_redirect_uri: str | None = None
    amo_accounts: dict[str, str] = field(default_factory=dict)
    template: dict[str, Any] = field(default_factory=dict)
    retention_days: float = 30.0
    signing_key: bytes = field(default=b"", repr=False)

    @classmethod
    def from_env(cls) -> AppSettings:
        from connector import logs
        from connector.envfiles import EnvFileError, expand_secret_files

        try:
            expand_secret_files()
        except EnvFileError as exc:
            raise ConfigError(str(exc)) from None
        public = _env("LIFECYCLE_PUBLIC_URL")
        if public and not public.startswith(("http://", "https://")):
            raise ConfigError("LIFECYCLE_PUBLIC_URL must look like https://lifecycle.example.com")
        public = public.rstrip("/") if public else None
        accounts: dict[str, str] = {}
        for item in (_env("LIFECYCLE_AMOCRM_ACCOUNT_URLS") or "").split(","):
            if item.strip():
                host, sep, url = item.partition("=")
                if not sep or not url.strip().startswith(("http://", "https://")):
                    raise ConfigError("LIFECYCLE_AMOCRM_ACCOUNT_URLS: write host=https://base,host2=https://base2")
                accounts[host.strip().lower()] = url.strip().rstrip("/")
        template: dict[str, Any] = {}
        if (path := _env("LIFECYCLE_APPS_PORTAL_TEMPLATE")):
            try:
                template = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"LIFECYCLE_APPS_PORTAL_TEMPLATE {path}: {type(exc).__name__}: fix the TOML file") from None
        retention = retention_days()
        secrets = [s for s in (_env("LIFECYCLE_BITRIX24_CLIENT_SECRET"), _env("LIFECYCLE_AMOCRM_CLIENT_SECRET"),
                               _env("LIFECYCLE_APPS_SIGNING_KEY")) if s]
        logs.register_secrets(secrets)
        signing = _env("LIFECYCLE_APPS_SIGNING_KEY") or "|".join(secrets)
        from connector.apps.b24_credentials import Bitrix24Credentials, ClientPair

        single_id, single_secret = _env("LIFECYCLE_BITRIX24_CLIENT_ID"), _env("LIFECYCLE_BITRIX24_CLIENT_SECRET")
        apps = Bitrix24Credentials(ClientPair(single_id, single_secret) if single_id and single_secret else None,
                                   _env("LIFECYCLE_BITRIX24_APPS_PATH"))
        redirect = _env("LIFECYCLE_AMOCRM_REDIRECT_URI") or (f"{public}/apps/amocrm/oauth" if public else None)
        return cls(public_url=public, b24_client_id=_env("LIFECYCLE_BITRIX24_CLIENT_ID"),
                   b24_client_secret=_env("LIFECYCLE_BITRIX24_CLIENT_SECRET"), b24_apps=apps,
                   b24_oauth_url=_env("LIFECYCLE_BITRIX24_OAUTH_URL") or DEFAULT_B24_OAUTH,
                   b24_js_url=_js_url(_env("LIFECYCLE_BITRIX24_JS_URL")),
                   amo_client_id=_env("LIFECYCLE_AMOCRM_CLIENT_ID"), amo_client_secret=_env("LIFECYCLE_AMOCRM_CLIENT_SECRET"),
                   amo_redirect_uri=redirect, amo_accounts=accounts, template=template, retention_days=retention,
                   signing_key=hashlib.sha256(b"lifecycle-apps|" + signing.encode()).digest() if signing else b"")

    def b24_credentials(self) -> Any:
        """The Bitrix24 application pairs this deployment serves (the single pair, then the apps file)."""
        if self.b24_apps is not None:
            return self.b24_apps
        from connector.apps.b24_credentials import Bitrix24Credentials, ClientPair

        single = (ClientPair(self.b24_client_id, self.b24_client_secret)
                  if self.b24_client_id and self.b24_client_secret else None)
        object.__setattr__(self, "b24_apps", Bitrix24Credentials(single))  # one object: the app sets its store
        return self.b24_apps

    def amo_base_url(self, referer: str) -> str:
        host = referer.strip().lower()
        return self.amo_accounts.get(host) or f"https://{host}"


def _js_url(value: str | None) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise ConfigError("LIFECYCLE_BITRIX24_JS_URL must be an http(s) address, e.g. https://api.bitrix24.com/api/v1/")
    return value or DEFAULT_B24_JS


def retention_days() -> float:
    """LIFECYCLE_APPS_RETENTION_DAYS (default 30): how long an uninstalled portal's data is kept."""
    try:
        return float(_env("LIFECYCLE_APPS_RETENTION_DAYS") or 30)
    except ValueError:
        raise ConfigError("LIFECYCLE_APPS_RETENTION_DAYS must be a number of days") from None


def portal_name(prefix: str, key: str) -> str:
    """A stable registry name for an installation: the CRM's own id (member_id, account id) hashed, so a
    renamed domain keeps its portal."""
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


# -- a portal's config as TOML -------------------------------------------------------------------------

def _value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    import datetime as dt

    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()  # TOML's own date and time literals
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise ConfigError(f"cannot write {type(v).__name__} into a portal config")


def _key(k: str) -> str:
    import json
    import re

    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the settings the app generates (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            tables.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{prefix}{_key(k)}"
        if isinstance(v, dict):
            out += f"\n[{name}]\n" + dump_toml(v, name + ".")
        else:
            for item in v:
                out += f"\n[[{name}]]\n" + dump_toml(item, name + ".")
    return out


def portal_config(settings: AppSettings, crm: dict[str, Any], daemon: dict[str, Any],
                  previous: dict[str, Any] | None = None) -> str:
    """The portal's config: its ``previous`` settings (a re-installation keeps what was set since), else the
    template's, with the app's ``[crm]`` connection and ``[daemon]`` receiver keys on top."""
    import copy

    data = copy.deepcopy(previous if previous is not None else settings.template)
    data["crm"] = {**data.get("crm", {}), **crm}
    data["daemon"] = {**data.get("daemon", {}), **daemon}
    return dump_toml(data)


def portals_by_client(registry: Any) -> dict[str, list[str]]:
    """Installed Bitrix24 portals by the client id their config records."""
    out: dict[str, list[str]] = {}
    for portal in registry.list():
        if portal.kind != "bitrix24":
            continue
        try:
            client_id = registry.load(portal.name).crm.client_id
        except Exception:  # noqa: BLE001 - a portal whose config no longer loads is listed by `portals list`
            continue
        if client_id:
            out.setdefault(client_id, []).append(portal.name)
    return out


def update_portal_secrets(registry: Any, client_id: str, secret: str, users: dict[str, list[str]] | None = None) -> int:
    """Installed portals recording ``client_id`` with another secret get the new one (their next refresh).
    ``users``: :func:`portals_by_client`, when the caller already has it."""
    changed = 0
    for name in (portals_by_client(registry) if users is None else users).get(client_id, []):
        data = tomllib.loads(registry.config_text(name))
        if data.get("crm", {}).get("client_secret") != secret:
            data["crm"]["client_secret"] = secret
            registry.add(name, dump_toml(data), replace=True)
            changed += 1
    return changed
