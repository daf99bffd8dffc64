"""Exponentially decayed affinities to categories or products, bounded to the top k."""

from __future__ import annotations

import math

DAY_MS = 86_400_000


class DecayedTopK:
    """Scores that halve every ``half_life_ms``; only the ``k`` strongest items are kept.

    Scores are stored as of ``ref_ms`` (the time of the last update); reading them at a
    later time decays them on the fly.
    """

    __slots__ = ("ref_ms", "scores")

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}
        self.ref_ms = 0

    def add(self, item: str, weight: float, at_ms: int, half_life_ms: int, k: int) -> None:
        """Add ``weight`` to ``item`` at ``at_ms`` (earlier times count decayed)."""
        if at_ms > self.ref_ms:
            if self.scores:
                factor = math.exp2(-(at_ms - self.ref_ms) / half_life_ms)
                self.scores = {key: value * factor for key, value in self.scores.items()}
            self.ref_ms = at_ms
        else:
            weight *= math.exp2(-(self.ref_ms - at_ms) / half_life_ms)
        self.scores[item] = self.scores.get(item, 0.0) + weight
        if len(self.scores) > k:
            weakest = max(self.scores.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # last in top() order
            del self.scores[weakest]

    def top(self, n: int | None = None) -> list[str]:
        """Items by descending score (ties by name)."""
        ranked = sorted(self.scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return [item for item, _ in ranked[:n]]

    def as_of(self, now_ms: int, half_life_ms: int) -> dict[str, float]:
        """Scores decayed to ``now_ms``, rounded for stable output."""
        factor = math.exp2(-max(0, now_ms - self.ref_ms) / half_life_ms)
        return {item: round(score * factor, 4) for item, score in sorted(self.scores.items())}

    def merge(self, other: DecayedTopK, half_life_ms: int, k: int) -> None:
        """Fold another customer's affinities into these."""
        for item, score in other.scores.items():
            self.add(item, score, other.ref_ms, half_life_ms, k)
