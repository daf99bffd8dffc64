"""Conversion propensity: P(order within a horizon) at a decision point, learnt online.

A River pipeline (``StandardScaler | LogisticRegression``) scores the customer's features
when a trigger is about to fire. The features are kept exactly as they were then (a tuple
of floats in the customer's state) and the model learns from them only when the outcome
resolves in event time: an order within the horizon gives 1, the horizon passing gives 0.
Nothing known after the decision enters its features.

The score rules read is calibrated: a :class:`~operators.models.calibration.Calibrator` maps the
pipeline's raw score to the rate at which outcomes scored like it turned out positive, learnt
from each outcome before the pipeline learns it (held out). Quality is measured by progressive
validation (each outcome is scored before either learns from it) into :class:`Calibration`,
whose counts add up across shards: for the calibrated score, and for the raw one beside it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from operators.models.calibration import Calibrator, CalibratorParameters, reliability
from schemas.errors import ConfigurationError
from state._native import decision_features as native_decision_features
from state._native import logistic_score
from state.catalogue import FeatureView

FEATURES: tuple[str, ...] = (
    "recency_days",
    "days_since_seen",
    "tenure_days",
    "orders",
    "monetary",
    "mean_order_gap_days",
    "cart_value",
    "cart_items",
    "session_products",
    "views_24h",
    "adds_24h",
    "views_7d",
    "adds_7d",
    "orders_30d",
)
NO_ORDER_DAYS = 365.0  # stands for "never ordered" in recency and order-gap features
LEARNING_RATE = 0.05
BUCKETS = 20  # calibration buckets of the predicted probability
UNLEARNT_SCORE = 0.5
"""The score of a new pipeline, whatever the inputs: its scaler maps each to 0 (no variance yet), and its
regression, without weights or intercept, gives the logistic function of 0."""


def decision_features(view: FeatureView) -> tuple[float, ...]:
    """The model's inputs at a decision point, in :data:`FEATURES` order (no later knowledge): read
    from the customer's features in one compiled call (``state/native/src/model_inputs.rs``), the
    floats ``tests/propensity_reference.py`` computes from the view's features."""
    return native_decision_features(view.state.features, view.now_ms, view.lifecycle.session_timeout_ms)


MICRO = 1_000_000  # sums kept in integer millionths, so that shards add up exactly in any order


@dataclass
class Calibration:
    """Progressive-validation counts: per bucket of the predicted probability, outcomes and the
    sum of predictions; the summed log loss. Integers only: counts of shards add up exactly."""

    positives: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    negatives: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    predicted_micro: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    log_loss_micro: int = 0

    def add(self, p: float, y: bool) -> None:
        bucket = min(BUCKETS - 1, int(p * BUCKETS))
        (self.positives if y else self.negatives)[bucket] += 1
        self.predicted_micro[bucket] += round(p * MICRO)
        q = min(max(p, 1e-15), 1 - 1e-15)
        self.log_loss_micro += round(-math.log(q if y else 1 - q) * MICRO)

    @property
    def count(self) -> int:
        return sum(self.positives) + sum(self.negatives)

    def auc(self) -> float | None:
        """ROC AUC from the bucketed counts (pairs within one bucket count half)."""
        pos, neg = sum(self.positives), sum(self.negatives)
        if not pos or not neg:
            return None
        below, area = 0, 0.0
        for p, n in zip(self.positives, self.negatives, strict=True):
            area += p * (below + n / 2)
            below += n
        return area / (pos * neg)

    def log_loss(self) -> float | None:
        return self.log_loss_micro / MICRO / self.count if self.count else None

    def summary(self) -> dict[str, Any]:
        auc, loss = self.auc(), self.log_loss()
        return {
            "outcomes": self.count,
            "positive_rate": round(sum(self.positives) / self.count, 4) if self.count else None,
            "roc_auc": None if auc is None else round(auc, 4),
            "log_loss": None if loss is None else round(loss, 4),
        }

    def reliability(self) -> dict[str, Any]:
        """Predicted against observed per decile of the prediction, and the expected calibration error."""
        return reliability(self.positives, self.negatives, self.predicted_micro)

    def to_counts(self) -> dict[str, Any]:
        """Nested counters (summed over shards by the run summary)."""
        return {
            "positives": {f"{i:02d}": n for i, n in enumerate(self.positives) if n},
            "negatives": {f"{i:02d}": n for i, n in enumerate(self.negatives) if n},
            "predicted_micro": {f"{i:02d}": n for i, n in enumerate(self.predicted_micro) if n},
            "log_loss_micro": self.log_loss_micro,
        }

    @classmethod
    def from_counts(cls, counts: Mapping[str, Any]) -> Calibration:
        def column(name: str) -> list[int]:
            values = counts.get(name, {})
            return [int(values.get(f"{i:02d}", 0)) for i in range(BUCKETS)]

        return cls(column("positives"), column("negatives"), column("predicted_micro"), counts.get("log_loss_micro", 0))


