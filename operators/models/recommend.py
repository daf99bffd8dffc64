"""Product recommendations: an incremental, session-based item-to-item co-occurrence model.

Every product a customer views or adds is linked to the few products they touched just
before in the same session (weight 1/distance, both ways). Recommending sums the
neighbours of the customer's recent products, drops what they already have or just
bought, and fills up with the most popular products. Updates cost a few dictionary
operations per event, so the model learns from every product event (measured in
``bench/``), and its quality is checked progressively on a deterministic sample of views:
was the viewed product among the top k recommended just before?
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

WINDOW = 4  # earlier products in the session that a new one is linked to
NEIGHBOURS = 30  # neighbours kept per product (pruned from twice as many)
POPULAR = 50  # most popular products kept for filling up
SAMPLE_EVERY = 10  # views checked for progressive hit rate (by a hash of the message id)
K = 10


class CoOccurrence:
    """One replica of the recommender (one per shard, like every model)."""

    def __init__(self) -> None:
        self.links: dict[str, dict[str, float]] = {}
        self.counts: dict[str, int] = {}
        self.popular: list[str] = []
        self.checked = 0
        self.hits = 0
        self.reciprocal_rank_micro = 0  # sum of 1/rank of hits, in millionths (MRR at k)
        self.baseline_hits = 0  # the same check for "most popular"

    def learn(self, history: Sequence[str], product: str) -> None:
        """``product`` was touched after ``history`` (the session's earlier products, oldest first)."""
        recent = [p for p in history[-WINDOW:] if p != product]
        for distance, earlier in enumerate(reversed(recent), start=1):
            weight = 1.0 / distance
            self._link(earlier, product, weight)
            self._link(product, earlier, weight)
        count = self.counts[product] = self.counts.get(product, 0) + 1
        self._rank_popular(product, count)

    def _link(self, a: str, b: str, weight: float) -> None:
        neighbours = self.links.get(a)
        if neighbours is None:
            neighbours = self.links[a] = {}
        neighbours[b] = neighbours.get(b, 0.0) + weight
        if len(neighbours) > 2 * NEIGHBOURS:
            kept = sorted(neighbours.items(), key=lambda kv: (-kv[1], kv[0]))[:NEIGHBOURS]
            self.links[a] = dict(kept)

    def _rank_popular(self, product: str, count: int) -> None:
        """Keep the most popular products, by count then id."""
        popular = self.popular
        if product not in popular:
            if len(popular) >= POPULAR and (-count, product) > (-self.counts[popular[-1]], popular[-1]):
                return
            popular.append(product)
        popular.sort(key=lambda p: (-self.counts[p], p))
        del popular[POPULAR:]

    def recommend(self, history: Sequence[str], k: int = K, exclude: Iterable[str] = ()) -> list[str]:
        """Top ``k`` products after ``history`` (most recent last), none of ``history`` or ``exclude``."""
        skip = set(history) | set(exclude)
        scores: dict[str, float] = {}
        for distance, product in enumerate(reversed(history[-WINDOW:]), start=1):
            for other, weight in self.links.get(product, {}).items():
                if other not in skip:
                    scores[other] = scores.get(other, 0.0) + weight / distance
        ranked = [p for p, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
        for product in self.popular:
            if len(ranked) >= k:
                break
            if product not in skip and product not in ranked:
                ranked.append(product)
        return ranked

    def most_popular(self, history: Sequence[str], k: int = K) -> list[str]:
        """The baseline: the most popular products the customer has not just touched."""
        skip = set(history)
        return [p for p in self.popular if p not in skip][:k]

    def check(self, message_id: str, history: Sequence[str], product: str) -> None:
        """Progressive validation on a sample of views: was ``product`` predicted from ``history``?"""
        if not history or _bucket(message_id) != 0:
            return
        self.checked += 1
        predicted = self.recommend(history)
        if product in predicted:
            self.hits += 1
            self.reciprocal_rank_micro += 1_000_000 // (predicted.index(product) + 1)
        if product in self.most_popular(history):
            self.baseline_hits += 1

    def stats(self) -> dict[str, Any]:
        return {
            "products": len(self.counts),
            "checked": self.checked,
            "hits": self.hits,
            "reciprocal_rank_micro": self.reciprocal_rank_micro,
            "most_popular_hits": self.baseline_hits,
        }


def _bucket(message_id: str) -> int:
    return hashlib.blake2b(message_id.encode(), digest_size=2).digest()[0] % SAMPLE_EVERY
