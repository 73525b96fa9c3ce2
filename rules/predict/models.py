"""Buy-till-you-die models: MBG/NBD, BG/NBD and Pareto/NBD for purchase counts, Gamma-Gamma for order value.

Written from the papers, with numpy and scipy only:

* BG/NBD: Fader, Hardie & Lee (2005), "Counting your customers the easy way", Marketing Science 24(2),
  eq. 6 (likelihood), eq. 10 (conditional expectation); Hardie's note 021 (P(alive)).
* MBG/NBD: Batislam, Denizel & Filiztekin (2007), IJRM 24(3), Appendix A: a customer may also drop out
  right after the first purchase, so one-purchase customers do not get P(alive) = 1.
* Pareto/NBD: Schmittlein, Morrison & Colombo (1987); the likelihood in Fader & Hardie's implementation
  note, with the Gauss hypergeometric term A0.
* Gamma-Gamma: Fader, Hardie & Lee (2005), "RFM and CLV: using iso-value curves", and Fader & Hardie's
  note 025 on the Gamma-Gamma spend model.

Notation: ``x`` repeat purchases, ``t_x`` time of the last purchase, ``T`` time since the first purchase,
all in one unit (the caller's; the connector uses days).

Numerics (see /work/shared/research/wave2-engine-and-science.md, 2.4): likelihoods in log space;
P(alive) as ``exp(-logaddexp(0, log term))`` (never overflows); the Gauss hypergeometric function is used in signed
form (it is legitimately negative when its third argument is), with Euler's transformation only where
the direct value overflows; fits on log-parameters over customers compressed to unique (x, t_x, T) rows
with counts as weights. A fit reports its log-likelihood and whether it converged; a fit on a degenerate
corner (a parameter at the bound of the search box) is marked ``usable = False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import optimize, special

LOG_BOUND = 18.0  # parameters are searched in [e^-18, e^18]; landing on the edge is a degenerate fit
MAX_LOG_SE = 2.0  # a log-parameter whose standard error exceeds this is not pinned down by the data
EXP_CLAMP = 700.0
MODELS = ("mbgnbd", "bgnbd", "pareto", "gammagamma")
COUNT_MODELS = ("mbgnbd", "bgnbd", "pareto")
PARAM_NAMES = {
    "bgnbd": ("r", "alpha", "a", "b"),
    "mbgnbd": ("r", "alpha", "a", "b"),
    "pareto": ("r", "alpha", "s", "beta"),
    "gammagamma": ("p", "q", "gamma"),
}
TITLES = {"bgnbd": "BG/NBD", "mbgnbd": "MBG/NBD", "pareto": "Pareto/NBD", "gammagamma": "Gamma-Gamma"}


class FitError(ValueError):
    """The data cannot be fitted (too few customers, bad values); the message says why."""


@dataclass(frozen=True)
class Fit:
    model: str
    params: dict[str, float]
    loglik: float
    converged: bool
    customers: int
    rows: int  # unique (x, t_x, T) rows the likelihood was evaluated on
    iterations: int
    message: str = ""
    degenerate: tuple[str, ...] = ()  # parameters that landed on the edge of the search box

    @property
    def usable(self) -> bool:
        return self.converged and not self.degenerate and math.isfinite(self.loglik)

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "params": dict(self.params),
            "loglik": self.loglik if math.isfinite(self.loglik) else None,
            "converged": self.converged,
            "usable": self.usable,
            "customers": self.customers,
            "rows": self.rows,
            "iterations": self.iterations,
            "message": self.message,
            "degenerate": list(self.degenerate),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Fit:
        return cls(model=str(d["model"]), params={k: float(v) for k, v in dict(d["params"]).items()},
                   loglik=float(d["loglik"]) if d.get("loglik") is not None else float("-inf"), converged=bool(d["converged"]), customers=int(d.get("customers", 0)),
                   rows=int(d.get("rows", 0)), iterations=int(d.get("iterations", 0)), message=str(d.get("message", "")),
                   degenerate=tuple(d.get("degenerate", ())))


# -- special functions ---------------------------------------------------------------------------------


def hyp2f1(a, b, c, z) -> np.ndarray:
    """Gauss 2F1 in signed form for 0 <= z < 1: scipy's value, and Euler's transformation
    ``(1-z)^(c-a-b) 2F1(c-a, c-b; c; z)`` only where the direct value is not finite."""
    a, b, c, z = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (a, b, c, z)))
    out = special.hyp2f1(a, b, c, z)
    bad = ~np.isfinite(out)
    if bad.any():
        ab, bb, cb, zb = a[bad], b[bad], c[bad], z[bad]
        out = np.array(out, dtype=float, copy=True)
        out[bad] = np.exp((cb - ab - bb) * np.log1p(-zb)) * special.hyp2f1(cb - ab, cb - bb, cb, zb)
    return out


def _log_hyp2f1_positive(a, b, c, z) -> np.ndarray:
    """log 2F1 where the function is known positive (Pareto/NBD: c > a > 0, b > 0, 0 <= z < 1);
    when the direct value overflows, the log of Euler's transform (the power factor stays in logs)."""
    a, b, c, z = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (a, b, c, z)))
    direct = special.hyp2f1(a, b, c, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(direct)
    bad = ~np.isfinite(out)
    if bad.any():
        ab, bb, cb, zb = a[bad], b[bad], c[bad], z[bad]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[bad] = (cb - ab - bb) * np.log1p(-zb) + np.log(special.hyp2f1(cb - ab, cb - bb, cb, zb))
    return out


def _sigmoid_of_log(log_term: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(log_term)) without overflow: exp(-log(1 + exp(log_term)))."""
    return np.exp(-np.logaddexp(0.0, log_term))


# -- data preparation ----------------------------------------------------------------------------------


def compress(*columns: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Unique rows of the given equal-length columns and how many customers share each.

    Whole non-negative numbers (days, counts) are packed into one int64 key and sorted once; anything
    else goes through a lexicographic sort."""
    cols = [np.asarray(c, dtype=float) for c in columns]
    n = cols[0].size
    if n == 0:
        return [c.copy() for c in cols], np.zeros(0)
    spans = [int(c.max()) + 1 if np.all(c >= 0) and np.all(c == np.floor(c)) else 0 for c in cols]
    if all(spans) and math.prod(spans) < 2**62:
        key = np.zeros(n, dtype=np.int64)
        for c, span in zip(cols, spans):
            key = key * span + c.astype(np.int64)
        unique, first, counts = np.unique(key, return_index=True, return_counts=True)
        return [c[first] for c in cols], counts.astype(float)
    order = np.lexsort(cols[::-1])
    sorted_cols = [c[order] for c in cols]
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for c in sorted_cols:
        change[1:] |= c[1:] != c[:-1]
    starts = np.flatnonzero(change)
    counts = np.diff(np.append(starts, n)).astype(float)
    return [c[starts] for c in sorted_cols], counts


def check_counts(x, t_x, T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    if not (x.shape == t_x.shape == T.shape):
        raise FitError("frequency, recency and T must have the same length")
    bad = ~(np.isfinite(x) & np.isfinite(t_x) & np.isfinite(T))
    if bad.any():
        raise FitError(f"{int(bad.sum())} rows have a missing or non-numeric frequency, recency or T")
    if (x < 0).any() or (x != np.round(x)).any():
        raise FitError("frequency must be a whole number of repeat purchases, 0 or more")
    if (t_x < 0).any() or (t_x > T + 1e-9).any():
        raise FitError("recency must be between 0 and T (the time of the last purchase since the first)")
    if ((x == 0) & (t_x > 0)).any():
        raise FitError("a customer with frequency 0 must have recency 0")
    if (T <= 0).any():
        raise FitError("T (time since the first purchase) must be greater than 0")
    return x, t_x, T


# -- per-row log-likelihoods ---------------------------------------------------------------------------


def ll_bgnbd(params, x, t_x, T) -> np.ndarray:
    r, alpha, a, b = params
    base = (special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
            + special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x))
    first = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        second = np.where(repeat, np.log(a) - np.log(np.where(repeat, b + x - 1, 1.0)) - (r + x) * np.log(alpha + t_x),
                          -np.inf)
    return base + np.logaddexp(first, second)


def ll_mbgnbd(params, x, t_x, T) -> np.ndarray:
    r, alpha, a, b = params
    base = (special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
            + special.gammaln(a + b) + special.gammaln(b + x + 1) - special.gammaln(b) - special.gammaln(a + b + x + 1))
    first = -(r + x) * np.log(alpha + T)
    second = np.log(a) - np.log(b + x) - (r + x) * np.log(alpha + t_x)
    return base + np.logaddexp(first, second)


_PAIRS: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # (x, u, pairs, inverse), newest last


def _distinct_pairs(x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (x, u) pairs as complex numbers and each row's index into them. A fit evaluates the
    likelihood hundreds of times on the same arrays, so the last few answers are kept (by identity)."""
    for cx, cu, pairs, inverse in _PAIRS:
        if cx is x and cu is u:
            return pairs, inverse
    pairs, inverse = np.unique(x.ravel() + 1j * u.ravel(), return_inverse=True)
    _PAIRS.append((x, u, pairs, inverse))
    del _PAIRS[:-4]
    return pairs, inverse


def _pareto_log_a0(params, x, t_x, T) -> np.ndarray:
    """log A0 = log(F(t_x) - F(T)), F(u) = 2F1(r+s+x, q; r+s+x+1; |alpha-beta|/(max+u)) / (max+u)^(r+s+x)."""
    r, alpha, s, beta = params
    big = alpha if alpha >= beta else beta

    def log_f_direct(xs, u):
        rsx_, q_ = r + s + xs, (s + 1.0 if alpha >= beta else r + xs)
        return _log_hyp2f1_positive(rsx_, q_, rsx_ + 1.0, abs(alpha - beta) / (big + u)) - rsx_ * np.log(big + u)

    def log_f(u):
        xs, u = np.asarray(x, dtype=float), np.asarray(u, dtype=float)
        if xs.shape != u.shape:
            xs, u = np.broadcast_arrays(xs, u)
        if xs.size < 5000:
            return log_f_direct(xs, u)
        # 2F1 is the costly part and depends on (x, u) only: evaluate it once per distinct pair
        pairs, inverse = _distinct_pairs(xs, u)
        return log_f_direct(pairs.real, pairs.imag)[inverse].reshape(xs.shape)

    lf_tx, lf_T = log_f(t_x), log_f(T)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.minimum(lf_T - lf_tx, 0.0)
        return lf_tx + np.log(-np.expm1(diff))  # -inf where t_x == T


def ll_pareto(params, x, t_x, T) -> np.ndarray:
    r, alpha, s, beta = params
    base = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha) + s * np.log(beta)
    first = -(r + x) * np.log(alpha + T) - s * np.log(beta + T)
    second = np.log(s) - np.log(r + s + x) + _pareto_log_a0(params, x, t_x, T)
    return base + np.logaddexp(first, second)


def ll_gammagamma(params, x, m) -> np.ndarray:
    p, q, gamma = params
    px = p * x
    return (special.gammaln(px + q) - special.gammaln(px) - special.gammaln(q) + q * np.log(gamma)
            + px * np.log(x) + (px - 1) * np.log(m) - (px + q) * np.log(gamma + x * m))


LL: dict[str, Callable[..., np.ndarray]] = {"bgnbd": ll_bgnbd, "mbgnbd": ll_mbgnbd, "pareto": ll_pareto,
                                              "gammagamma": ll_gammagamma}


# -- fitting -------------------------------------------------------------------------------------------


def grad_bg_family(model: str, params, x, t_x, T) -> tuple[np.ndarray, np.ndarray]:
    """Per-row log-likelihood of BG/NBD or MBG/NBD and its gradient in (r, alpha, a, b) (digamma terms;
    the two-term log-sum-exp splits into softmax weights)."""
    r, alpha, a, b = params
    shift = 1.0 if model == "mbgnbd" else 0.0
    dig = special.digamma
    la_T, la_tx = np.log(alpha + T), np.log(alpha + t_x)
    first = -(r + x) * la_T
    if shift:
        bx = b + x
        second = np.log(a) - np.log(bx) - (r + x) * la_tx
    else:
        repeat = x > 0
        bx = np.where(repeat, b + x - 1, 1.0)
        with np.errstate(divide="ignore"):
            second = np.where(repeat, np.log(a) - np.log(bx) - (r + x) * la_tx, -np.inf)
    total = np.logaddexp(first, second)
    w2 = np.exp(second - total)  # weight of the "dropped out after the last purchase" term
    w1 = 1.0 - w2
    ll = (special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha) + special.gammaln(a + b)
          + special.gammaln(b + x + shift) - special.gammaln(b) - special.gammaln(a + b + x + shift) + total)
    d_ab, d_abx = dig(a + b), dig(a + b + x + shift)
    grad = np.empty((4, x.size))
    grad[0] = dig(r + x) - dig(r) + np.log(alpha) - w1 * la_T - w2 * la_tx
    grad[1] = r / alpha - (r + x) * (w1 / (alpha + T) + w2 / (alpha + t_x))
    grad[2] = d_ab - d_abx + w2 / a
    grad[3] = d_ab + dig(b + x + shift) - dig(b) - d_abx - w2 / bx
    return ll, grad


def grad_gammagamma(params, x, m) -> tuple[np.ndarray, np.ndarray]:
    p, q, gamma = params
    px = p * x
    log_den = np.log(gamma + x * m)
    d_pxq = special.digamma(px + q)
    ll = (special.gammaln(px + q) - special.gammaln(px) - special.gammaln(q) + q * np.log(gamma)
          + px * np.log(x) + (px - 1) * np.log(m) - (px + q) * log_den)
    grad = np.empty((3, x.size))
    grad[0] = x * (d_pxq - special.digamma(px) + np.log(x) + np.log(m) - log_den)
    grad[1] = d_pxq - special.digamma(q) + np.log(gamma) - log_den
    grad[2] = q / gamma - (px + q) / (gamma + x * m)
    return ll, grad


def _sum_by_x(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique x values and the weight on each: terms that depend on the parameters and x only are
    evaluated once per distinct x instead of once per row."""
    ux, inverse = np.unique(x, return_inverse=True)
    return ux, np.bincount(inverse, weights=w, minlength=ux.size)


def bg_family_total(model: str, x, t_x, T, w) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """Weighted total log-likelihood of BG/NBD or MBG/NBD and its gradient in (r, alpha, a, b), the same
    sums as ``grad_bg_family`` but with the x-only terms (log-gammas, digammas) summed per distinct x."""
    shift = 1.0 if model == "mbgnbd" else 0.0
    ux, wx = _sum_by_x(x, w)
    repeat = x > 0
    wsum = float(w.sum())
    gl, dig = special.gammaln, special.digamma

    def total(params: np.ndarray) -> tuple[float, np.ndarray]:
        r, alpha, a, b = params
        la_T, la_tx = np.log(alpha + T), np.log(alpha + t_x)
        rx = r + x
        first = -rx * la_T
        if shift:
            bx = b + x
            second = math.log(a) - np.log(bx) - rx * la_tx
        else:
            bx = np.where(repeat, b + x - 1, 1.0)
            second = np.where(repeat, math.log(a) - np.log(bx) - rx * la_tx, -np.inf)
        both = np.logaddexp(first, second)
        w2 = np.exp(second - both) * w
        w1 = w - w2
        value = (float(wx @ (gl(r + ux) + gl(b + ux + shift) - gl(a + b + ux + shift)))
                 + wsum * (-gl(r) + r * math.log(alpha) + gl(a + b) - gl(b)) + float((w * both).sum()))
        d_abx = float(wx @ dig(a + b + ux + shift))
        grad = np.array([
            float(wx @ dig(r + ux)) + wsum * (-dig(r) + math.log(alpha)) - float((w1 * la_T).sum()) - float((w2 * la_tx).sum()),
            wsum * r / alpha - float((rx * (w1 / (alpha + T) + w2 / (alpha + t_x))).sum()),
            wsum * dig(a + b) - d_abx + float(w2.sum()) / a,
            wsum * (dig(a + b) - dig(b)) + float(wx @ dig(b + ux + shift)) - d_abx - float((w2 / bx).sum()),
        ])
        return value, grad

    return total


def gammagamma_total(x, m, w) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """Weighted total log-likelihood of Gamma-Gamma and its gradient in (p, q, gamma); x-only terms per distinct x."""
    ux, wx = _sum_by_x(x, w)
    wsum = float(w.sum())
    xm = x * m
    s_xlnm = float((w * x * np.log(m)).sum())
    s_lnm = float((w * np.log(m)).sum())
    lnux = np.log(ux)
    gl, dig = special.gammaln, special.digamma

    def total(params: np.ndarray) -> tuple[float, np.ndarray]:
        p, q, gamma = params
        pux = p * ux
        log_den = np.log(gamma + xm)
        px = p * x
        value = (float(wx @ (gl(pux + q) - gl(pux) + pux * lnux)) + wsum * (-gl(q) + q * math.log(gamma))
                 + p * s_xlnm - s_lnm - float((w * (px + q) * log_den).sum()))
        grad = np.array([
            float(wx @ (ux * (dig(pux + q) - dig(pux) + lnux))) + s_xlnm - float((w * x * log_den).sum()),
            float(wx @ dig(pux + q)) + wsum * (-dig(q) + math.log(gamma)) - float((w * log_den).sum()),
            wsum * q / gamma - float((w * (px + q) / (gamma + xm)).sum()),
        ])
        return value, grad

    return total


GRAD: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "bgnbd": lambda params, *c: grad_bg_family("bgnbd", params, *c),
    "mbgnbd": lambda params, *c: grad_bg_family("mbgnbd", params, *c),
    "gammagamma": grad_gammagamma,
}  # Pareto/NBD: finite differences


def _maximise(model: str, columns: list[np.ndarray], weights: np.ndarray, start: np.ndarray,
              customers: int, span: float = 0.0, check_se: bool = True) -> Fit:
    ll = LL[model]
    names = PARAM_NAMES[model]
    scale = float(weights.sum())
    if model in ("bgnbd", "mbgnbd"):
        summed: Callable[[np.ndarray], tuple[float, np.ndarray]] | None = bg_family_total(model, *columns, weights)
    elif model == "gammagamma":
        summed = gammagamma_total(*columns, weights)
    else:
        summed = None  # Pareto/NBD: finite differences
    analytic = summed

    def objective(theta: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            value = -float((weights * ll(np.exp(theta), *columns)).sum()) / scale
        return value if math.isfinite(value) else 1e100

    def with_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        params = np.exp(theta)
        with np.errstate(all="ignore"):
            total, grad = summed(params)  # type: ignore[misc]
            value = -total / scale
            g = -grad * params / scale
        if not (math.isfinite(value) and np.all(np.isfinite(g))):
            return 1e100, np.zeros_like(theta)
        return value, g

    def gradient(theta: np.ndarray) -> np.ndarray:
        if analytic is not None:
            return with_gradient(theta)[1]
        return optimize.approx_fprime(theta, objective, 1e-7)

    fun, jac = (with_gradient, True) if analytic is not None else (objective, None)
    bounds = [(-LOG_BOUND, LOG_BOUND)] * len(names)
    options = {"maxiter": 2000, "ftol": 1e-14, "gtol": 1e-9, "maxcor": 20}
    res = optimize.minimize(fun, start, jac=jac, method="L-BFGS-B", bounds=bounds, options=options)
    iterations = int(res.nit)
    if not res.success or not math.isfinite(res.fun) or res.fun >= 1e99:
        # Nelder-Mead from where L-BFGS-B stopped, then one more L-BFGS-B polish.
        nm = optimize.minimize(objective, np.clip(res.x, -LOG_BOUND, LOG_BOUND), method="Nelder-Mead",
                               options={"maxiter": 4000, "xatol": 1e-9, "fatol": 1e-12})
        res = optimize.minimize(fun, np.clip(nm.x, -LOG_BOUND, LOG_BOUND), jac=jac, method="L-BFGS-B", bounds=bounds,
                                options=options)
        iterations += int(nm.nit) + int(res.nit)
    theta = np.asarray(res.x, dtype=float)
    value = objective(theta)  # the per-row formula, independent of the summed one used to search
    loglik = -value * scale if value < 1e99 else float("-inf")
    # Converged: the optimiser says so, or the gradient in log-parameters is flat.
    flat = bool(np.all(np.abs(gradient(theta)) < 1e-4))
    converged = bool((res.success or flat) and math.isfinite(loglik))
    degenerate = tuple(n for n, v in zip(names, theta) if abs(v) >= LOG_BOUND - 1e-3)
    params = {n: float(math.exp(v)) for n, v in zip(names, theta)}
    if span and model in COUNT_MODELS and params["r"] / params["alpha"] * span < 1e-4 and not degenerate:
        degenerate = ("r", "alpha")  # the fitted purchase rate is practically zero over the observed span
    if converged and not degenerate and check_se:
        se = _log_standard_errors(gradient, theta, scale)
        degenerate = tuple(n for n, e in zip(names, se) if not (e <= MAX_LOG_SE))
    message = "" if converged else f"the optimiser did not converge: {res.message}"
    if degenerate:
        message = (message + "; " if message else "") + (
            f"degenerate fit: the data cannot pin down {', '.join(degenerate)} (at the edge of the search range or "
            "with a huge standard error); more customers with repeat purchases are needed")
    return Fit(model=model, params=params, loglik=loglik, converged=converged, customers=customers,
               rows=int(len(weights)), iterations=iterations, message=message, degenerate=degenerate)


def _log_standard_errors(gradient: Callable[[np.ndarray], np.ndarray], theta: np.ndarray, scale: float) -> np.ndarray:
    """Standard errors of the log-parameters from the observed information: central differences of the
    gradient of the mean negative log-likelihood, times the number of customers. NaN where the information
    is not positive definite."""
    k, h = len(theta), 1e-4
    hess = np.empty((k, k))
    for i in range(k):
        step = np.zeros(k)
        step[i] = h
        hess[:, i] = (gradient(theta + step) - gradient(theta - step)) / (2 * h)
    hess = (hess + hess.T) / 2
    if not np.all(np.isfinite(hess)):
        return np.full(k, np.nan)
    try:
        if np.any(np.linalg.eigvalsh(hess) <= 0):
            return np.full(k, np.nan)
        var = np.diag(np.linalg.inv(hess * scale))
    except np.linalg.LinAlgError:
        return np.full(k, np.nan)
    if not np.all(np.isfinite(var)) or np.any(var <= 0):
        return np.full(k, np.nan)
    return np.sqrt(var)


def _start_counts(model: str, x: np.ndarray, T: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A starting point in log-parameters: r = 1, alpha such that r/alpha is the mean purchase rate."""
    rate = float(np.dot(w, x) / max(np.dot(w, T), 1e-12))
    alpha = 1.0 / max(rate, 1e-6)
    if model == "pareto":
        return np.log([1.0, alpha, 1.0, float(np.dot(w, T) / w.sum())])
    return np.log([1.0, alpha, 1.0, 1.0])


def fit_counts(model: str, x, t_x, T, *, weights=None, subsample: int = 50_000,
               seed: int = 0) -> Fit:
    """Maximum-likelihood fit of a purchase-count model on customers (x, t_x, T).

    ``weights`` (optional) counts customers per row. Large inputs are compressed to unique rows; with more
    than ``subsample`` unique rows, a first fit on a random subsample gives the starting point.
    """
    if model not in COUNT_MODELS:
        raise FitError(f"unknown model {model!r}; use one of {', '.join(COUNT_MODELS)}")
    x, t_x, T = check_counts(x, t_x, T)
    if x.size == 0:
        raise FitError("no customers to fit")
    if not (x > 0).any():
        raise FitError("no customer has a repeat purchase; the purchase rate cannot be estimated")
    if weights is None:
        (x, t_x, T), w = compress(x, t_x, T)
    else:
        w = np.asarray(weights, dtype=float)
    customers = int(round(w.sum()))
    span = float(np.dot(w, T) / w.sum())  # mean observed time since the first purchase
    start = _start_counts(model, x, T, w)
    if len(w) > subsample:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(w), size=subsample, replace=False, p=w / w.sum())
        warm = _maximise(model, [x[pick], t_x[pick], T[pick]], np.ones(subsample), start, subsample, span,
                         check_se=False)
        if warm.converged and not warm.degenerate:
            start = np.log([warm.params[n] for n in PARAM_NAMES[model]])
    return _maximise(model, [x, t_x, T], w, start, customers, span)


def fit_gammagamma(x, m, *, weights=None, max_customers: int = 250_000, seed: int = 0) -> Fit:
    """Gamma-Gamma fit on customers with x >= 1 transactions of average value m > 0.

    Average values rarely repeat, so compression does little; beyond ``max_customers`` the fit uses a
    random sample of that many customers (its ``customers`` says how many)."""
    x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
    keep = (x >= 1) & np.isfinite(m) & (m > 0)
    x, m = x[keep], m[keep]
    if x.size == 0:
        raise FitError("no customers with a positive average order value to fit the Gamma-Gamma model on")
    if weights is None and x.size > max_customers:
        pick = np.random.default_rng(seed).choice(x.size, size=max_customers, replace=False)
        x, m = x[pick], m[pick]
    if weights is None:
        (x, m), w = compress(x, m)
    else:
        w = np.asarray(weights, dtype=float)[keep]
    # Fit on values in units of their mean (better conditioned), then put gamma back in money units.
    unit = float((w * m).sum() / w.sum())
    fit = _maximise("gammagamma", [x, m / unit], w, np.log([1.0, 2.0, 1.0]), int(round(w.sum())))
    params = dict(fit.params, gamma=fit.params["gamma"] * unit)
    with np.errstate(all="ignore"):
        loglik = float((w * ll_gammagamma((params["p"], params["q"], params["gamma"]), x, m)).sum())
    return Fit(model=fit.model, params=params, loglik=loglik, converged=fit.converged, customers=fit.customers,
               rows=fit.rows, iterations=fit.iterations, message=fit.message, degenerate=fit.degenerate)


# -- predictions ---------------------------------------------------------------------------------------


def _as_arrays(*values):
    return [np.asarray(v, dtype=float) for v in values]


def p_alive(model: str, params: dict[str, float], x, t_x, T) -> np.ndarray:
    """Probability that the customer is still active at T."""
    x, t_x, T = _as_arrays(x, t_x, T)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if model == "pareto":
            r, alpha, s, beta = (params[k] for k in PARAM_NAMES[model])
            log_term = (np.log(s) - np.log(r + s + x) + (r + x) * np.log(alpha + T) + s * np.log(beta + T)
                        + _pareto_log_a0((r, alpha, s, beta), x, t_x, T))
            return _sigmoid_of_log(log_term)
        r, alpha, a, b = (params[k] for k in PARAM_NAMES[model])
        ratio = (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        if model == "mbgnbd":
            return _sigmoid_of_log(np.log(a) - np.log(b + x) + ratio)
        repeat = x > 0
        log_term = np.where(repeat, np.log(a) - np.log(np.where(repeat, b + x - 1, 1.0)) + ratio, -np.inf)
        return _sigmoid_of_log(log_term)


def expected_purchases(model: str, params: dict[str, float], t, x, t_x, T) -> np.ndarray:
    """E[purchases in (T, T+t] | x, t_x, T]."""
    x, t_x, T = _as_arrays(x, t_x, T)
    t = float(t)
    if t <= 0:
        return np.zeros(np.broadcast(x, t_x, T).shape)
    alive = p_alive(model, params, x, t_x, T)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if model == "pareto":
            r, alpha, s, beta = (params[k] for k in PARAM_NAMES[model])
            # (r+x)/(alpha+T) * (beta+T)/(s-1) * [1 - ((beta+T)/(beta+T+t))^(s-1)], the s -> 1 limit included
            log_ratio = np.log(beta + T) - np.log(beta + T + t)
            if abs(s - 1.0) < 1e-9:
                horizon = (beta + T) * -log_ratio
            else:
                horizon = (beta + T) * -np.expm1((s - 1.0) * log_ratio) / (s - 1.0)
            return np.maximum((r + x) / (alpha + T) * horizon * alive, 0.0)
        r, alpha, a, b = (params[k] for k in PARAM_NAMES[model])
        z = t / (alpha + T + t)
        shift = 0.0 if model == "bgnbd" else 1.0
        c = a + b + x - 1 + shift
        h = hyp2f1(r + x, b + x + shift, c, z)
        # ((alpha+T)/(alpha+T+t))^(r+x) * h, multiplied in logs keeping the sign of h
        log_pow = (r + x) * (np.log(alpha + T) - np.log(alpha + T + t))
        with np.errstate(divide="ignore"):
            prod = np.sign(h) * np.exp(np.minimum(log_pow + np.log(np.abs(h)), EXP_CLAMP))
        # The unconditional-on-alive expectation times P(alive): P(alive) * (a+b+x-1+shift)/(a-1) * [1 - prod]
        value = c / (a - 1.0) * (1.0 - prod) * alive
        return np.maximum(value, 0.0)


def p_buy_within(model: str, params: dict[str, float], h: float, x, t_x, T, alive=None) -> np.ndarray:
    """Probability of at least one purchase in (T, T+h]."""
    x, t_x, T = _as_arrays(x, t_x, T)
    alive = p_alive(model, params, x, t_x, T) if alive is None else alive
    if model == "pareto":
        # Given alive: lambda ~ Gamma(r+x, alpha+T), mu ~ Gamma(s, beta+T), independent. A purchase comes
        # first at u <= h with density E[lambda e^-lambda u] E[e^-mu u]; integrated by Gauss-Legendre.
        r, alpha, s, beta = (params[k] for k in PARAM_NAMES[model])
        nodes, wts = np.polynomial.legendre.leggauss(24)
        u = (nodes + 1.0) * (h / 2.0)
        wts = wts * (h / 2.0)
        x, T = np.broadcast_arrays(x, T)
        flat_x, flat_T = x.ravel(), T.ravel()
        out = np.empty(flat_x.shape)
        for start in range(0, flat_x.size, 50_000):  # in blocks: rows x nodes stays small
            part = slice(start, start + 50_000)
            rx, at, bt = (r + flat_x[part])[:, None], (alpha + flat_T[part])[:, None], (beta + flat_T[part])[:, None]
            dens = rx / at * np.exp((rx + 1) * (np.log(at) - np.log(at + u)) + s * (np.log(bt) - np.log(bt + u)))
            out[part] = (dens * wts).sum(axis=1)
        return alive * np.clip(out.reshape(x.shape), 0.0, 1.0)
    r, alpha = params["r"], params["alpha"]
    return alive * -np.expm1((r + x) * (np.log(alpha + T) - np.log(alpha + T + h)))


def next_purchase_median(model: str, params: dict[str, float], x, T) -> np.ndarray:
    """Median time to the next purchase for a customer who stays active: lambda ~ Gamma(r+x, alpha+T)
    given the history, so the waiting time is Lomax and its median (alpha+T)(2^(1/(r+x)) - 1)."""
    x, T = _as_arrays(x, T)
    r, alpha = params["r"], params["alpha"]
    return (alpha + T) * np.expm1(math.log(2.0) / (r + x))


def expected_order_value(params: dict[str, float], x, m) -> np.ndarray:
    """Gamma-Gamma: E[average order | x orders averaging m] = (gamma p + p x m) / (p x + q - 1);
    the population mean gamma p / (q - 1) where x = 0 or m is unknown. Needs q > 1."""
    x, m = _as_arrays(x, m)
    p, q, gamma = params["p"], params["q"], params["gamma"]
    if q <= 1:
        return np.full(np.broadcast(x, m).shape, np.nan)
    known = (x >= 1) & np.isfinite(m) & (m > 0)
    xs, ms = np.where(known, x, 0.0), np.where(known, m, 0.0)
    return (gamma * p + p * xs * ms) / (p * xs + q - 1.0)
