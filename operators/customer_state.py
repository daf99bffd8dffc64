"""The personalization operator: raw events in, decision and dead-letter outputs out.

``parse -> identity stage -> customer stage`` (see :mod:`operators.engine`); both stages are a
:class:`ShardEngine` inside Bytewax's ``stateful_batch`` (one logic per shard, batches of
items, snapshots that re-encode only changed customers).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.engine import EngineConfig, Forward, Role, ShardEngine, Tick
from operators.parse import InputMarks, Rejected, parse
from operators.rules import CompiledRules
from operators.shard_metrics import ShardMetrics
from schemas.items import EndOfInput, Output, RawEvent
from schemas.metrics import INVALID_EVENTS
from schemas.streams import DEAD_LETTERS, STATS

IDENTITY = "i"
CUSTOMER = "c"


def shard_of(customer_id: str, shards: int) -> int:
    """A stable shard number for an id (crc32, the same on every machine and run)."""
    return zlib.crc32(customer_id.encode()) % shards


class ShardLogic(StatefulBatchLogic[Any, Any, Any]):
    """Bytewax glue around one :class:`ShardEngine`."""

    def __init__(self, engine: ShardEngine) -> None:
        self.engine = engine
        self.profiles_at = time.monotonic()
        self.metrics = ShardMetrics(engine)

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        out: list[Any] = []
        self.engine.process_batch(values, out)
        self._send_profiles(out)
        self.metrics.publish()
        return _last_tick_only(out), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        """When held-back counters are published, or changed profiles sent (also when no event comes)."""
        due = self.metrics.due()
        if self.engine.changed:
            wait = self.profiles_at + self.engine.config.profile_ms / 1000 - time.monotonic()  # type: ignore[operator]
            profiles_due = datetime.now(UTC) + timedelta(seconds=max(0.0, wait))
            due = profiles_due if due is None else min(due, profiles_due)
        return due

    def on_notify(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        self._send_profiles(out)
        self.metrics.publish()
        return out, StatefulBatchLogic.RETAIN

    def _send_profiles(self, out: list[Any]) -> None:
        """The profiles of customers changed since the last were sent, at most every ``profile_ms``."""
        engine = self.engine
        if engine.changed and time.monotonic() - self.profiles_at >= engine.config.profile_ms / 1000:  # type: ignore[operator]
            self.profiles_at = time.monotonic()
            engine.profiles(out)

    def on_eof(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        stats = self.engine.finish(out)
        self.engine.profiles(out)
        self.metrics.publish(final=True)
        out.append(Output(STATS, self.engine.role, 0, 0, _encode_stats(stats)))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        return self.engine.snapshot()


def _last_tick_only(out: list[Any]) -> list[Any]:
    """Drop all but the last tick of a batch: it says all the earlier ones say."""
    ticks = [i for i, item in enumerate(out) if isinstance(item, Tick)]
    if len(ticks) < 2:
        return out
    last = ticks[-1]
    return [item for i, item in enumerate(out) if i == last or not isinstance(item, Tick)]


def _encode_stats(stats: dict[str, Any]) -> bytes:
    return orjson.dumps(stats, option=orjson.OPT_SORT_KEYS)


def _builder(rules: CompiledRules, config: EngineConfig, role: Role, shards: int) -> Callable[[Any], ShardLogic]:
    def build(resume: Any) -> ShardLogic:
        engine = ShardEngine(rules, config, role, upstream_shards=shards)
        if resume is not None:
            engine.restore(resume)
        return ShardLogic(engine)

    return build


@operator
def personalize(
    step_id: str,
    up: Stream[RawEvent | EndOfInput],
    rules: CompiledRules,
    config: EngineConfig,
    shards: int,
    max_event_bytes: int,
) -> KeyedStream[Output]:
    """Raw events in; outputs (triggers, audience changes, dead letters, stats) out, keyed by stream name.

    Dead letters travel through both stages too (they pass straight through), so the flow
    needs no branch or merge steps.
    """

    identity_keys = [IDENTITY + f"{n:04d}" for n in range(shards)]
    customer_keys = [CUSTOMER + f"{n:04d}" for n in range(shards)]
    # event time each source partition has reached; a partition is read by one worker only
    marks = InputMarks(config.max_skew_ms)

    def parse_and_route(batch: list[RawEvent | EndOfInput]) -> list[Any]:
        """Parse each record and route it to its identity shard; after the batch, the progress of
        each partition in it, as one tuple of ticks to every identity shard (see
        :mod:`operators.engine` on order)."""
        out: list[Any] = []
        progress: dict[int, tuple[int, bool]] = {}  # partition -> (merge key reached, idle)
        for raw in batch:
            partition = raw.partition
            if isinstance(raw, EndOfInput):
                progress[partition] = (marks.key(partition, raw.seq), True)
                continue
            result = parse(raw, max_event_bytes)
            if isinstance(result, Rejected):
                INVALID_EVENTS.labels(reason=result.reason).inc()
                key = marks.key(partition, raw.seq)
                progress[partition] = (key, False)
                dead = Output(DEAD_LETTERS, result.key, 0, key, result.body)
                out.append((identity_keys[raw.seq % shards], dead))
            else:
                marks.stamp(result, partition)
                progress[partition] = (result.seq, False)
                out.append((identity_keys[shard_of(result.anonymous_id or result.customer_id, shards)], result))
        if progress:
            reached = [(marks.reached.get(p), seq, p, idle) for p, (seq, idle) in progress.items()]
            for n, key in enumerate(identity_keys):
                out.append((key, tuple(Tick(ts, seq, p, idle, n) for ts, seq, p, idle in reached)))
        return out

    def reroute(batch: list[tuple[str, Any]]) -> list[Any]:
        """Forwards, and the identity stage's outputs, to their customer's shard; the identity
        shards' latest ticks, gathered into one tuple, to every customer shard."""
        out: list[Any] = []
        ticks: dict[int, Tick] = {}
        for _, value in batch:
            if isinstance(value, Forward):
                out.append((customer_keys[shard_of(value.customer_id, shards)], value))
            elif isinstance(value, Tick):
                ticks[value.origin] = value
            else:  # an output of the identity stage: by its key, so one customer's keep their order
                out.append((customer_keys[shard_of(value.key, shards)], value))
        if ticks:
            gathered = tuple(ticks.values())
            out.extend((key, gathered) for key in customer_keys)
        return out

    parsed = op.flat_map_batch("parse", up, parse_and_route)
    identity = op.stateful_batch("identity", parsed, _builder(rules, config, "identity", shards))
    forwarded = op.flat_map_batch("forward", identity, reroute)
    customers = op.stateful_batch("customers", forwarded, _builder(rules, config, "customer", shards))
    return op.flat_map_batch("by_stream", customers, lambda batch: [(value.stream, value) for _, value in batch])
