"""Buy-till-you-die models of non-contractual repeat buying: BG/NBD and Gamma-Gamma.

BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): while alive, a customer
orders as a Poisson process of rate ``lambda ~ Gamma(r, alpha)``; after each order they drop out
for good with probability ``p ~ Beta(a, b)``. A customer is summarised by ``x`` (repeat purchases,
the first one not counted), ``t_x`` (time of the last purchase since the first) and ``T`` (time
since the first purchase at the end of the calibration period). Gamma-Gamma (Fader, Hardie & Lee
2005, "RFM and CLV"): the value of a customer's orders is ``Gamma(p, nu)`` with
``nu ~ Gamma(q, v)``, independent of how often they order; it is fitted on the mean value
``m`` of the repeat purchases of customers with ``x > 0``.

Parameters are fitted by maximum likelihood (scipy's L-BFGS-B over the logarithms of the
parameters, no penalty), written with numpy. The per-customer formulas are written for one
customer in plain Python as well (floats in, a float out), as the reference the compiled stream
scorer follows; they accept numpy arrays too where noted. Times are in whatever unit the
summaries are given in: the engine uses days (``nudgeflow fit``), the published CDNOW figures
weeks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betaln, gammaln

HYP2F1_MAX_TERMS = 100_000
"""Most terms :func:`hyp2f1` sums (reached only with ``z`` within ~1e-4 of 1)."""
HYP2F1_TOLERANCE = 1e-15
"""Relative size of a term at which :func:`hyp2f1` stops (after the terms start shrinking)."""
CHECK_BUCKETS = 8
"""Repeat purchases 0..6 and 7 or more in the fit check (the paper's figure 1)."""
_NEAR_ONE = 1e-7  # a BG/NBD ``a`` this close to 1 is moved off it (a removable singularity)


@dataclass(frozen=True, slots=True)
class BgNbd:
    """BG/NBD population parameters: purchase rate ``Gamma(r, alpha)`` (alpha in the time unit),
    dropout probability after each purchase ``Beta(a, b)``."""

    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True, slots=True)
class GammaGamma:
    """Gamma-Gamma spend parameters: order value ``Gamma(p, nu)``, ``nu ~ Gamma(q, v)`` (v in currency)."""

    p: float
    q: float
    v: float


@dataclass(frozen=True, slots=True)
class Fit:
    """A maximum-likelihood fit: the parameters and how it went."""

    parameters: dict[str, float]
    log_likelihood: float  # summed over customers, at the parameters
    customers: int
    iterations: int
    converged: bool
    message: str
    standard_errors: dict[str, float | None] = field(default_factory=dict)  # from the inverse Hessian

    def summary(self) -> dict[str, Any]:
        return asdict(self)


# --- BG/NBD ------------------------------------------------------------------------------------


