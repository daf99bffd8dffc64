"""What a recovery snapshot of every shard costs: customers inline in Bytewax's snapshots, or in the
shards' own incremental stores.

    python bench/snapshot_bench.py                      # the 10k-customer day
    python bench/snapshot_bench.py --customers 100000

The engine's pipeline (16 shards, starter rules, models learning) applies the day but its last
``--tail`` events, is snapshotted once, then applies ``--between`` more events (about a second
of a live stream at half load) and is snapshotted again, as Bytewax does at an epoch's end: the
figures are that second snapshot's CPU time (``snapshot()`` of every shard plus pickling what
it returns, which Bytewax then writes), its wall time (what the flow waits: CPU and the disk) and
the bytes Bytewax would write; the last row with every shard's pre-save (its changes handed to its
store, and written, a little before: as a live shard does, see ``ShardLogic._presave``).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flow_bench import machine, records, stream

from flows.runtime import tune_gc
from operators.engine import EngineConfig
from operators.pipeline import PRESAVE_LEADS, Pipeline
from operators.rules import load_rules
from state.store import wait_for_writes


def second_snapshot(
    raws: list, tail: int, between: int, store: Path | None, presave_at: int | None = None
) -> tuple[float, float, int, int]:
    """CPU and wall seconds and bytes of the second snapshot, and the customers held; with ``presave_at``,
    every shard pre-saves after that many of the ``between`` events (and the store writes it)."""
    pipeline = Pipeline(load_rules(), EngineConfig(snapshots=True, state_store=store), shards=16)
    logics = [*pipeline.identity, *pipeline.customers]
    cut = len(raws) - tail
    for start in range(0, cut, 1000):
        pipeline.feed(raws[start : min(start + 1000, cut)])
    for logic in logics:
        pickle.dumps(logic.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
    wait_for_writes()  # the stores have the first snapshot, as they have the last one in a steady stream
    presave_at = between if presave_at is None else presave_at
    for start in range(cut, cut + presave_at, 1000):
        pipeline.feed(raws[start : min(start + 1000, cut + presave_at)])
    if presave_at < between:
        for logic in logics:
            logic.engine.presave()
        wait_for_writes()  # what the lead before the snapshot is for
        pipeline.feed(raws[cut + presave_at : cut + between])
    started, wall = time.process_time(), time.perf_counter()
    written = sum(len(pickle.dumps(logic.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)) for logic in logics)
    seconds, wall = time.process_time() - started, time.perf_counter() - wall
    return seconds, wall, written, sum(len(logic.engine.customers) for logic in logics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--tail", type=int, default=20_000)
    parser.add_argument("--between", type=int, default=2_000)
    args = parser.parse_args()
    tune_gc()
    path = stream(args.customers, 1)
    raws = records(path)
    print(f"{machine()}; {path.name}, snapshot after {args.between:,} more events")
    print("| customers kept | customers held | CPU ms per snapshot (all shards) | wall ms | bytes to Bytewax |")
    print("| --- | ---: | ---: | ---: | ---: |")
    inline = second_snapshot(raws, args.tail, args.between, None)
    with tempfile.TemporaryDirectory() as folder:
        stored = second_snapshot(raws, args.tail, args.between, Path(folder))
    presave_at = round(args.between * (1 - PRESAVE_LEADS[0]))
    with tempfile.TemporaryDirectory() as folder:
        presaved = second_snapshot(raws, args.tail, args.between, Path(folder), presave_at)
    rows = (
        ("in the snapshot", inline),
        ("in the shards' stores", stored),
        (f"in the stores, pre-saved {args.between - presave_at:,} events before", presaved),
    )
    for name, (seconds, wall, written, held) in rows:
        print(f"| {name} | {held:,} | {seconds * 1000:,.0f} | {wall * 1000:,.0f} | {written:,} |")


if __name__ == "__main__":
    main()
