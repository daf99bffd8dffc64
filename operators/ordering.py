"""Routing and ordered release: items held back until every upstream has passed them, then applied in key order.

Both engine stages apply what they receive in merge-key order (:func:`operators.parse.order_key`),
whatever the number of workers or how the input was batched. Each upstream (a source partition
for the identity stage, an identity shard for the customer stage) sends a :class:`Tick` after
each batch: it sends nothing more with a key up to the tick's ``seq``. Items up to the smallest
key that every busy upstream has passed can be applied.

A replay spread over processes reads one stream in interleaved chunks of lines, one source
partition per part (:class:`schemas.items.ChunkEnd`). Its merge keys are line numbers, and the
event time the stream has reached at a line (its mark) depends on every chunk before it: each
identity shard gets every chunk's :class:`ChunkMark` and gives each event, in key order, the mark
one reader of the whole stream would have given it (:class:`ChunkedMarks`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from schemas.items import fields_getter
from state._native import shard_of as shard_of  # zlib.crc32(key.encode()) % shards, without the bytes


@dataclass(slots=True)
class Tick:
    """An upstream's progress: it sends nothing more with a merge key up to ``seq``.

    ``origin`` is the source partition (to the identity stage) or the identity shard (to the
    customer stage) it comes from; ``ts_ms`` the event time it has reached (``None``: none
    yet); ``idle`` that it holds nothing back (end of input, or nothing to read now);
    ``shard`` the identity shard a source tick is addressed to.
    """

    ts_ms: int | None
    seq: int
    origin: int
    idle: bool = False
    shard: int = 0
    chunked: bool = False  # from a part of a chunked stream: its event time comes in ChunkMarks

    def __reduce__(self) -> tuple[type[Tick], tuple[Any, ...]]:
        return Tick, _TICK_FIELDS(self)


_TICK_FIELDS = fields_getter(Tick)


@dataclass(slots=True)
class CatchUp:
    """The upstreams' ticks a shard did not hear while it had nothing to do (see
    :class:`operators.pipeline.TickFanout`), as of the pass before the items that follow it: acted
    on before them, so that its clock is where hearing every pass would have put it."""

    ticks: tuple[Tick, ...]

    def __reduce__(self) -> tuple[type[CatchUp], tuple[Any, ...]]:
        return CatchUp, (self.ticks,)


NO_MARK = -(1 << 62)
"""The mark of an event of a chunked stream that nothing before it in its chunk has moved."""


@dataclass(slots=True)
class ChunkMark:
    """What one chunk of a chunked stream adds to the stream's mark: ``reached_ms``, the latest
    event time of its valid, not future-dated events (``None``: none); ``seq`` is the merge key of
    its last line. Sent to every identity shard, held back with the events, and taken in key order."""

    seq: int
    reached_ms: int | None


class ChunkedMarks:
    """The mark a chunked stream has reached, folded from its chunk marks in key order; it gives
    released events their marks (each came with the mark of its own chunk up to it, or ``NO_MARK``)."""

    def __init__(self) -> None:
        self.reached: int | None = None  # the mark of the chunks taken
        self.marks: list[ChunkMark] = []  # received, not taken yet, in key order

    def add(self, marks: list[ChunkMark]) -> None:
        self.marks += marks
        self.marks.sort(key=_seq)

    def reached_through(self, upto: int | None) -> int | None:
        """The stream's mark once the chunks up to ``upto`` (all with ``None``) are taken."""
        reached = self.reached
        for mark in self.marks:
            if upto is not None and mark.seq > upto:
                break
            reached = _later(reached, mark.reached_ms)
        return reached

    def stamp(self, released: list[Any], upto: int | None) -> None:
        """Give each released event (in key order) its mark; take the chunk marks up to ``upto``."""
        marks, taken, reached = self.marks, 0, self.reached
        for env in released:
            while taken < len(marks) and marks[taken].seq < env.seq:
                reached = _later(reached, marks[taken].reached_ms)
                taken += 1
            mark = env.mark_ms if reached is None or env.mark_ms > reached else reached
            env.mark_ms = env.ts_ms if mark == NO_MARK else mark
        while taken < len(marks) and (upto is None or marks[taken].seq <= upto):
            reached = _later(reached, marks[taken].reached_ms)
            taken += 1
        self.reached = reached
        del marks[:taken]