class _Scaler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    counts: dict[str, int]
    means: dict[str, float]
    vars: dict[str, float]


class PropensityParameters(BaseModel):
    """What :meth:`PropensityModel.export` writes (checked when a model file is read)."""

    model_config = ConfigDict(extra="forbid")
    features: list[str]
    scaler: _Scaler
    weights: dict[str, float]
    intercept: float
    learnt: int
    calibration: CalibratorParameters | None = None  # absent from files written before calibration: none learnt


class PropensityModel:
    """One replica of the propensity model (one per customer shard; see docs/models.md)."""

    name: ClassVar[str] = "propensity"
    parameters: ClassVar[type[BaseModel]] = PropensityParameters
    required_in_files: ClassVar[bool] = True
    _parameters: tuple[Any, ...] | None = None  # the pipeline's, as the native score reads them; None: read again

    def __init__(self, frozen: bool = False) -> None:
        self.frozen = frozen
        self.pipeline: Any = None  # River's, built by the first outcome learnt or model file loaded (see _build)
        self.quality = Calibration()  # of the calibrated score, the one rules read
        self.raw_quality = Calibration()  # of the pipeline's own score
        self.calibrator = Calibrator()
        self.drift: Any = None  # River's ADWIN, built with the pipeline
        self.drifts = 0
        self.learnt = 0

    def _build(self) -> None:
        """Build the pipeline and the drift detector, importing River (a third of a CPU-second): a run
        in which no outcome resolves never does. Until then the model scores as a new pipeline does."""
        if self.pipeline is None:
            from river import drift

            self.pipeline, self.drift = _pipeline(), drift.ADWIN()

    def score(self, x: tuple[float, ...]) -> float:
        """P(order) for inputs ``x``: the pipeline's score, calibrated."""
        return self.calibrator(self.raw_score(x))

    def raw_score(self, x: tuple[float, ...]) -> float:
        """P(order) for inputs ``x``, as the pipeline's ``predict_proba_one`` gives it: computed natively
        from the pipeline's parameters (read once after each change), or, before the scaler has seen
        any input, by the pipeline's own steps (before it is built: :data:`UNLEARNT_SCORE`)."""
        parameters = self._parameters or self._read_parameters()
        if parameters:
            return logistic_score(x, *parameters)
        if self.pipeline is None:
            return UNLEARNT_SCORE
        scaler, regression = self.pipeline.steps.values()
        scaled = scaler.transform_one(dict(zip(FEATURES, x, strict=True)))
        return regression.predict_proba_one(scaled).get(True, 0.5)

    def _read_parameters(self) -> tuple[Any, ...]:
        """The scaler's centres and scales (``var ** 0.5``, as it divides by), the regression's weights
        (those it lacks: as its dot product takes them, from its initializer if it has one, else 0) and
        intercept, by input; ``()`` if the scaler lacks a variance or one is negative, or there is no pipeline yet."""
        if self.pipeline is None:
            return ()
        scaler, regression = self.pipeline.steps.values()
        means, variances, weights = scaler.means, scaler.vars, regression._weights
        if any(name not in variances for name in FEATURES):
            return ()
        spreads = [variances[name] for name in FEATURES]
        if any(v < 0 for v in spreads):
            return ()
        centers = tuple(means[name] if v else 0.0 for name, v in zip(FEATURES, spreads, strict=True))
        scales = tuple(v**0.5 if v else 0.0 for v in spreads)
        self._parameters = (centers, scales, tuple(_weight(weights, name) for name in FEATURES), regression.intercept)
        return self._parameters

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the parameters read for scoring (they are read again after a restore)."""
        return {name: value for name, value in self.__dict__.items() if name != "_parameters"}

    def learn(self, x: tuple[float, ...], y: bool) -> tuple[float, float]:
        """Score the outcome first (progressive validation), then, unless frozen, learn the calibrator
        from the raw score and the pipeline from the inputs; return the raw and the calibrated score."""
        raw = self.raw_score(x)
        p = self.calibrator(raw)
        self._build()
        self.quality.add(p, y)
        self.raw_quality.add(raw, y)
        self.drift.update(abs(float(y) - p))
        if self.drift.drift_detected:
            self.drifts += 1
        if not self.frozen:
            self.fit_one(x, y, raw)
        return raw, p

    def fit_one(self, x: tuple[float, ...], y: bool, raw: float | None = None) -> None:
        """Learn one outcome without counting it in the quality: the calibrator from the raw score
        before the pipeline learns it (``raw``, if already computed), then the pipeline."""
        self._build()
        self.calibrator.learn(self.raw_score(x) if raw is None else raw, y)
        self.pipeline.learn_one(dict(zip(FEATURES, x, strict=True)), y)
        self._parameters = None
        self.learnt += 1

    def export(self) -> dict[str, Any]:
        """The model's parameters as plain numbers (no pickle; see :func:`load`)."""
        if self.pipeline is None:
            scaler_stats: dict[str, dict[str, Any]] = {"counts": {}, "means": {}, "vars": {}}
            return {
                "features": list(FEATURES),
                "scaler": scaler_stats,
                "weights": {},
                "intercept": 0.0,
                "learnt": 0,
                "calibration": self.calibrator.export(),
            }
        scaler = self.pipeline["StandardScaler"]
        regression = self.pipeline["LogisticRegression"]
        return {
            "features": list(FEATURES),
            "scaler": {
                "counts": dict(scaler.counts),
                "means": dict(scaler.means),
                "vars": dict(scaler.vars),
            },
            "weights": dict(regression.weights),
            "intercept": regression.intercept,
            "learnt": self.learnt,
            "calibration": self.calibrator.export(),
        }

    def load(self, data: Mapping[str, Any]) -> None:
        """Parameters written by :meth:`export` (validated by the caller)."""
        from river import utils as river_utils

        if list(data["features"]) != list(FEATURES):
            raise ConfigurationError("the propensity model was trained on other features")
        self._build()
        scaler = self.pipeline["StandardScaler"]
        scaler.counts = Counter({k: int(v) for k, v in data["scaler"]["counts"].items()})
        scaler.means = {k: float(v) for k, v in data["scaler"]["means"].items()}
        scaler.vars = {k: float(v) for k, v in data["scaler"]["vars"].items()}
        regression = self.pipeline["LogisticRegression"]
        regression._weights = river_utils.VectorDict(
            {k: float(v) for k, v in data["weights"].items()}, regression.initializer
        )
        regression.intercept = float(data["intercept"])
        self.learnt = int(data["learnt"])
        self.calibrator.load(data.get("calibration"))
        self._parameters = None

    def stats(self) -> dict[str, Any]:
        return {
            "learnt": self.learnt,
            "drifts": self.drifts,
            "progressive": self.quality.to_counts(),
            "progressive_raw": self.raw_quality.to_counts(),
        }

    @staticmethod
    def merge(exports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Weights averaged by how much each replica learnt, scaler statistics pooled."""
        learnt = [p["learnt"] for p in exports]
        total = sum(learnt) or 1
        share = [n / total if sum(learnt) else 1 / len(learnt) for n in learnt]
        names = exports[0]["features"]
        counts = {f: sum(p["scaler"]["counts"].get(f, 0) for p in exports) for f in names}

        def pooled(stat: str) -> dict[str, float]:
            out = {}
            for f in names:
                n = counts[f] or 1
                out[f] = sum(p["scaler"][stat].get(f, 0.0) * p["scaler"]["counts"].get(f, 0) for p in exports) / n
            return out

        return {
            "features": names,
            "scaler": {"counts": counts, "means": pooled("means"), "vars": pooled("vars")},
            "weights": {f: _weighted(share, [p["weights"].get(f, 0.0) for p in exports]) for f in names},
            "intercept": _weighted(share, [p["intercept"] for p in exports]),
            "learnt": sum(learnt),
            "calibration": Calibrator.merge([p.get("calibration") for p in exports]),
        }


def _weighted(shares: Sequence[float], values: Sequence[float]) -> float:
    return sum(s * v for s, v in zip(shares, values, strict=True))


def _weight(weights: Any, name: str) -> float:
    """A regression's weight of input ``name``, read as its dot product reads it: a weight it lacks comes
    from its initializer (and is kept) if it has one, else counts as 0."""
    try:
        return weights[name]
    except KeyError:
        return 0.0


def _pipeline() -> Any:
    """A scaler and a logistic regression (River's ``compose.Pipeline``)."""
    from river import compose, linear_model, optim, preprocessing

    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(LEARNING_RATE)),
    )
