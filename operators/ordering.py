"""Routing and ordered release: items held back until every upstream has passed them, then applied in key order.

Both engine stages apply what they receive in merge-key order (:func:`operators.parse.order_key`),
whatever the number of workers or how the input was batched. Each upstream (a source partition
for the identity stage, an identity shard for the customer stage) sends a :class:`Tick` after
each batch: it sends nothing more with a key up to the tick's ``seq``. Items up to the smallest
key that every busy upstream has passed can be applied.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def shard_of(key: str, shards: int) -> int:
    """A stable shard number for a routing key, a customer or anonymous id (crc32: the same on
    every machine and run)."""
    return zlib.crc32(key.encode()) % shards


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


class OrderedRelease:
    """Held-back items of one shard and the latest tick of each of its ``upstreams``."""

    def __init__(self, upstreams: int, key: Callable[[Any], int]) -> None:
        self.upstreams = upstreams
        self.key = key
        self.ticks: dict[int, Tick] = {}  # the latest tick of each upstream
        self.pending: list[Any] = []
        self.sorted_pending = 0  # how many of ``pending`` are known to be in key order

    def progress(self) -> tuple[int | None, int | None, bool] | None:
        """``(upto, reached, idle)`` once every upstream has reported: the merge key every busy
        upstream has passed (``None``: all idle), the event time reached (the slowest busy
        upstream's, else the furthest), and whether all are idle; ``None`` before that."""
        ticks = self.ticks
        if len(ticks) < self.upstreams:
            return None
        busy = [t for t in ticks.values() if not t.idle]
        upto = min(t.seq for t in busy) if busy else None
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
        return released

    def _sort(self) -> None:
        """Put the items that arrived since the last call in key order among the others: only the
        part of ``pending`` from where the newcomers start is sorted again."""
        pending, done, key = self.pending, self.sorted_pending, self.key
        if done >= len(pending):
            return
        newcomers = pending[done:]
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
        progress afresh, so their last ticks are not kept)."""
        return self.pending

    def restore(self, pending: list[Any]) -> None:
        self.pending, self.sorted_pending, self.ticks = pending, 0, {}
