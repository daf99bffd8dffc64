"""The ``nudgeflow`` command line: run, replay (and diff), generate, rules check."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bytewax.inputs import Source
from bytewax.testing import cluster_main, run_main

from connectors.files import OutputFolderError, fresh_folder
from flows.personalization import build_flow
from flows.report import diff_decisions, finalize_summary, render_diff, render_summary
from flows.runtime import tune_gc
from flows.settings import SAMPLE_STREAM, Settings
from operators.parse import EndOfInput, RawEvent
from operators.rules import STARTER_RULES, RuleFileError, load_rules


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.command(args) or 0)
    except (RuleFileError, OutputFolderError, ValueError, FileNotFoundError) as err:
        print(f"nudgeflow: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nudgeflow", description="Real-time personalization on Bytewax.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the flow on recordings (default: the bundled sample)")
    run.add_argument("inputs", nargs="*", type=Path, help=f"JSONL recordings (default {SAMPLE_STREAM.name})")
    _flow_options(run, default_out=None)
    run.set_defaults(command=_run)

    replay = sub.add_parser("replay", help="replay a recording through the flow; --diff compares two rule sets")
    replay.add_argument("inputs", nargs="+", type=Path, help="JSONL recordings, or the UCI CSV with --format")
    replay.add_argument("--diff", type=Path, metavar="RULES_B", help="what would these rules have sent instead?")
    replay.add_argument("--format", choices=("jsonl", "uci-retail"), default="jsonl", help="input format")
    replay.add_argument("--rows", type=int, help="uci-retail: read at most this many CSV rows")
    _flow_options(replay, default_out=Path("out/replay"))
    replay.set_defaults(command=_replay)

    generate = sub.add_parser("generate", help="write a synthetic, persona-based event stream")
    generate.add_argument("--customers", type=int, default=1000)
    generate.add_argument("--days", type=int, default=7)
    generate.add_argument("--seed", type=int, default=1)
    generate.add_argument("--start", type=_date, help="first day, YYYY-MM-DD (default 2026-01-05)")
    generate.add_argument("--defects", type=float, default=0.0, help="share of duplicate/late/future/id-less events")
    generate.add_argument("--out", type=Path, help="file to write (default: stdout)")
    generate.set_defaults(command=_generate)

    rules = sub.add_parser("rules", help="rule files")
    rules_sub = rules.add_subparsers(required=True, metavar="ACTION")
    check = rules_sub.add_parser("check", help="validate a rule file and show what each rule listens to")
    check.add_argument("file", type=Path, nargs="?", default=STARTER_RULES)
    check.set_defaults(command=_rules_check)
    return parser


def _flow_options(parser: argparse.ArgumentParser, default_out: Path | None) -> None:
    parser.add_argument("--rules", type=Path, help="rule file (default: rules/starter.yaml)")
    parser.add_argument("--out", type=Path, default=default_out, help="output folder, created empty")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("-w", "--workers", type=int, default=1, help="Bytewax worker threads")
    parser.add_argument("--shards", type=int, help="customer shards (default 16)")
    parser.add_argument("--quiet", action="store_true", help="no summary on stderr")


def _date(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)


def _settings(args: argparse.Namespace, inputs: Sequence[Path] | None, out: Path | None) -> Settings:
    return Settings.from_env(
        input=list(inputs) if inputs else None,
        out=out,
        rules=args.rules,
        replace_output=args.force or None,
        shards=args.shards,
    )


def execute(
    settings: Settings, workers: int = 1, source: Source[RawEvent | EndOfInput] | None = None, quiet: bool = False
) -> dict:
    """Build and run the flow to completion; return the run's summary (also in summary.json)."""
    rules = load_rules(settings.rules)
    flow = build_flow(settings, rules, source=source)
    tune_gc()
    started = time.perf_counter()
    epoch = timedelta(seconds=settings.epoch_seconds)
    if workers > 1:
        cluster_main(flow, addresses=[], proc_id=0, epoch_interval=epoch, worker_count_per_proc=workers)
    else:
        run_main(flow, epoch_interval=epoch)
    seconds = time.perf_counter() - started
    summary = finalize_summary(settings.out)
    if not quiet:
        print(render_summary(summary, settings, seconds), file=sys.stderr)
    return summary


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args, args.inputs, args.out)
    execute(settings, args.workers, quiet=args.quiet)
    return 0


def _source(args: argparse.Namespace, settings: Settings) -> Source[RawEvent | EndOfInput] | None:
    """The UCI invoices source for ``--format uci-retail``; ``None`` (the JSONL recordings) otherwise."""
    if args.format == "uci-retail":
        from connectors.uci_retail import UciRetailSource

        return UciRetailSource(args.inputs[0], limit_rows=args.rows, batch_size=settings.batch_size)
    return None


def _replay(args: argparse.Namespace) -> int:
    if args.diff is None:
        settings = _settings(args, args.inputs, args.out)
        execute(settings, args.workers, _source(args, settings), quiet=args.quiet)
        return 0
    load_rules(args.diff)  # fail before running anything
    settings_a = _settings(args, args.inputs, args.out / "a")
    settings_b = settings_a.model_copy(update={"out": args.out / "b", "rules": args.diff})
    fresh_folder(args.out, replace=args.force)
    for settings in (settings_a, settings_b):
        execute(settings, args.workers, _source(args, settings), quiet=True)
    diff = diff_decisions(settings_a.out, settings_b.out)
    (args.out / "diff.json").write_bytes(diff.to_json())
    print(render_diff(diff, settings_a.rules, settings_b.rules))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from connectors.synthetic import DEFAULT_START, generate_events, write_jsonl

    events = generate_events(args.customers, args.days, args.seed, args.start or DEFAULT_START, args.defects)
    if args.out is None:
        write_jsonl(events, sys.stdout.buffer)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("wb") as out:
        count = write_jsonl(events, out, progress=sys.stderr.isatty() or args.customers >= 10_000)
    print(f"nudgeflow: wrote {count:,} events to {args.out}", file=sys.stderr)
    return 0


def _rules_check(args: argparse.Namespace) -> int:
    rules = load_rules(args.file)
    print("\n".join(rules.describe()))
    for warning in rules.warnings():
        print(f"warning: {warning}")
    print(f"ok: {len(rules.triggers)} triggers, {len(rules.audiences)} audiences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
