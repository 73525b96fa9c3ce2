"""Benchmark of the predictions: fit plus scoring of every customer of a synthetic MBG/NBD base.

    python bench/predictions.py --customers 1000000 [--model mbgnbd] [--seed 1] [--json]

The base is drawn from a known MBG/NBD process in days (r 0.8, alpha 60, a 0.9, b 4.0; first purchase
30-1095 days ago; order values from a Gamma-Gamma process), as a feature frame shaped like
``rules.features.compute_features``'s output. Timed, as the daily sync does it: ``fit_portal`` (the count
model plus Gamma-Gamma on order values, compressed to unique rows) and ``score`` (every prediction column
for every customer). Also printed: the recovered parameters against the true ones, and the mean absolute
error of ``exp_purchases_90d`` against the purchases the same process makes in the next 90 days, next to
the naive "buys at their past rate" forecast. Peak RSS is the process's ``ru_maxrss`` (the generation
included). Times are wall-clock; the process's CPU time is printed next to them because the machine
may be shared.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rules.predict.scoring import PredictionSettings, fit_portal, naive_forecast, score  # noqa: E402

TRUE = {"r": 0.8, "alpha": 60.0, "a": 0.9, "b": 4.0}
SPEND = {"p": 6.0, "q": 4.0, "gamma": 3000.0}
HORIZON = 90


def simulate(n: int, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    """A feature frame of ``n`` buyers and their purchase days in the next ``HORIZON`` days."""
    rng = np.random.default_rng(seed)
    r, alpha, a, b = TRUE.values()
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    K = rng.geometric(p) - 1  # repeat purchases before dropping out (MBG: may drop out after the first)
    T = rng.integers(30, 1096, n).astype(float)
    N = rng.poisson(lam * T)
    x = np.minimum(N, K)
    t_x = np.where(x > 0, np.floor(T * rng.beta(np.maximum(x, 1), np.maximum(N - x + 1, 1))), 0.0)
    t_x = np.where(x > 0, np.clip(t_x, 1.0, T), 0.0)
    future = np.where(N < K, np.minimum(rng.poisson(lam * HORIZON), K - N), 0)
    orders = x + 1
    nu = rng.gamma(SPEND["q"], 1.0 / SPEND["gamma"], n)  # per-customer spend rate
    avg_order = rng.gamma(SPEND["p"] * orders, 1.0 / (nu * orders))  # the mean of `orders` Gamma(p, nu) values
    frame = pl.DataFrame({
        "id": np.arange(1, n + 1, dtype=np.int64),
        "purchases": orders.astype(np.int64),
        "purchase_days": orders.astype(np.int64),
        "first_purchase_days": T.astype(np.int64),
        "recency_days": (T - t_x).astype(np.int64),
        "monetary": avg_order * orders,
        "avg_order": avg_order,
    })
    return frame, future.astype(float)


def run(customers: int, model: str, seed: int) -> dict[str, object]:
    t0 = time.perf_counter()
    features, future = simulate(customers, seed)
    generated = time.perf_counter() - t0
    settings = PredictionSettings(model=model)
    t1, c1 = time.perf_counter(), time.process_time()
    fitted = fit_portal(features, date(2026, 11, 26), settings)
    t2, c2 = time.perf_counter(), time.process_time()
    scored = score(features, fitted, settings)
    t3, c3 = time.perf_counter(), time.process_time()
    assert fitted.counts is not None
    predicted = scored.get_column("exp_purchases_90d").to_numpy()
    x = features.get_column("purchase_days").to_numpy() - 1.0
    T = features.get_column("first_purchase_days").to_numpy().astype(float)
    naive = naive_forecast(x, T, HORIZON)
    nulls = {c: scored.get_column(c).null_count() for c in ("p_alive", "exp_purchases_90d", "p_buy_30d", "clv_365d")}
    return {
        "customers": customers,
        "model": model,
        "generate_s": round(generated, 2),
        "fit_s": round(t2 - t1, 2),
        "score_s": round(t3 - t2, 2),
        "fit_and_score_s": round(t3 - t1, 2),
        "fit_cpu_s": round(c2 - c1, 2),  # CPU time of this process (the machine is shared)
        "score_cpu_s": round(c3 - c2, 2),
        "fit_and_score_cpu_s": round(c3 - c1, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rows_fitted": fitted.counts.rows,
        "converged": fitted.counts.converged,
        "usable": fitted.usable,
        "params": {k: round(v, 4) for k, v in fitted.counts.params.items()},
        "true_params": TRUE if model == "mbgnbd" else None,
        "spend_params": {k: round(v, 4) for k, v in fitted.spend.params.items()} if fitted.spend else None,
        "true_spend_params": SPEND,
        "holdout_days": HORIZON,
        "holdout_actual_total": float(future.sum()),
        "holdout_predicted_total": round(float(np.nansum(predicted)), 1),
        "mae_model": round(float(np.abs(predicted - future).mean()), 5),
        "mae_naive": round(float(np.abs(naive - future).mean()), 5),
        "nulls": nulls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--model", choices=("mbgnbd", "bgnbd", "pareto"), default="mbgnbd")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.customers, args.model, args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
