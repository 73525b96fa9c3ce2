"""amoCRM adapter: paged pulls within 7 req/s, deletions from events, segments written as tags, call tasks
and leads.

``KIT`` is the whole adapter as the connector sees it (adapters/base.py says what each part must do).
"""

from adapters.amocrm.actions import AmoActions
from adapters.amocrm.settings import AmoSettings
from adapters.amocrm.source import AmoSource
from adapters.amocrm.writeback import AmoTagWriter
from adapters.base import CrmKit

KIT: CrmKit[AmoSettings] = CrmKit(
    name="amocrm",
    settings=AmoSettings,
    make_source=AmoSource,
    make_tag_writer=AmoTagWriter,
    make_action_sink=AmoActions,
)

__all__ = ["KIT", "AmoActions", "AmoSettings", "AmoSource", "AmoTagWriter"]
