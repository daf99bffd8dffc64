"""The ``nudgeflow`` command line: run, replay (and diff), generate, rules check."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.testing import cluster_main, run_main

from connectors.erasures import (
    append_event,
    append_ledger,
    carry_ledger,
    ledger_path,
    read_ledger_file,
    read_ledger_topic,
)
from connectors.files import (
    JsonlSource,
    OutputFolderError,
    OutputFolderSink,
    WriteErrors,
    add_counts,
    check_recordings,
    output_target,
    prepare_output_folder,
    publish_outputs,
    stage_output_folder,
)
from connectors.local_services import free_port
from flows.measures import render_measures
from flows.metrics import serve
from flows.personalization import build_flow, ledger_topic
from flows.report import diff_decisions, finalize_summary, render_diff, render_summary
from flows.runtime import recovery_config, timer_slack, tune_gc
from flows.settings import SAMPLE_STREAM, Settings
from flows.status import StatusLine, status_text
from operators.models import ModelMode, import_model_libraries
from operators.models import files as model_files
from operators.rules import STARTER_RULES, CompiledRules, load_rules
from schemas.erasures import Ledger, erasure_event
from schemas.errors import ConfigurationError, NudgeflowError, RecoveryStoreError, ServiceError
from schemas.items import EndOfInput, RawEvent
from schemas.records import iso_ms
from schemas.timestamps import epoch_ms

EXIT_PROBLEM = 2
"""Exit status of an operational problem (settings, inputs, outputs, services, recovery store)."""
EXIT_OS_ERROR = 1
EXIT_INTERNAL_ERROR = 70
"""Exit status of anything else: a bug, reported with its traceback (EX_SOFTWARE of sysexits.h)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.command(args) or 0)
    except Exception as err:
        return _report(err)


def _report(err: Exception) -> int:
    """Say what went wrong on stderr; return the exit status for it.

    An operational problem or a path that does not exist takes one line (exit 2), another OS
    error too (exit 1), also when raised inside the running flow (Bytewax wraps what a step
    raises); any other exception is a bug: its traceback is shown.
    """
    cause = _cause(err)
    if isinstance(cause, NudgeflowError | FileNotFoundError):
        print(f"nudgeflow: {cause}", file=sys.stderr)
        return EXIT_PROBLEM
    if isinstance(cause, OSError):
        print(f"nudgeflow: {cause}", file=sys.stderr)
        return EXIT_OS_ERROR
    traceback.print_exception(err, file=sys.stderr)
    print(
        "nudgeflow: internal error (a bug, not a problem with the input or settings); please report it", file=sys.stderr
    )
    return EXIT_INTERNAL_ERROR


