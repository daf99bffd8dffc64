"""Benchmark of the embedded flow: throughput per worker, per-stage cost, state size per customer.

    python bench/flow_bench.py                       # 10k and 100k customers
    python bench/flow_bench.py --customers 1000000   # add larger runs (needs time and memory)

Streams come from the persona generator (about 18 events per customer-day) (``connectors.synthetic``), written once to
``bench/.cache/`` as JSONL. Throughput runs the whole flow (file source -> parse -> identity and
customer stages -> rules) into a sink that discards outputs, with one worker. Figures are printed
as a Markdown table ready for ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import pickle
import platform
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from connectors.synthetic import generate_events, write_jsonl
from flows.personalization import build_flow
from flows.runtime import tune_gc
from flows.settings import Settings
from operators.engine import EngineConfig
from operators.parse import Rejected, parse
from operators.pipeline import Pipeline
from operators.rules import CompiledRules, load_rules
from schemas.items import RawEvent
from state.catalogue import FeatureView
from state.customer import CustomerState, Lifecycle
from state.update import apply_event

CACHE = Path(__file__).parent / ".cache"


class _Discard(StatelessSinkPartition[Any]):
    def __init__(self, counter: list[int]) -> None:
        self.counter = counter

    def write_batch(self, items: list[Any]) -> None:
        self.counter[0] += len(items)


class NullSink(DynamicSink[Any]):
    """Counts outputs and drops them."""

    def __init__(self) -> None:
        self.counter = [0]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Discard:
        return _Discard(self.counter)


def stream(customers: int, days: int, seed: int = 1, max_events: int | None = None) -> Path:
    """The generated stream for these parameters (made once, then cached); cut at ``max_events``."""
    cut = f"-max{max_events}" if max_events else ""
    path = CACHE / f"c{customers}-d{days}-s{seed}{cut}.jsonl"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        tmp = path.with_suffix(".part")
        events = itertools.islice(generate_events(customers, days, seed), max_events)
        with tmp.open("wb") as out:
            write_jsonl(events, out, progress=True)
        tmp.rename(path)
    return path


def throughput(path: Path) -> dict[str, float]:
    """Events/s of the whole flow, one worker, outputs discarded."""
    sink = NullSink()
    settings = Settings(input=[path], out=CACHE / "unused")
    flow = build_flow(settings, sink=sink)
    lines = sum(1 for _ in path.open("rb"))
    gc.collect()
    started = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - started
    return {"events": lines, "seconds": seconds, "rate": lines / seconds, "outputs": sink.counter[0]}


def records(path: Path, limit: int | None = None) -> list[RawEvent]:
    """The first ``limit`` lines of a recording, as the file source reads them."""
    with path.open("rb") as f:
        lines = itertools.islice(f, limit)
        return [RawEvent(n, {"source": path.name, "line": n}, line.rstrip(b"\n")) for n, line in enumerate(lines, 1)]


def stages(path: Path, limit: int = 200_000) -> dict[str, float]:
    """Microseconds per event of parse+validate, feature update, and the engine after parsing (rules included)."""
    raws = records(path, limit)
    n = len(raws)
    started = time.perf_counter()
    envs = [parse(raw) for raw in raws]
    parse_us = (time.perf_counter() - started) / n * 1e6
    envs = [e for e in envs if not isinstance(e, Rejected)]

    lifecycle = Lifecycle()
    states: dict[str, CustomerState] = {}
    started = time.perf_counter()
    for env in envs:
        state = states.get(env.customer_id)
        if state is None:
            state = states[env.customer_id] = CustomerState(env.customer_id, env.ts_ms)
        apply_event(state, env, lifecycle)
    update_us = (time.perf_counter() - started) / len(envs) * 1e6

    no_rules = CACHE / "no-rules.yaml"
    no_rules.write_text('version: "none"\n')
    engine_none = engine_seconds(raws, load_rules(no_rules)) / n * 1e6 - parse_us
    engine_starter = engine_seconds(raws, load_rules()) / n * 1e6 - parse_us
    return {
        "parse_us": parse_us,
        "update_us": update_us,
        "engine_no_rules_us": engine_none,
        "engine_starter_us": engine_starter,
        "rules_us": engine_starter - engine_none,
    }


def engine_seconds(raws: list[RawEvent], rules: CompiledRules, batch: int = 1000) -> float:
    """Seconds the engine's pipeline (one shard per stage, parsing included) takes over ``raws`` with
    ``rules``, ``batch`` records to a source batch."""
    pipeline = Pipeline(rules)
    started = time.perf_counter()
    for start in range(0, len(raws), batch):
        pipeline.feed(raws[start : start + batch])
    pipeline.finish()
    return time.perf_counter() - started


def rule_costs(path: Path, limit: int = 50_000) -> list[tuple[str, str, float]]:
    """Microseconds per evaluation of each starter rule's condition, over real customer states."""
    rules = load_rules()
    lifecycle = Lifecycle()
    states: dict[str, CustomerState] = {}
    envs = []
    with path.open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            env = parse(RawEvent(line_no, {"source": path.name, "line": line_no}, line.rstrip(b"\n")))
            if isinstance(env, Rejected):
                continue
            state = states.setdefault(env.customer_id, CustomerState(env.customer_id, env.ts_ms))
            apply_event(state, env, lifecycle)
            envs.append((state, env))
            if line_no >= limit:
                break
    sample = envs[-5000:]
    out = []
    conditions = [(t.id, "trigger", t.when) for t in rules.triggers if t.when is not None]
    conditions += [(a.id, "audience", a.when) for a in rules.audiences]
    for rule_id, kind, when in conditions:
        started = time.perf_counter()
        for state, env in sample:
            when.evaluate(FeatureView(state, env, env.ts_ms, lifecycle))
        out.append((rule_id, kind, (time.perf_counter() - started) / len(sample) * 1e6))
    return out


