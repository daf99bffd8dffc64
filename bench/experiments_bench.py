"""What experiments cost: the starter rules against the same rules with a 5% global holdout, a
three-arm test of the cart reminder and CUPED, on the generated 10k-customer day.

    python bench/experiments_bench.py               # the 10k-customer day, 3 alternated rounds
    python bench/experiments_bench.py --rounds 5

Both run ``nudgeflow replay`` as users run it (models learning, real output files) in child
processes, alternated, measured in CPU time of the whole process. The difference is what
assignment, exposures, conversions and the ``experiments.jsonl`` report cost, per event and per
decision that reached the holdout gate; attribution (on in both) is in both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STARTER = REPO / "rules" / "starter.yaml"
EXPERIMENTS = """
experiments:
  holdout: {share: 0.05, salt: bench}
  pre_period: 30d
  tests:
    - id: cart_copy
      rule: cart_abandonment_push
      arms:
        - {id: personalized, share: 0.5}
        - {id: generic, share: 0.25, content: {template: cart_generic}}
        - {id: control, share: 0.25, send: false}
"""


def with_experiments(folder: Path) -> Path:
    """The starter rules with an experiments section."""
    text = STARTER.read_text().replace("offers: offers.yaml", f"offers: {STARTER.parent / 'offers.yaml'}")
    path = folder / "starter-experiments.yaml"
    path.write_text(text + EXPERIMENTS)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    from floor_bench import replay_rounds
    from flow_bench import machine, stream

    path = stream(args.customers, 1)
    events = sum(1 for line in path.open("rb") if line.strip())
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"starter": STARTER, "starter + holdout, test, CUPED": with_experiments(Path(tmp))}
        cpu, summaries = replay_rounds(path, variants, Path(tmp), args.rounds)
    print(f"{machine()}; {path.name}: {events:,} events; best of {args.rounds} alternated rounds, CPU time\n")
    print("| rules | CPU seconds | µs per event | triggers | exposures | attributions |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, seconds in cpu.items():
        summary = summaries[name]
        triggers = sum(summary.get("triggers", {}).values())
        by_experiment = summary.get("experiments", {}).values()
        exposed = sum(arm.get("exposed", 0) for arms in by_experiment for arm in arms.values())
        attributions = summary.get("outputs", {}).get("attributions.jsonl", 0)
        best = min(seconds)
        print(f"| {name} | {best:.2f} | {best / events * 1e6:.1f} | {triggers:,} | {exposed:,} | {attributions:,} |")
    starter, measured = (min(seconds) for seconds in cpu.values())
    experiments = summaries["starter + holdout, test, CUPED"]
    gated = sum(experiments.get("triggers", {}).values())
    gated += sum(experiments.get("suppressions", {}).get("holdout", {}).values())
    delta = measured - starter
    print(
        f"\nexperiments − starter: {delta:+.2f} CPU-s, **{delta / events * 1e6:+.2f} µs per event**,"
        f" {delta / max(gated, 1) * 1e6:+.0f} µs per decision at the holdout gate ({gated:,})"
    )


if __name__ == "__main__":
    main()
