"""The customer card view of one run: every mirrored customer of the configured entity, read once after the
pull and shared by the feature computation, campaign planning, tag write-back and ad audiences (instead of
each reading the mirror again)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

CARD_SCHEMA = {"id": pl.Int64, "name": pl.String, "phone": pl.String, "email": pl.String, "birthday": pl.String,
               "responsible_id": pl.String, "created_ts": pl.Int64, "fields": pl.String}
FEATURE_COLUMNS = ("id", "phone", "email", "birthday", "responsible_id", "created_ts", "fields")


@dataclass(frozen=True)
class CustomerCards:
    """Read-only cards: ``frame`` (one row per customer; ``fields`` as JSON text, parsed on request)."""

    frame: pl.DataFrame
    _index: dict[int, int] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def read(cls, frames: Any, entity: str) -> CustomerCards:
        """From the mirror through connector.store.frames (one bulk read)."""
        return cls.of(frames.card_frame(entity))

    @classmethod
    def of(cls, frame: pl.DataFrame) -> CustomerCards:
        return cls(frame, {int(cid): i for i, cid in enumerate(frame.get_column("id").to_list())})

    def __len__(self) -> int:
        return self.frame.height

    def __contains__(self, cid: object) -> bool:
        return cid in self._index

    def features_frame(self) -> pl.DataFrame:
        """The columns the feature computation reads (as ``StateStore.customers_frame`` gives them)."""
        return self.frame.select(FEATURE_COLUMNS)

    def fields_text(self) -> dict[int, str | None]:
        """Customer id -> custom fields as stored (JSON text, or None)."""
        return dict(self.frame.select("id", "fields").iter_rows())

    def cards(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Name, phone, e-mail, responsible, birthday and custom fields (parsed) of these customers, as
        ``StateStore.customer_cards`` gives them; ids not in the mirror are left out."""
        out: dict[int, dict[str, Any]] = {}
        for cid in sorted(set(ids)):
            row = self._index.get(int(cid))
            if row is None:
                continue
            card = self.frame.row(row, named=True)
            out[int(cid)] = {"id": int(cid), "name": card["name"], "phone": card["phone"], "email": card["email"],
                             "responsible_id": card["responsible_id"], "birthday": card["birthday"],
                             "fields": json.loads(card["fields"]) if card["fields"] else {}}
        return out
