"""Next-best offer: an epsilon-greedy contextual bandit over River logistic regressions.

Each offer (arm) has a ``LogisticRegression`` estimating P(reward | context). A decision
scores the eligible offers and takes the best one (ties: the first in catalogue order),
except with chance ``exploration``, when it takes one uniformly at random. The chosen
offer's probability is therefore exact, ``(1 - e) [best] + e / k``, which is what inverse
propensity scoring needs; an argmax policy such as LinUCB has no such probability. The
randomness is a hash of (decision id, seed), so a replay makes the same choices.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from river import linear_model, optim

CONTEXT: tuple[str, ...] = (
    "new",
    "lapsed",
    "high_value",
    "orders",
    "monetary",
    "recency_days",
    "views_7d",
    "cart_value",
)
LEARNING_RATE = 0.1


def offer_context(view: Mapping[str, Any]) -> tuple[float, ...]:
    """The bandit's context in :data:`CONTEXT` order: segment and a few features, at decision time."""
    lifecycle, recency = view["lifecycle"], view["recency_days"]
    return (
        1.0 if lifecycle == "new" else 0.0,
        1.0 if lifecycle == "lapsed" else 0.0,
        1.0 if "high_value" in view["audiences"] else 0.0,
        math.log1p(view["orders"]),
        math.log1p(max(0.0, view["monetary"] or 0.0)),
        math.log1p(365.0 if recency is None else min(recency, 365.0)),
        math.log1p(view["counts_7d"]["product_viewed"]),
        math.log1p(view["cart"]["value"]),
    )


@dataclass(frozen=True)
class Choice:
    offer: str
    probability: float
    explored: bool
    candidates: tuple[str, ...]
    scores: dict[str, float]


def uniform(decision_id: str, seed: int, salt: str) -> float:
    """A number in [0, 1) that depends only on its arguments."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{decision_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class OfferBandit:
    """One replica of the next-best-offer policy (one per shard, like every model)."""

    def __init__(self, exploration: float, seed: int, frozen: bool = False) -> None:
        self.exploration = exploration
        self.seed = seed
        self.frozen = frozen
        self.arms: dict[str, linear_model.LogisticRegression] = {}
        self.pulls: dict[str, int] = {}
        self.rewards: dict[str, int] = {}
        # regret proxy: the model's best expected reward minus the chosen one's, summed in millionths
        self.regret_micro = 0

    def _arm(self, offer: str) -> linear_model.LogisticRegression:
        arm = self.arms.get(offer)
        if arm is None:
            arm = self.arms[offer] = linear_model.LogisticRegression(optimizer=optim.SGD(LEARNING_RATE))
        return arm

    def scores(self, candidates: Sequence[str], context: tuple[float, ...]) -> dict[str, float]:
        x = dict(zip(CONTEXT, context, strict=True))
        return {offer: round(self._arm(offer).predict_proba_one(x).get(True, 0.5), 6) for offer in candidates}

    def choose(self, decision_id: str, candidates: Sequence[str], context: tuple[float, ...]) -> Choice:
        """Pick an offer among ``candidates`` (at least one) with an exactly known probability."""
        scores = self.scores(candidates, context)
        best = max(candidates, key=lambda offer: (scores[offer], -candidates.index(offer)))
        k, e = len(candidates), self.exploration
        explored = uniform(decision_id, self.seed, "explore") < e
        offer = candidates[int(uniform(decision_id, self.seed, "pick") * k)] if explored else best
        probability = e / k + (1 - e if offer == best else 0.0)
        self.pulls[offer] = self.pulls.get(offer, 0) + 1
        self.regret_micro += round((scores[best] - scores[offer]) * 1_000_000)
        return Choice(offer, round(probability, 6), explored, tuple(candidates), scores)

    def learn(self, offer: str, context: tuple[float, ...], reward: bool) -> None:
        if reward:
            self.rewards[offer] = self.rewards.get(offer, 0) + 1
        if not self.frozen:
            self._arm(offer).learn_one(dict(zip(CONTEXT, context, strict=True)), reward)

    def stats(self) -> dict[str, Any]:
        return {"pulls": dict(self.pulls), "rewards": dict(self.rewards), "regret_micro": self.regret_micro}

    def export(self) -> dict[str, Any]:
        arms = {offer: {"weights": dict(arm.weights), "intercept": arm.intercept} for offer, arm in self.arms.items()}
        return {"context": list(CONTEXT), "arms": arms}

    def load(self, data: Mapping[str, Any]) -> None:
        from river import utils as river_utils

        if list(data["context"]) != list(CONTEXT):
            raise ValueError("the offer model was trained on another context")
        for offer, params in data["arms"].items():
            arm = self._arm(offer)
            arm._weights = river_utils.VectorDict({k: float(v) for k, v in params["weights"].items()}, arm.initializer)
            arm.intercept = float(params["intercept"])
