"""What small source batches cost: the whole flow in-process at several batch sizes.

    python bench/batch_size_bench.py [--customers 2000] [--days 3] [--partitions 8] [--sizes 1 5 1000]

A live source at a moderate rate hands the flow a few events per poll; a replay or a backlog
hands it full batches. Every source batch moves the partition's progress through both stages
(ticks), so the cost per event grows as batches shrink. Events are split over ``--partitions``
source partitions by their Kafka key, as a keyed topic would be; the sink discards. Figures are
CPU seconds (steadier than wall time on a shared machine), one worker.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.files import DiscardSink
from connectors.kafka import event_key
from connectors.synthetic import generate_events
from flows.personalization import build_flow
from flows.runtime import tune_gc
from flows.settings import Settings
from schemas.items import EndOfInput, RawEvent


class _Partition(StatefulSourcePartition[RawEvent | EndOfInput, None]):
    def __init__(self, lines: list[bytes], partition: int, batch_size: int) -> None:
        self.lines, self.partition, self.batch_size = lines, partition, batch_size
        self.next = 0
        self.ended = False

    def next_batch(self) -> list[RawEvent | EndOfInput]:
        if self.ended:
            raise StopIteration
        chunk = self.lines[self.next : self.next + self.batch_size]
        if not chunk:
            self.ended = True
            return [EndOfInput(self.next, self.partition)]
        now = time.time()
        batch: list[RawEvent | EndOfInput] = [
            RawEvent(self.next + i, {"offset": self.next + i}, line, partition=self.partition, arrived=now)
            for i, line in enumerate(chunk)
        ]
        self.next += len(chunk)
        return batch

    def snapshot(self) -> None:
        return None


class SplitSource(FixedPartitionedSource[RawEvent | EndOfInput, None]):
    """In-memory lines split over partitions by customer, read ``batch_size`` at a time."""

    def __init__(self, lines: list[bytes], partitions: int, batch_size: int) -> None:
        self.parts: list[list[bytes]] = [[] for _ in range(partitions)]
        for line in lines:  # grouped by the key `nudgeflow produce` gives them (anonymousId, else userId)
            self.parts[zlib.crc32(event_key(line) or b"") % partitions].append(line)
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [str(n) for n in range(len(self.parts))]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Partition:
        return _Partition(self.parts[int(for_part)], int(for_part), self.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 1000])
    args = parser.parse_args()
    tune_gc()
    lines = [orjson.dumps(e) for e in generate_events(args.customers, args.days, seed=1)]
    print(f"{len(lines):,} events, {args.partitions} partitions, one worker, models learning\n")
    print("| events per source batch | CPU seconds | events/s |\n| ---: | ---: | ---: |")
    for size in args.sizes:
        flow = build_flow(
            Settings(),
            source=SplitSource(lines, args.partitions, size),
            sink=DiscardSink(),
            source_partitions=args.partitions,
        )
        started = time.process_time()
        run_main(flow)
        seconds = time.process_time() - started
        print(f"| {size:,} | {seconds:.1f} | {len(lines) / seconds:,.0f} |")


if __name__ == "__main__":
    main()
