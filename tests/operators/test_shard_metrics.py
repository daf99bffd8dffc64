"""A shard's counters reach the Prometheus registry at a bounded rate, and none are left behind."""

from __future__ import annotations

from conftest import CART_RULE, EngineHarness, added, rules_from, track
from prometheus_client import REGISTRY

from operators import shard_metrics
from operators.shard_metrics import PUBLISH_SECONDS


def added_events() -> float:
    return REGISTRY.get_sample_value("nudgeflow_events_total", {"event": "Product Added"}) or 0.0


def test_counters_held_back_by_the_interval_are_published_when_due(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(shard_metrics.time, "monotonic", lambda: clock[0])
    h = EngineHarness(rules_from(CART_RULE))
    shard = h.pipeline.customers[0].metrics  # events are counted where they are applied, after every batch
    before = added_events()

    h.feed([added("u1", 0)])  # the first batch publishes at once
    assert added_events() - before == 1 and shard.due() is None

    h.feed([added("u2", 1)])  # within the interval: held back, and a time to publish them is given
    assert added_events() - before == 1
    due = shard.due()
    assert due is not None

    clock[0] += PUBLISH_SECONDS
    shard.publish()  # what the notification at ``due`` does
    assert added_events() - before == 2 and shard.due() is None

    h.feed([added("u3", 2)])
    shard.publish(final=True)  # the end of input publishes at once
    assert added_events() - before == 3


def test_dropped_order_lines_and_unknown_fields_are_published():
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    h = EngineHarness(rules_from(CART_RULE))
    shard = h.pipeline.customers[0].metrics  # the stage that applied the order
    before = (
        sample("nudgeflow_order_lines_dropped_total", reason="bad_price"),
        sample("nudgeflow_unknown_fields_total", path="context.store_id"),
    )
    lines = [{"product_id": "a", "price": -1.0}, {"product_id": "b", "price": 1.0}]
    h.feed([track("Order Completed", "u1", 0, props={"order_id": "o", "products": lines}, context={"store_id": "s"})])
    shard.publish(final=True)
    assert sample("nudgeflow_order_lines_dropped_total", reason="bad_price") - before[0] == 1
    assert sample("nudgeflow_unknown_fields_total", path="context.store_id") - before[1] == 1


def test_events_of_erased_customers_dropped_are_published():
    def erased_events() -> float:
        return REGISTRY.get_sample_value("nudgeflow_erased_events_total", {}) or 0.0

    h = EngineHarness(rules_from(CART_RULE))
    before = erased_events()
    h.feed([added("u1", 0), track("Erasure Requested", "u1", 5, props={"request_id": "r"}), added("u1", 3)])
    h.pipeline.identity[0].metrics.publish(final=True)  # dropped where they enter: the identity stage
    assert erased_events() - before == 1


def dead_letters(reason: str) -> float:
    return REGISTRY.get_sample_value("nudgeflow_invalid_events_total", {"reason": reason}) or 0.0


def test_events_the_engine_dead_letters_are_counted_by_reason():
    h = EngineHarness(rules_from(CART_RULE))
    identity, customers = h.pipeline.identity[0].metrics, h.pipeline.customers[0].metrics
    before = {reason: dead_letters(reason) for reason in ("too_old", "processing_error")}
    year_7000 = "7000-01-01T00:00:00Z"  # beyond what the windowed counts hold: applying it raises
    h.feed([added("u1", 0), added("u1", -400 * 24 * 60), track("Page", "u2", 1, timestamp=year_7000)])
    identity.publish(final=True)
    customers.publish(final=True)
    assert dead_letters("too_old") - before["too_old"] == 1
    assert dead_letters("processing_error") - before["processing_error"] == 1


def test_offers_given_and_redeemed_are_published():
    def offers(kind: str) -> float:
        return REGISTRY.get_sample_value("nudgeflow_offers_total", {"offer": "ten-off", "kind": kind}) or 0.0

    rules = """
version: v
triggers:
  - {id: hello, channel: push, on: Hello, offer_id: ten-off}
offers:
  - {id: ten-off, channels: [push]}
"""
    h = EngineHarness(rules_from(rules))
    before = offers("given"), offers("redeemed")
    h.feed([track("Hello", "u1", 0), track("Coupon Applied", "u1", 1, props={"coupon_id": "ten-off"})])
    h.pipeline.customers[0].metrics.publish(final=True)
    assert (offers("given") - before[0], offers("redeemed") - before[1]) == (1, 1)
