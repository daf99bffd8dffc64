"""Every output stream, declared once: its name, and where it goes (Kafka, the Redis store, a file).

The engine names each :class:`schemas.items.Output` by its stream; the Kafka sink sends it to the
topic ``NUDGEFLOW_TOPIC_PREFIX`` + name, the Redis store keeps it in a customer's profile, and a run
on recordings writes it to its file in the output folder. A trigger goes to the stream of its
rule's channel (``triggers.<channel>``), or to ``triggers.shadow`` when its rule is in shadow mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Channel = Literal["push", "in_app", "email", "sms"]
"""The delivery channels a trigger rule may name."""
CHANNELS: tuple[Channel, ...] = get_args(Channel)

TRIGGERS_PREFIX = "triggers."
SHADOW_TRIGGERS = "triggers.shadow"
AUDIENCE_CHANGES = "audience_changes"
SHADOW_AUDIENCE_CHANGES = "audience_changes.shadow"
DEAD_LETTERS = "dead_letters"
SUPPRESSIONS = "suppressions"
STATS = "stats"
PROFILES = "profiles"
MODELS = "models"
ERASURES = "erasures"  # the erasure ledger: one record per erasure applied (schemas.erasures)
MODEL_FILE = "models.json"
ATTRIBUTIONS = "attributions"
EXPERIMENTS = "experiments"


@dataclass(frozen=True, slots=True)
class Stream:
    """One output stream and where its records go."""

    name: str
    file: str | None = None  # its file in an output folder
    kafka: bool = False  # sent to the topic prefix + name
    store: bool = False  # written to the Redis store
    decision: bool = False  # triggers and audience changes: CloudEvents, compared by ``replay --diff``


def trigger_stream(channel: str, shadow: bool = False) -> str:
    """The stream of a trigger of ``channel`` (shadow-mode triggers share one stream)."""
    return SHADOW_TRIGGERS if shadow else TRIGGERS_PREFIX + channel


def audience_stream(shadow: bool = False) -> str:
    """The stream of an audience's changes."""
    return SHADOW_AUDIENCE_CHANGES if shadow else AUDIENCE_CHANGES


def _stream_list() -> tuple[Stream, ...]:
    triggers = [trigger_stream(channel) for channel in CHANNELS]
    return (
        *(Stream(name, f"{name}.jsonl", kafka=True, store=True, decision=True) for name in triggers),
        Stream(SHADOW_TRIGGERS, f"{SHADOW_TRIGGERS}.jsonl", kafka=True, decision=True),
        Stream(AUDIENCE_CHANGES, f"{AUDIENCE_CHANGES}.jsonl", kafka=True, store=True, decision=True),
        Stream(SHADOW_AUDIENCE_CHANGES, f"{SHADOW_AUDIENCE_CHANGES}.jsonl", kafka=True, decision=True),
        Stream(SUPPRESSIONS, f"{SUPPRESSIONS}.jsonl", kafka=True, decision=True),  # decisions the policy stopped
        Stream(DEAD_LETTERS, f"{DEAD_LETTERS}.jsonl", kafka=True),
        Stream(STATS, "summary.json"),  # the run's counters, summed over shards
        Stream(PROFILES, store=True),  # the live profile of a changed customer
        Stream(MODELS, MODEL_FILE),  # the models' parameters, merged over shards at the end of a run
        Stream(ERASURES, f"{ERASURES}.jsonl", kafka=True),  # a compacted topic, keyed by customer
        Stream(ATTRIBUTIONS, f"{ATTRIBUTIONS}.jsonl", kafka=True),  # orders credited to the deliveries before them
        Stream(EXPERIMENTS, f"{EXPERIMENTS}.jsonl"),  # per-arm counts by report period, summed over shards
    )


STREAMS: dict[str, Stream] = {stream.name: stream for stream in _stream_list()}

OUTPUT_FILES: dict[str, str] = {s.name: s.file for s in STREAMS.values() if s.file is not None and s.name != MODELS}
"""The file of each stream a run writes record by record (created empty at its start)."""
KAFKA_STREAMS: tuple[str, ...] = tuple(s.name for s in STREAMS.values() if s.kafka)
TRIGGER_STREAMS: frozenset[str] = frozenset(trigger_stream(channel) for channel in CHANNELS)
"""The streams of triggers to deliver (not shadow ones)."""
STORE_STREAMS: frozenset[str] = frozenset(s.name for s in STREAMS.values() if s.store)
DECISION_STREAMS: frozenset[str] = frozenset(s.name for s in STREAMS.values() if s.decision)
