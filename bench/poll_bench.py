"""CPU per event of the whole flow against the events each source activation hands it.

    python bench/poll_bench.py                       # 2, 5, 10, 20 and 1000 events per partition
    python bench/poll_bench.py --per-partition 5 10 --rounds 3
    python bench/poll_bench.py --caught-up           # each partition reads all there is every activation
    python bench/poll_bench.py --caught-up --live-time   # ... and event time moves 10 ms per activation

A live Kafka source reads every ``NUDGEFLOW_KAFKA_POLL_MS`` when it keeps up, so at R events/s
each activation of the flow carries about R x poll interval events. Each run here feeds the
flow (recovery snapshots on, as ``nudgeflow run``) from 8 in-memory partitions handing out
``n`` events each per activation, and prints its CPU time (user + system) per event; runs are
alternated in rounds, as the machine may be shared. Two sizes give the cost of one activation
(``c``) and of one event (``a``): ``cpu = a x events + c x activations``. By default a partition
always has more to read (as a replay's, or a topic with a backlog); with ``--caught-up`` each
hands out its events with the end of what there is to read, as a topic partition that keeps up;
with ``--live-time`` the events' time moves as a live stream's does (10 ms per activation, the
poll interval), not as fast as a recording is read.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

PARTITIONS = 8
ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


LIVE_STEP_MS = 10  # event time per activation with --live-time: the Kafka source's poll interval


def live_time(line: bytes, activation: int, start_ms: int) -> bytes:
    """The event at ``activation`` ticks of :data:`LIVE_STEP_MS` after ``start_ms`` (no receivedAt)."""
    event = orjson.loads(line)
    event.pop("receivedAt", None)
    event.pop("sentAt", None)
    at = datetime.fromtimestamp((start_ms + activation * LIVE_STEP_MS) / 1000, UTC)
    event["timestamp"] = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps(event)


def child(per_partition: int, events: int, caught_up: bool = False, live: bool = False) -> None:
    """One run in this process; prints ``cpu_seconds activations``."""
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from flow_bench import stream

    from connectors.files import DiscardSink, read_lines
    from connectors.kafka import event_key
    from flows.cli import run_dataflow
    from flows.personalization import build_flow
    from flows.settings import Settings
    from schemas.items import EndOfInput, RawEvent

    parts: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
    for line in itertools.islice(read_lines(stream(2_000, 7)), events):
        parts[zlib.crc32(event_key(line) or b"") % PARTITIONS].append(line)
    if live:
        start_ms = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1000)
        parts = [[live_time(line, n // per_partition, start_ms) for n, line in enumerate(lines)] for lines in parts]
    activations = [0]

    class Partition(StatefulSourcePartition[Any, int]):
        def __init__(self, number: int, resume: int | None) -> None:
            self.number, self.lines, self.at, self.done = number, parts[number], resume or 0, False

        def next_batch(self) -> list[Any]:
            if self.done:
                raise StopIteration
            if self.at >= len(self.lines):
                self.done = True
                return [EndOfInput(self.at, self.number)]
            if self.number == 0:
                activations[0] += 1
            now, end = time.time(), min(self.at + per_partition, len(self.lines))
            batch = [
                RawEvent(n, {"offset": n}, self.lines[n], partition=self.number, arrived=now)
                for n in range(self.at, end)
            ]
            self.at = end
            if caught_up and end < len(self.lines):  # read all there is for now (the last batch ends anyway)
                batch.append(EndOfInput(end, self.number))
            return batch

        def snapshot(self) -> int:
            return self.at

    class Source(FixedPartitionedSource[Any, int]):
        def list_parts(self) -> list[str]:
            return [f"p#{n}" for n in range(PARTITIONS)]

        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Partition:
            return Partition(int(for_part[2:]), resume_state)

    with tempfile.TemporaryDirectory(prefix="nudgeflow-recovery-", ignore_cleanup_errors=True) as tmp:
        settings = Settings(recovery_dir=Path(tmp))
        flow = build_flow(settings, snapshots=True, source=Source(), sink=DiscardSink(), source_partitions=PARTITIONS)
        started = cpu_seconds()
        run_dataflow(flow, settings)
        print(cpu_seconds() - started, activations[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-partition", type=int, nargs="+", default=[2, 5, 10, 20, 1000])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--caught-up", action="store_true", help="every batch read all there was (a live topic)")
    parser.add_argument("--live-time", action="store_true", help="event time moves 10 ms per activation")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.events, args.caught_up, args.live_time)
        return
    runs: dict[int, list[tuple[float, int]]] = {n: [] for n in args.per_partition}
    for _, n in itertools.product(range(args.rounds), args.per_partition):
        command = [sys.executable, __file__, "--child", str(n), "--events", str(args.events)]
        command += ["--caught-up"] if args.caught_up else []
        command += ["--live-time"] if args.live_time else []
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{n} per partition failed:\n{done.stderr}")
        cpu, activations = done.stdout.split()
        runs[n].append((float(cpu), int(activations)))
        print(f"{n} per partition: {float(cpu):.2f} CPU s, {activations} activations", flush=True)
    print("\n| events per activation | activations | CPU s (best of rounds) | CPU us per event |")
    print("| ---: | ---: | ---: | ---: |")
    for n, results in runs.items():
        cpu, activations = min(results)
        print(f"| {n * PARTITIONS:,} | {activations:,} | {cpu:.2f} | {cpu / args.events * 1e6:.0f} |")
    if len(runs) > 1:
        (cpu1, act1), (cpu2, act2) = (min(results) for results in list(runs.values())[:2])
        activation = (cpu1 - cpu2) / (act1 - act2)
        print(
            f"\nfrom the first two: {activation * 1000:.2f} ms of CPU per activation,"
            f" {(cpu2 - activation * act2) / args.events * 1e6:.0f} us per event (start-up included)"
        )
    print("\ncommand: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
