"""Segment membership: who is in each segment, since when, the enter/exit events, and segment definitions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import polars as pl
import sqlalchemy as sa

from connector.store.base import Part, chunks, date_param, insert_tuples
from connector.store.campaign_state import save_campaign_states
from connector.store.ledger import insert_actions
from connector.store.schema import membership, membership_events, segments


class Membership(Part):
    """Frozen segments and the membership change of a run (with the actions it owes, in one transaction)."""

    def frozen_segments(self) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(segments.c.name).where(
                    segments.c.portal == self.portal, segments.c.static.is_(True), segments.c.frozen_run.is_not(None)
                )
            ).scalars()
            return set(rows)

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
        the first time are frozen by this run.
        """
        with self.engine.begin() as conn:
            known = {
                r.name: r
                for r in conn.execute(sa.select(segments).where(segments.c.portal == self.portal)).all()
            }
            for name, (static, definition) in definitions.items():
                row = known.get(name)
                frozen_run = run_id if static else None
                if row is None:
                    conn.execute(
                        sa.insert(segments).values(
                            portal=self.portal, name=name, static=static, definition=definition, frozen_run=frozen_run
                        )
                    )
                elif row.definition != definition or bool(row.static) != static:
                    keep = row.frozen_run if (static and row.static and row.frozen_run) else frozen_run
                    conn.execute(
                        sa.update(segments)
                        .where(segments.c.portal == self.portal, segments.c.name == name)
                        .values(static=static, definition=definition, frozen_run=keep)
                    )
            day = date_param(conn, on_date)
            insert_tuples(
                conn,
                membership,
                ("portal", "segment", "customer_id", "entered_on", "entered_run"),
                entered.select(
                    pl.lit(self.portal).alias("p"), "segment", "customer_id", pl.lit(day).alias("d"), pl.lit(run_id).alias("r")
                ).iter_rows(),
            )
            for seg, ids in left.group_by("segment").agg(pl.col("customer_id")).iter_rows():
                for part in chunks(sorted(ids), 500):
                    conn.execute(
                        sa.delete(membership).where(
                            membership.c.portal == self.portal,
                            membership.c.segment == seg,
                            membership.c.customer_id.in_(part),
                        )
                    )
            insert_actions(conn, self.portal, run_id, planned)
            save_campaign_states(conn, self.portal, run_id, campaign_states)
            for kind, frame in (("enter", entered), ("exit", left)):
                insert_tuples(
                    conn,
                    membership_events,
                    ("portal", "run_id", "segment", "customer_id", "event", "on_date"),
                    frame.select(
                        pl.lit(self.portal).alias("p"),
                        pl.lit(run_id).alias("r"),
                        "segment",
                        "customer_id",
                        pl.lit(kind).alias("k"),
                        pl.lit(day).alias("d"),
                    ).iter_rows(),
                )
