"""The compiled features record (``state._native.Features`` behind ``CustomerState``) against the
plain-Python classes it replaces (``tests/features_reference.py``): the same event streams, merges
and rollbacks applied to both give exactly the same features, every one of them, to the bit."""

from __future__ import annotations

import itertools
import math
import pickle
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import features_reference as reference
import pytest
from conftest import envelopes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state import codec
from state._native import Features, OrderLines
from state.customer import CustomerState, Lifecycle
from state.update import apply_event

LC = Lifecycle()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RECENT = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
PRODUCTS = [f"p{i}" for i in range(9)] + ["é-p", "P0"]
CATEGORIES = ["shoes", "bags", "", "hats", "Bags", "zz"]
PRICES = [0.0, 0.005, 0.01, 0.015, 0.125, 0.375, 1.005, 2.675, 9.99, 19.995, 20.0, 1e9, 0.1, 0.7, 1234.565]
ZONES = [None, "Europe/Berlin", "America/New_York", "Asia/Kolkata", "No/Such_Zone", "Australia/Lord_Howe"]
STORES = [None, "s1", "s2", "Ş3"]
CITIES = [None, "Berlin", "", "Paris", "São Paulo"]
TRACKS = [
    "Product Viewed",
    "Product Added",
    "Product Removed",
    "Product Clicked",
    "Order Completed",
    "Order Refunded",
    "Order Cancelled",
    "Checkout Started",
    "Application Opened",
    "Promotion Clicked",
    "Push Notification Tapped",
    "Store Visited",
    "Consent Updated",
    "Signed Up",
    "Something Else",
]
_ids = itertools.count(1)


