"""Tests of the known truth: customers answer deliveries with their persona's lift, weakened by fatigue."""

from __future__ import annotations

import pytest

from connectors.responders import (
    FATIGUE_DAYS,
    FATIGUE_FACTOR,
    RESPONSE_LIFT,
    RESPONSE_WINDOW_MS,
    Responders,
)
from connectors.synthetic import DAY_MS, DEFAULT_START, HOUR_MS, _profile
from schemas.events import validate_event
from schemas.timestamps import epoch_ms

T0 = int(DEFAULT_START.timestamp() * 1000) + 10 * HOUR_MS


@pytest.fixture
def responders() -> Responders:
    return Responders(50, 7, seed=3)


def user(index: int) -> str:
    return f"u-{index:06d}"


def test_a_first_message_answers_with_the_personas_lift(responders: Responders) -> None:
    responders.deliver(user(0), "push", "d-1", "r", T0, T0)
    delivery = responders.deliveries[0]
    assert delivery.persona == _profile(0, 3, 7).persona
    assert delivery.earlier_messages == 0
    assert delivery.chance == RESPONSE_LIFT[delivery.persona]["push"]


def test_each_message_of_the_last_days_weakens_the_next(responders: Responders) -> None:
    """Fatigue counts every channel's messages to the customer within FATIGUE_DAYS before, no older."""
    customer = user(1)
    times = [T0, T0 + HOUR_MS, T0 + 2 * DAY_MS, T0 + FATIGUE_DAYS * DAY_MS + HOUR_MS + 1]
    for n, at in enumerate(times):
        responders.deliver(customer, "in_app" if n % 2 else "push", f"d-{n}", "r", at, at)
    responders.deliver(user(2), "push", "other", "r", T0 + 3 * DAY_MS, T0 + 3 * DAY_MS)
    assert [d.earlier_messages for d in responders.deliveries[:4]] == [0, 1, 2, 1]
    last = responders.deliveries[3]
    assert last.chance == pytest.approx(RESPONSE_LIFT[last.persona]["in_app"] * FATIGUE_FACTOR)
    assert responders.deliveries[4].earlier_messages == 0


def test_messages_to_an_anonymous_id_tire_the_person_who_signs_up_later(responders: Responders) -> None:
    profile = _profile(6, 3, 7)
    responders.deliver(profile.app_id, "in_app", "before", "r", T0, T0)
    responders.deliver(profile.user_id, "push", "after", "r", T0 + DAY_MS, T0 + DAY_MS)
    assert [d.person for d in responders.deliveries] == [profile.user_id] * 2
    assert [d.earlier_messages for d in responders.deliveries] == [0, 1]


def test_a_delivery_noted_late_counts_for_fatigue_at_its_own_time(responders: Responders) -> None:
    customer = user(3)
    responders.deliver(customer, "push", "later", "r", T0 + DAY_MS, T0 + DAY_MS)
    responders.deliver(customer, "push", "earlier", "r", T0, T0 + DAY_MS)
    responders.deliver(customer, "push", "last", "r", T0 + 2 * DAY_MS, T0 + 2 * DAY_MS)
    assert [d.earlier_messages for d in responders.deliveries] == [0, 0, 2]


def test_responses_are_orders_inside_the_window_drawn_from_the_decision_id() -> None:
    """Same decision, same answer; about the lift's share of first messages answer; each answer is
    an order that the event contract accepts, by the customer as the engine knows them."""
    first, second = Responders(400, 7, seed=3), Responders(400, 7, seed=3)
    orders = []
    for n in range(400):
        for responders in (first, second):
            answer = responders.deliver(user(n), "push", f"d-{n}", "r", T0, T0 + HOUR_MS)
        orders.append(answer)
    assert first.deliveries == second.deliveries
    answered = [o for o in orders if o is not None]
    expected = sum(d.chance for d in first.deliveries)
    assert abs(len(answered) - expected) <= 3 * expected**0.5
    for order, delivery in zip(orders, first.deliveries, strict=True):
        assert (order is not None) == delivery.responded
        if order is None:
            continue
        validate_event(order)
        at = epoch_ms(order["timestamp"])
        assert T0 + HOUR_MS <= at <= T0 + RESPONSE_WINDOW_MS["push"]
        assert order["event"] == "Order Completed" and order["userId"] == delivery.customer
        assert (delivery.order_id, delivery.order_at) == (order["properties"]["order_id"], order["timestamp"])
        assert delivery.answer_from is not None and delivery.answer_until is not None
        assert epoch_ms(delivery.answer_from) <= at <= epoch_ms(delivery.answer_until)


def test_an_anonymous_customer_answers_under_their_anonymous_id() -> None:
    responders = Responders(400, 7, seed=3)
    answers = []
    for n in range(400):
        app_id = _profile(n, 3, 7).app_id
        answers.append(responders.deliver(app_id, "in_app", f"d-{n}", "r", T0, T0))
    answered = [a for a in answers if a is not None]
    assert answered and all("userId" not in a and a["anonymousId"].startswith("a-") for a in answered)


def test_a_message_seen_after_its_window_cannot_be_answered(responders: Responders) -> None:
    late = T0 + RESPONSE_WINDOW_MS["in_app"] + 1
    assert responders.deliver(user(4), "in_app", "d", "r", T0, late) is None
    assert responders.deliveries[0].chance == 0.0
    assert responders.deliveries[0].answer_from is None


def test_an_unknown_customer_never_answers(responders: Responders) -> None:
    assert responders.deliver("someone-else", "push", "d", "r", T0, T0) is None
    assert responders.deliveries[0].persona is None and responders.deliveries[0].chance == 0.0


def test_the_truth_lists_parameters_personas_and_every_delivery(responders: Responders) -> None:
    responders.deliver(user(5), "push", "d", "r", T0, T0)
    truth = responders.truth()
    assert truth["response_lift"] == RESPONSE_LIFT
    assert truth["fatigue"] == {"days": FATIGUE_DAYS, "factor": FATIGUE_FACTOR}
    assert len(truth["personas"]) == 50 and truth["personas"][user(5)] == _profile(5, 3, 7).persona
    assert [d["decision_id"] for d in truth["deliveries"]] == ["d"]
