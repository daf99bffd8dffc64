"""The HTTP API under load: ``POST /v1/events`` (batches and single events) and
``GET /v1/customers/{id}`` while events arrive, against ``nudgeflow serve`` on loopback.

    python bench/api_bench.py                    # the in-process engine (the default mode)
    python bench/api_bench.py --kafka            # the Kafka + Redis front (starts a local broker and Redis)
    python bench/api_bench.py --customers 2000 --single 3000

The server runs as users run it, in a child process (models learning, decisions written to files, or
events to a real Kafka topic); the load comes from an aiohttp client in this process, on the same
2 cores. Figures: events per second accepted (wall time), request latency p50/p99 as the client saw
it, and the server's CPU time (user + sys of its whole process, engine included, until it is idle
again) per event. In Kafka mode the profiles read are written to Redis by ``nudgeflow run --kafka``
over the events the front sent, before the read phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from flow_bench import machine, stream  # noqa: E402

from connectors.local_services import free_port, local_services  # noqa: E402

KEY = "nf_bench_" + "k" * 40
TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def note(line: str) -> None:
    """Progress that is not a figure (services starting): to stderr, out of the results."""
    print(line, file=sys.stderr)


def cpu_seconds(pid: int) -> float:
    """User + sys CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK


def wait_idle(pid: int, quiet: float = 0.05, every: float = 1.0, limit: float = 600) -> float:
    """The process's CPU time once it used less than ``quiet`` CPU-s in ``every`` seconds."""
    deadline = time.monotonic() + limit
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(every)
        now = cpu_seconds(pid)
        if now - before < quiet:
            return now
        before = now
    return before


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def keys_file(folder: Path) -> Path:
    path = folder / "keys.yaml"
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    path.write_text(f"keys:\n  - name: bench\n    sha256: {digest}\n    scopes: [admin]\n    rate: 1000000\n")
    return path


@contextlib.contextmanager
def server(folder: Path, env: dict[str, str], kafka: bool) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--port", str(port), "--keys", str(keys_file(folder))]
    cmd += ["--kafka"] if kafka else ["--out", str(folder / "out")]
    log = (folder / "serve.log").open("wb")
    process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(_ready(base, process))
        yield base, process
    finally:
        process.terminate()
        process.wait(60)
        log.close()


