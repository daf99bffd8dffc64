"""What the offers catalogue and the reference data cost: the starter rules with their catalogue
(windows, stores, validity, budgets, caps) and the sample stores and products, against the same rules
without the reference data, and with a plain catalogue (ids, channels, content, audiences only), on
the generated 10k-customer day.

    python bench/offers_bench.py               # the 10k-customer day, 3 alternated rounds
    python bench/offers_bench.py --rounds 6 --max-events 60000   # its first 60,000 events

Each variant runs ``nudgeflow replay`` as users run it (models learning, real output files) in this
process, alternated, after the models' libraries are loaded, measured in CPU time (a child process
per run adds start-up noise of the same order as what is measured). The differences are what the
catalogue's gates cost (per decision) and the reference data (a lookup only where an event lacks a
time zone, a category or a price).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

REPO = Path(__file__).resolve().parent.parent
STARTER = REPO / "rules" / "starter.yaml"
OFFERS = REPO / "rules" / "offers.yaml"
PLAIN_FIELDS = ("id", "description", "channels", "content", "audiences")
REFERENCE = {
    "NUDGEFLOW_STORES": str(REPO / "samples" / "stores.csv"),
    "NUDGEFLOW_PRODUCTS": str(REPO / "samples" / "products.csv"),
}


def plain_catalogue(folder: Path) -> Path:
    """The starter rules with their offers stripped of every gate (as the catalogue was before)."""
    offers = yaml.safe_load(OFFERS.read_text())["offers"]
    plain = [{key: offer[key] for key in PLAIN_FIELDS if key in offer} for offer in offers]
    (folder / "offers.yaml").write_text(yaml.safe_dump({"offers": plain}, sort_keys=False))
    path = folder / "starter-plain-offers.yaml"
    path.write_text(STARTER.read_text())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-events", type=int, default=None, help="replay only the stream's first N events")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    sys.path.insert(0, str(REPO))
    from flow_bench import machine, stream

    from flows.cli import main as nudgeflow
    from operators.models import import_model_libraries

    import_model_libraries()

    path = stream(args.customers, 1, max_events=args.max_events)
    events = sum(1 for line in path.open("rb") if line.strip())
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "starter catalogue, sample stores and products": (STARTER, REFERENCE),
            "starter catalogue, no reference data": (STARTER, {}),
            "plain catalogue, no reference data": (plain_catalogue(Path(tmp)), {}),
        }
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        summaries = {}
        for _ in range(args.rounds):
            for name, (rules, env) in variants.items():
                out = Path(tmp) / name.replace(" ", "-").replace(",", "")
                os.environ.update(env)
                try:
                    shutil.rmtree(out, ignore_errors=True)  # no erasure ledger of a round before
                    started = time.process_time()
                    nudgeflow(["replay", str(path), "--rules", str(rules), "--out", str(out), "--force", "--quiet"])
                    cpu[name].append(time.process_time() - started)
                finally:
                    for key in env:
                        os.environ.pop(key)
                summaries[name] = orjson.loads((out / "summary.json").read_bytes())
    print(f"{machine()}; {path.name}: {events:,} events; {args.rounds} alternated rounds, CPU time\n")
    print("| offers | best CPU s | median CPU s | µs per event (best) | triggers | budget_spent |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, seconds in cpu.items():
        summary = summaries[name]
        triggers = sum(summary.get("triggers", {}).values())
        spent = sum(summary.get("suppressions", {}).get("budget_spent", {}).values())
        best, median = min(seconds), sorted(seconds)[len(seconds) // 2]
        print(f"| {name} | {best:.2f} | {median:.2f} | {best / events * 1e6:.1f} | {triggers:,} | {spent:,} |")
    for statistic in (min, lambda runs: sorted(runs)[len(runs) // 2]):
        both, gated, plain = (statistic(seconds) for seconds in cpu.values())
        label = "best" if statistic is min else "median"
        for what, delta in (("the catalogue's gates", gated - plain), ("the reference data", both - gated)):
            print(f"{what} ({label}): {delta:+.2f} CPU-s, **{delta / events * 1e6:+.2f} µs per event**")


if __name__ == "__main__":
    main()
