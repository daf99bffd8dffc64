"""What an order with many lines costs against a ``Product Viewed``: CPU time per event.

    python bench/order_lines_bench.py                 # 2,000 customers, 20 events each, 50-line orders
    python bench/order_lines_bench.py --lines 1 10 50 161

Two streams for the same customers and times go through the engine's pipeline (parsing, both
stages, the starter rules, models learning): one of ``Product Viewed`` events, one of ``Order
Completed`` events whose ``products`` hold ``--lines`` lines each (product, category, price,
quantity, name, as a shop sends them). Printed: CPU microseconds per event of each, and the ratio
(the aim: a 50-line order under 3 times a view).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.runtime import tune_gc
from operators.engine import EngineConfig
from operators.pipeline import Pipeline
from operators.rules import load_rules
from schemas.items import RawEvent

START_MS = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1000)
CATEGORIES = ("shoes", "tops", "denim", "beauty", "coffee", "books", "kids", "outerwear")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def product(n: int) -> dict[str, Any]:
    category = CATEGORIES[n % len(CATEGORIES)]
    return {
        "product_id": f"p-{n:04d}",
        "category": category,
        "name": f"Kestrel {category} {n}",
        "price": round(9.99 + (n % 40) * 2.5, 2),
        "currency": "EUR",
    }


def event(kind: str, customer: int, n: int, lines: int) -> dict[str, Any]:
    """The ``n``-th event of a customer: a view, or an order of ``lines`` lines."""
    at = START_MS + n * 600_000 + customer * 7
    base = {
        "type": "track",
        "messageId": f"m-{kind}-{customer}-{n}",
        "userId": f"u-{customer:06d}",
        "anonymousId": f"a-{customer:06d}",
        "timestamp": iso(at),
        "receivedAt": iso(at + 400),
        "context": {"channel": "app", "locale": "en-IE", "timezone": "Europe/Dublin"},
    }
    if kind == "view":
        return {**base, "event": "Product Viewed", "properties": product(customer * 31 + n)}
    products = [{**product(customer * 31 + n * 7 + i), "quantity": 1 + i % 3} for i in range(lines)]
    total = round(sum(p["price"] * p["quantity"] for p in products), 2)
    props = {"order_id": f"o-{customer}-{n}", "total": total, "currency": "EUR", "products": products}
    return {**base, "event": "Order Completed", "properties": props}


def cpu_us_per_event(kind: str, customers: int, per_customer: int, lines: int) -> float:
    """CPU microseconds per event of the pipeline over the stream of ``kind`` events."""
    payloads = [orjson.dumps(event(kind, c, n, lines)) for n in range(per_customer) for c in range(customers)]
    raws = [RawEvent(i, {"source": kind, "line": i}, p) for i, p in enumerate(payloads, 1)]
    pipeline = Pipeline(load_rules(), EngineConfig(models="learn"))
    gc.collect()
    started = time.process_time()
    for start in range(0, len(raws), 1000):
        pipeline.feed(raws[start : start + 1000])
    pipeline.finish()
    return (time.process_time() - started) / len(raws) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20, help="events per customer")
    parser.add_argument("--lines", type=int, nargs="*", default=[50])
    args = parser.parse_args()
    tune_gc()
    view = cpu_us_per_event("view", args.customers, args.events, 0)
    print(f"{args.customers:,} customers x {args.events} events, pipeline with starter rules, models learning")
    print("| event | CPU us per event | against a view |\n| --- | ---: | ---: |")
    print(f"| Product Viewed | {view:.1f} | 1.00 |")
    for lines in args.lines:
        order = cpu_us_per_event("order", args.customers, args.events, lines)
        print(f"| Order Completed, {lines} lines | {order:.1f} | {order / view:.2f} |", flush=True)


if __name__ == "__main__":
    main()
