"""What the rules' conditions cost: evaluated natively, or every one of them in Python.

    python bench/rules_bench.py                        # the 10k day, 3 rounds
    python bench/rules_bench.py --customers 2000 --days 7 --rounds 5

Runs the engine's pipeline (both stages, one shard each, parsing included) over a generated
recording with the starter rules, alternately with the native rule program
(``operators/rule_program.py``) and with every condition left to Python (each audience deferred to
the Python evaluator, as all were before), and prints the CPU time (user + sys) per event of each
round. Both must give the same outputs, byte for byte.
"""

from __future__ import annotations

import argparse
import resource
from typing import Any

from flow_bench import records, stream

import operators.rule_program as rule_program
from operators.pipeline import Pipeline
from operators.rules import load_rules
from schemas.items import RawEvent


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(raws: list[RawEvent], native: bool, batch: int = 1000) -> tuple[float, list[Any]]:
    """CPU seconds of one run over ``raws``, and its outputs."""
    lower = rule_program.lower
    if not native:
        rule_program.lower = lambda expression: None  # type: ignore[assignment]
    try:
        pipeline = Pipeline(load_rules())
    finally:
        rule_program.lower = lower
    started = cpu_seconds()
    outputs = []
    for start in range(0, len(raws), batch):
        outputs += pipeline.feed(raws[start : start + batch])
    outputs += pipeline.finish()
    return cpu_seconds() - started, [(o.stream, o.body) for o in outputs if o.stream != "stats"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    raws = records(stream(args.customers, args.days))
    n = len(raws)
    for round_number in range(1, args.rounds + 1):
        python_s, python_out = run(raws, native=False)
        native_s, native_out = run(raws, native=True)
        assert native_out == python_out, "the native program changed an output"
        print(
            f"round {round_number}: {n:,} events; conditions in Python {python_s / n * 1e6:.1f} us/event,"
            f" native {native_s / n * 1e6:.1f} us/event ({1 - native_s / python_s:.1%} less)"
        )


if __name__ == "__main__":
    main()
