"""Orders teach the recommender: the products of a basket are linked (a bounded number of links per
order) and counted once for popularity, so a retailer whose customers only buy in store gets
recommendations; snapshots and restores carry the baskets learnt."""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest
from conftest import EngineHarness, decisions, pickled_snapshots, restore_snapshots, rules_from, track

from operators.engine import EngineConfig
from operators.models import ShardModels, interests, own_products, session_products
from operators.models.recommend import CoOccurrence
from schemas.events import Product
from schemas.rules import Recommend, RuleSet

BASKET_WEIGHT = CoOccurrence.BASKET_WEIGHT
BASKET_LINKS = CoOccurrence.BASKET_LINKS

AFTER_ORDER = """
version: v
triggers:
  - id: after_order
    channel: push
    on: Order Completed
    once_per: order
    recommend: {k}
"""


def till_order(user: str, minute: float, products: list[str], order_id: str | None = None) -> dict[str, Any]:
    """An order at a till: lines only, no views or cart before it."""
    lines = [{"product_id": p, "category": "grocery", "price": 1.5, "quantity": 2} for p in products]
    props = {"order_id": order_id or f"o-{user}-{minute}", "total": 3.0 * len(lines), "products": lines}
    return track("Order Completed", user, minute, props=props, context={"store": {"id": "s1"}})


def pos_stream() -> list[dict[str, Any]]:
    """Shoppers who buy milk with bread, and bread with butter or jam; nobody views anything."""
    baskets = [["milk", "bread", "butter"], ["milk", "bread", "jam"], ["bread", "butter"], ["tea", "biscuits"]]
    return [till_order(f"u{n}", n, baskets[n % len(baskets)]) for n in range(40)]


def links(model: CoOccurrence) -> dict[str, dict[str, float]]:
    return model.export()["links"]


def test_a_pos_only_stream_teaches_the_recommender_and_fills_a_carousel_with_co_purchased_products():
    h = EngineHarness(rules_from(AFTER_ORDER.format(k=3)))
    h.feed(pos_stream())
    assert h.customers.models.recommender.stats()["products"] == 6
    h.feed([till_order("new", 100, ["milk"])])
    [decision] = [d for d in decisions(h.outputs, "triggers") if d["subject"] == "new"]
    assert decision["data"]["recommendations"] == ["bread", "butter", "jam"], "milk was just bought: left out"


def test_a_carousel_that_includes_bought_products_starts_with_the_customer_s_own():
    rules = AFTER_ORDER.format(k="{k: 3, include_bought: true}")
    h = EngineHarness(rules_from(rules))
    h.feed([*pos_stream(), till_order("new", 100, ["tea"])])
    [decision] = [d for d in decisions(h.outputs, "triggers") if d["subject"] == "new"]
    assert decision["data"]["recommendations"] == ["tea", "biscuits", "bread"], "own, co-purchased, popular"


def test_each_pair_of_a_basket_is_linked_with_the_basket_weight_stronger_than_a_session_link():
    model = CoOccurrence()
    model.learn(["a"], "b")  # viewed one after the other
    model.learn_basket([("a", "x"), ("c", "x"), ("a", None), ("d", None)])  # a twice: counted once
    assert BASKET_WEIGHT > 1.0
    assert links(model) == {
        "a": {"b": 1.0, "c": BASKET_WEIGHT, "d": BASKET_WEIGHT},
        "b": {"a": 1.0},
        "c": {"a": BASKET_WEIGHT, "d": BASKET_WEIGHT},
        "d": {"a": BASKET_WEIGHT, "c": BASKET_WEIGHT},
    }
    assert model.export()["counts"] == {"a": 1, "b": 1, "c": 1, "d": 1}, "a basket counts each product once"
    assert model.recommend(["c"], 3) == ["a", "d", "b"]


@pytest.mark.parametrize("size", [9, 13, 14, 17, 18, 50, 161, 500])
def test_a_large_basket_makes_a_bounded_number_of_links_and_leaves_no_product_out(size):
    model = CoOccurrence()
    model.learn_basket([(f"p{n:03d}", None) for n in range(size)])
    linked = links(model)
    pairs = sum(map(len, linked.values())) // 2
    assert pairs <= max(BASKET_LINKS, size)
    if size * (size - 1) // 2 <= BASKET_LINKS:
        assert pairs == size * (size - 1) // 2, "a small basket: every pair"
    else:
        assert pairs < size * (size - 1) // 2
    assert len(linked) == size and min(map(len, linked.values())) >= 2
    assert model.stats()["products"] == size


def test_order_lines_read_by_the_scan_teach_the_same_as_lines_given_one_by_one():
    """The compiled path (the scan's lines, no Python object per line) and the plain one agree; returns
    (negative quantities) are not bought."""
    h = EngineHarness(rules_from(AFTER_ORDER.format(k=0)))
    stream = [*pos_stream(), till_order("r", 50, ["milk", "tea"])]
    stream[-1]["properties"]["products"][1]["quantity"] = -1
    h.feed(stream)
    plain = ShardModels("learn", 1000)
    for event in stream:
        lines = [Product(**line) for line in event["properties"]["products"]]
        plain.order_completed(lines)
    engine = h.customers.models.recommender
    assert engine.to_bytes() == plain.recommender.to_bytes()
    assert "tea" not in links(engine)["milk"], "a returned line is not bought"


