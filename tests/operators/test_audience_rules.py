"""Audience fields that stop flapping (``exit_when``, ``min_dwell``) in rule files: parsed, described, and
refused with the file, the audience, the field and the line."""

from __future__ import annotations

import pytest
from conftest import line_of, rule_file_problems, rules_from

from operators.audience_bands import overlapping
from operators.expressions import compile_expression
from state.catalogue import FEATURES

FILE = "rules/shop.yaml"
HEAD = 'version: v1\naudiences:\n  - id: ok\n    when: "orders >= 1"\n  - id: risky\n'


def audience(when: str, exit_when: str | None = None, min_dwell: str | None = None) -> str:
    text = f'{HEAD}    when: "{when}"\n'
    if exit_when is not None:
        text += f'    exit_when: "{exit_when}"\n'
    if min_dwell is not None:
        text += f"    min_dwell: {min_dwell}\n"
    return text


def test_the_fields_are_read_and_described():
    rules = rules_from(audience("lapse_risk >= 0.6", "lapse_risk < 0.4 or orders == 0", "14d"))
    risky = rules.audiences[1]
    assert risky.rule.min_dwell == 14 * 86_400_000 and risky.dwell_timer == "~dwell:risky"
    assert risky.names == {"lapse_risk", "orders"}
    assert "Order Completed" in risky.listens and risky.time_dependent
    assert rules.reads_lapse_risk and list(rules.dwell_timers) == ["~dwell:risky"]
    assert [line for line in rules.describe() if line.startswith("audience risky")] == [
        "audience risky: listens to Order Cancelled, Order Completed, Order Refunded and time (lifecycle boundaries);"
        " reads lapse_risk, orders; exits when lapse_risk < 0.4 or orders == 0; stays at least 14d"
    ]
    assert rules.audiences[0].dwell_timer is None and rules.audiences[0].exit_when is None


def test_an_exit_condition_on_other_features_makes_the_audience_listen_to_their_events():
    rules = rules_from(audience("tenure_days > 5", "lifetime_spend > 100"))
    assert "Order Refunded" in rules.audiences[1].listens


BAD = {
    "exit_when unknown name": (audience("orders >= 1", "order_count < 1"), "exit_when", "exit_when", "unknown name"),
    "exit_when reads the event": (
        audience("orders >= 1", "event.name == 'x'"),
        "exit_when",
        "exit_when",
        "unknown name 'event'",
    ),
    "exit_when syntax": (audience("orders >= 1", "orders <"), "exit_when", "exit_when", "syntax error"),
    "exit_when overlaps": (
        audience("lapse_risk >= 0.6", "lapse_risk < 0.7"),
        "exit_when",
        "exit_when",
        "'lapse_risk < 0.7' can hold while 'when' does: a customer would enter and leave at once",
    ),
    "exit_when is when": (audience("at_risk", "at_risk"), "exit_when", "exit_when", "the same condition as 'when'"),
    "min_dwell zero": (audience("at_risk", min_dwell="0d"), "min_dwell", "min_dwell", "greater than 0"),
    "min_dwell without unit": (audience("at_risk", min_dwell="30"), "min_dwell", "min_dwell", "needs a unit"),
    "min_dwell too long": (audience("at_risk", min_dwell="400d"), "min_dwell", "min_dwell", "400d is too long"),
    "min_dwell not a duration": (audience("at_risk", min_dwell="soon"), "min_dwell", "min_dwell", "not a duration"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_errors_name_file_audience_field_and_line(case):
    text, field, needle, words = BAD[case]
    message = rule_file_problems(text)
    assert message.startswith(f"{FILE}:{line_of(text, needle)}: rule 'risky' field '{field}': "), message
    assert words in message
    assert len(message.splitlines()) == 1


def bands(when: str, exit_when: str) -> str | None:
    names = FEATURES.keys()
    return overlapping(compile_expression(when, names), compile_expression(exit_when, names))


@pytest.mark.parametrize(
    ("when", "exit_when"),
    [
        ("lifecycle == 'active' and lapse_risk >= 0.6", "lifecycle != 'active' or lapse_risk < 0.4"),
        ("lapse_risk >= 0.6", "lapse_risk < 0.6"),
        ("lapse_risk > 0.6", "0.6 >= lapse_risk"),
        ("at_risk and orders >= 2", "not at_risk"),
        ("at_risk", "lifecycle == 'lapsed'"),  # other features: not judged
        ("1 <= orders < 5", "orders > 10"),  # a chain: not judged
        ("frequency >= 3", "orders < 2"),
        ("traits.city == 'Paris'", "traits.city != 'Paris'"),
    ],
)
def test_exclusive_conditions_pass(when, exit_when):
    assert bands(when, exit_when) is None


@pytest.mark.parametrize(
    ("when", "exit_when", "part"),
    [
        ("lapse_risk >= 0.6", "lapse_risk <= 0.6", "lapse_risk <= 0.6"),
        ("lapse_risk >= 0.6 and orders > 1", "orders > 3 or lapse_risk < 0.4", "orders > 3"),
        ("frequency >= 3", "orders == 5", "orders == 5"),
        ("lifecycle == 'active'", "lifecycle == 'active' or lapse_risk > 0.9", "lifecycle == 'active'"),
        ("traits['city'] == 'Paris'", "traits.city != 'Rome'", "traits.city != 'Rome'"),
        ("at_risk", "at_risk == true", "at_risk == true"),
    ],
)
def test_overlapping_conditions_are_named(when, exit_when, part):
    assert bands(when, exit_when) == f"'{part}' can hold while 'when' does"
