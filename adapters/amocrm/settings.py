"""What the amoCRM adapter is configured with, and the one record of what differs between contacts and
companies (paths, deletion events, how a lead links to its customer, whether birthdays exist)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.base import Entity


@dataclass(frozen=True)
class AmoSettings:
    """The account, a long-lived token or an OAuth integration, limits. Secrets are plain strings kept
    out of ``repr``."""

    base_url: str  # https://SUBDOMAIN.amocrm.ru (or .kommo.com)
    customer: Entity = "contact"
    timezone: str = "Europe/Moscow"
    access_token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    redirect_uri: str | None = None
    refresh_token: str | None = field(default=None, repr=False)
    authorization_code: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    requests_per_second: float = 7.0
    overlap_minutes: float = 10
    birthday_field: str | None = None  # contact field holding birthdays (name or id)
    products: bool = False  # read leads with=catalog_elements (set by the connector when rules use products)
    writeback_batches_in_flight: int = 3  # tag PATCHes sent at once ([writeback] batches_in_flight; the limiter paces them)


@dataclass(frozen=True)
class AmoEntity:
    """Contact or company, as the amoCRM API v4 names and links it."""

    kind: str  # contact / company: events are f"{kind}_deleted"
    plural: str  # contacts / companies: the path, the _embedded key, a task's entity_type
    has_birthday: bool  # companies have no birthday field
    main_link: bool  # a lead's contact is marked is_main; its company is not

    @property
    def path(self) -> str:
        return f"/api/v4/{self.plural}"

    def lead_link(self, cid: int) -> dict[str, Any]:
        """``_embedded`` of a new lead: its main contact, or its company."""
        return {self.plural: [{"id": cid, "is_main": True} if self.main_link else {"id": cid}]}


ENTITIES: dict[Entity, AmoEntity] = {
    "contact": AmoEntity("contact", "contacts", has_birthday=True, main_link=True),
    "company": AmoEntity("company", "companies", has_birthday=False, main_link=False),
}
