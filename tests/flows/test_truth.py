"""The truth's lift and per-message figures, against hand computations."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from connectors.responders import RESPONSE_LIFT
from connectors.synthetic import HOUR_MS, iso
from flows.audit import Customers
from flows.truth import Exposure, exposures, measured_arms, per_message, true_lift, uncapped_rules
from operators.rules import STARTER_RULES, load_rules
from schemas.items import Output
from schemas.streams import EXPERIMENTS

T = 1_767_600_000_000
DAY = 24 * HOUR_MS
WEEK = 7 * DAY
LIFT = RESPONSE_LIFT["lapsed"]["push"]


def delivery(customer: str, rule: str, at: int, chance: float, earlier: int = 0, until: int = HOUR_MS) -> dict:
    return {
        "customer": customer,
        "person": customer,
        "rule_id": rule,
        "persona": "lapsed",
        "channel": "push",
        "at": iso(at),
        "chance": chance,
        "earlier_messages": earlier,
        "responded": False,
        "answer_from": iso(at) if chance else None,
        "answer_until": iso(at + until - 1) if chance else None,
    }


def in_test(d: dict[str, Any]) -> bool:
    return d["rule_id"] == "tested"


def recording(orders: dict[str, list[int]] | None = None) -> Customers:
    lines = [
        orjson.dumps({"event": "Order Completed", "messageId": f"m-{at}", "timestamp": iso(at), "userId": customer})
        for customer, times in (orders or {}).items()
        for at in times
    ]
    return Customers(lines)


def lift_of(exposures: list[Exposure], deliveries: list[dict], orders: dict | None = None) -> float | None:
    return true_lift(exposures, "treated", deliveries, recording(orders), WEEK, in_test)


def test_a_treated_customer_gains_the_chance_of_each_delivery_in_the_window() -> None:
    deliveries = [delivery("a", "tested", T + HOUR_MS, 0.2), delivery("a", "tested", T + 2 * HOUR_MS, 0.1, 1)]
    assert lift_of([Exposure("a", "treated", T)], deliveries) == pytest.approx(1 - 0.8 * 0.9)


def test_only_the_part_of_an_answer_inside_the_window_counts() -> None:
    late = delivery("a", "tested", T + WEEK - HOUR_MS // 2, 0.2)
    before = delivery("a", "tested", T - HOUR_MS // 4, 0.4)
    assert lift_of([Exposure("a", "treated", T)], [late, before]) == pytest.approx(1 - 0.9 * 0.7, rel=1e-6)


def test_a_customer_who_orders_on_their_own_gains_nothing() -> None:
    deliveries = [delivery("a", "tested", T + HOUR_MS, 0.2)]
    orders = {"a": [T - DAY, T + 3 * DAY]}
    assert lift_of([Exposure("a", "treated", T)], deliveries, orders) == 0.0
    assert lift_of([Exposure("a", "treated", T)], deliveries, {"a": [T - DAY, T + 8 * DAY]}) == pytest.approx(0.2)


def test_the_control_arm_is_spared_the_tiring_of_the_tested_rule() -> None:
    """Another rule's message answers more often when the tested rule's message did not come first:
    the treated arm gains the tested chance but loses some of the other's."""
    tested = delivery("a", "tested", T + HOUR_MS, 0.2)
    other = delivery("a", "other", T + DAY, LIFT * 0.5, earlier=1)
    as_treated = (1 - 0.2) * (1 - LIFT * 0.5)
    as_control = 1 - LIFT
    assert lift_of([Exposure("a", "treated", T)], [tested, other]) == pytest.approx(as_control - as_treated)


def test_the_lift_is_the_mean_over_treated_customers_only() -> None:
    deliveries = [delivery("a", "tested", T + HOUR_MS, 0.2), delivery("b", "other", T + HOUR_MS, 0.3)]
    exposures = [Exposure("a", "treated", T), Exposure("b", "treated", T), Exposure("c", "control", T)]
    assert lift_of(exposures, deliveries) == pytest.approx(0.1)
    assert lift_of([Exposure("c", "control", T)], deliveries) is None