def _cause(err: BaseException | None) -> BaseException | None:
    """The operational or OS error that ``err`` is, or was raised from (``raise ... from``)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, NudgeflowError | OSError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nudgeflow", description="Real-time personalization on Bytewax.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the flow on recordings (default: the bundled sample) or on Kafka")
    run.add_argument("inputs", nargs="*", type=Path, help=f"JSONL recordings (default {SAMPLE_STREAM.name})")
    _flow_options(run, default_out=None)
    kafka = run.add_argument_group("Kafka (settings: NUDGEFLOW_*; see the README)")
    kafka.add_argument("--kafka", action="store_true", help="read the events topic instead of recordings")
    kafka.add_argument("--bootstrap-servers", help="Kafka brokers (default 127.0.0.1:9092)")
    kafka.add_argument("--topic", help="events topic (default nudgeflow.events)")
    kafka.add_argument("--until-end", action="store_true", help="stop at the end of the events topic")
    kafka.add_argument("--start-from", choices=("earliest", "latest"), help="where to start without a snapshot")
    kafka.add_argument("--redis-url", help="Redis for the live profile store")
    kafka.add_argument("--recovery-dir", type=Path, help="Bytewax recovery store (created when missing)")
    kafka.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (+ process id)")
    kafka.add_argument("-i", "--process-id", type=int, default=0, help="this process's index in --addresses")
    kafka.add_argument("-a", "--addresses", help="host:port of every process, comma-separated (scale-out)")
    kafka.add_argument(
        "--processes", type=int, default=1, help="run this many processes on this host, forked from this one"
    )
    run.set_defaults(command=_run)

    produce = sub.add_parser("produce", help="send a JSONL recording to the events topic")
    produce.add_argument("file", type=Path, help="JSONL recording (plain or .gz)")
    produce.add_argument("--topic", help="events topic (default nudgeflow.events)")
    produce.add_argument("--bootstrap-servers", help="Kafka brokers (default 127.0.0.1:9092)")
    produce.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    produce.add_argument("--partitions", type=int, default=8, help="partitions when the topic is created")
    produce.set_defaults(command=_produce)

    api = sub.add_parser("serve", help="the HTTP API: the engine in-process, or a front on Kafka and Redis (--kafka)")
    api.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    api.add_argument("--port", type=int, help="port to listen on (default 8080; 0: any free port)")
    api.add_argument("--kafka", action="store_true", help="a stateless front: events to Kafka, answers from Redis")
    api.add_argument("--keys", type=Path, help="API keys file (default: settings; none: one key made for the run)")
    api.add_argument("--out", type=Path, help="local engine: output folder and journal (default out/live)")
    api.add_argument("--force", action="store_true", help="local engine: replace a non-empty output folder")
    api.add_argument("--rules", type=Path, help="local engine: rule file (default: rules/starter.yaml)")
    api.add_argument("-w", "--workers", type=int, default=1, help="local engine: Bytewax worker threads")
    api.set_defaults(command=_serve_api)

    erase = sub.add_parser("erase", help="request a customer's erasure: an Erasure Requested event to Kafka or a file")
    erase.add_argument("customer_id", help="the customer's userId")
    erase.add_argument("--request-id", help="the request's id (default: a new one, printed)")
    erase.add_argument("--regulation", choices=("gdpr", "ccpa", "other"), default="gdpr")
    erase.add_argument("--at", help="event time, ISO 8601 with a time zone (default: now)")
    erase.add_argument("--file", type=Path, help="append the event to this JSONL recording instead of sending it")
    erase.add_argument("--topic", help="events topic (default nudgeflow.events)")
    erase.add_argument("--bootstrap-servers", help="Kafka brokers (default 127.0.0.1:9092)")
    erase.add_argument("--partitions", type=int, default=8, help="partitions when the topic is created")
    erase.set_defaults(command=_erase)

    warm = sub.add_parser("warm-start", help="build state from recorded history, sending nothing, for a live run")
    warm.add_argument("inputs", nargs="+", type=Path, help="JSONL recordings of the history, oldest first")
    warm.add_argument("--recovery-dir", type=Path, help="new recovery store the live run resumes (or settings)")
    warm.add_argument("--bootstrap-servers", help="Kafka brokers (the live topic's partitions are looked up)")
    warm.add_argument("--topic", help="events topic of the live run (default nudgeflow.events)")
    warm.add_argument("--rules", type=Path, help="rule file (default: rules/starter.yaml)")
    warm.add_argument("--shards", type=int, help="customer shards (default 16; the live run must use the same)")
    warm.add_argument("-w", "--workers", type=int, default=1, help="Bytewax worker threads")
    warm.set_defaults(command=_warm_start, force=False, out=None)

    consume = sub.add_parser("consume", help="show a topic's records, or record them (--out) for replay")
    consume.add_argument("topic", help="topic, e.g. nudgeflow.triggers.push or nudgeflow.events")
    consume.add_argument("--bootstrap-servers", help="Kafka brokers (default 127.0.0.1:9092)")
    consume.add_argument("--out", type=Path, help="write the records as JSONL (an events topic: replayable)")
    consume.add_argument("--follow", action="store_true", help="keep reading new records (default: stop at end)")
    consume.add_argument("--new-only", action="store_true", help="start at the end instead of the beginning")
    consume.set_defaults(command=_consume)

    replay = sub.add_parser("replay", help="replay a recording through the flow; --diff compares two rule sets")
    replay.add_argument("inputs", nargs="+", type=Path, help="JSONL recordings, or the UCI CSV with --format")
    replay.add_argument("--diff", type=Path, metavar="RULES_B", help="what would these rules have sent instead?")
    replay.add_argument("--format", choices=("jsonl", "uci-retail"), default="jsonl", help="input format")
    replay.add_argument("--rows", type=int, help="uci-retail: read at most this many CSV rows")
    replay.add_argument(
        "--processes", type=int, default=1, help="share the replay among this many processes (JSONL recordings)"
    )
    _flow_options(replay, default_out=Path("out/replay"))
    replay.set_defaults(command=_replay)

    generate = sub.add_parser("generate", help="write a synthetic, persona-based event stream")
    generate.add_argument("--customers", type=int, default=1000)
    generate.add_argument("--days", type=int, default=7)
    generate.add_argument("--seed", type=int, default=1)
    generate.add_argument("--start", type=_date, help="first day, YYYY-MM-DD (default 2026-01-05)")
    generate.add_argument("--defects", type=float, default=0.0, help="share of duplicate/late/future/id-less events")
    generate.add_argument("--out", type=Path, help="file to write (default: stdout)")
    generate.add_argument("--truth", type=Path, help="also write the ground truth (personas, rates) as JSON")
    generate.add_argument(
        "--respond",
        type=Path,
        metavar="RULES",
        help="customers answer these rules' triggers (known lift and fatigue; --truth lists every delivery)",
    )
    generate.set_defaults(command=_generate)

    evaluate = sub.add_parser("evaluate", help="each model against a simple baseline, on the same events")
    evaluate.add_argument("--customers", type=int, default=1000, help="generated stream: customers")
    evaluate.add_argument("--days", type=int, default=28, help="generated stream: days")
    evaluate.add_argument("--seed", type=int, default=5, help="generated stream: seed")
    evaluate.add_argument(
        "--rules", type=Path, help="rule file for the generated stream and the UCI audiences (default: starter)"
    )
    evaluate.add_argument("--yoochoose", type=Path, help="YooChoose folder (train and test click files)")
    evaluate.add_argument("--uci", type=Path, help="UCI Online Retail CSV (.gz) for repeat-purchase propensity")
    evaluate.add_argument("--rows", type=int, help="UCI: read at most this many CSV rows")
    evaluate.add_argument("--horizon-days", type=float, default=30, help="UCI: repeat purchase within this many days")
    evaluate.add_argument("--json", type=Path, help="also write the figures as JSON")
    evaluate.set_defaults(command=_evaluate)

    fit = sub.add_parser("fit", help="fit the lifetime value models (BG/NBD, Gamma-Gamma) on recorded orders")
    fit.add_argument("inputs", nargs="*", type=Path, help="JSONL recordings (or the UCI CSV with --format)")
    fit.add_argument("--recovery-dir", type=Path, help="fit on the customers of this recovery directory instead")
    fit.add_argument("--out", type=Path, required=True, help="model file to write (its clv entry: the fit)")
    fit.add_argument("--model-file", type=Path, help="model file to start from (only its clv entry is replaced)")
    fit.add_argument("--until", type=_instant, help="calibration end (ISO 8601): later orders are left out")
    fit.add_argument("--format", choices=("jsonl", "uci-retail"), default="jsonl", help="input format")
    fit.add_argument("--per-day", action="store_true", help="count a customer's orders of one UTC day as one purchase")
    fit.set_defaults(command=_fit)

    report = sub.add_parser("report", help="experiments, and revenue attributed per rule, channel and offer")
    report.add_argument("folder", type=Path, help="the output folder of a run or replay")
    report.set_defaults(command=_report_measures)

    keys = sub.add_parser("keys", help="API keys of nudgeflow serve")
    keys_sub = keys.add_subparsers(required=True, metavar="ACTION")
    new = keys_sub.add_parser("new", help="make a new API key: prints it once, and its keys file entry (a hash)")
    new.add_argument("--name", required=True, help="the key's name, shown in logs instead of the key")
    new.add_argument("--scopes", default="ingest", help="comma-separated: ingest, read, admin (default ingest)")
    new.set_defaults(command=_keys_new)

    audiences = sub.add_parser("audiences", help="audiences for ad platforms")
    audiences_sub = audiences.add_subparsers(required=True, metavar="ACTION")
    export = audiences_sub.add_parser(
        "export", help="an audience's members (or changes) as hashed match keys in an ad platform's upload format"
    )
    export.add_argument("audience_id", help="the audience (a rule id)")
    export.add_argument("--format", required=True, choices=["google", "meta", "tiktok", "csv"], dest="export_format")
    export.add_argument("--since", help="only the changes since this time (ISO 8601 with a zone, or epoch ms)")
    export.add_argument("--changes", choices=["added", "removed"], default="added", help="with --since (default added)")
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")
    export.add_argument("--from", type=Path, dest="folder", help="a run's output folder, when Redis is not used")
    export.add_argument("--events", type=Path, nargs="+", help="with --from: the recordings that run read")
    export.set_defaults(command=_audiences_export)

    rules = sub.add_parser("rules", help="rule files")
    rules_sub = rules.add_subparsers(required=True, metavar="ACTION")
    check = rules_sub.add_parser("check", help="validate a rule file and show what each rule listens to")
    check.add_argument("file", type=Path, nargs="?", default=STARTER_RULES)
    check.add_argument(
        "--evaluation",
        type=Path,
        help="a `nudgeflow evaluate --json` file: print what each audience threshold on a probability meant there",
    )
    check.set_defaults(command=_rules_check)
    return parser


def _flow_options(parser: argparse.ArgumentParser, default_out: Path | None) -> None:
    parser.add_argument("--rules", type=Path, help="rule file (default: rules/starter.yaml)")
    parser.add_argument("--out", type=Path, default=default_out, help="output folder, created empty")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("-w", "--workers", type=int, default=1, help="Bytewax worker threads")
    parser.add_argument("--shards", type=int, help="customer shards (default 16)")
    parser.add_argument("--models", choices=get_args(ModelMode), help="online models: learn (default), frozen or off")
    parser.add_argument("--quiet", action="store_true", help="no summary on stderr")


def _date(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)


def _settings(args: argparse.Namespace, inputs: Sequence[Path] | None, out: Path | None, **more: Any) -> Settings:
    return Settings.from_env(
        input=list(inputs) if inputs else None,
        out=out,
        rules=args.rules,
        replace_output=args.force or None,
        shards=args.shards,
        models=getattr(args, "models", None),
        **more,
    )


def execute(
    settings: Settings,
    workers: int = 1,
    source: Source[RawEvent | EndOfInput] | None = None,
    quiet: bool = False,
    process_id: int = 0,
    addresses: list[str] | None = None,
    ledger: Ledger | None = None,
    add_to_ledger: bool = True,
) -> dict:
    """Build and run the flow to completion; return the run's summary (also in summary.json for files).

    The inputs and the output folder are checked before anything is written. Outputs are
    written into a new folder beside ``settings.out`` that replaces it only once complete: a
    run that fails leaves the old outputs as they were. The erasure ledger is read first (``ledger``:
    read already); a run on recordings leaves the whole ledger in its folder and, unless
    ``add_to_ledger`` is false, adds the erasures it applied to the ledger file it was given.
    """
    rules = load_rules(settings.rules)
    if source is None and settings.source == "kafka":
        flow = build_flow(settings, rules, snapshots=settings.recovery_dir is not None, ledger=ledger)
        seconds = _timed_run(flow, settings, workers, quiet, process_id, addresses)
        if not quiet:
            print(f"nudgeflow: stopped after {seconds:.1f} s; {status_text()}", file=sys.stderr)
        _fail_if_unwritten()
        return {}
    source = source or JsonlSource(settings.input, settings.batch_size, settings.max_event_bytes)
    tally = source.tally if isinstance(source, JsonlSource) else None
    staging = stage_output_folder(settings.out, settings.replace_output)
    try:
        previous, ledger = read_ledger_file(ledger_path(settings.erasure_ledger, settings.out))
        prepare_output_folder(staging)
        errors: WriteErrors = []
        sink = OutputFolderSink(staging, errors, write_models=model_files.write_merged)
        snapshots = settings.recovery_dir is not None
        flow = build_flow(settings, rules, snapshots=snapshots, source=source, sink=sink, ledger=ledger)
        seconds = _timed_run(flow, settings, workers, quiet, process_id, addresses)
        if errors:
            path, err = errors[0]
            raise _unwritten(settings.out, settings.out / path.name, err)
        summary, warning, added = _publish(
            staging, settings, tally.lines if tally is not None else None, previous, rules
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _add_to_ledger(settings, added if add_to_ledger else b"")
    _tell_run(summary, settings, warning, tally.problems if tally is not None else [], seconds, quiet)
    _fail_if_unwritten()
    return summary


def _add_to_ledger(settings: Settings, added: bytes) -> None:
    """Add a published run's erasures to the ledger file it was given (its own folder has them already)."""
    given = settings.erasure_ledger
    if given is not None and given.resolve() != ledger_path(None, output_target(settings.out)).resolve():
        append_ledger(given, added)


