"""What undoing a failed event costs when nothing fails: the checkpoint of a customer taken before each event.

    python bench/undo_bench.py            # 5,000 customers, 7 days, the first 100,000 events

The engine checkpoints the customer before applying each event (and before each timer fires),
so that an event whose processing raises can be undone (see ``CustomerStage._customer_event``).
This runs the generated stream through both engine stages with the starter rules and prints
the engine's time per event (parsing included), the checkpoints' share of it, and what a pre-image as a snapshot
encoding (``state.codec.encode``) would cost instead.
"""

from __future__ import annotations

import argparse
import time

from flow_bench import engine_seconds, records, stream

from operators.parse import Rejected, parse
from operators.rules import load_rules
from state import codec
from state.customer import Checkpoint, CustomerState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    path = stream(args.customers, args.days, max_events=args.events)
    raws = records(path)
    n = sum(1 for raw in raws if not isinstance(parse(raw), Rejected))

    checkpoint = CustomerState.checkpoint
    spent = {"checkpoints": 0, "checkpoint": 0.0, "encode": 0.0}

    def timed_checkpoint(state: CustomerState, features: bool = True) -> Checkpoint:
        started = time.perf_counter()
        taken = checkpoint(state, features)
        spent["checkpoint"] += time.perf_counter() - started
        started = time.perf_counter()
        codec.encode(state)
        spent["encode"] += time.perf_counter() - started
        spent["checkpoints"] += 1
        return taken

    CustomerState.checkpoint = timed_checkpoint  # type: ignore[method-assign]
    engine_us = (engine_seconds(raws, load_rules()) - spent["encode"]) / n * 1e6
    per_event = {name: spent[name] / n * 1e6 for name in ("checkpoint", "encode")}
    print(f"{n:,} events, {spent['checkpoints'] / n:.2f} checkpoints per event")
    print(f"engine {engine_us:.1f} us/event, of which checkpoints {per_event['checkpoint']:.1f} us", end="")
    print(f" ({per_event['checkpoint'] / engine_us:.0%})")
    print(f"an encoded pre-image (state.codec.encode) instead: {per_event['encode']:.1f} us/event")


if __name__ == "__main__":
    main()
