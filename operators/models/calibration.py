"""Calibration of a model's probabilities, learnt online from held-out outcomes.

A :class:`Calibrator` maps a model's raw score to the rate at which outcomes scored like it
turned out positive: binned isotonic regression. Raw scores fall into :data:`BINS` fixed bins
of their logit (half a unit wide, from -6 to 6: fine where scores crowd near 0 or 1); each bin
counts its positive and negative outcomes and the sum of its raw scores, integers only, so
that replicas merge exactly (counts add) and model files hold plain numbers. The map is the
pool-adjacent-violators fit of the bins' rates, each shrunk towards the bin's own score by
:data:`PRIOR_WEIGHT` pseudo-outcomes: monotone, and the identity until outcomes say otherwise.
Between bins it is linear, through (0, 0) and (1, 1) at the ends. As the model learns, what
its raw scores mean changes: the map is fitted on recent outcomes only (two generations of
counts of :data:`WINDOW` outcomes each: with counts of every outcome, the expected calibration
error of the propensity score was 0.038 on the generated stream of ``nudgeflow evaluate`` and
0.017 on the UCI invoices; with a window of 500, 0.010 on both).

The calibrator learns from outcomes the model had not learnt from when it scored them (the
owner scores, then the calibrator learns, then the model learns: progressive), so what it
corrects is the model's error on data it has not seen.

:func:`reliability` reads the progressive counts of :class:`~operators.models.propensity.Calibration`
as a reliability table: per tenth of the predicted probability, outcomes, mean prediction,
observed rate, and the expected calibration error.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import ConfigurationError

LOGIT_LIMIT = 6.0  # raw scores beyond logit ±6 share the first or last bin
BIN_WIDTH = 0.5  # in logit units
BINS = round(2 * LOGIT_LIMIT / BIN_WIDTH)
PRIOR_WEIGHT = 4  # pseudo-outcomes per bin at the bin's own score: the identity until outcomes outweigh it
WINDOW = 500  # outcomes per generation of counts: the map is fitted on the last 500 to 1,000
MICRO = 1_000_000  # raw scores summed in integer millionths (exact in any order)
DECILES = 10


def bin_of(raw: float) -> int:
    """The bin of a raw score (its logit, clamped to ±:data:`LOGIT_LIMIT`)."""
    if raw <= 0.0:
        return 0
    if raw >= 1.0:
        return BINS - 1
    logit = math.log(raw / (1.0 - raw))
    return min(BINS - 1, max(0, int((logit + LOGIT_LIMIT) // BIN_WIDTH)))


def _centre(index: int) -> float:
    """The score whose logit is at the middle of bin ``index``."""
    return 1.0 / (1.0 + math.exp(-(-LOGIT_LIMIT + BIN_WIDTH * (index + 0.5))))


CENTRES = tuple(_centre(i) for i in range(BINS))


class BinCounts(BaseModel):
    """Outcomes per bin of the raw score, and the raw scores' sum in millionths."""

    model_config = ConfigDict(extra="forbid")
    positives: Annotated[list[int], Field(min_length=BINS, max_length=BINS)]
    negatives: Annotated[list[int], Field(min_length=BINS, max_length=BINS)]
    raw_micro: Annotated[list[int], Field(min_length=BINS, max_length=BINS)]


class CalibratorParameters(BaseModel):
    """What :meth:`Calibrator.export` writes (checked when a model file is read)."""

    model_config = ConfigDict(extra="forbid")
    current: BinCounts
    previous: BinCounts


COLUMNS = ("positives", "negatives", "raw_micro")


def _empty() -> dict[str, list[int]]:
    return {name: [0] * BINS for name in COLUMNS}


