"""The Bitrix24 application's main page as the portal's dashboard, signed in as the portal user who opened it.

``POST /apps/bitrix24/app`` (the left-menu entry, ``PLACEMENT=DEFAULT``) is checked as the card tab is
(``member_id`` of an installed portal, ``APPLICATION_TOKEN`` equal to its stored one, ``DOMAIN`` the portal's
address) and then asks the portal itself, with the frame's ``AUTH_ID``, who is looking: ``user.current``
(api-reference/user/user-current.md: "by making a REST request to the DOMAIN domain using data from
$_REQUEST and adding AUTH_ID ... you can determine which user opened the page") and ``user.admin``
(common/users/user-admin.md: whether that user may manage the application's settings). A token the portal
does not know is refused before any session exists.

It then opens an *app session* (connector/dashboard/web.py ``open_app_session``): the dashboard's signed
session cookie holding the portal, the user id, the role (``user.admin`` true: admin, with the settings;
else viewer) and the language (``LANG``, else Russian), expiring after an hour. Every dashboard page and
API call in that session is limited to its portal (another portal's pages answer 404), and its pages carry
``Content-Security-Policy: frame-ancestors <the portal's origin>`` and no ``X-Frame-Options``.

The cookie: ``SameSite=None; Secure; Partitioned`` when ``LIFECYCLE_PUBLIC_URL`` is https (a third-party
frame); over plain http browsers refuse ``SameSite=None`` without ``Secure``, so there it is ``Lax``: it
then works only when the portal and the connector are the same site (loopback tests).
"""

from __future__ import annotations

import threading
from typing import Any


class RegistryPortals:
    """The dashboard's view of the many-portal registry (every portal that is not uninstalled)."""

    def __init__(self, service: Any):
        self.service = service
        self._stores: dict[str, Any] = {}
        self._lock = threading.Lock()

    def registry(self) -> Any:
        return self.service.workers.registry()

    def configs(self) -> dict[str, Any]:
        out = {}
        for portal in self.registry().list():
            if portal.state != "uninstalled" and (config := self.service.config(portal.name)) is not None:
                out[portal.name] = config
        return out

    def config(self, portal: str) -> Any | None:
        return self.service.config(portal)

    def store(self, portal: str) -> Any:
        from connector.store import StateStore

        with self._lock:
            if portal not in self._stores:
                self._stores[portal] = StateStore(self.registry().engine, portal)
            return self._stores[portal]

    def users_engine(self) -> Any:
        return self.registry().engine

    def default_language(self) -> str:
        return "ru"

    def status(self, portal: str) -> Any | None:
        from connector.config import ConfigError

        try:
            return self.registry().get(portal)
        except ConfigError:
            return None


__all__ = ["RegistryPortals"]
