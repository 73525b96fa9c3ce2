"""The preset segments of design.md as polars expressions over the feature frame.

Each preset is a function from its thresholds to ``{segment name: boolean expression}``. Nulls (for
example ``recency_days`` of a customer who never bought) make an expression false, never true.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from rules.settings import BirthdayPreset, CadencePreset, LifecyclePreset, PredictedPreset, SegmentsConfig

ROWS = ("new", "promising", "regular")
COLUMNS = ("active", "sleeping", "asleep")

purchases = pl.col("purchases")
recency = pl.col("recency_days")


def lifecycle_rows(cfg: LifecyclePreset) -> dict[str, pl.Expr]:
    b0, b1, b2 = cfg.purchase_bins
    return {
        "new": (purchases >= b0) & (purchases < b1),
        "promising": (purchases >= b1) & (purchases < b2),
        "regular": purchases >= b2,
    }


def lifecycle_columns(cfg: LifecyclePreset) -> dict[str, pl.Expr]:
    r0, r1 = cfg.recency_days
    return {
        "active": recency <= r0,
        "sleeping": (recency > r0) & (recency <= r1),
        "asleep": recency > r1,
    }


def lifecycle(cfg: LifecyclePreset) -> dict[str, pl.Expr]:
    rows, cols = lifecycle_rows(cfg), lifecycle_columns(cfg)
    return {f"lifecycle.{r}_{c}": rows[r] & cols[c] for r in ROWS for c in COLUMNS}


def status(cfg: LifecyclePreset) -> dict[str, pl.Expr]:
    last = cfg.recency_days[1]
    return {
        "status.prospect": purchases == 0,
        "status.current": (purchases >= 1) & (recency <= last),
        "status.former": (purchases >= 1) & (recency > last),
    }


def cadence(cfg: CadencePreset) -> dict[str, pl.Expr]:
    days = pl.col("purchase_days")
    gap = pl.col("median_gap")
    rhythm = days >= cfg.min_purchase_days
    lapsed = rhythm & (recency > cfg.lapse_factor * gap)
    few = (days >= 1) & (days < cfg.min_purchase_days)
    return {
        "cadence.lapsed": lapsed,
        "cadence.frequent": rhythm & ~lapsed & (gap <= cfg.frequent_max_gap),
        "cadence.periodic": rhythm & ~lapsed & (gap > cfg.frequent_max_gap) & (gap <= cfg.periodic_max_gap),
        "cadence.rare": (rhythm & ~lapsed & (gap > cfg.periodic_max_gap))
        | (few & (pl.col("first_purchase_days") > cfg.rare_first_purchase_days)),
    }


def birthday(cfg: BirthdayPreset) -> dict[str, pl.Expr]:
    return {"birthday.soon": pl.col("days_to_birthday") <= cfg.soon_days}


def predicted(cfg: PredictedPreset, lc: LifecyclePreset) -> dict[str, pl.Expr]:
    """Off by default. ``at_risk``: repeat customers (the matrix's promising or regular rows) who bought at
    least ``at_risk_min_monetary`` and whom the matrix still calls active or sleeping, but whose P(alive)
    has dropped below ``at_risk_max_p_alive``. ``due``: likely to buy within 30 days. Without a usable
    model the prediction columns are null and both select nobody."""
    valuable = (purchases >= lc.purchase_bins[1]) & (pl.col("monetary") >= cfg.at_risk_min_monetary)
    return {
        "predicted.at_risk": valuable & (recency <= lc.recency_days[1]) & (pl.col("p_alive") < cfg.at_risk_max_p_alive),
        "predicted.due": pl.col("p_buy_30d") >= cfg.due_min_p_buy_30d,
    }


PRESETS: dict[str, Callable[[SegmentsConfig], dict[str, pl.Expr]]] = {
    "lifecycle": lambda s: lifecycle(s.lifecycle),
    "status": lambda s: status(s.lifecycle),
    "cadence": lambda s: cadence(s.cadence),
    "birthday": lambda s: birthday(s.birthday),
    "predicted": lambda s: predicted(s.predicted, s.lifecycle),
}


def preset_segments(cfg: SegmentsConfig) -> dict[str, pl.Expr]:
    """Every enabled preset's segments, in a stable order, nulls turned into False."""
    out: dict[str, pl.Expr] = {}
    for name in cfg.presets:
        for segment, expr in PRESETS[name](cfg).items():
            out[segment] = expr.fill_null(False)
    return out


def all_preset_names() -> list[str]:
    """Names every preset can produce (used to reserve them and to type-check rules)."""
    cfg = SegmentsConfig()
    return [segment for name in PRESETS for segment in PRESETS[name](cfg)]