def bgnbd_log_likelihood(params: BgNbd, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> NDArray[np.float64]:
    """Each customer's log-likelihood (FHL 2005, eq. 6), vectorised::

        L = B(a, b+x)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+T)^(r+x))
            + [x > 0] B(a+1, b+x-1)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+t_x)^(r+x))

    (``B(a+1, b+x-1) / B(a, b+x) = a / (b+x-1)``; the two terms are added in log space).
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x, t_x, T = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    common = gammaln(r + x) - gammaln(r) + r * math.log(alpha) + betaln(a, b + x) - betaln(a, b)
    alive = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    dropped = np.full_like(alive, -np.inf)
    dropped[repeat] = math.log(a) - np.log(b + x[repeat] - 1) - (r + x[repeat]) * np.log(alpha + t_x[repeat])
    return common + np.logaddexp(alive, dropped)


def fit_bgnbd(x: ArrayLike, t_x: ArrayLike, T: ArrayLike, weights: ArrayLike | None = None) -> Fit:
    """Maximum-likelihood BG/NBD parameters of customers ``(x, t_x, T)`` (each counted ``weights``
    times, default once). Starts from r = a = b = 1 and alpha = the mean time between purchases."""
    x, t_x, T = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    _check_summaries(x, t_x, T)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    n = float(w.sum())
    rate_scale = float((w * T).sum() / max((w * x).sum(), 1.0)) or 1.0

    def objective(theta: NDArray[np.float64]) -> float:
        value = -float((w * bgnbd_log_likelihood(BgNbd(*np.exp(theta)), x, t_x, T)).sum()) / n
        return value if math.isfinite(value) else 1e300

    start = np.log([1.0, rate_scale, 1.0, 1.0])
    return _maximise(objective, start, ("r", "alpha", "a", "b"), n)


def p_alive(params: BgNbd, x: float, t_x: float, T: float) -> float:
    """P(alive at T | x, t_x, T) = 1 / (1 + [x > 0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)); 1 for x = 0."""
    if x <= 0:
        return 1.0
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_odds = math.log(a / (b + x - 1)) + (r + x) * math.log((alpha + T) / (alpha + t_x))
    return 1.0 / (1.0 + math.exp(log_odds)) if log_odds < 700 else 0.0


def p_no_order(params: BgNbd, x: float, t_x: float, T: float, h: float) -> float:
    """P(no purchase in (T, T+h] | x, t_x, T) = 1 - P(alive) + P(alive) ((alpha+T)/(alpha+T+h))^(r+x).

    Derivation: a customer who has dropped out never buys again. One who is alive at T drops out
    only right after a purchase, so they make none in the next h exactly when their Poisson
    process has no event there: ``exp(-lambda h)``. Given alive, ``x`` purchases in ``T`` make the
    rate's posterior ``Gamma(r+x, alpha+T)`` (the dropout factor ``(1-p)^x`` does not involve
    lambda), whose Laplace transform at ``h`` is ``((alpha+T)/(alpha+T+h))^(r+x)``."""
    alive = p_alive(params, x, t_x, T)
    stays_quiet = math.exp((params.r + x) * math.log((params.alpha + T) / (params.alpha + T + h)))
    return 1.0 - alive + alive * stays_quiet


def expected_orders(params: BgNbd, x: float, t_x: float, T: float, t: float) -> float:
    """Expected purchases in (T, T+t] given x, t_x, T (FHL 2005, eq. 10)::

        E = (a+b+x-1)/(a-1) [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z)] P(alive)

    with ``z = t/(alpha+T+t)``. Written with Euler's transformation, ``2F1(A, B; C; z) =
    (1-z)^(C-A-B) 2F1(C-A, C-B; C; z)``, the bracket is ``1 - (1-z)^(a-1) 2F1(a+b-1-r, a-1;
    a+b+x-1; z)``: no large powers, and a series that converges even near z = 1 (its terms
    shrink like ``n^(a-r-x-2) z^n``). ``a`` within 1e-7 of 1 is moved 1e-7 off it (the formula's
    0/0 there has a finite limit)."""
    if t <= 0:
        return 0.0
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if abs(a - 1.0) < _NEAR_ONE:
        a = 1.0 + math.copysign(_NEAR_ONE, a - 1.0)
    z = t / (alpha + T + t)
    c = a + b + x - 1
    bracket = 1.0 - math.exp((a - 1) * math.log1p(-z)) * hyp2f1(a + b - 1 - r, a - 1, c, z)
    return c / (a - 1) * bracket * p_alive(params, x, t_x, T)


def expected_orders_new(params: BgNbd, t: float) -> float:
    """Expected purchases in (0, t] of a customer just acquired (FHL 2005, eq. 9), after their first."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if abs(a - 1.0) < _NEAR_ONE:
        a = 1.0 + math.copysign(_NEAR_ONE, a - 1.0)
    z = t / (alpha + t)
    # 2F1(r, b; a+b-1; z) (alpha/(alpha+t))^r = (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b-1; z)
    bracket = 1.0 - math.exp((a - 1) * math.log1p(-z)) * hyp2f1(a + b - 1 - r, a - 1, a + b - 1, z)
    return (a + b - 1) / (a - 1) * bracket


def hyp2f1(a: float, b: float, c: float, z: float) -> float:
    """The Gaussian hypergeometric function 2F1(a, b; c; z) for 0 <= z < 1, by its power series
    ``sum_n (a)_n (b)_n / ((c)_n n!) z^n``, each term from the last by the ratio
    ``(a+n)(b+n) / ((c+n)(n+1)) z``. Stops once terms shrink and the last is below
    :data:`HYP2F1_TOLERANCE` of the sum, or after :data:`HYP2F1_MAX_TERMS` terms. (``c`` must not
    be 0 or a negative integer.)"""
    if not 0.0 <= z < 1.0:
        raise ValueError(f"hyp2f1 is summed for 0 <= z < 1, not z = {z}")
    term, total = 1.0, 1.0
    for n in range(HYP2F1_MAX_TERMS):
        ratio = (a + n) * (b + n) / ((c + n) * (n + 1)) * z
        term *= ratio
        total += term
        if term == 0.0 or (abs(ratio) < 1.0 and abs(term) <= HYP2F1_TOLERANCE * abs(total)):
            break
    return total


