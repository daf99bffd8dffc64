"""The engine beside a plain-Python floor doing the same per-event work on the same file.

    python bench/floor_bench.py                       # the generated 10k-customer day
    python bench/floor_bench.py --customers 100000    # the 100k-customer day (minutes)

The floor is the per-event work of ``nudgeflow replay`` written as directly as Python allows:
decode each line (orjson) and check the fields it reads, drop duplicates (bounded memory), keep
about 25 features per customer (counts by event name, hourly and daily activity windows,
recency, session, cart, orders, spend, refunds, affinities, consent, traits, store), five rules
like the starter set, each at most once per cause, with lazily re-armed timers in event time,
and one CloudEvent written per decision. It has no dataflow, no models, no metrics and no
recovery. Both run as child processes, alternated, and are measured in CPU time (user+sys of
the whole process: start-up, reading and writing included); the engine runs as users run it
(models learning, starter rules, real output files).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from datetime import datetime
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
LATENESS = 5 * MINUTE
DEDUPE = 16 * 20_000  # message ids remembered (the engine: 20,000 per shard, 16 shards)
SESSION_GAP = 30 * MINUTE


class Customer:
    """About 25 features of one customer, as plain fields."""

    __slots__ = (
        "by_name",
        "cart",
        "cart_id",
        "cart_value",
        "categories",
        "consent",
        "days",
        "events",
        "fired",
        "first_ms",
        "hours",
        "id",
        "last_ms",
        "last_order_ms",
        "last_store",
        "orders",
        "products",
        "refunds",
        "session",
        "session_pages",
        "session_products",
        "session_start",
        "spend",
        "timers",
        "traits",
    )

    def __init__(self, customer_id: str, at_ms: int) -> None:
        self.id, self.first_ms, self.last_ms, self.events = customer_id, at_ms, at_ms, 0
        self.by_name: dict[str, int] = {}
        self.hours: dict[int, int] = {}  # activity per hour, last 24 h
        self.days: dict[int, int] = {}  # activity per day, last 30 days
        self.session, self.session_start, self.session_pages = "", at_ms, 0
        self.session_products: list[str] = []
        self.cart: dict[str, float] = {}
        self.cart_id, self.cart_value = "", 0.0
        self.orders, self.spend, self.refunds, self.last_order_ms = 0, 0.0, 0, 0
        self.categories: dict[str, float] = {}
        self.products: dict[str, float] = {}
        self.consent: dict[str, bool] = {}
        self.traits: dict[str, object] = {}
        self.last_store = ""
        self.fired: dict[str, str] = {}  # rule -> the cause it last fired for
        self.timers: dict[str, tuple[int, str, str]] = {}  # rule -> (due, cause, caused by)


def epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def update(c: Customer, name: str, event: dict, t: int, message_id: str) -> None:
    """The features: counts, windows, recency, session, cart, orders, affinities, consent, traits."""
    c.events += 1
    c.by_name[name] = c.by_name.get(name, 0) + 1
    hour, day = t // HOUR, t // DAY
    c.hours[hour] = c.hours.get(hour, 0) + 1
    c.days[day] = c.days.get(day, 0) + 1
    if len(c.hours) > 24:
        c.hours = {h: n for h, n in c.hours.items() if h > hour - 24}
    if len(c.days) > 30:
        c.days = {d: n for d, n in c.days.items() if d > day - 30}
    if t - c.last_ms > SESSION_GAP or not c.session:
        c.session, c.session_start, c.session_pages, c.session_products = message_id, t, 0, []
    c.last_ms, c.first_ms = max(c.last_ms, t), min(c.first_ms, t)
    props = event.get("properties") or {}
    store = (event.get("context") or {}).get("store")
    if store:
        c.last_store = store.get("id", "")
    if name == "page" or name == "screen":
        c.session_pages += 1
    elif name in ("Product Viewed", "Product Added", "Product Removed"):
        product, category = props.get("product_id", ""), props.get("category") or ""
        c.products[product] = c.products.get(product, 0.0) + 1.0
        c.categories[category] = c.categories.get(category, 0.0) + 1.0
        if len(c.products) > 20:
            del c.products[min(c.products, key=c.products.__getitem__)]
        if name == "Product Viewed":
            c.session_products = [*c.session_products[-9:], product]
        elif name == "Product Added":
            if not c.cart:
                c.cart_id = message_id
            c.cart[product] = c.cart.get(product, 0.0) + (props.get("price") or 0.0) * (props.get("quantity") or 1)
        else:
            c.cart.pop(product, None)
        c.cart_value = sum(c.cart.values())
    elif name == "Order Completed":
        lines = props.get("products") or []
        c.orders += 1
        c.spend += props.get("total") or sum((p.get("price") or 0.0) * (p.get("quantity") or 1) for p in lines)
        c.last_order_ms = t
        for line in lines:
            category = line.get("category") or ""
            c.categories[category] = c.categories.get(category, 0.0) + 1.0
        c.cart, c.cart_id, c.cart_value = {}, "", 0.0
    elif name == "Order Refunded":
        c.refunds += 1
    elif name == "Consent Updated":
        c.consent[props.get("channel", "")] = bool(props.get("granted"))
    elif name == "identify":
        c.traits.update(event.get("traits") or {})


class Floor:
    """Dedupe, event-time clock, lazy timers, five rules, CloudEvents."""

    def __init__(self, out: Path) -> None:
        self.customers: dict[str, Customer] = {}
        self.seen: set[str] = set()
        self.order: deque[str] = deque()
        self.heap: list[tuple[int, str, str]] = []
        self.clock = 0
        self.out = out.open("wb")
        self.counts = {"events": 0, "invalid": 0, "duplicates": 0, "decisions": 0}

    def line(self, raw: bytes) -> None:
        try:
            event = orjson.loads(raw)
            message_id, customer_id = event["messageId"], event.get("userId") or event["anonymousId"]
            t = epoch_ms(event["timestamp"])
            name = event["event"] if event["type"] == "track" else event["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.counts["invalid"] += 1
            return
        if message_id in self.seen:
            self.counts["duplicates"] += 1
            return
        self.seen.add(message_id)
        self.order.append(message_id)
        if len(self.order) > DEDUPE:
            self.seen.discard(self.order.popleft())
        self.counts["events"] += 1
        if t - LATENESS > self.clock:
            self.clock = t - LATENESS
            self.fire_due()
        c = self.customers.get(customer_id)
        if c is None:
            c = self.customers[customer_id] = Customer(customer_id, t)
        update(c, name, event, t, message_id)
        self.rules(c, name, t, message_id)

    def rules(self, c: Customer, name: str, t: int, message_id: str) -> None:
        push = c.consent.get("push", True)
        if name == "Product Added":
            self.arm(c, "cart_abandonment_push", t + 30 * MINUTE, c.cart_id, message_id)
        elif name == "Product Viewed" and not c.cart:
            self.arm(c, "browse_abandonment_offer", t + HOUR, c.session, message_id)
        elif name == "Order Completed":
            c.timers.pop("cart_abandonment_push", None)
            c.timers.pop("browse_abandonment_offer", None)
            if c.orders == 1:
                self.decide(c, "onboarding_first_order_offer", "in_app", "customer", t, message_id)
        elif name == "Signed Up" and push:
            self.decide(c, "onboarding_welcome_push", "push", "customer", t, message_id)
        elif name == "Application Opened" and c.orders and t - c.last_order_ms > 60 * DAY and push:
            self.decide(c, "winback_lapsed_push", "push", str(t // DAY), t, message_id)

    def arm(self, c: Customer, rule: str, due: int, cause: str, message_id: str) -> None:
        if c.fired.get(rule) == cause:
            return
        c.timers[rule] = (due, cause, message_id)
        heapq.heappush(self.heap, (due, c.id, rule))

    def fire_due(self) -> None:
        heap = self.heap
        while heap and heap[0][0] <= self.clock:
            due, customer_id, rule = heapq.heappop(heap)
            c = self.customers[customer_id]
            timer = c.timers.get(rule)
            if timer is None or timer[0] != due:
                continue  # cancelled, or re-armed later (its newer entry is in the heap)
            del c.timers[rule]
            if rule == "cart_abandonment_push" and c.cart_value > 0 and c.consent.get("push", True):
                self.decide(c, rule, "push", timer[1], due, timer[2])
            elif rule == "browse_abandonment_offer" and c.consent.get("in_app", True):
                self.decide(c, rule, "in_app", timer[1], due, timer[2])

    def decide(self, c: Customer, rule: str, channel: str, cause: str, t: int, caused_by: str) -> None:
        if c.fired.get(rule) == cause:
            return
        c.fired[rule] = cause
        decision_id = hashlib.blake2b(f"{c.id}|{rule}|{cause}".encode(), digest_size=16).hexdigest()
        record = {
            "specversion": "1.0",
            "id": decision_id,
            "source": "nudgeflow",
            "type": "io.nudgeflow.trigger.v1",
            "time": t,
            "subject": c.id,
            "data": {"channel": channel, "rule_id": rule, "cause": cause, "caused_by": [caused_by]},
        }
        self.out.write(orjson.dumps(record) + b"\n")
        self.counts["decisions"] += 1


def run_floor(path: Path, out: Path) -> None:
    floor = Floor(out)
    with path.open("rb") as lines:
        for raw in lines:
            if raw.strip():
                floor.line(raw)
    floor.out.close()
    print(orjson.dumps(floor.counts).decode())


def cpu_of(cmd: list[str]) -> float:
    """CPU seconds (user+sys) of a child process run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def replay_rounds(
    path: Path, variants: dict[str, Path], folder: Path, rounds: int
) -> tuple[dict[str, list[float]], dict[str, dict]]:
    """``nudgeflow replay`` of ``path`` with each rule file of ``variants``, alternated for ``rounds``,
    each in a child process from an empty output folder (a replay reads the erasure ledger its folder
    holds): the CPU seconds of every run, and each variant's last summary."""
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    summaries: dict[str, dict] = {}
    for _ in range(rounds):
        for n, (name, rules) in enumerate(variants.items()):
            out = folder / f"out-{n}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "flows.cli", "replay", str(path), "--rules", str(rules), "--out", str(out)]
            cpu[name].append(cpu_of([*cmd, "--force", "--quiet"]))
            summaries[name] = orjson.loads((out / "summary.json").read_bytes())
    return cpu, summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--floor", nargs=2, type=Path, metavar=("FILE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        run_floor(*args.floor)
        return
    sys.path.insert(0, str(REPO / "bench"))
    from flow_bench import machine, stream

    path = stream(args.customers, args.days)
    events = sum(1 for line in path.open("rb") if line.strip())
    with tempfile.TemporaryDirectory() as tmp:
        floor_cmd = [sys.executable, __file__, "--floor", str(path), os.path.join(tmp, "floor.jsonl")]
        engine_cmd = [sys.executable, "-m", "flows.cli", "replay", str(path), "--out", tmp + "/engine"]
        engine_cmd += ["--force", "--quiet"]
        floor_s, engine_s = [], []
        for _ in range(args.rounds):
            floor_s.append(cpu_of(floor_cmd))
            shutil.rmtree(os.path.join(tmp, "engine"), ignore_errors=True)  # no erasure ledger of a round before
            engine_s.append(cpu_of(engine_cmd))
    floor_best, engine_best = min(floor_s), min(engine_s)
    print(f"{machine()}; {path.name}: {events:,} lines; best of {args.rounds} alternated rounds, CPU time\n")
    print("| program | CPU seconds | lines per CPU-second |")
    print("| --- | ---: | ---: |")
    print(f"| plain-Python floor | {floor_best:.1f} | {events / floor_best:,.0f} |")
    print(f"| nudgeflow replay | {engine_best:.1f} | {events / engine_best:,.0f} |")
    print(f"\nengine / floor throughput: **{floor_best / engine_best:.1%}** (aim: 60 %)")


if __name__ == "__main__":
    main()
