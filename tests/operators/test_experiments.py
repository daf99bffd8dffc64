"""Experiments: the rule file's section, assignment by hashing, and what each arm's customers did."""

from __future__ import annotations

import orjson
import pytest
from conftest import line_of, rule_file_problems

from connectors.files import add_counts
from operators.decisions import DecisionWriter
from operators.experiments import Experiments, Measurement, draw
from operators.rules import parse_rules
from schemas.experiments import ExperimentConfig
from schemas.rules import TriggerRule
from schemas.streams import EXPERIMENTS
from state.customer import CustomerState

FILE = "rules/shop.yaml"
RULES = """\
version: v1
triggers:
  - id: cart_push
    channel: push
    on: Product Added
    content: {title: "Your cart, {name}"}
  - id: receipt
    channel: email
    on: Order Completed
"""
TEST = """\
experiments:
  holdout: {share: 0.05, salt: h1}
  tests:
    - id: cart_copy
      rule: cart_push
      salt: s1
      arms:
        - {id: personalized, share: 0.5}
        - {id: generic, share: 0.3, content: {title: "Your cart"}}
        - {id: control, share: 0.2, send: false}
"""
CART = TriggerRule(id="cart_push", channel="push", on=["Product Added"])


def config(text: str = TEST) -> ExperimentConfig:
    return parse_rules(RULES + text, FILE).experiments


# --- the rule file --------------------------------------------------------------------
def test_the_section_loads_with_its_defaults():
    experiments = config()
    assert experiments.holdout.share == 0.05 and experiments.holdout.conversion_window == 7 * 86_400_000
    assert [arm.id for arm in experiments.tests[0].arms] == ["personalized", "generic", "control"]
    assert experiments.attribution.windows == {
        "push": 86_400_000,
        "in_app": 3_600_000,
        "email": 7 * 86_400_000,
        "sms": 86_400_000,
    }
    assert parse_rules(RULES, FILE).experiments.active is False


def test_a_test_of_an_unknown_rule_is_refused_naming_its_line():
    text = RULES + TEST.replace("rule: cart_push", "rule: cart_pushh")
    message = rule_file_problems(text)
    assert message.startswith(f"{FILE}:{line_of(text, 'rule: cart_pushh')}: field 'experiments.tests.0.rule': "), (
        message
    )
    assert "unknown trigger rule 'cart_pushh'" in message


def test_shares_that_do_not_add_up_to_one_are_refused_naming_the_test():
    text = RULES + TEST.replace("share: 0.3", "share: 0.4")
    message = rule_file_problems(text)
    assert "the shares of test 'cart_copy' add up to 1.1, not 1" in message
    assert message.startswith(f"{FILE}:{line_of(text, '- id: cart_copy')}: field 'experiments.tests.0': "), message


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("share: 0.05", "share: 1.5"), "less than 1"),
        (("{id: control, share: 0.2, send: false}", "{id: holdout_arm, share: 0.2}"), "no arm 'control'"),
        (("- id: cart_copy", "- id: holdout"), "the global holdout's id"),
        (("salt: s1", "salt: s1\n      conversion_window: 7"), "a number needs a unit"),
        (("  holdout:", "  pre_period: 14d\n  holdout:"), "pre_period must be one of 7d, 30d, not '14d'"),
    ],
)
def test_bad_settings_are_refused(change, words):
    assert words in rule_file_problems(RULES + TEST.replace(*change))


# --- assignment -------------------------------------------------------------------------
def test_assignment_is_stable_and_its_shares_are_those_configured_over_100k_customers():
    experiments = Experiments(config())
    ids = [f"customer-{n}" for n in range(100_000)]
    first = [experiments.assign(cid, CART) for cid in ids]
    assert [experiments.assign(cid, CART) for cid in ids[:1000]] == first[:1000]  # stable
    held = sum(1 for a in first if a.experiment == "holdout")
    arms = {
        arm: sum(1 for a in first if (a.experiment, a.arm) == ("cart_copy", arm))
        for arm in ("personalized", "generic", "control")
    }
    # binomial standard deviations at n = 100k are below 0.0016: 4 of them either way
    assert abs(held / 100_000 - 0.05) < 0.0028
    for arm, share in (("personalized", 0.5), ("generic", 0.3), ("control", 0.2)):
        assert abs(arms[arm] / (100_000 - held) - share) < 0.0064, (arm, arms)


