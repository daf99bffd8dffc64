"""The recommender as it was first written, in plain Python: the reference that the compiled
model (``operators.models.recommend.CoOccurrence``) must agree with exactly, answer for answer,
export for export and counter for counter (``tests/operators/test_recommend.py``)."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

WINDOW = 4  # earlier products in the session that a new one is linked to
NEIGHBOURS = 30  # neighbours kept per product (pruned from twice as many)
POPULAR = 50  # most popular products kept for filling up
SAMPLE_EVERY = 50  # one view in 50 is checked for progressive hit rate (by a hash of the message id)
K = 10
BASKET_WEIGHT = 2.0  # of a link between two products bought in one order
BASKET_WINDOW = 8  # products of an order each one is linked to at most, on each side
BASKET_LINKS = 80  # links an order makes at most (unless it has more distinct products: one each)
WEIGHTS = tuple(1.0 / distance for distance in range(1, WINDOW + 1))  # of a link, by distance in the session


class RecommendationParameters(BaseModel):
    """What :meth:`CoOccurrence.export` writes (checked when a model file is read)."""

    model_config = ConfigDict(extra="forbid")
    links: dict[str, dict[str, float]]
    counts: dict[str, int]
    categories: dict[str, str]


class CoOccurrence:
    """One replica of the recommender (one per shard, like every model)."""

    name: ClassVar[str] = "recommendations"
    parameters: ClassVar[type[BaseModel]] = RecommendationParameters
    required_in_files: ClassVar[bool] = False  # files written before it was added have none

    def __init__(self, frozen: bool = False) -> None:
        self.frozen = frozen
        self.links: dict[str, dict[str, float]] = {}
        self.counts: dict[str, int] = {}
        self.popular: list[str] = []
        self.category_of: dict[str, str] = {}
        self.popular_in: dict[str, list[str]] = {}  # category -> its most popular products
        self.checked = 0
        self.hits = 0
        self.reciprocal_rank_micro = 0  # sum of 1/rank of hits, in millionths (MRR at k)
        self.baseline_hits = 0  # the same check for "most popular"

    def learn(self, history: Sequence[str], product: str, category: str | None = None) -> None:
        """``product`` (of ``category``) was touched after ``history`` (the session's earlier products)."""
        if self.frozen:
            return
        links = self.links
        distance = 0
        for earlier in reversed(history[-WINDOW:]):
            if earlier == product:
                continue
            weight = WEIGHTS[distance]
            distance += 1
            theirs = links.get(earlier)
            if theirs is None:
                theirs = links[earlier] = {}
            theirs[product] = theirs.get(product, 0.0) + weight
            if len(theirs) > 2 * NEIGHBOURS:
                links[earlier] = _strongest(theirs)
            mine = links.get(product)
            if mine is None:
                mine = links[product] = {}
            mine[earlier] = mine.get(earlier, 0.0) + weight
            if len(mine) > 2 * NEIGHBOURS:
                links[product] = _strongest(mine)
        counts = self.counts
        count = counts[product] = counts.get(product, 0) + 1
        _rank(self.popular, product, count, counts)
        if category:
            self.category_of[product] = category
            ranked = self.popular_in.get(category)
            if ranked is None:
                ranked = self.popular_in[category] = []
            _rank(ranked, product, count, counts)

    def learn_basket(self, basket: Iterable[tuple[str, str | None]]) -> None:
        """The products of one order were bought together (``(product, category)`` lines; a product
        on several lines counts once, with its first line's category)."""
        if self.frozen:
            return
        first: dict[str, str | None] = {}
        for product, category in basket:
            first.setdefault(product, category)
        products = list(first)
        for a, b in basket_pairs(len(products)):
            self._link(products[a], products[b], BASKET_WEIGHT)
            self._link(products[b], products[a], BASKET_WEIGHT)
        counts = self.counts
        for product, category in first.items():
            count = counts[product] = counts.get(product, 0) + 1
            _rank(self.popular, product, count, counts)
            if category:
                self.category_of[product] = category
                _rank(self.popular_in.setdefault(category, []), product, count, counts)

    def _link(self, product: str, other: str, weight: float) -> None:
        mine = self.links.setdefault(product, {})
        mine[other] = mine.get(other, 0.0) + weight
        if len(mine) > 2 * NEIGHBOURS:
            self.links[product] = _strongest(mine)

    def recommend(
        self,
        history: Sequence[str],
        k: int = K,
        exclude: Iterable[str] = (),
        interests: Sequence[str] = (),
        categories: Mapping[str, float] | None = None,
    ) -> list[str]:
        """Top ``k`` products after ``history`` (most recent last), none of ``history`` or ``exclude``;
        ``interests`` (the customer's favourite products) count as older history but may be shown;
        ``categories`` (the customer's category affinities) weigh the categories' popular products.

        Two evidences, each normalised to sum 1 and added: the co-occurrence neighbours of the
        recent products, and the popularity of products within the categories of those products.
        The most popular products overall fill up what is left.
        """
        skip = set(history) | set(exclude)
        recent = [*interests, *history][-WINDOW:] if len(history) < WINDOW else history[-WINDOW:]
        links = self.links
        neighbours: dict[str, float] = {}
        seen = neighbours.get
        for distance, product in enumerate(reversed(recent), start=1):
            linked = links.get(product)
            if not linked:
                continue
            if not neighbours:  # the first evidence: a copy at C speed
                neighbours = dict(linked) if distance == 1 else {o: w / distance for o, w in linked.items()}
                seen = neighbours.get
                continue
            for other, weight in linked.items():
                neighbours[other] = seen(other, 0.0) + weight / distance
        for product in skip:
            neighbours.pop(product, None)
        total = sum(neighbours.values())
        scores = {product: value / total for product, value in neighbours.items()}
        weights: dict[str, float] = {}
        for distance, product in enumerate(reversed(recent), start=1):
            category = self.category_of.get(product)
            if category:
                weights[category] = weights.get(category, 0.0) + 1.0 / distance
        total = sum(weights.values()) or 1.0
        weights = {c: w / total for c, w in weights.items()}
        affinity = sum((categories or {}).values())
        for category, score in (categories or {}).items():  # the customer's lasting interests
            weights[category] = weights.get(category, 0.0) + score / affinity
        in_categories: dict[str, float] = {}
        counts, popular_in = self.counts, self.popular_in
        for category, weight in weights.items():
            for other in popular_in.get(category, ())[: 2 * k]:
                if other not in skip:
                    in_categories[other] = in_categories.get(other, 0.0) + counts[other] * weight
        _add_normalised(scores, in_categories)
        ranked = _top(scores, k)
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

    def check(
        self,
        history: Sequence[str],
        product: str,
        interests: Sequence[str] = (),
        categories: Mapping[str, float] | None = None,
    ) -> None:
        """Progressive validation (on a sample of views, see :func:`sampled`): was ``product``
        predicted from ``history``?"""
        if not (history or interests):
            return
        self.checked += 1
        predicted = self.recommend(history, interests=interests, categories=categories)
        if product in predicted:
            self.hits += 1
            self.reciprocal_rank_micro += 1_000_000 // (predicted.index(product) + 1)
        if product in self.most_popular(history):
            self.baseline_hits += 1

    def export(self) -> dict[str, Any]:
        return {
            "links": {p: dict(sorted(n.items())) for p, n in sorted(self.links.items())},
            "counts": dict(sorted(self.counts.items())),
            "categories": dict(sorted(self.category_of.items())),
        }

    def load(self, data: Mapping[str, Any]) -> None:
        self.links = {
            p: dict(sorted(((q, float(w)) for q, w in n.items()), key=lambda kv: (-kv[1], kv[0]))[:NEIGHBOURS])
            for p, n in data["links"].items()
        }
        self.counts = {p: int(c) for p, c in data["counts"].items()}
        self.category_of = dict(data["categories"])
        self.popular, self.popular_in = [], {}
        for product in sorted(self.counts, key=lambda p: (-self.counts[p], p)):
            if len(self.popular) < POPULAR:
                self.popular.append(product)
            category = self.category_of.get(product)
            if category:
                ranked = self.popular_in.setdefault(category, [])
                if len(ranked) < POPULAR:
                    ranked.append(product)

    def stats(self) -> dict[str, Any]:
        return {
            "products": len(self.counts),
            "checked": self.checked,
            "hits": self.hits,
            "reciprocal_rank_micro": self.reciprocal_rank_micro,
            "most_popular_hits": self.baseline_hits,
        }

    @staticmethod
    def merge(exports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Links and counts added up (each replica saw other sessions)."""
        links: dict[str, dict[str, float]] = {}
        counts: dict[str, int] = {}
        categories: dict[str, str] = {}
        for replica in exports:
            for product, neighbours in replica["links"].items():
                merged = links.setdefault(product, {})
                for other, weight in neighbours.items():
                    merged[other] = merged.get(other, 0.0) + weight
            for product, count in replica["counts"].items():
                counts[product] = counts.get(product, 0) + count
            categories.update(replica["categories"])
        return {
            "links": {p: dict(sorted(n.items())) for p, n in sorted(links.items())},
            "counts": dict(sorted(counts.items())),
            "categories": dict(sorted(categories.items())),
        }


def basket_pairs(n: int) -> list[tuple[int, int]]:
    """The pairs of an order's ``n`` distinct products that are linked: all of them when each product
    can reach every other within the window on each side, else each one and the next ``window`` ones,
    round the order, with the window as large as :data:`BASKET_LINKS` allows (at least 1)."""
    window = min(max(BASKET_LINKS // max(n, 1), 1), BASKET_WINDOW)
    if n <= 2 * window + 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    return [(i, (i + d) % n) for i in range(n) for d in range(1, window + 1)]


def _add_normalised(scores: dict[str, float], evidence: dict[str, float]) -> None:
    total = sum(evidence.values())
    for product, value in evidence.items():
        scores[product] = scores.get(product, 0.0) + value / total


def _top(scores: dict[str, float], k: int) -> list[str]:
    """The ``k`` best products by score, then id: a C-level pass for the threshold, a small sort."""
    if len(scores) > k:
        threshold = heapq.nlargest(k, scores.values())[-1]
        best = sorted((-score, product) for product, score in scores.items() if score >= threshold)
    else:
        best = sorted((-score, product) for product, score in scores.items())
    return [product for _, product in best[:k]]


def _strongest(neighbours: dict[str, float]) -> dict[str, float]:
    """The :data:`NEIGHBOURS` strongest links, strongest first (by weight, then id).

    A C-level sort of the weights finds the threshold; only the links at or above it are sorted.
    """
    if len(neighbours) > NEIGHBOURS:
        threshold = sorted(neighbours.values(), reverse=True)[NEIGHBOURS - 1]
        best = sorted([(-weight, product) for product, weight in neighbours.items() if weight >= threshold])
    else:
        best = sorted([(-weight, product) for product, weight in neighbours.items()])
    return {product: -weight for weight, product in best[:NEIGHBOURS]}


def _rank(popular: list[str], product: str, count: int, counts: dict[str, int]) -> None:
    """Keep ``popular`` the most popular products, by count then id, at most :data:`POPULAR`.

    A count only grows by one, so the product moves up a few places at most: insertion, not a sort.
    """
    if len(popular) >= POPULAR:  # the long tail stays out cheaply
        last = popular[-1]
        last_count = counts[last]
        if count < last_count or (count == last_count and product > last):
            return
    try:
        index = popular.index(product)
    except ValueError:
        index = len(popular)
    else:
        if index == 0 or counts[popular[index - 1]] > count:
            return  # still in its place
        del popular[index]
    while index > 0:
        before = popular[index - 1]
        before_count = counts[before]
        if before_count > count or (before_count == count and before < product):
            break
        index -= 1
    popular.insert(index, product)
    del popular[POPULAR:]


def sampled(message_id: str) -> bool:
    """Whether a view is in the deterministic sample checked for progressive quality."""
    return hashlib.blake2b(message_id.encode(), digest_size=2).digest()[0] % SAMPLE_EVERY == 0
