"""Lift and its 95% intervals, checked against figures worked out by hand."""

from __future__ import annotations

import math
import random

import pytest

from flows.lift import Z95, ArmSums, estimates, experiment_report, lift


def test_absolute_and_relative_lift_match_a_hand_computation():
    # control 100 of 1000 convert, treated 130 of 1000. Sample variances p(1-p) n/(n-1):
    # control 0.09 * 1000/999, treated 0.1131 * 1000/999; the means' variances divide by 1000 again.
    report = experiment_report(
        {"control": {"exposed": 1000, "conversions": 100}, "treated": {"exposed": 1000, "conversions": 130}},
        "control",
    )
    treated = report["treated"]
    var_c, var_t = 0.09 / 999, 0.1131 / 999
    se = math.sqrt(var_c + var_t)  # 0.0142584...
    assert treated["rate"] == 0.13 and report["control"]["rate"] == 0.1
    assert treated["lift"] == pytest.approx(0.03, abs=1e-6)
    assert treated["lift_ci"] == pytest.approx([0.03 - 1.959964 * se, 0.03 + 1.959964 * se], abs=1e-6)
    assert treated["lift_ci"] == pytest.approx([0.002054, 0.057946], abs=1e-6)
    # delta method: var(t/c) ~ var_t / c^2 + t^2 var_c / c^4 = 0.0113213 + 0.0152252
    se_rel = math.sqrt(var_t / 0.01 + 0.0169 * var_c / 0.0001)
    assert se_rel == pytest.approx(0.162931, abs=1e-6)
    assert treated["relative_lift"] == pytest.approx(0.3, abs=1e-6)
    assert treated["relative_lift_ci"] == pytest.approx([0.3 - 0.319341, 0.3 + 0.319341], abs=1e-5)
    assert "lift" not in report["control"]


def test_a_relative_lift_over_a_control_that_never_converts_is_undefined():
    result = lift(
        estimates({"a": ArmSums(10, 2)})["a"],
        estimates({"c": ArmSums(10, 0)})["c"],
    )
    assert result["relative_lift"] is None and result["relative_lift_ci"] is None


def test_cuped_keeps_the_lift_and_narrows_its_interval_when_the_pre_period_predicts_conversion():
    """Customers who ordered before convert more: adjusting by the pre-period removes that variance."""
    rng = random.Random(3)
    arms: dict[str, dict[str, int]] = {}
    for arm, uplift in (("control", 0.0), ("treated", 0.05)):
        counts = dict.fromkeys(("exposed", "conversions", "pre", "pre_squares", "conversions_pre"), 0)
        for _ in range(20_000):
            y = rng.choice((0, 0, 0, 1, 2, 4))
            x = int(rng.random() < 0.05 + 0.12 * y + uplift)
            for name, value in (("exposed", 1), ("conversions", x), ("pre", y), ("pre_squares", y * y)):
                counts[name] += value
            counts["conversions_pre"] += x * y
        arms[arm] = counts
    treated = experiment_report(arms, "control", cuped=True)["treated"]
    plain_width = treated["lift_ci"][1] - treated["lift_ci"][0]
    cuped = treated["cuped"]
    cuped_width = cuped["lift_ci"][1] - cuped["lift_ci"][0]
    assert cuped_width < 0.95 * plain_width
    assert cuped["lift_ci"][0] < 0.05 < cuped["lift_ci"][1]


def test_cuped_adjustment_matches_a_hand_computation():
    # arm a: customers (x, y) = (1, 2), (0, 0); arm b: (1, 1), (0, 1). Pooled: n 4, Σx 2, Σy 4, Σy² 6, Σxy 3.
    # cov = (3 - 2*4/4)/3 = 1/3, var y = (6 - 16/4)/3 = 2/3, theta = 0.5, mean y = 1.
    a, b = ArmSums(2, 1, 2, 4, 2), ArmSums(2, 1, 2, 2, 1)
    adjusted = estimates({"a": a, "b": b}, cuped=True)
    # a: rate 0.5 - 0.5 (1 - 1) = 0.5; var x 0.5, var y 2, cov 1 -> (0.5 - 1 + 0.5) / 2 = 0
    assert adjusted["a"].rate == pytest.approx(0.5) and adjusted["a"].variance == pytest.approx(0.0)
    # b: var x 0.5, var y 0, cov 0 -> 0.5 / 2
    assert adjusted["b"].rate == pytest.approx(0.5) and adjusted["b"].variance == pytest.approx(0.25)
    assert pytest.approx(1.959964, abs=1e-6) == Z95
