"""Recommendations: co-occurrence within sessions, exclusions, filling up, progressive checks; the
compiled model agrees exactly with the plain-Python reference (``tests/recommend_reference.py``)."""

from __future__ import annotations

import hashlib
import pickle
import random
from typing import Any

import pytest
from conftest import EngineHarness, added, decisions, rules_from, track
from hypothesis import given, settings
from hypothesis import strategies as st
from recommend_reference import CoOccurrence as Reference

from operators.models.recommend import NEIGHBOURS, POPULAR, SAMPLE_EVERY, CoOccurrence, sampled

RULES = """
version: v
triggers:
  - id: browse
    channel: in_app
    on: Product Viewed
    after: 20m
    unless: [Product Added]
    once_per: session
    recommend: 3
"""


def viewed(user: str, minute: float, product: str) -> dict:
    return track("Product Viewed", user, minute, props={"product_id": product, "category": "c"})


def test_products_seen_together_in_sessions_are_recommended_together():
    model = CoOccurrence()
    for session in (["a", "b", "c"], ["a", "b"], ["x", "y"]):
        for i, product in enumerate(session):
            model.learn(session[:i], product)
    assert model.recommend(["a"], k=2) == ["b", "c"]
    assert model.recommend(["x"], k=1) == ["y"]


def test_what_the_customer_has_just_touched_or_excluded_is_never_recommended():
    model = CoOccurrence()
    for i, product in enumerate(["a", "b", "c", "d"]):
        model.learn(["a", "b", "c", "d"][:i], product)
    assert model.recommend(["a"], k=3, exclude=["c"]) == ["b", "d"]


def test_too_few_neighbours_are_filled_with_the_most_popular():
    model = CoOccurrence()
    for product in ["p", "p", "p", "q", "q", "r"]:
        model.learn([], product)
    assert model.recommend(["new"], k=2) == ["p", "q"]
    assert model.most_popular(["p"], k=2) == ["q", "r"]


def test_the_engine_learns_across_customers_and_leaves_out_cart_and_last_order():
    h = EngineHarness(rules_from(RULES))
    h.feed([viewed("u1", 0, "a"), viewed("u1", 1, "b"), viewed("u1", 2, "c"), viewed("u1", 3, "d")])
    props = {"order_id": "o1", "total": 5.0, "products": [{"product_id": "c"}]}
    bought = track("Order Completed", "u2", 50, props=props)
    h.feed([bought])
    h.feed([added("u2", 60, product="d"), viewed("u2", 61, "a"), track("Page", "zz", 100)])
    [browse] = [d for d in decisions(h.outputs, "triggers") if d["subject"] == "u2"]
    assert browse["data"]["recommendations"] == ["b"], "c was just bought and d is in the cart"


def test_progressive_checks_count_hits_on_a_deterministic_sample():
    model = CoOccurrence()
    for n in range(400):
        session = ["a", "b"]
        for i, product in enumerate(session):
            if sampled(f"m{n}-{i}"):
                model.check(session[:i], product)
            model.learn(session[:i], product)
    assert 4 <= model.checked <= 30, "about one view in 50 is checked"
    assert model.hits >= model.checked - 1, "after the first sessions, b always follows a"


def test_popularity_ranks_and_pruned_neighbours_follow_their_plain_sorted_definitions():
    """Ties included: by count (or weight), then id; at most 2 x NEIGHBOURS links between prunings."""
    rng = random.Random(7)
    model = CoOccurrence()
    products = [f"p{n:03d}" for n in range(300)]
    session: list[str] = []
    for _ in range(20_000):
        product = products[min(int(rng.paretovariate(1.2)) - 1, 299)] if rng.random() < 0.7 else rng.choice(products)
        model.learn(session, product, f"c{int(product[1:]) % 7}")
        session = [*session[-5:], product] if rng.random() < 0.9 else []
    state = model.__getstate__()
    counts = state["counts"]
    by_count = sorted(counts, key=lambda p: (-counts[p], p))
    assert state["popular"] == by_count[:POPULAR]
    for category, ranked in state["popular_in"].items():
        assert ranked == [p for p in by_count if state["category_of"][p] == category][:POPULAR]
    assert all(len(n) <= 2 * NEIGHBOURS for n in state["links"].values())
    assert max(len(n) for n in state["links"].values()) > NEIGHBOURS, "pruning was reached"

    loaded = CoOccurrence()
    loaded.load(model.export())
    for product, neighbours in loaded.__getstate__()["links"].items():
        full = state["links"][product]
        assert list(neighbours) == sorted(full, key=lambda q: (-full[q], q))[:NEIGHBOURS]


