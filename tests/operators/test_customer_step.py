"""The customer stage's native step (``state._native.CustomerStep``, ``state/native/src/customer_step.rs``)
against the Python path it replaces (``CustomerStage._apply_rules``): seeded generated streams, with
late, duplicate and future-dated events, through both, give the same outputs, byte for byte, and
leave every customer in the same state (features, timers with their causes, rules fired, audiences)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import orjson
import pytest
from conftest import EngineHarness, decisions, envelopes, rules_from, run_native_or_python, track, written

from connectors.synthetic import generate_events
from operators.engine import RECHECK, EngineConfig
from state import codec
from state.affinity import DAY_MS
from state.update import event_zone, feature_update

# every once_per, cancelling, an immediate trigger (left to Python), a trigger several events arm,
# native audiences on and off the lifecycle clock and one evaluated in Python (counts)
EVERY_KIND = """
version: every-kind
triggers:
  - id: viewed_today
    channel: push
    on: Product Viewed
    after: 2h
    unless: [Order Completed]
    once_per: day
  - id: each_cart_change
    channel: in_app
    on: [Product Added, Product Removed]
    after: 10m
    unless: [Checkout Started, Order Completed]
    once_per: event
  - id: after_each_order
    channel: email
    on: Order Completed
    after: 3d
    once_per: order
    when: "orders >= 1"
  - id: first_open
    channel: sms
    on: Application Opened
    after: 1h
    once_per: customer
  - id: session_browse
    channel: push
    on: [Product Viewed, page]
    after: 15m
    unless: [Product Added]
    once_per: session
    when: "session.products_viewed >= 2"
  - id: cart_left
    channel: push
    on: Product Added
    after: 30m
    unless: [Order Completed]
    once_per: cart
  - id: welcome
    channel: push
    on: Signed Up
    once_per: customer
audiences:
  - id: spenders
    when: "lifetime_spend >= 200"
  - id: lapsed
    when: "lifecycle == 'lapsed'"
  - id: risky
    when: "lifecycle == 'active' and lapse_risk >= 0.3"
  - id: at_risk
    when: "at_risk"
  - id: busy
    when: "counts_24h.page >= 3"
"""


def _stream(customers: int, days: int, seed: int, defects: float) -> list[bytes]:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    return [orjson.dumps(e) for e in generate_events(customers, days, seed, start=start, defects=defects)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_native_step_gives_the_python_path_s_outputs_and_states_with_the_starter_rules(starter_rules, seed):
    lines = _stream(60, 4, seed, defects=0.03)
    fused, fused_states = run_native_or_python(starter_rules, lines, native=True)
    python, python_states = run_native_or_python(starter_rules, lines, native=False)
    assert any(o[0].startswith("triggers.") for o in fused), "the stream fires triggers"
    assert any(o[0] == "audience_changes" for o in fused), "and changes audiences"
    assert fused == python
    assert fused_states == python_states


@pytest.mark.parametrize("seed", [4, 5])
def test_every_once_per_cancelling_and_python_evaluated_audiences_are_the_same_natively(seed):
    rules = rules_from(EVERY_KIND)
    lines = _stream(50, 5, seed, defects=0.05)
    fused, fused_states = run_native_or_python(rules, lines, native=True)
    python, python_states = run_native_or_python(rules, lines, native=False)
    fired = {orjson.loads(o[4])["data"]["rule_id"] for o in fused if o[0].startswith("triggers.")}
    assert {"viewed_today", "each_cart_change", "after_each_order", "first_open", "cart_left"} <= fired
    assert fused == python
    assert fused_states == python_states


def test_a_late_event_arms_no_timer_already_past_the_clock_and_rechecks_its_boundaries():
    rules = rules_from(EVERY_KIND)
    times = itertools.count()
    events = [track("Product Added", "u1", 0, props={"product_id": "p1", "price": 10.0})]
    events += [track("Page", "u2", 60 + next(times)) for _ in range(3)]
    events += [track("Product Added", "u1", 5, props={"product_id": "p2", "price": 10.0})]  # late: due at 15 < clock
    events += [track("Order Completed", "u1", 6, props={"order_id": "o1", "total": 300.0})]  # late order
    runs = []
    for native in (True, False):
        h = EngineHarness(rules)
        if not native:
            h.customers.step = h.identity.step = None
        h.feed(events)
        state = h.customers.customers["u1"]
        runs.append(([written(o) for o in h.outputs], state.timers, state.fired, state.audiences))
    assert runs[0] == runs[1]
    timers = {timer[1] for timer in runs[0][1]}
    assert RECHECK in timers and "after_each_order" in timers
    assert "spenders" in runs[0][3]


def test_a_step_that_fails_past_the_features_puts_them_back_and_changes_nothing(starter_rules):
    h = EngineHarness(starter_rules)
    h.feed([track("Product Viewed", "u1", 0, props={"product_id": "p1"})])
    stage = h.customers
    state = stage.customers["u1"]
    book, features = state.book, state.features.to_bytes()
    [envelope] = envelopes([track("Product Viewed", "u1", 1, props={"product_id": "p2"})])
    update, args = feature_update(envelope, stage.config.lifecycle, None, event_zone(envelope, None))
    state.audiences = ("high_value", 7)  # not audience names: the program cannot read them
    with pytest.raises(TypeError):
        stage.step.run(state, envelope, False, stage.clock, True, update, args)
    assert state.book is book and state.features.to_bytes() == features
    state.audiences = ()
    assert stage.step.run(state, envelope, False, stage.clock, True, update, args) is not None
    assert state.features.to_bytes() != features and state.book != book, "applied once it can read them"


def test_features_that_fail_halfway_through_an_update_are_put_back(starter_rules):
    """A date past what the windowed counts hold fails after the recency moved: the event is dead-lettered,
    the features are as they were and the customer as the Python path leaves it (the timers due by then
    fired first, and that stands)."""
    states = []
    for native in (True, False):
        h = EngineHarness(starter_rules, EngineConfig(state_ttl_ms=10_000 * 365 * DAY_MS))
        if not native:
            h.customers.step = h.identity.step = None
        h.feed([track("Product Viewed", "u1", 0, props={"product_id": "p1"}, message_id="v1")])
        features = h.customers.customers["u1"].features.to_bytes()
        failed = h.feed([track("Page", "u1", days=1_500_000, message_id="p1")])  # the year 6133
        assert [d["reason"] for d in decisions(failed, "dead_letters")] == ["processing_error"]
        state = h.customers.customers["u1"]
        assert state.features.to_bytes() == features
        states.append(codec.encode(state))
    assert states[0] == states[1]
