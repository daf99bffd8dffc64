"""Lagged global learning, measured: shard engines that adopt global parameters at event-time boundaries.

Each shard runs its own single-shard engine, as ``shards_bench.py`` runs them, but all shards advance
together, one period of event time at a time. At each boundary, a global learner learns every shard's
examples of the period that just ended (shard by shard, in the shard's order: how the shards' deltas
would be merged), and every replica adopts it:

- the recommender's product links and counts add up, so the global copy is exactly what one
  replica fed every shard's product events would hold (but for the order of float sums and pruning);
- the propensity model (River ``StandardScaler | LogisticRegression``, SGD) either copies one global
  learner fed all examples, or averages the replicas' weights (weighted by the examples each learnt in
  the period; the scaler's statistics pooled exactly, as a global scaler has them).

Between boundaries a replica learns its own examples (``own``) or nothing (``global only``); with a
lag of one period, a replica adopts at boundary k the global parameters of boundary k-1 plus its own
examples since (no shard ever waits for another's period to end).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flows.evaluate import Run, auc
from operators.engine import EngineConfig
from operators.models import CHECK, ShardModels, _journal_entries
from operators.models.propensity import PropensityModel
from operators.models.recommend import CoOccurrence, adopt
from operators.models.sync import GlobalVersions, Propensity, Recommendations, ReplicaSync, SyncSchedule
from operators.rules import load_rules

Example = tuple[tuple[float, ...], bool]
Touch = tuple[tuple[str, ...], str, str | None]


@dataclass(frozen=True)
class Variant:
    """How replicas adopt global parameters at a boundary."""

    own: bool = True  # learn their own examples between boundaries
    lag: int = 0  # periods the adopted global parameters lag behind the boundary (0 or 1)
    average: bool = False  # propensity: average the replicas' weights instead of copying one global learner
    versions: bool = False  # the engine's mechanism (operators/models/sync.py) instead of this harness's


VARIANTS: dict[str, Variant] = {
    "none": Variant(),  # the engines advance in lockstep but never adopt (checks the harness: today's 16 shards)
    "global+own": Variant(),
    "global only": Variant(own=False),
    "global lag 1 +own": Variant(lag=1),
    "average+own": Variant(average=True),
    "sync.py lag 1 +own": Variant(lag=1, versions=True),  # must give the "global lag 1 +own" row
}


class _Shard:
    """One shard's engine, fed period by period, with the examples its models learnt in the period."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.run = Run(load_rules(), EngineConfig())
        self.models: ShardModels = self.run.customers.models  # type: ignore[assignment]
        self.models.take_journal()  # from now on the recommender's product touches are journalled
        self.examples: list[Example] = []
        self.run.batch = []

        def outcome(customer: str, decided_ms: int, x: tuple[float, ...], raw: float, p: float, y: bool) -> None:
            self.run._outcome(customer, decided_ms, x, raw, p, y)  # the progressive record the AUC is computed from
            self.examples.append((x, y))

        self.models.on_outcome = outcome

    def feed(self, lines: Sequence[bytes]) -> None:
        run = self.run
        for line in lines:
            run._add(run._record(line)[0])
        batch, run.batch = run.batch, []
        run._read(run.pipeline.feed(batch))

    def period_touches(self) -> list[Touch]:
        """The product touches learnt since the last call (the checks journalled with them left out)."""
        journal = self.models.take_journal() or b""
        return [entry for entry in _journal_entries(journal) if entry[0] != CHECK]  # type: ignore[misc]


