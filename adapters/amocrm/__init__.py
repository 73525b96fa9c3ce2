"""amoCRM adapter: paged pulls within 7 req/s, deletions from events, segments written as tags."""

from adapters.amocrm.source import AmoSource
from adapters.amocrm.writeback import AmoTagWriter

__all__ = ["AmoSource", "AmoTagWriter"]
