"""Regenerate ``bench/RESULTS.md``: run every benchmark and write what each printed, under its command.

    python bench/results.py                 # every section (about an hour on 2 cores)
    python bench/results.py --only floor    # one section, the others kept from the current file
    python bench/results.py --list          # the sections and their commands

Each section is one benchmark script run as a child process from the repository root; its
standard output (Markdown tables and figures) goes into the file verbatim, under the exact
command that printed it, so every figure reproduces by running that command. The machine and
the versions are stated at the top.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"
PYTHON = ".venv/bin/python"


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    args: tuple[str, ...]
    about: str

    @property
    def command(self) -> str:
        return " ".join((PYTHON, *self.args))


SECTIONS = (
    Section(
        "floor",
        "Throughput: the engine against a plain-Python floor (100k customers, one day)",
        ("bench/floor_bench.py", "--customers", "100000"),
        "`nudgeflow replay` as users run it (models learning, starter rules, real output files) and a plain-Python "
        "program doing the same per-event work on the same file, alternated, in CPU time of the whole process.",
    ),
    Section(
        "floor-10k",
        "Throughput: the engine against the floor (10k customers, one day)",
        ("bench/floor_bench.py", "--customers", "10000", "--rounds", "3"),
        "The same at 10k customers.",
    ),
    Section(
        "memory",
        "Memory per customer (100k customers, one day)",
        ("bench/memory_bench.py", "--customers", "100000"),
        "RSS growth of the engine's pipeline over the day, over the customers it holds.",
    ),
    Section(
        "memory-1m",
        "Memory per customer (1M customers, the first 4M events of a day)",
        ("bench/memory_bench.py", "--customers", "1000000", "--max-events", "4000000"),
        "The same at 1M customers (the first 4M events of the day are generated once: several minutes, 1.7 GB).",
    ),
    Section(
        "policy",
        "The contact policy's cost (10k customers, one day)",
        ("bench/policy_bench.py", "--rounds", "3"),
        "`nudgeflow replay` with the starter rules and their policy (caps, quiet hours) against the same rules "
        "without a policy section, alternated, in CPU time of the whole process.",
    ),
    Section(
        "offers",
        "What the offers catalogue and the reference data cost (10k customers, one day)",
        ("bench/offers_bench.py", "--rounds", "3"),
        "`nudgeflow replay` with the starter catalogue and the sample stores and products, against the same rules "
        "without the reference data and with a plain catalogue, alternated, in CPU time.",
    ),
    Section(
        "experiments",
        "What experiments cost (10k customers, one day)",
        ("bench/experiments_bench.py", "--rounds", "3"),
        "The starter rules against the same rules with a 5% global holdout, a three-arm test of the cart reminder "
        "and CUPED (attribution is on in both), `nudgeflow replay` in child processes, alternated, in CPU time.",
    ),
    Section(
        "order-lines",
        "Orders with many lines against a view",
        ("bench/order_lines_bench.py", "--lines", "1", "10", "50", "161"),
        "CPU per event of the engine's pipeline (parsing, both stages, starter rules, models learning) over a stream "
        "of views and over streams of orders of n lines, for the same customers and times.",
    ),
    Section(
        "parse",
        "Parsing: bytes to validated envelopes",
        ("bench/parse_bench.py",),
        "CPU per event of decoding and validating the event contract (msgspec Structs), by part, against the "
        "general way every event took before, and of reading an event after it crossed processes.",
    ),
    Section(
        "sink-memory",
        "Peak memory of a replay: outputs held to the end against bounded sorted runs (50k customers)",
        ("bench/sink_memory_bench.py", "--customers", "50000"),
        "Peak RSS of whole `nudgeflow replay` processes, a day against one event per customer.",
    ),
    Section(
        "models",
        "The models' share of the engine",
        ("bench/models_bench.py",),
        "CPU per event of the engine with models off and learning, and of each model entry point.",
    ),
    Section(
        "dedupe",
        "Dedupe memory: an ordered dict of message ids against the compiled ring of hashes",
        ("bench/dedupe_bench.py",),
        "Resident memory per remembered message id (16 shards x 20,000, RSS growth of a child process, as "
        "tracemalloc cannot see Rust's allocations) and CPU per call, the identity stage's old memory and the new.",
    ),
    Section(
        "snapshot",
        "Recovery snapshots: customers inline against the shards' incremental stores (100k customers)",
        ("bench/snapshot_bench.py", "--customers", "100000"),
        "CPU and bytes of one snapshot of every shard, a second after the previous one.",
    ),
    Section(
        "kafka",
        "Kafka -> engine -> Kafka: throughput, then latency at half of it",
        ("bench/kafka_bench.py", "--duration", "30"),
        "A local single-node broker on the same 2 cores; `nudgeflow run` subprocesses with recovery snapshots on.",
    ),
    Section(
        "scaleout",
        "Scale-out: CPU per event on 1, 2 and 4 processes (10k customers, one day)",
        ("bench/scaleout_bench.py", "--kafka"),
        "`nudgeflow replay --processes N` (outputs checked byte-identical to one process) and `nudgeflow run --kafka "
        "--until-end --processes N`, N processes of one worker, in CPU time of all the engine's processes over their "
        "whole lives, alternated in rounds; the broker (local, on the same 2 cores) is not counted.",
    ),
    Section(
        "webhooks",
        "Webhook deliveries per second (10k decisions, one destination)",
        ("bench/webhook_bench.py",),
        "The webhook sink's 4 partitions sending signed decisions to a local aiohttp receiver in its own process, "
        "at concurrency 16 and 64; wall time until every decision was answered, and the engine process's CPU time.",
    ),
    Section(
        "api",
        "The HTTP API under load: the engine in-process (`nudgeflow serve`)",
        ("bench/api_bench.py",),
        "`POST /v1/events` in batches of 100 (4 in flight) and one event per request (16 in flight), then batches "
        "while 4 readers ask `GET /v1/customers/{id}`; an aiohttp client on loopback on the same 2 cores. Latency as "
        "the client saw it; server CPU is its whole process (HTTP, journal, engine, output files) until idle again.",
    ),
    Section(
        "api-kafka",
        "The HTTP API under load: the Kafka + Redis front (`nudgeflow serve --kafka`)",
        ("bench/api_bench.py", "--kafka"),
        "The same load against the stateless front, with a local Kafka broker and Redis: events are answered once "
        "Kafka confirmed them (acks=all); the profiles read were written to Redis by `nudgeflow run --kafka` over "
        "what the front sent. Server CPU is the front's process only.",
    ),
    Section(
        "stages",
        "Cost per stage, per rule, and state per customer (10k customers)",
        ("bench/flow_bench.py", "--customers", "10000"),
        "In-process figures: wall time of one core, so only comparable within one run.",
    ),
    Section(
        "undo",
        "Checkpoints for undoing a failed event",
        ("bench/undo_bench.py",),
        "What the per-event checkpoint costs when nothing fails.",
    ),
)


assert len({section.name for section in SECTIONS}) == len(SECTIONS), "section names are unique"


def machine() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("bytewax", "river", "orjson", "pydantic", "confluent-kafka")
    )
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, {versions}"


def run(section: Section) -> str:
    """The section's Markdown: title, command, what it measures, and what the command printed."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, *section.args], cwd=REPO, capture_output=True, text=True)
    printed = "\n".join(line for line in done.stdout.splitlines() if "\r" not in line).strip()
    if done.returncode != 0:
        error = "\n".join(done.stderr.strip().splitlines()[-15:])
        printed += f"\n\n**The command failed (exit {done.returncode}):**\n\n```\n{error}\n```"
    took = time.monotonic() - started
    return (
        f"## {section.title}\n\n```sh\n{section.command}\n```\n\n{section.about} "
        f"(took {took / 60:.0f} min.)\n\n{printed}\n"
    )


