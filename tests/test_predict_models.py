"""The prediction models against the published CDNOW results, high-precision references and a synthetic base.

CDNOW: tests/data/cdnow_summary.csv (see tests/data/README.md). "To 3 decimals" follows the published
tests' convention: |fitted - published| < 1.5e-3 (numpy's assert_array_almost_equal, decimal=3).
"""

from __future__ import annotations

from pathlib import Path

import mpmath as mp
import numpy as np
import pytest

from rules.predict import models as M
from rules.predict.scoring import naive_forecast

DATA = Path(__file__).parent / "data" / "cdnow_summary.csv"


@pytest.fixture(scope="module")
def cdnow():
    d = np.genfromtxt(DATA, delimiter=",", names=True)
    return d["frequency"], d["recency"], d["T"], d["monetary_value"]


def close_to(fit: M.Fit, expected: tuple[float, ...], decimals: int) -> None:
    got = np.array(list(fit.params.values()))
    assert np.all(np.abs(got - np.array(expected)) < 1.5 * 10.0 ** -decimals), (fit.params, expected)


def test_cdnow_has_the_published_shape(cdnow):
    x, t_x, T, m = cdnow
    assert len(x) == 2357
    assert int((x > 0).sum()) == 946


def test_bgnbd_matches_fader_hardie_lee_on_cdnow(cdnow):
    fit = M.fit_counts("bgnbd", *cdnow[:3])
    assert fit.converged and fit.usable and not fit.degenerate
    close_to(fit, (0.243, 4.414, 0.793, 2.426), 3)
    assert abs(fit.loglik - -9582.4) <= 0.1
    assert fit.customers == 2357 and fit.rows < 2357  # compressed to unique rows


def test_mbgnbd_matches_btydplus_on_cdnow(cdnow):
    fit = M.fit_counts("mbgnbd", *cdnow[:3])
    assert fit.usable
    close_to(fit, (0.525, 6.183, 0.891, 1.614), 3)
    assert abs(fit.loglik - -9582.13) < 0.05


def test_pareto_nbd_matches_the_published_fit_on_cdnow(cdnow):
    fit = M.fit_counts("pareto", *cdnow[:3])
    assert fit.usable
    close_to(fit, (0.553, 10.578, 0.606, 11.669), 3)
    assert abs(fit.loglik - -9595.0) < 0.1


def test_gamma_gamma_matches_the_published_fit_on_cdnow_repeat_buyers(cdnow):
    x, _, _, m = cdnow
    fit = M.fit_gammagamma(x[x > 0], m[x > 0])
    assert fit.usable and fit.customers == 946
    close_to(fit, (6.25, 3.74, 15.44), 2)


def test_bgnbd_conditional_expectation_matches_the_paper_example():
    params = dict(r=0.243, alpha=4.414, a=0.793, b=2.426)
    value = M.expected_purchases("bgnbd", params, 39, 2, 30.43, 38.86)
    assert abs(float(value) - 1.226) <= 0.001


def test_mbgnbd_gives_one_purchase_customers_p_alive_below_one(cdnow):
    x, t_x, T, _ = cdnow
    mbg = M.fit_counts("mbgnbd", x, t_x, T)
    bg = M.fit_counts("bgnbd", x, t_x, T)
    assert np.all(M.p_alive("bgnbd", bg.params, x[x == 0], t_x[x == 0], T[x == 0]) == 1.0)
    once = M.p_alive("mbgnbd", mbg.params, x[x == 0], t_x[x == 0], T[x == 0])
    assert np.all((once > 0.35) & (once < 0.45))


def test_per_customer_log_likelihoods_match_the_published_references():
    params = (0.25, 4.0, 0.8, 2.5)
    x, t_x, T = np.array([0.0, 200.0]), np.array([0.0, 38.0]), np.array([40.0, 40.0])
    np.testing.assert_allclose(M.ll_bgnbd(params, x, t_x, T), [-0.59947382, 100.7957], rtol=1e-6)
    np.testing.assert_allclose(M.ll_mbgnbd(params, x, t_x, T), [-0.41792826, 100.7869], rtol=1e-6)


# -- numerically hard inputs against mpmath ----------------------------------------------------------

