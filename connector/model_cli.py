"""``lifecycle model fit|backtest``: fit a prediction model and check it against what happened next."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from rich.console import Console

    from rules.predict.models import Fit

# rules.predict.models' MODELS and COUNT_MODELS, named here so that building the parser (``lifecycle --help``)
# does not load numpy and scipy; tests/test_fast_start.py checks they stay equal
MODELS = ("mbgnbd", "bgnbd", "pareto", "gammagamma")
COUNT_MODELS = ("mbgnbd", "bgnbd", "pareto")


def add_model_parser(sub: Any, with_config: Callable[[argparse.ArgumentParser], None], as_of_type: Callable) -> None:
    model = sub.add_parser("model", help="prediction model (P(alive), expected purchases): fit it or backtest it")
    msub = model.add_subparsers(dest="model_command", required=True)
    fit = msub.add_parser("fit", help="fit on the portal's mirror, or on a summary file, and print the parameters")
    with_config(fit)
    fit.add_argument("--model", choices=MODELS, help="default: [predictions] model, else mbgnbd")
    fit.add_argument("--summary", metavar="FILE.csv",
                     help="fit on this file (columns frequency,recency,T[,monetary_value], any time unit) instead")
    fit.add_argument("--as-of", type=as_of_type, help="fit on the mirror as of this date (YYYY-MM-DD); default today")
    fit.add_argument("--format", choices=("table", "json"), default="table")
    bt = msub.add_parser("backtest", help="fit on the mirror as of a date, compare with the purchases that followed")
    with_config(bt)
    bt.add_argument("--model", choices=COUNT_MODELS, help="default: [predictions] model, else mbgnbd")
    bt.add_argument("--calibration-end", type=as_of_type, required=True, help="fit on the history up to this date")
    bt.add_argument("--holdout-days", type=int, default=90, help="compare over this many days after it (default 90)")
    bt.add_argument("--format", choices=("table", "json"), default="table")


def run_model(args: argparse.Namespace, out: Console) -> int:
    from rules.predict.models import FitError

    from connector.config import load_config
    from connector.predictions import backtest_command, fit_command
    from connector.pipeline import today_in

    config = None
    if not (args.model_command == "fit" and args.summary):
        from connector import logs

        config = load_config(args.config)
        logs.register_secrets(logs.secrets_of(config.settings))
    model = args.model or (config.settings.predictions.model if config else "mbgnbd")
    try:
        if args.model_command == "fit":
            as_of = None if args.summary else (args.as_of or today_in(config.crm.timezone))
            fit = fit_command(config, model, args.summary, as_of)
            _print_fit(fit, args.format, out, unit="the file's time unit" if args.summary else "days")
            if not fit.usable:
                print(f"error: the fit is not usable: {fit.message}", file=sys.stderr)
                return 1
            return 0
        if args.holdout_days < 1:
            raise ValueError("--holdout-days must be 1 or more")
        today = today_in(config.crm.timezone)
        if args.calibration_end + timedelta(days=args.holdout_days) > today:
            raise ValueError(f"the holdout period ends after today ({today}); choose an earlier --calibration-end "
                             "or fewer --holdout-days")
        result = backtest_command(config, model, args.calibration_end, args.holdout_days)
        _print_backtest(result, args.format, out)
        if not result.fit.usable:
            print(f"error: the fit is not usable: {result.fit.message}", file=sys.stderr)
            return 1
        return 0
    except (FitError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _print_fit(fit: Fit, fmt: str, out: Console, unit: str) -> None:
    from rich.table import Table

    from rules.predict.models import TITLES

    if fmt == "json":
        loglik = fit.loglik if fit.loglik == fit.loglik and abs(fit.loglik) != float("inf") else None
        print(json.dumps({"model": fit.model, "params": fit.params, "loglik": loglik, "converged": fit.converged,
                          "usable": fit.usable, "customers": fit.customers, "message": fit.message}))
        return
    table = Table(title=f"{TITLES[fit.model]} fit")
    table.add_column("parameter")
    table.add_column("value", justify="right")
    for name, value in fit.params.items():
        table.add_row(name, f"{value:.4f}")
    out.print(table)
    what = "distinct (frequency, value) rows" if fit.model == "gammagamma" else f"distinct histories; time in {unit}"
    out.print(f"{fit.customers} customers ({fit.rows} {what})")
    out.print(f"log-likelihood {fit.loglik:.2f}; converged: {'yes' if fit.converged else 'no'}"
              + (f"; {fit.message}" if fit.message else ""))


def _print_backtest(result: Any, fmt: str, out: Console) -> None:
    from rich.table import Table

    from rules.predict.models import TITLES

    if fmt == "json":
        print(json.dumps(result.as_dict()))
        return
    fit = result.fit
    out.print(f"{TITLES[fit.model]} fitted on {result.customers} customers who had bought by {result.calibration_end}: "
              + ", ".join(f"{k} {v:.4g}" for k, v in fit.params.items())
              + f"; log-likelihood {fit.loglik:.2f}; converged: {'yes' if fit.converged else 'no'}")
    table = Table(title=f"Purchase days in the {result.holdout_days} days after {result.calibration_end}, "
                        "mean per customer by purchase days before it (repeat purchases)")
    for col in ("repeat purchases", "customers", "actual", "model", "naive (past rate)"):
        table.add_column(col, justify="right")
    for row in result.by_frequency:
        table.add_row(row["frequency"], str(row["customers"]), f"{row['actual']:.3f}", f"{row['predicted']:.3f}",
                      f"{row['naive']:.3f}")
    table.add_row("total", str(result.customers), f"{result.actual_total:.0f}", f"{result.predicted_total:.1f}",
                  f"{result.naive_total:.1f}", style="bold")
    out.print(table)
    better = result.mae_model < result.mae_naive
    out.print(f"mean absolute error per customer: model {result.mae_model:.4f}, naive {result.mae_naive:.4f} "
              f"({'the model is better' if better else 'the model is NOT better than the naive forecast'})")
