"""Segment membership: who is in each segment, since when, the enter/exit events, and segment definitions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import polars as pl
import sqlalchemy as sa

from connector.store.base import Part, insert_tuples
from connector.store.campaign_state import save_campaign_states
from connector.store.ledger import insert_actions
from connector.store.schema import EVENT, membership, membership_events, segments
from connector.store.types import day_number


class Membership(Part):
    """Frozen segments and the membership change of a run (with the actions it owes, in one transaction)."""

    def frozen_segments(self) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(segments.c.name).where(
                    segments.c.portal_id == self.portal_id, segments.c.static.is_(True), segments.c.frozen_run.is_not(None)
                )
            ).scalars()
            return set(rows)

    def segment_ids(self) -> dict[str, int]:
        """Segment name -> its id in membership and membership_events."""
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(segments.c.name, segments.c.id)
                                     .where(segments.c.portal_id == self.portal_id)).tuples().all())

    def apply_membership(
        self,
        run_id: int,
        on_date: date,
        entered: pl.DataFrame,
        left: pl.DataFrame,
        definitions: dict[str, tuple[bool, str]],
        planned: Sequence[Any] = (),
        campaign_states: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Record who entered and who left (frames of segment, customer_id) in one transaction, together
        with the campaign actions planned for them (``planned``: connector.campaigns.PlannedAction), so a
        run killed after this point still owes, and later takes, every action.

        ``definitions`` maps every computed segment to (static, definition); static segments seen for
        the first time are frozen by this run. Segment names become their integer ids in polars, and the rows
        go in as plain integer tuples (PostgreSQL: COPY) in key order; who left is deleted with one
        statement per segment and chunk.
        """
        pid = self.portal_id
        with self.engine.begin() as conn:
            known = {
                r.name: r
                for r in conn.execute(sa.select(segments).where(segments.c.portal_id == pid)).all()
            }
            next_id = max((r.id for r in known.values()), default=0) + 1
            ids = {name: r.id for name, r in known.items()}
            for name in sorted(set(definitions) | set(_names(entered)) | set(_names(left))):
                static, definition = definitions.get(name, (False, None))
                row = known.get(name)
                frozen_run = run_id if static else None
                if row is None:
                    ids[name] = next_id
                    conn.execute(
                        sa.insert(segments).values(portal_id=pid, id=next_id, name=name, static=static,
                                                   definition=definition, frozen_run=frozen_run)
                    )
                    next_id += 1
                elif name in definitions and (row.definition != definition or bool(row.static) != static):
                    keep = row.frozen_run if (static and row.static and row.frozen_run) else frozen_run
                    conn.execute(
                        sa.update(segments)
                        .where(segments.c.portal_id == pid, segments.c.id == row.id)
                        .values(static=static, definition=definition, frozen_run=keep)
                    )
            day = day_number(on_date)
            enter = _with_ids(entered, ids)
            exit_ = _with_ids(left, ids)
            _insert_sets(conn, "membership", ("portal_id", "segment_id", "customer_id", "entered_on", "entered_run"),
                         enter, lambda seg: (pid, seg, day, run_id))
            _delete_sets(conn, pid, exit_)
            insert_actions(conn, self.portal, run_id, planned)
            save_campaign_states(conn, self.portal, run_id, campaign_states)
            columns = ("portal_id", "run_id", "segment_id", "customer_id", "event", "on_date")
            for kind, frame in (("enter", enter), ("exit", exit_)):
                code = EVENT.code(kind)
                _insert_sets(conn, "membership_events", columns, frame, lambda seg, c=code: (pid, run_id, seg, c, day))


def _by_segment(frame: pl.DataFrame) -> list[tuple[int, pl.Series]]:
    """(segment_id, its customer ids in order) per segment of a (segment_id, customer_id) frame in key order."""
    if frame.height == 0:
        return []
    return [(int(part.item(0, "segment_id")), part.get_column("customer_id"))
            for part in frame.partition_by("segment_id", maintain_order=True)]


def _id_list(ids: pl.Series) -> str:
    """Customer ids as a JSON array (SQLite's json_each reads it in C)."""
    return "[" + ",".join(map(str, ids.to_list())) + "]"


def _insert_sets(conn: Any, table: str, columns: tuple[str, ...], frame: pl.DataFrame, fixed: Any) -> None:
    """Insert one row per (segment_id, customer_id) of ``frame``, the other columns from ``fixed(segment_id)``
    (the columns: those values in order, with customer_id in its place). SQLite: one ``INSERT ... SELECT ...
    FROM json_each(ids)`` per segment (2-3x faster than executemany of tuples); PostgreSQL: COPY of tuples."""
    at = columns.index("customer_id")
    if conn.dialect.name == "postgresql":
        def rows():
            for seg, ids in _by_segment(frame):
                values = fixed(seg)
                for cid in ids:
                    yield (*values[:at], cid, *values[at:])
        insert_tuples(conn, table, columns, rows())
        return
    for seg, ids in _by_segment(frame):
        values = tuple(fixed(seg))
        exprs = ["?"] * (len(columns) - 1)
        exprs.insert(at, "value")
        conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(exprs)} FROM json_each(?)",
                             (*values, _id_list(ids)))


def _delete_sets(conn: Any, pid: int, frame: pl.DataFrame) -> None:
    """Delete the (segment_id, customer_id) rows of ``frame`` from membership: one statement per segment."""
    for seg, ids in _by_segment(frame):
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("DELETE FROM membership WHERE portal_id = %s AND segment_id = %s AND "
                                 "customer_id = ANY(%s)", (pid, seg, ids.to_list()))
        else:
            conn.exec_driver_sql("DELETE FROM membership WHERE portal_id = ? AND segment_id = ? AND "
                                 "customer_id IN (SELECT value FROM json_each(?))", (pid, seg, _id_list(ids)))


def _names(frame: pl.DataFrame) -> list[str]:
    return frame.get_column("segment").unique().to_list() if frame.height else []


def _with_ids(frame: pl.DataFrame, ids: dict[str, int]) -> pl.DataFrame:
    """The frame's (segment, customer_id) rows as (segment_id, customer_id), in key order."""
    if frame.height == 0:
        return pl.DataFrame(schema={"segment_id": pl.Int64, "customer_id": pl.Int64})
    return (frame.select(pl.col("segment").replace_strict(ids, return_dtype=pl.Int64).alias("segment_id"),
                         pl.col("customer_id").cast(pl.Int64))
            .sort("segment_id", "customer_id"))
