"""Predictions in the cycle: rules on p_alive, refit at most daily, report, the `model` commands, small portals."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import polars as pl
import sqlalchemy as sa

from connector.pipeline import compute, open_store, sync
from connector.store import model_fits, runs
from rules.predict.models import p_alive

AS_OF = date(2026, 11, 23)
RULE = """
[[segment]]
name = "risky"
when = "p_alive < 0.3 and monetary > 50000"
"""


def synthetic_portal(ws, n: int = 800, seed: int = 5, last_day: date = AS_OF) -> None:
    """Contacts buying as an MBG/NBD process (days): rate ~ Gamma(0.9, 1/45), drop-out p ~ Beta(0.8, 3)
    after every purchase, first purchase 20-720 days before AS_OF; order values around a per-customer mean."""
    rng = np.random.default_rng(seed)
    contacts, deals = [], []
    deal_id = 0
    for cid in range(1, n + 1):
        contacts.append({"id": cid, "name": f"C{cid}", "created_at": (AS_OF - timedelta(days=800)).isoformat()})
        lam, p = rng.gamma(0.9, 1 / 45), rng.beta(0.8, 3)
        mean_order = rng.gamma(3, 6000)
        day = AS_OF - timedelta(days=int(rng.integers(20, 721)))
        while day <= last_day:
            deal_id += 1
            deals.append({"id": deal_id, "contact_id": cid, "status": "won",
                          "amount": round(float(rng.gamma(4, mean_order / 4)), 2), "closed_at": day.isoformat()})
            if rng.random() < p:
                break
            day += timedelta(days=max(1, int(np.ceil(rng.exponential(1 / lam)))))
    contacts.append({"id": n + 1, "name": "prospect"})  # never bought: predictions stay null
    ws.write_contacts(contacts)
    ws.write_deals(deals)


def small_portal(ws, buyers: int = 40) -> None:
    contacts, deals = [], []
    for cid in range(1, buyers + 1):
        contacts.append({"id": cid})
        for k in range(1 + cid % 3):
            deals.append({"id": cid * 10 + k, "contact_id": cid, "status": "won", "amount": 60000,
                          "closed_at": (AS_OF - timedelta(days=30 + 40 * k + cid)).isoformat()})
    ws.write_contacts(contacts)
    ws.write_deals(deals)


def rows(config, table):
    store = open_store(config)
    try:
        with store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.id)).mappings()]
    finally:
        store.close()


def test_a_rule_on_p_alive_selects_exactly_the_customers_the_stored_model_scores_low(ws):
    synthetic_portal(ws)
    config = ws.config(RULE)
    result = sync(config, as_of=AS_OF)
    pred = result.summary()["predictions"]
    assert pred["usable"] and pred["origin"] == "fitted" and pred["counts"]["converged"]
    assert pred["segments_using"] == ["risky"]
    fits = rows(config, model_fits)
    assert len(fits) == 1 and fits[0]["run_id"] == result.run_id and fits[0]["usable"]
    assert json.loads(rows(config, runs)[-1]["stats"])["predictions"]["counts"]["params"] == pred["counts"]["params"]

    # Recompute P(alive) independently from the stored parameters and the features.
    feats = result.computation.features
    params = pred["counts"]["params"]
    buyers = feats.filter(pl.col("purchase_days") >= 1)
    x = buyers["purchase_days"].to_numpy() - 1.0
    T = buyers["first_purchase_days"].to_numpy().astype(float)
    t_x = T - buyers["recency_days"].to_numpy()
    want_alive = p_alive("mbgnbd", params, x, t_x, T)
    np.testing.assert_allclose(buyers["p_alive"].to_numpy(), want_alive, rtol=1e-12)
    want = set(buyers.filter(pl.Series(want_alive < 0.3) & (pl.col("monetary") > 50000))["id"].to_list())
    assert want and set(result.computation.members("risky")) == want
    # every prediction column is there; the prospect has nulls
    prospect = feats.filter(pl.col("purchases") == 0).row(0, named=True)
    assert all(prospect[c] is None for c in ("p_alive", "exp_purchases_90d", "p_buy_30d", "clv_365d"))
    some = buyers.row(0, named=True)
    assert 0 <= some["p_buy_30d"] <= 1 and some["exp_purchases_365d"] >= some["exp_purchases_90d"] >= some["exp_purchases_30d"]
    assert some["exp_order_value"] > 0 and some["clv_365d"] >= 0


def test_the_model_is_refitted_at_most_daily_and_features_come_from_stored_parameters(ws):
    synthetic_portal(ws, n=500)
    config = ws.config(RULE)
    first = sync(config, as_of=AS_OF)
    again = sync(config, as_of=AS_OF)
    assert again.summary()["predictions"]["origin"] == "stored"
    assert len(rows(config, model_fits)) == 1
    by_id = lambda r: r.computation.features.sort("id")["p_alive"].to_list()  # noqa: E731
    assert by_id(again) == by_id(first)
    nxt = sync(config, as_of=AS_OF + timedelta(days=1))
    assert nxt.summary()["predictions"]["origin"] == "fitted"
    assert len(rows(config, model_fits)) == 2
    weekly = ws.config(RULE + "\n[predictions]\nrefit_days = 7\n")
    later = sync(weekly, as_of=AS_OF + timedelta(days=5))
    assert later.summary()["predictions"]["origin"] == "stored" and len(rows(config, model_fits)) == 2


def test_report_shows_the_fit_summary_and_the_p_alive_distribution(ws):
    synthetic_portal(ws, n=500)
    sync(ws.config(), as_of=AS_OF)  # no rule uses predictions: nothing is fitted
    ws.config(RULE)
    table = " ".join(ws.cli("report", "--as-of", AS_OF.isoformat()).stdout.split())
    assert "Predictions: MBG/NBD fitted on 2026-11-23 (fitted for this report)" in table
    assert "P(alive) of" in table and "0.9-1" in table
    data = ws.report_json("--as-of", AS_OF.isoformat())
    assert data["predictions"]["usable"] and sum(data["predictions"]["p_alive"]["histogram"].values()) == 500
    assert data["segments"]["risky"] > 0
    assert not rows(ws.config(RULE), model_fits)  # report never stores a fit


def test_a_portal_with_too_few_repeat_buyers_gets_null_predictions_and_says_why(ws):
    small_portal(ws)
    config = ws.config(RULE)
    result = sync(config, as_of=AS_OF)  # does not crash
    pred = result.summary()["predictions"]
    assert not pred["usable"] and "too few repeat buyers" in pred["reason"]
    assert result.computation.counts["risky"] == 0
    assert result.computation.features["p_alive"].null_count() == result.computation.features.height
    table = " ".join(ws.cli("report", "--as-of", AS_OF.isoformat()).stdout.split())
    assert "Predictions unavailable: too few repeat buyers to fit a model: 27 customers bought on two or more days, " \
           "at least 50 are needed ([predictions] min_repeat_buyers)" in table
    assert "Segments using them select nobody: risky" in table
    # a lower minimum is a config choice
    lower = ws.config(RULE + "\n[predictions]\nmin_repeat_buyers = 20\n")
    store = open_store(lower)
    try:
        comp = compute(store, lower, AS_OF)
    finally:
        store.close()
    assert comp.predictions is not None and "too few" not in comp.predictions["reason"]


def test_predictions_are_off_unless_used_and_the_predicted_presets_are_off_by_default(ws):
    synthetic_portal(ws, n=300)
    plain = sync(ws.config(), as_of=AS_OF)
    assert "predictions" not in plain.summary() and "p_alive" not in plain.computation.features.columns
    assert not any(n.startswith("predicted.") for n in plain.computation.counts)
    on = ws.config('[segments]\npresets = ["lifecycle", "predicted"]\n[segments.predicted]\nat_risk_max_p_alive = 0.5\n')
    store = open_store(on)
    try:
        comp = compute(store, on, AS_OF)
    finally:
        store.close()
    feats = comp.features
    due = feats.filter(pl.col("p_buy_30d") >= 0.5)["id"].to_list()
    at_risk = feats.filter((pl.col("purchases") >= 2) & (pl.col("recency_days") <= 90) & (pl.col("p_alive") < 0.5))["id"].to_list()
    assert comp.members("predicted.due") == sorted(due) and due
    assert comp.members("predicted.at_risk") == sorted(at_risk) and at_risk


def test_model_fit_cli_on_the_mirror_and_on_a_summary_file(ws):
    synthetic_portal(ws, n=500)
    ws.config()
    sync(ws.config(), as_of=AS_OF)
    out = json.loads(ws.cli("model", "fit", "--as-of", AS_OF.isoformat(), "--format", "json").stdout)
    assert out["model"] == "mbgnbd" and out["converged"] is True and set(out["params"]) == {"r", "alpha", "a", "b"}
    assert out["loglik"] < 0
    table = ws.cli("model", "fit", "--model", "pareto", "--as-of", AS_OF.isoformat()).stdout
    assert "Pareto/NBD fit" in table and "converged: yes" in table
    cdnow = str(ws.root.parent / "cdnow.csv")
    from pathlib import Path

    Path(cdnow).write_text((Path(__file__).parent / "data" / "cdnow_summary.csv").read_text())
    got = json.loads(ws.cli("model", "fit", "--model", "bgnbd", "--summary", cdnow, "--format", "json").stdout)
    assert abs(got["params"]["r"] - 0.243) < 1.5e-3 and abs(got["loglik"] - -9582.4) < 0.1
    bad = ws.root / "bad.csv"
    bad.write_text("frequency,recency\n1,2\n")
    proc = ws.cli("model", "fit", "--summary", str(bad), check=False)
    assert proc.returncode == 2 and "missing column(s) T" in proc.stderr


def test_backtest_compares_the_model_with_the_holdout_and_beats_the_naive_forecast(ws):
    synthetic_portal(ws, n=1500, seed=11)
    ws.config()
    sync(ws.config(), as_of=AS_OF)
    end = AS_OF - timedelta(days=180)
    data = json.loads(ws.cli("model", "backtest", "--calibration-end", end.isoformat(), "--holdout-days", "180",
                             "--format", "json").stdout)
    assert data["converged"] and data["holdout_days"] == 180
    assert data["mae_per_customer"]["model"] < data["mae_per_customer"]["naive"]
    totals = data["totals"]
    assert abs(totals["predicted"] / totals["actual"] - 1) < 0.25
    assert [r["frequency"] for r in data["by_frequency"]][:2] == ["0", "1"]
    assert sum(r["customers"] for r in data["by_frequency"]) == data["customers"]
    table = ws.cli("model", "backtest", "--calibration-end", end.isoformat(), "--holdout-days", "180").stdout
    assert "the model is better" in table and "naive (past rate)" in table
    late = ws.cli("model", "backtest", "--calibration-end", date.today().isoformat(), check=False)
    assert late.returncode == 2 and "holdout period ends after today" in late.stderr


def test_a_campaign_on_a_p_alive_rule_creates_one_call_task_per_member_in_bitrix24(ws):
    """Over HTTP against the Bitrix24 sandbox: the synthetic portal is imported, synced, and the campaign
    on `p_alive < 0.3 and monetary > 50000` creates one task per member, its title showing P(alive)."""
    from sandbox.bitrix24 import running_portal

    synthetic_portal(ws, n=500)
    with running_portal(import_csv=ws.crm, time_scale=50) as portal:
        ws.write_config(RULE + """
