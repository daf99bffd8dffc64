"""`nudgeflow evaluate`: the models beat their baselines where the truth is known."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from flows.evaluate import OfferLog, auc, evaluate_generated, evaluate_yoochoose, offers_report
from operators.rules import load_rules

YOOCHOOSE = Path(__file__).resolve().parents[3] / "shared" / "data" / "yoochoose-clicks-100k"


@pytest.fixture(scope="module")
def generated():
    return evaluate_generated(300, 14, 5, load_rules())


def test_propensity_beats_the_recency_frequency_heuristic(generated):
    p = generated["propensity"]
    assert p["outcomes"] > 500
    assert p["model_auc"] > p["baseline_auc"] + 0.05
    assert p["model_log_loss"] < p["constant_log_loss"]


def test_the_offer_policy_beats_random_and_the_best_single_offer_in_a_closed_loop(generated):
    o = generated["next_best_offer"]
    assert o["decisions"] > 500 and o["clicks"] > 0  # browse offers the contact policy lets through
    assert o["policy"] > o["random"] and o["policy"] > o["best_single"]
    assert o["policy"] <= o["oracle"]
    assert abs(o["ips_estimate_of_random"] - o["random"]) < 0.03, "the logged probabilities allow off-policy estimates"


def test_auc_by_ranks():
    assert auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert auc([1, 1, 1], [True, False, True]) == 0.5
    assert auc([0.2], [True]) is None


def test_offer_values_are_expected_rewards_under_the_truth():
    logs = [
        OfferLog("p", "a", 0.9, ["a", "b"], {"a": 0.2, "b": 0.4}, False),
        OfferLog("p", "b", 0.1, ["a", "b"], {"a": 0.2, "b": 0.4}, True),
    ]
    report = offers_report(logs)
    assert report["policy"] == 0.3 and report["random"] == 0.3 and report["oracle"] == 0.4
    assert report["best_single_offer"] == "b" and report["ips_estimate_of_random"] == 2.5


@pytest.mark.realdata
def test_recommendations_beat_most_popular_on_real_sessions():
    if not YOOCHOOSE.exists():
        pytest.skip(f"real data not found at {YOOCHOOSE}")
    r = evaluate_yoochoose(YOOCHOOSE)
    assert r["predictions"] > 10_000
    assert r["model_hit_rate@10"] > 3 * r["most_popular_hit_rate@10"]


def test_the_command_prints_the_tables(capsys):
    assert main(["evaluate", "--customers", "60", "--days", "5"]) == 0
    out = capsys.readouterr().out
    assert "| recency-frequency heuristic |" in out and "| random among eligible offers |" in out


def test_recommendations_beat_most_popular_on_the_generated_stream(generated):
    r = generated["recommendations"]
    assert r["checked_views"] > 300
    assert r["model_hit_rate@10"] > r["most_popular_hit_rate@10"]


UCI = Path(__file__).resolve().parents[3] / "shared" / "data" / "online-retail-uci.csv.gz"


@pytest.mark.realdata
def test_lapse_risk_ranks_real_lapses():
    if not UCI.exists():
        pytest.skip(f"real data not found at {UCI}")
    from flows.evaluate import evaluate_lapse

    r = evaluate_lapse(UCI, rows=150_000)
    assert r["scored"] > 1000
    assert r["model_auc"] > r["baseline_auc"] + 0.05, "BG/NBD ranks real lapses better than days since the last order"
    assert abs(r["mean_risk"] - r["lapse_rate"]) < 0.15, "even with the default parameters, near the observed rate"
