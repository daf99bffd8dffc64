"""The personalization dataflow: ``build_flow(settings)``, and ``get_flow()`` for Bytewax's runner:

    python -m bytewax.run "flows.personalization:get_flow()"

reads ``NUDGEFLOW_*`` settings (default: the bundled sample into ``out/run``).
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import KeyedStream
from bytewax.outputs import Sink

from connectors.erasures import COMPACTED, ledger_path, read_ledger_file, read_ledger_topic
from connectors.files import JsonlSource, OutputFolderSink, prepare_output_folder
from flows.metrics import serve
from flows.runtime import tune_gc
from flows.settings import Settings
from operators.customer_state import personalize
from operators.models import files as model_files
from operators.offers import check_catalogue
from operators.rules import CompiledRules, load_rules
from schemas.erasures import Ledger
from schemas.items import EndOfInput, Output, RawEvent
from schemas.streams import DEAD_LETTERS, ERASURES, KAFKA_STREAMS, PROFILES, STORE_STREAMS
from schemas.webhooks import Webhooks, load_webhooks

if TYPE_CHECKING:
    from connectors.webhooks import DeadLetterWriter


def build_flow(
    settings: Settings,
    rules: CompiledRules | None = None,
    snapshots: bool = False,
    source: Source[RawEvent | EndOfInput] | None = None,
    sink: Sink[tuple[str, Output]] | None = None,
    source_partitions: int = 1,
    ledger: Ledger | None = None,
    profiles: bool = False,
) -> Dataflow:
    """Source -> parse/validate -> dedupe -> key by customer -> state + rules -> output files.

    The source defaults to the JSONL recordings in ``settings.input``; the output folder
    ``settings.out`` is created empty (a non-empty one is refused unless ``replace_output``);
    a given ``sink`` receives ``(stream, Output)`` pairs instead. ``source_partitions`` is the
    number of partitions a given ``source`` has. ``ledger``: the erasures known before the run
    (default: read from the ledger topic, or from the ledger file on recordings). ``profiles``: the
    engine sends changed customers' profiles (stream ``profiles``) to ``sink`` too, without Redis.
    """
    rules = rules or load_rules(settings.rules)
    webhooks = load_webhooks(settings.webhooks, os.environ) if settings.webhooks is not None else None
    flow = Dataflow("nudgeflow")
    if source is None and settings.source == "kafka":
        return _kafka_flow(flow, settings, rules, snapshots, ledger, webhooks)
    if ledger is None:
        ledger = read_ledger_file(ledger_path(settings.erasure_ledger, settings.out))[1]
    # the recordings are checked (by the source) before an output folder is replaced
    source = source or JsonlSource(settings.input, settings.batch_size, settings.max_event_bytes)
    read_ahead = None  # the parts of a chunked stream read so far ahead of the flow
    if isinstance(source, JsonlSource) and source.parts > 1:
        source_partitions, read_ahead = source.parts, source.read_ahead
    if sink is None:
        prepare_output_folder(settings.out, replace=settings.replace_output)
        sink = OutputFolderSink(settings.out, write_models=model_files.write_merged)
    raw = op.input("events", flow, source)
    config = settings.engine_config(snapshots, source_partitions, profiles or settings.redis_url is not None, ledger)
    check_catalogue(rules.offers, config.reference)
    chunked = read_ahead is not None
    outputs = personalize(
        "personalize", raw, rules, config, settings.shards, settings.max_event_bytes, chunked, read_ahead
    )
    if webhooks is not None:  # undeliverable decisions go to the output folder
        from connectors.webhooks import DEAD_LETTER_FILE, FileDeadLetters

        folder = sink.folder if isinstance(sink, OutputFolderSink) else settings.out
        _webhook_output(outputs, webhooks, snapshots, FileDeadLetters(folder / DEAD_LETTER_FILE))
    if settings.redis_url is not None:
        _redis_output(outputs, settings)
        outputs = op.filter("not_profiles", outputs, _not_profile)  # profiles are for the live store only
    op.output("outputs", outputs, sink)
    return flow


def _kafka_flow(
    flow: Dataflow,
    settings: Settings,
    rules: CompiledRules,
    snapshots: bool,
    ledger: Ledger | None,
    webhooks: Webhooks | None,
) -> Dataflow:
    """Events topic -> personalize -> output topics (and the Redis store and webhooks when
    configured); the erasure ledger topic is read to its end before the flow starts."""
    from connectors.kafka import KafkaEventSource, KafkaOutputSink, ensure_topics

    client = settings.kafka_client_config()
    servers = settings.kafka_bootstrap_servers
    if settings.create_topics:
        configs = {ledger_topic(settings): COMPACTED}
        ensure_topics(servers, output_topics(settings), settings.topic_partitions, client, configs=configs)
    source = KafkaEventSource(
        servers,
        settings.events_topic,
        settings.start_from,
        settings.until_end,
        settings.batch_size,
        client,
        settings.kafka_poll_ms / 1000,
    )
    if ledger is None:
        ledger = read_ledger_topic(servers, ledger_topic(settings), client)
    raw = op.input("events", flow, source)
    config = settings.engine_config(snapshots, source.partitions, settings.redis_url is not None, ledger)
    check_catalogue(rules.offers, config.reference)
    outputs = personalize("personalize", raw, rules, config, settings.shards, settings.max_event_bytes)
    _redis_output(outputs, settings)
    if webhooks is not None:
        from connectors.webhooks import KafkaDeadLetters

        dead_letters = KafkaDeadLetters(servers, settings.topic_prefix + DEAD_LETTERS, client)
        _webhook_output(outputs, webhooks, snapshots, dead_letters)
    to_kafka = op.filter_map("to_kafka", outputs, _by_customer)
    op.output("topics", to_kafka, KafkaOutputSink(servers, settings.topic_prefix, producer_config=client))
    return flow


def output_topics(settings: Settings) -> list[str]:
    """Every output topic: prefix + stream."""
    return [settings.topic_prefix + stream for stream in KAFKA_STREAMS]


def ledger_topic(settings: Settings) -> str:
    """The erasure ledger's topic: prefix + ``erasures`` (compacted, keyed by customer)."""
    return settings.topic_prefix + ERASURES


