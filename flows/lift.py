"""Lift of each arm of an experiment against its control, with 95% confidence intervals.

The outcome of an exposed customer is ``x`` = 1 when they ordered within the conversion window
after their first exposure (else 0). An arm's rate is the mean of ``x``; the absolute lift is the
difference of two rates, its variance the sum of the two means' variances; the relative lift is
their ratio less 1, its variance by the delta method,
``var(t/c) ~ var_t / c^2 + t^2 var_c / c^4``. With CUPED, each customer's ``x`` is adjusted by
``theta (y - mean y)``, ``y`` being their orders in the pre-period before exposure and ``theta =
cov(x, y) / var(y)`` over all arms, which removes the variance that the pre-period explains.
Everything is computed from per-arm sums (``exposed``, ``conversions``, ``pre``, ``pre_squares``,
``conversions_pre``), which add up over shards and report periods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Z95 = 1.959963984540054


@dataclass(frozen=True)
class ArmSums:
    """One arm's sums: customers ``n``, ``Σx`` (conversions), ``Σy``, ``Σy²``, ``Σxy``."""

    n: int
    x: int
    y: int = 0
    yy: int = 0
    xy: int = 0

    @classmethod
    def of(cls, counts: dict[str, int]) -> ArmSums:
        return cls(
            counts.get("exposed", 0),
            counts.get("conversions", 0),
            counts.get("pre", 0),
            counts.get("pre_squares", 0),
            counts.get("conversions_pre", 0),
        )

    def covariances(self) -> tuple[float, float, float]:
        """Sample variance of ``x``, of ``y`` and their covariance (``x`` is 0 or 1: ``Σx² = Σx``)."""
        n = self.n
        if n < 2:
            return 0.0, 0.0, 0.0
        var_x = (self.x - self.x * self.x / n) / (n - 1)
        var_y = (self.yy - self.y * self.y / n) / (n - 1)
        cov = (self.xy - self.x * self.y / n) / (n - 1)
        return var_x, var_y, cov


@dataclass(frozen=True)
class Estimate:
    """An arm's (adjusted) rate and the variance of that mean."""

    rate: float
    variance: float


def estimates(arms: dict[str, ArmSums], cuped: bool = False) -> dict[str, Estimate]:
    """Each arm's rate and its variance; with ``cuped``, adjusted by the pre-period orders."""
    theta, mean_y = 0.0, 0.0
    if cuped:
        pooled = ArmSums(*(sum(getattr(a, f) for a in arms.values()) for f in ("n", "x", "y", "yy", "xy")))
        _, var_y, cov = pooled.covariances()
        theta = cov / var_y if var_y > 0 else 0.0
        mean_y = pooled.y / pooled.n if pooled.n else 0.0
    out = {}
    for name, arm in arms.items():
        if arm.n == 0:
            continue
        var_x, var_y, cov = arm.covariances()
        rate = arm.x / arm.n - theta * (arm.y / arm.n - mean_y)
        variance = max(var_x - 2 * theta * cov + theta * theta * var_y, 0.0) / arm.n
        out[name] = Estimate(rate, variance)
    return out


def lift(treated: Estimate, control: Estimate) -> dict[str, Any]:
    """Absolute and relative lift of ``treated`` over ``control`` with 95% intervals (``None``
    where undefined: a relative lift over a zero rate)."""
    diff = treated.rate - control.rate
    se = math.sqrt(treated.variance + control.variance)
    result: dict[str, Any] = {"lift": diff, "lift_ci": [diff - Z95 * se, diff + Z95 * se]}
    c = control.rate
    if c > 0:
        ratio = treated.rate / c
        se_rel = math.sqrt(treated.variance / c**2 + treated.rate**2 * control.variance / c**4)
        result.update(relative_lift=ratio - 1, relative_lift_ci=[ratio - 1 - Z95 * se_rel, ratio - 1 + Z95 * se_rel])
    else:
        result.update(relative_lift=None, relative_lift_ci=None)
    return result


def experiment_report(arms: dict[str, dict[str, int]], control: str, cuped: bool = False) -> dict[str, Any]:
    """Per arm: exposed, conversions, rate, orders, revenue; and for each arm but ``control``, its
    lift against it (also CUPED-adjusted when ``cuped``). Figures rounded for reading."""
    sums = {name: ArmSums.of(counts) for name, counts in arms.items()}
    plain = estimates(sums)
    adjusted = estimates(sums, cuped=True) if cuped else {}
    report = {}
    for name, counts in sorted(arms.items()):
        exposed = counts.get("exposed", 0)
        revenue = counts.get("revenue_cents", 0) / 100
        row: dict[str, Any] = {
            "exposed": exposed,
            "conversions": counts.get("conversions", 0),
            "rate": _round(plain[name].rate) if name in plain else None,
            "orders": counts.get("orders", 0),
            "revenue": round(revenue, 2),
            "revenue_per_exposed": round(revenue / exposed, 4) if exposed else None,
        }
        if name != control and name in plain and control in plain:
            row.update(_rounded(lift(plain[name], plain[control])))
            if cuped:
                row["cuped"] = _rounded(lift(adjusted[name], adjusted[control]))
        report[name] = row
    return report


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _rounded(figures: dict[str, Any]) -> dict[str, Any]:
    return {
        key: [_round(v) for v in value] if isinstance(value, list) else _round(value) for key, value in figures.items()
    }
