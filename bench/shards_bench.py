"""What sharding does to the models' quality: replicas that each see a share of the customers.

    python bench/shards_bench.py [--customers 1000] [--days 28] [--seed 5] [--shards 1 4 16]

The generated stream is split by customer shard as the flow splits it, each part runs through
its own single-shard engine (one replica of every model), and the progressive checks are
summed: the recommender's hit rate at 10 on sampled views against most-popular, and the
propensity model's ROC AUC on its resolved outcomes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.synthetic import generate_events
from flows.evaluate import Run, auc
from flows.runtime import tune_gc
from operators.engine import EngineConfig
from operators.ordering import shard_of
from operators.rules import load_rules


def quality(parts: list[list[bytes]]) -> tuple[int, float, float, float | None]:
    """Sampled views, model hit rate, most-popular hit rate, propensity AUC, over all parts."""
    checked = hits = popular = 0
    records: list[tuple[float, float, float, bool]] = []  # calibrated score, raw score, baseline, outcome
    for lines in parts:
        run = Run(load_rules(), EngineConfig())
        run.feed(lines)
        stats = run.customers.models.recommender.stats()  # type: ignore[union-attr]
        checked, hits, popular = checked + stats["checked"], hits + stats["hits"], popular + stats["most_popular_hits"]
        records += run.records
    scores, labels = [p for p, *_ in records], [y for *_, y in records]
    return checked, hits / checked, popular / checked, auc(scores, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    tune_gc()
    events = list(generate_events(args.customers, args.days, args.seed))
    print(f"{len(events):,} events, {args.customers:,} customers, {args.days} days, seed {args.seed}\n")
    print("| shards | sampled views | recommender hit@10 | most popular hit@10 | propensity AUC |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    # a customer's events stay together, anonymous ones included (the flow hands them over on login)
    user_of = {e["anonymousId"]: e["userId"] for e in events if e.get("anonymousId") and e.get("userId")}
    for shards in args.shards:
        parts: list[list[bytes]] = [[] for _ in range(shards)]
        for event in events:
            customer = event.get("userId") or user_of.get(event.get("anonymousId")) or event.get("anonymousId") or ""
            parts[shard_of(customer, shards)].append(orjson.dumps(event))
        checked, model, popular, propensity = quality(parts)
        shown = "n/a" if propensity is None else f"{propensity:.3f}"
        print(f"| {shards} | {checked:,} | {model:.3f} | {popular:.3f} | {shown} |")


if __name__ == "__main__":
    main()
