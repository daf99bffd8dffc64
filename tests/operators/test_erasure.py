"""Erasure in the engine: the ledger record, the links every identity shard holds, and the ledger that
drops an erased customer's events up to the erasure, live and on a replay."""

from __future__ import annotations

import pickle
from typing import Any

import orjson
from conftest import added, raw_records, track

from operators.engine import ERASURE, EngineConfig
from operators.ordering import shard_of
from operators.pipeline import Pipeline
from operators.rules import load_rules
from schemas.items import Output
from schemas.streams import ERASURES
from schemas.timestamps import epoch_ms
from state.store import wait_for_writes

SHARDS = 4


def erasure(user: str | None, minutes: float, anon: str | None = None, request: str = "r-1") -> dict[str, Any]:
    return track(ERASURE, user, minutes, anon=anon, props={"request_id": request, "regulation": "ccpa"})


def anonymous_ids_on_every_shard(prefix: str) -> list[str]:
    """One anonymous id per identity shard, none on the shard of ``u1`` itself."""
    ids: dict[int, str] = {}
    for n in range(1000):
        anon = f"{prefix}{n}"
        ids.setdefault(shard_of(anon, SHARDS), anon)
    return [anon for shard, anon in sorted(ids.items()) if shard != shard_of("u1", SHARDS)]


def run(events: list[dict[str, Any]], config: EngineConfig | None = None) -> tuple[list[Output], Pipeline]:
    pipeline = Pipeline(load_rules(), config or EngineConfig(), shards=SHARDS)
    outputs = [o for raw in raw_records(events) for o in pipeline.feed([raw])]
    return outputs + pipeline.finish(), pipeline


def about(outputs: list[Output], customer: str) -> list[Output]:
    """The decisions and audience changes (not the ledger, nor counters) for ``customer``."""
    return [o for o in outputs if o.key == customer and o.stream.startswith(("triggers.", "audience_changes"))]


def counted(outputs: list[Output], name: str) -> int:
    return sum(orjson.loads(o.body).get(name, 0) for o in outputs if o.stream == "stats")


def test_an_erasure_is_recorded_in_the_ledger_with_its_time_request_and_regulation():
    outputs, pipeline = run([added("u1", 0), erasure("u1", 5), erasure("u9", 6, request="r-9")])
    records = [orjson.loads(o.body) for o in outputs if o.stream == ERASURES]
    assert records == [
        {"customer_id": "u1", "erased_at": "2026-01-05T10:05:00.000Z", "regulation": "ccpa", "request_id": "r-1"},
        {"customer_id": "u9", "erased_at": "2026-01-05T10:06:00.000Z", "regulation": "ccpa", "request_id": "r-9"},
    ], "recorded once each, also for a customer the engine held nothing of"
    assert [o.key for o in outputs if o.stream == ERASURES] == ["u1", "u9"], "keyed by customer (compaction)"
    assert all("u1" not in stage.engine.customers for stage in pipeline.customers)


def test_after_an_erasure_no_anonymous_id_linked_on_any_shard_leads_back_to_the_customer():
    """u1 was seen with an anonymous id on every identity shard; the erasure names only u1. Later events
    of those ids alone are an anonymous customer's each, never u1's again (no state, no cart reminder)."""
    anonymous = anonymous_ids_on_every_shard("dev")
    assert len(anonymous) == SHARDS - 1
    linking = [track("Page", "u1", n, anon=anon) for n, anon in enumerate(anonymous)]
    later = [added(None, 20 + n, anon=anon) for n, anon in enumerate(anonymous)]
    outputs, pipeline = run([*linking, erasure("u1", 10), *later, track("Page", "u2", 200)])
    assert all("u1" not in stage.engine.customers for stage in pipeline.customers)
    assert not [o for o in about(outputs, "u1") if o.time_ms > epoch_ms("2026-01-05T10:10:00Z")]
    kept = {anon for stage in pipeline.identity for anon in stage.engine.customers}
    assert kept == set(anonymous), "each old anonymous id goes on as an anonymous customer of its own"
    assert all(not stage.engine.links.get(anon) for stage in pipeline.identity for anon in anonymous)


