"""Exponentially decayed affinities to categories or products, bounded to the top k.

Kept in the compiled features record (``state/native/src/features.rs``). Scores halve every
half-life; only the ``k`` strongest items are kept. Forward decay: a weight added at time ``t``
is stored as ``weight * 2 ** ((t - ref) / half_life)`` against a fixed landmark ``ref``, so an
update touches one entry and the ranking needs no decay at all; reading a score at ``now``
multiplies by ``2 ** ((ref - now) / half_life)``. The landmark moves (and the scores shrink) only
when they grow too large for floats (past ``2 ** 500``). No pair of times overflows: a time far
before the landmark counts as 0, one far after it moves the landmark first. Ties rank by name.
"""

from __future__ import annotations

DAY_MS = 86_400_000