def lockstep_quality(
    parts: list[list[tuple[int, bytes]]], period_ms: int, variant: Variant
) -> tuple[int, float, float, float | None]:
    """Sampled views, hit rates of the model and of most-popular, propensity AUC, over all shards,
    when replicas adopt global parameters every ``period_ms`` of event time (``parts``: each shard's
    (event time, line) pairs in order)."""
    adopt = variant is not VARIANTS["none"]
    shards = [_Shard(number) for number in range(len(parts))]
    recommender, propensity = CoOccurrence(), PropensityModel()
    before_reco, before_propensity = recommender.to_bytes(), propensity.export()
    first = min(part[0][0] for part in parts if part) // period_ms
    last = max(part[-1][0] for part in parts if part) // period_ms
    cursors = [0] * len(parts)
    schedule, count = SyncSchedule(period_ms, variant.lag), len(parts)
    kinds = (Recommendations(), Propensity())
    versions = [GlobalVersions(count, kind) for kind in kinds] if variant.versions else []
    syncs = [[ReplicaSync(schedule, shard, kind=kind) for kind in kinds] for shard in range(count)]
    for period in range(first, last + 1):
        end = (period + 1) * period_ms
        for i, (shard, part) in enumerate(zip(shards, parts, strict=True)):
            start = cursors[i]
            while cursors[i] < len(part) and part[cursors[i]][0] < end:
                cursors[i] += 1
            shard.feed([line for _, line in part[start : cursors[i]]])
        touches = [shard.period_touches() for shard in shards]
        examples = [shard.examples for shard in shards]
        if not adopt:
            for shard in shards:
                shard.examples = []
            continue
        for shard_touches in touches:
            for touch in shard_touches:
                Recommendations().learn(recommender, touch)
        for shard_examples in examples:
            for x, y in shard_examples:
                propensity.fit_one(x, y)
        now_reco, now_propensity = recommender.to_bytes(), propensity.export()
        for shard_syncs, shard_touches, shard_examples in zip(syncs, touches, examples, strict=True):
            learnt_now = (shard_touches, shard_examples)
            for sync, learnt, model_versions in zip(shard_syncs, learnt_now, versions, strict=False):
                for example in learnt:
                    sync.learnt(period * period_ms, example)
                sync.covered(end, model_versions)
        if variant.average:
            now_propensity = _averaged(now_propensity, shards)
        adopted = (before_reco, before_propensity) if variant.lag else (now_reco, now_propensity)
        for shard, own_touches, own_examples in zip(shards, touches, examples, strict=True):
            since = (own_touches, own_examples) if variant.lag else ([], [])
            _adopt(shard, *adopted, *since)
            replicas = (shard.models.recommender, shard.models.propensity)
            for sync, replica, model_versions in zip(syncs[shard.number], replicas, versions, strict=False):
                wanted = sync.needs(end)  # adopted again, as the engine's mechanism makes them
                if wanted is not None:
                    sync.adopt(replica, wanted, model_versions.version(wanted))  # type: ignore[arg-type]
            shard.models.recommender.frozen = shard.models.propensity.frozen = not variant.own
            shard.examples = []
        before_reco, before_propensity = now_reco, now_propensity
    for shard in shards:
        shard.run._read(shard.run.pipeline.finish())
    stats = [shard.models.recommender.stats() for shard in shards]
    checked, hits, popular = (sum(s[name] for s in stats) for name in ("checked", "hits", "most_popular_hits"))
    records = [record for shard in shards for record in shard.run.records]
    scores, labels = [p for p, *_ in records], [y for *_, y in records]
    return checked, hits / checked, popular / checked, auc(scores, labels)


def _adopt(
    shard: _Shard, reco: bytes, propensity: dict[str, Any], touches: list[Touch], examples: list[Example]
) -> None:
    """The shard's replicas become the global ones, plus what it learnt itself since (``touches``, ``examples``)."""
    models = shard.models
    adopt(models.recommender, reco)
    for touch in touches:
        Recommendations().learn(models.recommender, touch)
    if propensity["learnt"]:
        models.propensity.load(propensity)
        for x, y in examples:
            models.propensity.fit_one(x, y)


def _averaged(global_export: dict[str, Any], shards: list[_Shard]) -> dict[str, Any]:
    """The replicas' regression weights averaged, each by the examples it learnt in the period (those
    that learnt none keep the last average); the scaler's statistics as the global learner pooled them."""
    learnt = [len(shard.examples) for shard in shards]
    if not sum(learnt):
        return global_export
    exports = [shard.models.propensity.export() for shard in shards]
    averaged = PropensityModel.merge([{**e, "learnt": n} for e, n in zip(exports, learnt, strict=True)])
    return {**global_export, "weights": averaged["weights"], "intercept": averaged["intercept"]}
