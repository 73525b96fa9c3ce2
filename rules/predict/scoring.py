"""Prediction features per customer, in days, from the feature frame and a fitted model.

A customer's history in model terms (time in days, purchase *days*, so two deals on one day are one
purchase): ``x = purchase_days - 1`` repeat purchases, ``t_x = first_purchase_days - recency_days`` (days
from the first to the last purchase), ``T = first_purchase_days`` (days since the first purchase).
Prospects (no purchase) get null predictions: the models describe customers who have bought.

Features (null where no usable model is available, and for prospects):

* ``p_alive``: probability the customer is still buying (has not silently left);
* ``exp_purchases_30d`` / ``_90d`` / ``_365d``: expected purchase days in the next 30 / 90 / 365 days;
* ``p_buy_30d``: probability of at least one purchase in the next 30 days;
* ``next_purchase_median_days``: median days to the next purchase if the customer stays, null where
  ``p_alive`` is below ``[predictions] next_purchase_min_p_alive``;
* ``exp_order_value``: expected spend per purchase (Gamma-Gamma on the spend per purchase day), the
  customer's own average shrunk towards the base's; null without a usable spend fit;
* ``clv_365d``: expected revenue over 365 days, ``exp_order_value`` times expected purchases, month by
  month discounted at ``[predictions] annual_discount_rate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import polars as pl

from rules.predict.models import (
    COUNT_MODELS, Fit, FitError, expected_order_value, expected_purchases, fit_counts, fit_gammagamma, next_purchase_median,
    p_alive, p_buy_within,
)
from rules.predict.names import PREDICTION_FEATURES  # noqa: F401 - defined there, named here as before

@dataclass(frozen=True)
class PredictionSettings:
    """What the scoring needs from ``[predictions]`` (kept here so rules/ does not import the config)."""

    model: str = "mbgnbd"
    min_repeat_buyers: int = 50
    next_purchase_min_p_alive: float = 0.2
    annual_discount_rate: float = 0.0


@dataclass(frozen=True)
class PortalModel:
    """The fits a portal's predictions come from, or why there are none."""

    counts: Fit | None
    spend: Fit | None
    fitted_on: date | None
    reason: str = ""  # why there are no predictions (empty when counts is usable)
    spend_reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.counts is not None and self.counts.usable

    def as_dict(self) -> dict[str, Any]:
        return {
            "fitted_on": self.fitted_on.isoformat() if self.fitted_on else None,
            "counts": self.counts.as_dict() if self.counts else None,
            "spend": self.spend.as_dict() if self.spend else None,
            "usable": self.usable,
            "reason": self.reason,
            "spend_reason": self.spend_reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PortalModel:
        return cls(
            counts=Fit.from_dict(d["counts"]) if d.get("counts") else None,
            spend=Fit.from_dict(d["spend"]) if d.get("spend") else None,
            fitted_on=date.fromisoformat(d["fitted_on"]) if d.get("fitted_on") else None,
            reason=str(d.get("reason", "")),
            spend_reason=str(d.get("spend_reason", "")),
        )


def history(features: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(buyer mask, x, t_x, T) in days from the feature frame; x, t_x, T are 0 for prospects."""
    cols = features.select(
        pl.col("purchase_days").fill_null(0).cast(pl.Float64),
        pl.col("first_purchase_days").fill_null(0).cast(pl.Float64),
        pl.col("recency_days").fill_null(0).cast(pl.Float64),
    )
    days = cols.get_column("purchase_days").to_numpy()
    first = cols.get_column("first_purchase_days").to_numpy()
    recency = cols.get_column("recency_days").to_numpy()
    buyer = days >= 1
    x = np.where(buyer, days - 1, 0.0)
    T = np.where(buyer, first, 0.0)
    t_x = np.where(buyer, np.clip(first - recency, 0.0, None), 0.0)
    return buyer, x, t_x, T


def spend_per_purchase_day(features: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(purchase days, average spend per purchase day): the Gamma-Gamma model's x and m, in the same unit
    as the count model's purchases, so that value times expected purchases is revenue."""
    cols = features.select(
        pl.col("purchase_days").fill_null(0).cast(pl.Float64),
        (pl.col("monetary").cast(pl.Float64) / pl.col("purchase_days").cast(pl.Float64)).fill_null(float("nan")),
    )
    return cols.to_series(0).to_numpy(), cols.to_series(1).fill_nan(float("nan")).to_numpy()


def fit_portal(features: pl.DataFrame, as_of: date, settings: PredictionSettings) -> PortalModel:
    """Fit the count model (and Gamma-Gamma on order values) on the portal's customers as of ``as_of``."""
    if settings.model not in COUNT_MODELS:
        return PortalModel(None, None, None, reason=f"unknown model {settings.model!r}")
    buyer, x, t_x, T = history(features)
    fit_rows = buyer & (T > 0)  # a first purchase today says nothing about rates yet
    repeaters = int((fit_rows & (x > 0)).sum())
    if repeaters < settings.min_repeat_buyers:
        return PortalModel(None, None, None, reason=(
            f"too few repeat buyers to fit a model: {repeaters} customers bought on two or more days, "
            f"at least {settings.min_repeat_buyers} are needed ([predictions] min_repeat_buyers)"))
    try:
        counts = fit_counts(settings.model, x[fit_rows], t_x[fit_rows], T[fit_rows])
    except FitError as exc:
        return PortalModel(None, None, None, reason=f"the model could not be fitted: {exc}")
    reason = "" if counts.usable else f"the {counts.model} fit is not usable: {counts.message}"
    spend, spend_reason = None, ""
    n, m = spend_per_purchase_day(features)
    ok = (n >= 1) & np.isfinite(m) & (m > 0)
    if int((ok & (n >= 2)).sum()) < settings.min_repeat_buyers:
        spend_reason = "too few customers with paid purchases on two or more days to fit the order-value model"
    else:
        try:
            spend = fit_gammagamma(n[ok], m[ok])
            if not spend.usable or spend.params["q"] <= 1:
                spend_reason = f"the order-value fit is not usable: {spend.message or 'q <= 1 (no finite mean)'}"
        except FitError as exc:
            spend_reason = str(exc)
    return PortalModel(counts, spend, as_of, reason=reason, spend_reason=spend_reason)


def score(features: pl.DataFrame, model: PortalModel | None, settings: PredictionSettings) -> pl.DataFrame:
    """``features`` plus one column per prediction feature (null where there is no usable model)."""
    height = features.height
    if model is None or not model.usable or height == 0:
        return features.with_columns(pl.lit(None, pl.Float64).alias(name) for name in PREDICTION_FEATURES)
    fit = model.counts
    assert fit is not None
    name, params = fit.model, fit.params
    buyer, x, t_x, T = history(features)
    nan = np.full(height, np.nan)

    def only_buyers(values: np.ndarray) -> np.ndarray:
        return np.where(buyer, values, nan)

    with np.errstate(all="ignore"):
        alive = p_alive(name, params, x, t_x, T)
        exp30 = expected_purchases(name, params, 30, x, t_x, T)
        exp90 = expected_purchases(name, params, 90, x, t_x, T)
        exp365 = expected_purchases(name, params, 365, x, t_x, T)
        buy30 = p_buy_within(name, params, 30, x, t_x, T, alive=alive)
        median = next_purchase_median(name, params, x, T)
        median = np.where(alive >= settings.next_purchase_min_p_alive, median, nan)
        value = nan
        clv = nan
        spend_ok = model.spend is not None and model.spend.usable and model.spend.params["q"] > 1
        if spend_ok:
            value = expected_order_value(model.spend.params, *spend_per_purchase_day(features))
            clv = value * _discounted_purchases(name, params, x, t_x, T, settings.annual_discount_rate, exp365)
    columns = {
        "p_alive": alive, "exp_purchases_30d": exp30, "exp_purchases_90d": exp90, "exp_purchases_365d": exp365,
        "p_buy_30d": buy30, "next_purchase_median_days": median, "exp_order_value": value, "clv_365d": clv,
    }
    return features.with_columns(
        pl.Series(n, only_buyers(v), dtype=pl.Float64).fill_nan(None) for n, v in columns.items()
    )


def _discounted_purchases(name, params, x, t_x, T, rate: float, exp365: np.ndarray) -> np.ndarray:
    """Expected purchases over 365 days, each month's share discounted to today at ``rate`` a year."""
    if rate <= 0:
        return exp365
    edges = [365.0 * k / 12 for k in range(13)]
    cumulative = [np.zeros_like(exp365)] + [expected_purchases(name, params, t, x, t_x, T) for t in edges[1:]]
    total = np.zeros_like(exp365)
    for k in range(1, 13):
        total += (cumulative[k] - cumulative[k - 1]) / (1.0 + rate) ** ((k - 0.5) / 12)
    return total


def summary(model: PortalModel | None, features: pl.DataFrame | None = None) -> dict[str, Any]:
    """Fit summary and the P(alive) distribution, for run records and ``report``."""
    if model is None:
        return {"usable": False, "reason": "predictions are not enabled"}
    out = model.as_dict()
    if features is not None and "p_alive" in features.columns and model.usable:
        alive = features.get_column("p_alive").drop_nulls()
        bins = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0000001]
        values = alive.to_numpy()
        hist, _ = np.histogram(values, bins=bins)
        labels = ["0-0.1", "0.1-0.3", "0.3-0.5", "0.5-0.7", "0.7-0.9", "0.9-1"]
        out["p_alive"] = {
            "customers": int(values.size),
            "mean": float(values.mean()) if values.size else None,
            "median": float(np.median(values)) if values.size else None,
            "histogram": dict(zip(labels, (int(h) for h in hist))),
        }
    return out


def naive_forecast(x: np.ndarray, T: np.ndarray, horizon: float) -> np.ndarray:
    """"Buys at their past rate": repeat purchases per day since the first purchase, times the horizon."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(T > 0, x / T * horizon, 0.0)

