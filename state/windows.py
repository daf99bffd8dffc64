"""Event counts per event kind over sliding windows, kept in bounded time buckets (in the
compiled features record, ``state/native/src/features.rs``; the names and codes are here).

Buckets are 5 minutes wide for the last hour, 1 hour for the last day and 1 day up to
30 days; older buckets are dropped. A window's count includes every bucket that starts
inside the window, so counts are exact at bucket resolution. All buckets of a customer
live in one array of 32-bit ``(start_minute, kind, count)`` triples: at most
``(12 + 24 + 30) * kinds`` triples after a compaction, plus at most 64 added since (the
compaction runs once 72 triples are held, then every 64 added), usually a handful.
"""

from __future__ import annotations

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
