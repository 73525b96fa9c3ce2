"""Run records: one row per sync or report, how it ended and what it did."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import sqlalchemy as sa

from connector.store.base import Part, now
from connector.store.schema import runs


class Runs(Part):
    """Start, finish and list this portal's runs."""

    def start_run(self, kind: str, as_of: date | None) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.insert(runs).values(portal=self.portal, kind=kind, as_of=as_of, started_at=now(), status="running")
            )
            return int(result.inserted_primary_key[0])

    def finish_run(self, run_id: int, *, status: str, stats: dict[str, Any], error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id)
                .values(finished_at=now(), status=status, stats=json.dumps(stats, default=str), error=error)
            )

    def last_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(runs).where(runs.c.portal == self.portal).order_by(runs.c.id.desc()).limit(limit)
            ).mappings()
            return [dict(r) | {"stats": json.loads(r["stats"]) if r["stats"] else {}} for r in rows]
