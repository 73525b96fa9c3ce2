"""What the Bitrix24 adapter is configured with, and the one record of what differs between contacts
and companies (method names, selected fields, task bindings, the deal's link)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.base import Entity
from adapters.bitrix24.mapping import COMPANY_SELECT, CONTACT_SELECT


@dataclass(frozen=True)
class Bitrix24Settings:
    """An inbound webhook, or a local/marketplace app's OAuth credentials; limits; the tag field.

    Secrets are plain strings kept out of ``repr``."""

    customer: Entity = "contact"
    webhook_url: str | None = field(default=None, repr=False)
    client_endpoint: str | None = None  # OAuth: https://PORTAL/rest/
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)  # the first one; rotations go to the store
    oauth_token_url: str = "https://oauth.bitrix.info/oauth/token/"
    ca_file: Path | None = None
    requests_per_second: float = 2.0
    burst: int = 50
    overlap_minutes: float = 10
    reconcile_hours: float = 24
    tag_field: str = "UF_CRM_LIFECYCLE"  # the multiple enumeration user field holding the segments
    tag_field_label: str = "Lifecycle segments"
    writeback_batches_in_flight: int = 3  # tag batches sent at once (the limiter paces them: 2 req/s, burst 50)
    products: bool = False  # pull deal product rows (the connector sets it when rules or cycles use products)


@dataclass(frozen=True)
class BitrixEntity:
    """Contact or company, as the Bitrix24 REST API names and links it."""

    prefix: str  # crm.contact: its .list, .update, .userfield.* methods
    select: tuple[str, ...]  # the fields a pull reads (the tag field is added)
    owner: str  # C / CO: a task's UF_CRM_TASK binding is f"{owner}_{id}"
    owner_type_id: int  # 3 / 4: crm.activity owners
    deal_field: str  # CONTACT_IDS (a list) / COMPANY_ID (one id) on crm.deal.add
    deal_field_is_list: bool

    def binding(self, cid: int | str) -> str:
        return f"{self.owner}_{cid}"

    def deal_link(self, cid: int) -> dict[str, Any]:
        return {self.deal_field: [cid] if self.deal_field_is_list else cid}


ENTITIES: dict[Entity, BitrixEntity] = {
    "contact": BitrixEntity("crm.contact", tuple(CONTACT_SELECT), "C", 3, "CONTACT_IDS", True),
    "company": BitrixEntity("crm.company", tuple(COMPANY_SELECT), "CO", 4, "COMPANY_ID", False),
}
