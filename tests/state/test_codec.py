"""The compact snapshot encoding of a customer's state."""

from __future__ import annotations

import pickle

from conftest import EngineHarness, added, call, order, track

from operators.engine import EngineConfig
from state import codec
from state.catalogue import profile
from state.customer import CustomerState, Lifecycle


def rich_state(starter_rules) -> CustomerState:
    h = EngineHarness(starter_rules, EngineConfig())
    h.feed(
        [
            call("identify", "u1", 0, traits={"city": "Oslo", "age_band": "25-34"}),
            track("Product Viewed", "u1", 1, props={"product_id": "p1", "category": "shoes"}),
            added("u1", 2, product="p1", price=30.0),
            order("u1", 3, total=80.0),
            added("u1", 60, product="p2", price=12.5),
        ]
    )
    return h.customers.customers["u1"]


def test_every_field_of_the_state_is_encoded(starter_rules):
    encoded = set(codec._SCALARS) | {"features", "book"}
    assert encoded | {"scheduled_ms"} == set(CustomerState.__slots__), "all but the shard's heap entry"


def test_round_trip_keeps_features_timers_and_identity(starter_rules):
    state = rich_state(starter_rules)
    assert state.timers and state.features.cart_id is not None and state.features.session_id is not None
    back = codec.decode(codec.encode(state))
    now = state.last_seen_ms + 3_600_000
    assert profile(back, now, Lifecycle()) == profile(state, now, Lifecycle())
    assert back.timers == state.timers and back.scheduled_ms is None
    assert back.features == state.features and back.features.to_bytes() == state.features.to_bytes()
    assert back.fired == state.fired and back.audiences == state.audiences


def test_the_encoding_is_smaller_than_pickling_the_objects(starter_rules):
    """No class names or slot names: the bookkeeping is already flat tuples, so the gain is those."""
    state = rich_state(starter_rules)
    assert len(codec.encode(state)) < len(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)) * 0.8