def _later(reached: int | None, ts_ms: int | None) -> int | None:
    return ts_ms if reached is None or (ts_ms is not None and ts_ms > reached) else reached


_seq = attrgetter("seq")


class OrderedRelease:
    """Held-back items of one shard and the latest tick of each of its ``upstreams``."""

    def __init__(self, upstreams: int, key: Callable[[Any], int]) -> None:
        self.upstreams = upstreams
        self.key = key
        self.ticks: dict[int, Tick] = {}  # the latest tick of each upstream
        self.pending: list[Any] = []
        self.sorted_pending = 0  # how many of ``pending`` are known to be in key order
        self.chunked: ChunkedMarks | None = None  # when the upstreams are the parts of a chunked stream

    def progress(self) -> tuple[int | None, int | None, bool] | None:
        """``(upto, reached, idle)`` once every upstream has reported: the merge key every busy
        upstream has passed (``None``: all idle), the event time reached (the slowest busy
        upstream's, else the furthest), and whether all are idle; ``None`` before that."""
        ticks = self.ticks
        if len(ticks) < self.upstreams:
            return None
        busy = [t for t in ticks.values() if not t.idle]
        upto = min(t.seq for t in busy) if busy else None
        if self.chunked is None and next(iter(ticks.values())).chunked:
            self.chunked = ChunkedMarks()
        if self.chunked is not None:
            self._sort()  # takes the newly received chunk marks out of ``pending``
            return upto, self.chunked.reached_through(upto), not busy
        marks = [t.ts_ms for t in (busy or ticks.values()) if t.ts_ms is not None]
        reached = (min if busy else max)(marks) if marks else None
        return upto, reached, not busy

    def release(self, upto: int | None) -> list[Any]:
        """Take the held-back items with a merge key up to ``upto`` (all with ``None``), in key order."""
        pending = self.pending
        if not pending:
            return []
        self._sort()
        key = self.key
        if upto is not None and key(pending[0]) > upto:
            return []  # nothing to apply yet
        if upto is None:
            released, self.pending = pending, []
        else:
            cut = bisect.bisect_right(pending, upto, key=key)
            released, self.pending = pending[:cut], pending[cut:]
        self.sorted_pending = len(self.pending)
        if self.chunked is not None:
            self.chunked.stamp(released, upto)
        return released

    def _sort(self) -> None:
        """Put the items that arrived since the last call in key order among the others: only the
        part of ``pending`` from where the newcomers start is sorted again."""
        pending, done, key = self.pending, self.sorted_pending, self.key
        if done >= len(pending):
            return
        newcomers = pending[done:]
        if self.chunked is not None:
            self.chunked.add([item for item in newcomers if type(item) is ChunkMark])
            newcomers = [item for item in newcomers if type(item) is not ChunkMark]
            del pending[done:]
            if not newcomers:
                return
        newcomers.sort(key=key)
        start = bisect.bisect_right(pending, key(newcomers[0]), hi=done, key=key) if done else done
        if start == done:
            pending[done:] = newcomers
        else:
            merged = pending[start:done] + newcomers
            merged.sort(key=key)  # two sorted runs: a linear merge
            pending[start:] = merged
        self.sorted_pending = len(pending)

    def state(self) -> list[Any]:
        """What a snapshot keeps: the held-back items (after a restart every upstream reports its
        progress afresh, so their last ticks are not kept). A chunked stream is not resumed: its
        replay starts again."""
        return self.pending

    def restore(self, pending: list[Any]) -> None:
        self.pending, self.sorted_pending, self.ticks = pending, 0, {}
