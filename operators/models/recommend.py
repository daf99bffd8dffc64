"""Product recommendations: an incremental, session-based item-to-item co-occurrence model.

Every product a customer views or adds is linked to the few products they touched just
before in the same session (weight 1/distance, both ways). Recommending sums the
neighbours of the customer's recent products, drops what they already have or just
bought, adds the popularity of products in the customer's categories (the ones they were
just looking at and their lasting category affinities), and fills up with the most popular
products overall. The model is compiled (``state/native/src/recommend.rs``): an update costs a
few array operations, so it learns from every product event (measured in ``bench/``), and its
quality is checked progressively on a deterministic sample of views: was the viewed product
among the top k recommended just before?
"""

from __future__ import annotations

import struct
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from state import _native

WINDOW: int = _native.CoOccurrence.WINDOW  # earlier products in the session that a new one is linked to
NEIGHBOURS: int = _native.CoOccurrence.NEIGHBOURS  # neighbours kept per product (pruned from twice as many)
POPULAR: int = _native.CoOccurrence.POPULAR  # most popular products kept for filling up
K: int = _native.CoOccurrence.K  # products recommended by default (and by a progressive check)
SAMPLE_EVERY = 50  # one view in 50 is checked for progressive hit rate (by a hash of the message id)
BYTES_HEADER = struct.Struct("<BB4Q")
"""The head of ``CoOccurrence.to_bytes`` (``state/native/src/recommend_bytes.rs``): format, frozen, and the
progressive counters checked, hits, reciprocal rank (millionths) and most-popular hits."""


class RecommendationParameters(BaseModel):
    """What :meth:`CoOccurrence.export` writes (checked when a model file is read)."""

    model_config = ConfigDict(extra="forbid")
    links: dict[str, dict[str, float]]
    counts: dict[str, int]
    categories: dict[str, str]


class CoOccurrence(_native.CoOccurrence):
    """One replica of the recommender (one per shard, like every model), compiled (``state/native``).

    Its methods: ``learn(history, product, category)``, ``recommend(history, k, exclude,
    interests, categories)``, ``most_popular(history, k)``, ``check(history, product, interests,
    categories)``, ``export()``, ``load(data)``, ``stats()``, ``to_bytes()`` and ``restore_bytes(data)``
    (its whole state as compact bytes, for snapshots) and ``merge(exports)`` (links and
    counts added up). Products and categories are interned to ids inside it. Its answers, exports
    and counters are exactly those of the plain-Python model it replaced
    (``tests/recommend_reference.py``), and it pickles as that model did (a snapshot of either
    restores into it).
    """

    name: ClassVar[str] = "recommendations"
    parameters: ClassVar[type[BaseModel]] = RecommendationParameters
    required_in_files: ClassVar[bool] = False  # files written before it was added have none


def sampled(message_id: str) -> bool:
    """Whether a view is in the deterministic sample checked for progressive quality (the first
    byte of the 2-byte BLAKE2b digest of its id, one in :data:`SAMPLE_EVERY`)."""
    return _native.sampled(message_id, SAMPLE_EVERY)


def adopt(replica: CoOccurrence, parameters: bytes) -> None:
    """Make ``replica`` hold the links, counts, categories and popularity of ``parameters`` (another
    recommender's ``to_bytes``: a global copy), keeping its own mode and progressive counters."""
    stats = replica.stats()
    counters = (stats["checked"], stats["hits"], stats["reciprocal_rank_micro"], stats["most_popular_hits"])
    header = BYTES_HEADER.pack(parameters[0], replica.frozen, *counters)
    replica.restore_bytes(header + parameters[BYTES_HEADER.size :])