def test_the_sample_is_one_byte_of_the_blake2b_digest_of_the_message_id():
    for message_id in ["", "m1", "ajs-6f7a1c0e-5d2b-4f4e-9d5a-0c1b2e3f4a5b", "é" * 100, "x" * 128, "y" * 129]:
        digest = hashlib.blake2b(message_id.encode(), digest_size=2).digest()
        assert sampled(message_id) == (digest[0] % SAMPLE_EVERY == 0), message_id
    assert sum(sampled(f"m{n}") for n in range(5000)) == sum(
        hashlib.blake2b(f"m{n}".encode(), digest_size=2).digest()[0] % SAMPLE_EVERY == 0 for n in range(5000)
    )


@given(st.text(max_size=300))
def test_any_message_id_is_sampled_as_the_blake2b_digest_says(message_id):
    try:
        expected: bool | type[Exception] = hashlib.blake2b(message_id.encode(), digest_size=2).digest()[0] % 50 == 0
    except UnicodeEncodeError:
        expected = UnicodeEncodeError
    try:
        got: bool | type[Exception] = sampled(message_id)
    except UnicodeEncodeError:
        got = UnicodeEncodeError
    assert got == expected


# --- the compiled model against the plain-Python reference ----------------------------------------------


def _state(model: Any) -> dict[str, Any]:
    """The model's whole state, with the order of every neighbour list (floats compared exactly)."""
    state = model.__getstate__() if isinstance(model, CoOccurrence) else dict(model.__dict__)
    state["links"] = {p: list(n.items()) for p, n in state["links"].items()}
    return state


def _outcome(call: Any) -> Any:
    try:
        return call()
    except ZeroDivisionError:
        return ZeroDivisionError


def _same(model: CoOccurrence, reference: Reference, method: str, *args: Any, **kwargs: Any) -> Any:
    got = _outcome(lambda: getattr(model, method)(*args, **kwargs))
    expected = _outcome(lambda: getattr(reference, method)(*args, **kwargs))
    assert got == expected, (method, args, kwargs)
    return got


def _replay(ops: list[tuple[Any, ...]]) -> tuple[CoOccurrence, Reference]:
    """Apply ``ops`` to both models, comparing every answer; ``pickle`` round-trips the compiled one,
    ``bytes`` restores it into a new one from its compact bytes, ``reload`` loads both from their
    exports (parameters replaced, counters kept)."""
    model, reference = CoOccurrence(), Reference()
    for op, *args in ops:
        if op == "pickle":
            model = pickle.loads(pickle.dumps(model))
        elif op == "bytes":
            restored = CoOccurrence(frozen=True)
            restored.restore_bytes(model.to_bytes())
            model = restored
        elif op == "reload":
            assert model.export() == reference.export()
            exported = model.export()
            model.load(exported)
            reference.load(exported)
        elif op == "learn":
            model.learn(*args)
            reference.learn(*args)
        else:
            _same(model, reference, op, *args)
    assert _state(model) == _state(reference)
    assert model.export() == reference.export()
    assert model.stats() == reference.stats()
    return model, reference


