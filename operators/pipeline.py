"""The one wiring of the engine: parse -> identity shards -> customer shards.

:class:`Router` parses a source batch and splits it by identity shard, then splits what the
identity shards emit by customer shard; :class:`ShardLogic` runs one shard's engine on a batch.
The Bytewax operator (:mod:`operators.customer_state`) and :class:`Pipeline` (the same stages
called in-process, for tests, evaluation and benchmarks) both use them, so every run follows the
same rule: one tick per source batch, one item per shard per batch.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any

import orjson
from bytewax.operators import StatefulBatchLogic

from operators.engine import CustomerStage, EngineConfig, Forward, IdentityStage
from operators.ordering import NO_MARK, ChunkMark, Tick, shard_of
from operators.parse import InputMarks, Rejected, offset_of, order_key, parse
from operators.rules import CompiledRules
from operators.shard_metrics import ShardMetrics
from schemas.envelope import Envelope
from schemas.items import DEFAULT_MAX_EVENT_BYTES, ChunkEnd, EndOfInput, Output, RawEvent, ReadAhead
from schemas.metrics import INVALID_EVENTS
from schemas.streams import DEAD_LETTERS, STATS


class Router:
    """Parses source batches and routes items between the stages, by shard number.

    The marks (the event time each source partition has reached) live here: a partition is
    read by one worker only, and each worker has its own router. Of a chunked stream, it tells the
    parts how far the identity shards it forwards from have taken them (``read_ahead``).
    """

    def __init__(
        self,
        shards: int,
        max_skew_ms: int,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        chunked: bool = False,
        read_ahead: ReadAhead | None = None,
    ) -> None:
        self.shards = shards
        self.max_event_bytes = max_event_bytes
        self.chunked = chunked  # the source partitions are the parts of a chunked stream
        self.marks = ChunkInputMarks(max_skew_ms) if chunked else InputMarks(max_skew_ms)
        self.read_ahead = read_ahead

    def parse(self, batch: Iterable[RawEvent | EndOfInput | ChunkEnd]) -> dict[int, list[Any]]:
        """Each record parsed and sent to its identity shard; after the batch, the progress of each
        partition in it, as one tuple of ticks to every identity shard (see :mod:`operators.engine`),
        after the marks of the chunks that ended in it (a chunked stream)."""
        shards, marks, max_bytes = self.shards, self.marks, self.max_event_bytes
        routed: list[list[Any]] = [[] for _ in range(shards)]
        reached_seq: dict[int, int] = {}  # partition -> merge key reached
        idle: set[int] = set()  # partitions that ended (or have nothing to read now)
        chunk_marks: list[ChunkMark] = []
        stamp = marks.stamp
        for raw in batch:
            partition = raw.partition
            if type(raw) is not RawEvent:
                if isinstance(raw, ChunkEnd):
                    chunk_marks.append(ChunkMark(marks.key(partition, raw.seq), marks.reached.pop(partition, None)))
                    reached_seq[partition] = marks.key(partition, raw.skip_to)
                    idle.discard(partition)
                else:
                    reached_seq[partition] = marks.key(partition, raw.seq)
                    idle.add(partition)
                continue
            result = parse(raw, max_bytes)
            if type(result) is Rejected:
                INVALID_EVENTS.labels(reason=result.reason).inc()
                key = reached_seq[partition] = marks.key(partition, raw.seq)
                routed[raw.seq % shards].append(Output(DEAD_LETTERS, result.key, 0, key, result.body))
            else:
                stamp(result, partition)
                reached_seq[partition] = result.seq
                routed[shard_of(result.anonymous_id or result.user_id, shards)].append(result)  # type: ignore[arg-type]
            if idle:
                idle.discard(partition)
        if reached_seq:
            chunked = self.chunked
            reached = [(marks.reached.get(p), seq, p, p in idle) for p, seq in reached_seq.items()]
            for shard, items in enumerate(routed):
                ticks = tuple(Tick(ts, seq, p, ended, shard, chunked) for ts, seq, p, ended in reached)
                items.extend((*chunk_marks, ticks))
        return _by_shard(routed)

    def forward(self, emitted: Iterable[list[Any]]) -> dict[int, list[Any]]:
        """What identity shards emitted, by customer shard: events to their customer's shard, the
        identity stage's outputs by their key (one customer's keep their order), and the identity
        shards' latest ticks, gathered into one tuple, to every customer shard."""
        shards = self.shards
        routed: list[list[Any]] = [[] for _ in range(shards)]
        ticks: dict[int, Tick] = {}
        for items in emitted:
            for value in items:
                kind = type(value)
                if kind is Envelope:  # identified by its userId
                    key = value.user_id
                elif kind is Forward:
                    key = value.customer_id
                elif kind is Tick:
                    ticks[value.origin] = value
                    continue
                else:  # an output
                    key = value.key
                routed[shard_of(key, shards)].append(value)
        if ticks:
            gathered = tuple(ticks.values())
            for items in routed:
                items.append(gathered)
            if self.read_ahead is not None:
                self._taken(gathered, self.read_ahead)
        return _by_shard(routed)

    @staticmethod
    def _taken(ticks: tuple[Tick, ...], read_ahead: ReadAhead) -> None:
        """Note the line up to which identity shards have taken every part of a chunked stream (whose
        merge keys are its line numbers: see :class:`ChunkInputMarks`)."""
        taken = offset_of(max(tick.seq for tick in ticks))
        if read_ahead.taken is None or taken > read_ahead.taken:
            read_ahead.taken = taken


