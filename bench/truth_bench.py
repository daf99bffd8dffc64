"""The engine on a known truth, over several seeds: does the policy hold, do caps pay, is the lift right?

    python bench/truth_bench.py                                  # 1,000 customers, 28 days, seeds 1-10
    python bench/truth_bench.py --customers 300 --days 14 --seeds 1 2 3

Each seed generates customers who answer the engine's triggers with a known lift and fatigue
(``connectors/responders.py``) and runs them in a closed loop (``flows/simulate.py``) twice: with
the starter rules, and with the same rules without their caps and cooldowns. For each run it
prints the messages delivered, the orders they caused (the truth's count, and its expectation:
the sum of the deliveries' chances) per message, and the deliveries that break the rules' policy
checked from the outside (``flows/audit.py``; must be 0 with the policy).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from flows.audit import Customers, delivered, policy_breaches
from flows.simulate import simulate
from flows.truth import per_message, uncapped_rules
from operators.rules import STARTER_RULES, CompiledRules, load_rules


@dataclass
class Row:
    seed: int
    variant: str
    events: int
    figures: dict[str, Any]
    breaches: int
    seconds: float


def run(customers: int, days: int, seed: int, variant: str, rules: CompiledRules) -> Row:
    started = time.perf_counter()
    sim = simulate(customers, days, seed, rules)
    breaches = policy_breaches(delivered(sim.records()), Customers(sim.lines), rules)
    return Row(
        seed,
        variant,
        len(sim.lines),
        per_message(sim.truth["deliveries"]),
        sum(map(len, breaches.values())),
        time.perf_counter() - started,
    )


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| seed | rules | events | messages | orders caused | caused per message | expected per message "
        "| policy breaches |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        f = row.figures
        lines.append(
            f"| {row.seed} | {row.variant} | {row.events:,} | {f['messages']:,} | {f['caused_orders']:,} "
            f"| {f['caused_per_message']:.4f} | {f['expected_per_message']:.4f} | {row.breaches} |"
        )
    return lines


def summary(rows: list[Row]) -> list[str]:
    lines = ["", "| rules | messages | orders caused | caused per message | expected per message | policy breaches |"]
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for variant in dict.fromkeys(row.variant for row in rows):
        mine = [row for row in rows if row.variant == variant]
        messages = sum(row.figures["messages"] for row in mine)
        caused = sum(row.figures["caused_orders"] for row in mine)
        expected = sum(row.figures["expected_per_message"] * row.figures["messages"] for row in mine)
        breaches = sum(row.breaches for row in mine)
        per_message, expected_per_message = caused / messages, expected / messages
        lines.append(
            f"| {variant} | {messages:,} | {caused:,} | {per_message:.4f} | {expected_per_message:.4f} | {breaches} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    args = parser.parse_args()
    variants = {"starter": load_rules(STARTER_RULES), "no caps or cooldowns": uncapped_rules(STARTER_RULES)}
    rows = [
        run(args.customers, args.days, seed, variant, rules)
        for seed in args.seeds
        for variant, rules in variants.items()
    ]
    print(f"{args.customers:,} customers, {args.days} days, seeds {', '.join(map(str, args.seeds))}; 16 shards.")
    print()
    print("\n".join(table(rows) + summary(rows)))
    print()
    print(f"{sum(row.seconds for row in rows):.0f} s for {len(rows)} runs.")


if __name__ == "__main__":
    main()
