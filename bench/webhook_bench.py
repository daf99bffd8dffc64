"""Webhook deliveries per second: the webhook sink sending signed decisions to a local aiohttp receiver.

    python bench/webhook_bench.py                          # 10k decisions, concurrency 16 then 64
    python bench/webhook_bench.py --decisions 20000 --concurrency 8 16 64

The receiver runs in a child process (so its CPU is not the engine's) and answers 204 at once.
The engine side is the sink as a flow runs it: its 4 partitions, each with its own loop thread
and HTTP session, handed the decisions in batches of 100 by one thread; a run ends when every
partition has closed, which it does once its destination took every decision. CPU is the whole
engine process's over that time (user + system, all threads), wall time likewise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECEIVER = """
import sys
from aiohttp import web

count = 0

async def hook(request):
    global count
    await request.read()
    count += 1
    return web.Response(status=204)

async def seen(request):
    return web.Response(text=str(count))

app = web.Application()
app.router.add_post("/hook", hook)
app.router.add_get("/count", seen)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def decisions(count: int) -> list:
    from schemas.items import Output
    from schemas.records import TRIGGER_TYPE, cloud_event

    data = {"channel": "push", "rule_id": "cart_abandoned", "reason": "cart of 2 items left 30 minutes ago"}
    start = 1_767_607_200_000
    return [
        Output(
            "triggers.push",
            f"c{n}",
            start + n,
            n,
            cloud_event(type_=TRIGGER_TYPE, event_id=f"{n:032x}", time_ms=start + n, subject=f"c{n}", data=data),
        )
        for n in range(count)
    ]


def received(port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=10) as answer:
        return int(answer.read())


def wait_until_up(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            received(port)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start") from None
            time.sleep(0.1)


def one_run(port: int, outputs: list, concurrency: int) -> tuple[float, float]:
    """Wall and CPU seconds of the sink delivering ``outputs``."""
    from connectors.webhooks import WebhookSink
    from schemas.webhooks import Destination

    class NoDeadLetters:
        def write(self, customer: str, record: bytes) -> None:
            raise AssertionError("a delivery failed")

        def flush(self) -> None:
            return None

    destination = Destination(
        name="bench",
        url=f"http://127.0.0.1:{port}/hook",
        streams=frozenset({"triggers.push"}),
        timeout=10.0,
        max_attempts=3,
        backoff_start=0.1,
        backoff_cap=1.0,
        concurrency=concurrency,
        queue=1000,
        key=os.urandom(32),
    )
    sink = WebhookSink([destination], NoDeadLetters(), close_timeout=600)
    parts = [sink.build_part("bench.webhooks", name, None) for name in sink.list_parts()]
    batches: list[list[list]] = [[] for _ in parts]
    for start in range(0, len(outputs), 100):
        routed: list[list] = [[] for _ in parts]
        for output in outputs[start : start + 100]:
            routed[sink.part_fn(output.key) % len(parts)].append(output)
        for n, chunk in enumerate(routed):
            batches[n].append(chunk)
    wall, cpu = time.perf_counter(), time.process_time()
    for round_ in zip(*batches, strict=True):
        for part, chunk in zip(parts, round_, strict=True):
            part.write_batch(chunk)
    for part in parts:
        part.close()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    from flow_bench import machine

    from connectors.local_services import free_port

    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)], cwd=REPO)
    try:
        wait_until_up(port, receiver)
        outputs = decisions(args.decisions)
        one_run(port, outputs[:500], args.concurrency[0])  # warm up: connections, imports
        rows = []
        for concurrency in args.concurrency:
            before = received(port)
            wall, cpu = one_run(port, outputs, concurrency)
            assert received(port) - before == len(outputs), "every decision reached the receiver"
            rows.append((concurrency, wall, cpu))
    finally:
        receiver.terminate()
        receiver.wait(10)
    print(f"{machine()}; {args.decisions:,} decisions to one destination on loopback, receiver in its own process\n")
    print("| concurrency | wall seconds | deliveries/s | engine CPU seconds | CPU µs per delivery |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for concurrency, wall, cpu in rows:
        count = args.decisions
        print(f"| {concurrency} | {wall:.2f} | {count / wall:,.0f} | {cpu:.2f} | {cpu / count * 1e6:.0f} |")


if __name__ == "__main__":
    main()
