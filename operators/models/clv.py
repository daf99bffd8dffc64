"""Lifetime value: the BG/NBD and Gamma-Gamma population parameters in a model file.

The parameters are fitted off the stream, on history (``nudgeflow fit``, :mod:`flows.fit`, with
:mod:`operators.models.btyd`), and written to the model file's ``clv`` entry; the stream scores
each customer from them and the customer's own purchases. The replicas do not learn them:
:class:`LifetimeValue` follows the model protocol so that a run's ``models.json`` carries the entry
it started from (its ``learn`` does nothing, ``merge`` keeps the loaded parameters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the formulas need numpy and scipy: imported where used, not by every run
    from operators.models.btyd import BgNbd, GammaGamma

_STRICT = ConfigDict(extra="forbid")


class BgNbdParameters(BaseModel):
    """Purchase rate ``Gamma(r, alpha)`` (alpha in days), dropout after a purchase ``Beta(a, b)``."""

    model_config = _STRICT
    r: float = Field(gt=0)
    alpha: float = Field(gt=0)
    a: float = Field(gt=0)
    b: float = Field(gt=0)


class GammaGammaParameters(BaseModel):
    """Order value ``Gamma(p, nu)`` with ``nu ~ Gamma(q, v)`` (v in currency units)."""

    model_config = _STRICT
    p: float = Field(gt=0)
    q: float = Field(gt=0)
    v: float = Field(gt=0)


class FitCheckRow(BaseModel):
    model_config = _STRICT
    repeat: str  # "0".."6", "7+"
    observed: int
    expected: float


class SpendFit(BaseModel):
    """How the Gamma-Gamma fit went."""

    model_config = _STRICT
    customers: int  # repeat buyers with a positive mean order value
    log_likelihood: float
    converged: bool
    iterations: int
    standard_errors: dict[str, float | None] = {}
    left_out: int = 0  # repeat buyers left out: a mean order value of 0 or less
    frequency_correlation: float | None = None  # of repeat purchases and mean value (the model assumes none)


class FitDiagnostics(BaseModel):
    """How the parameters were fitted (``nudgeflow fit``)."""

    model_config = _STRICT
    customers: int
    repeat_buyers: int
    log_likelihood: float
    converged: bool
    iterations: int
    calibration_end: str  # ISO 8601: T of every customer is measured to it
    source: list[str]  # the recordings read
    orders: int = 0  # orders used
    purchase: str = "order"  # what counts as one purchase: an order, or a UTC day with orders ("day")
    negative_orders: int = 0  # orders used whose value is below 0 (returned lines)
    standard_errors: dict[str, float | None] = {}
    check: list[FitCheckRow] = []  # customers by repeat purchases, observed against expected
    spend: SpendFit | None = None
    skipped: dict[str, int] = {}  # orders not used, by reason


class ClvParameters(BaseModel):
    """The model file's ``clv`` entry (all times in days: ``time_unit_days`` is 1)."""

    model_config = _STRICT
    bgnbd: BgNbdParameters
    gamma_gamma: GammaGammaParameters | None = None
    time_unit_days: float = Field(1.0, gt=0)
    fitted: FitDiagnostics | None = None

    def purchases(self) -> BgNbd:
        """The BG/NBD parameters for :mod:`operators.models.btyd`, in days."""
        from operators.models.btyd import BgNbd

        unit = self.time_unit_days
        return BgNbd(self.bgnbd.r, self.bgnbd.alpha * unit, self.bgnbd.a, self.bgnbd.b)

    def spend(self) -> GammaGamma | None:
        """The Gamma-Gamma parameters for :mod:`operators.models.btyd` (``None``: not fitted)."""
        from operators.models.btyd import GammaGamma

        g = self.gamma_gamma
        return None if g is None else GammaGamma(g.p, g.q, g.v)


class LifetimeValue:
    """One replica's copy of the lifetime value parameters (one per shard, like every model); loaded
    from a model file, never learnt."""

    name: ClassVar[str] = "clv"
    parameters: ClassVar[type[BaseModel]] = ClvParameters
    required_in_files: ClassVar[bool] = False  # files written before it was added have none

    def __init__(self) -> None:
        self.frozen = False
        self.fitted: dict[str, Any] | None = None  # the model file's entry, as loaded

    def learn(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to learn in the stream: the parameters are fitted on history (``nudgeflow fit``)."""

    def export(self) -> dict[str, Any]:
        return dict(self.fitted) if self.fitted else {}

    def load(self, data: Mapping[str, Any]) -> None:
        self.fitted = ClvParameters.model_validate(data).model_dump()

    def stats(self) -> dict[str, Any]:
        return {"replicas_loaded": int(self.fitted is not None)}

    def current(self) -> ClvParameters | None:
        """The parameters loaded (``None``: none were)."""
        return None if self.fitted is None else ClvParameters.model_validate(self.fitted)

    @staticmethod
    def merge(exports: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        """The entry the replicas were loaded with (all the same); ``None`` when none was."""
        return next((dict(e) for e in exports if e), None)