def _publish(
    staging: Path,
    settings: Settings,
    lines: dict[str, dict[str, int]] | None,
    ledger: bytes,
    rules: CompiledRules,
) -> tuple[dict[str, Any], str | None, bytes]:
    """Complete the run's erasure ledger (after ``ledger``, the one read), summary and experiments in
    ``staging`` and publish the folder as ``settings.out``; return the summary, any warning of the
    publishing and the ledger records the run added."""
    try:
        added = carry_ledger(staging, ledger)
        summary = finalize_summary(staging, lines, rules.experiments)
        return summary, publish_outputs(staging, settings.out), added
    except OSError as err:
        raise _unwritten(settings.out, settings.out, err) from None


def _tell_run(
    summary: dict[str, Any], settings: Settings, warning: str | None, problems: list[str], seconds: float, quiet: bool
) -> None:
    """What a finished run tells on stderr: warnings, input problems and (unless ``quiet``) its summary."""
    if warning is not None:
        print(f"nudgeflow: warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"nudgeflow: {problem}", file=sys.stderr)
    if not quiet:
        print(render_summary(summary, settings, seconds), file=sys.stderr)


class OutputsNotWritten(OutputFolderError):
    """A run's outputs could not all be written; ``reason`` says why, in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _unwritten(out: Path, path: Path, err: OSError | str) -> OutputsNotWritten:
    reason = err if isinstance(err, str) else str(err.strerror or err)
    kept = f"{out} was left as it was" if out.exists() else f"{out} was not created"
    return OutputsNotWritten(f"cannot write {path}: {reason}; {kept}", reason)


def _timed_run(
    flow: Dataflow, settings: Settings, workers: int, quiet: bool, process_id: int, addresses: list[str] | None
) -> float:
    """Run ``flow`` with a status line (see :class:`StatusLine`) unless ``quiet``; return the seconds taken."""
    if settings.metrics_port is not None:
        serve(settings.metrics_port + process_id, settings.metrics_host)
    status = None
    if not quiet:
        terminal = sys.stderr.isatty()
        status = StatusLine(1.0 if terminal else settings.progress_seconds, rewrite=terminal)
    _take_unwritten()  # only this run's store counts
    started = time.perf_counter()
    try:
        run_dataflow(flow, settings, workers, process_id, addresses)
    finally:
        if status is not None:
            status.stop()
    return time.perf_counter() - started


def _fail_if_unwritten() -> None:
    """A bounded run whose Redis store could not write everything fails, saying what is missing."""
    if unwritten := _take_unwritten():
        from connectors.redis_store import StoreNotWritten

        raise StoreNotWritten(unwritten)


def _take_unwritten() -> str | None:
    """What the Redis stores of this process could not write (see :func:`connectors.redis_store.take_unwritten`).
    A run without a store leaves Redis's client unimported (a sixth of a second of CPU) and nothing unwritten."""
    store = sys.modules.get("connectors.redis_store")
    return store.take_unwritten() if store is not None else None


WHOLE_RUN = timedelta(days=365)
"""The epoch of a run without a recovery store: the whole run. Nothing needs an epoch's end then
(snapshots are what epochs are for), and at each one Bytewax holds every source back, its workers
spinning, until all workers of all processes have finished the epoch."""


def run_dataflow(
    flow: Dataflow,
    settings: Settings,
    workers: int = 1,
    process_id: int = 0,
    addresses: list[str] | None = None,
) -> None:
    """Run ``flow`` to completion with the settings' recovery store and its epoch (without one,
    :data:`WHOLE_RUN`), GC tuned for state, timed wake-ups deferred by up to half the Kafka poll
    interval (see :func:`flows.runtime.timer_slack`)."""
    tune_gc()
    recovery = recovery_config(settings)
    epoch = WHOLE_RUN if recovery is None else timedelta(seconds=settings.snapshot_seconds)
    with timer_slack(settings.kafka_poll_ms / 2):
        if workers > 1 or addresses or recovery is not None:
            cluster_main(
                flow,
                addresses=addresses or [],
                proc_id=process_id,
                epoch_interval=epoch,
                recovery_config=recovery,
                worker_count_per_proc=workers,
            )
        else:
            run_main(flow, epoch_interval=epoch)


def _warm_start(args: argparse.Namespace) -> int:
    from connectors.files import DiscardSink, HistorySource
    from connectors.kafka import part_names, topic_partitions

    settings = _settings(
        args,
        args.inputs,
        None,
        kafka_bootstrap_servers=args.bootstrap_servers,
        events_topic=args.topic,
        recovery_dir=args.recovery_dir,
    ).model_copy(update={"redis_url": None, "webhooks": None})  # a warm start builds state in its recovery store only
    folder = settings.recovery_dir
    if folder is None:
        raise ConfigurationError("a warm start needs a recovery directory (--recovery-dir or NUDGEFLOW_RECOVERY_DIR)")
    if folder.exists() and any(folder.iterdir()):
        raise RecoveryStoreError(f"recovery directory {folder} is not empty: a warm start begins a new one")
    servers, topic = settings.kafka_bootstrap_servers, settings.events_topic
    parts = part_names(topic, topic_partitions(servers, topic, settings.kafka_client_config()))
    sink = DiscardSink()
    source = HistorySource(settings.input, parts, settings.batch_size, settings.max_event_bytes)
    ledger = read_ledger_topic(servers, ledger_topic(settings), settings.kafka_client_config())
    flow = build_flow(settings, snapshots=True, source=source, sink=sink, source_partitions=len(parts), ledger=ledger)
    started = time.perf_counter()
    run_dataflow(flow, settings, args.workers)
    stats = sink.stats
    events = sum(stats.get("events", {}).values()) + sum(stats.get("unknown_events", {}).values())
    print(
        f"nudgeflow: warm start from {events:,} events in {time.perf_counter() - started:.1f} s: "
        f"{stats.get('customers', 0):,} customers in state, {sum(stats.get('discarded', {}).values()):,} "
        f"outputs not sent; `nudgeflow run --kafka --recovery-dir {folder}` continues from here",
        file=sys.stderr,
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    kafka = {
        "source": "kafka" if args.kafka else None,
        "kafka_bootstrap_servers": args.bootstrap_servers,
        "events_topic": args.topic,
        "until_end": args.until_end or None,
        "start_from": args.start_from,
        "redis_url": args.redis_url,
        "recovery_dir": args.recovery_dir,
        "metrics_port": args.metrics_port,
    }
    settings = _settings(args, args.inputs, args.out, **kafka)
    if args.processes != 1:
        _check_processes(args.processes, settings.source == "kafka", bool(args.addresses or args.process_id))
        run_in_processes(settings, args.processes, args.workers, args.quiet)
        return 0
    addresses = args.addresses.split(",") if args.addresses else None
    execute(settings, args.workers, quiet=args.quiet, process_id=args.process_id, addresses=addresses)
    return 0


def _check_processes(processes: int, kafka: bool, cluster_given: bool) -> None:
    if processes < 1:
        raise ConfigurationError("--processes must be at least 1")
    if not kafka:
        raise ConfigurationError("run --processes shares the Kafka flow; recordings: replay --processes N")
    if cluster_given:
        raise ConfigurationError("--processes starts every process on this host: give it or -i/-a, not both")


def run_in_processes(settings: Settings, processes: int, workers: int = 1, quiet: bool = False) -> None:
    """Run the Kafka flow as ``processes`` processes on this host (``workers`` threads each), talking
    over free 127.0.0.1 ports, as ``-i``/``-a`` would start them one by one.

    They are forked from this one once the rules and the models' libraries are loaded, so they start
    without importing anything again; this one waits for them, stops the others when one fails, and
    stops them all when it is stopped (SIGTERM or SIGINT).
    """
    load_rules(settings.rules)  # a bad rule file fails here, once
    if settings.models != "off":
        import_model_libraries()
    ledger = read_ledger_topic(  # once, so that every process drops the same
        settings.kafka_bootstrap_servers, ledger_topic(settings), settings.kafka_client_config()
    )
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        pids = [
            _fork(
                lambda n=n: execute(
                    settings, workers, quiet=quiet or n > 0, process_id=n, addresses=addresses, ledger=ledger
                )
            )
            for n in range(processes)
        ]
        _wait_all(pids, "run")
    finally:
        signal.signal(signal.SIGTERM, previous)


LIVE_OUT = Path("out/live")
EXPORT_REDIS_TIMEOUT = 10.0
"""Seconds a reply of the Redis store may take while ``audiences export`` reads it."""
"""The in-process engine's folder when none is given."""


def _serve_api(args: argparse.Namespace) -> int:
    from flows.serve import run_server

    settings = Settings.from_env(
        out=args.out,
        rules=args.rules,
        replace_output=args.force or None,
        api_host=args.host,
        api_port=args.port,
        api_keys_file=args.keys,
    )
    if "out" not in settings.model_fields_set:  # neither --out nor NUDGEFLOW_OUT: not a run's folder
        settings = settings.model_copy(update={"out": LIVE_OUT})
    run_server(settings, kafka=args.kafka or settings.source == "kafka", workers=args.workers)
    return 0


def _produce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from connectors.files import read_lines

    settings = Settings.from_env(kafka_bootstrap_servers=args.bootstrap_servers, events_topic=args.topic)
    with tqdm(desc="produce", unit=" events", disable=not sys.stderr.isatty()) as progress:
        sent = _send_events(settings, read_lines(args.file), args.partitions, args.rate, progress)
    print(f"nudgeflow: sent {sent:,} events to {settings.events_topic}", file=sys.stderr)
    return 0


def _send_events(
    settings: Settings, lines: Iterable[bytes], partitions: int, rate: float | None = None, progress: Any = None
) -> int:
    """Send event lines to the events topic (created with ``partitions`` when missing), keyed by
    ``anonymousId``, else ``userId``; return how many."""
    from connectors.kafka import ensure_topics, produce_records

    client = settings.kafka_client_config()
    ensure_topics(settings.kafka_bootstrap_servers, [settings.events_topic], partitions, client)
    return produce_records(settings.kafka_bootstrap_servers, settings.events_topic, lines, rate, progress, client)


def _erase(args: argparse.Namespace) -> int:
    """One ``Erasure Requested`` event for a customer, sent to the events topic or appended to a file."""
    request_id = args.request_id or f"erasure-{uuid.uuid4().hex[:16]}"
    at_ms = int(time.time() * 1000) if args.at is None else _event_time(args.at)
    line = erasure_event(args.customer_id, request_id, args.regulation, at_ms)
    if args.file is not None:
        append_event(args.file, line)
        where = f"appended to {args.file}"
    else:
        settings = Settings.from_env(kafka_bootstrap_servers=args.bootstrap_servers, events_topic=args.topic)
        _send_events(settings, [line], args.partitions)
        where = f"sent to {settings.events_topic}"
    print(
        f"nudgeflow: erasure of customer {args.customer_id} requested (request {request_id}, {args.regulation},"
        f" at {iso_ms(at_ms)}): {where}",
        file=sys.stderr,
    )
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    """A new API key on stdout, with the entry (its SHA-256, never the key) to add to the keys file."""
    from schemas.api import ENV_NAME, key_entry, key_hash, new_key

    scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
    secret = new_key()
    entry = key_entry(args.name, scopes, secret)
    print(f"# API key {args.name!r}: shown once, keep it secret (only its SHA-256 is stored)")
    print(secret)
    print("# add this entry to the keys file (NUDGEFLOW_API_KEYS_FILE):")
    print(entry, end="")
    print(f"# or add to {ENV_NAME}: {args.name}:{'+'.join(scopes)}:{key_hash(secret)}")
    return 0


def _audiences_export(args: argparse.Namespace) -> int:
    """Write an audience in an ad platform's upload format, from Redis or from a run's output folder."""
    import asyncio

    from redis.exceptions import RedisError

    from connectors.ad_audiences import export, export_format, since_ms
    from connectors.audience_sources import FolderAudiences
    from connectors.redis_reads import RedisReads, StoreUnavailable
    from connectors.redis_store import mask_url

    settings = Settings.from_env()
    fmt, url = export_format(args.export_format), ""
    since = since_ms(args.since) if args.since is not None else None
    if args.folder is not None:
        if not args.events:
            raise ConfigurationError("--from needs --events: the recordings the run read (for the match keys)")
        check_recordings(args.events)
        source: Any = FolderAudiences(args.folder, args.events, settings.phone_region)
    elif settings.redis_url is not None:
        url = settings.redis_url.get_secret_value()
        source = RedisReads(url, settings.redis_prefix, settings.redis_cluster, timeout=EXPORT_REDIS_TIMEOUT)
    else:
        raise ConfigurationError("no Redis store set (NUDGEFLOW_REDIS_URL): read a run with --from DIR --events FILE")

    async def run(write: Any) -> Any:
        try:
            return await export(source, args.audience_id, fmt, write, since, args.changes)
        finally:
            await source.close()

    try:
        if args.out is not None:
            with args.out.open("wb") as out:
                done = asyncio.run(run(out.write))
        else:
            done = asyncio.run(run(sys.stdout.buffer.write))
            sys.stdout.flush()
    except (RedisError, StoreUnavailable) as err:
        raise ServiceError(f"redis store {mask_url(url)}: {err}") from None
    what = "members" if since is None else f"members {args.changes} since {args.since}"
    print(
        f"nudgeflow: audience {args.audience_id}: {done.rows} {what} exported ({args.export_format}); "
        f"{done.without_keys} without a match key not exported",
        file=sys.stderr,
    )
    return 0


def _instant(text: str) -> int:
    """An option's ISO 8601 time (a date alone: its midnight UTC), as epoch milliseconds."""
    try:
        return epoch_ms(text if "T" in text or " " in text else f"{text}T00:00:00Z")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time with a time zone") from None


def _event_time(text: str) -> int:
    try:
        return epoch_ms(text)
    except ValueError:
        raise ConfigurationError(f"--at {text!r} is not an ISO 8601 time with a time zone") from None


def _consume(args: argparse.Namespace) -> int:
    from connectors.kafka import read_topic, readable

    settings = Settings.from_env(kafka_bootstrap_servers=args.bootstrap_servers)
    messages = read_topic(
        settings.kafka_bootstrap_servers,
        args.topic,
        until_end=not args.follow,
        from_beginning=not args.new_only,
        client=settings.kafka_client_config(),
    )
    out = args.out.open("wb") if args.out else sys.stdout.buffer
    count = 0
    try:
        for message in messages:
            out.write(readable(message) + b"\n")
            count += 1
            if args.out is None:
                out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        if args.out:
            out.close()
    print(f"nudgeflow: {count:,} records from {args.topic}", file=sys.stderr)
    return 0


def _source(args: argparse.Namespace, settings: Settings) -> Source[RawEvent | EndOfInput] | None:
    """The UCI invoices source for ``--format uci-retail``; ``None`` (the JSONL recordings) otherwise."""
    if args.format == "uci-retail":
        from connectors.uci_retail import UciRetailSource

        return UciRetailSource(args.inputs[0], limit_rows=args.rows, batch_size=settings.batch_size)
    return None


def _replay(args: argparse.Namespace) -> int:
    files_only = {"redis_url": None, "webhooks": None}  # a replay writes its output folder, never the live store
    if args.processes < 1:
        raise ConfigurationError("--processes must be at least 1")
    if args.processes > 1 and args.format != "jsonl":
        raise ConfigurationError("--processes shares the replay of JSONL recordings only")
    if args.diff is None:
        settings = _settings(args, args.inputs, args.out).model_copy(update=files_only)
        _replay_once(args, settings, quiet=args.quiet)
        return 0
    load_rules(args.diff)  # fail before running anything
    if args.format == "jsonl":
        check_recordings(args.inputs)
    staging = stage_output_folder(args.out, replace=args.force)
    try:
        settings_a = _settings(args, args.inputs, staging / "a").model_copy(update=files_only)
        ledger = ledger_path(settings_a.erasure_ledger, output_target(args.out) / "a")  # the last diff's
        settings_a = settings_a.model_copy(update={"erasure_ledger": ledger})
        settings_b = settings_a.model_copy(update={"out": staging / "b", "rules": args.diff})
        for settings in (settings_a, settings_b):
            _replay_once(args, settings, quiet=True, add_to_ledger=False)
        diff = diff_decisions(settings_a.out, settings_b.out)
        try:
            (staging / "diff.json").write_bytes(diff.to_json())
            warning = publish_outputs(staging, args.out)
        except OSError as err:
            raise _unwritten(args.out, args.out, err) from None
    except OutputsNotWritten as err:  # named after --out, not the folder its runs write in
        raise _unwritten(args.out, args.out, err.reason) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if warning is not None:
        print(f"nudgeflow: warning: {warning}", file=sys.stderr)
    print(render_diff(diff, settings_a.rules, settings_b.rules))
    return 0


def _replay_once(args: argparse.Namespace, settings: Settings, quiet: bool, add_to_ledger: bool = True) -> dict:
    if args.processes > 1:
        return replay_in_processes(settings, args.processes, args.workers, quiet, add_to_ledger)
    return execute(settings, args.workers, _source(args, settings), quiet=quiet, add_to_ledger=add_to_ledger)


PART_LINES = ".lines-{process}.json"
"""What one process of a shared replay read (its input line account), in the run's folder."""


def replay_in_processes(
    settings: Settings, processes: int, workers: int = 1, quiet: bool = False, add_to_ledger: bool = True
) -> dict[str, Any]:
    """Replay ``settings.input`` in ``processes`` processes on this host (``workers`` threads each),
    as one run: each process reads and parses only its own chunks of them (see
    :class:`connectors.files.JsonlSource`, made here: where the chunks begin is found once), all
    write into one new folder, and this process
    publishes it as :func:`execute` does. The outputs are those of one process, byte for byte.

    The processes are forked from this one once the rules and the models' libraries are loaded, so
    they start without importing anything again; this one waits for them, and stops the others when one fails.
    """
    if settings.recovery_dir is not None:
        raise ConfigurationError("a replay shared among processes keeps no recovery store: unset the recovery dir")
    rules = load_rules(settings.rules)
    check_recordings(settings.input)
    if settings.models != "off":
        import_model_libraries()  # once, here, rather than in every process
    staging = stage_output_folder(settings.out, settings.replace_output)
    try:
        previous, ledger = read_ledger_file(ledger_path(settings.erasure_ledger, settings.out))
        prepare_output_folder(staging)
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
        started = time.perf_counter()
        source = JsonlSource(settings.input, settings.batch_size, settings.max_event_bytes, parts=processes * workers)
        pids = [
            _fork(lambda n=n: _replay_part(settings, rules, source, staging, workers, n, addresses, ledger))
            for n in range(processes)
        ]
        _wait_all(pids, "replay", "; nothing was written")
        seconds = time.perf_counter() - started
        lines, problems = _part_lines(staging, processes, settings.input)
        summary, warning, added = _publish(staging, settings, lines, previous, rules)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if add_to_ledger:
        _add_to_ledger(settings, added)
    _tell_run(summary, settings, warning, problems, seconds, quiet)
    return summary


class ProcessFailed(NudgeflowError):
    """A process of a run or replay shared among processes failed (it said why on stderr)."""


def _fork(run: Callable[[], None]) -> int:
    """Run ``run`` in a child process (a fork of this one); return its pid. The child's exit
    status says how it went, as :func:`main`'s does."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stopped as a single process is
    status = EXIT_INTERNAL_ERROR
    try:
        run()
        status = 0
    except Exception as err:
        status = _report(err)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _wait_all(pids: list[int], run: str, outcome: str = "") -> None:
    """Wait for the processes ``pids`` of a shared ``run`` (and no other child); when one fails,
    stop the others (``outcome`` ends the message)."""
    running = list(pids)
    try:
        while running:
            for pid in list(running):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
                running.remove(pid)
                if code := os.waitstatus_to_exitcode(status):
                    process = pids.index(pid)
                    raise ProcessFailed(f"process {process} of the {run} exited with {code}{outcome}")
            time.sleep(0.05)
    finally:
        for pid in running:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


def _part_lines(staging: Path, processes: int, inputs: list[Path]) -> tuple[dict[str, dict[str, int]], list[str]]:
    """The input line account (each process counted the lines it read) and reading problems (in
    the order of the recordings) of a shared replay; the processes' account files removed."""
    lines: dict[str, dict[str, int]] = {path.name: {"read": 0, "blank": 0} for path in inputs}
    problems: list[str] = []
    for process in range(processes):
        path = staging / PART_LINES.format(process=process)
        account = orjson.loads(path.read_bytes())
        add_counts(lines, account["lines"])
        problems += account["problems"]
        path.unlink()
    order = [f"{path}:" for path in inputs]
    problems.sort(key=lambda problem: next((i for i, start in enumerate(order) if problem.startswith(start)), 0))
    return lines, problems


def _replay_part(
    settings: Settings,
    rules: CompiledRules,
    source: JsonlSource,
    folder: Path,
    workers: int,
    process: int,
    addresses: list[str],
    ledger: Ledger,
) -> None:
    """One process of a shared replay: its share of the flow (``source``'s parts of it), into the run's ``folder``."""
    errors: WriteErrors = []
    sink = OutputFolderSink(folder, errors, write_models=model_files.write_merged)
    flow = build_flow(settings, rules, source=source, sink=sink, ledger=ledger)
    run_dataflow(flow, settings, workers, process, addresses)
    if errors:
        path, err = errors[0]
        raise _unwritten(settings.out, path, err)
    account: dict[str, Any] = {"lines": {}, "problems": []}
    for tally in source.part_tallies:
        add_counts(account["lines"], tally.lines)
        account["problems"] += tally.problems
    (folder / PART_LINES.format(process=process)).write_bytes(orjson.dumps(account))


def _generate(args: argparse.Namespace) -> int:
    from connectors.synthetic import DEFAULT_START, generate_events, ground_truth, write_jsonl

    if args.respond is not None:
        return _generate_responses(args)
    events = generate_events(args.customers, args.days, args.seed, args.start or DEFAULT_START, args.defects)
    if args.truth is not None:
        args.truth.write_bytes(orjson.dumps(ground_truth(args.customers, args.seed), option=orjson.OPT_INDENT_2))
    if args.out is None:
        write_jsonl(events, sys.stdout.buffer)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("wb") as out:
        count = write_jsonl(events, out, progress=sys.stderr.isatty() or args.customers >= 10_000)
    print(f"nudgeflow: wrote {count:,} events to {args.out}", file=sys.stderr)
    return 0


def _generate_responses(args: argparse.Namespace) -> int:
    """``generate --respond``: the stream with the customers' answers to the rules' triggers."""
    from connectors.synthetic import DEFAULT_START
    from flows.simulate import simulate

    if args.defects:
        raise ConfigurationError("--respond takes no --defects: the answers follow the engine's decisions")
    rules = load_rules(args.respond)
    sim = simulate(args.customers, args.days, args.seed, rules, start=args.start or DEFAULT_START)
    if args.truth is not None:
        args.truth.write_bytes(orjson.dumps(sim.truth, option=orjson.OPT_INDENT_2))
    if args.out is None:
        sys.stdout.buffer.write(sim.recording())
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(sim.recording())
    answered = sum(d["responded"] for d in sim.truth["deliveries"])
    print(
        f"nudgeflow: wrote {len(sim.lines):,} events to {args.out} "
        f"({len(sim.truth['deliveries']):,} triggers delivered, {answered:,} answered with an order)",
        file=sys.stderr,
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from flows.evaluate import (
        evaluate_audiences,
        evaluate_generated,
        evaluate_lapse,
        evaluate_uci,
        evaluate_yoochoose,
        render,
    )

    rules = load_rules(args.rules or STARTER_RULES)
    results = {"generated": evaluate_generated(args.customers, args.days, args.seed, rules)}
    if args.yoochoose:
        results["yoochoose"] = evaluate_yoochoose(args.yoochoose)
    if args.uci:
        results["uci_retail"] = evaluate_uci(args.uci, args.rows, args.horizon_days, rules)
        results["uci_lapse"] = evaluate_lapse(args.uci, args.rows, rules=rules)
        results["uci_audiences"] = evaluate_audiences(args.uci, args.rows, rules)
        from flows.basket_evaluation import evaluate_baskets

        results["uci_baskets"] = evaluate_baskets(args.uci, args.rows)
    print(render(results))
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return 0


def _fit(args: argparse.Namespace) -> int:
    from flows.fit import DAY_MS, History, fit_history, read_recordings, read_store, render, write_model_file

    settings = Settings.from_env()
    history = History(
        per_day=args.per_day,
        max_age_ms=int(settings.max_age_days * DAY_MS),
        max_skew_ms=int(settings.max_skew_minutes * 60_000),
        until_ms=args.until,
    )
    if bool(args.inputs) == bool(args.recovery_dir):
        raise ConfigurationError("nudgeflow fit reads recordings or a recovery directory (--recovery-dir): one of them")
    if args.recovery_dir:
        if args.until is not None or args.per_day or args.format != "jsonl":
            raise ConfigurationError("--until, --per-day and --format read recordings, not a recovery directory")
        read_store(history, args.recovery_dir)
    else:
        read_recordings(history, args.inputs, uci=args.format == "uci-retail")
    for reason, where in sorted(history.first_problem.items()):
        print(f"nudgeflow: {history.skipped[reason]:,} left out ({reason}), the first at {where}", file=sys.stderr)
    fitted = fit_history(history, [str(path) for path in args.inputs or [args.recovery_dir]])
    write_model_file(args.out, fitted.entry, args.model_file)
    print(render(fitted))
    print(f"wrote {args.out}")
    return 0


def _report_measures(args: argparse.Namespace) -> int:
    print(render_measures(args.folder))
    return 0


def _rules_check(args: argparse.Namespace) -> int:
    rules = load_rules(args.file)
    print("\n".join(rules.describe()))
    for warning in rules.warnings():
        print(f"warning: {warning}")
    if args.evaluation:
        from flows.evaluate import threshold_meanings

        try:
            evaluation = orjson.loads(args.evaluation.read_bytes())
        except (OSError, orjson.JSONDecodeError) as err:
            raise ConfigurationError(f"evaluation {args.evaluation}: {err}") from None
        print("\n".join(threshold_meanings(rules, evaluation)))
    print(f"ok: {len(rules.triggers)} triggers, {len(rules.audiences)} audiences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
