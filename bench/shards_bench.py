"""What sharding does to the models' quality: replicas that each see a share of the customers.

    python bench/shards_bench.py [--customers 1000] [--days 28] [--seed 5] [--shards 1 4 16]
                                 [--sync-shards 16] [--sync-hours 1 6 24]

The generated stream is split by customer shard as the flow splits it, each part runs through
its own single-shard engine (one replica of every model), and the progressive checks are
summed: the recommender's hit rate at 10 on sampled views against most-popular, and the
propensity model's ROC AUC on its resolved outcomes.

The second table measures lagged global learning: the shards' engines run period by period of
event time (every ``--sync-hours``), and at each boundary every replica adopts what a global
learner fed all shards' examples has learnt (bench/model_sync.py has the variants).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model_sync import VARIANTS, lockstep_quality

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
    parser.add_argument("--sync-shards", type=int, default=16, help="shards of the lagged global learning table")
    parser.add_argument("--sync-hours", type=int, nargs="*", default=[1, 6, 24], help="boundary periods (none: skip)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    tune_gc()
    events = list(generate_events(args.customers, args.days, args.seed))
    print(f"{len(events):,} events, {args.customers:,} customers, {args.days} days, seed {args.seed}\n")
    print("| shards | sampled views | recommender hit@10 | most popular hit@10 | propensity AUC |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    # a customer's events stay together, anonymous ones included (the flow hands them over on login)
    user_of = {e["anonymousId"]: e["userId"] for e in events if e.get("anonymousId") and e.get("userId")}
    for shards in args.shards:
        checked, model, popular, propensity = quality(split(events, user_of, shards))
        print(f"| {shards} | {checked:,} | {model:.3f} | {popular:.3f} | {_shown(propensity)} |")
    if not args.sync_hours:
        return
    shards = args.sync_shards
    timed = split(events, user_of, shards, timed=True)
    print(f"\n{shards} shards, replicas adopting global parameters at event-time boundaries\n")
    print("| period | variant | sampled views | recommender hit@10 | most popular hit@10 | propensity AUC |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for index, hours in enumerate(args.sync_hours):
        for name in args.variants:
            if name == "none" and index:
                continue  # the same whatever the period: it never adopts
            checked, model, popular, propensity = lockstep_quality(timed, hours * 3_600_000, VARIANTS[name])
            print(f"| {hours} h | {name} | {checked:,} | {model:.3f} | {popular:.3f} | {_shown(propensity)} |")


def split(events: list[dict], user_of: dict[str, str], shards: int, timed: bool = False) -> list[list[Any]]:
    """The events as lines, by customer shard (with ``timed``: (event time in ms, line) pairs)."""
    parts: list[list[Any]] = [[] for _ in range(shards)]
    for event in events:
        customer = event.get("userId") or user_of.get(event.get("anonymousId")) or event.get("anonymousId") or ""
        line = orjson.dumps(event)
        parts[shard_of(customer, shards)].append((event_ms(event), line) if timed else line)
    return parts


def event_ms(event: dict) -> int:
    return int(datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp() * 1000)


def _shown(auc_value: float | None) -> str:
    return "n/a" if auc_value is None else f"{auc_value:.3f}"


if __name__ == "__main__":
    main()
