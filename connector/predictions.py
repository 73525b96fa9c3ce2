"""Predictions in the cycle: when to refit, where the parameters live, and the ``model`` commands' work.

The model is refitted at most every ``[predictions] refit_days`` per portal, by ``sync``; its parameters
and fit quality go to the ``model_fits`` table with the run's id, and between fits the features are
computed from the stored parameters. ``report`` and ``plan`` never store a fit: without a fresh stored one
they fit in memory. A portal whose data cannot be fitted gets null prediction features and a reason that
``report`` and the run record show.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl

from connector.config import LoadedConfig
from connector.store import StateStore
from rules.features import compute_features
from rules.predict.models import Fit, expected_purchases, fit_counts, fit_gammagamma
from rules.predict.scoring import (
    PREDICTION_FEATURES, PortalModel, PredictionSettings, fit_portal, history, naive_forecast, score,
    spend_per_purchase_day,
)

log = logging.getLogger("lifecycle.predictions")


def prediction_settings(config: LoadedConfig) -> PredictionSettings:
    p = config.settings.predictions
    return PredictionSettings(model=p.model, min_repeat_buyers=p.min_repeat_buyers,
                              next_purchase_min_p_alive=p.next_purchase_min_p_alive,
                              annual_discount_rate=p.annual_discount_rate)


def wanted(config: LoadedConfig) -> bool:
    """``[predictions] enabled``, or when unset: a rule, an enabled preset or a campaign template uses them."""
    enabled = config.settings.predictions.enabled
    if enabled is not None:
        return enabled
    if config.rules.prediction_users():
        return True
    from connector.templates import TemplateError, template_names

    for campaign in config.settings.campaign:
        for action in (*campaign.on_enter, *campaign.on_exit):
            for attr in ("title", "description", "script", "task_title"):
                text = getattr(action, attr, None)
                try:
                    if text and set(template_names(text)) & PREDICTION_FEATURES.keys():
                        return True
                except TemplateError:
                    continue  # reported when the config loads
    return False


def portal_model(store: StateStore, config: LoadedConfig, features: pl.DataFrame, as_of: date, *, refit: bool,
                 run_id: int | None = None) -> tuple[PortalModel, str]:
    """The model to score with, and where it came from: "stored", "fitted" (and stored) or "memory"."""
    settings = prediction_settings(config)
    key = {"model": settings.model, "min_repeat_buyers": settings.min_repeat_buyers}  # what a fit depends on
    stored = store.latest_model_fit(settings.model)
    if stored is not None and stored["detail"].get("settings") == key:
        age = (as_of - stored["fitted_on"]).days
        if 0 <= age < config.settings.predictions.refit_days:
            return PortalModel.from_dict(stored["detail"]), "stored"
    try:
        model = fit_portal(features, as_of, settings)
    except Exception as exc:  # noqa: BLE001 - a failed fit leaves the predictions empty; the run goes on
        log.exception("the %s fit failed", settings.model)
        model = PortalModel(None, None, None, reason=f"the model could not be fitted ({type(exc).__name__}: {exc})")
    if not refit:
        return model, "memory"
    loglik = model.counts.loglik if model.counts else None
    store.save_model_fit(settings.model, as_of, model.as_dict() | {"settings": key}, usable=model.usable,
                         loglik=loglik, run_id=run_id)
    if model.usable:
        c = model.counts
        assert c is not None
        log.info("fitted %s on %d customers: %s, log-likelihood %.2f", c.model, c.customers,
                 ", ".join(f"{k} {v:.4g}" for k, v in c.params.items()), c.loglik)
    return model, "fitted"


def add_predictions(store: StateStore, config: LoadedConfig, features: pl.DataFrame, as_of: date, *, refit: bool,
                    run_id: int | None = None) -> tuple[pl.DataFrame, dict[str, Any] | None]:
    """``features`` with the prediction columns, and the summary for the run record and ``report``
    (None when predictions are not wanted: then the frame is returned unchanged)."""
    if not wanted(config):
        return features, None
    from rules.predict.scoring import summary

    model, origin = portal_model(store, config, features, as_of, refit=refit, run_id=run_id)
    scored = score(features, model, prediction_settings(config))
    users = config.rules.prediction_users()
    out = summary(model, scored) | {"origin": origin, "segments_using": users}
    if not model.usable:
        log.warning("predictions unavailable: %s%s", model.reason,
                    f"; segments using them select nobody: {', '.join(users)}" if users else "")
    return scored, out


def summary_line(pred: dict[str, Any]) -> str:
    """One line for `sync`: which model scored the customers, or why nobody was scored."""
    if not pred.get("usable"):
        users = pred.get("segments_using") or []
        return (f"predictions unavailable: {pred.get('reason') or 'no usable model'}"
                + (f"; segments using them select nobody: {', '.join(users)}" if users else ""))
    counts = pred["counts"]
    how = {"stored": "stored fit of", "fitted": "fitted now on", "memory": "fitted on"}.get(pred.get("origin", ""), "fit of")
    alive = pred.get("p_alive") or {}
    mean = f", mean P(alive) {alive['mean']:.2f}" if alive.get("mean") is not None else ""
    return (f"predictions: {counts['model']} ({how} {pred['fitted_on']}), log-likelihood {counts['loglik']:.1f}"
            f"{mean}")


# -- the `model` commands --------------------------------------------------------------------------------


def read_summary_csv(path: str) -> dict[str, np.ndarray]:
    """A summary file with the columns frequency, recency, T and optionally monetary_value (any time unit)."""
    try:
        frame = pl.read_csv(path, infer_schema_length=10000)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ValueError(f"--summary {path}: cannot read it as CSV ({type(exc).__name__})") from None
    missing = [c for c in ("frequency", "recency", "T") if c not in frame.columns]
    if missing:
        raise ValueError(f"--summary {path}: missing column(s) {', '.join(missing)}; "
                         "the file needs frequency,recency,T[,monetary_value]")
    out = {}
    for name in ("frequency", "recency", "T", "monetary_value"):
        if name in frame.columns:
            column = frame.get_column(name).cast(pl.Float64, strict=False)
            if column.null_count():
                raise ValueError(f"--summary {path}: column {name} has {column.null_count()} empty or non-numeric value(s)")
            out[name] = column.to_numpy()
    return out


def fit_command(config: LoadedConfig | None, model: str, summary_path: str | None, as_of: date | None) -> Fit:
    """Fit ``model`` on a summary file, or on the portal's mirror as of ``as_of`` (time in days)."""
    if summary_path:
        data = read_summary_csv(summary_path)
        if model == "gammagamma":
            if "monetary_value" not in data:
                raise ValueError(f"--summary {summary_path}: the gammagamma model needs a monetary_value column")
            x, m = data["frequency"], data["monetary_value"]
            return fit_gammagamma(x[x > 0], m[x > 0])
        return fit_counts(model, data["frequency"], data["recency"], data["T"])
    assert config is not None and as_of is not None
    features = _mirror_features(config, as_of)
    buyer, x, t_x, T = history(features)
    if model == "gammagamma":
        return fit_gammagamma(*spend_per_purchase_day(features))
    keep = buyer & (T > 0)
    return fit_counts(model, x[keep], t_x[keep], T[keep])


