"""Memory held per customer: RSS growth of the engine over a generated day, divided by its customers.

    python bench/memory_bench.py                                   # 100k customers, one day
    python bench/memory_bench.py --customers 1000000 --max-events 4000000

The engine's pipeline (16 shards, starter rules, models learning, outputs dropped after each
batch) runs in a fresh process over the stream read 1,000 lines at a time; the figure is the
growth of the process's resident memory from before the first event to after the last, over
the customers held by both stages (identified and anonymous). It counts everything the engine
keeps: customer state, dedupe memory, identity links, timers, model replicas, and the
allocator's own overhead. A breakdown of the customer state by field (deep ``sys.getsizeof``,
strings shared between customers counted once) follows, over a sample of customers.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAMPLE = 2_000  # customers whose state is broken down by field


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def deep_size(value: Any, seen: set[int]) -> int:
    """Bytes of ``value`` and what it holds (objects already in ``seen`` count once)."""
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        size += sum(deep_size(item, seen) for item in value)
    elif hasattr(value, "__slots__"):
        size += sum(deep_size(getattr(value, name), seen) for name in value.__slots__ if hasattr(value, name))
    return size


def measure(path: Path, max_events: int | None) -> None:
    """In this process: run the stream, print the growth per customer and the breakdown."""
    sys.path.insert(0, str(REPO))
    from flows.runtime import tune_gc
    from operators.engine import EngineConfig
    from operators.models import import_model_libraries
    from operators.pipeline import Pipeline
    from operators.rules import load_rules
    from schemas.items import RawEvent

    tune_gc()
    import_model_libraries()  # code the models load with their first outcome is not customers' memory
    pipeline = Pipeline(load_rules(), EngineConfig(), shards=16)
    gc.collect()
    before = rss_bytes()
    events = 0
    with path.open("rb") as lines:
        numbered = enumerate(itertools.islice(lines, max_events), start=1)
        while batch := list(itertools.islice(numbered, 1000)):
            pipeline.feed([RawEvent(n, {"source": path.name, "line": n}, line.rstrip(b"\n")) for n, line in batch])
            events += len(batch)
    gc.collect()
    grown = rss_bytes() - before
    identified = sum(len(logic.engine.customers) for logic in pipeline.customers)
    anonymous = sum(len(logic.engine.customers) for logic in pipeline.identity)
    held = identified + anonymous
    print(f"{path.name}: {events:,} events, {identified:,} customers and {anonymous:,} anonymous ones held")
    print(f"RSS growth {grown / 2**20:,.0f} MiB: **{grown / held:,.0f} bytes per customer** (aim: 1,024)")
    fields: Counter[str] = Counter()
    shared: set[int] = set()
    sample = list(
        itertools.islice((s for logic in pipeline.customers for s in logic.engine.customers.values()), SAMPLE)
    )
    for state in sample:
        fields["(the object)"] += sys.getsizeof(state)
        for name in state.__slots__:
            fields[name] += deep_size(getattr(state, name), shared)
    remembered = sum(len(logic.engine.seen) for logic in pipeline.identity)
    heap = sum(len(logic.engine.timers.heap) for logic in (*pipeline.identity, *pipeline.customers))
    links = sum(len(logic.engine.links) for logic in pipeline.identity)
    print(f"\ncustomer state by field, mean over {len(sample):,} customers (deep sizes):\n")
    print("| field | bytes |\n| --- | ---: |")
    for name, size in fields.most_common(12):
        print(f"| {name} | {size / len(sample):,.0f} |")
    print(f"| (all fields) | {sum(fields.values()) / len(sample):,.0f} |")
    print(f"\ndedupe memory: {remembered:,} message ids remembered by the identity shards (compiled; bytes per id:")
    print("`bench/dedupe_bench.py`)")
    print(f"identity links: {links:,} (compiled, about 60 bytes each and the user id)")
    print(f"timer heap: {heap:,} entries (compiled, 16 bytes each), {heap / held:.2f} per customer held")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--max-events", type=int, help="the first this many events of the day")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.child, args.max_events)
        return
    sys.path.insert(0, str(REPO / "bench"))
    from flow_bench import machine, stream

    path = stream(args.customers, args.days, max_events=args.max_events)
    print(f"{machine()}")
    cmd = [sys.executable, __file__, "--child", str(path)]
    if args.max_events:
        cmd += ["--max-events", str(args.max_events)]
    subprocess.run(cmd, cwd=REPO, check=True)


if __name__ == "__main__":
    main()