def timestamp(ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def context(rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if (zone := rng.choice(ZONES)) is not None:
        out["timezone"] = zone
    if (store := rng.choice(STORES)) is not None:
        out["store"] = {"id": store}
    if rng.random() < 0.4:
        out["location"] = {"city": rng.choice(CITIES), "country": rng.choice(["DE", "", "FR", None])}
    return out


def line(rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {"product_id": rng.choice(PRODUCTS), "quantity": rng.choice([1, 2, 0, -1, -3, 7])}
    if rng.random() < 0.8:
        out["price"] = rng.choice(PRICES)
    if rng.random() < 0.7:
        out["category"] = rng.choice(CATEGORIES)
    return out


def properties(rng: random.Random, name: str) -> dict[str, Any]:
    if name.startswith("Product"):
        props = {"product_id": rng.choice(PRODUCTS), "quantity": rng.choice([1, 1, 2, 5, 100_000])}
        if rng.random() < 0.8:
            props["price"] = rng.choice(PRICES)
        if rng.random() < 0.7:
            props["category"] = rng.choice(CATEGORIES)
        if rng.random() < 0.5:
            props["cart_id"] = rng.choice(["c1", "c2", ""])
        return props
    if name.startswith("Order"):
        props = {"order_id": f"o{rng.randrange(6)}", "products": [line(rng) for _ in range(rng.choice([0, 1, 3, 25]))]}
        if (choice := rng.random()) < 0.4:
            props["total"] = rng.choice(PRICES)
        elif choice < 0.6:
            props["revenue"] = rng.choice(PRICES)
        return props
    if name == "Store Visited":
        return {"store_id": rng.choice(["s1", "s9", "x"])}
    if name == "Consent Updated":
        return {"channel": rng.choice(["push", "in_app", "email", "sms", "ads", "all"]), "granted": rng.random() < 0.5}
    if name == "Promotion Clicked":
        return {"promotion_id": "promo"}
    return {}


def traits(rng: random.Random) -> dict[str, Any]:
    pool = {
        "age": rng.choice([3, 17, 18, 30, 44, 64, 65, 130]),
        "age_band": rng.choice(["25-34", "x"]),
        "city": rng.choice(["Berlin", "Rome", ""]),
        "country": rng.choice(["DE", "IT"]),
        "urban": rng.random() < 0.5,
        "gender": rng.choice(["f", "m", "d"]),
        "loyalty_tier": rng.choice(["gold", "silver"]),
    }
    keys = rng.sample(sorted(pool), rng.randrange(len(pool) + 1))
    return {key: pool[key] for key in keys}


def event(rng: random.Random, at_ms: int) -> dict[str, Any]:
    kind = rng.random()
    out: dict[str, Any] = {"messageId": f"m{next(_ids)}", "timestamp": timestamp(at_ms), "userId": "u1"}
    if kind < 0.08:
        out.update(type="identify", traits=traits(rng))
    elif kind < 0.14:
        out.update(type=rng.choice(["page", "screen"]), properties={})
    elif kind < 0.16:
        out.update(type="alias", previousId="a1")
    else:
        name = rng.choice(TRACKS[:5] * 3 + TRACKS)
        out.update(type="track", event=name, properties=properties(rng, name))
    if rng.random() < 0.6:
        out["context"] = context(rng)
    return out


def stream(rng: random.Random, start_ms: int, n: int) -> list[dict[str, Any]]:
    """Mostly forward in time (minutes to weeks apart), with late events and long silences."""
    at, events = start_ms, []
    for _ in range(n):
        step = rng.choice([0, 1, 3, 20, 29, 31, 45, 90, 600, 1440, 3 * 1440, 20 * 1440, 45 * 1440])
        if rng.random() < 0.12:
            step = -rng.choice([1, 10, 100, 2000, 50_000])  # late
        at += step * 60_000 + rng.randrange(60_000)
        events.append(event(rng, at))
    return events


# --- what each side says ------------------------------------------------------------------


def exact(value: Any) -> Any:
    """``value`` with floats as their exact bits (so that -0.0 and 0.0, or 1 and 1.0, differ)."""
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, dict):
        return ("dict", [(exact(k), exact(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__name__, [exact(v) for v in value])
    return (type(value).__name__, value)


def derived(ask: Any, nows: list[int]) -> list[Any]:
    return [
        (
            ask("lifecycle", now),
            ask("at_risk", now),
            ask("lapse_risk", now),
            ask("p_alive", now),
            ask("next", now),
            ask("steps", now),
            ask("alive_steps", now),
        )
        for now in nows
    ]


def reference_features(state: reference.CustomerState, nows: list[int]) -> dict[str, Any]:
    session, cart = state.session, state.cart

    def ask(what: str, now: int) -> Any:
        if what == "lifecycle":
            return state.lifecycle(now, LC)
        if what == "at_risk":
            return state.at_risk(now, LC)
        if what == "lapse_risk":
            return state.lapse_risk(now, LC)
        if what == "p_alive":
            return state.p_alive(now, LC)
        return state.next_boundary(now, LC, risk_steps=what == "steps", alive_steps=what == "alive_steps")

    return {
        "scalars": [
            state.first_seen_ms,
            state.last_seen_ms,
            state.last_event_id,
            state.orders,
            state.refunds,
            state.lifetime_spend,
            state.first_order_ms,
            state.last_order_ms,
            state.last_order_id,
            state.order_gap_ms,
            state.last_store,
            state.last_city,
            state.last_country,
        ],
        "buckets": list(state.counts.buckets),
        "counts": [state.counts.counts(window, now) for window in ("1h", "24h", "7d", "30d") for now in nows],
        "hours": bytes(state.hours),
        "affinities": [
            (state.categories.ref_ms, state.products.ref_ms),
            state.categories.scores,
            state.products.scores,
            state.categories.top(),
            state.products.top(5),
            [state.categories.as_of(now, reference.CATEGORY_HALF_LIFE_MS) for now in nows],
            [state.products.as_of(now, reference.PRODUCT_HALF_LIFE_MS) for now in nows],
        ],
        "session": None
        if session is None
        else [session.id, (session.started_ms, session.last_ms, session.pages), session.products],
        "cart": None
        if cart is None
        else [
            cart.id,
            cart.items,
            cart.value,
            (cart.started_ms, cart.last_add_ms),
            int(sum(line[0] for line in cart.items.values())),
        ],
        "traits": state.traits,
        "consent": state.consent,
        "bought": state.bought,
        "preferred_hour": state.preferred_hour(),
        "derived": derived(ask, nows),
    }


def native_features(features: Features, nows: list[int]) -> dict[str, Any]:
    def ask(what: str, now: int) -> Any:
        if what == "lifecycle":
            return features.lifecycle(now, LC.new_days, LC.lapse_days)
        if what == "at_risk":
            return features.at_risk(now, LC.lapse_days, LC.at_risk_gap_factor)
        if what == "lapse_risk":
            return features.lapse_risk(now, LC.lapse_days, LC.population)
        if what == "p_alive":
            return features.p_alive(now, LC.population)
        return features.next_boundary(
            now,
            LC.new_days,
            LC.lapse_days,
            LC.at_risk_gap_factor,
            what == "steps",
            LC.population,
            what == "alive_steps",
        )

    session_id, cart_id = features.session_id, features.cart_id
    return {
        "scalars": [
            features.first_seen_ms,
            features.last_seen_ms,
            features.last_event_id,
            features.orders,
            features.refunds,
            features.lifetime_spend,
            features.first_order_ms,
            features.last_order_ms,
            features.last_order_id,
            features.order_gap_ms,
            features.last_store,
            features.last_city,
            features.last_country,
        ],
        "buckets": features.buckets,
        "counts": [features.counts(window, now) for window in ("1h", "24h", "7d", "30d") for now in nows],
        "hours": features.hours,
        "affinities": [
            features.affinity_landmarks,
            features.category_scores,
            features.product_scores,
            features.top_categories(),
            features.top_products(5),
            [features.categories_as_of(now) for now in nows],
            [features.products_as_of(now) for now in nows],
        ],
        "session": None if session_id is None else [session_id, features.session_times, features.session_products],
        "cart": None
        if cart_id is None
        else [cart_id, features.cart_lines, features.cart_value, features.cart_times, features.cart_items],
        "traits": features.traits,
        "consent": features.consent,
        "bought": features.bought,
        "preferred_hour": features.preferred_hour(),
        "derived": derived(ask, nows),
    }


def assert_same(ref: reference.CustomerState, state: CustomerState, step: str) -> None:
    last = ref.last_seen_ms
    nows = [last, last + 59_999, last + 3 * 86_400_000 + 1, ref.first_seen_ms + 31 * 86_400_000, last - 3_600_000]
    if ref.last_order_ms is not None:
        nows += [ref.last_order_ms + 50 * 86_400_000, ref.last_order_ms + 60 * 86_400_000]
    expected, got = reference_features(ref, nows), native_features(state.features, nows)
    for name in expected:
        assert exact(got[name]) == exact(expected[name]), f"{name} differs after {step}"


# --- the runs -------------------------------------------------------------------------------


class Pair:
    """One customer held by both sides, fed the same envelopes."""

    def __init__(self, customer_id: str, first_ms: int) -> None:
        self.ref = reference.CustomerState(customer_id, first_ms)
        self.state = CustomerState(customer_id, first_ms)

    def apply(self, env: Any) -> None:
        reference.apply_event(self.ref, env, LC)
        apply_event(self.state, env, LC)

    def checkpoint(self, env: Any) -> tuple[Any, Any]:
        return self.ref.checkpoint(), self.state.checkpoint()

    def rollback(self, taken: tuple[Any, Any]) -> None:
        self.ref.rollback(taken[0])
        self.state.rollback(taken[1])


def run(seed: int, start_ms: int, n: int = 160) -> None:
    rng = random.Random(seed)
    events = envelopes(stream(rng, start_ms, n))
    pair = Pair("u1", events[0].ts_ms)
    for index, env in enumerate(events):
        roll = rng.random()
        if roll < 0.08:  # the update fails after the features changed (a rule raised): undone
            taken = pair.checkpoint(env)
            pair.apply(env)
            pair.rollback(taken)
        elif roll < 0.12:  # an anonymous customer's features are linked in
            anonymous = Pair("a1", env.ts_ms)
            for other in envelopes(stream(rng, env.ts_ms - rng.randrange(10**9), rng.randrange(1, 30))):
                anonymous.apply(other)
            pair.ref.merge(anonymous.ref, env.ts_ms)
            pair.state.merge(anonymous.state, env.ts_ms)
            pair.apply(env)
        else:
            pair.apply(env)
        assert_same(pair.ref, pair.state, f"event {index} ({env.name}) of seed {seed}")
    back = codec.decode(codec.encode(pair.state))
    assert back.features == pair.state.features
    assert_same(pair.ref, back, f"a snapshot of seed {seed}")


def ms(moment: datetime) -> int:
    return int((moment - EPOCH).total_seconds() * 1000)


@pytest.mark.parametrize("seed", range(12))
def test_seeded_streams_give_the_reference_features(seed):
    run(seed, ms(RECENT))


@pytest.mark.parametrize("seed", range(3))
def test_streams_from_1970_give_the_reference_features(seed):
    run(100 + seed, 0)


@pytest.mark.parametrize("seed", range(4))
def test_an_order_reads_its_scanned_lines_as_it_reads_their_list(seed):
    """The lines the event scan read (``OrderLines``, read natively) change the features exactly as
    the same lines as a list of Structs do: the product, category and quantity of the first lines
    bought, returned lines passed over, empty categories as none."""
    rng = random.Random(seed)
    orders = [env for env in envelopes(stream(rng, ms(RECENT), 300)) if env.name.startswith("Order")]
    scanned = [env for env in orders if type(env.event.properties.products) is OrderLines]
    assert len(scanned) > 20 and any(len(env.event.properties.products) > 20 for env in scanned)
    as_scanned, as_listed = Features(ms(RECENT)), Features(ms(RECENT))
    for env in scanned:
        props = env.event.properties
        completed = env.name == "Order Completed"
        for features, lines in ((as_scanned, props.products), (as_listed, list(props.products))):
            features.apply_order(env.ts_ms, env.message_id, 9, 10, 1_800_000, None, None, None, completed,
                                 props.order_id, props.amount(), lines)  # fmt: skip
        assert as_scanned == as_listed, env.raw
        assert as_scanned.bought == as_listed.bought


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.integers(0, ms(RECENT)), st.integers(1, 60))
def test_any_stream_gives_the_reference_features(seed, start_ms, n):
    run(seed, start_ms, n)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Product Added", "Product Removed", "Order Completed", "Order Refunded"]),
            st.integers(1, 100_000),
            st.floats(0, 1e9, allow_nan=False).map(lambda x: math.floor(x * 1000) / 1000),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_money_rounds_as_python_rounds(steps):
    """Cart values and spend are rounded to cents after every step, half to even on the exact
    binary value, as Python's ``round`` does: the same values on both sides for any prices."""
    events = []
    for minute, (name, quantity, price) in enumerate(steps):
        if name.startswith("Product"):
            props: dict[str, Any] = {"product_id": f"p{quantity % 3}", "quantity": quantity, "price": price}
        else:
            props = {"order_id": f"o{minute}", "total": price}
        events.append({"type": "track", "event": name, "messageId": f"m{minute}", "userId": "u1",
                       "timestamp": timestamp(ms(RECENT) + minute * 60_000), "properties": props})  # fmt: skip
    pair = Pair("u1", ms(RECENT))
    for env in envelopes(events):
        pair.apply(env)
        assert_same(pair.ref, pair.state, env.name)


YEAR_1 = -62_135_596_800_000  # 0001-01-01T00:00:00Z
YEAR_9999 = 253_402_300_799_000  # 9999-12-31T23:59:59Z
EXTREMES = [YEAR_1, 0, ms(RECENT) - 9 * 365 * 86_400_000, ms(RECENT), ms(RECENT) + 1, YEAR_9999]


def viewed(features: Features, product: str, category: str, at_ms: int) -> None:
    """A product view with no activity counted (times beyond the windowed counts' range)."""
    timeout = LC.session_timeout_ms
    features.apply_product(at_ms, "m", None, 0, timeout, None, None, None, 0, product, category, None, 1, None)


@pytest.mark.parametrize("first", EXTREMES)
@pytest.mark.parametrize("second", EXTREMES)
def test_affinities_at_any_two_times_in_any_order_are_the_reference_ones(first, second):
    features = Features(first)
    products, categories = reference.DecayedTopK(), reference.DecayedTopK()
    for item, at in (("first", first), ("second", second)):
        viewed(features, item, item.upper(), at)
        products.add(item, 1.0, at, reference.PRODUCT_HALF_LIFE_MS, reference.AFFINITY_K)
        categories.add(item.upper(), 1.0, at, reference.CATEGORY_HALF_LIFE_MS, reference.AFFINITY_K)
    later = max(first, second)
    scores = features.products_as_of(later)
    assert all(0.0 <= score <= 2.0 for score in scores.values()), scores
    assert exact(scores) == exact(products.as_of(later, reference.PRODUCT_HALF_LIFE_MS))
    assert exact(features.product_scores) == exact(products.scores)
    assert exact(features.categories_as_of(later)) == exact(categories.as_of(later, reference.CATEGORY_HALF_LIFE_MS))
    assert features.top_products() == products.top() and features.top_categories() == categories.top()


def test_a_merge_across_centuries_keeps_the_newer_scores():
    mine, other = Features(YEAR_1), Features(YEAR_9999)
    for _ in range(5):
        viewed(mine, "old", "c", YEAR_1)
    viewed(other, "new", "c", YEAR_9999)
    mine.merge(other, YEAR_9999)
    assert mine.products_as_of(YEAR_9999) == {"new": 1.0, "old": 0.0}


def test_windowed_counts_beyond_their_range_are_refused_as_python_refused_them():
    """A time whose minute does not fit the buckets' 32 bits (after the year 6053) raises as
    Python's ``array('i')`` did (the engine then dead-letters the event and undoes it)."""
    features = Features(YEAR_9999)
    with pytest.raises(OverflowError):
        features.apply(YEAR_9999, "m", 0, 0, LC.session_timeout_ms, None, None, None)
    ref = reference.WindowedCounts()
    with pytest.raises(OverflowError):
        ref.add("page", YEAR_9999, YEAR_9999)


def test_a_snapshot_carries_names_not_ids():
    state = CustomerState("u1", ms(RECENT))
    for env in envelopes(stream(random.Random(5), ms(RECENT), 80)):
        apply_event(state, env, LC)
    blob = state.features.to_bytes()
    assert b"p1" in blob or b"p0" in blob
    assert Features.from_bytes(blob) == state.features
    assert pickle.loads(pickle.dumps(state.features)) == state.features


@pytest.mark.parametrize("cut", [0, 1, 9, -1])
def test_unreadable_feature_bytes_are_refused_clearly(cut):
    state = CustomerState("u1", ms(RECENT))
    for env in envelopes(stream(random.Random(6), ms(RECENT), 40)):
        apply_event(state, env, LC)
    blob = state.features.to_bytes()
    with pytest.raises(ValueError, match="customer features unreadable"):
        Features.from_bytes(blob[:cut] if cut >= 0 else blob + b"\x00")


def test_a_checkpoint_is_a_copy_the_record_goes_back_to():
    state = CustomerState("u1", ms(RECENT))
    events = envelopes(stream(random.Random(7), ms(RECENT), 60))
    for env in events[:30]:
        apply_event(state, env, LC)
    before = state.features.to_bytes()
    taken = state.checkpoint()
    for env in events[30:]:
        apply_event(state, env, LC)
    assert state.features.to_bytes() != before
    state.rollback(taken)
    assert state.features.to_bytes() == before
