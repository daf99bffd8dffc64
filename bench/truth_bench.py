"""The engine on a known truth, over several seeds: does the policy hold, do caps pay, is the lift right?

    python bench/truth_bench.py                                  # 1,000 customers, 28 days, seeds 1-10
    python bench/truth_bench.py --customers 300 --days 14 --seeds 1 2 3

Each seed generates customers who answer the engine's triggers with a known lift and fatigue
(``connectors/responders.py``) and runs them in a closed loop (``flows/simulate.py``) twice: with
the starter rules, and with the same rules without their caps and cooldowns; both with the
experiments of :data:`HOLDOUT_AND_TEST` (a global holdout of half the customers, and the browse offer
tested against no trigger). For each run it prints the messages delivered, the orders they caused
(the truth's count, and its expectation: the sum of the deliveries' chances) per message, and the
deliveries that break the rules' policy checked from the outside (``flows/audit.py``; must be 0);
and for each experiment, the lift the engine measured with its 95 % interval against the true
lift (``flows/truth.py``), and how often the interval covers it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from flows.audit import Customers, delivered, policy_breaches
from flows.lift import experiment_report
from flows.simulate import Simulation, simulate
from flows.truth import HOLDOUT_AND_TEST, exposures, measured_arms, per_message, true_lift, uncapped_text
from operators.rules import STARTER_RULES, CompiledRules, parse_rules
from schemas.experiments import CONTROL, HOLDOUT, TREATED


@dataclass
class Lift:
    experiment: str
    exposed: int  # treated and control
    measured: float
    interval: tuple[float, float]
    truth: float

    @property
    def covered(self) -> bool:
        return self.interval[0] <= self.truth <= self.interval[1]


@dataclass
class Row:
    seed: int
    variant: str
    events: int
    figures: dict[str, Any]
    breaches: int
    lifts: list[Lift]
    seconds: float


def with_experiments(text: str) -> CompiledRules:
    return parse_rules(text + HOLDOUT_AND_TEST, str(STARTER_RULES))


def run(customers: int, days: int, seed: int, variant: str, rules: CompiledRules) -> Row:
    started = time.perf_counter()
    sim = simulate(customers, days, seed, rules)
    customers_seen = Customers(sim.lines)
    breaches = policy_breaches(delivered(sim.records()), customers_seen, rules)
    return Row(
        seed,
        variant,
        len(sim.lines),
        per_message(sim.truth["deliveries"]),
        sum(map(len, breaches.values())),
        lifts(sim, rules, customers_seen),
        time.perf_counter() - started,
    )


def lifts(sim: Simulation, rules: CompiledRules, customers: Customers) -> list[Lift]:
    """Each experiment's measured lift of its treated arm, and the truth's."""
    config, measured, exposed = rules.experiments, measured_arms(sim.outputs), exposures(sim.outputs)
    transactional = {trigger.rule.id for trigger in rules.triggers if trigger.rule.transactional}
    withheld = {HOLDOUT: (lambda d: d["rule_id"] not in transactional, config.holdout.conversion_window)}  # type: ignore[union-attr]
    for test in config.tests:
        withheld[test.id] = (lambda d, rule=test.rule: d["rule_id"] == rule, test.conversion_window)
    found = []
    for experiment, (in_experiment, window) in withheld.items():
        arms = measured[experiment]
        row = experiment_report(arms, CONTROL)[TREATED]
        truth = true_lift(exposed[experiment], TREATED, sim.truth["deliveries"], customers, window, in_experiment)
        exposed_count = sum(counts.get("exposed", 0) for counts in arms.values())
        found.append(Lift(experiment, exposed_count, row["lift"], tuple(row["lift_ci"]), truth or 0.0))
    return found


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


def lift_table(rows: list[Row]) -> list[str]:
    lines = [
        "",
        "| seed | rules | experiment | exposed | measured lift | 95 % interval | true lift | covered |",
        "| ---: | --- | --- | ---: | ---: | --- | ---: | --- |",
    ]
    for row in rows:
        for lift in row.lifts:
            lo, hi = lift.interval
            lines.append(
                f"| {row.seed} | {row.variant} | {lift.experiment} | {lift.exposed:,} | {lift.measured:+.4f} "
                f"| [{lo:+.4f}, {hi:+.4f}] | {lift.truth:+.4f} | {'yes' if lift.covered else 'no'} |"
            )
    every = [lift for row in rows for lift in row.lifts]
    for experiment in dict.fromkeys(lift.experiment for lift in every):
        mine = [lift for lift in every if lift.experiment == experiment]
        covered = sum(lift.covered for lift in mine)
        lines.append(f"\n{experiment}: the interval covers the true lift in {covered} of {len(mine)} runs.")
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
    variants = {
        "starter": with_experiments(STARTER_RULES.read_text()),
        "no caps or cooldowns": with_experiments(uncapped_text(STARTER_RULES.read_text(), str(STARTER_RULES))),
    }
    rows = [
        run(args.customers, args.days, seed, variant, rules)
        for seed in args.seeds
        for variant, rules in variants.items()
    ]
    print(f"{args.customers:,} customers, {args.days} days, seeds {', '.join(map(str, args.seeds))}; 16 shards.")
    print()
    print("\n".join(table(rows) + summary(rows) + lift_table(rows)))
    print()
    print(f"{sum(row.seconds for row in rows):.0f} s for {len(rows)} runs.")


if __name__ == "__main__":
    main()
