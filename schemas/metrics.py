"""The Prometheus metrics the engine exports: their names, help texts, labels and types.

The operators and sinks update them (in batches, not per event); every engine process serves
its own registry (:func:`flows.metrics.serve`), and Prometheus sums over processes. The README's
metrics table documents each one.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
SUPPRESSIONS = Counter(
    "nudgeflow_suppressions", "Decisions the contact policy did not deliver, by reason and rule", ["reason", "rule"]
)
DEFERRED = Counter("nudgeflow_deferred_decisions", "Decisions held for quiet hours, by rule", ["rule"])
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
    "Outcomes learnt by a model (propensity, next_best_offer), by decile of the calibrated probability it"
    " gave and outcome (ROC AUC and reliability follow from these counts, summed over processes)",
    ["model", "decile", "outcome"],
)
MODEL_PREDICTED = Counter(
    "nudgeflow_model_predicted",
    "Sum of the calibrated probabilities a model gave the outcomes it learnt, by model and decile: divided by"
    " nudgeflow_model_outcomes of the decile, the mean prediction to set against the observed rate",
    ["model", "decile"],
)
OFFER_CHOICES = Counter("nudgeflow_offer_choices", "Offers chosen by the next-best-offer policy", ["offer"])
OFFER_REWARDS = Counter("nudgeflow_offer_rewards", "Clicks or redemptions of chosen offers", ["offer"])
OFFERS = Counter(
    "nudgeflow_offers", "Offers of the catalogue given (in delivered triggers) and redeemed", ["offer", "kind"]
)
RECOMMENDATION_CHECKS = Counter(
    "nudgeflow_recommendation_checks", "Sampled next-product checks of the recommender, by result", ["result"]
)
CUSTOMERS = Gauge("nudgeflow_customers_in_state", "Customers held in state by this process, by stage", ["stage"])
ERASED_EVENTS = Counter(
    "nudgeflow_erased_events", "Events of erased customers dropped: their event time is at or before the erasure"
)
EXPERIMENT_EXPOSURES = Counter(
    "nudgeflow_experiment_exposures",
    "Customers exposed in an experiment (a decision made for them, delivered or held out), by experiment and arm",
    ["experiment", "arm"],
)
EXPERIMENT_CONVERSIONS = Counter(
    "nudgeflow_experiment_conversions",
    "Exposed customers who ordered within the conversion window, by experiment and arm",
    ["experiment", "arm"],
)
EXPERIMENT_REVENUE = Counter(
    "nudgeflow_experiment_revenue",
    "Revenue of exposed customers' orders within the conversion window, by experiment and arm",
    ["experiment", "arm"],
)
ATTRIBUTED_REVENUE = Counter(
    "nudgeflow_attributed_revenue",
    "Order revenue credited to the deliveries before the order, by attribution model, channel and rule",
    ["model", "channel", "rule"],
)
HTTP_REQUESTS = Counter(
    "nudgeflow_http_requests", "HTTP API requests answered, by route template and status", ["route", "status"]
)
HTTP_EVENTS = Counter(
    "nudgeflow_http_events",
    "Events received by the HTTP API, by result: accepted, rejected (contract) or failed (not taken by the stream)",
    ["result"],
)
WEBHOOK_LATENCY_BUCKETS = (*LATENCY_BUCKETS, 30.0, 60.0, 300.0, 1800.0)
WEBHOOK_DELIVERIES = Counter(
    "nudgeflow_webhook_deliveries",
    "Decisions a webhook destination took (delivered) or that went to the dead letters (dead_lettered)",
    ["destination", "result"],
)
WEBHOOK_ATTEMPTS = Counter(
    "nudgeflow_webhook_attempts",
    "Webhook requests, by destination and outcome (ok, http_429, http_5xx, http_4xx, timeout, connection)",
    ["destination", "outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "nudgeflow_webhook_latency_seconds",
    "From a decision reaching the webhook sink to its destination's 2xx answer (retries included)",
    ["destination"],
    buckets=WEBHOOK_LATENCY_BUCKETS,
)
WEBHOOK_PENDING = Gauge(
    "nudgeflow_webhook_pending",
    "Decisions not yet delivered to a webhook destination (queued or waiting to retry)",
    ["destination"],
)
