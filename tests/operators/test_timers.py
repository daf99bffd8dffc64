"""The shard's timer queue: one heap entry per customer with timers, timers in due order."""

from __future__ import annotations

import gc
import sys

from conftest import EngineHarness, added, order, track

from operators.timers import STALE_SHARE, TimerQueue
from state.customer import CustomerState


def busy_day(customer: str, start: float) -> list[dict]:
    """An order, three products viewed, one added: winback, recheck, browse then cart timers."""
    views = [track("Product Viewed", customer, start + i, props={"product_id": f"p{i}"}) for i in (1, 2, 3)]
    return [order(customer, start), *views, added(customer, start + 4, "p3")]


def test_a_customer_holds_one_heap_entry_whatever_its_timers(harness: EngineHarness):
    customers = [f"u{i}" for i in range(200)]
    for customer in customers:
        harness.feed(busy_day(customer, 0))
    harness.feed([track("Page", "clock", 60)])  # the carts' reminders fire: decisions await their outcome
    stage = harness.customers
    timers = {cid: [timer[1] for timer in state.timers] for cid, state in stage.customers.items() if state.timers}
    assert all(len(timers[customer]) >= 3 for customer in customers), timers
    assert len(stage.timers.heap) <= len(timers) + len(timers) // STALE_SHARE + 64, "about one entry per customer"


def test_timers_come_due_in_due_order_then_rule_id_and_a_rearmed_one_at_its_new_time():
    a, b = CustomerState("a", 0), CustomerState("b", 0)
    queue = TimerQueue({"a": a, "b": b})
    for state, due, rule in ((a, 100, "x"), (b, 150, "y"), (a, 200, "x"), (a, 200, "w"), (a, 50, "z")):
        state.set_timer(due, rule, "cause")
        queue.schedule(state)
    assert len(queue.heap) == 3, "a later due time pushes nothing; an earlier one does"
    fired = []
    for state, rule in queue.due(1_000):
        fired.append((state.id, rule, state.timer(rule)[0]))  # type: ignore[index]
        state.drop_timer(rule)
    assert fired == [("a", "z", 50), ("b", "y", 150), ("a", "w", 200), ("a", "x", 200)]
    assert len(queue.heap) == 0 and a.scheduled_ms is None


def test_a_timer_armed_before_the_entry_is_not_late_and_a_gone_customer_is_skipped():
    a, b = CustomerState("a", 0), CustomerState("b", 0)
    customers = {"a": a, "b": b}
    queue = TimerQueue(customers)
    for state, due, rule in ((a, 300, "x"), (b, 100, "y"), (a, 80, "w")):
        state.set_timer(due, rule, "cause")
        queue.schedule(state)
    fired = []
    del customers["b"]  # b is gone
    for state, rule in queue.due(250):
        fired.append((state.id, rule))
        state.drop_timer(rule)
    assert fired == [("a", "w")]
    assert a.scheduled_ms == 300 and (300, "a") in queue.heap.entries(), "a's next timer has its entry"


def test_stale_entries_are_swept_out_keeping_each_customer_s_own():
    customers = {f"c{i}": CustomerState(f"c{i}", 0) for i in range(100)}
    queue = TimerQueue(customers)
    for due in range(1_000, 0, -10):  # every customer's first timer moves earlier, a hundred times
        for state in customers.values():
            state.set_timer(due, "x", "cause")
            queue.schedule(state)
    assert len(queue.heap) <= 100 + 100 // STALE_SHARE + 64
    fired = [(state.id, state.drop_timer(rule)[0]) for state, rule in queue.due(2_000)]  # type: ignore[index]
    assert fired == sorted((cid, 10) for cid in customers), "each fires once, at its last due time"


def held_bytes(value: object, owned: set[int]) -> int:
    """Bytes of ``value`` and of what it refers to, but for the objects in ``owned``."""
    seen, stack, total = set(owned), [value], 0
    while stack:
        item = stack.pop()
        if id(item) not in seen:
            seen.add(id(item))
            total += sys.getsizeof(item)
            stack.extend(gc.get_referents(item))
    return total


def test_a_heap_entry_costs_its_due_time_and_a_reference_to_the_customer_s_id():
    customers = {f"c{i}": CustomerState(f"c{i}", 0) for i in range(10_000)}
    queue = TimerQueue(customers)
    for n, state in enumerate(customers.values()):
        state.set_timer(1_000_000 + n, "x", "cause")
        queue.schedule(state)
    owned = {id(value) for state in customers.values() for value in (state.id, state.scheduled_ms)}
    assert len(queue.heap) == 10_000
    assert held_bytes(queue.heap, owned) / 10_000 <= 32, "16 bytes an entry, and room to grow"
