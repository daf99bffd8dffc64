"""Next-best offer: an epsilon-greedy contextual bandit with one reward estimate per segment.

The context is the customer's segment at decision time: lifecycle (new, active, lapsed),
whether they have ever ordered, and whether they are in the ``high_value`` audience. Each
(segment, offer) pair keeps a River ``stats.Mean`` of its rewards; its score is that mean
shrunk towards 1/2 by one success and one failure of prior (Beta(1, 1)), so an offer never
tried in a segment looks promising and gets tried. A decision takes the best-scoring eligible
offer (ties: catalogue order), except with chance ``exploration``, when it takes one uniformly
at random. The chosen offer's probability is therefore exact, ``(1 - e) [best] + e / k``,
which inverse propensity scoring needs; an argmax policy such as LinUCB has no such
probability. The randomness is a hash of (decision id, seed), so a replay makes the same
choices.

The shrunk mean ranks offers; as a click rate it is over-confident where few rewards were
learnt (1/2 for an offer never tried). The rate the policy states for its choice
(``expected_rate``) is that score calibrated: a
:class:`~operators.models.calibration.Calibrator` learns from each reward, against the score the
offer had before the reward was learnt, and its progressive quality is counted as the
propensity model's is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from operators.models.calibration import Calibrator, CalibratorParameters
from operators.models.propensity import Calibration

if TYPE_CHECKING:
    from river import stats


def segment(lifecycle: str, orders: int, audiences: Collection[str]) -> str:
    """The customer's segment at decision time, e.g. ``active/buyer/high_value``: the features
    ``lifecycle`` and ``orders``, and whether ``audiences`` holds ``high_value``."""
    buyer = "buyer" if orders else "prospect"
    value = "high_value" if "high_value" in audiences else "regular"
    return f"{lifecycle}/{buyer}/{value}"


@dataclass(frozen=True, slots=True)
class Choice:
    offer: str
    probability: float
    explored: bool
    candidates: tuple[str, ...]
    scores: dict[str, float]
    expected_rate: float  # the chosen offer's score, calibrated: its chance of a reward


def uniform(decision_id: str, seed: int, salt: str) -> float:
    """A number in [0, 1) that depends only on its arguments."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{decision_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int
    mean: float


class OfferParameters(BaseModel):
    """What :meth:`OfferBandit.export` writes (checked when a model file is read)."""

    model_config = ConfigDict(extra="forbid")
    segments: dict[str, dict[str, _Arm]]
    calibration: CalibratorParameters | None = None  # absent from files written before calibration: none learnt


