"""BG/NBD and Gamma-Gamma: the fits reproduce the published CDNOW results, the per-customer formulas
agree with scipy's hypergeometric function and with simulation, and a fit recovers the parameters
it was drawn from."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import hyp2f1 as scipy_hyp2f1

from operators.models import btyd
from operators.models.btyd import BgNbd, GammaGamma

DATA = Path(__file__).resolve().parents[1] / "data"
PUBLISHED = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)  # Fader, Hardie & Lee (2005), CDNOW, weeks


@pytest.fixture(scope="module")
def cdnow() -> np.ndarray:
    return np.genfromtxt(DATA / "cdnow_customers_summary.csv", delimiter=",", names=True)


@pytest.fixture(scope="module")
def cdnow_fit(cdnow: np.ndarray) -> btyd.Fit:
    return btyd.fit_bgnbd(cdnow["frequency"], cdnow["recency"], cdnow["T"])


def test_the_bgnbd_fit_on_cdnow_matches_the_published_parameters(cdnow_fit):
    fitted = cdnow_fit.parameters
    assert cdnow_fit.customers == 2357 and cdnow_fit.converged
    for name in ("r", "alpha", "a", "b"):
        assert fitted[name] == pytest.approx(getattr(PUBLISHED, name), abs=1e-3), name
    assert cdnow_fit.log_likelihood == pytest.approx(-9582.4, abs=0.1)  # as published
    errors = cdnow_fit.standard_errors
    assert all(0 < errors[name] < fitted[name] for name in fitted), errors  # every parameter well determined


def test_the_fit_check_puts_expected_counts_beside_the_observed_ones(cdnow, cdnow_fit):
    rows = btyd.fit_check(BgNbd(**cdnow_fit.parameters), cdnow["frequency"], cdnow["T"])
    assert [row["repeat"] for row in rows] == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    assert sum(row["observed"] for row in rows) == 2357
    assert sum(row["expected"] for row in rows) == pytest.approx(2357, abs=0.5)
    assert rows[0]["observed"] == 1411 and rows[0]["expected"] == pytest.approx(1411, rel=0.01)  # the paper's fig. 1
    for row in rows:  # the model fits this sample well: within 12 % or 25 customers in every bucket
        assert abs(row["expected"] - row["observed"]) < max(25, 0.12 * row["observed"]), row


def test_the_gamma_gamma_fit_on_cdnow_matches_lifetimes_documented_result():
    data = np.genfromtxt(DATA / "cdnow_customers_summary_with_transactions.csv", delimiter=",", names=True)
    buyers = data["x"] > 0
    fit = btyd.fit_gamma_gamma(data["x"][buyers], data["zbar"][buyers])
    assert fit.customers == 946 and fit.converged
    assert fit.parameters == {
        "p": pytest.approx(6.25, abs=0.005),
        "q": pytest.approx(3.74, abs=0.005),
        "v": pytest.approx(15.45, abs=0.005),
    }
    spend = GammaGamma(**fit.parameters)
    population_mean = spend.p * spend.v / (spend.q - 1)
    assert btyd.expected_spend(spend, 0, 0.0) == pytest.approx(population_mean)
    # more orders: closer to the customer's own mean
    assert abs(btyd.expected_spend(spend, 10, 100.0) - 100) < abs(btyd.expected_spend(spend, 1, 100.0) - 100)


@pytest.mark.parametrize("a", [0.3, 0.9, 2.5, 7.0, -0.7])
@pytest.mark.parametrize("b", [0.2, 1.5, -1.3, 30.0])
@pytest.mark.parametrize("c", [0.5, 2.0, 9.5, 40.0])
@pytest.mark.parametrize("z", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_the_hypergeometric_series_agrees_with_scipy(a, b, c, z):
    assert btyd.hyp2f1(a, b, c, z) == pytest.approx(scipy_hyp2f1(a, b, c, z), rel=1e-9, abs=1e-12)


def test_the_hypergeometric_series_is_summed_only_inside_the_unit_interval():
    with pytest.raises(ValueError, match="z = 1"):
        btyd.hyp2f1(1.0, 1.0, 2.0, 1.0)


def _expected_orders_scipy(p: BgNbd, x: float, t_x: float, T: float, t: float) -> float:
    """FHL 2005 eq. 10 as published, with scipy's hyp2f1 (lifetimes computes it so)."""
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    z = t / (alpha + T + t)
    hyp = scipy_hyp2f1(r + x, b + x, a + b + x - 1, z)
    bracket = 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp
    return (a + b + x - 1) / (a - 1) * bracket * btyd.p_alive(p, x, t_x, T)


CUSTOMERS = [(0, 0.0, 38.86), (1, 1.71, 38.86), (2, 30.43, 38.86), (7, 29.0, 35.0), (25, 30.0, 31.0), (3, 2.0, 30.0)]


@pytest.mark.parametrize("params", [PUBLISHED, BgNbd(1.3, 20.0, 2.4, 5.0), BgNbd(0.72, 50.7, 0.031, 2.63)])
@pytest.mark.parametrize(("x", "t_x", "T"), CUSTOMERS)
@pytest.mark.parametrize("t", [1.0, 10.0, 52.0, 365.0])
def test_expected_orders_agree_with_the_published_formula_and_scipy(params, x, t_x, T, t):
    assert btyd.expected_orders(params, x, t_x, T, t) == pytest.approx(
        _expected_orders_scipy(params, x, t_x, T, t), rel=1e-8
    )