async def _ready(base: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"nudgeflow serve exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(base + "/readyz") as answer:
                    if answer.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise SystemExit("nudgeflow serve did not become ready")


async def post_all(base: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float], int]:
    """POST every body with ``concurrency`` requests in flight: (wall seconds, latencies, events refused)."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    latencies: list[float] = []
    refused = 0
    queue = iter(bodies)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal refused
        for body in queue:
            started = time.perf_counter()
            async with session.post(base + "/v1/events", data=body, headers=headers) as answer:
                result = await answer.json()
            latencies.append(time.perf_counter() - started)
            if answer.status not in (200, 207):
                raise SystemExit(f"POST /v1/events answered {answer.status}: {result}")
            refused += sum(1 for r in result.get("results", ()) if r.get("status") != "accepted")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, refused


async def read_profiles(base: str, customers: list[str], stop: asyncio.Event, concurrency: int) -> list[float]:
    headers = {"Authorization": f"Bearer {KEY}"}
    latencies: list[float] = []

    async def worker(session: aiohttp.ClientSession, start: int) -> None:
        n = start
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(f"{base}/v1/customers/{customers[n % len(customers)]}", headers=headers) as answer:
                await answer.read()
            latencies.append(time.perf_counter() - started)
            if answer.status not in (200, 404):
                raise SystemExit(f"GET /v1/customers answered {answer.status}")
            n += concurrency

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session, n) for n in range(concurrency)))
    return latencies


async def under_load(base: str, bodies: list[bytes], customers: list[str]) -> tuple[float, list[float], list[float]]:
    stop = asyncio.Event()
    reads = asyncio.create_task(read_profiles(base, customers, stop, 4))
    wall, writes, _ = await post_all(base, bodies, 4)
    stop.set()
    return wall, writes, await reads


def batches(lines: list[bytes], size: int) -> list[bytes]:
    return [b'{"batch":[' + b",".join(lines[n : n + size]) + b"]}" for n in range(0, len(lines), size)]


def customers_of(lines: list[bytes]) -> list[str]:
    seen: dict[str, None] = {}
    for line in lines:
        user = orjson.loads(line).get("userId")
        if user:
            seen.setdefault(user)
    return list(seen)


def row(name: str, events: int, requests: int, wall: float, latencies: list[float], cpu: float | None) -> str:
    cpu_text = "—" if cpu is None else f"{cpu:.2f} ({cpu / events * 1e6:.0f} µs/event)"
    return (
        f"| {name} | {events:,} | {requests:,} | {events / wall:,.0f} | {percentile(latencies, 0.5) * 1000:.1f} |"
        f" {percentile(latencies, 0.99) * 1000:.1f} | {cpu_text} |"
    )


def bench(folder: Path, lines: list[bytes], args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    batch_lines = lines[: args.batch_events]
    single_lines = lines[args.batch_events : args.batch_events + args.single]
    load_lines = lines[args.batch_events + args.single :]
    rows = []
    with server(folder, env, args.kafka) as (base, process):
        cpu0 = cpu_seconds(process.pid)
        wall, latencies, refused = asyncio.run(post_all(base, batches(batch_lines, args.batch), args.concurrency))
        cpu1 = wait_idle(process.pid)
        name = f"POST /v1/events, batches of {args.batch}, {args.concurrency} in flight"
        rows.append(row(name, len(batch_lines), len(latencies), wall, latencies, cpu1 - cpu0))
        wall, latencies, more = asyncio.run(post_all(base, single_lines, 16))
        cpu2 = wait_idle(process.pid)
        rows.append(row("POST /v1/events, one event, 16 in flight", len(single_lines), len(latencies), wall,
                        latencies, cpu2 - cpu1))
        refused += more
        if args.kafka:
            engine_run(env)
        customers = customers_of(batch_lines)
        wall, writes, reads = asyncio.run(under_load(base, batches(load_lines, args.batch), customers))
        cpu3 = wait_idle(process.pid)
        rows.append(row(f"POST /v1/events (batches of {args.batch}, 4 in flight) while reading profiles",
                        len(load_lines), len(writes), wall, writes, cpu3 - cpu2))
        rows.append(row("GET /v1/customers/{id} at that load, 4 in flight", len(reads), len(reads), wall, reads, None))
    if refused:
        rows.append(f"\n{refused:,} events refused by the contract (answered with their reason)")
    return rows


def engine_run(env: dict[str, str]) -> None:
    """The engine over what the front sent, to the end of the topic: profiles in Redis to read."""
    cmd = [sys.executable, "-m", "flows.cli", "run", "--kafka", "--until-end"]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2_000, help="customers of the generated day")
    parser.add_argument("--batch", type=int, default=100, help="events per batch request")
    parser.add_argument("--batch-events", type=int, default=20_000, help="events sent in batches")
    parser.add_argument("--single", type=int, default=3_000, help="events sent one per request")
    parser.add_argument("--concurrency", type=int, default=4, help="batch requests in flight")
    parser.add_argument("--kafka", action="store_true", help="the Kafka + Redis front instead of the local engine")
    args = parser.parse_args()
    path = stream(args.customers, 1)
    lines = [line.rstrip(b"\n") for line in path.open("rb") if line.strip()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUDGEFLOW_")}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with contextlib.ExitStack() as stack:
            if args.kafka:
                started = stack.enter_context(local_services(folder / "services", log=note))
                env.update(
                    NUDGEFLOW_KAFKA_BOOTSTRAP_SERVERS=started["KAFKA_BOOTSTRAP_SERVERS"],
                    NUDGEFLOW_REDIS_URL=started["REDIS_URL"],
                    NUDGEFLOW_SOURCE="kafka",
                )
            rows = bench(folder, lines, args, env)
    mode = "Kafka + Redis front (`serve --kafka`)" if args.kafka else "in-process engine (`serve`)"
    print(f"{machine()}; {mode}; {path.name}: {len(lines):,} events of {args.customers:,} customers\n")
    print("| load | events | requests | events/s | p50 ms | p99 ms | server CPU-s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