mp.mp.dps = 60


def mp_bg_expected(r, alpha, a, b, t, x, t_x, T, modified=False):
    r, alpha, a, b, t, x, t_x, T = (mp.mpf(v) for v in (r, alpha, a, b, t, x, t_x, T))
    shift = 1 if modified else 0
    c = a + b + x - 1 + shift
    z = t / (alpha + T + t)
    head = c / (a - 1) * (1 - mp.power((alpha + T) / (alpha + T + t), r + x) * mp.hyp2f1(r + x, b + x + shift, c, z))
    if modified:
        odds = a / (b + x) * mp.power((alpha + T) / (alpha + t_x), r + x)
    else:
        odds = (a / (b + x - 1) * mp.power((alpha + T) / (alpha + t_x), r + x)) if x > 0 else 0
    return head / (1 + odds), 1 / (1 + odds)


def mp_pareto(r, alpha, s, beta, x, t_x, T):
    r, alpha, s, beta, x, t_x, T = (mp.mpf(v) for v in (r, alpha, s, beta, x, t_x, T))
    big, q = (alpha, s + 1) if alpha >= beta else (beta, r + x)
    rsx = r + s + x

    def F(u):
        return mp.hyp2f1(rsx, q, rsx + 1, abs(alpha - beta) / (big + u)) / mp.power(big + u, rsx)

    A0 = F(t_x) - F(T)
    L = mp.gamma(r + x) * mp.power(alpha, r) * mp.power(beta, s) / mp.gamma(r) * (
        mp.power(alpha + T, -(r + x)) * mp.power(beta + T, -s) + s / rsx * A0)
    alive = 1 / (1 + s / rsx * mp.power(alpha + T, r + x) * mp.power(beta + T, s) * A0)
    return mp.log(L), alive


def test_negative_hypergeometric_case_is_finite_and_exact():
    # lifetimes issue #302: a + b + x - 1 < 0 makes 2F1 negative; taking its log gave NaN.
    params = dict(r=0.11, alpha=2.24, a=0.31, b=0.50)
    got = float(M.expected_purchases("bgnbd", params, 30, 0, 0, 1))
    want, _ = mp_bg_expected(0.11, 2.24, 0.31, 0.50, 30, 0, 0, 1)
    assert np.isfinite(got) and abs(got - 0.564589) < 1e-6
    assert got == pytest.approx(float(want), rel=1e-10)


@pytest.mark.parametrize("x,t_x,T", [(300.0, 5.0, 500.0), (500.0, 1.0, 1000.0), (1200.0, 30.0, 1500.0)])
def test_p_alive_overflow_cases_are_finite_and_exact(x, t_x, T):
    # lifetimes issues #332 / PR #113: ((alpha+T)/(alpha+t_x))^(r+x) overflows for frequent customers.
    params = dict(r=0.243, alpha=4.414, a=0.793, b=2.426)
    for model in ("bgnbd", "mbgnbd"):
        got = float(M.p_alive(model, params, x, t_x, T))
        _, want = mp_bg_expected(*params.values(), 30, x, t_x, T, modified=(model == "mbgnbd"))
        assert np.isfinite(got)
        assert got == pytest.approx(float(want), rel=1e-9, abs=1e-300)
        e = float(M.expected_purchases(model, params, 30, x, t_x, T))
        assert np.isfinite(e) and e >= 0


@pytest.mark.parametrize("x,t_x,T", [(0.0, 0.0, 20.0), (350.0, 38.0, 39.0), (600.0, 100.0, 120.0)])
@pytest.mark.parametrize("params", [(0.553, 10.578, 0.606, 11.669), (0.553, 11.669, 0.606, 10.578)])
def test_pareto_high_frequency_is_finite_and_exact(x, t_x, T, params):
    # lifetimes issue #25 / PR #90: A0 underflowed to 0 and P(alive) became inf * 0 = NaN.
    names = ("r", "alpha", "s", "beta")
    ll = float(M.ll_pareto(params, np.array([x]), np.array([t_x]), np.array([T]))[0])
    alive = float(M.p_alive("pareto", dict(zip(names, params)), x, t_x, T))
    want_ll, want_alive = mp_pareto(*params, x, t_x, T)
    assert np.isfinite(ll) and np.isfinite(alive)
    assert ll == pytest.approx(float(want_ll), rel=1e-9)
    assert alive == pytest.approx(float(want_alive), rel=1e-8, abs=1e-300)
    # PR #90: the conditional expectation overflowed through exp(likelihood) for such customers
    r, a, s, b = (mp.mpf(v) for v in params)
    want_e = want_alive * (r + x) / (a + T) * (b + T) / (s - 1) * (1 - ((b + T) / (b + T + 39)) ** (s - 1))
    e = float(M.expected_purchases("pareto", dict(zip(names, params)), 39, x, t_x, T))
    assert np.isfinite(e) and e == pytest.approx(float(want_e), rel=1e-8, abs=1e-300)