def _mirror_features(config: LoadedConfig, as_of: date) -> pl.DataFrame:
    store = StateStore.open(config.state_url, config.crm.name)
    try:
        crm = config.crm
        features, _ = compute_features(store.customers_frame(crm.customer), store.deals_frame(), as_of=as_of,
                                       timezone=crm.timezone, customer=crm.customer, fields=config.rules.fields)
    finally:
        store.close()
    return features


@dataclass(frozen=True)
class Backtest:
    calibration_end: date
    holdout_days: int
    fit: Fit
    customers: int
    actual_total: float
    predicted_total: float
    naive_total: float
    mae_model: float
    mae_naive: float
    by_frequency: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "calibration_end": self.calibration_end.isoformat(), "holdout_days": self.holdout_days,
            "model": self.fit.model, "params": self.fit.params, "loglik": self.fit.as_dict()["loglik"],
            "converged": self.fit.converged,
            "usable": self.fit.usable, "customers": self.customers,
            "totals": {"actual": self.actual_total, "predicted": self.predicted_total, "naive": self.naive_total},
            "mae_per_customer": {"model": self.mae_model, "naive": self.mae_naive},
            "by_frequency": self.by_frequency,
        }


def backtest_arrays(model: str, x, t_x, T, actual, horizon: float, calibration_end: date, max_bucket: int = 7) -> Backtest:
    """Fit on the calibration history (x, t_x, T) and compare with ``actual`` purchases in the holdout."""
    fit = fit_counts(model, x, t_x, T)
    predicted = expected_purchases(model, fit.params, horizon, x, t_x, T)
    naive = naive_forecast(x, T, horizon)
    rows = []
    bucket = np.minimum(x, max_bucket)
    for k in range(max_bucket + 1):
        sel = bucket == k
        if not sel.any():
            continue
        rows.append({"frequency": f"{k}+" if k == max_bucket else str(k), "customers": int(sel.sum()),
                     "actual": float(actual[sel].mean()), "predicted": float(predicted[sel].mean()),
                     "naive": float(naive[sel].mean())})
    return Backtest(calibration_end=calibration_end, holdout_days=int(horizon), fit=fit, customers=int(len(x)),
                    actual_total=float(actual.sum()), predicted_total=float(predicted.sum()),
                    naive_total=float(naive.sum()), mae_model=float(np.abs(predicted - actual).mean()),
                    mae_naive=float(np.abs(naive - actual).mean()), by_frequency=rows)


def backtest_command(config: LoadedConfig, model: str, calibration_end: date, holdout_days: int) -> Backtest:
    """Fit on the mirror as of ``calibration_end`` and compare with purchase days in the following
    ``holdout_days`` (customers who had bought by ``calibration_end``)."""
    before = _mirror_features(config, calibration_end)
    after = _mirror_features(config, calibration_end + timedelta(days=holdout_days))
    buyer, x, t_x, T = history(before)
    keep = buyer & (T > 0)
    ids = before.get_column("id").filter(pl.Series(keep))
    later = (
        pl.DataFrame({"id": ids, "_before": before.get_column("purchase_days").filter(pl.Series(keep))})
        .join(after.select("id", "purchase_days"), on="id", how="left")
        .select((pl.col("purchase_days").fill_null(pl.col("_before")) - pl.col("_before")).clip(0).cast(pl.Float64))
        .to_series()
        .to_numpy()
    )
    return backtest_arrays(model, x[keep], t_x[keep], T[keep], later, float(holdout_days), calibration_end)
