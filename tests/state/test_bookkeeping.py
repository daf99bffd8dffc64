"""A customer's bookkeeping (timers, rules fired, open decisions and offers): the compiled record
``state._native.Bookkeeping`` against the tuples it replaced, its snapshot bytes, and its size."""

from __future__ import annotations

import struct
import sys
from bisect import insort
from random import Random
from typing import Any

import pytest
from conftest import EngineHarness, call, order, track

from operators.engine import EngineConfig
from state import codec
from state.customer import MAX_CAUSED_BY, TOUCH_FIELDS, CustomerState

RULES = ("cart", "browse", "~recheck", "~outcome", "winback", "règle")
TEXTS = (
    "c1",
    "none",
    "",
    "2026-01-05",
    "m-1-40938-0-0-0",
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8",  # a canonical UUID: kept as its 16 bytes
    "6BA7B810-9DAD-11D1-80B4-00C04FD430C8",  # not canonical: kept as text, as it came
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8x",
    "ünïcode ✓",
)


class TupleBook:
    """The bookkeeping as the engine kept it before the compiled record (the reference): a sorted
    tuple of flat timer tuples, a flat tuple of fired causes."""

    def __init__(self) -> None:
        self.timers: tuple[tuple[Any, ...], ...] = ()
        self.fired: tuple[str, ...] = ()

    def timer(self, rule_id: str) -> tuple[Any, ...] | None:
        return next((timer for timer in self.timers if timer[1] == rule_id), None)

    def set_timer(self, due_ms: int, rule_id: str, cause: str, caused_by: tuple[str, ...] = ()) -> None:
        timers = [timer for timer in self.timers if timer[1] != rule_id]
        insort(timers, (due_ms, rule_id, cause, *caused_by))
        self.timers = tuple(timers)

    def arm_timer(self, due_ms: int, rule_id: str, cause: str, message_id: str) -> None:
        timer = self.timer(rule_id)
        if timer is not None and timer[2] == cause:
            due_before, _, _, *caused_by = timer
            self.set_timer(max(due_before, due_ms), rule_id, cause, (*caused_by[1 - MAX_CAUSED_BY :], message_id))
        else:
            self.set_timer(due_ms, rule_id, cause, (message_id,))

    def drop_timer(self, rule_id: str) -> tuple[Any, ...] | None:
        timer = self.timer(rule_id)
        self.timers = tuple(other for other in self.timers if other is not timer)
        return timer

    def fired_cause(self, rule_id: str) -> str | None:
        return dict(zip(self.fired[::2], self.fired[1::2], strict=True)).get(rule_id)

    def set_fired(self, rule_id: str, cause: str) -> None:
        at = self.fired[::2].index(rule_id) * 2 if rule_id in self.fired[::2] else None
        if at is None:
            self.fired = (*self.fired, rule_id, cause)
        else:
            self.fired = (*self.fired[: at + 1], cause, *self.fired[at + 2 :])

    def merge(self, other: TupleBook) -> None:
        for timer in other.timers:
            if self.timer(timer[1]) is None:
                self.timers = tuple(sorted((*self.timers, timer)))
        for at in range(0, len(other.fired), 2):
            if self.fired_cause(other.fired[at]) is None:
                self.set_fired(other.fired[at], other.fired[at + 1])


def random_step(rng: Random, state: CustomerState, reference: TupleBook) -> None:
    """One random change, made to both."""
    rule, cause, due = rng.choice(RULES), rng.choice(TEXTS), rng.randrange(10)  # dues tie often
    step = rng.randrange(5)
    if step == 0:
        ids = tuple(rng.choices(TEXTS, k=rng.randrange(MAX_CAUSED_BY + 1)))
        state.set_timer(due, rule, cause, ids)
        reference.set_timer(due, rule, cause, ids)
    elif step == 1:
        message_id = rng.choice(TEXTS)
        state.arm_timer(due, rule, cause, message_id)
        reference.arm_timer(due, rule, cause, message_id)
    elif step == 2:
        assert state.drop_timer(rule) == reference.drop_timer(rule)
    else:
        state.set_fired(rule, cause)
        reference.set_fired(rule, cause)


def assert_same(state: CustomerState, reference: TupleBook, upto_ms: int) -> None:
    assert state.timers == reference.timers
    assert state.fired == reference.fired
    assert state.due_rules(upto_ms) == [timer[1] for timer in reference.timers if timer[0] <= upto_ms]
    for rule in RULES:
        assert state.timer(rule) == reference.timer(rule)
        assert state.timer_due(rule) == (None if (timer := reference.timer(rule)) is None else timer[0])
        assert state.fired_cause(rule) == reference.fired_cause(rule)
    first = reference.timers[0][:2] if reference.timers else None
    assert state.book.first_timer() == first and state.book.first_due == (first and first[0])


@pytest.mark.parametrize("seed", range(20))
def test_timers_and_fired_causes_are_what_the_tuples_gave(seed):
    rng = Random(seed)
    state, reference = CustomerState("c", 0), TupleBook()
    other, other_reference = CustomerState("a", 0), TupleBook()
    for _ in range(60):
        random_step(rng, state, reference)
        random_step(rng, other, other_reference)
        assert_same(state, reference, rng.randrange(10))
    state.book = state.book.merged(other.book)
    reference.merge(other_reference)
    assert_same(state, reference, 5)


