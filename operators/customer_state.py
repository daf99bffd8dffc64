"""The personalization operator: raw events in, decision and dead-letter outputs out.

``parse -> identity stage -> customer stage`` (see :mod:`operators.engine`); both stages are a
:class:`ShardEngine` inside Bytewax's ``stateful_batch`` (one logic per shard, batches of
items, snapshots that re-encode only changed customers).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.engine import EngineConfig, Forward, Output, Role, ShardEngine, Tick
from operators.parse import EndOfInput, RawEvent, Rejected, parse
from operators.rules import CompiledRules
from schemas.envelope import Envelope

IDENTITY = "i"
CUSTOMER = "c"


def shard_of(customer_id: str, shards: int) -> int:
    """A stable shard number for an id (crc32, the same on every machine and run)."""
    return zlib.crc32(customer_id.encode()) % shards


class ShardLogic(StatefulBatchLogic[Any, Any, Any]):
    """Bytewax glue around one :class:`ShardEngine`."""

    def __init__(self, engine: ShardEngine) -> None:
        self.engine = engine

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        values.sort(key=_seq)
        out: list[Any] = []
        process = self.engine.process
        for value in values:
            process(value, out)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        stats = self.engine.finish(out)
        out.append(Output("stats", self.engine.role, 0, 0, _encode_stats(stats)))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        return self.engine.snapshot()


def _seq(item: Envelope | Forward | Tick | Output) -> int:
    return item.env.seq if isinstance(item, Forward) else item.seq


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
    # event time the input has reached (future-dated events aside); ticks carry it
    reached: dict[str, int] = {}

    def tick(seq: int, out: list[Any]) -> None:
        if "ts_ms" in reached:
            out.extend((key, Tick(reached["ts_ms"], seq, n)) for n, key in enumerate(identity_keys))

    def parse_and_route(batch: list[RawEvent | EndOfInput]) -> list[Any]:
        """Parse each record and route it to its identity shard; a tick every ``tick_every`` records
        and at the end of input (at fixed positions of the stream, so batching changes nothing)."""
        out: list[Any] = []
        for raw in batch:
            if isinstance(raw, EndOfInput):
                tick(raw.seq, out)
                continue
            result = parse(raw, max_event_bytes)
            if isinstance(result, Rejected):
                out.append(
                    (identity_keys[raw.seq % shards], Output("dead_letters", result.key, 0, raw.seq, result.body))
                )
            else:
                out.append((identity_keys[shard_of(result.anonymous_id or result.customer_id, shards)], result))
                future = result.received_ms is not None and result.ts_ms - result.received_ms > config.max_skew_ms
                if not future and result.ts_ms > reached.get("ts_ms", result.ts_ms - 1):
                    reached["ts_ms"] = result.ts_ms
            block = raw.seq // config.tick_every
            if block > reached.get("block", 0):
                reached["block"] = block
                tick(raw.seq, out)
        return out

    def reroute(batch: list[tuple[str, Any]]) -> list[Any]:
        out: list[Any] = []
        for _, value in batch:
            if isinstance(value, Forward):
                out.append((customer_keys[shard_of(value.customer_id, shards)], value))
            elif isinstance(value, Tick):
                out.extend((key, value) for key in customer_keys)
            else:
                out.append((customer_keys[value.seq % shards], value))
        return out

    parsed = op.flat_map_batch("parse", up, parse_and_route)
    identity = op.stateful_batch("identity", parsed, _builder(rules, config, "identity", shards))
    forwarded = op.flat_map_batch("forward", identity, reroute)
    customers = op.stateful_batch("customers", forwarded, _builder(rules, config, "customer", shards))
    return op.flat_map_batch("by_stream", customers, lambda batch: [(value.stream, value) for _, value in batch])
