"""The one wiring of the stages: routing by shard, one item per shard per batch, and the in-process
pipeline giving what the dataflow gives."""

from __future__ import annotations

import zlib

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from conftest import added, envelopes, order, raw_records, source_records, track

from flows.personalization import build_flow
from flows.settings import Settings
from operators.engine import EngineConfig, Forward, IdentityStage
from operators.ordering import Tick, shard_of
from operators.pipeline import Pipeline, Router, ShardLogic
from operators.rules import load_rules
from schemas.envelope import Envelope
from schemas.items import EndOfInput, Output, ReadAhead


def test_a_source_batch_becomes_one_list_per_identity_shard_ending_with_the_batch_tick():
    events = [added(f"u{n}", n, anon=f"a{n}") for n in range(20)] + [track("Page", None, 30, anon="a-only")]
    router = Router(shards=4, max_skew_ms=3_600_000)
    routed = router.parse(raw_records(events))
    assert sorted(routed) == [0, 1, 2, 3], "every shard hears the batch's progress, events or not"
    for shard, items in routed.items():
        *envelopes, ticks = items
        assert isinstance(ticks, tuple) and all(isinstance(t, Tick) and t.shard == shard for t in ticks)
        for env in envelopes:
            assert isinstance(env, Envelope)
            assert shard_of(env.anonymous_id or env.customer_id, 4) == shard, "keyed by anonymousId, else userId"
    assert sum(len(items) - 1 for items in routed.values()) == len(events)


def test_bad_records_travel_as_dead_letters_and_forwards_reach_their_customers_shard():
    router = Router(shards=3, max_skew_ms=3_600_000)
    raws = raw_records([added("u1", 0), b"{not json"])
    routed = router.parse(raws)
    dead = [item for items in routed.values() for item in items if isinstance(item, Output)]
    assert [d.stream for d in dead] == ["dead_letters"]
    env = next(item for items in routed.values() for item in items if isinstance(item, Envelope))
    linked = envelopes([track("Page", None, 1, anon="a9")])[0]
    tick = Tick(None, 5, origin=2)
    forwarded = router.forward([[env, Forward(linked, "u2"), tick], [dead[0]]])
    assert env in forwarded[shard_of("u1", 3)], "an event identified by its userId goes to that customer's shard"
    assert Forward(linked, "u2") in forwarded[shard_of("u2", 3)], "a forward goes to the customer it names"
    assert dead[0] in forwarded[shard_of(dead[0].key, 3)], "outputs of the identity stage go by their key"
    assert all(items[-1] == (tick,) for items in forwarded.values()), "the identity shards' ticks reach every shard"


def test_the_identity_stage_hands_identified_events_on_as_they_are_and_wraps_only_links():
    """One object per event crosses to the customer stage: the envelope itself for its ``userId``;
    a :class:`Forward` only for an anonymous event of a linked id, or a link that hands over state."""
    events = [
        track("Page", "u1", 0),
        track("Page", "u2", 1, anon="a2"),
        track("Page", None, 2, anon="a2"),
        track("Page", None, 3, anon="a3"),
        track("Page", "u3", 4, anon="a3"),
    ]
    router = Router(shards=1, max_skew_ms=3_600_000)
    identity = ShardLogic(IdentityStage(load_rules(), EngineConfig()))
    (emitted,), _ = identity.on_batch([router.parse(source_records(events))[0]])
    handed = [item for item in emitted if not isinstance(item, (Tick, Output))]
    assert [type(item) for item in handed] == [Envelope, Envelope, Forward, Forward]
    assert [item.seq for item in handed] == sorted(item.seq for item in handed), "in merge-key order"
    linked, carrying = handed[2:]
    assert linked.customer_id == "u2" and linked.carried is None
    assert carrying.customer_id == "u3" and carrying.carried is not None and carrying.carried.id == "a3"


