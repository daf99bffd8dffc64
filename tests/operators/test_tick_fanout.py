"""Who hears the upstreams' progress after a pass: every shard while an upstream is busy (a replay),
and once all have read all there is (a live topic), only the shards with something to do, so that a
pass costs what its events cost; a quiet shard's timers still fire when the event time passes them."""

from __future__ import annotations

from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, run_main
from conftest import added, track

from flows.personalization import build_flow
from flows.settings import Settings
from operators.engine import EngineConfig
from operators.ordering import shard_of
from operators.pipeline import Pipeline, ShardLogic
from operators.rules import load_rules
from schemas.items import EndOfInput, Output, RawEvent

SHARDS = 8
PARTITIONS = 2


class LivePipeline:
    """The in-process pipeline fed as a live topic feeds it: each pass ends every partition it read
    with the end of what there was to read (idle until more comes). It counts the shard runs."""

    def __init__(self) -> None:
        self.pipeline = Pipeline(load_rules(), EngineConfig(source_partitions=PARTITIONS), shards=SHARDS)
        self.offsets = [0] * PARTITIONS
        self.runs: list[tuple[str, int]] = []
        for stage, logics in (("identity", self.pipeline.identity), ("customer", self.pipeline.customers)):
            for shard, logic in enumerate(logics):
                logic.on_batch = self._counted(stage, shard, logic.on_batch)  # type: ignore[method-assign]

    def _counted(self, stage: str, shard: int, on_batch: Any) -> Any:
        def counted(values: list[list[Any]]) -> Any:
            self.runs.append((stage, shard))
            return on_batch(values)

        return counted

    def feed(self, events: list[tuple[int, dict[str, Any]]], read_to_end: bool = True) -> list[Output]:
        """One pass: ``(partition, event)`` pairs, each partition read to its end (unless not ``read_to_end``)."""
        self.runs = []
        batch: list[Any] = []
        for partition, event in events:
            offset = self.offsets[partition]
            self.offsets[partition] += 1
            batch.append(RawEvent(offset, {"offset": offset}, orjson.dumps(event), partition=partition))
        if read_to_end:
            batch += [EndOfInput(self.offsets[p], p) for p in sorted({p for p, _ in events})]
        return self.pipeline.feed(batch)


def warmed_up() -> LivePipeline:
    """A live pipeline past its first passes: every shard of both stages has run and heard every partition."""
    live = LivePipeline()
    live.feed([(n % PARTITIONS, track("Page", f"w{n}", 0)) for n in range(40)])
    live.feed([(n % PARTITIONS, track("Page", f"w{n}", 1)) for n in range(40)])
    return live


def test_once_the_partitions_have_read_all_there_is_a_pass_runs_only_the_shards_its_events_reach():
    live = warmed_up()
    live.feed([(0, added("u1", 2))])
    assert sorted(live.runs) == [("customer", shard_of("u1", SHARDS)), ("identity", shard_of("u1", SHARDS))]
    assert "u1" in live.pipeline.customers[shard_of("u1", SHARDS)].engine.customers, "its event was applied"


def test_while_a_partition_is_busy_every_shard_hears_every_pass():
    """A replay's partitions always have more to read: the ordered release needs every tick."""
    live = warmed_up()
    live.feed([(0, added("u1", 2))], read_to_end=False)
    assert len(live.runs) == 2 * SHARDS
    live.feed([(1, added("u2", 3))])
    assert len(live.runs) == 2 * SHARDS, "the pass after: every shard learns the partition went idle"


def test_a_quiet_shards_timer_fires_in_the_pass_whose_event_time_passes_it():
    live = warmed_up()
    live.feed([(0, added("u1", 2))])  # a cart: the reminder is due 30 minutes later
    quiet = shard_of("u1", SHARDS)
    others = [f"v{n}" for n in range(40) if shard_of(f"v{n}", SHARDS) != quiet]
    before = live.feed([(1, track("Page", others[0], 20))])
    assert not [o for o in before if o.stream == "triggers.push"], "not due yet"
    assert ("customer", quiet) not in live.runs, "nothing to do: not run"
    due = live.feed([(1, track("Page", others[1], 40))])  # the event time passes 32 min plus the lateness
    assert ("customer", quiet) in live.runs
    reminders = [orjson.loads(o.body) for o in due if o.stream == "triggers.push"]
    assert [r["subject"] for r in reminders] == ["u1"], "fired in the pass that moved the clock past it"


def test_an_event_of_a_shard_that_missed_passes_is_late_or_not_as_if_it_had_heard_them():
    """A shard that heard nothing for a while first catches up with the progress it missed, then
    applies its events: its clock says what is late, as if it had heard every pass."""
    live = warmed_up()
    quiet = shard_of("u1", SHARDS)
    others = [f"v{n}" for n in range(40) if shard_of(f"v{n}", SHARDS) != quiet]
    live.feed([(0, track("Page", "u1", 2))])
    live.feed([(1, track("Page", others[0], 60))])  # the clock reaches 55 minutes
    live.feed([(0, track("Page", "u1", 30))])  # older than the clock: late
    engine = live.pipeline.customers[quiet].engine
    assert engine.stats.get("late") == 1


class _LivePartition(StatefulSourcePartition[Any, int]):
    """A topic partition that keeps up: each batch is what there was to read, then its end."""

    def __init__(self, partition: int, batches: list[list[bytes]]) -> None:
        self.partition, self.batches, self.offset = partition, batches, 0

    def next_batch(self) -> list[Any]:
        if not self.batches:
            raise StopIteration
        batch: list[Any] = []
        for payload in self.batches.pop(0):
            batch.append(RawEvent(self.offset, {"offset": self.offset}, payload, partition=self.partition))
            self.offset += 1
        return [*batch, EndOfInput(self.offset, self.partition)]

    def snapshot(self) -> int:
        return self.offset


class _LiveSource(FixedPartitionedSource[Any, int]):
    def __init__(self, batches: list[list[list[bytes]]]) -> None:
        self.batches = batches  # per partition, its batches

    def list_parts(self) -> list[str]:
        return [str(p) for p in range(len(self.batches))]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _LivePartition:
        return _LivePartition(int(for_part), self.batches[int(for_part)])


def test_in_the_dataflow_a_live_pass_runs_only_the_shards_its_events_reach(tmp_path, monkeypatch):
    passes = 30
    warm_up = [orjson.dumps(track("Page", f"w{n}", 0)) for n in range(40)]
    one_each = [[orjson.dumps(track("Page", "u1", 1 + n / 60))] for n in range(passes)]
    source = _LiveSource([[warm_up, *one_each], [[orjson.dumps(track("Page", "x1", 0))]]])
    runs: list[str] = []
    on_batch = ShardLogic.on_batch

    def counted(self: ShardLogic, values: list[list[Any]]) -> Any:
        runs.append(self.engine.role)
        return on_batch(self, values)

    monkeypatch.setattr(ShardLogic, "on_batch", counted)
    captured: list[tuple[str, Output]] = []
    settings = Settings(out=tmp_path / "unused", shards=SHARDS)
    run_main(build_flow(settings, source=source, sink=TestingSink(captured), source_partitions=PARTITIONS))
    assert len(runs) < passes * 2 * SHARDS / 3, "a pass of one event runs about one shard per stage, not all"
    stats = [orjson.loads(o.body) for _, o in captured if o.stream == "stats"]
    applied = sum(s.get("unknown_events", {}).get("Page", 0) for s in stats if "customers" in s)
    assert applied == 40 + 1 + passes, "every event applied"
