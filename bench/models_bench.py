"""What the models cost: per decision, per outcome, per product event, and in the whole flow.

    python bench/models_bench.py

Microseconds on one core, from states built by the starter rules on a generated stream.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.synthetic import generate_events
from flows.evaluate import Run
from flows.runtime import tune_gc
from operators.engine import EngineConfig
from operators.models import ShardModels
from operators.models.bandit import segment
from operators.models.propensity import decision_features
from operators.rules import load_rules
from state.catalogue import FeatureView


def per_call(fn: Any, items: list[Any], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - started) / len(items) * 1e6)
    return best


def flow_seconds(lines: list[bytes], models: str) -> float:
    """CPU seconds of one in-process run (CPU time: steadier than wall time on a shared machine)."""
    started = time.process_time()
    Run(load_rules(), EngineConfig(models=models)).feed(lines)  # type: ignore[arg-type]
    return time.process_time() - started


ENTRY_POINTS = ("product_touched", "recommend", "propensity_score", "ordered", "expire", "choose_offer")


def time_in_models(lines: list[bytes]) -> dict[str, tuple[int, float]]:
    """Calls and seconds spent in each of the models' entry points during one learning run."""
    spent: dict[str, list[float]] = {name: [0, 0.0] for name in ENTRY_POINTS}
    originals = {name: getattr(ShardModels, name) for name in ENTRY_POINTS}

    def timed(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                spent[name][0] += 1
                spent[name][1] += time.perf_counter() - started

        return call

    try:
        for name in ENTRY_POINTS:
            setattr(ShardModels, name, timed(name))
        Run(load_rules(), EngineConfig(models="learn")).feed(lines)
    finally:
        for name, original in originals.items():
            setattr(ShardModels, name, original)
    return {name: (int(calls), seconds) for name, (calls, seconds) in spent.items()}


def main() -> None:
    tune_gc()  # as `nudgeflow run` does
    lines = [orjson.dumps(e) for e in generate_events(1000, 14, seed=3)]
    run = Run(load_rules(), EngineConfig())
    run.feed(lines)
    engine, models = run.customers, run.customers.models
    assert models is not None
    lifecycle = engine.config.lifecycle
    states = list(engine.customers.values())
    views = [FeatureView(s, None, s.last_seen_ms, lifecycle, engine.scorers) for s in states]
    xs = [decision_features(v) for v in views]
    offers = ["browse-10pct", "free-shipping", "vip-early-access"]
    rows = {
        "decision features (14 floats from the feature view)": per_call(
            lambda s: decision_features(FeatureView(s, None, s.last_seen_ms, lifecycle)), states
        ),
        "propensity score (StandardScaler, LogisticRegression)": per_call(models.propensity.score, xs),
        "propensity learn (progressive score, ADWIN, learn_one)": per_call(
            lambda x: models.propensity.learn(x, True), xs
        ),
        "offer choice among 3 (segment, scores, hash draw)": per_call(
            lambda v: models.bandit.choose(f"d{id(v)}", offers, segment(v)), views
        ),
        "offer reward learnt (stats.Mean)": per_call(lambda v: models.bandit.learn(offers[0], segment(v), True), views),
        "recommender learn (one product event)": per_call(
            lambda s: models.recommender.learn(list(s.products.top(4)), "p-0001", "coffee"), states
        ),
        "recommend 4 (a trigger's carousel)": per_call(lambda s: models.recommend(s, 4, s.last_seen_ms), states),
    }
    print(f"{len(lines):,} events, {len(states):,} customers\n")
    print("| operation | us |\n| --- | ---: |")
    for name, us in rows.items():
        print(f"| {name} | {us:.1f} |")
    runs = [(flow_seconds(lines, "off"), flow_seconds(lines, "learn")) for _ in range(3)]
    off, learn = min(r[0] for r in runs), min(r[1] for r in runs)
    print(
        f"\nwhole engine, one shard, in-process (best of 3, CPU time): models off {len(lines) / off:,.0f} events/s,"
        f" learning {len(lines) / learn:,.0f} events/s ({(learn - off) / len(lines) * 1e6:.1f} us per event)"
    )
    print("\ntime in the models during a learning run (wall clock, per entry point):\n")
    print("| entry point | calls | us per call | us per event |\n| --- | ---: | ---: | ---: |")
    for name, (calls, seconds) in time_in_models(lines).items():
        us = seconds / calls * 1e6 if calls else 0.0
        print(f"| {name} | {calls:,} | {us:.1f} | {seconds / len(lines) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
