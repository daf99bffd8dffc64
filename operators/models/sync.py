"""One model across shards: replicas that adopt a global version at fixed event-time boundaries.

Event time is cut into periods of ``period_ms``. Each shard records the examples its replica learns
(the recommender's product touches, the propensity model's outcomes), tagged with the period of the
event's mark (:class:`ReplicaSync`), and hands them over once everything of a period has been applied
(:meth:`ReplicaSync.covered`). Version ``k`` of the global model (:class:`GlobalVersions`) is every
shard's examples of every period up to ``k``, learnt period by period and, within a period, shard by
shard: the same bytes whatever the order in which the shards handed them over, so every shard, worker
and process that builds it builds the same model.

Before applying anything of period ``j``, a replica adopts version ``j - 1 - lag`` and learns again its
own examples of the periods after it (:meth:`ReplicaSync.adopt`): between boundaries it scores with
the global version plus its own learning since. With ``lag`` 1 a shard needs the others' examples of a
period only one whole period after it ended (see docs/models.md, "One model across shards").
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import orjson

from operators.models import BASKET
from operators.models.propensity import PropensityModel
from operators.models.recommend import CoOccurrence, adopt

Touch = tuple[tuple[str, ...], str, str | None]
"""A product touch as the recommender learns it: the session's earlier products, the product, its category."""
Basket = tuple[str, Any]
"""An order's basket as the recommender learns it: ``BASKET`` and the basket ``learn_order`` returned."""
Outcome = tuple[tuple[float, ...], bool]
"""An outcome as the propensity model learns it: the decision's inputs, and whether an order followed."""
M = TypeVar("M")


class Versioned(Protocol[M]):
    """How a model is versioned: a fresh global copy, learning an example, its bytes, adopting them."""

    def fresh(self) -> M: ...

    def learn(self, model: M, example: Any) -> None: ...

    def to_bytes(self, model: M) -> bytes: ...

    def adopt(self, replica: M, data: bytes) -> None:
        """Make ``replica`` hold the parameters of ``data``, keeping its own mode and quality counters."""
        ...

    def relearn(self, replica: M, data: bytes) -> bool:
        """Whether adopting ``data`` replaced what ``replica`` learnt (its own examples since are then learnt again)."""
        ...


class Recommendations:
    """The recommender, versioned: touches are learnt as a replica learns them (links and counts add up)."""

    def fresh(self) -> CoOccurrence:
        return CoOccurrence()

    def learn(self, model: CoOccurrence, example: Touch | Basket) -> None:
        if example[0] == BASKET:
            model.learn_basket(example[1])
        else:
            history, product, category = example
            model.learn(list(history), product, category)

    def to_bytes(self, model: CoOccurrence) -> bytes:
        return model.to_bytes()

    def adopt(self, replica: CoOccurrence, data: bytes) -> None:
        adopt(replica, data)

    def relearn(self, replica: CoOccurrence, data: bytes) -> bool:
        return True


class Propensity:
    """The propensity model, versioned: one global learner fed every shard's outcomes (averaging the replicas'
    SGD weights instead falls behind it as the periods grow: bench/shards_bench.py)."""

    def fresh(self) -> PropensityModel:
        return PropensityModel()

    def learn(self, model: PropensityModel, example: Outcome) -> None:
        """Learn without scoring first: a global copy keeps no progressive quality, and a replica learning
        its own outcomes again has counted them already."""
        model.fit_one(*example)

    def to_bytes(self, model: PropensityModel) -> bytes:
        return orjson.dumps(model.export())  # floats written so that they read back exactly

    def adopt(self, replica: PropensityModel, data: bytes) -> None:
        """Load the version's parameters. A version of nothing leaves the replica as it is: no shard had
        learnt anything up to it, so the replica holds exactly its own examples since, as adopting would
        make it (and empty statistics loaded would leave its scaler unable to learn)."""
        parameters = orjson.loads(data)
        if parameters["learnt"]:
            replica.load(parameters)

    def relearn(self, replica: PropensityModel, data: bytes) -> bool:
        """Whether adopting ``data`` replaces what the replica learnt (then its own examples since are learnt again)."""
        return bool(orjson.loads(data)["learnt"])


@dataclass(frozen=True)
class SyncSchedule:
    """Where the boundaries are, and which global version a replica uses when."""

    period_ms: int
    lag: int = 1  # whole periods between the end of a version's last period and its adoption

    def __post_init__(self) -> None:
        if self.period_ms <= 0 or self.lag < 0:
            raise ValueError(f"a sync period must be positive and its lag not negative: {self}")

    def period_of(self, mark_ms: int) -> int:
        return mark_ms // self.period_ms

    def version_for(self, period: int) -> int:
        """The global version replicas use while applying what falls in ``period``."""
        return period - 1 - self.lag