def test_expected_purchases_match_mpmath_across_customers(cdnow):
    x, t_x, T, _ = cdnow
    params = dict(r=0.525, alpha=6.183, a=0.891, b=1.614)
    rows = [0, 1, 5, 17, 101, 1500]
    got = M.expected_purchases("mbgnbd", params, 52, x[rows], t_x[rows], T[rows])
    want = [float(mp_bg_expected(*params.values(), 52, x[i], t_x[i], T[i], modified=True)[0]) for i in rows]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_bad_input_gets_a_clear_error():
    with pytest.raises(M.FitError, match="recency must be between 0 and T"):
        M.fit_counts("mbgnbd", [1, 2], [5, 1], [4, 3])
    with pytest.raises(M.FitError, match="unknown model"):
        M.fit_counts("bgf", [1], [1], [2])


def test_a_degenerate_fit_is_reported_not_used():
    # Nobody ever came back: refused outright.
    with pytest.raises(M.FitError, match="no customer has a repeat purchase"):
        M.fit_counts("mbgnbd", np.zeros(500), np.zeros(500), np.linspace(10, 400, 500))
    # One repeat purchase in 500 customers: the purchase rate runs off towards zero.
    x = np.zeros(500)
    x[0] = 1
    t_x = np.where(x > 0, 5.0, 0.0)
    fit = M.fit_counts("mbgnbd", x, t_x, np.linspace(10, 400, 500))
    assert not fit.usable
    assert fit.degenerate and "degenerate" in fit.message


# -- synthetic MBG/NBD base -------------------------------------------------------------------------


def simulate_mbgnbd(n, r, alpha, a, b, horizon, seed=1):
    """Customers of a known MBG/NBD process (days): history over (0, T] and purchases in (T, T + horizon].

    lambda ~ Gamma(r, 1/alpha), p ~ Beta(a, b); the customer drops out with probability p right after each
    purchase, the first one (at time 0) included, so the number of repeat purchases before dropping out is
    K ~ Geometric(p) - 1. Given N(T) = n Poisson arrivals in (0, T], arrival times are uniform order
    statistics, so the last observed purchase is T * Beta(x, n - x + 1).
    """
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    K = rng.geometric(p) - 1
    T = rng.integers(30, 731, n).astype(float)  # whole days, as the connector sees them
    N = rng.poisson(lam * T)
    x = np.minimum(N, K)
    t_x = np.where(x > 0, T * rng.beta(np.maximum(x, 1), np.maximum(N - x + 1, 1)), 0.0)
    alive = N < K
    future = np.where(alive, np.minimum(rng.poisson(lam * horizon), K - N), 0)
    return x.astype(float), np.floor(t_x), T, future.astype(float)


def test_fit_recovers_a_known_mbgnbd_process_and_beats_the_naive_forecast():
    true = dict(r=0.8, alpha=60.0, a=0.9, b=4.0)
    x, t_x, T, future = simulate_mbgnbd(60_000, *true.values(), horizon=180)
    fit = M.fit_counts("mbgnbd", x, t_x, T)
    assert fit.usable
    for name, value in true.items():  # tolerance: 10 % of each parameter at 60,000 customers
        assert abs(fit.params[name] / value - 1) < 0.10, (name, fit.params)
    predicted = M.expected_purchases("mbgnbd", fit.params, 180, x, t_x, T)
    naive = naive_forecast(x, T, 180)
    assert abs(predicted.sum() / future.sum() - 1) < 0.05
    mae_model, mae_naive = np.abs(predicted - future).mean(), np.abs(naive - future).mean()
    assert mae_model < mae_naive