def test_an_erased_customer_s_late_events_from_before_the_erasure_are_dropped_on_every_shard():
    anonymous = anonymous_ids_on_every_shard("late")
    events = [
        added("u1", 0, anon=anonymous[0]),
        erasure("u1", 10),
        added("u1", 8, anon=anonymous[1]),  # late: from before the erasure, through another shard
        added(None, 9, anon=anonymous[0]),  # late, with an anonymous id the erasure unlinked
        track("Page", None, 12, anon=anonymous[0]),  # after it: an anonymous customer now
        added("u1", 15),  # after the erasure: a new relationship
    ]
    outputs, pipeline = run(events)
    assert counted(outputs, "erased_events") == 2
    assert anonymous[0] in pipeline.identity[shard_of(anonymous[0], SHARDS)].engine.customers
    state = pipeline.customers[shard_of("u1", SHARDS)].engine.customers["u1"]
    assert state.features.first_seen_ms == epoch_ms("2026-01-05T10:15:00Z"), "only what came after the erasure"
    stats = [orjson.loads(o.body) for o in outputs if o.stream == "stats"]
    accepted = sum(sum(s.get("events", {}).values()) + sum(s.get("unknown_events", {}).values()) for s in stats)
    assert accepted + counted(outputs, "erased_events") == len(events), "every event accounted for"


def test_a_ledger_read_before_the_run_drops_the_customer_s_events_up_to_the_erasure_and_no_later():
    """A replay of data recorded before an erasure, with the ledger: nothing of u1 comes back, nor of the
    anonymous id u1's events link (its state, and its own events up to the erasure); after, all counts."""
    erased_at = epoch_ms("2026-01-05T11:00:00Z")
    events = [
        added(None, 0, anon="a1"),  # anonymous, before anything names u1
        track("Signed Up", "u1", 1, anon="a1"),  # the link: u1's
        added(None, 2, anon="a1"),  # linked to u1 when recorded
        added("u1", 3),
        track("Page", "u2", 4, anon="a2"),
        added("u1", 70),  # after the erasure
        track("Page", None, 71, anon="a1"),  # after the erasure, anonymous
    ]
    outputs, pipeline = run(events, EngineConfig(erased={"u1": erased_at}))
    assert not [o for o in about(outputs, "u1") if o.time_ms <= erased_at]
    assert not [o for o in outputs if o.stream.startswith("triggers.") and o.key == "a1"]
    assert counted(outputs, "erased_events") == 3
    assert not [o for o in outputs if o.stream == ERASURES], "the ledger's erasures are not applied again"
    state = pipeline.customers[shard_of("u1", SHARDS)].engine.customers["u1"]
    assert state.features.first_seen_ms == erased_at + 10 * 60_000
    anonymous = pipeline.identity[shard_of("a1", SHARDS)].engine.customers["a1"]
    assert anonymous.features.first_seen_ms == erased_at + 11 * 60_000, "a new anonymous customer"


def test_an_anonymous_customer_s_audiences_are_left_when_its_link_to_an_erased_customer_comes():
    events = [added(None, n, anon="a1", price=900.0) for n in range(3)]
    events += [track("Order Completed", None, 4, anon="a1", props={"order_id": "o1", "total": 4000.0})]
    events += [track("Page", "u1", 5, anon="a1")]
    outputs, pipeline = run(events, EngineConfig(erased={"u1": epoch_ms("2026-01-05T12:00:00Z")}))
    changes = [orjson.loads(o.body)["data"] for o in outputs if o.stream == "audience_changes" and o.key == "a1"]
    entered = {c["audience"] for c in changes if c["change"] == "entered"}
    exited = {c["audience"] for c in changes if c["change"] == "exited"}
    assert entered and entered == exited
    assert all("a1" not in stage.engine.customers for stage in pipeline.identity)


