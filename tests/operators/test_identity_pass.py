"""The identity stage passes runs of identified events on in one native call; every event it
leaves to Python, and every event it takes, ends exactly as the stage's event-by-event way ends it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from conftest import raw_records, track

from connectors.synthetic import generate_events
from operators.engine import ERASURE, EngineConfig, IdentityStage
from operators.pipeline import Pipeline, ShardLogic
from operators.rules import CompiledRules, load_rules
from schemas.items import EndOfInput, Output
from schemas.timestamps import epoch_ms
from state.affinity import DAY_MS

CONFIG = EngineConfig(max_age_ms=DAY_MS // 24, dedupe_per_shard=500, links_per_shard=200)


class EventByEvent(IdentityStage):
    """The identity stage taking every released event the Python way, one by one."""

    def _apply_released(self, released: list[Any], out: list[Any]) -> None:
        for env in released:
            self._released_event(env, out)


def stream() -> list[dict[str, Any]]:
    """Generated days with defects (duplicates, late, future-dated), anonymous customers whose timers
    fire, links that change, ids that leave the bounded memories, and erasures."""
    events = list(generate_events(60, 4, seed=11, defects=0.08))
    moved = next(event["anonymousId"] for event in events if event.get("userId") and event.get("anonymousId"))
    now = {"timestamp": events[199]["timestamp"]}
    extra = [
        {**track("Page", "u-moved", anon=moved, messageId="m-moved"), **now},
        {**track(ERASURE, "u-gone", anon="a-gone", props={"request_id": "r1"}, messageId="m-gone"), **now},
    ]
    return events[:200] + extra + events[200:]


def run(
    identity: type[IdentityStage], rules: CompiledRules, batch: int, config: EngineConfig = CONFIG
) -> tuple[list[bytes], list[dict[str, Any]]]:
    pipeline = Pipeline(rules, config, shards=3)
    pipeline.identity = [ShardLogic(identity(rules, config, 3)) for _ in range(3)]
    raws = raw_records(stream())
    outputs: list[Output] = []
    for start in range(0, len(raws), batch):
        outputs += pipeline.feed(raws[start : start + batch])
    outputs += pipeline.finish()
    stats = [orjson.loads(out.body) for out in outputs if out.stream == "stats"]
    return [repr((out.stream, out.key, out.seq, out.time_ms, out.timer)).encode() + out.body for out in outputs], stats


def test_the_identity_stage_gives_what_it_gives_event_by_event():
    rules = load_rules()
    for batch in (1, 7, 500):
        natively, stats = run(IdentityStage, rules, batch)
        assert natively == run(EventByEvent, rules, batch)[0], f"batches of {batch}"
    identity = [shard for shard in stats if "anonymous_customers" in shard]
    assert sum(shard.get("duplicates", 0) for shard in identity) > 10
    assert sum(shard.get("identities_linked", 0) for shard in identity) > 50
    assert any(shard.get("triggers") for shard in identity), "anonymous customers' decisions"
    dead = b"".join(line for line in natively if line.startswith(b"('dead_letters'"))
    assert b'"future_dated"' in dead and b'"too_old"' in dead


def test_with_an_erasure_ledger_the_identity_stage_gives_what_it_gives_event_by_event():
    """Customers of the ledger, erased mid-stream: their events up to then take the Python way and are
    dropped, the later ones pass on, the same either way."""
    events = stream()
    users = sorted({event["userId"] for event in events if event.get("userId")})[:12]
    middle = epoch_ms(events[len(events) // 2]["timestamp"])
    config = replace(CONFIG, erased={user: middle for user in users})
    rules = load_rules()
    for batch in (1, 500):
        natively, stats = run(IdentityStage, rules, batch, config)
        assert natively == run(EventByEvent, rules, batch, config)[0], f"batches of {batch}"
    assert sum(shard.get("erased_events", 0) for shard in stats) > 50
    assert any(b"'u-" in line and b"'triggers." in line for line in natively), "the others still get decisions"


def test_runs_stop_where_the_python_way_is_needed():
    """The pass stops at an anonymous customer's event and goes on after it; duplicates are dropped
    and counted on the way, and links are made as both ids come."""
    events = [
        track("Page", "u1", 1, anon="a1"),
        track("Page", "u1", 2, anon="a1"),
        track("Page", None, 3, anon="a2"),
        track("Page", "u2", 4, anon="a3"),
        track("Page", "u2", 5),
    ]
    events[1]["messageId"] = events[0]["messageId"]
    stage = IdentityStage(load_rules(), EngineConfig())
    logic = ShardLogic(stage)
    pipeline = Pipeline(load_rules(), EngineConfig())
    routed = pipeline.router.parse([*raw_records(events), EndOfInput(len(events))])
    (emitted,), _ = logic.on_batch([routed[0]])
    passed = [item for item in emitted if not isinstance(item, Output) and hasattr(item, "message_id")]
    assert [env.message_id for env in passed] == [events[n]["messageId"] for n in (0, 3, 4)]
    assert set(stage.customers) == {"a2"}, "the anonymous customer is kept here"
    assert stage.stats["duplicates"] == 1 and stage.stats["identities_linked"] == 2
    assert stage.links.get("a1") == "u1" and stage.links.get("a3") == "u2"
