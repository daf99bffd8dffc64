"""BG/NBD and Gamma-Gamma scores as the papers write them, computed with SciPy: the reference the
compiled scores (``state/native/src/btyd.rs``) are checked against.

Fader, Hardie and Lee, "Counting your customers the easy way" (2005), equations (10) and (13);
Fader, Hardie and Lee, "RFM and CLV" (2005) and Fader and Hardie's Gamma-Gamma note, equation (5).
``x``: repeat orders, ``t_x``: first to last order, ``age`` (T): first order to now, in days.
"""

from __future__ import annotations

import decimal
import math

from scipy.special import hyp2f1

from state.btyd import BtydParameters as Population

CDNOW_DAYS = Population(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426, p=6.25, q=3.74, v=15.45)
"""The published BG/NBD fit of the CDNOW sample (alpha 4.414 weeks, in days), Gamma-Gamma placeholders."""


def hyp2f1_decimal(a: float, b: float, c: float, z: float, digits: int = 50) -> float:
    """2F1(a, b; c; z) by its series in ``digits``-digit decimal arithmetic (for 0 <= z < 1): a check
    of SciPy too, which loses digits where c - a - b is very negative and z near 1."""
    context = decimal.Context(prec=digits)
    a_, b_, c_, z_ = (context.create_decimal_from_float(v) for v in (a, b, c, z))
    term = total = decimal.Decimal(1)
    tiny = decimal.Decimal(10) ** -(digits - 10)
    n = 0
    while True:
        term = context.multiply(term, context.divide((a_ + n) * (b_ + n) * z_, (c_ + n) * (n + 1)))
        total = context.add(total, term)
        n += 1
        if abs(term) <= tiny * abs(total):
            return float(total)


def p_alive(pop: Population, x: float, t_x: float, age: float) -> float:
    """P(alive | x, t_x, T), equation (13): 1 for x = 0."""
    if x == 0:
        return 1.0
    return 1 / (1 + pop.a / (pop.b + x - 1) * ((pop.alpha + age) / (pop.alpha + t_x)) ** (pop.r + x))


def expected_orders(pop: Population, t: float, x: float, t_x: float, age: float) -> float:
    """E[Y(t) | x, t_x, T], equation (10), with the plain 2F1."""
    r, alpha, a, b = pop.r, pop.alpha, pop.a, pop.b
    z = t / (alpha + age + t)
    silent = ((alpha + age) / (alpha + age + t)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, z)
    first = (a + b + x - 1) / (a - 1)
    dead_odds = 0.0 if x == 0 else a / (b + x - 1) * ((alpha + age) / (alpha + t_x)) ** (r + x)
    return first * (1 - silent) / (1 + dead_odds)


def no_order_within(pop: Population, days: float, x: float, t_x: float, age: float) -> float:
    """P(no order in the next ``days``): stopped (1 - P(alive)), or alive with no order that long,
    the Poisson chance e^(-lambda days) averaged over lambda's posterior Gamma(r + x, alpha + T)."""
    alive = p_alive(pop, x, t_x, age)
    silent = ((pop.alpha + age) / (pop.alpha + age + days)) ** (pop.r + x)
    return (1 - alive) + alive * silent


def lapse_risk_by_integration(pop: Population, days: float, x: float, t_x: float, age: float) -> float:
    """``no_order_within`` the long way: P(alive) times the chance of no order in ``days``
    integrated numerically over the rate's posterior density (checks the closed form)."""
    from scipy import integrate, stats

    shape, rate = pop.r + x, pop.alpha + age
    density = stats.gamma(shape, scale=1 / rate).pdf
    silent, _ = integrate.quad(lambda lam: math.exp(-lam * days) * density(lam), 0, math.inf, limit=200)
    alive = p_alive(pop, x, t_x, age)
    return (1 - alive) + alive * silent


def expected_order_value(pop: Population, x: float, mean: float) -> float:
    """Gamma-Gamma E[M | x, mean]: (p (v + x mean)) / (p x + q - 1)."""
    return pop.p * (pop.v + x * mean) / (pop.p * x + pop.q - 1)
