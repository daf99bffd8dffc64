"""What the contact policy costs: the starter rules with the starter policy against the same rules
with no policy section (the defaults: consent enforced, decisions of one moment arbitrated, the
rules' own cooldowns), on the generated 10k-customer day.

    python bench/policy_bench.py               # the 10k-customer day, 3 alternated rounds
    python bench/policy_bench.py --rounds 5

Both run ``nudgeflow replay`` as users run it (models learning, real output files) in child
processes, alternated, measured in CPU time of the whole process. The difference is what the
starter policy's caps, quiet hours and arbitration cost, per event and per decision; the policy's
work on events that fire nothing (keeping the customer's time zone and consent log) is in both.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STARTER = REPO / "rules" / "starter.yaml"


def without_policy(folder: Path) -> Path:
    """The starter rules without their policy section (the defaults apply)."""
    text = STARTER.read_text()
    text = re.sub(r"\npolicy:\n(?:  .*\n)+", "\n", text)
    text = text.replace("offers: offers.yaml", f"offers: {STARTER.parent / 'offers.yaml'}")
    path = folder / "starter-default-policy.yaml"
    path.write_text(text)
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
        variants = {"starter policy": STARTER, "no policy section (defaults)": without_policy(Path(tmp))}
        cpu, summaries = replay_rounds(path, variants, Path(tmp), args.rounds)
    print(f"{machine()}; {path.name}: {events:,} events; best of {args.rounds} alternated rounds, CPU time\n")
    print("| policy | CPU seconds | µs per event | triggers | suppressed | deferred |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, seconds in cpu.items():
        summary = summaries[name]
        triggers = sum(summary.get("triggers", {}).values())
        suppressed = sum(sum(rules.values()) for rules in summary.get("suppressions", {}).values())
        deferred = sum(summary.get("deferred", {}).values())
        best = min(seconds)
        print(f"| {name} | {best:.2f} | {best / events * 1e6:.1f} | {triggers:,} | {suppressed:,} | {deferred:,} |")
    starter, default = (min(seconds) for seconds in cpu.values())
    decisions = sum(summaries["starter policy"].get("triggers", {}).values())
    decisions += sum(sum(r.values()) for r in summaries["starter policy"].get("suppressions", {}).values())
    delta = starter - default
    print(
        f"\nstarter policy − default: {delta:+.2f} CPU-s, **{delta / events * 1e6:+.2f} µs per event**,"
        f" {delta / max(decisions, 1) * 1e6:+.0f} µs per decision it judged ({decisions:,})"
    )


if __name__ == "__main__":
    main()
