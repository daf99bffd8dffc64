"""A recovery snapshot pauses every shard of the flow at once: what can be prepared before it is. The
recommender's journal (what it learnt and checked since the last snapshot) is sealed, pickled, now and
then between snapshots; the snapshot pickles only what came since, and restores the same models. With a
customer store, each shard hands it its changes shortly before the snapshot (a pre-save): the snapshot
encodes and carries only what changed after, and a restore at any snapshot is the engine of then."""

from __future__ import annotations

import pickle

import orjson
from conftest import (
    CART_RULE,
    EngineHarness,
    added,
    order,
    pickled_snapshots,
    product_views,
    restore_snapshots,
    rules_from,
    track,
)

from operators.engine import EngineConfig
from state.store import wait_for_writes


def harness() -> EngineHarness:
    return EngineHarness(rules_from(CART_RULE), EngineConfig(snapshots=True))


def test_a_journal_sealed_between_snapshots_leaves_the_snapshot_the_rest_and_restores_the_same_models():
    h = harness()
    h.feed(product_views(1000))
    h.customers.snapshot()  # the journal is kept from the first snapshot on
    models = h.customers.models
    for start in (1000, 1400, 1800):  # sealed now and then between two snapshots
        h.feed(product_views(400, start))
        models.seal_journal()
        assert models._journal == [], "what was learnt so far is pickled already: the snapshot will not"
    h.feed(product_views(50, 2200))
    again = harness()
    again.customers.restore(pickle.loads(pickle.dumps(h.customers.snapshot())))
    restored = again.customers.models
    assert restored.recommender.__getstate__() == models.recommender.__getstate__(), "link for link"
    assert restored.stats() == models.stats() and models.stats()["recommendations"]["checked"] > 0
    later = product_views(100, 2250)
    assert again.feed(later) == h.feed(later)
    assert orjson.dumps(restored.recommender.export()) == orjson.dumps(models.recommender.export())


# --- pre-saves: a shard hands its changes to its store ahead of the snapshot ----------------------
def stored(folder) -> EngineHarness:
    """One shard per stage, customers kept in a store in ``folder``."""
    return EngineHarness(rules_from(CART_RULE), EngineConfig(snapshots=True, state_store=folder))


def restored(folder, snapshots: tuple[bytes, bytes]) -> EngineHarness:
    return restore_snapshots(stored(folder), snapshots)


def presave(h: EngineHarness) -> None:
    h.identity.presave()
    h.customers.presave()
    wait_for_writes()


def test_after_a_presave_the_snapshot_carries_only_what_changed_since_and_restores_the_same_engine(tmp_path):
    h = stored(tmp_path)
    h.feed(product_views(700))
    pickled_snapshots(h)
    h.feed(product_views(700, 700))  # every customer changes
    presave(h)
    h.feed([track("Product Viewed", "u3", 1500, props={"product_id": "p1", "category": "c1"}, message_id="late")])
    snapshots = pickled_snapshots(h)
    customers = pickle.loads(snapshots[1])[1]
    assert set(customers["unsaved"]) == {"u3"}, "the store held the rest when the snapshot was taken"
    seen = pickle.loads(snapshots[0])[1]["journals"]["seen"]
    assert [pickle.loads(blob) for blob in seen.unsaved.values()] == [["late"]], "of the ids, only the last one"
    again = restored(tmp_path, snapshots)
    assert again.customers.customers.keys() == h.customers.customers.keys()
    assert again.identity.seen.to_bytes() == h.identity.seen.to_bytes()
    later = [*product_views(100, 1500), track("Product Added", "u2", 1700, props={"product_id": "p7", "price": 5})]
    assert again.feed(later) == h.feed(later)
    assert again.finish() == h.finish()


def test_a_run_that_stops_after_a_presave_resumes_from_the_snapshot_before_it(tmp_path):
    """Bytewax resumes from the last snapshot: what a pre-save wrote after it is not read back, and the
    events after the snapshot, read again, give what an uninterrupted run gives."""
    first, then = product_views(300), [*product_views(300, 300), added("u2", 650, product="p7", price=5)]
    rest = [*product_views(100, 700), order("u3", 900)]
    whole = stored(tmp_path / "whole")
    whole.feed(first)
    expected = whole.feed([*then, *rest])
    h = stored(tmp_path / "run")
    h.feed(first)
    snapshots = pickled_snapshots(h)
    h.feed(then)
    presave(h)  # and the run stops here
    again = restored(tmp_path / "run", snapshots)
    assert again.feed([*then, *rest]) == expected
    assert again.finish() == whole.finish()


def test_a_shard_that_had_no_store_at_the_snapshot_it_resumes_from_starts_its_store_afresh(tmp_path):
    """A run that stops after its shard first wrote to its store (a pre-save, or a snapshot whose epoch
    Bytewax did not commit) leaves customers there that the snapshot it resumes from never held: they
    are not read back later."""
    h = stored(tmp_path)
    empty = pickled_snapshots(h)  # no customer yet: no store
    h.feed(product_views(20))
    pickled_snapshots(h)  # the store is made, with u0..u6; the run stops before Bytewax commits this snapshot
    again = restored(tmp_path, empty)
    for minutes in (30, 31):  # two snapshots: the second refers to what the store holds
        again.feed([track("Product Viewed", "other", minutes, props={"product_id": "p1", "category": "c1"})])
        snapshots = pickled_snapshots(again)
    assert set(restored(tmp_path, snapshots).customers.customers) == {"other"}
