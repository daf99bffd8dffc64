"""`nudgeflow evaluate --uci`: how often customers enter the starter audiences, and how soon they leave."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.evaluate import _audience_figures, evaluate_audiences, render
from operators.rules import STARTER_RULES, load_rules, parse_rules
from state.affinity import DAY_MS

UCI = Path(__file__).resolve().parents[3] / "shared" / "data" / "online-retail-uci.csv.gz"


def test_figures_count_entries_per_customer_month_and_quick_exits():
    changes = [
        ("a", True, 0),
        ("a", False, 10 * DAY_MS),  # left within 30 days
        ("a", True, 40 * DAY_MS),
        ("a", False, 90 * DAY_MS),
        ("b", True, 5 * DAY_MS),
        ("c", True, 1 * DAY_MS),
        ("c", False, 2 * DAY_MS),  # within 30 days
        ("c", True, 3 * DAY_MS),
        ("c", False, 4 * DAY_MS),  # within 30 days
        ("c", True, 5 * DAY_MS),
    ]
    figures = _audience_figures(changes, customers=10, months=2.0, quick_ms=30 * DAY_MS)
    assert figures == {
        "entries": 6,
        "customers_entering": 3,
        "entries_per_customer_month": 0.3,  # 6 / (10 customers x 2 months)
        "median_entries": 2,
        "max_entries": 3,
        "exited_within_30d": 0.5,
        "back_within_30d": 0.3333,  # c twice: a day after leaving (a came back 30 days after)
    }


def without_hysteresis() -> str:
    """The starter rules' text without their exit conditions and minimum dwells (as before them)."""
    text = STARTER_RULES.read_text().replace("offers: offers.yaml", f"offers: {STARTER_RULES.parent / 'offers.yaml'}")
    kept = [line for line in text.splitlines() if not line.lstrip().startswith(("min_dwell:", "exit_when:"))]
    return "\n".join(kept).replace("lapse_risk >= 0.6", "lapse_risk >= 0.5") + "\n"


@pytest.mark.realdata
def test_the_starter_audiences_enter_less_than_once_per_customer_month_and_flap_less_than_before():
    if not UCI.exists():
        pytest.skip(f"real data not found at {UCI}")
    after = evaluate_audiences(UCI, 150_000, load_rules())
    before = evaluate_audiences(UCI, 150_000, parse_rules(without_hysteresis(), "before.yaml"))
    assert after["customers"] > 1500 and after["months"] > 3
    for name in ("at_risk", "likely_to_lapse"):
        held, flapping = after["audiences"][name], before["audiences"][name]
        assert held["entries_per_customer_month"] < 1
        assert held["entries"] < flapping["entries"] and held["max_entries"] <= flapping["max_entries"], name
    assert after["audiences"]["at_risk"]["exited_within_30d"] == 0, "the minimum dwell is 30 days"
    assert before["audiences"]["at_risk"]["exited_within_30d"] > 0.5
    assert after["audiences"]["at_risk"]["back_within_30d"] < before["audiences"]["at_risk"]["back_within_30d"]
    assert after["audiences"]["lapsed"] == before["audiences"]["lapsed"], "audiences without the fields are as before"
    table = render({"uci_audiences": after})
    assert "| at_risk | " in table and "entries per customer per month" in table
