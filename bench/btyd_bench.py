"""What one read of a buy-till-you-die score costs, in CPU time, from Python (the call included).

    python bench/btyd_bench.py [--reads 200000]

For buyers of 1, 3 and 40 orders, each score read from the features record (as a rule or a profile
reads it), less the cost of a trivial call to the same record (``preferred_hour``) measured in the
same run. ``expected_orders`` and ``clv`` sum a hypergeometric series whose length grows with the
horizon against ``alpha + T``: a one-time buyer just after their order is the slowest case.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import orjson

from operators.parse import parse
from schemas.items import RawEvent
from state.customer import CustomerState, Lifecycle
from state.update import apply_event

DAY_MS = 86_400_000
T0_MS = 1_767_607_200_000  # 2026-01-05T10:00:00Z


def buyer(days: list[int], lifecycle: Lifecycle) -> CustomerState:
    """A customer with an order of 40 on each of ``days``."""
    state = CustomerState("u1", T0_MS)
    for n, day in enumerate(days):
        at = T0_MS + day * DAY_MS
        event = {
            "type": "track",
            "event": "Order Completed",
            "messageId": f"m{n}",
            "userId": "u1",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at / 1000)),
            "properties": {"order_id": f"o{n}", "total": 40.0},
        }
        apply_event(state, parse(RawEvent(n, {}, orjson.dumps(event))), lifecycle)  # type: ignore[arg-type]
    return state


def cpu_us(call: Callable[..., Any], args: tuple[Any, ...], reads: int) -> float:
    start = time.process_time()
    for _ in range(reads):
        call(*args)
    return (time.process_time() - start) / reads * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=200_000)
    args = parser.parse_args()
    lc = Lifecycle()
    pop = lc.population
    cases = {
        "1 order, a day later": ([0], 1),
        "3 orders, 6 days later": ([0, 7, 14], 20),
        "40 orders, 5 days later": (list(range(0, 200, 5)), 200),
    }
    print(f"{'buyer':26} {'p_alive':>8} {'lapse_risk':>10} {'expected_orders':>15} {'clv':>6}  (us of CPU per read)")
    for name, (days, now_day) in cases.items():
        features = buyer(days, lc).features
        now = T0_MS + now_day * DAY_MS
        base = cpu_us(features.preferred_hour, (), args.reads)
        costs = [
            cpu_us(features.p_alive, (now, pop), args.reads),
            cpu_us(features.lapse_risk, (now, lc.lapse_days, pop), args.reads),
            cpu_us(features.expected_orders, (now, pop), args.reads),
            cpu_us(features.clv, (now, pop), args.reads),
        ]
        p, r, e, c = (max(cost - base, 0.0) for cost in costs)
        print(f"{name:26} {p:8.2f} {r:10.2f} {e:15.2f} {c:6.2f}")


if __name__ == "__main__":
    main()
