"""The identity stage's dedupe memory: the compiled ``Dedupe`` against the ordered dict of ids it replaced.

    python bench/dedupe_bench.py            # 16 shards x 20,000 ids (the defaults), ids like Segment's

Memory: each kind runs in a child process that fills one memory per shard with distinct message
ids (made one at a time, so only what a memory keeps stays alive), then sends 4x as many more
through it; the figure is the growth of the process's resident set (RSS: tracemalloc does not see
Rust's allocations) over the process before the memories existed, per remembered id.
Cost: CPU time (user + sys) per call, a new id into a full memory and a duplicate, both kinds
alternated in one process, the best of several rounds.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import subprocess
import sys
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator

from state._native import Dedupe

KINDS = ("ordered-dict", "native")


class OrderedDictDedupe:
    """The identity stage's dedupe memory before: an ordered dict of message ids, the oldest popped."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seen: OrderedDict[str, None] = OrderedDict()

    def seen_or_add(self, message_id: str) -> bool:
        seen = self.seen
        if message_id in seen:
            return True
        seen[message_id] = None
        if len(seen) > self.capacity:
            seen.popitem(last=False)
        return False


MEMORIES: dict[str, Callable[[int], OrderedDictDedupe | Dedupe]] = {"ordered-dict": OrderedDictDedupe, "native": Dedupe}


def message_ids(seed: int) -> Iterator[str]:
    """Distinct ids shaped like analytics.js's (``ajs-next-`` and a UUID), made one at a time."""
    rng = random.Random(seed)
    while True:
        yield f"ajs-next-{uuid.UUID(int=rng.getrandbits(128), version=4)}"


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fill(kind: str, shards: int, per_shard: int) -> None:
    """Child process: print the RSS growth after filling every shard, and after 4x more ids went through."""
    gc.collect()
    before = rss_bytes()
    memories = [MEMORIES[kind](per_shard) for _ in range(shards)]
    ids = message_ids(1)
    total = shards * per_shard
    for n in range(total):
        memories[n % shards].seen_or_add(next(ids))
    gc.collect()
    filled = rss_bytes() - before
    for n in range(4 * total):
        memories[n % shards].seen_or_add(next(ids))
    gc.collect()
    churned = rss_bytes() - before
    assert sum(len(m.seen) if isinstance(m, OrderedDictDedupe) else len(m) for m in memories) == total
    print(filled, churned)


def memory_row(kind: str, shards: int, per_shard: int) -> str:
    command = [sys.executable, __file__, "--shards", str(shards), "--per-shard", str(per_shard), "--child", kind]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    filled, churned = (int(word) for word in done.stdout.split())
    total = shards * per_shard
    return (
        f"| {kind} | {total:,} | {filled / 2**20:.1f} | {filled / total:.0f} | {churned / 2**20:.1f} "
        f"| {churned / total:.0f} |"
    )


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_call_ns(seen_or_add: Callable[[str], bool], ids: list[str]) -> float:
    started = cpu_seconds()
    for message_id in ids:
        seen_or_add(message_id)
    return (cpu_seconds() - started) / len(ids) * 1e9


def cost_rows(per_shard: int, calls: int, rounds: int) -> list[str]:
    ids = message_ids(2)
    best: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        warm = [next(ids) for _ in range(per_shard)]
        new = [next(ids) for _ in range(calls)]
        for kind in KINDS:
            memory = MEMORIES[kind](per_shard)
            for message_id in warm:
                memory.seen_or_add(message_id)
            timings = {"new id": per_call_ns(memory.seen_or_add, new)}
            repeats = new[-per_shard:] * (calls // per_shard)
            timings["duplicate"] = per_call_ns(memory.seen_or_add, repeats)
            for case, ns in timings.items():
                best[kind, case] = min(ns, best.get((kind, case), ns))
    return [f"| {kind} | {case} | {best[kind, case]:.0f} |" for kind in KINDS for case in ("new id", "duplicate")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--per-shard", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fill(args.child, args.shards, args.per_shard)
        return
    print(f"Memory: {args.shards} shards x {args.per_shard:,} ids, RSS growth of a child process (MiB, bytes per id)")
    print()
    print("| memory | ids kept | MiB filled | B/id | MiB after 4x more ids | B/id |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in KINDS:
        print(memory_row(kind, args.shards, args.per_shard))
    print()
    print(f"Cost: CPU ns per call into a full memory of {args.per_shard:,} ids, best of {args.rounds} rounds")
    print()
    print("| memory | call | ns |")
    print("| --- | --- | ---: |")
    for row in cost_rows(args.per_shard, args.calls, args.rounds):
        print(row)


if __name__ == "__main__":
    main()
