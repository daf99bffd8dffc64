"""What the models cost per event, in CPU time, on a generated stream replayed through the engine.

    python bench/models_bench.py                           # the 10k-customer day of flow_bench
    python bench/models_bench.py --baseline ../old-checkout  # the same figures for other code, in the same run

The stream is parsed first; then both engine stages (one shard each) apply it, with the models
off, learning, and learning with every product event's hook made a no-op (what the
recommender's learning and its sampled checks cost, by difference). Then one learning run with
each of the models' entry points timed (CPU time of the thread, less the timer's own cost
measured in the same run). With ``--baseline`` each measurement alternates between this code
and the other checkout (run as a subprocess of the same script), best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = (
    "product_touched",
    "recommend",
    "propensity_score",
    "decided",
    "ordered",
    "expire",
    "choose_offer",
    "rewarded",
    "expire_offers",
    "stats",
    "export",
)


def load_envelopes(path: Path, limit: int | None) -> list[Any]:
    from operators.parse import Rejected, parse

    try:
        from schemas.items import RawEvent
    except ImportError:  # an older checkout
        from operators.parse import RawEvent  # type: ignore[attr-defined,no-redef]

    envs = []
    with path.open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            if limit is not None and line_no > limit:
                break
            env = parse(RawEvent(line_no, {"line": line_no}, line.rstrip(b"\n")))
            if not isinstance(env, Rejected):
                envs.append(env)
    return envs


def _stages() -> tuple[Any, Any]:
    """How this checkout builds a stage's shard engine, and feeds one event through both stages."""
    try:
        from operators.engine import Forward, shard_engine
        from operators.ordering import Tick
        from schemas.envelope import Envelope
    except ImportError:  # an older checkout
        from bench.flow_bench import feed  # type: ignore[attr-defined]
        from operators.engine import ShardEngine  # type: ignore[attr-defined]

        return ShardEngine, feed

    def feed_stages(identity: Any, customers: Any, env: Any, out: list[Any], tick: bool) -> None:
        forwarded: list[Any] = []
        identity.process(env, forwarded)
        if tick:
            identity.process(Tick(env.mark_ms, env.seq, 0), forwarded)
        for item in forwarded:
            if isinstance(item, Envelope | Forward | Tick):  # what the identity stage hands on
                customers.process(item, out)

    return shard_engine, feed_stages


def engine_cpu(envs: list[Any], models: str) -> float:
    """CPU seconds both engine stages take to apply ``envs`` (``models``: off, learn, or learn without
    the product-event hook)."""
    from operators.engine import EngineConfig
    from operators.models import ShardModels
    from operators.rules import load_rules

    rules = load_rules()
    mode = "learn" if models == "no-product-hook" else models
    stage, feed = _stages()
    original = ShardModels.product_touched
    if models == "no-product-hook":
        ShardModels.product_touched = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        identity = stage(rules, EngineConfig(models=mode), "identity")  # type: ignore[arg-type]
        customers = stage(rules, EngineConfig(models=mode), "customer")  # type: ignore[arg-type]
        out: list[Any] = []
        started = time.process_time()
        for env in envs:
            feed(identity, customers, env, out, tick=env.seq % 1000 == 0)
            out.clear()
        customers.finish(out)
        return time.process_time() - started
    finally:
        ShardModels.product_touched = original  # type: ignore[method-assign]


def entry_point_cpu(envs: list[Any]) -> dict[str, list[float]]:
    """Calls and CPU seconds in each of ShardModels' entry points during one learning run."""
    from operators.models import ShardModels

    spent: dict[str, list[float]] = {}
    originals = {name: getattr(ShardModels, name) for name in ENTRY_POINTS if hasattr(ShardModels, name)}
    clock = time.thread_time_ns

    def timed(name: str) -> Any:
        original, tally = originals[name], spent.setdefault(name, [0, 0.0])

        def call(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return original(*args, **kwargs)
            finally:
                tally[0] += 1
                tally[1] += clock() - started

        return call

    tally = [0, 0.0]  # the timer's own cost, measured around a no-op
    for _ in range(100_000):
        begun = clock()
        try:
            _nothing()
        finally:
            tally[0] += 1
            tally[1] += clock() - begun
    overhead = tally[1] / tally[0]
    try:
        for name in originals:
            setattr(ShardModels, name, timed(name))
        engine_cpu(envs, "learn")
    finally:
        for name, original in originals.items():
            setattr(ShardModels, name, original)
    return {name: [calls, max(0.0, (ns - calls * overhead) / 1e9)] for name, (calls, ns) in spent.items()}


def _nothing() -> None:
    return None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One set of figures for the code on ``sys.path`` (printed as JSON by ``--child``)."""
    import operators.models
    from flows.runtime import tune_gc

    tune_gc()  # as `nudgeflow run` does
    envs = load_envelopes(args.stream, args.max_events)
    figures: dict[str, Any] = {"events": len(envs), "code": operators.models.__file__}
    for models in ("off", "learn", "no-product-hook"):
        figures[models] = engine_cpu(envs, models)
    figures["entry_points"] = entry_point_cpu(envs)
    return figures


def child(code: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--code", str(code)]
    command += ["--stream", str(args.stream)]
    if args.max_events:
        command += ["--max-events", str(args.max_events)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the smallest CPU time over the runs (the least disturbed by other work)."""
    merged = dict(runs[0])
    for key in ("off", "learn", "no-product-hook"):
        merged[key] = min(r[key] for r in runs)
    merged["entry_points"] = {
        name: [calls, min(r["entry_points"].get(name, [0, 0.0])[1] for r in runs)]
        for name, (calls, _) in runs[0]["entry_points"].items()
    }
    return merged


def report(label: str, f: dict[str, Any]) -> None:
    n = f["events"]
    us = {key: f[key] / n * 1e6 for key in ("off", "learn", "no-product-hook")}
    print(f"\n### {label} ({f['code']}): {n:,} events, engine CPU time per event (both stages, one shard each)\n")
    print("| models | us per event |\n| --- | ---: |")
    print(f"| off | {us['off']:.1f} |\n| learn | {us['learn']:.1f} |")
    print(f"| learn, product events not given to the models | {us['no-product-hook']:.1f} |")
    print(f"| **models' cost (learn - off)** | **{us['learn'] - us['off']:.1f}** |")
    print(f"| product events' learning and checks (learn - no hook) | {us['learn'] - us['no-product-hook']:.1f} |")
    print("\n| entry point | calls | us per call | us per event |\n| --- | ---: | ---: | ---: |")
    total = 0.0
    for name, (calls, seconds) in f["entry_points"].items():
        if calls:
            total += seconds
            print(f"| {name} | {calls:,} | {seconds / calls * 1e6:.2f} | {seconds / n * 1e6:.2f} |")
    print(f"| all entry points | | | {total / n * 1e6:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--max-events", type=int)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each code; the best is reported")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure in the same run, alternating")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stream", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(args.code.resolve()))
        print(json.dumps(measure(args)))
        return
    sys.path.insert(0, str(ROOT))
    from bench.flow_bench import stream

    args.stream = stream(args.customers, args.days)  # made once, then cached
    codes = {"this code": ROOT}
    if args.baseline is not None:
        codes = {f"baseline ({args.baseline})": args.baseline, **codes}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in codes}
    for _ in range(args.repeat):
        for label, code in codes.items():
            runs[label].append(child(code, args))
    for label in codes:
        report(label, best(runs[label]))


if __name__ == "__main__":
    main()