def kept_sections(text: str) -> dict[str, str]:
    """The sections of an existing RESULTS.md, by name (from the marker before each)."""
    parts = re.split(r"^<!-- section: (\S+) -->\n", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1].rstrip() + "\n" for i in range(1, len(parts) - 1, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=[s.name for s in SECTIONS], help="run only these sections")
    parser.add_argument("--list", action="store_true", help="print the sections and their commands")
    args = parser.parse_args()
    if args.list:
        for section in SECTIONS:
            print(f"{section.name:12} {section.command}")
        return
    for section in SECTIONS:
        if args.only is None or section.name in args.only:
            print(f"running {section.command}", file=sys.stderr, flush=True)
            measured = run(section)
            # read again: another run of this script may have written its sections meanwhile
            kept = kept_sections(RESULTS.read_text()) if RESULTS.exists() else {}
            kept[section.name] = measured
            write(kept)  # after each section: a long run keeps what it has measured
    print(f"wrote {RESULTS.relative_to(REPO)}", file=sys.stderr)


def write(sections: dict[str, str]) -> None:
    """RESULTS.md with the machine, then the sections in their order."""
    body = [f"<!-- section: {s.name} -->\n{sections[s.name]}" for s in SECTIONS if s.name in sections]
    header = (
        "# Benchmark results\n\n"
        f"Machine: {machine()}.\n\n"
        f"Regenerated by `{PYTHON} bench/results.py` (one section: `--only NAME`); every figure below comes "
        "from the command printed above it.\n\n"
    )
    RESULTS.write_text(header + "\n".join(body))


if __name__ == "__main__":
    main()