[[campaign]]
name = "save"
segment = "risky"
auto_approve = true
responsible = [1]
on_enter = [{ action = "call_task", title = "Call {name}: P(alive) {p_alive:.2f}, 90 days {exp_purchases_90d:.2f}" }]
""", base=f'[crm]\nkind = "bitrix24"\nwebhook_url = "{portal.webhook_url}"\nrequests_per_second = 500\n'
            '[state]\nurl = "sqlite:///state.db"\n')
        from connector.config import load_config

        config = load_config(ws.config_path)
        result = sync(config, as_of=AS_OF)
        members = result.computation.members("risky")
        assert members and result.summary()["actions_created"] == len(members)
        feats = {r["id"]: r for r in result.computation.features.iter_rows(named=True)}
        titles = sorted(t["TITLE"] for t in portal.state()["tasks"])
        want = sorted(f"Call C{cid}: P(alive) {feats[cid]['p_alive']:.2f}, 90 days {feats[cid]['exp_purchases_90d']:.2f}"
                      for cid in members)
        assert titles == want
        assert all(feats[cid]["p_alive"] < 0.3 and feats[cid]["monetary"] > 50000 for cid in members)


def test_fits_are_stored_and_reused_on_postgresql(ws, postgres_url):
    synthetic_portal(ws, n=300)
    base = f'[crm]\nkind = "csv"\npath = "crm"\ntimezone = "Europe/Moscow"\n[state]\nurl = "{postgres_url}"\n'
    ws.write_config(RULE, base=base)
    from connector.config import load_config

    config = load_config(ws.config_path)
    first = sync(config, as_of=AS_OF)
    again = sync(config, as_of=AS_OF)
    assert first.summary()["predictions"]["origin"] == "fitted"
    assert again.summary()["predictions"]["origin"] == "stored"
    fits = rows(config, model_fits)
    assert len(fits) == 1 and fits[0]["fitted_on"] == AS_OF and fits[0]["run_id"] == first.run_id
    assert again.computation.members("risky") == first.computation.members("risky")


def test_a_degenerate_fit_is_stored_as_unusable_reported_and_never_used(ws):
    # 60 customers bought 100 and 70 days ago, 20 only 100 days ago: no spread of rates to estimate.
    contacts, deals = [], []
    for cid in range(1, 81):
        contacts.append({"id": cid})
        deals.append({"id": cid * 10, "contact_id": cid, "status": "won", "amount": 70000,
                      "closed_at": (AS_OF - timedelta(days=100)).isoformat()})
        if cid <= 60:
            deals.append({"id": cid * 10 + 1, "contact_id": cid, "status": "won", "amount": 70000,
                          "closed_at": (AS_OF - timedelta(days=70)).isoformat()})
    ws.write_contacts(contacts)
    ws.write_deals(deals)
    config = ws.config(RULE)
    result = sync(config, as_of=AS_OF)
    pred = result.summary()["predictions"]
    assert not pred["usable"] and "degenerate fit" in pred["reason"]
    assert result.computation.counts["risky"] == 0
    assert result.computation.features["p_alive"].null_count() == 80
    fits = rows(config, model_fits)
    assert len(fits) == 1 and not fits[0]["usable"]
    table = " ".join(ws.cli("report", "--as-of", AS_OF.isoformat()).stdout.split())
    assert "Predictions unavailable: the mbgnbd fit is not usable: degenerate fit" in table
    proc = ws.cli("model", "fit", "--as-of", AS_OF.isoformat(), "--format", "json", check=False)
    assert proc.returncode == 1 and "the fit is not usable: degenerate fit" in proc.stderr
    assert json.loads(proc.stdout)["usable"] is False