def _by_shard(routed: list[list[Any]]) -> dict[int, list[Any]]:
    """The shards that get something, with what they get."""
    return {shard: items for shard, items in enumerate(routed) if items}


class ChunkInputMarks(InputMarks):
    """The marks of the parts of a chunked stream (see :mod:`operators.ordering`): each part's mark
    within the chunk it reads (``NO_MARK`` before anything moved it; the router drops it at the
    chunk's end), and merge keys in line order (the stream's lines are numbered across all parts)."""

    def stamp(self, env: Envelope, partition: int) -> None:
        reached = self.reached.get(partition)
        future = env.received_ms is not None and env.ts_ms - env.received_ms > self.max_skew_ms
        if not future and (reached is None or env.ts_ms > reached):
            reached = self.reached[partition] = env.ts_ms
        env.mark_ms = NO_MARK if reached is None else reached
        env.seq |= _LINE_ZERO  # order_key(0, 0, line), without a call per event

    def key(self, partition: int, offset: int) -> int:
        return order_key(0, 0, offset)


_LINE_ZERO = order_key(0, 0, 0)
"""The merge key of line 0 of a chunked stream: line ``n``'s is this with ``n`` in its offset bits."""


_THREAD = threading.local()


def keep_thread_state() -> None:
    """Keep this thread's Python thread state for as long as the thread lives.

    Bytewax's worker threads (of a run on several workers or processes) are native threads: each time
    one enters Python without a thread state of its own, Python makes one and tears it down when it
    leaves (a frame stack mapped and unmapped, the thread's id asked), several times a batch. One hold
    on it that is never released keeps the first.
    """
    if not getattr(_THREAD, "kept", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _THREAD.kept = True


class ShardLogic(StatefulBatchLogic[Any, Any, Any]):
    """One shard's engine fed a batch at a time: emits one list per batch (outputs, forwards, its
    last tick), publishes its metrics and, for the live store, changed profiles. Made on the worker
    thread that runs the shard, it keeps that thread's Python thread state (see :func:`keep_thread_state`)."""

    def __init__(self, engine: CustomerStage) -> None:
        keep_thread_state()
        self.engine = engine
        self.profiles_at = time.monotonic()
        self.metrics = ShardMetrics(engine)

    def on_batch(self, values: list[list[Any]]) -> tuple[list[Any], bool]:
        out: list[Any] = []
        self.engine.process_batch(chain.from_iterable(values), out)
        self._send_profiles(out)
        self.metrics.publish()
        return ([out] if out else []), StatefulBatchLogic.RETAIN

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
        return ([out] if out else []), StatefulBatchLogic.RETAIN

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
        out.append(Output(STATS, self.engine.role, 0, 0, orjson.dumps(stats, option=orjson.OPT_SORT_KEYS)))
        return [out], StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        return self.engine.snapshot()


class Pipeline:
    """Both stages, all shards, in this process: what the flow does, without the dataflow.

    ``feed`` takes one source batch (one tick per batch, as in the flow) and returns the outputs
    it caused; ``finish`` ends the input and returns the rest, with each shard's ``stats`` output.
    """

    def __init__(
        self,
        rules: CompiledRules,
        config: EngineConfig | None = None,
        shards: int = 1,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        chunked: bool = False,
    ) -> None:
        config = config or EngineConfig()
        self.router = Router(shards, config.max_skew_ms, max_event_bytes, chunked)
        self.partitions = config.source_partitions
        self.identity = [ShardLogic(IdentityStage(rules, config)) for _ in range(shards)]
        self.customers = [ShardLogic(CustomerStage(rules, config, shards)) for _ in range(shards)]
        self.ended = False

    def feed(self, batch: Iterable[RawEvent | EndOfInput | ChunkEnd]) -> list[Output]:
        routed = self.router.parse(batch)
        emitted = [self.identity[shard].on_batch([items])[0] for shard, items in sorted(routed.items())]
        return self._customers(chain.from_iterable(emitted))

    def finish(self) -> list[Output]:
        """End every source partition's input (see :class:`EndOfInput`), then end both stages."""
        outputs = [] if self.ended else self.feed([EndOfInput(0, p) for p in range(self.partitions)])
        self.ended = True
        emitted = [logic.on_eof()[0] for logic in self.identity]
        outputs += self._customers(chain.from_iterable(emitted))
        for logic in self.customers:
            for out in logic.on_eof()[0]:
                outputs += _outputs(out)
        return outputs

    def _customers(self, emitted: Iterable[list[Any]]) -> list[Output]:
        outputs: list[Output] = []
        for shard, items in sorted(self.router.forward(emitted).items()):
            for out in self.customers[shard].on_batch([items])[0]:
                outputs += _outputs(out)
        return outputs


def _outputs(items: list[Any]) -> list[Output]:
    return [item for item in items if isinstance(item, Output)]
