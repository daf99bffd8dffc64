"""The one wiring of the engine: parse -> identity shards -> customer shards.

:class:`Router` parses a source batch and splits it by identity shard, then splits what the
identity shards emit by customer shard; :class:`ShardLogic` runs one shard's engine on a batch.
The Bytewax operator (:mod:`operators.customer_state`) and :class:`Pipeline` (the same stages
called in-process, for tests, evaluation and benchmarks) both use them, so every run follows the
same rule: one tick per source batch, one item per shard per batch; :class:`TickFanout` decides
which shards hear a batch's ticks.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any

import msgspec
import orjson
from bytewax.operators import StatefulBatchLogic

from operators.crossing import Crossing
from operators.engine import ERASURE, CustomerStage, EngineConfig, Forward, IdentityStage
from operators.ordering import NO_MARK, CatchUp, ChunkMark, Tick, shard_of
from operators.parse import InputMarks, Rejected, offset_of, order_key, parse_batch
from operators.rules import CompiledRules
from operators.shard_metrics import ShardMetrics
from schemas.envelope import Envelope
from schemas.items import DEFAULT_MAX_EVENT_BYTES, ChunkEnd, EndOfInput, Output, RawEvent, ReadAhead
from schemas.metrics import INVALID_EVENTS
from schemas.streams import DEAD_LETTERS, STATS
from state.affinity import DAY_MS


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
        lateness_ms: int = EngineConfig.lateness_ms,
    ) -> None:
        self.shards = shards
        self.max_event_bytes = max_event_bytes
        self.chunked = chunked  # the source partitions are the parts of a chunked stream
        self.marks = ChunkInputMarks(max_skew_ms) if chunked else InputMarks(max_skew_ms)
        self.read_ahead = read_ahead
        self.to_identity = TickFanout(shards, lateness_ms, per_shard=True)
        self.to_customers = TickFanout(shards, lateness_ms)

    def parse(self, batch: Iterable[RawEvent | EndOfInput | ChunkEnd]) -> dict[int, list[Any]]:
        """Each record parsed and sent to its identity shard; after the batch, the latest progress of
        every partition, as one tuple of ticks to each identity shard that hears it (see
        :class:`TickFanout`), after the marks of the chunks that ended in it (a chunked stream:
        to every shard)."""
        shards, marks, max_bytes = self.shards, self.marks, self.max_event_bytes
        routed: list[list[Any]] = [Crossing() for _ in range(shards)]
        reached_seq: dict[int, int] = {}  # partition -> merge key reached
        idle: set[int] = set()  # partitions that ended (or have nothing to read now)
        chunk_marks: list[ChunkMark] = []
        stamp = marks.stamp
        batch = batch if type(batch) is list else list(batch)
        for raw, result in zip(batch, parse_batch(batch, max_bytes), strict=True):
            partition = raw.partition
            if result is None:  # a marker
                if isinstance(raw, ChunkEnd):
                    chunk_marks.append(ChunkMark(marks.key(partition, raw.seq), marks.reached.pop(partition, None)))
                    reached_seq[partition] = marks.key(partition, raw.skip_to)
                    idle.discard(partition)
                else:
                    reached_seq[partition] = marks.key(partition, raw.seq)
                    idle.add(partition)
                continue
            if type(result) is Rejected:
                INVALID_EVENTS.labels(reason=result.reason).inc()
                key = reached_seq[partition] = marks.key(partition, raw.seq)
                routed[raw.seq % shards].append(Output(DEAD_LETTERS, result.key, 0, key, result.body))
            else:
                stamp(result, partition)
                reached_seq[partition] = result.seq
                home = shard_of(result.anonymous_id or result.user_id, shards)  # type: ignore[arg-type]
                routed[home].append(result)
                if result.name == ERASURE and result.user_id is not None:
                    _copy_to_others(result, home, routed)
            if idle:
                idle.discard(partition)
        if chunk_marks:
            for items in routed:
                items.extend(chunk_marks)
        chunked = self.chunked
        ticks = [Tick(marks.reached.get(p), seq, p, p in idle, 0, chunked) for p, seq in reached_seq.items()]
        self.to_identity.send(routed, ticks, everyone=bool(chunk_marks))
        return _by_shard(routed)

    def forward(self, emitted: Iterable[list[Any]]) -> dict[int, list[Any]]:
        """What identity shards emitted, by customer shard: events to their customer's shard, the
        identity stage's outputs by their key (one customer's keep their order), and the identity
        shards' latest ticks, gathered into one tuple, to each customer shard that hears them (see
        :class:`TickFanout`)."""
        shards = self.shards
        routed: list[list[Any]] = [Crossing() for _ in range(shards)]
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
        self.to_customers.send(routed, ticks.values())
        if ticks and self.read_ahead is not None:
            self._taken(tuple(ticks.values()), self.read_ahead)
        return _by_shard(routed)

    @staticmethod
    def _taken(ticks: tuple[Tick, ...], read_ahead: ReadAhead) -> None:
        """Note the line up to which identity shards have taken every part of a chunked stream (whose
        merge keys are its line numbers: see :class:`ChunkInputMarks`)."""
        taken = offset_of(max(tick.seq for tick in ticks))
        if read_ahead.taken is None or taken > read_ahead.taken:
            read_ahead.taken = taken


class TickFanout:
    """Which shards of a stage hear its upstreams' ticks after a pass, and what they hear.

    While an upstream is busy (it may still send items with a merge key that others have passed: a
    replay's partitions, a topic partition with more to read) and in the pass after, every shard
    hears every pass, as the ordered release needs. Once every upstream is idle (a live topic read
    to its end), a shard hears a pass that moves the progress only when it gets items in it, or
    when the event time reached passes the clock it must act by (its first timer, its daily sweep:
    see :meth:`ShardLogic.on_batch`); one that has not told (not run yet, or in another process)
    hears every such pass. So a pass costs what its events cost, not what the number of shards does.

    Whoever hears gets the latest tick of every upstream (each with its shard number when
    ``per_shard``), after a :class:`CatchUp` to the progress of the pass before if it missed a
    move: its clock stands where hearing every pass would have put it when its items are applied.
    Each worker sends the ticks of its own upstreams only, along with the items they cover.
    """

    def __init__(self, shards: int, lateness_ms: int, per_shard: bool = False) -> None:
        self.shards = shards
        self.lateness_ms = lateness_ms
        self.per_shard = per_shard
        self.act_by: dict[int, int] = {}  # shard -> the clock it must hear by, as it told (in this process)
        self._workers: dict[int, WorkerTicks] = {}  # by worker thread: a thread-local lasts only once the
        # thread keeps its Python thread state, which a thread that runs no shard yet does not (keep_thread_state)

    def send(self, routed: list[list[Any]], ticks: Iterable[Tick], everyone: bool = False) -> None:
        """Note a pass's ticks and add the latest to what each shard that hears gets in ``routed``."""
        worker = self._worker()
        latest, before = worker.latest, worker.moves
        previous = tuple(latest.values())
        moved = False
        for tick in ticks:
            latest[tick.origin], moved = tick, True
        if not latest:
            return
        if moved:
            worker.moves += 1
            was_busy, worker.busy = worker.busy, any(not tick.idle for tick in latest.values())
            everyone = everyone or was_busy or worker.busy
        heard = worker.heard
        for shard in range(self.shards) if everyone else self._listeners(worker, routed, moved):
            items = routed[shard]
            if not moved:  # nothing new: what it missed, if anything, before its items
                if heard[shard] < worker.moves:
                    items.insert(0, CatchUp(self._ticks(latest.values(), shard)))
            else:
                if heard[shard] < before and previous:
                    items.insert(0, CatchUp(self._ticks(previous, shard)))
                items.append(self._ticks(latest.values(), shard))
            heard[shard] = worker.moves

    def _worker(self) -> WorkerTicks:
        worker = self._workers.get(threading.get_ident())
        if worker is None:
            worker = self._workers[threading.get_ident()] = WorkerTicks(self.shards)
        return worker

    def _listeners(self, worker: WorkerTicks, routed: list[list[Any]], moved: bool) -> list[int]:
        """The shards that hear a pass of idle upstreams: those with items (that missed a move, if
        this pass made none) and, if it moved the progress, those it brings to act."""
        if not moved:
            return [shard for shard, items in enumerate(routed) if items and worker.heard[shard] < worker.moves]
        marks = [tick.ts_ms for tick in worker.latest.values() if tick.ts_ms is not None]
        clock = max(marks) - self.lateness_ms if marks else NO_MARK  # where the stage's clocks go
        act_by = self.act_by
        return [shard for shard, items in enumerate(routed) if items or act_by.get(shard, NO_MARK) <= clock]

    def _ticks(self, ticks: Iterable[Tick], shard: int) -> tuple[Tick, ...]:
        if self.per_shard:
            return tuple(Tick(t.ts_ms, t.seq, t.origin, t.idle, shard, t.chunked) for t in ticks)
        return tuple(ticks)


class WorkerTicks:
    """What one worker has sent a stage's shards: its upstreams' latest ticks, and who heard when."""

    def __init__(self, shards: int) -> None:
        self.latest: dict[int, Tick] = {}  # the latest tick of each of its upstreams
        self.moves = 0  # how many passes moved ``latest``
        self.heard = [0] * shards  # ``moves`` when each shard last heard
        self.busy = True  # an upstream was busy in the last pass that moved ``latest``


def _copy_to_others(erasure: Envelope, home: int, routed: list[list[Any]]) -> None:
    """A copy of an erasure for every identity shard but its own, in the same order as other events:
    each forgets the anonymous ids it links to the customer (see :meth:`IdentityStage._erasure_copy`)."""
    for shard, items in enumerate(routed):
        if shard != home:
            items.append(msgspec.structs.replace(erasure))


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


SEAL_SECONDS = 1.0  # how often a shard pickles its models' journal between snapshots
PRESAVE_LEADS = (0.07, 0.02)  # how long before its next snapshot is due a shard pre-saves, as a share of the
# time between snapshots: the first shard of a process at the first lead, the others spread out to the last
PRESAVE_SLOTS = 32  # how many pre-save times the leads are split into (both stages' 16 shards)
_presave_slots = itertools.count()  # the next shard's slot, in this process


class ShardLogic(StatefulBatchLogic[Any, Any, Any]):
    """One shard's engine fed a batch at a time: emits one list per batch (outputs, forwards, its
    last tick), publishes its metrics and, for the live store, changed profiles. Made on the worker
    thread that runs the shard, it keeps that thread's Python thread state (see :func:`keep_thread_state`)."""

    def __init__(self, engine: CustomerStage, fanout: TickFanout | None = None) -> None:
        keep_thread_state()
        self.engine = engine
        self.fanout = fanout  # that of the router feeding this shard, in this process
        self.shard: int | None = None  # this shard's number, once known
        self.profiles_at = self.sealed_at = self.snapshot_at = time.monotonic()
        self.metrics = ShardMetrics(engine)
        first, last = PRESAVE_LEADS
        self.presave_lead = first - (first - last) * (next(_presave_slots) % PRESAVE_SLOTS) / (PRESAVE_SLOTS - 1)
        self.presave_at: float | None = None  # when to pre-save before the next snapshot (see _presave)

    def on_batch(self, values: list[list[Any]]) -> tuple[list[Any], bool]:
        """Apply a batch; then tell the fan-out the clock by which this shard must hear the progress
        again even with nothing to apply: its first timer, or its next daily sweep."""
        out: list[Any] = []
        engine = self.engine
        engine.process_batch(chain.from_iterable(values), out)
        self._send_profiles(out)
        self.metrics.publish()
        self._seal_journal()
        self._presave()
        if self.fanout is not None and (shard := self._shard_number()) is not None:
            first, day = engine.timers.first_due(), engine.swept_day
            act_by = NO_MARK if day is None else (day + 1) * DAY_MS
            self.fanout.act_by[shard] = act_by if first is None or first > act_by else first
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def _seal_journal(self) -> None:
        """Pickle the models' journal every :data:`SEAL_SECONDS`: the snapshot, which pauses every
        shard at once, is left only the rest."""
        models, now = self.engine.models, time.monotonic()
        if models is not None and now - self.sealed_at >= SEAL_SECONDS:
            self.sealed_at = now
            models.seal_journal()

    def _presave(self) -> None:
        """Hand the changes so far to the shard's store a little before its next snapshot is expected
        (as long after the last one as that was after the one before), each shard of the process at
        its own time (see :meth:`CustomerStage.presave`): the snapshot is left what changes after."""
        if self.presave_at is not None and time.monotonic() >= self.presave_at:
            self.presave_at = None
            self.engine.presave()

    def _shard_number(self) -> int | None:
        """An identity shard learns its number from its ticks; a customer shard from its customers."""
        if self.shard is None:
            engine = self.engine
            if isinstance(engine, IdentityStage):
                self.shard = engine.index if engine.ordered.ticks else None
            elif engine.customers:
                self.shard = shard_of(next(iter(engine.customers)), engine.ordered.upstreams)
        return self.shard

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
        now = time.monotonic()
        interval, self.snapshot_at = now - self.snapshot_at, now
        self.presave_at = now + interval * (1 - self.presave_lead)
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
        self.router = router = Router(
            shards, config.max_skew_ms, max_event_bytes, chunked, lateness_ms=config.lateness_ms
        )
        self.partitions = config.source_partitions
        self.identity = [ShardLogic(IdentityStage(rules, config, shards), router.to_identity) for _ in range(shards)]
        self.customers = [ShardLogic(CustomerStage(rules, config, shards), router.to_customers) for _ in range(shards)]
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