def test_frozen_and_off_models_learn_no_order():
    frozen = ShardModels("frozen", 1000)
    frozen.order_completed([Product(product_id="a"), Product(product_id="b")])
    assert frozen.recommender.stats()["products"] == 0
    h = EngineHarness(rules_from(AFTER_ORDER.format(k=0)), EngineConfig(models="off"))
    h.feed(pos_stream())
    assert h.customers.models is None


def test_replaying_the_same_orders_gives_the_same_model_and_decisions():
    runs, stream = [], [*pos_stream(), till_order("new", 100, ["bread"])]
    for _ in range(2):
        h = EngineHarness(rules_from(AFTER_ORDER.format(k=4)))
        h.feed(stream)
        runs.append((h.customers.models.recommender.to_bytes(), [o.body for o in h.outputs]))
    assert runs[0] == runs[1]


def test_a_models_snapshot_replays_the_baskets_learnt_since_its_base():
    models = ShardModels("learn", 1000)
    models.order_completed([Product(product_id="a"), Product(product_id="b")])
    models.snapshot()  # the base; from now on a journal
    for n in range(30):
        models.order_completed([Product(product_id=f"p{n % 7}"), Product(product_id="a"), Product(product_id="z")])
    restored = ShardModels.from_snapshot(pickle.loads(pickle.dumps(models.snapshot())))
    assert restored.recommender.to_bytes() == models.recommender.to_bytes()
    assert restored.export() == models.export()


def test_a_restored_engine_continues_identically_after_orders(tmp_path):
    config = EngineConfig(snapshots=True, state_store=tmp_path)
    h = EngineHarness(rules_from(AFTER_ORDER.format(k=3)), config)
    stream = pos_stream()
    h.feed(stream[:10])
    pickled_snapshots(h)  # the base
    h.feed(stream[10:30])
    taken = pickled_snapshots(h)  # a journal of the baskets since
    again = restore_snapshots(EngineHarness(rules_from(AFTER_ORDER.format(k=3)), config), taken)
    assert again.customers.models.recommender.to_bytes() == h.customers.models.recommender.to_bytes()
    later = [*stream[30:], till_order("new", 100, ["milk"])]
    assert [o.body for o in again.feed(later)] == [o.body for o in h.feed(later)]


def test_recommend_takes_a_count_or_a_mapping_and_refuses_what_it_does_not_know():
    def recommend(value: Any) -> Recommend:
        rules = {"version": "v", "triggers": [{"id": "t", "channel": "push", "on": "x", "recommend": value}]}
        return RuleSet.model_validate(rules).triggers[0].recommend

    assert recommend(4) == Recommend(k=4) and not recommend(0) and str(recommend(4)) == "4"
    assert recommend({"k": 10, "include_bought": True}) == Recommend(k=10, include_bought=True)
    assert str(recommend({"k": 10, "include_bought": True})) == "{k: 10, include_bought: true}"
    for bad in ({"k": 3, "include_bougth": True}, {"k": 21}, True, {"include_bought": True}):
        with pytest.raises(ValueError):
            recommend(bad)


def test_a_rule_file_with_a_misnamed_recommend_field_names_it(tmp_path):
    from operators.rules import RuleFileError, load_rules

    path = tmp_path / "rules.yaml"
    path.write_text(AFTER_ORDER.format(k="{k: 3, include_bougth: true}"))
    with pytest.raises(RuleFileError) as error:
        load_rules(path)
    assert "rules.yaml:8: rule 'after_order' field 'recommend.include_bougth'" in str(error.value)


def test_own_products_first_read_from_the_features_record_are_those_of_their_python_definition():
    """``include_bought``: the customer's favourites and last order (``own_products``, at most k),
    then the recommender's for the session, leaving out the cart and those, for customers in every
    state of a day of views, cart adds and orders."""
    rng = random.Random(5)
    products = [f"p{i}" for i in range(30)]
    events = []
    for minute in range(0, 1500, 3):
        user, product = f"u{rng.randrange(20)}", rng.choice(products)
        kind = rng.choice(["Product Viewed", "Product Added", "Order Completed"])
        if kind == "Order Completed":
            events.append(till_order(user, minute, rng.sample(products, rng.randint(1, 6))))
        else:
            events.append(track(kind, user, minute, props={"product_id": product, "category": "c", "price": 2.0}))
    h = EngineHarness(rules_from(AFTER_ORDER.format(k=0)))
    h.feed(events)
    models, checked = h.customers.models, 0
    for state in h.customers.customers.values():
        for at_ms, k in ((state.last_seen_ms, 4), (state.last_seen_ms + 3_600_000, 10), (state.last_seen_ms, 2)):
            own = own_products(state)[:k]
            rest = models.recommender.recommend(
                session_products(state, at_ms, models.session_timeout_ms),
                k - len(own),
                exclude=(*state.features.cart_products, *own),
                interests=interests(state),
                categories=state.features.category_scores,
            )
            got = models.recommend(state, k, at_ms, include_bought=True)
            assert got == [*own, *rest]
            assert not set(got) & set(state.features.cart_products) and len(set(got)) == len(got)
            checked += bool(own)
    assert checked > 20