def _random_ops(rng: random.Random, events: int, products: int) -> list[tuple[Any, ...]]:
    """Sessions over a long-tailed catalogue (count and weight ties), products that change category
    or have none, and now and then a carousel, a check, a snapshot or a restart from the exports."""
    names = [f"p{n:03d}" for n in range(products)] + ["é", "Z", "", "p00", "p0000"]
    categories = [f"c{n}" for n in range(6)] + ["", None]
    ops: list[tuple[Any, ...]] = []
    session: list[str] = []
    for n in range(events):
        product = (
            names[min(int(rng.paretovariate(1.1)) - 1, len(names) - 1)] if rng.random() < 0.7 else rng.choice(names)
        )
        category = rng.choice(categories) if rng.random() < 0.05 else f"c{sum(map(ord, product)) % 6}"
        roll = rng.random()
        interests = rng.sample(names, rng.randint(0, 5))
        affinities = {
            rng.choice([*categories[:-1], "unknown"]): rng.choice([0.0, 0.5, 1.0, rng.random()])
            for _ in range(rng.randint(0, 4))
        }
        if roll < 0.04:
            exclude = rng.sample(names, rng.randint(0, 6))
            ops.append(("recommend", list(session), rng.randint(1, 20), exclude, interests, affinities or None))
        elif roll < 0.08:
            ops.append(("check", list(session), product, interests, affinities or None))
        elif roll < 0.09:
            ops.append(("most_popular", list(session), rng.randint(1, 12)))
        elif roll < 0.092:
            ops.append(("pickle",))
        elif roll < 0.093:
            ops.append(("reload",))
        elif roll < 0.095:
            ops.append(("bytes",))
        elif roll < 0.11:  # an order: mostly a few lines, now and then a big one (round-the-order links)
            size = rng.randint(1, 8) if rng.random() < 0.8 else rng.randint(15, 170)
            lines = [(rng.choice(names), rng.choice([*categories, category])) for _ in range(size)]
            ops.append(("learn_basket", lines))
        ops.append(("learn", list(session), product, category))
        session = [*session[-9:], product] if rng.random() < 0.85 else []
        if n % 2000 == 0:
            ops.append(("pickle",))
    return ops


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_compiled_model_agrees_with_the_reference_on_long_random_streams(seed):
    """Pruning beyond 2 x NEIGHBOURS, popularity ties, category changes, affinities that sum to 0."""
    rng = random.Random(seed)
    model, _ = _replay(_random_ops(rng, 12_000, 400))
    assert max(len(n) for n in model.__getstate__()["links"].values()) > NEIGHBOURS
    assert model.stats()["checked"] > 100


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_the_compiled_model_agrees_with_the_reference_on_any_small_stream(data):
    names = st.sampled_from(["a", "b", "c", "B", "aa", "é", "\U0001f600", "", "b "])
    cats = st.one_of(st.none(), st.sampled_from(["x", "y", "", "X"]))
    history = st.lists(names, max_size=12)
    affinities = st.one_of(
        st.none(), st.dictionaries(st.sampled_from(["x", "y", "z", ""]), st.sampled_from([0.0, 1.0, 0.25, 3.0]))
    )
    op = st.one_of(
        st.tuples(st.just("learn"), history, names, cats),
        st.tuples(st.just("learn"), history, names, cats),
        st.tuples(st.just("learn_basket"), st.lists(st.tuples(names, cats), max_size=25)),
        st.tuples(
            st.just("recommend"),
            history,
            st.integers(1, 12),
            st.lists(names, max_size=3),
            st.lists(names, max_size=6),
            affinities,
        ),
        st.tuples(st.just("check"), history, names, st.lists(names, max_size=6), affinities),
        st.tuples(st.just("most_popular"), history, st.integers(1, 12)),
        st.tuples(st.just("pickle")),
        st.tuples(st.just("bytes")),
        st.tuples(st.just("reload")),
    )
    _replay(data.draw(st.lists(op, max_size=120)))


