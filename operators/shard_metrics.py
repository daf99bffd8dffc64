"""A shard engine's counters, published to the Prometheus registry as increments (see :mod:`schemas.metrics`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.metrics import (
    ATTRIBUTED_REVENUE,
    AUDIENCE_CHANGES,
    CUSTOMERS,
    DECISIONS,
    DEFERRED,
    DUPLICATE_EVENTS,
    ERASED_EVENTS,
    EVENTS,
    EXPERIMENT_CONVERSIONS,
    EXPERIMENT_EXPOSURES,
    EXPERIMENT_REVENUE,
    INVALID_EVENTS,
    LATE_EVENTS,
    MODEL_OUTCOMES,
    MODEL_PREDICTED,
    OFFER_CHOICES,
    OFFER_REWARDS,
    OFFERS,
    ORDER_LINES_DROPPED,
    RECOMMENDATION_CHECKS,
    SUPPRESSIONS,
    UNKNOWN_FIELDS,
)

ENGINE_DEAD_LETTERS = ("future_dated", "too_old", "processing_error")  # reasons the shard engines count
MODEL_METRICS_SECONDS = 1.0
PUBLISH_SECONDS = 0.25  # a shard's counters reach the registry at most this often (and at the end)
_customers_by_shard: dict[tuple[str, int], int] = {}


class ShardMetrics:
    """Publishes one shard engine's counters as metric increments (called after every batch)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.published: dict[str, Any] = {}
        self.models_at = self.published_at = float("-inf")
        self._due: datetime | None = None  # when counts held back by the interval are due
        self.channels = {trigger.rule.id: trigger.rule.channel for trigger in engine.rules.triggers}

    def publish(self, final: bool = False) -> None:
        """Add what grew since the last call, at most every :data:`PUBLISH_SECONDS` (the models'
        counters once a second); ``final`` publishes everything now."""
        now = time.monotonic()
        if not final and now - self.published_at < PUBLISH_SECONDS:
            if self._due is None:
                wait = self.published_at + PUBLISH_SECONDS - now
                self._due = datetime.now(UTC) + timedelta(seconds=wait)
            return
        self.published_at, self._due = now, None
        stats, seen = self.engine.stats, self.published
        for name, count in _deltas(stats.get("events", {}), seen.setdefault("events", {})):
            _child(EVENTS, name).inc(count)
        for name, count in _deltas(stats.get("unknown_events", {}), seen.setdefault("unknown_events", {})):
            _child(EVENTS, name).inc(count)
        for rule, count in _deltas(stats.get("triggers", {}), seen.setdefault("triggers", {})):
            _child(DECISIONS, self.channels.get(rule, "unknown"), rule).inc(count)
        for reason, rules in stats.get("suppressions", {}).items():
            for rule, count in _deltas(rules, seen.setdefault("suppressions", {}).setdefault(reason, {})):
                _child(SUPPRESSIONS, reason, rule).inc(count)
        for rule, count in _deltas(stats.get("deferred", {}), seen.setdefault("deferred", {})):
            _child(DEFERRED, rule).inc(count)
        for offer, counts in stats.get("offers", {}).items():
            for kind, count in _deltas(counts, seen.setdefault("offers", {}).setdefault(offer, {})):
                _child(OFFERS, offer, kind).inc(count)
        for key, count in _deltas(stats.get("audience_changes", {}), seen.setdefault("audience_changes", {})):
            audience, _, change = key.rpartition(".")
            _child(AUDIENCE_CHANGES, audience, change).inc(count)
        for reason, count in _deltas(stats.get("order_lines_dropped", {}), seen.setdefault("order_lines_dropped", {})):
            _child(ORDER_LINES_DROPPED, reason).inc(count)
        unknown = {path: entry["count"] for path, entry in stats.get("unknown_fields", {}).items()}
        for path, count in _deltas(unknown, seen.setdefault("unknown_fields", {})):
            _child(UNKNOWN_FIELDS, path).inc(count)
        flat = {name: stats.get(name, 0) for name in ("late", "duplicates", "erased_events", *ENGINE_DEAD_LETTERS)}
        for name, count in _deltas(flat, seen.setdefault("flat", {})):
            if name == "late":
                LATE_EVENTS.inc(count)
            elif name == "duplicates":
                DUPLICATE_EVENTS.inc(count)
            elif name == "erased_events":
                ERASED_EVENTS.inc(count)
            else:
                _child(INVALID_EVENTS, name).inc(count)
        self._publish_measures(stats, seen)
        if self.engine.models is not None and (final or now - self.models_at >= MODEL_METRICS_SECONDS):
            self.models_at = now
            self._publish_models(self.engine.models.stats(), seen.setdefault("models", {}))
        engine = self.engine
        _customers_by_shard[(engine.role, id(engine))] = len(engine.customers)
        _child(CUSTOMERS, engine.role).set(
            sum(n for (role, _), n in list(_customers_by_shard.items()) if role == engine.role)
        )

    def due(self) -> datetime | None:
        """When held-back counters should be published (``None`` when nothing is held back)."""
        return self._due

    def _publish_measures(self, stats: dict[str, Any], seen: dict[str, Any]) -> None:
        """Experiments' exposures, conversions and revenue by arm; revenue attributed by model and rule."""
        arms = {
            (experiment, arm, name): value
            for experiment, by_arm in stats.get("experiments", {}).items()
            for arm, counts in by_arm.items()
            for name, value in counts.items()
        }
        metrics = {"exposed": EXPERIMENT_EXPOSURES, "conversions": EXPERIMENT_CONVERSIONS}
        for (experiment, arm, name), count in _deltas(arms, seen.setdefault("experiments", {})):
            if name == "revenue_cents":
                _child(EXPERIMENT_REVENUE, experiment, arm).inc(count / 100)
            else:
                _child(metrics[name], experiment, arm).inc(count)
        attributed = stats.get("attributed_revenue_cents", {})
        for key, cents in _deltas(attributed, seen.setdefault("attributed", {})):
            model, _, rule = key.partition(".")
            _child(ATTRIBUTED_REVENUE, model, self.channels.get(rule, "unknown"), rule).inc(cents / 100)

    def _publish_models(self, stats: dict[str, Any], seen: dict[str, Any]) -> None:
        for model in ("propensity", "next_best_offer"):
            progressive = stats[model]["progressive"]
            published = seen.setdefault(model, {})
            for column in ("positives", "negatives", "predicted_micro"):
                for decile, count in _deltas(_by_decile(progressive.get(column, {})), published.setdefault(column, {})):
                    if column == "predicted_micro":
                        _child(MODEL_PREDICTED, model, decile).inc(count / 1_000_000)
                    else:
                        _child(MODEL_OUTCOMES, model, decile, column[:-1]).inc(count)
        offers = stats["next_best_offer"]
        for offer, count in _deltas(offers["pulls"], seen.setdefault("pulls", {})):
            OFFER_CHOICES.labels(offer=offer).inc(count)
        for offer, count in _deltas(offers["rewards"], seen.setdefault("rewards", {})):
            OFFER_REWARDS.labels(offer=offer).inc(count)
        reco = stats["recommendations"]
        checks = {"hit": reco["hits"], "miss": reco["checked"] - reco["hits"]}
        for result, count in _deltas(checks, seen.setdefault("checks", {})):
            RECOMMENDATION_CHECKS.labels(result=result).inc(count)


def _by_decile(buckets: dict[str, int]) -> dict[str, int]:
    """Progressive counts by twentieth of the prediction (``"00"`` to ``"19"``), summed by tenth."""
    by_decile: dict[str, int] = {}
    for bucket, n in buckets.items():
        decile = str(int(bucket) // 2)
        by_decile[decile] = by_decile.get(decile, 0) + n
    return by_decile


_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up in the registry once (it keeps every child it made)."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def _deltas(current: dict[str, int], published: dict[str, int]) -> list[tuple[str, int]]:
    """What grew since the last call, and remember the new values."""
    out = []
    for key, value in current.items():
        delta = value - published.get(key, 0)
        if delta:
            out.append((key, delta))
            published[key] = value
    return out