def test_what_an_identity_shard_knows_of_erasures_survives_a_snapshot(tmp_path):
    config = EngineConfig(snapshots=True)
    anonymous = anonymous_ids_on_every_shard("snap")
    _, before = run([track("Page", "u1", 0, anon=anonymous[0]), erasure("u1", 10)], config)
    snapshots = [pickle.dumps(stage.engine.snapshot()) for stage in before.identity]
    wait_for_writes()
    after = Pipeline(load_rules(), config, shards=SHARDS)
    for stage, snapshot in zip(after.identity, snapshots, strict=True):
        stage.engine.restore(pickle.loads(snapshot))
    outputs = [o for raw in raw_records([added("u1", 5, anon=anonymous[1]), added(None, 6, anon=anonymous[0])])
               for o in after.feed([raw])]  # fmt: skip
    outputs += after.finish()
    assert counted(outputs, "erased_events") == 2
    assert all("u1" not in stage.engine.customers for stage in after.customers)


def test_an_erasure_the_ledger_knows_is_applied_again_but_not_recorded_again():
    """A resumed run may hold a customer from before its erasure (its snapshot is older): the erasure,
    read again, still drops it; the ledger it is already in gets no second record."""
    erased_at = epoch_ms("2026-01-05T10:05:00Z")
    config = EngineConfig(erased={"u1": erased_at})
    outputs, pipeline = run([added("u1", 6), erasure("u1", 5), erasure("u2", 6)], config)  # u1: a new relationship
    assert [o.key for o in outputs if o.stream == ERASURES] == ["u2"]
    assert counted(outputs, "erased_events") == 0
    assert all("u1" not in stage.engine.customers for stage in pipeline.customers)
    assert [orjson.loads(o.body)["data"]["change"] for o in about(outputs, "u1")] == ["entered", "exited"]


def test_a_restored_customer_the_ledger_says_was_erased_since_is_dropped(tmp_path):
    config = EngineConfig(snapshots=True)
    _, before = run([added("u1", 0), added("u2", 1)], config)
    snapshots = [pickle.dumps(stage.engine.snapshot()) for stage in before.customers]
    wait_for_writes()
    ledger = {"u1": epoch_ms("2026-01-05T10:05:00Z"), "u2": epoch_ms("2026-01-05T09:00:00Z")}
    after = Pipeline(load_rules(), EngineConfig(snapshots=True, erased=ledger), shards=SHARDS)
    for stage, snapshot in zip(after.customers, snapshots, strict=True):
        stage.engine.restore(pickle.loads(snapshot))
    held = {customer for stage in after.customers for customer in stage.engine.customers}
    assert held == {"u2"}, "u2 was seen after its erasure: a new relationship"


def test_an_erasure_deletes_the_live_profile_even_of_a_customer_the_engine_holds_nothing_of():
    """The store may hold a customer this run has not seen (state expired, a new recovery store)."""
    outputs, _ = run([erasure("u9", 5)], EngineConfig(profile_ms=1000))
    profiles = [(o.key, orjson.loads(o.body)) for o in outputs if o.stream == "profiles"]
    assert profiles == [("u9", {"customer_id": "u9", "deleted": True})]


def test_an_erasure_naming_only_a_linked_anonymous_id_erases_the_customer_it_is_linked_to():
    outputs, pipeline = run([added("u1", 0, anon="a1"), erasure(None, 5, anon="a1"), added(None, 6, anon="a1")])
    assert [o.key for o in outputs if o.stream == ERASURES] == ["u1"]
    assert all("u1" not in stage.engine.customers for stage in pipeline.customers)
    assert "a1" in pipeline.identity[shard_of("a1", SHARDS)].engine.customers, "a new anonymous customer"
