"""With a customer store, the recommender and the dedupe memory live there as base and journals:
a snapshot stays small, and a restore at any snapshot the store keeps gives the same engine."""

from __future__ import annotations

import pickle

import orjson
from conftest import CART_RULE, EngineHarness, pickled_snapshots, product_views, restore_snapshots, rules_from, track

from operators.engine import EngineConfig
from state.store import KEEP, CustomerStore, wait_for_writes


def harness(folder) -> EngineHarness:
    """One shard per stage, its customers kept in ``folder``; a dedupe memory that forgets (500 ids)."""
    config = EngineConfig(snapshots=True, state_store=folder, dedupe_per_shard=500)
    return EngineHarness(rules_from(CART_RULE), config)


def restored(folder, taken: tuple[bytes, bytes]) -> EngineHarness:
    return restore_snapshots(harness(folder), taken)


def engine_state(h: EngineHarness) -> tuple[object, bytes, bytes]:
    models = h.customers.models
    return models.recommender.__getstate__(), orjson.dumps(models.stats()), h.identity.seen.to_bytes()


def test_a_snapshot_carries_what_changed_not_the_whole_recommender_or_dedupe_memory(tmp_path):
    h = harness(tmp_path)
    h.feed(product_views(3000))
    pickled_snapshots(h)
    whole = len(pickle.dumps(h.customers.models.recommender)) + len(h.identity.seen.to_bytes())
    h.feed(product_views(10, 3000))
    identity, customers = pickled_snapshots(h)
    assert len(identity) + len(customers) < whole / 5, "10 views cost what they changed, not every link and id"


def test_a_restore_gives_the_same_models_and_dedupe_memory_and_then_the_same_decisions(tmp_path):
    h = harness(tmp_path)
    for start in range(0, 3000, 300):  # a journal per snapshot, and new bases as the journals outgrow them
        h.feed(product_views(300, start))
        taken = pickled_snapshots(h)
    again = restored(tmp_path, taken)
    assert engine_state(again) == engine_state(h)
    repeated = product_views(5, 2990)  # already seen: duplicates to both
    assert again.feed(repeated) == h.feed(repeated) == []
    later = [*product_views(200, 3000), track("Product Added", "u1", 3300, props={"product_id": "p7", "price": 5})]
    assert again.feed(later) == h.feed(later)


def test_a_restore_at_an_older_snapshot_the_store_keeps_gives_the_engine_of_then(tmp_path):
    """Bytewax resumes from its last committed epoch, which may be several snapshots back."""
    h = harness(tmp_path)
    taken, states = [], []
    for start in range(0, 3 * KEEP * 100, 100):
        h.feed(product_views(100, start))
        taken.append(pickled_snapshots(h))
        states.append(engine_state(h))
    back = len(taken) - KEEP // 2
    assert engine_state(restored(tmp_path, taken[back])) == states[back]


def test_the_store_keeps_the_parts_of_the_last_snapshots_only(tmp_path):
    h = harness(tmp_path)
    for start in range(0, 8 * KEEP * 100, 100):
        h.feed(product_views(100, start))
        pickled_snapshots(h)
    store = CustomerStore(tmp_path, h.customers.store.path.stem)
    bases, journals = store.db.execute(
        "SELECT SUM(kind = 'base'), SUM(kind = 'journal') FROM parts WHERE name = 'models'"
    ).fetchone()
    assert bases <= 3 and journals <= 3 * KEEP, "old bases and the journals before them are dropped"


def test_a_snapshot_before_the_store_holds_anything_restores_from_itself(tmp_path):
    """The first base travels in the snapshot while the store thread may not have written it."""
    h = harness(tmp_path)
    h.feed(product_views(500))
    identity, customers = pickle.dumps(h.identity.snapshot()), pickle.dumps(h.customers.snapshot())
    wait_for_writes()
    for name in ("identity-0000", "customer-0000"):  # as if the process died before the writes
        CustomerStore(tmp_path, name).db.execute("DELETE FROM parts")
    assert engine_state(restored(tmp_path, (identity, customers))) == engine_state(h)
