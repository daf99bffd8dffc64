"""Prometheus metrics of one engine process (see the README's metrics table).

Each engine process serves its own ``/metrics`` (``NUDGEFLOW_METRICS_PORT``, plus the process
id when several processes share a host); Prometheus scrapes every process and sums with
``sum by (...)``. Counters are updated in batches by the operators and sinks, not per event.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

INPUT_LINES = Counter(
    "nudgeflow_input_lines", "Lines read from recordings: records passed on, or blank lines skipped", ["kind"]
)
EVENTS = Counter("nudgeflow_events", "Valid events accepted, by event name", ["event"])
INVALID_EVENTS = Counter("nudgeflow_invalid_events", "Events sent to the dead letters, by reason", ["reason"])
LATE_EVENTS = Counter("nudgeflow_late_events", "Events older than the event-time clock when applied")
DUPLICATE_EVENTS = Counter("nudgeflow_duplicate_events", "Events dropped as duplicates (same messageId)")
ORDER_LINES_DROPPED = Counter(
    "nudgeflow_order_lines_dropped", "Bad lines dropped from accepted orders and checkouts, by reason", ["reason"]
)
UNKNOWN_FIELDS = Counter(
    "nudgeflow_unknown_fields", "Fields the contract does not know, sent where none are expected, by path", ["path"]
)
DECISIONS = Counter("nudgeflow_decisions", "Triggers emitted, by channel and rule", ["channel", "rule"])
AUDIENCE_CHANGES = Counter(
    "nudgeflow_audience_changes", "Audience entries and exits, by audience and change", ["audience", "change"]
)
DECISION_LATENCY = Histogram(
    "nudgeflow_decision_latency_seconds",
    "From an event's arrival (or a timer's due moment) to its decision being delivered by the sink",
    ["origin"],
    buckets=LATENCY_BUCKETS,
)
KAFKA_LAG = Gauge(
    "nudgeflow_kafka_lag_messages", "High watermark minus the next offset to read", ["topic", "partition"]
)
SINK_RECORDS = Counter("nudgeflow_sink_records", "Records delivered by a sink, by sink and stream", ["sink", "stream"])
SINK_ERRORS = Counter(
    "nudgeflow_sink_errors", "Failed sink writes or deliveries, by sink and reason", ["sink", "reason"]
)
SINK_RETRIES = Counter("nudgeflow_sink_retries", "Sink writes retried, by sink", ["sink"])
MODEL_OUTCOMES = Counter(
    "nudgeflow_model_outcomes",
    "Outcomes learnt by the propensity model, by decile of the score it gave and outcome (ROC AUC and"
    " calibration follow from these counts, summed over processes)",
    ["model", "decile", "outcome"],
)
OFFER_CHOICES = Counter("nudgeflow_offer_choices", "Offers chosen by the next-best-offer policy", ["offer"])
OFFER_REWARDS = Counter("nudgeflow_offer_rewards", "Clicks or redemptions of chosen offers", ["offer"])
RECOMMENDATION_CHECKS = Counter(
    "nudgeflow_recommendation_checks", "Sampled next-product checks of the recommender, by result", ["result"]
)
CUSTOMERS = Gauge("nudgeflow_customers_in_state", "Customers held in state by this process, by stage", ["stage"])


def serve(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> None:
    """Serve ``/metrics`` on ``host`` (loopback by default; ``0.0.0.0``: every interface) at ``port``."""
    start_http_server(port, addr=host, registry=registry)


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
            EVENTS.labels(event=name).inc(count)
        for name, count in _deltas(stats.get("unknown_events", {}), seen.setdefault("unknown_events", {})):
            EVENTS.labels(event=name).inc(count)
        for rule, count in _deltas(stats.get("triggers", {}), seen.setdefault("triggers", {})):
            DECISIONS.labels(channel=self.channels.get(rule, "unknown"), rule=rule).inc(count)
        for key, count in _deltas(stats.get("audience_changes", {}), seen.setdefault("audience_changes", {})):
            audience, _, change = key.rpartition(".")
            AUDIENCE_CHANGES.labels(audience=audience, change=change).inc(count)
        for reason, count in _deltas(stats.get("order_lines_dropped", {}), seen.setdefault("order_lines_dropped", {})):
            ORDER_LINES_DROPPED.labels(reason=reason).inc(count)
        unknown = {path: entry["count"] for path, entry in stats.get("unknown_fields", {}).items()}
        for path, count in _deltas(unknown, seen.setdefault("unknown_fields", {})):
            UNKNOWN_FIELDS.labels(path=path).inc(count)
        flat = {name: stats.get(name, 0) for name in ("late", "duplicates", *ENGINE_DEAD_LETTERS)}
        for name, count in _deltas(flat, seen.setdefault("flat", {})):
            if name == "late":
                LATE_EVENTS.inc(count)
            elif name == "duplicates":
                DUPLICATE_EVENTS.inc(count)
            else:
                INVALID_EVENTS.labels(reason=name).inc(count)
        if self.engine.models is not None and (final or now - self.models_at >= MODEL_METRICS_SECONDS):
            self.models_at = now
            self._publish_models(self.engine.models.stats(), seen.setdefault("models", {}))
        engine = self.engine
        _customers_by_shard[(engine.role, id(engine))] = len(engine.customers)
        CUSTOMERS.labels(stage=engine.role).set(
            sum(n for (role, _), n in _customers_by_shard.items() if role == engine.role)
        )

    def due(self) -> datetime | None:
        """When held-back counters should be published (``None`` when nothing is held back)."""
        return self._due

    def _publish_models(self, stats: dict[str, Any], seen: dict[str, Any]) -> None:
        progressive = stats["propensity"]["progressive"]
        for outcome in ("positives", "negatives"):
            counts = progressive.get(outcome, {})
            by_decile = {f"{int(b) // 2}": 0 for b in counts}
            for bucket, n in counts.items():
                by_decile[f"{int(bucket) // 2}"] += n
            for decile, count in _deltas(by_decile, seen.setdefault(outcome, {})):
                MODEL_OUTCOMES.labels(model="propensity", decile=decile, outcome=outcome[:-1]).inc(count)
        offers = stats["next_best_offer"]
        for offer, count in _deltas(offers["pulls"], seen.setdefault("pulls", {})):
            OFFER_CHOICES.labels(offer=offer).inc(count)
        for offer, count in _deltas(offers["rewards"], seen.setdefault("rewards", {})):
            OFFER_REWARDS.labels(offer=offer).inc(count)
        reco = stats["recommendations"]
        checks = {"hit": reco["hits"], "miss": reco["checked"] - reco["hits"]}
        for result, count in _deltas(checks, seen.setdefault("checks", {})):
            RECOMMENDATION_CHECKS.labels(result=result).inc(count)


def _deltas(current: dict[str, int], published: dict[str, int]) -> list[tuple[str, int]]:
    """What grew since the last call, and remember the new values."""
    out = []
    for key, value in current.items():
        delta = value - published.get(key, 0)
        if delta:
            out.append((key, delta))
            published[key] = value
    return out