def test_the_bench_runs_end_to_end_on_a_small_base():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_predictions", DATA.parents[2] / "bench" / "predictions.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(20_000, "mbgnbd", seed=3)
    assert result["usable"] and result["converged"]
    assert all(n == 0 for n in result["nulls"].values())
    assert result["mae_model"] < result["mae_naive"]
    for name, value in bench.TRUE.items():  # 20,000 customers: within 20 %
        assert abs(result["params"][name] / value - 1) < 0.20


def test_pareto_expectation_and_p_buy_match_integration_and_simulation():
    params = dict(r=0.553, alpha=10.578, s=0.606, beta=11.669)
    x, t_x, T, t = 3.0, 20.0, 38.0, 26.0
    alive = float(M.p_alive("pareto", params, x, t_x, T))
    r, a, s, b = (mp.mpf(v) for v in params.values())
    # E[X(t) | alive] = E[lambda] * integral_0^t E[exp(-mu u)] du (lambda ~ Gamma(r+x, alpha+T), mu ~ Gamma(s, beta+T))
    want = alive * float((r + x) / (a + T) * mp.quad(lambda u: ((b + T) / (b + T + u)) ** s, [0, t]))
    assert float(M.expected_purchases("pareto", params, t, x, t_x, T)) == pytest.approx(want, rel=1e-10)
    # P(a purchase within h) = E[lambda / (lambda + mu) (1 - exp(-(lambda + mu) h))] * P(alive): by simulation
    rng = np.random.default_rng(0)
    lam = rng.gamma(0.553 + x, 1 / (10.578 + T), 400_000)
    mu = rng.gamma(0.606, 1 / (11.669 + T), 400_000)
    simulated = alive * float(np.mean(lam / (lam + mu) * -np.expm1(-(lam + mu) * t)))
    assert float(M.p_buy_within("pareto", params, t, x, t_x, T)) == pytest.approx(simulated, abs=3e-3)


@pytest.mark.parametrize("model", ["mbgnbd", "bgnbd", "pareto"])
def test_every_model_scores_every_buyer_with_sane_values(model):
    import importlib.util
    from datetime import date

    import polars as pl

    from rules.predict.scoring import PredictionSettings, fit_portal, score

    spec = importlib.util.spec_from_file_location("bench_predictions", DATA.parents[2] / "bench" / "predictions.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    features, _ = bench.simulate(4000, seed=9)
    settings = PredictionSettings(model=model)
    fitted = fit_portal(features, date(2026, 11, 26), settings)
    assert fitted.usable, fitted.reason
    out = score(features, fitted, settings)
    for col in ("p_alive", "exp_purchases_30d", "exp_purchases_90d", "exp_purchases_365d", "p_buy_30d",
                "exp_order_value", "clv_365d"):
        assert out[col].null_count() == 0, col
    assert out.select(((pl.col("p_alive") >= 0) & (pl.col("p_alive") <= 1)).all()).item()
    assert out.select(((pl.col("p_buy_30d") >= 0) & (pl.col("p_buy_30d") <= pl.col("p_alive"))).all()).item()
    assert out.select((pl.col("exp_purchases_30d") <= pl.col("exp_purchases_90d")).all()).item()
    assert out.select((pl.col("exp_purchases_90d") <= pl.col("exp_purchases_365d")).all()).item()
    # next purchase: empty exactly below the P(alive) floor
    low = out.filter(pl.col("p_alive") < settings.next_purchase_min_p_alive)
    assert low["next_purchase_median_days"].null_count() == low.height
    assert out.filter(pl.col("p_alive") >= settings.next_purchase_min_p_alive)["next_purchase_median_days"].null_count() == 0
    # discounting lowers clv_365d by at most the full year's rate
    discounted = score(features, fitted, PredictionSettings(model=model, annual_discount_rate=0.2))
    ratio = (discounted["clv_365d"] / out["clv_365d"]).drop_nans().drop_nulls()
    assert ratio.min() > 1 / 1.2 and ratio.max() < 1.0