def test_customers_own_orders_and_who_is_who() -> None:
    """Answers are not own orders; an anonymous id linked to a user is that user (what it did too)."""
    lines = [
        b'{"event":"Order Completed","messageId":"m-1","timestamp":"2026-01-05T10:00:00.000Z","userId":"u"}',
        b'{"event":"Order Completed","messageId":"m-r-x","timestamp":"2026-01-05T11:00:00.000Z","userId":"u"}',
        b'{"event":"Order Completed","messageId":"m-3","timestamp":"2026-01-05T09:00:00.000Z","anonymousId":"a"}',
        b'{"event":"Product Viewed","messageId":"m-2","timestamp":"2026-01-05T12:00:00.000Z","anonymousId":"b"}',
        b'{"event":"Signed Up","messageId":"m4","timestamp":"2026-01-05T12:00:00.000Z","anonymousId":"a","userId":"v"}',
        b'{"type":"alias","messageId":"m-5","timestamp":"2026-01-05T12:00:00.000Z","previousId":"b","userId":"u"}',
    ]
    found = Customers(lines)
    assert found.orders == {"u": [1767607200000], "v": [1767603600000]}
    assert [found.person(c) for c in ("a", "b", "u", "x")] == ["v", "u", "u", "x"]


def test_a_person_is_measured_under_the_id_they_were_exposed_with() -> None:
    lines = [
        b'{"type":"identify","messageId":"m","timestamp":"2026-01-05T12:00:00.000Z","anonymousId":"a","userId":"u"}'
    ]
    before = delivery("a", "tested", T + HOUR_MS, 0.2) | {"person": "u"}
    after = delivery("u", "tested", T + DAY, 0.1, 1)
    own = orjson.dumps({"event": "Order Completed", "messageId": "m-o", "timestamp": iso(T + 2 * DAY), "userId": "u"})
    lift = true_lift([Exposure("a", "treated", T)], "treated", [before, after], Customers(lines), WEEK, in_test)
    assert lift == pytest.approx(1 - 0.8 * 0.9)
    with_order = Customers([*lines, own])
    assert true_lift([Exposure("a", "treated", T)], "treated", [before, after], with_order, WEEK, in_test) == 0.0


def test_per_message() -> None:
    deliveries = [delivery("a", "x", T, 0.2), delivery("a", "x", T, 0.1)]
    deliveries[0]["responded"] = True
    assert per_message(deliveries) == {
        "messages": 2,
        "caused_orders": 1,
        "caused_per_message": 0.5,
        "expected_per_message": pytest.approx(0.15),
    }
    assert per_message([])["caused_per_message"] is None


def test_uncapped_rules_keep_all_but_caps_and_cooldowns() -> None:
    rules, free = load_rules(), uncapped_rules(STARTER_RULES)
    assert rules.policy.caps and any(t.rule.cooldown for t in rules.triggers)
    assert free.policy.caps == [] and not any(t.rule.cooldown for t in free.triggers)
    assert free.policy.model_copy(update={"caps": rules.policy.caps}) == rules.policy
    assert [t.rule.id for t in free.triggers] == [t.rule.id for t in rules.triggers]


def test_exposures_and_arms_are_read_from_the_experiments_records() -> None:
    def record(customer: str, at: int, counts: dict[str, dict[str, dict[str, int]]]) -> Output:
        return Output(EXPERIMENTS, customer, at, 0, orjson.dumps({"0": counts}))

    outputs = [
        record("a", T, {"holdout": {"treated": {"exposed": 1, "pre": 0}}, "t": {"control": {"exposed": 1}}}),
        record("a", T + DAY, {"holdout": {"treated": {"conversions": 1, "orders": 1}}}),
        record("b", T + 1, {"holdout": {"control": {"exposed": 1}}}),
        Output("triggers.push", "a", T, 0, b"{}"),
    ]
    assert exposures(outputs) == {
        "holdout": [Exposure("a", "treated", T), Exposure("b", "control", T + 1)],
        "t": [Exposure("a", "control", T)],
    }
    assert measured_arms(outputs) == {
        "holdout": {"treated": {"exposed": 1, "pre": 0, "conversions": 1, "orders": 1}, "control": {"exposed": 1}},
        "t": {"control": {"exposed": 1}},
    }
