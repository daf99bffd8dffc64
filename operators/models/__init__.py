"""Online models inside the dataflow (see docs/models.md for where they score and learn).

Each shard engine holds one :class:`ShardModels`: its own replica of every model, fed by the
decisions and outcomes of that shard's customers, in the shard's deterministic order.
"""

from __future__ import annotations

from typing import Any, Literal

from operators.models.propensity import PropensityModel, decision_features
from state.catalogue import FeatureView
from state.customer import MAX_PENDING_OUTCOMES, CustomerState

ModelMode = Literal["learn", "frozen", "off"]
FEATURES_KEY = "~propensity_features"


class ShardModels:
    """The models of one shard: scores at decision points, learning when outcomes resolve."""

    def __init__(self, mode: ModelMode, horizon_ms: int) -> None:
        self.mode = mode
        self.horizon_ms = horizon_ms
        self.propensity = PropensityModel(frozen=mode == "frozen")
        self.scorers = {"propensity": self.propensity_score}
        self.dropped = 0  # decisions whose outcome was never learnt (bound reached)

    def propensity_score(self, view: FeatureView) -> float:
        return self.propensity.score(view.memo(FEATURES_KEY, decision_features))

    def decided(self, state: CustomerState, view: FeatureView) -> int:
        """Keep the decision's features until its outcome; return when the oldest open one expires."""
        state.outcomes.append((view.now_ms, view.memo(FEATURES_KEY, decision_features)))
        if len(state.outcomes) > MAX_PENDING_OUTCOMES:
            del state.outcomes[0]
            self.dropped += 1
        return state.outcomes[0][0] + self.horizon_ms

    def ordered(self, state: CustomerState, at_ms: int) -> int | None:
        """An order at ``at_ms``: every open decision it falls within the horizon of was a success.

        Returns when the oldest decision still open expires."""
        still_open = []
        for decided_ms, x in state.outcomes:
            if decided_ms <= at_ms <= decided_ms + self.horizon_ms:
                self.propensity.learn(x, True)
            else:
                still_open.append((decided_ms, x))
        state.outcomes = still_open
        return still_open[0][0] + self.horizon_ms if still_open else None

    def expire(self, state: CustomerState, now_ms: int) -> int | None:
        """Decisions whose horizon passed without an order are failures; return the next expiry."""
        horizon = self.horizon_ms
        while state.outcomes and state.outcomes[0][0] + horizon <= now_ms:
            self.propensity.learn(state.outcomes.pop(0)[1], False)
        return state.outcomes[0][0] + horizon if state.outcomes else None

    def stats(self) -> dict[str, Any]:
        model = self.propensity
        return {
            "propensity": {
                "learnt": model.learnt,
                "drifts": model.drifts,
                "dropped": self.dropped,
                "progressive": model.quality.to_counts(),
            }
        }

    def export(self) -> dict[str, Any]:
        return {"propensity": self.propensity.export()}

    def load(self, data: dict[str, Any]) -> None:
        self.propensity.load(data["propensity"])
