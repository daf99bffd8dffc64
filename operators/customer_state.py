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
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from operators.engine import EngineConfig, Forward, Output, Role, ShardEngine, Tick
from operators.parse import RawEvent, Rejected, parse
from operators.rules import CompiledRules
from schemas.envelope import Envelope

IDENTITY = "i"
CUSTOMER = "c"


def shard_of(customer_id: str, shards: int) -> str:
    """A stable shard number for an id (crc32, the same on every machine and run)."""
    return f"{zlib.crc32(customer_id.encode()) % shards:04d}"


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


def _seq(item: Envelope | Forward | Tick) -> int:
    return item.env.seq if isinstance(item, Forward) else item.seq


def _encode_stats(stats: dict[str, Any]) -> bytes:
    import orjson

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
    up: Stream[RawEvent],
    rules: CompiledRules,
    config: EngineConfig,
    shards: int,
    max_event_bytes: int,
) -> Stream[Output]:
    """Turn raw events into outputs (triggers, audience changes, dead letters, stats)."""

    identity_keys = [IDENTITY + f"{n:04d}" for n in range(shards)]
    customer_keys = [CUSTOMER + f"{n:04d}" for n in range(shards)]
    reached: dict[str, int | None] = {"ticked": None}  # event time of the last tick sent

    def parse_and_route(batch: list[RawEvent]) -> list[Any]:
        out: list[Any] = []
        latest = None
        for raw in batch:
            result = parse(raw, max_event_bytes)
            if isinstance(result, Rejected):
                out.append(Output("dead_letters", "", 0, raw.seq, result.body))
                continue
            out.append((IDENTITY + shard_of(result.anonymous_id or result.customer_id, shards), result))
            future = result.received_ms is not None and result.ts_ms - result.received_ms > config.max_skew_ms
            if not future and (latest is None or result.ts_ms > latest):
                latest = result.ts_ms
        ticked = reached["ticked"]
        if latest is not None and (ticked is None or latest - ticked >= config.tick_ms):
            reached["ticked"] = latest
            seq = batch[-1].seq
            out.extend((key, Tick(latest, seq, n)) for n, key in enumerate(identity_keys))
        return out

    def reroute(batch: list[tuple[str, Any]]) -> list[Any]:
        out: list[Any] = []
        for _, value in batch:
            if isinstance(value, Forward):
                out.append((CUSTOMER + shard_of(value.customer_id, shards), value))
            elif isinstance(value, Tick):
                out.extend((key, value) for key in customer_keys)
            else:
                out.append(value)
        return out

    parsed = op.flat_map_batch("parse", up, parse_and_route)
    valid = op.branch("split_invalid", parsed, lambda item: isinstance(item, tuple))
    identity = op.stateful_batch("identity", valid.trues, _builder(rules, config, "identity", shards))
    identity_out = op.flat_map_batch("forward", identity, reroute)
    forwarded = op.branch("split_forwarded", identity_out, lambda item: isinstance(item, tuple))
    customers = op.stateful_batch("customers", forwarded.trues, _builder(rules, config, "customer", shards))
    decisions = op.flat_map_batch("unwrap", customers, lambda batch: [value for _, value in batch])
    return op.merge("outputs", valid.falses, forwarded.falses, decisions)
