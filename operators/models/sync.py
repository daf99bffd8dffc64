"""One recommender across shards: replicas that adopt a global copy at fixed event-time boundaries.

Event time is cut into periods of ``period_ms``. Each shard records the product touches its replica
learns, tagged with the period of the event's mark (:class:`ReplicaSync`), and hands them over once
everything of a period has been applied (:meth:`ReplicaSync.covered`). Version ``k`` of the global
recommender (:class:`GlobalVersions`) is every shard's touches of every period up to ``k``, learnt
period by period and, within a period, shard by shard: the same bytes whatever the order in which
the shards handed them over, so every shard, worker and process that builds it builds the same model.

Before applying anything of period ``j``, a replica adopts version ``j - 1 - lag`` and learns again its
own touches of the periods after it (:meth:`ReplicaSync.adopt`): between boundaries it scores with
the global copy plus its own learning since. With ``lag`` 1 a shard needs the others' touches of a
period only one whole period after it ended (see docs/models.md, "One model across shards").
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from operators.models.recommend import CoOccurrence, adopt

Touch = tuple[tuple[str, ...], str, str | None]
"""A product touch as the recommender learns it: the session's earlier products, the product, its category."""


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


class GlobalVersions:
    """The global recommender, built version by version from the shards' touches.

    One per process: every shard of the process hands its touches over here and adopts the bytes
    built here (built once, whichever shard asks first). A shard handing over the same period twice
    (after a restore) must hand over the same touches: anything else is refused, as it would make
    replays differ."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.touches: dict[int, dict[int, bytes]] = {}  # period -> shard -> its touches pickled
        self.covered = [-(1 << 62)] * shards  # per shard: the last period it has handed over whole
        self.model = CoOccurrence()
        self.built: int | None = None  # the version ``model`` is (None: none yet, an empty model)
        self.versions: dict[int, bytes] = {}  # versions built and still wanted, as bytes

    def hand_over(self, shard: int, upto: int, touches: dict[int, list[Touch]]) -> None:
        """``shard`` has applied everything of the periods up to ``upto``; ``touches`` are what it learnt
        in those it had not handed over yet (periods without any may be left out)."""
        for period, learnt in touches.items():
            if period > upto:
                raise ValueError(f"shard {shard} hands over period {period} before it has covered it ({upto})")
            data = pickle.dumps(learnt, protocol=pickle.HIGHEST_PROTOCOL)
            known = self.touches.setdefault(period, {}).setdefault(shard, data)
            if known != data:
                raise ValueError(f"shard {shard} handed over other touches for period {period} than before")
        self.covered[shard] = max(self.covered[shard], upto)

    def ready(self, version: int) -> bool:
        return min(self.covered) >= version

    def version(self, version: int) -> bytes | None:
        """Version ``version`` as bytes (``CoOccurrence.to_bytes``), building it if every shard has covered
        it; ``None`` if one has not yet. Versions older than the last built are no longer available."""
        if version in self.versions:
            return self.versions[version]
        if not self.ready(version):
            return None
        if self.built is not None and version < self.built:
            raise ValueError(f"global version {version} is older than the last built ({self.built})")
        for period in sorted(p for p in self.touches if p <= version):
            for shard in range(self.shards):
                for history, product, category in pickle.loads(self.touches[period].get(shard, _NONE)):
                    self.model.learn(list(history), product, category)
            del self.touches[period]
        self.built = version
        self.versions = {v: data for v, data in self.versions.items() if v >= version - 1}
        self.versions[version] = data = self.model.to_bytes()
        return data


_NONE = pickle.dumps([], protocol=pickle.HIGHEST_PROTOCOL)


@dataclass
class ReplicaSync:
    """One shard's side: its touches by period, what it has handed over, the version its replica holds."""

    schedule: SyncSchedule
    shard: int
    own: dict[int, list[Touch]] = field(default_factory=dict)  # by period, since the adopted version
    handed_over: int | None = None  # the last period handed over
    adopted: int | None = None  # the global version the replica was last made of

    def learnt(self, mark_ms: int, touch: Touch) -> None:
        """The replica learnt ``touch`` from an event of mark ``mark_ms``."""
        self.own.setdefault(self.schedule.period_of(mark_ms), []).append(touch)

    def covered(self, reached_ms: int, versions: GlobalVersions) -> None:
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

    def adopt(self, replica: CoOccurrence, version: int, data: bytes) -> None:
        """Make ``replica`` global version ``version`` (``data``) plus its own touches of the periods after it."""
        adopt(replica, data)
        self.own = {p: t for p, t in self.own.items() if p > version}
        for period in sorted(self.own):
            _learn(replica, self.own[period])
        self.adopted = version

    def state(self) -> tuple[dict[int, list[Touch]], int | None, int | None]:
        """What a snapshot keeps (the replica itself is in the models' snapshot)."""
        return self.own, self.handed_over, self.adopted

    @classmethod
    def restored(cls, schedule: SyncSchedule, shard: int, state: Sequence[object]) -> ReplicaSync:
        own, handed_over, adopted = state
        return cls(schedule, shard, dict(own), handed_over, adopted)  # type: ignore[arg-type, call-overload]


def _learn(replica: CoOccurrence, touches: Iterable[Touch]) -> None:
    for history, product, category in touches:
        replica.learn(list(history), product, category)
