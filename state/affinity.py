"""Exponentially decayed affinities to categories or products, bounded to the top k."""

from __future__ import annotations

import math

DAY_MS = 86_400_000
_RENORMALIZE_AT = 2.0**500
_MAX_EXPONENT = 500.0  # 2 ** 500 times any weight stays far below the float limit (2 ** 1024)


class DecayedTopK:
    """Scores that halve every ``half_life_ms``; only the ``k`` strongest items are kept.

    Forward decay: a weight added at time ``t`` is stored as ``weight * 2 ** ((t - ref) /
    half_life)`` against a fixed landmark ``ref_ms``, so an update touches one entry and the
    ranking needs no decay at all; reading a score at ``now`` multiplies by
    ``2 ** ((ref - now) / half_life)``. The landmark moves (and the scores shrink) only when
    they grow too large for floats. No pair of times overflows: a time far before the landmark
    counts as 0, one far after it moves the landmark first.
    """

    __slots__ = ("ref_ms", "scores")

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}
        self.ref_ms: int | None = None

    def add(self, item: str, weight: float, at_ms: int, half_life_ms: int, k: int) -> None:
        """Add ``weight`` to ``item`` at ``at_ms`` (earlier times count decayed)."""
        if self.ref_ms is None:
            self.ref_ms = at_ms
        exponent = (at_ms - self.ref_ms) / half_life_ms
        scaled = weight * math.exp2(min(exponent, _MAX_EXPONENT))
        if scaled > _RENORMALIZE_AT or exponent > _MAX_EXPONENT:
            self._move_landmark(at_ms, half_life_ms)
            scaled = weight
        scores = self.scores
        scores[item] = scores.get(item, 0.0) + scaled
        if len(scores) > k:
            weakest = max(scores.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # last in top() order
            del scores[weakest]

    def _move_landmark(self, to_ms: int, half_life_ms: int) -> None:
        assert self.ref_ms is not None
        factor = math.exp2((self.ref_ms - to_ms) / half_life_ms)
        self.scores = {item: score * factor for item, score in self.scores.items()}
        self.ref_ms = to_ms

    def top(self, n: int | None = None) -> list[str]:
        """Items by descending score (ties by name)."""
        ranked = sorted(self.scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return [item for item, _ in ranked[:n]]

    def as_of(self, now_ms: int, half_life_ms: int) -> dict[str, float]:
        """Scores decayed to ``now_ms``, rounded for stable output."""
        if self.ref_ms is None:
            return {}
        factor = math.exp2(min(0, self.ref_ms - now_ms) / half_life_ms)
        return {item: round(score * factor, 4) for item, score in sorted(self.scores.items())}

    def merge(self, other: DecayedTopK, half_life_ms: int, k: int) -> None:
        """Fold another customer's affinities into these."""
        if other.ref_ms is None:
            return
        for item, score in other.scores.items():
            self.add(item, score, other.ref_ms, half_life_ms, k)
