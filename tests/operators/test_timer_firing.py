"""A timed trigger's timer fired natively up to its decision (``state._native.TimerFiring``,
``state/native/src/fire.rs``): it is taken from the customer's bookkeeping and comes back only when
there is a decision to make, as the Python path (``CustomerStage._fire_timer``, ``_decide``) decides;
generated streams through both give the same outputs, byte for byte, and the same customers."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from conftest import EngineHarness, added, call, order, rules_from, run_native_or_python, track

from connectors.synthetic import generate_events
from state.customer import CustomerState

# a condition the native program evaluates (one that fails often), one left to Python (counts), none;
# causes that go stale (cart, session, order) and that do not (customer, day, event)
TIMED = """
version: timed
triggers:
  - id: cart_left
    channel: push
    on: Product Added
    after: 30m
    unless: [Order Completed]
    once_per: cart
    when: "cart.value > 15"
  - id: browsed
    channel: in_app
    on: Product Viewed
    after: 20m
    unless: [Product Added]
    once_per: session
    when: "session.products_viewed >= 3"
  - id: busy_day
    channel: email
    on: page
    after: 1h
    once_per: day
    when: "counts_24h.page >= 2"
  - id: after_order
    channel: sms
    on: Order Completed
    after: 2h
    once_per: order
  - id: first_open
    channel: push
    on: Application Opened
    after: 10m
    once_per: customer
  - id: each_removal
    channel: push
    on: Product Removed
    after: 5m
    once_per: event
"""


@pytest.mark.parametrize("seed", [3, 8])
def test_timers_fired_natively_decide_as_the_python_path_does(seed):
    start = datetime(2026, 3, 1, tzinfo=UTC)
    lines = [orjson.dumps(e) for e in generate_events(60, 4, seed, start=start, defects=0.03)]
    rules = rules_from(TIMED)
    native, native_states = run_native_or_python(rules, lines, native=True)
    python, python_states = run_native_or_python(rules, lines, native=False)
    fired = {orjson.loads(o[4])["data"]["rule_id"] for o in native if o[0].startswith("triggers.")}
    assert {"cart_left", "browsed", "busy_day", "after_order", "first_open", "each_removal"} <= fired
    assert native == python
    assert native_states == python_states


def _armed(events: list[dict]) -> tuple[EngineHarness, CustomerState]:
    h = EngineHarness(rules_from(TIMED))
    h.feed(events)
    return h, h.customers.customers["u1"]


def test_a_timer_with_a_decision_to_make_comes_back_with_its_cause_and_the_native_verdict():
    h, state = _armed([added(minutes=0, price=20.0, message_id="a1"), added(minutes=1, price=5.0, message_id="a2")])
    due, _, cause, *caused_by = state.timer("cart_left")
    assert h.customers.firing.fire(state, "cart_left") == (due, cause, caused_by, True)
    assert state.timer("cart_left") is None, "taken"


def test_a_condition_left_to_python_comes_back_without_a_verdict():
    h, state = _armed([call("page", "u1", n) for n in range(3)])
    due, _, cause, *caused_by = state.timer("busy_day")
    assert h.customers.firing.fire(state, "busy_day") == (due, cause, caused_by, None)


def test_a_timer_whose_condition_does_not_hold_is_taken_and_gives_nothing():
    h, state = _armed([added(price=5.0)])
    assert state.timer("cart_left") is not None
    assert h.customers.firing.fire(state, "cart_left") is None
    assert state.timer("cart_left") is None


def test_a_timer_whose_cart_was_ordered_is_stale():
    h, state = _armed([added(price=20.0), order(minutes=1)])
    state.set_timer(10**13, "cart_left", "cart-ordered", ["a1"])  # armed for the cart before the order
    assert h.customers.firing.fire(state, "cart_left") is None
    assert state.timer("cart_left") is None


def test_a_timer_whose_rule_fired_for_its_cause_already_gives_nothing():
    h, state = _armed([track("Product Viewed", minutes=n, props={"product_id": f"p{n}"}) for n in range(3)])
    due, rule, cause, *caused_by = state.timer("browsed")
    state.set_fired("browsed", cause)
    assert h.customers.firing.fire(state, "browsed") is None
    state.set_fired("browsed", "another session")
    state.set_timer(due, rule, cause, caused_by)
    assert h.customers.firing.fire(state, "browsed") == (due, cause, caused_by, True)


def test_a_trigger_without_a_timer_or_an_unknown_rule_is_refused():
    h, state = _armed([track("Page")])
    with pytest.raises(KeyError):
        h.customers.firing.fire(state, "cart_left")
    with pytest.raises(KeyError):
        h.customers.firing.fire(state, "no_such_rule")
