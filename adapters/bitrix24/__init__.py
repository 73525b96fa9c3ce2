"""Bitrix24 adapter: pulls through the start=-1 ID chain, writes segments to a user field."""

from adapters.bitrix24.source import Bitrix24Source
from adapters.bitrix24.writeback import Bitrix24TagWriter

__all__ = ["Bitrix24Source", "Bitrix24TagWriter"]