class Calibrator:
    """Raw score to calibrated probability, from recent outcomes by bin of the raw score (see the module).

    The model it calibrates keeps learning, so what a raw score means drifts: the calibrator fits
    the outcomes of two generations, the current one (until it holds :data:`WINDOW` outcomes) and
    the one before, so the last ``WINDOW`` to ``2 * WINDOW`` outcomes."""

    def __init__(self) -> None:
        self.current = _empty()
        self.previous = _empty()
        self._knots: tuple[list[float], list[float]] | None = None  # the map, fitted again after learning

    @property
    def count(self) -> int:
        """Outcomes the map is fitted on."""
        return sum(sum(gen["positives"]) + sum(gen["negatives"]) for gen in (self.current, self.previous))

    def learn(self, raw: float, outcome: bool) -> None:
        """Count one outcome of a raw score the model gave before learning it."""
        current = self.current
        if sum(current["positives"]) + sum(current["negatives"]) >= WINDOW:
            self.previous, current = current, _empty()
            self.current = current
        index = bin_of(raw)
        current["positives" if outcome else "negatives"][index] += 1
        current["raw_micro"][index] += round(raw * MICRO)
        self._knots = None

    def __call__(self, raw: float) -> float:
        """The calibrated probability of a raw score."""
        xs, ys = self._knots or self._fit()
        if raw <= 0.0 or raw >= 1.0:
            return 0.0 if raw <= 0.0 else 1.0
        at = bisect_right(xs, raw)
        x0, x1, y0, y1 = xs[at - 1], xs[at], ys[at - 1], ys[at]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (raw - x0) / (x1 - x0)

    def _fit(self) -> tuple[list[float], list[float]]:
        """Pool adjacent violators over the bins' shrunk rates; the knots of the linear map."""
        counts = {
            name: [a + b for a, b in zip(self.current[name], self.previous[name], strict=True)] for name in COLUMNS
        }
        blocks: list[list[float]] = []  # [weight, rate, first bin, last bin]
        xs = [0.0]
        for i, centre in enumerate(CENTRES):
            n = counts["positives"][i] + counts["negatives"][i]
            weight = n + PRIOR_WEIGHT
            xs.append((counts["raw_micro"][i] / MICRO + PRIOR_WEIGHT * centre) / weight)
            blocks.append([weight, (counts["positives"][i] + PRIOR_WEIGHT * centre) / weight, i, i])
            while len(blocks) > 1 and blocks[-2][1] > blocks[-1][1]:
                (w0, r0, first, _), (w1, r1, _, last) = blocks[-2], blocks.pop()
                blocks[-1] = [w0 + w1, (w0 * r0 + w1 * r1) / (w0 + w1), first, last]
        ys = [0.0]
        for _, rate, first, last in blocks:
            ys.extend([rate] * int(last - first + 1))
        self._knots = ([*xs, 1.0], [*ys, 1.0])
        return self._knots

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the fitted map (fitted again on first use)."""
        return {**self.__dict__, "_knots": None}

    def export(self) -> dict[str, dict[str, list[int]]]:
        return {
            "current": {name: list(values) for name, values in self.current.items()},
            "previous": {name: list(values) for name, values in self.previous.items()},
        }

    def load(self, data: Mapping[str, Mapping[str, Sequence[int]]] | None) -> None:
        """Counts written by :meth:`export` (``None``, from a file written before calibration: none)."""
        data = data or {}
        for generation in ("current", "previous"):
            counts = data.get(generation) or {}
            loaded = {name: [int(v) for v in counts.get(name, [0] * BINS)] for name in COLUMNS}
            if any(len(values) != BINS for values in loaded.values()):
                raise ConfigurationError(f"calibration {generation}: {BINS} bins expected")
            setattr(self, generation, loaded)
        self._knots = None

    @staticmethod
    def merge(exports: Sequence[Mapping[str, Mapping[str, Sequence[int]]] | None]) -> dict[str, Any]:
        """The replicas' counts added, generation by generation (one calibrator over all their outcomes)."""
        present = [e for e in exports if e]
        return {
            generation: {
                name: [sum(int(e[generation][name][i]) for e in present) for i in range(BINS)] for name in COLUMNS
            }
            for generation in ("current", "previous")
        }


def reliability(positives: Sequence[int], negatives: Sequence[int], predicted_micro: Sequence[int]) -> dict[str, Any]:
    """Predicted against observed per tenth of the predicted probability, from progressive counts in
    equal buckets of it (a multiple of ten of them): per decile the outcomes, the mean prediction and
    the observed positive rate (empty deciles left out), and the expected calibration error (the
    outcome-weighted mean gap between the two)."""
    per = len(positives) // DECILES
    rows, total, gap = [], 0, 0.0
    for decile in range(DECILES):
        span = slice(decile * per, (decile + 1) * per)
        pos, n = sum(positives[span]), sum(positives[span]) + sum(negatives[span])
        if not n:
            continue
        mean = sum(predicted_micro[span]) / MICRO / n
        rows.append({"decile": decile, "outcomes": n, "predicted": round(mean, 4), "observed": round(pos / n, 4)})
        total += n
        gap += n * abs(mean - pos / n)
    return {"deciles": rows, "ece": round(gap / total, 4) if total else None}
