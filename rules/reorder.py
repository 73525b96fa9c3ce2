"""Cyclical products: when each customer will need a product again, and who is due for a reminder.

A ``[[product_cycle]]`` names a product (an id, a name, or ``section:NAME``, matched as the product
functions match them: rules.products), its cycle in days (or ``"learn"``), how many days before the due
date to remind, and optionally how many units one cycle uses up.

For each customer and cycle, from the product rows of won deals dated on or before ``as_of``:

* the last purchase day ``L`` of the product and the quantity ``Q`` bought that day (all its rows);
* the cycle ``C``: the configured days, or the learned one: the median of the day gaps between one
  customer's consecutive distinct purchase days of the product, pooled over all customers, when there
  are at least ``min_observations`` gaps (else unknown: the cycle is reported and nobody is due);
* the due date ``D = L + round(C * Q / units_per_cycle)`` with ``units_per_cycle``, else ``L + C`` (a
  three-month pack bought with ``units_per_cycle = 1`` lasts three cycles);
* the window: from ``D - remind_before_days`` until ``D + max_overdue_days`` (default: one more cycle
  length); after that the customer has lapsed, and the cycle stops asking about it.

The features describe one product per customer: of the cycles not yet lapsed, the one with the earliest
due date (ties: the first ``[[product_cycle]]``), so a customer due for two products hears about the
earlier one. ``reorder_product`` is the product's name (as the last purchase of it names it),
``reorder_due_date`` the due date, ``reorder_overdue_days`` = ``as_of - D`` (negative: days left). The
preset segment ``reorder.due`` holds the customers with at least one open window. A reorder moves ``L``, so the
customer leaves the segment until the next cycle's window opens: a campaign on ``reorder.due`` reminds
once per cycle and never again after the customer bought.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

import polars as pl

from rules.features import local_date
from rules.products import Lookup, ProductCall, match_expr

REORDER_FEATURES: dict[str, str] = {
    "reorder_product": "string",
    "reorder_due_date": "date",
    "reorder_overdue_days": "number",
}
DUE_COLUMN = "__reorder_due"
SEGMENT = "reorder.due"


class CycleSpec(Protocol):
    @property
    def product(self) -> str: ...
    @property
    def cycle_days(self) -> int | str: ...
    @property
    def remind_before_days(self) -> int: ...
    @property
    def units_per_cycle(self) -> float | None: ...
    @property
    def max_overdue_days(self) -> int | None: ...


@dataclass(frozen=True)
class CycleReport:
    """What ``lifecycle report`` shows of one ``[[product_cycle]]``."""

    product: str
    configured: int | str
    cycle_days: float | None  # None: learned from too few gaps
    observations: int  # gaps the learned median came from (0 for a configured cycle)
    customers: int  # customers who bought the product by as_of
    due: int  # of them, in the reminder window on as_of

    def as_dict(self) -> dict[str, object]:
        return {"product": self.product, "configured": self.configured, "cycle_days": self.cycle_days,
                "observations": self.observations, "customers": self.customers, "due": self.due}


def _prepared(rows: pl.DataFrame, as_of: date, timezone: str) -> pl.LazyFrame:
    day = pl.col("closed_on") if "closed_on" in rows.columns else local_date("closed_ts", timezone)
    as_of_day = (as_of - date(1970, 1, 1)).days
    return (rows.lazy().filter(pl.col("customer_id").is_not_null())
            .with_columns(day.cast(pl.Date).cast(pl.Int64).alias("_day"))
            .filter(pl.col("_day") <= as_of_day))


def learned_cycle(rows: pl.DataFrame, product: str, *, as_of: date, timezone: str = "UTC") -> tuple[float | None, int]:
    """(median gap in days, number of gaps) between consecutive distinct purchase days of ``product`` per
    customer, pooled over customers; (None, 0) without any gap."""
    matched = (_prepared(rows, as_of, timezone)
               .filter(match_expr(ProductCall("bought", product), Lookup.of(rows)).fill_null(False))
               .select("customer_id", "_day").collect())
    return _median_gap(matched)


def _median_gap(matched: pl.DataFrame) -> tuple[float | None, int]:
    days = matched.lazy().select("customer_id", "_day").unique().sort("customer_id", "_day")
    gaps = days.select((pl.col("_day") - pl.col("_day").shift(1)).filter(
        pl.col("customer_id") == pl.col("customer_id").shift(1)).alias("gap")).collect()
    if gaps.height == 0:
        return None, 0
    return float(gaps.get_column("gap").median()), gaps.height  # type: ignore[arg-type]


def add_reorder_features(features: pl.DataFrame, rows: pl.DataFrame | None, cycles: Sequence[CycleSpec], *,
                         as_of: date, timezone: str = "UTC", min_observations: int = 20
                         ) -> tuple[pl.DataFrame, list[CycleReport]]:
    """The feature frame (``id`` per customer) with the reorder features and the hidden ``__reorder_due``
    column; and a report per cycle. Without rows (products never pulled) the features are null."""
    empty = [pl.lit(None, pl.String).alias("reorder_product"), pl.lit(None, pl.Date).alias("reorder_due_date"),
             pl.lit(None, pl.Int64).alias("reorder_overdue_days"), pl.lit(False).alias(DUE_COLUMN)]
    if rows is None or not cycles:
        reports = [CycleReport(c.product, c.cycle_days, None if c.cycle_days == "learn" else float(c.cycle_days), 0, 0, 0)
                   for c in cycles]
        return features.with_columns(empty), reports
    as_of_day = (as_of - date(1970, 1, 1)).days
    prepared = _prepared(rows, as_of, timezone)
    lookup = Lookup.of(rows)
    parts: list[pl.LazyFrame] = []
    reports: list[CycleReport] = []
    for index, cycle in enumerate(cycles):
        # only this product's rows, only the columns needed (millions of rows: no copy of the whole frame)
        collected = (prepared.filter(match_expr(ProductCall("bought", cycle.product), lookup).fill_null(False))
                     .select("customer_id", "deal_id", "product_name", "_day",
                             pl.col("quantity").cast(pl.Float64).fill_null(1.0).alias("_qty"))
                     .collect())
        observations = 0
        if cycle.cycle_days == "learn":
            days, observations = _median_gap(collected)
            length = days if observations >= min_observations else None
        else:
            length = float(cycle.cycle_days)
        matched = collected.lazy()
        if length is None:
            customers = matched.select(pl.col("customer_id").n_unique()).collect().item()
            reports.append(CycleReport(cycle.product, cycle.cycle_days, None, observations, int(customers), 0))
            continue
        # per customer and day first (quantity summed, a name kept), then each customer's last day: plain
        # aggregations only (a filter inside an aggregation is evaluated group by group)
        last = (matched.group_by("customer_id", "_day")
                .agg(pl.col("_qty").sum().alias("_q"), pl.col("product_name").drop_nulls().max().alias("_name"))
                .sort("customer_id", "_day")
                .group_by("customer_id", maintain_order=True)
                .agg(pl.col("_day").last().alias("_last"), pl.col("_q").last(), pl.col("_name").last()))
        stretch = (pl.col("_q") / cycle.units_per_cycle) if cycle.units_per_cycle else pl.lit(1.0)
        overdue_max = cycle.max_overdue_days
        part = (last.with_columns((pl.lit(length) * stretch).round(0).cast(pl.Int64).clip(lower_bound=1).alias("_len"))
                .with_columns((pl.col("_last") + pl.col("_len")).alias("_due"))
                .with_columns(
                    (pl.lit(as_of_day) >= pl.col("_due") - cycle.remind_before_days).alias("_open"),
                    (pl.lit(as_of_day) <= pl.col("_due") + (pl.col("_len") if overdue_max is None else pl.lit(overdue_max)))
                    .alias("_alive"),
                    pl.lit(index).alias("_cycle"),
                    pl.col("_name").fill_null(pl.lit(cycle.product)))
                .filter(pl.col("_alive"))
                .select("customer_id", "_due", "_name", "_cycle", (pl.col("_open")).alias("_open")))
        parts.append(part)
        counted = last.select(pl.len().alias("n")).collect().item()
        due_now = part.filter(pl.col("_open")).select(pl.len()).collect().item()
        reports.append(CycleReport(cycle.product, cycle.cycle_days, round(length, 1), observations, int(counted), int(due_now)))
    if not parts:
        return features.with_columns(empty), reports
    picked = (pl.concat(parts).sort("customer_id", "_due", "_cycle")
              .group_by("customer_id", maintain_order=True)
              .agg(pl.col("_name").first(), pl.col("_due").first(), pl.col("_open").any())
              .select(pl.col("customer_id").alias("id"),
                      pl.col("_name").alias("reorder_product"),
                      pl.col("_due").cast(pl.Int32).cast(pl.Date).alias("reorder_due_date"),
                      (pl.lit(as_of_day) - pl.col("_due")).cast(pl.Int64).alias("reorder_overdue_days"),
                      pl.col("_open").alias(DUE_COLUMN))
              .collect())
    picked = picked.with_columns(pl.col("id").cast(features.schema["id"], strict=False))
    out = features.drop([c for c in (*REORDER_FEATURES, DUE_COLUMN) if c in features.columns])
    out = out.join(picked, on="id", how="left", maintain_order="left")
    return out.with_columns(pl.col(DUE_COLUMN).fill_null(False)), reports
