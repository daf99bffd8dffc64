"""The personalization operator: raw events in, decision and dead-letter outputs out.

``parse -> identity stage -> customer stage`` (see :mod:`operators.engine`), wired as
:mod:`operators.pipeline` wires them: each shard of a stage is an engine inside Bytewax's
``stateful_batch`` (one logic per shard, one list of items per shard per batch, snapshots
that re-encode only changed customers).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import cache
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from operators.engine import EngineConfig, Role, shard_engine
from operators.pipeline import Router, ShardLogic, TickFanout
from operators.rules import CompiledRules
from schemas.items import ChunkEnd, EndOfInput, Output, RawEvent, ReadAhead


def _builder(
    rules: CompiledRules, config: EngineConfig, role: Role, shards: int, fanout: TickFanout
) -> Callable[[Any], ShardLogic]:
    def build(resume: Any) -> ShardLogic:
        engine = shard_engine(rules, config, role, shards)
        if resume is not None:
            engine.restore(resume)
        return ShardLogic(engine, fanout)

    return build


@cache
def shard_keys(shards: int) -> list[str]:
    """The Bytewax key of each shard number, the same in both stages.

    Bytewax places a key on the same worker in every step, so identity shard ``n`` and customer
    shard ``n`` share a worker, and an event whose customer is its identity key goes on to the
    customer stage without crossing processes. Each key is chosen so that Bytewax puts shard ``n``
    on worker ``n % W`` when the worker count ``W`` divides :data:`SPREAD` (and the shards are
    ``SPREAD`` or fewer), so that every worker gets its share of the shards.
    """
    return [_spread_key(n, min(SPREAD, 1 << (shards - 1).bit_length())) for n in range(shards)]


SPREAD = 64


def _spread_key(shard: int, spread: int) -> str:
    """The first of ``shard0012``, ``shard0012-1``, ... that Bytewax routes like ``shard`` modulo ``spread``."""
    for attempt in itertools.count():
        key = f"shard{shard:04d}" + (f"-{attempt}" if attempt else "")
        if _route_hash(key) % spread == shard % spread:
            return key
    raise AssertionError("unreachable")


_MASK = (1 << 64) - 1


def _route_hash(key: str) -> int:
    """The hash Bytewax routes a key by (Rust's ``DefaultHasher``: SipHash-1-3 with zero keys, over
    the key's UTF-8 bytes and a 0xff end marker), to pick shard keys; a different hash would only
    spread shards less evenly."""
    data = key.encode() + b"\xff"
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573
    tail = len(data) % 8
    words = [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data) - tail, 8)]
    words.append((len(data) & 0xFF) << 56 | int.from_bytes(data[len(data) - tail :], "little"))

    def sip_round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
        v0 = (v0 + v1) & _MASK
        v1 = _rotate(v1, 13) ^ v0
        v0 = _rotate(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotate(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotate(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotate(v1, 17) ^ v2
        v2 = _rotate(v2, 32)
        return v0, v1, v2, v3

    for word in words:
        v3 ^= word
        v0, v1, v2, v3 = sip_round(v0, v1, v2, v3)
        v0 ^= word
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def _rotate(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


@operator
def personalize(
    step_id: str,
    up: Stream[RawEvent | EndOfInput | ChunkEnd],
    rules: CompiledRules,
    config: EngineConfig,
    shards: int,
    max_event_bytes: int,
    chunked: bool = False,
    read_ahead: ReadAhead | None = None,
) -> KeyedStream[Output]:
    """Raw events in; outputs (triggers, audience changes, dead letters, stats) out, keyed by stream name.

    Dead letters travel through both stages too (they pass straight through), so the flow
    needs no branch or merge steps. ``chunked``: the source partitions are the parts of one
    chunked stream (see :mod:`operators.ordering`), whose parts read no further ahead of the
    identity shards of their process than ``read_ahead`` allows.
    """
    keys = shard_keys(shards)
    router = Router(shards, config.max_skew_ms, max_event_bytes, chunked, read_ahead, config.lateness_ms)

    def parse(batch: list[RawEvent | EndOfInput | ChunkEnd]) -> list[tuple[str, list[Any]]]:
        return [(keys[shard], items) for shard, items in router.parse(batch).items()]

    def forward(batch: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
        routed = router.forward(items for _, items in batch)
        return [(keys[shard], items) for shard, items in routed.items()]

    def by_stream(batch: list[tuple[str, list[Any]]]) -> list[tuple[str, Output]]:
        return [(value.stream, value) for _, items in batch for value in items]

    parsed = op.flat_map_batch("parse", up, parse)
    identity = op.stateful_batch("identity", parsed, _builder(rules, config, "identity", shards, router.to_identity))
    forwarded = op.flat_map_batch("forward", identity, forward)
    customers = op.stateful_batch(
        "customers", forwarded, _builder(rules, config, "customer", shards, router.to_customers)
    )
    return op.flat_map_batch("by_stream", customers, by_stream)