class GlobalVersions(Generic[M]):
    """A global model, built version by version from the shards' examples.

    One per model and process: every shard of the process hands its examples over here and adopts the
    bytes built here (built once, whichever shard asks first). A shard handing over the same period
    twice (after a restore) must hand over the same examples: anything else is refused, as it would
    make replays differ."""

    def __init__(self, shards: int, kind: Versioned[M] | None = None) -> None:
        self.shards = shards
        self.kind: Versioned[Any] = kind or Recommendations()
        self.examples: dict[int, dict[int, bytes]] = {}  # period -> shard -> its examples pickled
        self.covered = [-(1 << 62)] * shards  # per shard: the last period it has handed over whole
        self.model = self.kind.fresh()
        self.built: int | None = None  # the version ``model`` is (None: none yet, an empty model)
        self.versions: dict[int, bytes] = {}  # versions built and still wanted, as bytes

    def hand_over(self, shard: int, upto: int, examples: dict[int, list[Any]]) -> None:
        """``shard`` has applied everything of the periods up to ``upto``; ``examples`` are what it learnt
        in those it had not handed over yet (periods without any may be left out). Periods already in a
        built version are not learnt twice."""
        for period, learnt in examples.items():
            if period > upto:
                raise ValueError(f"shard {shard} hands over period {period} before it has covered it ({upto})")
            if self.built is not None and period <= self.built:
                continue
            data = pickle.dumps(learnt, protocol=pickle.HIGHEST_PROTOCOL)
            known = self.examples.setdefault(period, {}).setdefault(shard, data)
            if known != data and pickle.loads(known) != learnt:  # (equal lists may pickle apart: shared strings)
                raise ValueError(f"shard {shard} handed over other examples for period {period} than before")
        self.covered[shard] = max(self.covered[shard], upto)

    def ready(self, version: int) -> bool:
        return min(self.covered) >= version

    def version(self, version: int) -> bytes | None:
        """Version ``version`` as bytes (``Versioned.to_bytes``), building it if every shard has covered
        it; ``None`` if one has not yet. Versions older than the last built are no longer available."""
        if version in self.versions:
            return self.versions[version]
        if not self.ready(version):
            return None
        if self.built is not None and version < self.built:
            raise ValueError(f"global version {version} is older than the last built ({self.built})")
        for period in sorted(p for p in self.examples if p <= version):
            for shard in range(self.shards):
                for example in pickle.loads(self.examples[period].get(shard, _NONE)):
                    self.kind.learn(self.model, example)
            del self.examples[period]
        self.built = version
        self.versions = {v: data for v, data in self.versions.items() if v >= version - 1}
        self.versions[version] = data = self.kind.to_bytes(self.model)
        return data


_NONE = pickle.dumps([], protocol=pickle.HIGHEST_PROTOCOL)


@dataclass
class ReplicaSync:
    """One shard's side of one model: its examples by period, what it has handed over, the version its
    replica holds."""

    schedule: SyncSchedule
    shard: int
    own: dict[int, list[Any]] = field(default_factory=dict)  # by period, since the adopted version
    handed_over: int | None = None  # the last period handed over
    adopted: int | None = None  # the global version the replica was last made of
    kind: Versioned[Any] = field(default_factory=Recommendations)

    def learnt(self, mark_ms: int, example: Any) -> None:
        """The replica learnt ``example`` (a :data:`Touch`, an :data:`Outcome`) from something of mark ``mark_ms``."""
        self.own.setdefault(self.schedule.period_of(mark_ms), []).append(example)

    def covered(self, reached_ms: int, versions: GlobalVersions[Any]) -> None:
        """Everything with a mark before ``reached_ms`` has been applied: hand over the periods it completes."""
        upto = self.schedule.period_of(reached_ms) - 1
        if self.handed_over is not None and upto <= self.handed_over:
            return
        start = self.handed_over
        versions.hand_over(
            self.shard, upto, {p: t for p, t in self.own.items() if (start is None or p > start) and p <= upto}
        )
        self.handed_over = upto

    def needs(self, mark_ms: int) -> int | None:
        """The version to adopt before applying something of mark ``mark_ms`` (``None``: the one held)."""
        version = self.schedule.version_for(self.schedule.period_of(mark_ms))
        return version if self.adopted is None or version > self.adopted else None

    def adopt(self, replica: Any, version: int, data: bytes) -> None:
        """Make ``replica`` global version ``version`` (``data``) plus its own examples of the periods after it."""
        self.kind.adopt(replica, data)
        self.own = {p: t for p, t in self.own.items() if p > version}
        if self.kind.relearn(replica, data):
            for period in sorted(self.own):
                for example in self.own[period]:
                    self.kind.learn(replica, example)
        self.adopted = version

    def state(self) -> tuple[dict[int, list[Any]], int | None, int | None]:
        """What a snapshot keeps (the replica itself is in the models' snapshot)."""
        return self.own, self.handed_over, self.adopted

    @classmethod
    def restored(
        cls, schedule: SyncSchedule, shard: int, state: Sequence[Any], kind: Versioned[Any] | None = None
    ) -> ReplicaSync:
        own, handed_over, adopted = state
        return cls(schedule, shard, dict(own), handed_over, adopted, kind or Recommendations())
