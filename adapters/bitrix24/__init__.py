"""Bitrix24 adapter: pulls through the start=-1 ID chain, writes segments to a user field, creates call
tasks, to-dos and deals.

``KIT`` is the whole adapter as the connector sees it (adapters/base.py says what each part must do).
"""

from adapters.base import CrmKit
from adapters.bitrix24.actions import Bitrix24Actions
from adapters.bitrix24.settings import Bitrix24Settings
from adapters.bitrix24.source import Bitrix24Source
from adapters.bitrix24.writeback import Bitrix24TagWriter

KIT: CrmKit[Bitrix24Settings] = CrmKit(
    name="bitrix24",
    settings=Bitrix24Settings,
    make_source=Bitrix24Source,
    make_tag_writer=Bitrix24TagWriter,
    make_action_sink=Bitrix24Actions,
)

__all__ = ["KIT", "Bitrix24Actions", "Bitrix24Settings", "Bitrix24Source", "Bitrix24TagWriter"]