def test_open_decisions_and_offers_are_kept_as_given():
    state = CustomerState("c", 0)
    state.set_timer(5, "cart", "c1", ["m1"])
    state.outcomes += b"\x00" * 120
    state.offers_open += (1_700_000_000_000, "free-shipping", "new|0|0")
    state.offers_open += (1_700_000_000_001, "browse-10pct", "new|0|0")
    assert state.outcomes == b"\x00" * 120
    assert state.offers_open == (
        1_700_000_000_000,
        "free-shipping",
        "new|0|0",
        1_700_000_000_001,
        "browse-10pct",
        "new|0|0",
    )
    assert state.timers == ((5, "cart", "c1", "m1"),), "the rest of the record stays"
    with pytest.raises(ValueError, match="in threes"):
        state.offers_open = (1, "free-shipping")


def test_a_snapshot_holds_the_record_with_names_spelt_out():
    state = CustomerState("c", 0)
    state.set_timer(7, "winback", "o-1", ["6ba7b810-9dad-11d1-80b4-00c04fd430c8", "m-2"])
    state.set_fired("welcome", "customer")
    state.offers_open = (3, "free-shipping", "new|0|0")
    state.outcomes = b"\x01\x02"
    blob = state.book.to_bytes()
    assert b"winback" in blob and b"welcome" in blob and b"free-shipping" in blob
    back = codec.decode(codec.encode(state))
    assert back.book == state.book and back.timers == state.timers and back.offers_open == state.offers_open
    assert back.fired == state.fired and back.outcomes == state.outcomes


def test_unreadable_bookkeeping_is_refused_clearly():
    state = CustomerState("c", 0)
    state.set_timer(7, "winback", "o-1", ["m-1"])
    blob = state.book.to_bytes()
    book_type = type(state.book)
    with pytest.raises(ValueError, match="customer bookkeeping unreadable: format 7 is not supported"):
        book_type.from_bytes(b"\x07" + blob[1:])
    with pytest.raises(ValueError, match="customer bookkeeping unreadable: it ends too early"):
        book_type.from_bytes(blob[:-3])


def deep_size(value: Any, seen: set[int]) -> int:
    """Bytes of ``value`` and what it holds (as ``bench/memory_bench.py`` counts them)."""
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, list | tuple):
        size += sum(deep_size(item, seen) for item in value)
    return size


def buyer_browsing_again(user: str) -> list[dict[str, Any]]:
    views = [track("Product Viewed", user, 40 + i, props={"product_id": f"p{i}"}) for i in range(6)]
    again = [track("Product Viewed", user, 120 + i, props={"product_id": f"p{i}"}) for i in range(6)]
    signed_up = [call("identify", user, 0, traits={"city": "Oslo"}), track("Signed Up", user, 1)]
    return [*signed_up, order(user, 2, total=80.0), *views, track("Page", user, 80), *again]


def test_a_customer_s_bookkeeping_takes_a_third_of_the_bytes_the_tuples_took(starter_rules):
    """A buyer browsing again: the browse-abandonment timer (five events caused it), the win-back and
    recheck timers, the models' timers, two rules fired (the browse offer with an offer chosen), an
    open decision. Its state apart from the features, and from what it shares with other customers
    (names, the id that is its key), held 1,641 bytes as tuples and strings; with the record, 422. The
    deliveries kept for attribution (each touch: time and decision id in one bytes object) is counted apart."""
    h = EngineHarness(starter_rules, EngineConfig())
    h.feed(sorted(buyer_browsing_again("u1") + buyer_browsing_again("u2"), key=lambda event: event["timestamp"]))
    other, state = h.customers.customers["u1"], h.customers.customers["u2"]
    assert len(state.timers) == 5 and len(state.timer("browse_abandonment_offer")) == 3 + MAX_CAUSED_BY
    assert len(state.fired) == 4 and state.outcomes and state.offers_open

    shared = {id(state.id), id(state.features), *(id(offer.id) for offer in starter_rules.offers)}
    for name in other.__slots__:
        deep_size(getattr(other, name), shared)
    # the contact policy's record is not bookkeeping; the deliveries kept for attribution are counted apart
    own = [name for name in state.__slots__ if name not in ("contacts", "touches")]
    held = sys.getsizeof(state) + sum(deep_size(getattr(state, name), shared) for name in own)
    assert held <= 1641 // 3, f"{held} bytes"
    touches = deep_size(state.touches, shared)
    deliveries = len(state.touches) // TOUCH_FIELDS  # the welcome push and the browse offer
    assert deliveries == 2 and touches <= 120 * deliveries, f"{touches} bytes"


def test_an_open_decision_holds_its_whole_numbers_short():
    """When it was made, the fractions as float64s; the counts, order amount and no-order days as varints."""
    features = (2.5, 0.25, 30.0, 1.0, 80.0, 365.0, 0.0, 0.0, 2.0, 6.0, 1.0, 12.0, 1.0, 1.0)
    decision = struct.pack("<q14d", 1_767_225_600_000, *features)
    state = CustomerState("c", 0)
    state.outcomes = decision

    assert state.outcomes == decision and codec.decode(codec.encode(state)).outcomes == decision
    held = sys.getsizeof(state.book) - sys.getsizeof(CustomerState("d", 0).book)
    assert held <= 64, f"{held} bytes: 110 when every word but the zeros took 8"
