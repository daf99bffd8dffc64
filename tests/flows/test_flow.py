"""The whole dataflow under bytewax.testing: one worker, several workers, bad input."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from itertools import chain

import orjson
import pytest
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from conftest import added, call, order, source_records, track

from flows.personalization import build_flow
from flows.settings import Settings
from operators.engine import Forward
from operators.ordering import shard_of
from operators.pipeline import ShardLogic
from schemas.envelope import Envelope
from schemas.items import Output


def run_flow(events, tmp_path, workers: int = 1, shards: int = 8) -> list[Output]:
    captured: list[tuple[str, Output]] = []
    settings = Settings(out=tmp_path / "unused", shards=shards)
    flow = build_flow(settings, source=TestingSource(source_records(events), batch_size=7), sink=TestingSink(captured))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=workers)
    assert all(stream == output.stream for stream, output in captured)
    return [output for _, output in captured]


def per_customer(outputs: list[Output]) -> dict[str, list[bytes]]:
    """Each customer's decisions in event-time order (what consumers of a Kafka key see)."""
    by_customer: dict[str, list[tuple]] = defaultdict(list)
    for o in outputs:
        if o.stream != "stats":
            by_customer[o.key].append(o.sort_key())
    return {key: [row[-1] for row in sorted(rows)] for key, rows in sorted(by_customer.items())}


def mixed_stream() -> list:
    events: list = []
    for i in range(40):
        user = f"u{i}"
        base = i * 7
        events += [
            call("identify", user, base, traits={"age": 20 + i % 30, "city": "Berlin", "urban": True}),
            added(user, base + 1, product=f"p{i % 5}", price=30.0 + i),
            track("Product Viewed", user, base + 2, props={"product_id": "p9", "category": "coffee"}),
        ]
        if i % 3 == 0:
            events.append(order(user, base + 10, total=5000.0 + i))
        if i % 4 == 0:
            events += [added(None, base + 3, anon=f"a{i}"), call("identify", user, base + 5, anon=f"a{i}")]
    events.sort(key=lambda e: e["timestamp"])
    events += [track("Signed Up", "late-joiner", 600), track("Product Viewed", "z", 2000, props={"product_id": "q"})]
    return events


def test_flow_emits_triggers_audiences_and_dead_letters(tmp_path):
    events = [*mixed_stream(), b"{not json", b"\xff\xfe\x00", b'{"type":"track"}']
    outputs = run_flow(events, tmp_path)
    streams = defaultdict(list)
    for o in outputs:
        streams[o.stream].append(orjson.loads(o.body))
    assert {d["reason"] for d in streams["dead_letters"]} == {"invalid_json", "not_utf8", "schema_invalid"}
    push = streams["triggers.push"]
    assert {d["data"]["rule_id"] for d in push} >= {"cart_abandonment_push", "onboarding_welcome_push"}
    abandoned = {d["subject"] for d in push if d["data"]["rule_id"] == "cart_abandonment_push"}
    buyers = {f"u{i}" for i in range(40) if i % 3 == 0}
    assert abandoned and not abandoned & buyers, "customers who ordered get no cart reminder"
    high_value = {d["subject"] for d in streams["audience_changes"] if d["data"]["audience"] == "high_value"}
    assert high_value == buyers
    stats = [orjson.loads(o.body) for o in outputs if o.stream == "stats"]
    assert sum(s.get("customers", 0) for s in stats) == 42


def test_several_workers_give_the_same_per_customer_results(tmp_path):
    events = mixed_stream()
    one = per_customer(run_flow(events, tmp_path / "one", workers=1))
    three = per_customer(run_flow(events, tmp_path / "three", workers=3))
    assert one == three
    assert sum(len(v) for v in one.values()) > 50


def test_shard_count_does_not_change_per_customer_decisions_for_in_order_input(tmp_path):
    events = mixed_stream()
    few = per_customer(run_flow(events, tmp_path / "few", shards=1))
    many = per_customer(run_flow(events, tmp_path / "many", shards=16))
    cart = b"cart_abandonment_push"
    assert {k: [b for b in v if cart in b] for k, v in few.items()} == {
        k: [b for b in v if cart in b] for k, v in many.items()
    }


