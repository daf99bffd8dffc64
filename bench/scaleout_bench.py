"""CPU per event of the engine on 1, 2 and 4 processes: a file replay, and through Kafka.

    python bench/scaleout_bench.py                  # the generated 10k-customer day, file replay
    python bench/scaleout_bench.py --kafka          # also Kafka -> engine -> Kafka (starts a local broker)
    python bench/scaleout_bench.py --baseline DIR   # also another checkout (its own .venv), in the same rounds

Replay: ``nudgeflow replay FILE --processes N`` (N processes of 1 worker, each parsing its own
chunks of the file), alternated with the single-process replay, in rounds; each run's outputs are
compared with the single process's (they must be byte-identical).

Kafka: the stream is produced once to an 8-partition topic, then ``nudgeflow run --kafka
--until-end --processes N`` reads it with N processes of 1 worker, forked by the one command
(recovery snapshots off, outputs to fresh topics), in rounds.

CPU is user+sys of all the engine's processes over their whole lives (start-up, reading and
writing included; the broker's not), from ``getrusage(RUSAGE_CHILDREN)`` around each run. The
least of the rounds is shown (a shared machine only adds), with its ratio to the single process's,
and the ratio in each round. With ``--baseline DIR`` every run is made also by the checkout in DIR
(with its own ``.venv``) right after this one's, so that both are measured in the same window.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from flow_bench import machine, stream
from kafka_bench import kafka

from connectors.files import read_lines
from connectors.kafka import ensure_topics, produce_records

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = (1, 2, 4)
PARTITIONS = 8


class Checkout:
    """A checkout of the engine to run: its folder and its virtual environment's Python."""

    def __init__(self, label: str, root: Path, python: str) -> None:
        self.label, self.root, self.python = label, root, python


def checkouts(baseline: Path | None) -> list[Checkout]:
    """This checkout, and the baseline's when given."""
    this = [Checkout("this", ROOT, sys.executable)]
    if baseline is None:
        return this
    return [*this, Checkout(f"baseline {baseline}", baseline, str(baseline / ".venv" / "bin" / "python"))]


def cpu_of(commands: list[list[str]], env: dict[str, str] | None = None, cwd: Path = ROOT) -> tuple[float, float]:
    """CPU seconds (user+sys, every process and its children) and wall seconds of ``commands``
    started together and run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE) for cmd in commands]
    for proc, cmd in zip(procs, commands, strict=True):
        _, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} exited with {proc.returncode}: {stderr.decode()[-2000:]}")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def load() -> str:
    """The machine's load (runnable processes, a 1-minute average), which inflates CPU times."""
    return f" (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def replay_rounds(path: Path, rounds: int, runs: list[Checkout]) -> dict[str, list[dict[str, Any]]]:
    """Each round: the replay with 1, 2 and 4 processes, by each checkout in turn; outputs checked
    against 1 process's."""
    rows: dict[str, dict[int, list[tuple[float, float]]]] = {run.label: {n: [] for n in PROCESSES} for run in runs}
    with tempfile.TemporaryDirectory(prefix="nudgeflow-scaleout-") as tmp:
        for round_ in range(rounds):
            expected = None
            for processes in PROCESSES:
                for run in runs:
                    out = Path(tmp) / f"out-{processes}"
                    cmd = [run.python, "-m", "flows.cli", "replay", str(path), "--out", str(out), "--force"]
                    cmd += ["--quiet", "--processes", str(processes)]
                    shutil.rmtree(out, ignore_errors=True)  # no erasure ledger of a round before
                    cpu, wall = cpu_of([cmd], cwd=run.root)
                    files = files_of(out)
                    if expected is None:
                        expected = files
                    elif files != expected:
                        raise RuntimeError(f"{run.label}: {processes} processes wrote other outputs than 1 process")
                    rows[run.label][processes].append((cpu, wall))
                    print(
                        f"round {round_ + 1}, replay, {run.label}, {processes} process(es): {cpu:.1f} CPU s,"
                        f" {wall:.1f} s{load()}",
                        flush=True,
                    )
    return {label: summarize(by_processes) for label, by_processes in rows.items()}


