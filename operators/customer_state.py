"""The personalization operator: raw events in, decision and dead-letter outputs out.

``parse -> identity stage -> customer stage`` (see :mod:`operators.engine`), wired as
:mod:`operators.pipeline` wires them: each shard of a stage is an engine inside Bytewax's
``stateful_batch`` (one logic per shard, one list of items per shard per batch, snapshots
that re-encode only changed customers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from operators.engine import EngineConfig, Role, shard_engine
from operators.pipeline import Router, ShardLogic
from operators.rules import CompiledRules
from schemas.items import ChunkEnd, EndOfInput, Output, RawEvent


def _builder(rules: CompiledRules, config: EngineConfig, role: Role, shards: int) -> Callable[[Any], ShardLogic]:
    def build(resume: Any) -> ShardLogic:
        engine = shard_engine(rules, config, role, shards)
        if resume is not None:
            engine.restore(resume)
        return ShardLogic(engine)

    return build


def shard_keys(shards: int) -> list[str]:
    """The Bytewax key of each shard number, the same in both stages: Bytewax places a key on the
    same worker in every step, so identity shard ``n`` and customer shard ``n`` share a worker, and
    an event whose customer is its identity key goes on to the customer stage without crossing
    processes."""
    return [f"shard{n:04d}" for n in range(shards)]


@operator
def personalize(
    step_id: str,
    up: Stream[RawEvent | EndOfInput | ChunkEnd],
    rules: CompiledRules,
    config: EngineConfig,
    shards: int,
    max_event_bytes: int,
    chunked: bool = False,
) -> KeyedStream[Output]:
    """Raw events in; outputs (triggers, audience changes, dead letters, stats) out, keyed by stream name.

    Dead letters travel through both stages too (they pass straight through), so the flow
    needs no branch or merge steps. ``chunked``: the source partitions are the parts of one
    chunked stream (see :mod:`operators.ordering`).
    """
    keys = shard_keys(shards)
    router = Router(shards, config.max_skew_ms, max_event_bytes, chunked)

    def parse(batch: list[RawEvent | EndOfInput | ChunkEnd]) -> list[tuple[str, list[Any]]]:
        return [(keys[shard], items) for shard, items in router.parse(batch).items()]

    def forward(batch: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
        routed = router.forward(items for _, items in batch)
        return [(keys[shard], items) for shard, items in routed.items()]

    def by_stream(batch: list[tuple[str, list[Any]]]) -> list[tuple[str, Output]]:
        return [(value.stream, value) for _, items in batch for value in items]

    parsed = op.flat_map_batch("parse", up, parse)
    identity = op.stateful_batch("identity", parsed, _builder(rules, config, "identity", shards))
    forwarded = op.flat_map_batch("forward", identity, forward)
    customers = op.stateful_batch("customers", forwarded, _builder(rules, config, "customer", shards))
    return op.flat_map_batch("by_stream", customers, by_stream)
