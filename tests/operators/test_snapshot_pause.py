"""A recovery snapshot pauses every shard of the flow at once: what can be prepared before it is. The
recommender's journal (what it learnt and checked since the last snapshot) is sealed, pickled, now and
then between snapshots; the snapshot pickles only what came since, and restores the same models."""

from __future__ import annotations

import pickle

import orjson
from conftest import CART_RULE, EngineHarness, rules_from, track

from operators.engine import EngineConfig


def harness() -> EngineHarness:
    return EngineHarness(rules_from(CART_RULE), EngineConfig(snapshots=True))


def views(count: int, start: int = 0) -> list[dict]:
    """Views of 500 products by 7 customers, a minute apart (1 in 50 is a checked one)."""
    return [
        track("Product Viewed", f"u{i % 7}", i, props={"product_id": f"p{i * 37 % 500}", "category": f"c{i % 3}"})
        for i in range(start, start + count)
    ]


def test_a_journal_sealed_between_snapshots_leaves_the_snapshot_the_rest_and_restores_the_same_models():
    h = harness()
    h.feed(views(1000))
    h.customers.snapshot()  # the journal is kept from the first snapshot on
    models = h.customers.models
    for start in (1000, 1400, 1800):  # sealed now and then between two snapshots
        h.feed(views(400, start))
        models.seal_journal()
        assert models._journal == [], "what was learnt so far is pickled already: the snapshot will not"
    h.feed(views(50, 2200))
    again = harness()
    again.customers.restore(pickle.loads(pickle.dumps(h.customers.snapshot())))
    restored = again.customers.models
    assert restored.recommender.__getstate__() == models.recommender.__getstate__(), "link for link"
    assert restored.stats() == models.stats() and models.stats()["recommendations"]["checked"] > 0
    later = views(100, 2250)
    assert again.feed(later) == h.feed(later)
    assert orjson.dumps(restored.recommender.export()) == orjson.dumps(models.recommender.export())