class OfferBandit:
    """One replica of the next-best-offer policy (one per shard, like every model)."""

    name: ClassVar[str] = "next_best_offer"
    parameters: ClassVar[type[BaseModel]] = OfferParameters
    required_in_files: ClassVar[bool] = True

    def __init__(self, exploration: float, seed: int, frozen: bool = False) -> None:
        self.exploration = exploration
        self.seed = seed
        self.frozen = frozen
        self.means: dict[str, dict[str, stats.Mean]] = {}  # segment -> offer -> mean reward
        self._scores: dict[str, dict[str, float]] = {}  # segment -> offer -> score, kept until it learns
        self.pulls: dict[str, int] = {}
        self.rewards: dict[str, int] = {}
        # regret proxy: the best expected reward minus the chosen one's, summed in millionths
        self.regret_micro = 0
        self.calibrator = Calibrator()
        self.quality = Calibration()  # progressive: each reward or its absence against the calibrated rate

    def score(self, segment_id: str, offer: str) -> float:
        return _shrunk(self.means.get(segment_id, _NO_MEANS).get(offer))

    def choose(self, decision_id: str, candidates: Sequence[str], segment_id: str) -> Choice:
        """Pick an offer among ``candidates`` (at least one, no two alike) with an exactly known probability."""
        scores = self._scored(segment_id, candidates)
        best = candidates[0]
        for offer in candidates:  # the best score, the first in the catalogue among equals
            if scores[offer] > scores[best]:
                best = offer
        k, e = len(candidates), self.exploration
        explored = uniform(decision_id, self.seed, "explore") < e
        offer = candidates[int(uniform(decision_id, self.seed, "pick") * k)] if explored else best
        probability = e / k + (1 - e if offer == best else 0.0)
        self.pulls[offer] = self.pulls.get(offer, 0) + 1
        if offer != best:
            self.regret_micro += round((scores[best] - scores[offer]) * 1_000_000)
        expected = round(self.calibrator(scores[offer]), 6)
        return Choice(offer, round(probability, 6), explored, tuple(candidates), scores, expected)

    def _scored(self, segment_id: str, candidates: Sequence[str]) -> dict[str, float]:
        """The candidates' scores in ``segment_id``, each computed once until the segment learns it again."""
        known = self._scores.setdefault(segment_id, {})
        scores = {}
        for offer in candidates:
            score = known.get(offer)
            if score is None:
                score = known[offer] = self.score(segment_id, offer)
            scores[offer] = score
        return scores

    def learn(self, offer: str, segment_id: str, reward: bool, value: float | None = None) -> None:
        """Learn whether a choice of ``offer`` was rewarded, worth ``value`` (default: 1 if it was, else 0):
        first measured against the calibrated score, then learnt by the calibrator and the means."""
        if reward:
            self.rewards[offer] = self.rewards.get(offer, 0) + 1
        raw = self.score(segment_id, offer)
        self.quality.add(self.calibrator(raw), reward)
        if not self.frozen:
            self.calibrator.learn(raw, reward)
            means = self.means.setdefault(segment_id, {})
            if offer not in means:
                means[offer] = _mean()
            means[offer].update(float(reward) if value is None else value)
            self._scores.get(segment_id, {}).pop(offer, None)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the scores kept (computed again after a restore)."""
        return {name: value for name, value in self.__dict__.items() if name != "_scores"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._scores = {}
        if "calibrator" not in state:  # a snapshot taken before calibration
            self.calibrator, self.quality = Calibrator(), Calibration()

    def stats(self) -> dict[str, Any]:
        return {
            "pulls": dict(self.pulls),
            "rewards": dict(self.rewards),
            "regret_micro": self.regret_micro,
            "progressive": self.quality.to_counts(),
        }

    def export(self) -> dict[str, Any]:
        return {
            "segments": {
                seg: {offer: {"n": int(mean.n), "mean": mean.get()} for offer, mean in offers.items()}
                for seg, offers in self.means.items()
            },
            "calibration": self.calibrator.export(),
        }

    def load(self, data: Mapping[str, Any]) -> None:
        for seg, offers in data["segments"].items():
            for offer, values in offers.items():
                mean = _mean()
                mean.n, mean._mean = int(values["n"]), float(values["mean"])
                self.means.setdefault(seg, {})[offer] = mean
        self.calibrator.load(data.get("calibration"))
        self._scores = {}

    @staticmethod
    def merge(exports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Reward means pooled per segment and offer."""
        segments: dict[str, dict[str, dict[str, float]]] = {}
        for export in exports:
            for segment_id, offers in export["segments"].items():
                for offer, arm in offers.items():
                    merged = segments.setdefault(segment_id, {}).setdefault(offer, {"n": 0, "mean": 0.0})
                    n = merged["n"] + arm["n"]
                    if n:
                        merged["mean"] = (merged["mean"] * merged["n"] + arm["mean"] * arm["n"]) / n
                    merged["n"] = n
        return {"segments": segments, "calibration": Calibrator.merge([e.get("calibration") for e in exports])}


_NO_MEANS: dict[str, stats.Mean] = {}  # a segment with no reward learnt yet


def _shrunk(mean: stats.Mean | None) -> float:
    """The mean reward shrunk towards 1/2 by one success and one failure of prior (``None``: none yet)."""
    n = mean.n if mean is not None else 0
    total = mean.get() * n if mean is not None else 0.0
    return round((total + 1) / (n + 2), 6)


def _mean() -> stats.Mean:
    """A running mean (River's, imported with the first one: River loads SciPy)."""
    from river import stats

    return stats.Mean()
