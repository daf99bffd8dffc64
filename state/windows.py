"""Event counts per event kind over sliding windows, kept in bounded time buckets.

Buckets are 5 minutes wide for the last hour, 1 hour for the last day and 1 day up to
30 days; older buckets are dropped. A window's count includes every bucket that starts
inside the window, so counts are exact at bucket resolution. All buckets of a customer
live in one ``array('i')`` of ``(start_minute, kind, count)`` triples: at most
``(12 + 24 + 30) * kinds`` triples after a compaction, plus at most :data:`_COMPACT_EVERY`
added since, usually a handful.
"""

from __future__ import annotations

from array import array

MINUTE_MS = 60_000
WINDOWS_MIN: dict[str, int] = {"1h": 60, "24h": 24 * 60, "7d": 7 * 24 * 60, "30d": 30 * 24 * 60}
COUNTED_KINDS: tuple[str, ...] = (
    "product_viewed",
    "product_added",
    "product_removed",
    "checkout_started",
    "order_completed",
    "order_refunded",
    "application_opened",
    "page",
    "screen",
    "promotion_clicked",
    "push_tapped",
    "store_visited",
    "other",
)
KIND_CODE: dict[str, int] = {kind: code for code, kind in enumerate(COUNTED_KINDS)}
_COMPACT_AT = 3 * 24  # compact once this many triples are held...
_COMPACT_EVERY = 64  # ...and then every this many added triples


def _width(age_min: int) -> int:
    if age_min < 60:
        return 5
    if age_min < 24 * 60:
        return 60
    return 24 * 60


class WindowedCounts:
    """Bucketed counts of event kinds; ``counts(now)`` gives every window at once."""

    __slots__ = ("buckets",)

    def __init__(self, buckets: array | None = None) -> None:
        self.buckets = buckets if buckets is not None else array("i")

    def add(self, kind: str, at_ms: int, now_ms: int) -> None:
        """Count one ``kind`` event at ``at_ms``; ``now_ms`` is the customer's latest time."""
        code = KIND_CODE.get(kind, KIND_CODE["other"])
        minute = at_ms // MINUTE_MS
        now_min = now_ms // MINUTE_MS
        if now_min - minute >= WINDOWS_MIN["30d"]:
            return
        width = _width(now_min - minute)
        start = minute - minute % width
        b = self.buckets
        for i in range(len(b) - 3, -1, -3):
            if b[i] == start and b[i + 1] == code:
                b[i + 2] += 1
                return
            if b[i] < start:
                break
        b.extend((start, code, 1))
        held = len(b) // 3
        if held > _COMPACT_AT and (held - _COMPACT_AT) % _COMPACT_EVERY == 1:
            self.compact(now_ms)

    def compact(self, now_ms: int) -> None:
        """Merge buckets into the width their age calls for and drop those past 30 days."""
        now_min = now_ms // MINUTE_MS
        merged: dict[tuple[int, int], int] = {}
        b = self.buckets
        for i in range(0, len(b), 3):
            age = now_min - b[i]
            if age >= WINDOWS_MIN["30d"]:
                continue
            width = _width(age)
            key = (b[i] - b[i] % width, b[i + 1])
            merged[key] = merged.get(key, 0) + b[i + 2]
        out = array("i")
        for (start, code), count in sorted(merged.items()):
            out.extend((start, code, count))
        self.buckets = out

    def counts(self, window: str, now_ms: int) -> dict[str, int]:
        """Counts per kind of the buckets starting within ``window`` before ``now_ms``."""
        since = now_ms // MINUTE_MS - WINDOWS_MIN[window]
        out: dict[str, int] = dict.fromkeys(COUNTED_KINDS, 0)
        b = self.buckets
        for i in range(0, len(b), 3):
            if b[i] > since:
                kind = COUNTED_KINDS[b[i + 1]]
                out[kind] += b[i + 2]
        return out

    def merge(self, other: WindowedCounts, now_ms: int) -> None:
        """Fold another customer's buckets into these (identity linking)."""
        self.buckets.extend(other.buckets)
        self.compact(now_ms)
