"""Ad audiences: each cabinet's audience, the customers put into it and the hashes it holds."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from connector.store.base import Part, chunks, now, upsert
from connector.store.schema import audience_hashes, audience_members, audiences_table


class Audiences(Part):
    """Audience records, members and hashes of this portal."""

    def audience(self, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(audiences_table).where(
                audiences_table.c.portal == self.portal, audiences_table.c.audience == key)).mappings().first()
        return (dict(row) | {"detail": json.loads(row["detail"]) if row["detail"] else {}}) if row else None

    def save_audience(self, key: str, cabinet: str, *, remote_id: str | None, status: str | None,
                      detail: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            upsert(conn, audiences_table, [{
                "portal": self.portal, "audience": key, "cabinet": cabinet, "remote_id": remote_id, "status": status,
                "detail": json.dumps(detail, default=str), "updated_at": now()}])

    def audience_members(self, key: str) -> dict[int, tuple[dict[str, str], str]]:
        """customer id -> (identifiers, state) as recorded for this audience."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audience_members.c.customer_id, audience_members.c.identifiers,
                                          audience_members.c.state).where(
                audience_members.c.portal == self.portal, audience_members.c.audience == key)).all()
        return {int(cid): (json.loads(idents), state) for cid, idents, state in rows}

    def set_audience_members(self, key: str, rows: dict[int, tuple[dict[str, str], str]]) -> None:
        """Upsert (identifiers, state) per customer in one committed transaction."""
        if not rows:
            return
        with self.engine.begin() as conn:
            upsert(conn, audience_members, [
                {"portal": self.portal, "audience": key, "customer_id": cid, "identifiers": json.dumps(idents, sort_keys=True),
                 "state": state} for cid, (idents, state) in rows.items()])

    def drop_audience_members(self, key: str, ids: Iterable[int]) -> None:
        ids = sorted(set(ids))
        with self.engine.begin() as conn:
            for part in chunks(ids, 500):
                conn.execute(sa.delete(audience_members).where(
                    audience_members.c.portal == self.portal, audience_members.c.audience == key,
                    audience_members.c.customer_id.in_(list(part))))

    def audience_hashes(self, key: str) -> dict[tuple[str, str], str]:
        """(kind, hash) -> state for every hash recorded as sent to this audience's cabinet."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audience_hashes.c.kind, audience_hashes.c.hash, audience_hashes.c.state).where(
                audience_hashes.c.portal == self.portal, audience_hashes.c.audience == key)).all()
        return {(kind, value): state for kind, value, state in rows}

    def set_audience_hashes(self, key: str, hashes: Iterable[tuple[str, str]], state: str) -> None:
        """Record (kind, hash) pairs in one state, in one committed transaction."""
        rows = [{"portal": self.portal, "audience": key, "kind": k, "hash": h, "state": state} for k, h in hashes]
        if not rows:
            return
        with self.engine.begin() as conn:
            for part in chunks(rows, 5000):
                upsert(conn, audience_hashes, list(part))

    def drop_audience_hashes(self, key: str, hashes: Iterable[tuple[str, str]]) -> None:
        by_kind: dict[str, list[str]] = {}
        for kind, value in hashes:
            by_kind.setdefault(kind, []).append(value)
        with self.engine.begin() as conn:
            for kind, values in by_kind.items():
                for part in chunks(sorted(set(values)), 500):
                    conn.execute(sa.delete(audience_hashes).where(
                        audience_hashes.c.portal == self.portal, audience_hashes.c.audience == key,
                        audience_hashes.c.kind == kind, audience_hashes.c.hash.in_(list(part))))