def expected_repeat_counts(params: BgNbd, T: ArrayLike, buckets: int = CHECK_BUCKETS) -> NDArray[np.float64]:
    """Expected customers with 0, 1, ..., ``buckets - 2`` and at least ``buckets - 1`` repeat
    purchases by their age ``T`` (summed over customers; FHL 2005, eq. 8)::

        P(X(t) = x) = B(a, b+x)/B(a, b) NB(x) + [x > 0] B(a+1, b+x-1)/B(a, b) [1 - sum_{j<x} NB(j)]
        NB(j) = G(r+j)/(G(r) j!) (alpha/(alpha+t))^r (t/(alpha+t))^j
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    T = np.asarray(T, dtype=np.float64)
    log_stay = r * np.log(alpha / (alpha + T))
    log_odds = np.log(np.where(T > 0, T / (alpha + T), 1.0))
    nbd_terms = []  # G(r+j)/(G(r) j!) (alpha/(alpha+t))^r (t/(alpha+t))^j, by customer
    for j in range(buckets - 1):
        log_term = gammaln(r + j) - gammaln(r) - gammaln(j + 1) + log_stay + j * log_odds
        nbd_terms.append(np.where((T > 0) | (j == 0), np.exp(log_term), 0.0))
    counts = np.zeros(buckets)
    cumulative = np.zeros_like(T)
    for k in range(buckets - 1):
        p = math.exp(betaln(a, b + k) - betaln(a, b)) * nbd_terms[k]
        if k > 0:
            p = p + math.exp(betaln(a + 1, b + k - 1) - betaln(a, b)) * (1.0 - cumulative)
        cumulative = cumulative + nbd_terms[k]
        counts[k] = float(p.sum())
    counts[-1] = len(T) - counts[:-1].sum()
    return counts


def fit_check(params: BgNbd, x: ArrayLike, T: ArrayLike, buckets: int = CHECK_BUCKETS) -> list[dict[str, Any]]:
    """Observed against expected customers by repeat purchases in the calibration period: one row
    per count 0..``buckets - 2`` and one for ``buckets - 1`` or more (``repeat`` is then e.g. "7+")."""
    x = np.asarray(x)
    observed = np.bincount(np.minimum(x.astype(np.int64), buckets - 1), minlength=buckets)
    expected = expected_repeat_counts(params, T, buckets)
    return [
        {
            "repeat": str(k) if k < buckets - 1 else f"{k}+",
            "observed": int(observed[k]),
            "expected": round(float(expected[k]), 1),
        }
        for k in range(buckets)
    ]


# --- Gamma-Gamma -------------------------------------------------------------------------------


def gamma_gamma_log_likelihood(params: GammaGamma, x: ArrayLike, m: ArrayLike) -> NDArray[np.float64]:
    """Each customer's log-likelihood of the mean ``m`` of their ``x`` order values (x > 0, m > 0)::

    L = G(px+q) / (G(px) G(q)) v^q m^(px-1) x^(px) / (v + x m)^(px+q)
    """
    p, q, v = params.p, params.q, params.v
    x, m = np.asarray(x, dtype=np.float64), np.asarray(m, dtype=np.float64)
    px = p * x
    return (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * math.log(v)
        + (px - 1) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(v + x * m)
    )


def fit_gamma_gamma(x: ArrayLike, m: ArrayLike) -> Fit:
    """Maximum-likelihood Gamma-Gamma parameters of customers with ``x > 0`` repeat purchases of mean
    value ``m > 0`` (others must be left out by the caller). Starts from p = 1, q = 2, v = mean of m."""
    x, m = np.asarray(x, dtype=np.float64), np.asarray(m, dtype=np.float64)
    if len(x) == 0 or (x <= 0).any() or (m <= 0).any() or not np.isfinite(m).all():
        raise ValueError("Gamma-Gamma is fitted on customers with x > 0 repeat purchases of mean value m > 0")
    n = float(len(x))

    def objective(theta: NDArray[np.float64]) -> float:
        value = -float(gamma_gamma_log_likelihood(GammaGamma(*np.exp(theta)), x, m).sum()) / n
        return value if math.isfinite(value) else 1e300

    return _maximise(objective, np.log([1.0, 2.0, float(m.mean())]), ("p", "q", "v"), n)


def expected_spend(params: GammaGamma, x: float, m: float) -> float:
    """Expected value of the customer's future orders::

        E[M | x, m] = p (v + x m) / (p x + q - 1)

    the population mean ``p v / (q - 1)`` for x = 0, moving towards the customer's own mean ``m``
    as they order more. Needs q > 1 (else the population mean is infinite: ``inf``)."""
    p, q, v = params.p, params.q, params.v
    denominator = p * x + q - 1
    if denominator <= 0:
        return math.inf
    return p * (v + x * m) / denominator


def clv(
    purchases: BgNbd,
    spend: GammaGamma,
    x: float,
    t_x: float,
    T: float,
    m: float,
    horizon: float,
    annual_discount: float = 0.0,
    days_per_unit: float = 1.0,
    step: float = 30.0,
) -> float:
    """Expected value of the customer's purchases in the next ``horizon``: expected purchases
    (:func:`expected_orders`) times expected value per order (:func:`expected_spend`). With an
    ``annual_discount`` rate, the purchases of each ``step`` (in the time unit) are discounted to
    now at the end of their step, ``(1 + rate) ^ -(elapsed days / 365)``."""
    value = expected_spend(spend, x, m)
    if annual_discount <= 0:
        return expected_orders(purchases, x, t_x, T, horizon) * value
    total, before, start = 0.0, 0.0, 0.0
    while start < horizon:
        end = min(start + step, horizon)
        until_end = expected_orders(purchases, x, t_x, T, end)
        total += (until_end - before) / (1.0 + annual_discount) ** (end * days_per_unit / 365.0)
        before, start = until_end, end
    return total * value


# --- fitting -----------------------------------------------------------------------------------


def _check_summaries(x: NDArray[np.float64], t_x: NDArray[np.float64], T: NDArray[np.float64]) -> None:
    if not (len(x) == len(t_x) == len(T)) or len(x) == 0:
        raise ValueError("BG/NBD needs the same number (> 0) of x, t_x and T")
    if (x < 0).any() or (t_x < 0).any() or (t_x > T).any() or ((x == 0) & (t_x != 0)).any():
        raise ValueError("BG/NBD summaries need x >= 0, 0 <= t_x <= T, and t_x = 0 when x = 0")


def _maximise(objective: Any, start: NDArray[np.float64], names: tuple[str, ...], n: float) -> Fit:
    """Minimise the mean negative log-likelihood ``objective`` over log-parameters (L-BFGS-B,
    numerical gradient), then read standard errors off the inverse Hessian."""
    from scipy.optimize import minimize  # only fitting needs it

    options = {"ftol": 1e-14, "gtol": 1e-9, "maxiter": 2000}
    result = minimize(objective, start, method="L-BFGS-B", bounds=[(-25.0, 25.0)] * len(start), options=options)
    theta = result.x
    values = np.exp(theta)
    return Fit(
        parameters={name: float(v) for name, v in zip(names, values, strict=True)},
        log_likelihood=-float(result.fun) * n,
        customers=round(n),
        iterations=int(result.nit),
        converged=bool(result.success),
        message=str(result.message),
        standard_errors=_standard_errors(objective, theta, names, n),
    )


def _standard_errors(
    objective: Any, theta: NDArray[np.float64], names: tuple[str, ...], n: float
) -> dict[str, float | None]:
    """Standard errors of the parameters: the inverse of the Hessian of the summed negative
    log-likelihood over log-parameters (central differences), carried to the parameters by the
    delta method (``se(exp(t)) = exp(t) se(t)``); ``None`` where the Hessian is not invertible."""
    k, step = len(theta), 1e-4
    hessian = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):
            value = 0.0
            for si, sj, sign in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
                shifted = theta.copy()
                shifted[i] += si * step
                shifted[j] += sj * step
                value += sign * objective(shifted)
            hessian[i, j] = hessian[j, i] = value * n / (4 * step * step)
    try:
        covariance = np.linalg.inv(hessian)
    except np.linalg.LinAlgError:
        return dict.fromkeys(names)
    variances = np.diag(covariance)
    return {
        name: float(math.exp(t) * math.sqrt(var)) if var > 0 and math.isfinite(var) else None
        for name, t, var in zip(names, theta, variances, strict=True)
    }