def test_a_held_out_customer_gets_no_marketing_trigger_and_a_control_arm_none_either():
    experiments = Experiments(config())
    by_kind: dict[str, object] = {}
    for n in range(2000):
        assignment = experiments.assign(f"c{n}", CART)
        by_kind.setdefault(f"{assignment.experiment}.{assignment.arm}", assignment)
    assert by_kind["holdout.control"].holdout is True
    assert by_kind["cart_copy.control"].holdout is True
    assert by_kind["cart_copy.generic"].content == {"title": "Your cart"}
    assert by_kind["cart_copy.personalized"].holdout is False
    assert by_kind["cart_copy.personalized"].content is None


def test_other_rules_are_measured_in_the_holdout_only_and_shadow_rules_not_at_all():
    experiments = Experiments(config())
    receipt = TriggerRule(id="receipt", channel="email", on=["Order Completed"])
    shadow = TriggerRule(id="cart_push", channel="push", on=["Product Added"], shadow=True)
    kinds = {(a.experiment, a.arm) for n in range(2000) if (a := experiments.assign(f"c{n}", receipt))}
    assert kinds == {("holdout", "control"), ("holdout", "treated")}
    assert experiments.assign("c1", shadow) is None


def test_the_draw_changes_with_the_salt_and_the_experiment():
    assert draw("c1", "cart_copy", "s1") == draw("c1", "cart_copy", "s1")
    assert draw("c1", "cart_copy", "s1") != draw("c1", "cart_copy", "s2")
    assert draw("c1", "cart_copy", "s1") != draw("c1", "other", "s1")
    assert 0 <= draw("c1", "x", "") < 1


# --- measurement -------------------------------------------------------------------------
DAY = 86_400_000
T0 = 1_767_571_200_000  # 2026-01-05T00:00Z


def summed(out: list) -> dict:
    """The experiments records of ``out``, summed as the output folder sums them."""
    total: dict = {}
    for item in out:
        assert item.stream == EXPERIMENTS
        add_counts(total, orjson.loads(item.body))
    return total


def test_exposure_counts_once_per_experiment_and_orders_in_the_window_convert():
    stats: dict = {}
    measure = Measurement(config(), DecisionWriter("v1", stats))
    experiments = Experiments(config())
    state = CustomerState("c1", T0)
    found = experiments.assignments("c1", CART)
    out: list = []
    measure.expose(state, found, T0 + 1000, out)
    measure.expose(state, found, T0 + DAY + 1000, out)  # a second decision: no new exposure
    measure.ordered(state, T0 + 2 * DAY, 20.5, out)  # converts
    measure.ordered(state, T0 + 3 * DAY, 10.0, out)  # revenue, no second conversion
    measure.ordered(state, T0 + 9 * DAY, 99.0, out)  # after the 7-day window
    total = summed(out)
    assert sorted(total) == [str(T0), str(T0 + 2 * DAY), str(T0 + 3 * DAY)]  # by day of event time
    arms = {(e, a): counts for day in total.values() for e, arms in day.items() for a, counts in arms.items()}
    assert len({e for e, _ in arms}) == len(found)
    cumulative: dict = {}
    for day in total.values():
        add_counts(cumulative, day)
    for assignment in found:
        counts = cumulative[assignment.experiment][assignment.arm]
        assert counts["exposed"] == 1
        assert counts["conversions"] == 1
        assert counts["orders"] == 2
        assert counts["revenue_cents"] == 3050
        assert stats["experiments"][assignment.experiment][assignment.arm] == {
            "exposed": 1,
            "conversions": 1,
            "revenue_cents": 3050,
        }


def test_rules_check_shows_the_holdout_and_each_test():
    lines = parse_rules(RULES + TEST, FILE).describe()
    assert "holdout: 5% of customers get no marketing trigger" in lines
    assert (
        "test cart_copy of cart_push: personalized 50%, generic 30%, control 20% (no trigger); lift against control"
        in lines
    )
    assert not [line for line in parse_rules(RULES, FILE).describe() if line.startswith(("holdout", "test "))]


def test_an_exposed_customer_keeps_its_arm_even_when_the_salt_changes():
    first, resalted = Experiments(config()), Experiments(config(TEST.replace("salt: s1", "salt: s2")))
    moved = next(
        cid
        for n in range(1000)
        if (cid := f"c{n}")
        and (a := first.assign(cid, CART)).experiment == "cart_copy"
        and resalted.assign(cid, CART) != a
    )
    state = CustomerState(moved, T0)
    Measurement(config(), DecisionWriter("v1", {})).expose(state, first.assignments(moved, CART), T0, [])
    assert resalted.assign(moved, CART, state.exposures) == first.assign(moved, CART)
    assert resalted.content(moved, CART, state.exposures) == first.content(moved, CART)
