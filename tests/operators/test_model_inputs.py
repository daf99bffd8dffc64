"""What the models read of a customer's features in one compiled call, against the plain-Python
reference: the propensity inputs (``tests/propensity_reference.py``) to the bit, and the product
touches the recommender learns from the customer's session as ``learn(session, product, category)``
learnt them (``tests/recommend_reference.py``)."""

from __future__ import annotations

import random
from typing import Any

from conftest import envelopes
from propensity_reference import decision_features as reference_features
from recommend_reference import CoOccurrence as Reference

from operators.models import ShardModels, session_products
from operators.models.propensity import FEATURES, decision_features
from operators.models.recommend import SAMPLE_EVERY, sampled
from schemas.records import iso_ms
from state._native import decision_features as native_decision_features
from state._native import learn_touch, touch_product
from state.catalogue import FeatureView
from state.customer import CustomerState, Lifecycle
from state.update import apply_event

LC = Lifecycle()
START_MS = 1_767_607_200_000  # 2026-01-05T10:00:00Z
PRODUCTS = [f"p{n}" for n in range(12)] + ["é-p"]
TRACKS = ["Product Viewed", "Product Added", "Product Removed", "Order Completed", "Order Refunded", "Page Seen"]


def _event(rng: random.Random, n: int, at_ms: int) -> dict[str, Any]:
    name = rng.choice(TRACKS)
    props: dict[str, Any] = {}
    if name.startswith("Product"):
        props = {"product_id": rng.choice(PRODUCTS), "price": rng.choice([0.0, 0.005, 9.99, 19.995, 1234.565])}
        props["category"] = rng.choice(["shoes", "bags", ""])
        props["cart_id"] = rng.choice(["c1", "c2"])
        props["quantity"] = rng.choice([1, 2, 7])
    elif name.startswith("Order"):
        line = {"product_id": rng.choice(PRODUCTS), "quantity": rng.choice([1, 3]), "price": 2.675}
        props = {"order_id": f"o{rng.randrange(5)}", "total": rng.choice([0.01, 2.675, 99.5, 1e9]), "products": [line]}
    if name == "Page Seen":
        return {"type": "page", "messageId": f"m{n}", "timestamp": iso_ms(at_ms), "userId": "u1", "properties": {}}
    return {
        "type": "track",
        "event": name,
        "messageId": f"m{n}",
        "timestamp": iso_ms(at_ms),
        "userId": "u1",
        "properties": props,
    }


def _customers(seed: int, count: int) -> list[tuple[CustomerState, list[int]]]:
    """Customers after random streams (minutes to weeks apart, some late), each with the times
    their features are read at: every event's time and around the session and window edges."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        at, events = START_MS, []
        for n in range(rng.choice([1, 5, 40])):
            at += rng.choice([0, 1, 29, 31, 600, 1440, 9 * 1440, 40 * 1440]) * 60_000 + rng.randrange(60_000)
            if rng.random() < 0.1:
                at -= rng.choice([10, 3000]) * 60_000
            events.append(_event(rng, n, at))
        state = CustomerState("u1", START_MS)
        nows = []
        for env in envelopes(events):
            apply_event(state, env, LC)
            nows.append(env.ts_ms)
        last = state.features.last_seen_ms
        timeout = LC.session_timeout_ms
        nows += [last + timeout, last + timeout + 1, last + 86_400_000, last + 7 * 86_400_000 + 60_000, START_MS - 1]
        out.append((state, nows))
    return out


def exact(values: tuple[float, ...]) -> list[str]:
    return [value.hex() for value in values]


def test_the_propensity_inputs_are_the_reference_floats_to_the_bit():
    compared = 0
    for state, nows in _customers(seed=11, count=300):
        for now in nows:
            native = native_decision_features(state.features, now, LC.session_timeout_ms)
            expected = reference_features(FeatureView(state, None, now, LC))
            assert type(native) is tuple and len(native) == len(FEATURES)
            assert exact(native) == exact(expected), (state.features.orders, now)
            assert decision_features(FeatureView(state, None, now, LC)) == native  # what the models read
            compared += 1
    assert compared > 3000


def test_product_touches_are_learnt_from_the_live_session_as_the_reference_learns_them():
    shard, alone, reference = ShardModels("learn", 1000), ShardModels("learn", 1000), Reference()
    for state, nows in _customers(seed=5, count=60):
        for n, at_ms in enumerate(nows):
            product, category = PRODUCTS[n % len(PRODUCTS)], ["shoes", None, ""][n % 3]
            session = list(session_products(state, at_ms, LC.session_timeout_ms))
            reference.learn(session, product, category)
            learn_touch(alone.recommender, state.features, at_ms, LC.session_timeout_ms, product, category)
            shard.product_touched(state, product, category, f"x{n}", False, at_ms)  # one call, no journal
    assert alone.export()["recommendations"] == shard.export()["recommendations"] == reference.export()
    assert shard.stats()["recommendations"] == reference.stats()


def test_views_and_adds_learnt_in_one_call_check_the_sample_first_as_the_journalled_path_does():
    one_call, journalled = ShardModels("learn", 1000), ShardModels("learn", 1000)
    journalled.take_journal()  # from now on every touch is learnt (and journalled) in Python
    touches = 0
    for state, nows in _customers(seed=7, count=80):
        for n, at_ms in enumerate(nows):
            product, category, viewed = PRODUCTS[n % len(PRODUCTS)], ["shoes", None][n % 2], n % 3 != 0
            for models in (one_call, journalled):
                models.product_touched(state, product, category, f"m{touches}", viewed, at_ms)
            touches += 1
    assert one_call.export()["recommendations"] == journalled.export()["recommendations"]
    assert one_call.stats()["recommendations"] == journalled.stats()["recommendations"]
    assert one_call.stats()["recommendations"]["checked"] > 10  # sampled views were checked before learning


def test_a_sampled_view_is_handed_back_unlearnt_and_any_other_touch_is_learnt():
    state = CustomerState("u1", START_MS)
    ids = [f"m{n}" for n in range(400)]
    sampled_ids = [i for i in ids if sampled(i)]
    assert sampled_ids and len(sampled_ids) < len(ids)
    for message_id in ids:
        models = ShardModels("learn", 1000)
        args = (START_MS, LC.session_timeout_ms, "p1", "shoes", message_id)
        assert touch_product(models.recommender, state.features, *args, True, SAMPLE_EVERY) == sampled(message_id)
        assert bool(models.export()["recommendations"]["counts"]) != sampled(message_id)
        assert touch_product(models.recommender, state.features, *args, False, SAMPLE_EVERY) is False
        assert models.export()["recommendations"]["counts"] == {"p1": 1 + (not sampled(message_id))}