def test_the_in_process_pipeline_gives_what_the_dataflow_gives(tmp_path):
    events = [added(f"u{n % 7}", n * 3, anon=f"a{n % 9}") for n in range(60)]
    events += [order(f"u{n}", 200 + n) for n in range(3)] + [track("Page", None, 400, anon="a3")]
    rules = load_rules()
    pipeline = Pipeline(rules, EngineConfig(), shards=4)
    records = raw_records(events)
    in_process = [o for start in range(0, len(records), 5) for o in pipeline.feed(records[start : start + 5])]
    in_process += pipeline.finish()

    captured: list[tuple[str, Output]] = []
    settings = Settings(out=tmp_path / "unused", shards=4)
    source = TestingSource(source_records(events), batch_size=5)
    run_main(build_flow(settings, rules, source=source, sink=TestingSink(captured)))

    def comparable(outputs: list[Output]) -> list[tuple[str, bytes]]:
        return sorted((o.stream, o.body) for o in outputs if o.stream not in ("stats", "models"))

    assert comparable(in_process) == comparable([o for _, o in captured])
    assert any(o.stream.startswith("triggers.") for o in in_process), "the comparison covers decisions"
    assert any(o.stream == "audience_changes" for o in in_process)
    in_flow = [orjson.loads(o.body) for _, o in captured if o.stream == "stats"]
    assert sorted(orjson.dumps(s) for s in in_flow) == sorted(o.body for o in in_process if o.stream == "stats")


def test_the_end_of_input_releases_what_is_held_back():
    pipeline = Pipeline(load_rules(), EngineConfig(source_partitions=2))
    outputs = pipeline.feed(raw_records([added("u1", 0)]))
    assert pipeline.identity[0].engine.ordered.pending, "partition 1 has not reported: the event waits"
    outputs += pipeline.feed([EndOfInput(0, partition=1)])
    outputs += pipeline.finish()
    assert "u1" in pipeline.customers[0].engine.customers
    assert [o.stream for o in outputs].count("stats") == 2


def test_the_router_tells_the_parts_of_a_chunked_stream_how_far_the_identity_shards_have_taken_them():
    read_ahead = ReadAhead(lines=100)
    router = Router(shards=2, max_skew_ms=0, chunked=True, read_ahead=read_ahead)
    line = router.marks.key  # a line's merge key
    router.forward([[Tick(None, line(0, 40), origin=0)], [Tick(None, line(0, 60), origin=1)]])
    assert read_ahead.taken == 60, "every identity shard had taken every part's lines up to its tick"
    router.forward([[Tick(None, line(0, 50), origin=0)]])
    assert read_ahead.taken == 60, "what was taken stays taken"


def test_identified_events_passed_straight_on_still_link_their_anonymous_id_and_count_each_new_link():
    """An identified event with no anonymous state to hand over passes on as it is, but links its
    anonymous id: later anonymous events reach that customer, and only a new or changed link counts."""
    events = [
        track("Page", "u1", 0, anon="a1"),  # a new link
        track("Page", "u1", 1, anon="a1"),  # the same link again
        track("Page", None, 2, anon="a1"),  # anonymous, linked: to u1
        track("Page", "u2", 3, anon="a1"),  # relinked
        track("Page", None, 4, anon="a1"),  # anonymous, linked: now to u2
    ]
    router = Router(shards=1, max_skew_ms=3_600_000)
    identity = IdentityStage(load_rules(), EngineConfig())
    (emitted,), _ = ShardLogic(identity).on_batch([router.parse(source_records(events))[0]])
    handed = [item for item in emitted if not isinstance(item, (Tick, Output))]
    assert [type(item) for item in handed] == [Envelope, Envelope, Forward, Envelope, Forward]
    assert [item.customer_id for item in handed] == ["u1", "u1", "u1", "u2", "u2"]
    assert identity.stats["identities_linked"] == 2
    assert identity.customers == {}, "no anonymous customer was kept"


def test_a_key_s_shard_is_its_crc32_modulo_the_shards_on_every_machine():
    """The shard of a routing key is fixed by its bytes: state keyed by it stays where it is."""
    keys = ["", "u-005570", "a-98034f9999c0c2e4", "caf\u00e9 \U0001f600", "x" * 200, *(f"u{n}" for n in range(500))]
    for shards in (1, 3, 16, 1024):
        assert [shard_of(key, shards) for key in keys] == [zlib.crc32(key.encode()) % shards for key in keys]
    assert shard_of("u-005570", 16) == 10
    with pytest.raises(ZeroDivisionError):
        shard_of("u1", 0)
