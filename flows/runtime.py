"""Process-wide settings for running the engine."""

from __future__ import annotations

import gc

GC_THRESHOLDS = (100_000, 1_000, 1_000_000)


def tune_gc() -> None:
    """Make full garbage collections rare.

    The engine holds millions of long-lived, acyclic objects (customer state); Python's
    default thresholds re-scan all of them every few thousand allocations, which halves
    throughput. Young objects are still collected; cycles in old ones are collected rarely.
    """
    gc.set_threshold(*GC_THRESHOLDS)