def _by_customer(item: tuple[str, Output]) -> tuple[str, Output] | None:
    stream, output = item
    return (output.key, output) if stream in KAFKA_STREAMS else None


def _redis_output(outputs: KeyedStream[Output], settings: Settings) -> None:
    if settings.redis_url is None:
        return
    from connectors.redis_store import RedisStoreSink, check_store

    ttl = None if settings.redis_ttl_days is None else int(settings.redis_ttl_days * 86_400)
    url, cluster = settings.redis_url.get_secret_value(), settings.redis_cluster
    check_store(url, cluster)
    sink = RedisStoreSink(
        url, cluster=cluster, prefix=settings.redis_prefix, ttl_seconds=ttl, traits=settings.redis_traits
    )
    op.output("redis", op.filter_map("to_redis", outputs, _for_redis), sink)


def _webhook_output(
    outputs: KeyedStream[Output], webhooks: Webhooks, snapshots: bool, dead_letters: DeadLetterWriter
) -> None:
    """The decisions of the streams the destinations chose, keyed by customer, to the webhook sink."""
    from connectors.webhooks import WebhookSink

    sink = WebhookSink(webhooks.destinations, dead_letters, close_timeout=webhooks.close_timeout, snapshots=snapshots)
    op.output("webhooks", op.filter_map("to_webhooks", outputs, partial(_for_webhooks, webhooks.streams)), sink)


def _for_webhooks(streams: frozenset[str], item: tuple[str, Output]) -> tuple[str, Output] | None:
    stream, output = item
    return (output.key, output) if stream in streams else None


def _not_profile(item: tuple[str, Output]) -> bool:
    return item[0] != PROFILES


def _for_redis(item: tuple[str, Output]) -> tuple[str, Output] | None:
    """A record for the store, keyed by customer (a store partition keeps each customer's order)."""
    stream, output = item
    return (output.key, output) if stream in STORE_STREAMS else None


def get_flow() -> Dataflow:
    """The flow of the ``NUDGEFLOW_*`` settings, for ``python -m bytewax.run`` (called once per process).

    It serves ``/metrics`` when ``NUDGEFLOW_METRICS_PORT`` is set (plus the process id).
    """
    tune_gc()
    settings = Settings.from_env()
    if settings.metrics_port is not None:
        serve(settings.metrics_port + int(os.environ.get("BYTEWAX_PROCESS_ID", "0")), settings.metrics_host)
    recovery = _recovery_dir(settings)
    if recovery is not None:  # the engine keeps its customer stores there
        settings = settings.model_copy(update={"recovery_dir": recovery})
    return build_flow(settings, snapshots=recovery is not None)


def _recovery_dir(settings: Settings) -> Path | None:
    """The run's recovery store, where the engine must snapshot its state: ``NUDGEFLOW_RECOVERY_DIR``,
    else the runner's ``-r``/``--recovery-directory`` (or ``BYTEWAX_RECOVERY_DIRECTORY``)."""
    if settings.recovery_dir is not None:
        return settings.recovery_dir
    folder = os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")
    args = sys.argv
    for n, arg in enumerate(args):
        if arg in ("-r", "--recovery-directory") and n + 1 < len(args):
            folder = args[n + 1]
        elif arg.startswith("--recovery-directory="):
            folder = arg.partition("=")[2]
    return None if folder is None else Path(folder)