def summarize(rows: dict[int, list[tuple[float, float]]]) -> list[dict[str, Any]]:
    """Per process count: the least CPU and wall seconds of the rounds (the machine only adds
    noise), their ratio to 1 process's, and each round's ratio."""
    out = []
    for processes, runs in rows.items():
        cpu = min(cpu for cpu, _ in runs)
        rounds = [run_cpu / rows[1][n][0] for n, (run_cpu, _) in enumerate(runs)]
        wall = min(wall for _, wall in runs)
        out.append({"processes": processes, "cpu": cpu, "wall": wall, "ratio": cpu / min(c for c, _ in rows[1])})
        out[-1]["rounds"] = rounds
    return out


def kafka_rounds(path: Path, rounds: int, runs: list[Checkout]) -> dict[str, list[dict[str, Any]]]:
    """Each round: ``nudgeflow run --kafka --until-end`` over the whole topic with 1, 2 and 4
    processes, by each checkout in turn."""
    rows: dict[str, dict[int, list[tuple[float, float]]]] = {run.label: {n: [] for n in PROCESSES} for run in runs}
    with kafka() as (bootstrap, _):
        topic = f"bench.events.{uuid.uuid4().hex[:8]}"
        ensure_topics(bootstrap, [topic], PARTITIONS)
        produce_records(bootstrap, topic, read_lines(path))
        for round_ in range(rounds):
            for processes, run in ((n, run) for n in PROCESSES for run in runs):
                env = dict(os.environ)
                env.pop("NUDGEFLOW_REDIS_URL", None)
                env.pop("NUDGEFLOW_RECOVERY_DIR", None)
                env.update(
                    {
                        "NUDGEFLOW_SOURCE": "kafka",
                        "NUDGEFLOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                        "NUDGEFLOW_EVENTS_TOPIC": topic,
                        "NUDGEFLOW_TOPIC_PREFIX": f"bench.{uuid.uuid4().hex[:8]}.",
                    }
                )
                cmd = [run.python, "-m", "flows.cli", "run", "--until-end", "--quiet", "--processes", str(processes)]
                cpu, wall = cpu_of([cmd], env, run.root)
                rows[run.label][processes].append((cpu, wall))
                print(
                    f"round {round_ + 1}, kafka, {run.label}, {processes} process(es): {cpu:.1f} CPU s,"
                    f" {wall:.1f} s{load()}",
                    flush=True,
                )
    return {label: summarize(by_processes) for label, by_processes in rows.items()}


def report(title: str, events: int, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}\n")
    print(
        "| processes x workers | CPU s (all processes) | us CPU per event | against 1 process | each round | seconds |"
    )
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        rounds = ", ".join(f"{ratio:.2f}" for ratio in r["rounds"])
        print(
            f"| {r['processes']} x 1 | {r['cpu']:.1f} | {r['cpu'] / events * 1e6:.1f} | {r['ratio']:.2f} | {rounds} |"
            f" {r['wall']:.1f} |"
        )
    cores = os.cpu_count() or 1
    if any(r["processes"] > cores for r in rows):
        print(
            f"\nMore processes than the machine's {cores} cores are oversubscribed: they wait for a core, and"
            " for each other; a waiting Bytewax worker looks for work every millisecond, but the engine lets"
            " the kernel put off such wake-ups by up to half the Kafka poll interval, to serve several at once."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 1, 2 and 4 processes (the best is shown)")
    parser.add_argument("--kafka", action="store_true", help="also through Kafka (a local broker unless given)")
    parser.add_argument("--kafka-only", action="store_true", help="only through Kafka")
    parser.add_argument("--baseline", type=Path, help="another checkout (with its .venv) to run in the same rounds")
    args = parser.parse_args()
    runs = checkouts(args.baseline)
    print(f"machine: {machine()}", flush=True)
    path = stream(args.customers, args.days)
    events = sum(1 for _ in read_lines(path))
    print(f"stream: {path.name}, {events:,} events", flush=True)
    replay = None if args.kafka_only else replay_rounds(path, args.rounds, runs)
    through_kafka = kafka_rounds(path, args.rounds, runs) if args.kafka or args.kafka_only else None
    for run in runs:
        of = "" if args.baseline is None else f" ({run.label})"
        if replay is not None:
            title = f"`nudgeflow replay FILE --processes N`{of} (outputs byte-identical to 1 process):"
            report(title, events, replay[run.label])
        if through_kafka is not None:
            title = f"`nudgeflow run --kafka --until-end --processes N`{of} on {PARTITIONS} partitions:"
            report(title, events, through_kafka[run.label])
    print("\ncommand: " + shlex.join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
