"""What every online model follows, as River's estimators share ``learn_one`` and ``predict_one``.

A model learns one example at a time and answers one question: a scorer gives a number
(``score``), the recommender a list of products (``recommend``), the offer policy a choice
(``choose``). Beyond that, the shard's :class:`~operators.models.ShardModels` and the model files
handle every model alike, through this protocol: its parameters as plain numbers and names
(``export``, ``load``, and ``merge`` to pool the replicas of all shards into one file, checked
against ``parameters``), its counters for ``summary.json`` (``stats``), and ``frozen``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel


@runtime_checkable
class OnlineModel(Protocol):
    """One replica of a model (one per shard)."""

    name: ClassVar[str]  # its key in model files, in ``summary.json`` and in the shard's stats
    parameters: ClassVar[type[BaseModel]]  # the schema of what ``export`` writes, checked on load
    required_in_files: ClassVar[bool]  # whether a model file without it is refused (else: not loaded)
    frozen: bool  # score and measure, never learn

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        """Learn from one example (its arguments are the model's own)."""

    def export(self) -> dict[str, Any]:
        """The parameters, plain numbers and names only (no pickle)."""

    def load(self, data: Mapping[str, Any]) -> None:
        """Start from parameters written by :meth:`export` (or merged by :meth:`merge`)."""

    def stats(self) -> dict[str, Any]:
        """Counters for the run summary (summed over shards: integers, or nested counters)."""

    @staticmethod
    def merge(exports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One set of parameters from the replicas' exports, given in a fixed order."""


@runtime_checkable
class Scorer(OnlineModel, Protocol):
    """A model that rules can read as a number (e.g. ``propensity``)."""

    def score(self, x: tuple[float, ...]) -> float: ...