def test_bytes_it_cannot_read_are_refused_and_leave_the_model_as_it_was():
    model, _ = _replay([op for op in _random_ops(random.Random(4), 500, 50) if op[0] == "learn"])
    data, before = model.to_bytes(), _state(model)
    for bad, message in [(data[:-5], "cut"), (b"\x09" + data[1:], "format 9"), (data + b"\x00", "go on after")]:
        with pytest.raises(ValueError, match=message):
            model.restore_bytes(bad)
    assert _state(model) == before


def test_merged_exports_equal_the_references():
    rng = random.Random(11)
    exports = []
    for _ in range(4):
        model, _ = _replay([op for op in _random_ops(rng, 1500, 120) if op[0] == "learn"])
        exports.append(model.export())
    exports.append({"links": {"p001": {"é": 1}, "zz": {}}, "counts": {"zz": 0}, "categories": {"p001": "", "zz": "c9"}})
    assert CoOccurrence.merge(exports) == Reference.merge(exports)
    assert CoOccurrence.merge([]) == Reference.merge([])
    merged, expected = CoOccurrence(), Reference()
    merged.load(CoOccurrence.merge(exports))
    expected.load(Reference.merge(exports))
    assert _state(merged) == _state(expected)


def test_a_snapshot_of_the_plain_python_model_restores_into_the_compiled_one_and_continues_identically():
    """Recovery snapshots written before the model was compiled hold the plain-Python object."""
    rng = random.Random(5)
    ops = [op for op in _random_ops(rng, 4000, 150) if op[0] == "learn"]
    reference = Reference()
    for _, *args in ops[:3000]:
        reference.learn(*args)
    reference.check(["p001"], "p002")

    class AsWrittenBefore:  # unpickles as the plain-Python CoOccurrence did: a bare object, then its attributes
        def __reduce__(self) -> tuple[Any, ...]:
            return CoOccurrence.__new__, (CoOccurrence,), dict(reference.__dict__)

    model = pickle.loads(pickle.dumps(AsWrittenBefore()))
    assert type(model) is CoOccurrence and _state(model) == _state(reference)
    for _, *args in ops[3000:]:
        model.learn(*args)
        reference.learn(*args)
    assert _state(model) == _state(reference)
    assert model.recommend(["p001", "p003"], 10) == reference.recommend(["p001", "p003"], 10)


def test_recommendations_read_from_the_features_record_are_those_of_the_names_handed_over():
    """``ShardModels.recommend`` reads the session, the last order, the cart, the favourite products and
    the category affinities from the features record in one compiled call: the same products as the
    recommender gives for them handed over as Python names, for customers in every state of a day."""
    from operators.models import interests, session_products

    generator = random.Random(3)
    products = [f"p{i}" for i in range(40)]
    events = []
    for minute in range(0, 1500, 3):
        user = f"u{generator.randrange(25)}"
        product, category = generator.choice(products), f"c{generator.randrange(6)}"
        props = {"product_id": product, "category": category, "price": 10.0}
        kind = generator.choice(["Product Viewed", "Product Viewed", "Product Added", "Order Completed"])
        if kind == "Order Completed":
            props = {"order_id": f"o{minute}", "total": 10.0, "products": [{"product_id": product, "quantity": 1}]}
        events.append(track(kind, user, minute, props=props))
    h = EngineHarness(rules_from(RULES))
    h.feed(events)
    models, customers = h.customers.models, h.customers.customers.values()
    assert any(s.features.bought for s in customers) and any(s.features.cart_products for s in customers)
    checked = 0
    for state in customers:
        for at_ms in (state.last_seen_ms, state.last_seen_ms + 10 * 60_000, state.last_seen_ms + 3_600_000):
            features = state.features
            expected = models.recommender.recommend(
                session_products(state, at_ms, models.session_timeout_ms),
                4,
                exclude=(*features.bought, *features.cart_products),
                interests=interests(state),
                categories=features.category_scores,
            )
            assert models.recommend(state, 4, at_ms) == expected
            checked += bool(expected)
    assert checked > 20