def state_size(path: Path, limit: int = 300_000) -> dict[str, float]:
    """Bytes per customer: traced memory growth of both stages, and the pickled snapshot size.

    Events are parsed inside the loop and dropped after use, as in the flow, so the growth is
    what the engine keeps: customer state plus the shard structures (dedupe, links, timer heap).
    """
    pipeline = Pipeline(load_rules())
    identity, customers = pipeline.identity[0].engine, pipeline.customers[0].engine
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    events = 0
    with path.open("rb") as f:
        for line_no, line in enumerate(itertools.islice(f, limit), start=1):
            events += 1  # a batch of one: applied at once, and outputs dropped after use
            pipeline.feed([RawEvent(line_no, {"source": path.name, "line": line_no}, line.rstrip(b"\n"))])
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    count = len(customers.customers) + len(identity.customers)
    customers.config = EngineConfig(snapshots=True)
    customers.dirty = set(customers.customers)
    snapshot_bytes = len(pickle.dumps(customers.snapshot(), protocol=pickle.HIGHEST_PROTOCOL))
    return {
        "customers": count,
        "events": events,
        "memory_per_customer": grown / count,
        "snapshot_per_customer": snapshot_bytes / len(customers.customers),
    }


def machine() -> str:
    """The CPU model (from /proc/cpuinfo where there is one), its cores and the Python version."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--days", type=int, default=1, help="days of events per run (about 18 events per customer-day)")
    parser.add_argument("--max-events", type=int, help="cut each stream after this many events")
    parser.add_argument("--throughput-only", action="store_true", help="skip the per-stage, per-rule and state figures")
    args = parser.parse_args()
    tune_gc()
    print(f"machine: {machine()}")
    print("| customers | days | events | outputs | seconds | events/s (1 worker) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    paths = {}
    for customers in args.customers:
        path = paths[customers] = stream(customers, args.days, max_events=args.max_events)
        r = throughput(path)
        print(
            f"| {customers:,} | {args.days} | {r['events']:,} | {r['outputs']:,} | {r['seconds']:.1f} |"
            f" {r['rate']:,.0f} |",
            flush=True,
        )
    if args.throughput_only:
        return
    first = paths[args.customers[0]]
    s = stages(first)
    header = "| stream | parse + validate | feature update | engine, no rules | engine, starter rules | rules |"
    print(f"\n{header}\n| --- | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {first.name} | {s['parse_us']:.1f} | {s['update_us']:.1f} | {s['engine_no_rules_us']:.1f} |"
        f" {s['engine_starter_us']:.1f} | {s['rules_us']:.1f} |"
    )
    print("\n| rule | kind | us per evaluation (incl. binding its features) |\n| --- | --- | ---: |")
    for rule_id, kind, us in rule_costs(first):
        print(f"| {rule_id} | {kind} | {us:.2f} |")
    m = state_size(first)
    print("\n| state | customers | events | bytes per customer (memory growth) | bytes per customer (snapshot) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(
        f"| {first.name} | {m['customers']:,} | {m['events']:,} | {m['memory_per_customer']:,.0f} |"
        f" {m['snapshot_per_customer']:,.0f} |"
    )


if __name__ == "__main__":
    main()
