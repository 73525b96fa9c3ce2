"""Which campaign actions are the CRM's own channels, and which CRM takes which (shared by the adapters and
connector/channels.py, which holds the config checks and payloads)."""

from __future__ import annotations

from typing import Any

CHANNELS = ("bizproc", "email", "salesbot", "stage")
BITRIX24_ONLY = ("bizproc", "email")
AMOCRM_ONLY = ("salesbot", "stage")


def is_channel(row: Any) -> bool:
    return row["action"] in CHANNELS


def wrong_crm(campaigns: Any, crm: str) -> tuple[str, str] | None:
    """(campaign, action) of the first channel action the CRM ``crm`` ("bitrix24" | "amocrm") cannot take."""
    foreign = AMOCRM_ONLY if crm == "bitrix24" else BITRIX24_ONLY
    for campaign in campaigns:
        for action in (*campaign.on_enter, *campaign.on_exit):
            if action.action in foreign:
                return campaign.name, action.action
    return None


def channel_actions(campaigns: Any, kind: str) -> list[tuple[Any, Any]]:
    """(campaign, action) of every ``kind`` action."""
    return [(c, a) for c in campaigns for a in (*c.on_enter, *c.on_exit) if a.action == kind]
