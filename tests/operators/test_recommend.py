"""Recommendations: co-occurrence within sessions, exclusions, filling up, progressive checks."""

from __future__ import annotations

import random

from conftest import EngineHarness, added, decisions, rules_from, track

from operators.models.recommend import NEIGHBOURS, POPULAR, CoOccurrence, _strongest, _top, sampled

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


def test_the_fast_paths_agree_with_a_full_sort_on_random_streams():
    """Popularity ranks, pruned neighbours and top-k equal the plain sorted definitions, ties included."""
    rng = random.Random(7)
    model = CoOccurrence()
    products = [f"p{n:03d}" for n in range(300)]
    session: list[str] = []
    for _ in range(20_000):
        product = products[min(int(rng.paretovariate(1.2)) - 1, 299)] if rng.random() < 0.7 else rng.choice(products)
        model.learn(session, product, f"c{int(product[1:]) % 7}")
        session = [*session[-5:], product] if rng.random() < 0.9 else []
    by_count = sorted(model.counts, key=lambda p: (-model.counts[p], p))
    assert model.popular == by_count[:POPULAR]
    for category, ranked in model.popular_in.items():
        assert ranked == [p for p in by_count if model.category_of[p] == category][:POPULAR]
    assert all(len(n) <= 2 * NEIGHBOURS for n in model.links.values())

    for size in (0, 3, 10, 11, 200):
        scores = {f"p{n}": float(rng.randint(0, 5)) / 4 for n in range(size)}  # many ties
        assert _top(scores, 10) == sorted(scores, key=lambda p: (-scores[p], p))[:10]
        kept = _strongest(scores)
        assert list(kept) == sorted(scores, key=lambda p: (-scores[p], p))[:NEIGHBOURS]
        assert all(kept[p] == scores[p] for p in kept)