def test_expected_orders_near_a_equal_to_one_stay_finite_and_continuous():
    """a = 1 is a removable singularity of the formula: the value there lies between its neighbours'."""
    below, at, above = (btyd.expected_orders(BgNbd(0.5, 10.0, a, 3.0), 2, 5.0, 20.0, 30.0) for a in (0.999, 1.0, 1.001))
    assert math.isfinite(at)
    assert at == pytest.approx((below + above) / 2, rel=1e-4)


def test_p_alive_is_one_before_a_repeat_purchase_and_falls_with_silence():
    assert btyd.p_alive(PUBLISHED, 0, 0.0, 38.0) == 1.0
    recent, quiet = btyd.p_alive(PUBLISHED, 4, 37.0, 38.0), btyd.p_alive(PUBLISHED, 4, 5.0, 38.0)
    assert 0 < quiet < recent < 1
    assert btyd.p_alive(PUBLISHED, 4, 38.0, 38.0) == pytest.approx(1 / (1 + PUBLISHED.a / (PUBLISHED.b + 3)))
    assert btyd.p_alive(PUBLISHED, 500, 1.0, 1000.0) == 0.0  # no overflow


def test_a_new_customers_expected_orders_are_a_customer_with_no_repeat_and_no_age():
    for t in (5.0, 39.0, 78.0):
        assert btyd.expected_orders_new(PUBLISHED, t) == pytest.approx(btyd.expected_orders(PUBLISHED, 0, 0, 0, t))
        r, alpha, a, b = PUBLISHED.r, PUBLISHED.alpha, PUBLISHED.a, PUBLISHED.b  # FHL 2005 eq. 9, with scipy
        published = (
            (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * scipy_hyp2f1(r, b, a + b - 1, t / (alpha + t)))
        )
        assert btyd.expected_orders_new(PUBLISHED, t) == pytest.approx(published, rel=1e-9)


def _simulate(params: BgNbd, n: int, T: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Customers of the BG/NBD process (seeded), each observed for a random age up to ``T``: (x, t_x, T)."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(params.r, 1 / params.alpha, n)
    dropouts = rng.beta(params.a, params.b, n)
    ages = rng.uniform(T / 4, T, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        clock = 0.0
        while True:
            clock += rng.exponential(1 / rates[i])
            if clock > ages[i]:
                break
            x[i] += 1
            t_x[i] = clock
            if rng.random() < dropouts[i]:
                break
    return x, t_x, ages


def test_a_fit_recovers_the_parameters_customers_were_drawn_from():
    """5,000 customers: each parameter within 3 of its standard errors (as the fit reports them) of the truth."""
    truth = BgNbd(r=0.8, alpha=30.0, a=0.9, b=4.0)
    x, t_x, T = _simulate(truth, 5000, 365.0, seed=12)
    fit = btyd.fit_bgnbd(x, t_x, T)
    assert fit.converged
    for name, value in fit.parameters.items():
        assert abs(value - getattr(truth, name)) < 3 * fit.standard_errors[name], (name, value)


def test_the_formulas_agree_with_simulation_of_the_next_days():
    """P(no order in h), P(alive) and expected orders against customers drawn from their posterior."""
    params, (x, t_x, T), h = BgNbd(0.8, 30.0, 0.9, 4.0), (3, 40.0, 100.0), 60.0
    rng = np.random.default_rng(5)
    n = 200_000
    rates = rng.gamma(params.r + x, 1 / (params.alpha + T), n)  # given alive: the rate's posterior
    dropouts = rng.beta(params.a, params.b + x, n)
    alive = rng.random(n) < btyd.p_alive(params, x, t_x, T)
    counts = np.zeros(n)
    clock = np.zeros(n)
    active = alive.copy()
    while active.any():
        clock[active] += rng.exponential(1 / rates[active])
        active &= clock <= h
        counts[active] += 1
        active &= rng.random(n) >= dropouts
    assert btyd.p_no_order(params, x, t_x, T, h) == pytest.approx((counts == 0).mean(), abs=0.005)
    assert btyd.expected_orders(params, x, t_x, T, h) == pytest.approx(counts.mean(), rel=0.02)


def test_lifetime_value_is_expected_orders_times_expected_spend_and_discounting_lowers_it():
    spend = GammaGamma(6.25, 3.74, 15.45)
    plain = btyd.clv(PUBLISHED, spend, 2, 30.0, 38.0, 40.0, 52.0, days_per_unit=7)
    assert plain == pytest.approx(
        btyd.expected_orders(PUBLISHED, 2, 30.0, 38.0, 52.0) * btyd.expected_spend(spend, 2, 40)
    )
    discounted = btyd.clv(PUBLISHED, spend, 2, 30.0, 38.0, 40.0, 52.0, annual_discount=0.1, days_per_unit=7, step=4)
    assert plain / 1.1 < discounted < plain


def test_fits_refuse_summaries_that_cannot_be():
    with pytest.raises(ValueError, match="t_x <= T"):
        btyd.fit_bgnbd([1, 2], [5.0, 20.0], [10.0, 10.0])
    with pytest.raises(ValueError, match="m > 0"):
        btyd.fit_gamma_gamma([1, 2], [5.0, -1.0])