def test_each_customer_audience_changes_reach_the_sink_in_the_order_they_happen(tmp_path):
    """What a Kafka consumer of one customer's key sees: never an exit before its entry, also for
    anonymous customers, whose changes come from the identity stage."""
    events: list = []
    for i in range(30):
        events += [added(None, i, anon=f"a{i}"), call("identify", f"u{i}", 200 + i, anon=f"a{i}")]
    events.sort(key=lambda e: e["timestamp"])
    captured: list[tuple[str, Output]] = []
    settings = Settings(out=tmp_path / "unused", shards=8)
    source = TestingSource(source_records(events), batch_size=100)
    flow = build_flow(settings, source=source, sink=TestingSink(captured))
    run_main(flow)  # one batch: the identity stage releases every change at once

    changes: dict[tuple[str, str], list[str]] = defaultdict(list)
    for stream, output in captured:
        if stream == "audience_changes":
            data = orjson.loads(output.body)["data"]
            changes[(output.key, data["audience"])].append(data["change"])
    anonymous = {key: seen for key, seen in changes.items() if key[0].startswith("a")}
    assert len(anonymous) >= 30, "every anonymous customer entered an audience and left it when linked"
    for key, seen in changes.items():
        assert seen == ["entered", "exited"] * (len(seen) // 2) + ["entered"] * (len(seen) % 2), key


@pytest.mark.parametrize("unset_clock", ["1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z"])
def test_an_event_from_an_unset_device_clock_is_dead_lettered_and_the_run_goes_on(tmp_path, unset_clock):
    viewed = {"product_id": "p1", "category": "shoes"}
    events = [
        call("identify", "u1", 0, traits={"city": "Berlin"}),
        track("Page", "u1", 1),
        track("Product Viewed", "u1", 2, props=viewed, timestamp=unset_clock),
        track("Product Viewed", "u1", 3, props=viewed),
        track("Signed Up", "u2", 4),
    ]
    outputs = run_flow(events, tmp_path)
    dead = [orjson.loads(o.body) for o in outputs if o.stream == "dead_letters"]
    assert [(d["reason"], d["position"]["line"]) for d in dead] == [("too_old", 3)]
    welcome = [orjson.loads(o.body) for o in outputs if o.stream == "triggers.push"]
    assert [w["subject"] for w in welcome] == ["u2"], "the events after it were applied"


def test_identity_shard_and_customer_shard_of_one_number_run_on_one_worker_and_workers_share_shards_evenly(
    tmp_path, monkeypatch
):
    """An event whose customer is its identity key goes on to the customer stage on the worker it is
    on: shard n of both stages lives on one worker, whatever the worker count; and each worker holds
    as many shards as the others."""
    shards = 8
    workers: dict[tuple[str, int], set[int]] = defaultdict(set)
    on_batch = ShardLogic.on_batch

    def noting_worker(self: ShardLogic, values: list[list]) -> tuple:
        identity = self.engine.role == "identity"
        for item in chain.from_iterable(values):
            if isinstance(item, Envelope):  # keyed by anonymousId into an identity shard, by userId onwards
                key = item.anonymous_id or item.customer_id if identity else item.customer_id
            elif isinstance(item, Forward):  # into a customer shard
                key = item.customer_id
            else:
                continue
            workers[(self.engine.role, shard_of(key, shards))].add(threading.get_ident())
        return on_batch(self, values)

    monkeypatch.setattr(ShardLogic, "on_batch", noting_worker)
    run_flow(mixed_stream(), tmp_path, workers=4, shards=shards)
    assert {shard for _, shard in workers} == set(range(shards))
    for shard in range(shards):
        assert workers[("identity", shard)] == workers[("customer", shard)], shard
    per_worker = Counter(thread for (role, _), threads in workers.items() if role == "identity" for thread in threads)
    assert sorted(per_worker.values()) == [2, 2, 2, 2]


class _ThreadProbeSink(DynamicSink[Output]):
    """Counts, per worker thread, the batches written and the batches a ``threading.local`` has seen."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.written: Counter[int] = Counter()
        self.remembered: dict[int, int] = {}

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Output]:
        probe = self

        class _Partition(StatelessSinkPartition[Output]):
            def write_batch(self, items: list[Output]) -> None:
                thread = threading.get_ident()
                probe.written[thread] += 1
                probe.local.batches = getattr(probe.local, "batches", 0) + 1
                probe.remembered[thread] = probe.local.batches

        return _Partition()


def test_a_worker_thread_keeps_its_python_thread_state_from_batch_to_batch(tmp_path):
    """Bytewax's worker threads are native threads: each would get a new Python thread state (a frame
    stack mapped and unmapped, its id asked) every time it enters Python, several times a batch, unless
    the engine holds the one it has."""
    sink = _ThreadProbeSink()
    settings = Settings(out=tmp_path / "unused", shards=8)
    flow = build_flow(settings, source=TestingSource(source_records(mixed_stream()), batch_size=7), sink=sink)
    cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=2)
    assert len(sink.written) == 2 and all(batches > 1 for batches in sink.written.values())
    assert sink.remembered == dict(sink.written), "what a thread keeps lasts as long as the thread"
