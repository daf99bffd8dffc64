"""`nudgeflow evaluate`: the models beat their baselines where the truth is known."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from flows.evaluate import (
    OfferLog,
    auc,
    evaluate_generated,
    evaluate_yoochoose,
    offers_report,
    probability_thresholds,
    render,
    thresholds_report,
)
from operators.rules import load_rules, parse_rules

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


def test_propensity_is_reported_per_rule_against_the_positive_rate_and_the_heuristic(generated):
    by_rule = generated["propensity_by_rule"]
    starter = {"browse_abandonment_offer", "cart_abandonment_push", "onboarding_welcome_push"}
    assert starter <= set(by_rule) and "unknown" not in by_rule, "every outcome is traced to its decision's rule"
    assert sum(r["outcomes"] for r in by_rule.values()) == generated["propensity"]["outcomes"]
    for rule in ("browse_abandonment_offer", "cart_abandonment_push"):
        assert by_rule[rule]["model_auc"] > by_rule[rule]["baseline_auc"], rule


def test_reliability_of_the_calibrated_propensity_and_the_offer_policy(generated):
    p = generated["propensity"]
    for table in (p["reliability"], p["reliability_raw"]):
        assert sum(row["outcomes"] for row in table["deciles"]) == p["outcomes"]
    assert p["reliability"]["ece"] < 0.05
    assert p["model_log_loss"] <= p["raw_log_loss"] + 0.005, "calibrating costs nothing in log loss"
    o = generated["next_best_offer"]
    assert sum(row["outcomes"] for row in o["reliability"]["deciles"]) == o["decisions"]
    assert o["reliability"]["ece"] < o["reliability_raw"]["ece"], "the stated click rate is nearer the clicks"
    text = render({"generated": generated})
    assert "| reliability of propensity, calibrated and raw, by decile of the prediction |" in text
    assert "| propensity by rule |" in text and "| expected calibration error |" in text


def test_audience_thresholds_on_probabilities_are_found_and_measured():
    rules = parse_rules(
        """
version: t
audiences:
  - {id: likely_to_lapse, when: "lifecycle == 'active' and lapse_risk >= 0.5"}
  - {id: keen, when: "0.8 < propensity"}
  - {id: big, when: "lifetime_spend >= 500"}
"""
    )
    found = probability_thresholds(rules)
    assert found == [
        {"audience": "likely_to_lapse", "feature": "lapse_risk", "op": ">=", "threshold": 0.5},
        {"audience": "keen", "feature": "propensity", "op": ">", "threshold": 0.8},
    ]
    scored = [(0.9, True), (0.6, False), (0.5, True), (0.2, False)]
    (row,) = thresholds_report(found, "lapse_risk", scored)
    assert (row["scores"], row["mean_score"], row["observed_rate"]) == (3, round(2 / 3, 4), round(2 / 3, 4))
    assert row["event"] == "a lapse"
    assert thresholds_report(found, "p_alive", scored) == []


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

    r = evaluate_lapse(UCI, rows=150_000, rules=load_rules())
    assert r["scored"] > 1000
    assert r["model_auc"] > r["baseline_auc"] + 0.05, "BG/NBD ranks real lapses better than days since the last order"
    assert abs(r["mean_risk"] - r["lapse_rate"]) < 0.15, "even with the default parameters, near the observed rate"
    assert sum(row["outcomes"] for row in r["reliability"]["deciles"]) == r["scored"]
    (likely,) = r["thresholds"]
    assert likely["audience"] == "likely_to_lapse" and likely["scores"] > 100
    assert 0 <= likely["observed_rate"] <= 1


def test_rules_check_says_what_each_threshold_on_a_probability_meant_in_an_evaluation(tmp_path, capsys):
    import orjson

    from flows.evaluate import rates_by_threshold

    lapses = [(0.3, True), (0.45, False), (0.55, True), (0.7, True), (0.9, False)]
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_bytes(orjson.dumps({"uci_lapse": {"by_threshold": rates_by_threshold(lapses)}}))
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: t\naudiences:\n"
        "  - {id: likely_to_lapse, when: \"lifecycle == 'active' and lapse_risk >= 0.5\"}\n"
        '  - {id: safe, when: "lapse_risk < 0.33"}\n'
        '  - {id: keen, when: "propensity > 0.8"}\n'
    )
    assert main(["rules", "check", str(rules), "--evaluation", str(evaluation)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        "audience likely_to_lapse: lapse_risk >= 0.5 claims at least a 0.5 chance of a lapse;"
        " observed: 0.6667 of 3 scores (mean score 0.7167)"
    ) in out
    assert (
        "audience safe: lapse_risk < 0.33 claims less than a 0.33 chance of a lapse;"
        " observed (at 0.35, the nearest threshold measured): 1.0 of 1 scores (mean score 0.3)"
    ) in out
    assert (
        "audience keen: propensity > 0.8 claims at least a 0.8 chance of an order within the horizon;"
        " not measured in this evaluation"
    ) in out
    assert main(["rules", "check", str(rules), "--evaluation", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
