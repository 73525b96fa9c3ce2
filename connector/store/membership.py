"""Segment membership: who is in each segment, since when, the enter/exit events, and segment definitions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import polars as pl
import sqlalchemy as sa

from connector.store.base import Part, chunks, insert_tuples
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
            insert_tuples(
                conn,
                membership,
                ("portal_id", "segment_id", "customer_id", "entered_on", "entered_run"),
                enter.select(pl.lit(pid).alias("p"), "segment_id", "customer_id", pl.lit(day).alias("d"),
                             pl.lit(run_id).alias("r")).iter_rows(),
            )
            for seg, ids_left in exit_.group_by("segment_id").agg(pl.col("customer_id")).iter_rows():
                for part in chunks(sorted(ids_left), 500):
                    conn.execute(
                        sa.delete(membership).where(
                            membership.c.portal_id == pid,
                            membership.c.segment_id == seg,
                            membership.c.customer_id.in_(part),
                        )
                    )
            insert_actions(conn, self.portal, run_id, planned)
            save_campaign_states(conn, self.portal, run_id, campaign_states)
            events = pl.concat([
                enter.select("segment_id", "customer_id", pl.lit(EVENT.code("enter"), pl.Int64).alias("event")),
                exit_.select("segment_id", "customer_id", pl.lit(EVENT.code("exit"), pl.Int64).alias("event")),
            ]).sort("segment_id", "customer_id")
            insert_tuples(
                conn,
                membership_events,
                ("portal_id", "run_id", "segment_id", "customer_id", "event", "on_date"),
                events.select(pl.lit(pid).alias("p"), pl.lit(run_id).alias("r"), "segment_id", "customer_id", "event",
                              pl.lit(day).alias("d")).iter_rows(),
            )


def _names(frame: pl.DataFrame) -> list[str]:
    return frame.get_column("segment").unique().to_list() if frame.height else []


def _with_ids(frame: pl.DataFrame, ids: dict[str, int]) -> pl.DataFrame:
    """The frame's (segment, customer_id) rows as (segment_id, customer_id), in key order."""
    if frame.height == 0:
        return pl.DataFrame(schema={"segment_id": pl.Int64, "customer_id": pl.Int64})
    return (frame.select(pl.col("segment").replace_strict(ids, return_dtype=pl.Int64).alias("segment_id"),
                         pl.col("customer_id").cast(pl.Int64))
            .sort("segment_id", "customer_id"))
