"""Benchmark of the engine on Kafka: events topic -> ``nudgeflow run`` -> decision topics.

    python bench/kafka_bench.py                          # 2,000 customers x 7 days, local broker
    KAFKA_BOOTSTRAP_SERVERS=host:9092 python bench/kafka_bench.py --customers 10000

Without ``KAFKA_BOOTSTRAP_SERVERS`` a single-node Kafka broker is started for the run
(``connectors.local_services``). The engine always runs as ``nudgeflow run`` subprocesses,
with recovery snapshots on (a fresh recovery store per run, ``NUDGEFLOW_SNAPSHOT_SECONDS=10``).

1. Throughput: the generated stream is produced to a fresh 8-partition events topic, then
   ``nudgeflow run --until-end`` is timed from process start to exit, with 1 process and with
   2 processes (1 worker each). Start-up is the time of the same command on a 1-event topic;
   "events/s after start-up" subtracts it.
2. Latency: ``nudgeflow run`` follows a fresh events topic; events are produced at a steady
   rate with their timestamps rewritten to the current time, and the decision topics are read
   at the same time. Every topic of the run stamps its records with the broker's append time
   (``message.timestamp.type=LogAppendTime``): a decision's latency is its append time minus
   the append time of its causing event (the last id of ``caused_by``), both on the broker's
   clock, so neither this program's producer queue nor its reading is counted. The time from
   this program's ``produce()`` call to its read of the decision is shown as well. The first
   ``--warmup`` seconds of the run (connections, first customers, first snapshot) are left out
   of the headline figures; the table by 5-second window shows every window. The CPU time each
   process used while events were produced (engine, broker, this program) is shown too.
3. With ``--trace`` the latency run's engine runs under ``bench/latency_trace.py``, and where
   the time of each decision went (source read, ordered release, stages, sink, delivery) and the
   engine's pauses (batches, snapshots, flushes, garbage collections) are shown as well; the
   tracing adds work per event, so its latencies are a little higher than without.

Figures are printed as Markdown, ready for ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from flow_bench import machine, stream
from prometheus_client.parser import text_string_to_metric_families

from connectors.files import read_lines
from connectors.kafka import ensure_topics, event_key, produce_records
from connectors.local_services import free_port, local_services, stop_process
from connectors.synthetic import generate_events
from flows.runtime import new_recovery_store
from schemas.streams import AUDIENCE_CHANGES, KAFKA_STREAMS, trigger_stream

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 8
DECISION_TOPICS = (trigger_stream("push"), trigger_stream("in_app"), AUDIENCE_CHANGES)
RUN = [sys.executable, "-m", "flows.cli", "run", "--until-end", "--quiet"]
LIVE = [sys.executable, "-m", "flows.cli", "run", "--quiet"]
TRACED = [sys.executable, str(ROOT / "bench" / "latency_trace.py")]  # + trace file + the flows.cli arguments
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def note(line: str) -> None:
    """Progress that is not a figure (services starting): to stderr, out of the results."""
    print(line, file=sys.stderr)


def engine_env(bootstrap: str, topic: str, prefix: str, recovery: Path, partitions: int, **more: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "NUDGEFLOW_SOURCE": "kafka",
            "NUDGEFLOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "NUDGEFLOW_EVENTS_TOPIC": topic,
            "NUDGEFLOW_TOPIC_PREFIX": prefix,
            "NUDGEFLOW_RECOVERY_DIR": str(recovery),
            "NUDGEFLOW_RECOVERY_PARTITIONS": str(partitions),
            "NUDGEFLOW_SNAPSHOT_SECONDS": "10",
            **more,
        }
    )
    env.pop("NUDGEFLOW_REDIS_URL", None)
    return env


def fresh_topic(bootstrap: str, lines: list[bytes]) -> str:
    topic = f"bench.events.{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [topic], PARTITIONS)
    if lines:
        produce_records(bootstrap, topic, lines)
    return topic


def append_time_topics(bootstrap: str, topics: list[str]) -> None:
    """Create ``topics`` so that the broker stamps each record with the time it appended it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"message.timestamp.type": "LogAppendTime"}
    for future in admin.create_topics([NewTopic(t, PARTITIONS, 1, config=config) for t in topics]).values():
        future.result(30)


def timed_run(bootstrap: str, topic: str, processes: int, timeout: float) -> float:
    """Seconds from starting ``processes`` engine processes (1 worker each) until all have exited."""
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    with tempfile.TemporaryDirectory(prefix="nudgeflow-recovery-") as tmp:
        recovery = Path(tmp)
        new_recovery_store(recovery, processes)  # created once here, not raced by the processes
        env = engine_env(bootstrap, topic, prefix, recovery, processes)
        commands = [RUN]
        if processes > 1:
            addresses = ",".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
            commands = [[*RUN, "-w", "1", "-i", str(i), "-a", addresses] for i in range(processes)]
        started = time.perf_counter()
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=env) for cmd in commands]
        try:
            for proc in procs:
                remaining = max(1.0, timeout - (time.perf_counter() - started))
                code = proc.wait(remaining)
                if code != 0:
                    raise RuntimeError(f"nudgeflow run exited with {code}")
        finally:
            for proc in procs:
                stop_process(proc, 10.0)
        return time.perf_counter() - started


def throughput(bootstrap: str, lines: list[bytes], timeout: float) -> list[dict[str, float]]:
    started = time.perf_counter()
    topic = fresh_topic(bootstrap, lines)
    print(f"produced {len(lines):,} events to {topic} in {time.perf_counter() - started:.1f} s", flush=True)
    one_event = fresh_topic(bootstrap, lines[:1])
    rows = []
    for processes in (1, 2):
        startup = timed_run(bootstrap, one_event, processes, timeout)
        seconds = timed_run(bootstrap, topic, processes, timeout)
        row = {
            "processes": processes,
            "events": len(lines),
            "seconds": seconds,
            "startup": startup,
            "rate": len(lines) / seconds,
            "rate_net": len(lines) / max(seconds - startup, 1e-9),
        }
        print(
            f"{processes} process(es): {seconds:.1f} s ({startup:.1f} s start-up), {row['rate']:,.0f} events/s,"
            f" {row['rate_net']:,.0f} events/s after start-up",
            flush=True,
        )
        rows.append(row)
    return rows


# --- latency -------------------------------------------------------------------------------
def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def live_events(customers: int, days: int, count: int) -> list[dict[str, Any]]:
    """``count`` generated events (seed 2: ids unlike the throughput stream), without send/receive times."""
    events = list(itertools.islice(generate_events(customers, days, 2), count))
    for event in events:
        event.pop("receivedAt", None)
        event.pop("sentAt", None)
    return events


def end_offsets(bootstrap: str, topics: list[str]) -> list[TopicPartition]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "nudgeflow-bench", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=10)
        out = []
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                out.append(TopicPartition(topic, partition, high))
        return out
    finally:
        consumer.close()


class DecisionReader(threading.Thread):
    """Reads the decision topics from the given offsets; keeps (read time, type, last caused_by id,
    time, broker append time)."""

    def __init__(self, bootstrap: str, assignment: list[TopicPartition]) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "nudgeflow-bench", "enable.auto.commit": False}
        )
        self.consumer.assign(assignment)
        self.records: list[tuple[float, str, str | None, str, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                for message in self.consumer.consume(1000, timeout=0.002):  # returns at the timeout unless 1000 came
                    read = time.time()
                    if message.error() is not None:
                        continue
                    headers = dict(message.headers() or [])
                    kind = (headers.get("ce_type") or b"?").decode()
                    caused_by = orjson.loads(message.value()).get("caused_by") or [None]
                    time_header = (headers.get("ce_time") or b"").decode()
                    appended = message.timestamp()[1] / 1000
                    self.records.append((read, kind, caused_by[-1], time_header, appended))
        finally:
            self.consumer.close()


def wait_until_reading(port: int, topic: str, timeout: float) -> None:
    """Wait until the engine reads ``topic`` (its lag gauge for it appears on /metrics)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                if f'topic="{topic}"' in response.read().decode():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the engine did not start reading {topic} within {timeout:.0f} s")


def same_instant(a: str, b: str) -> bool:
    """Two ISO-8601 times name the same millisecond."""
    try:
        return datetime.fromisoformat(a.replace("Z", "+00:00")) == datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return False


def engine_latency_buckets(port: int) -> dict[float, float]:
    """The engine's own histogram of event-caused decisions (arrival to delivery confirmed):
    cumulative count per upper bound in seconds, scraped from its /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "nudgeflow_decision_latency_seconds_bucket" and sample.labels.get("origin") == "event"
    }


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound (ms) of the histogram bucket holding quantile ``q`` of what was added."""
    grown = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = grown.get(float("inf"), 0.0)
    for bound, count in grown.items():
        if total and count >= q * total:
            return bound * 1000
    return float("nan")


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and of its children (0 once it is gone)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def latency(
    bootstrap: str,
    rate: float,
    duration: float,
    customers: int,
    days: int,
    warmup: float,
    broker_pid: int | None = None,
    trace: Path | None = None,
) -> dict[str, Any]:
    count = int(rate * duration)
    events = live_events(customers * 4, days, count)
    topic = f"bench.events.{uuid.uuid4().hex[:8]}"
    prefix = f"bench.{uuid.uuid4().hex[:8]}."
    outputs = [prefix + name for name in DECISION_TOPICS]
    append_time_topics(bootstrap, [topic, *(prefix + name for name in KAFKA_STREAMS)])
    produced: dict[str, float] = {}  # messageId -> when this program called produce()
    appended: dict[str, float] = {}  # messageId -> when the broker appended it
    stamped: dict[str, str] = {}  # messageId -> event timestamp
    with tempfile.TemporaryDirectory(prefix="nudgeflow-recovery-") as tmp:
        recovery = Path(tmp)
        new_recovery_store(recovery, 1)
        # a fresh, empty topic: starting from its beginning misses nothing produced after start-up
        metrics_port = free_port()
        env = engine_env(
            bootstrap,
            topic,
            prefix,
            recovery,
            1,
            NUDGEFLOW_START_FROM="earliest",
            NUDGEFLOW_METRICS_PORT=str(metrics_port),
        )
        command = LIVE if trace is None else [*TRACED, str(trace), *LIVE[3:]]
        proc = subprocess.Popen(command, cwd=ROOT, env=env)
        # made (and its idempotent producer id acquired) while the engine starts
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, "acks": "all"})
        try:
            wait_until_reading(metrics_port, topic, 60)
            time.sleep(5)
            if proc.poll() is not None:
                raise RuntimeError(f"nudgeflow run exited with {proc.returncode}")
            reader = DecisionReader(bootstrap, end_offsets(bootstrap, outputs))
            reader.start()
            engine_before = engine_latency_buckets(metrics_port)
            cpu_before = process_cpu(proc.pid, broker_pid)
            started = time.monotonic()
            for sent, event in enumerate(events, start=1):
                message_id = event["messageId"]
                event["timestamp"] = stamped[message_id] = now_iso()
                line = orjson.dumps(event)
                produced[message_id] = time.time()

                def delivered(err: Any, message: Any, message_id: str = message_id) -> None:
                    if err is None:
                        appended[message_id] = message.timestamp()[1] / 1000

                while True:
                    try:
                        producer.produce(topic, line, event_key(line), on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.01)
                producer.poll(0)
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0.001:
                    time.sleep(ahead)
            producer.flush(30)
            elapsed = time.monotonic() - started
            achieved = count / elapsed
            cpu_after = process_cpu(proc.pid, broker_pid)
            cpu = {name: (cpu_after[name] - cpu_before[name]) / elapsed for name in cpu_after}
            time.sleep(5)  # the last decisions
            engine_after = engine_latency_buckets(metrics_port)
            reader.halt.set()
            reader.join(10)
        finally:
            stop_process(proc, 10.0)
    latencies: dict[str, list[float]] = {}
    windows: dict[int, list[float]] = {}  # by 5-second window of the production run
    first = min(produced.values(), default=0.0)
    bench_side: list[float] = []  # from this program's produce() call to its read of the decision
    for read, kind, cause, decided_at, decision_appended in reader.records:
        if cause in appended:
            ms = (decision_appended - appended[cause]) * 1000
            # decided at the causing event's own time: caused by it directly; later: by a timer
            direct = same_instant(decided_at, stamped[cause])
            if direct:
                windows.setdefault(int((produced[cause] - first) // 5), []).append(ms)
            if produced[cause] - first < warmup:
                continue
            latencies.setdefault(f"{kind} ({'event' if direct else 'timer'})", []).append(ms)
            if direct:
                bench_side.append((read - produced[cause]) * 1000)
    every = sorted(ms for kind, values in latencies.items() if kind.endswith("(event)") for ms in values)
    # how long the broker itself takes to append a record: this program's produce() call -> append
    to_broker = sorted((at - produced[m]) * 1000 for m, at in appended.items() if produced[m] - first >= warmup)
    bench_side.sort()
    result = {
        "events": count,
        "rate": achieved,
        "decisions": len(reader.records),
        "warmup": warmup,
        "by_kind": {},
        "windows": {},
        "bench_side": {"p50": percentile(bench_side, 0.5), "p99": percentile(bench_side, 0.99)} if bench_side else {},
        "cpu": cpu,
        "to_broker": {"p50": percentile(to_broker, 0.5), "p99": percentile(to_broker, 0.99)} if to_broker else {},
        "load": os.getloadavg()[0],
        "trace": None if trace is None else breakdown(trace, first + warmup),
    }
    result["engine"] = {f"p{int(q * 100)}": bucket_quantile(engine_before, engine_after, q) for q in (0.5, 0.99)}
    for window, values in sorted(windows.items()):
        values.sort()
        result["windows"][f"{window * 5}-{window * 5 + 5} s"] = {
            "count": len(values),
            "p50": percentile(values, 0.50),
            "p99": percentile(values, 0.99),
            "max": values[-1],
        }
    for kind, values in [("all caused directly by an event", every), *sorted(latencies.items())]:
        values.sort()
        if values:
            result["by_kind"][kind] = {
                "count": len(values),
                "p50": percentile(values, 0.50),
                "p99": percentile(values, 0.99),
                "max": values[-1],
            }
    return result


def process_cpu(engine_pid: int, broker_pid: int | None) -> dict[str, float]:
    """CPU seconds used so far by the engine, the broker (when this program started it) and this program."""
    cpu = {"engine": cpu_seconds(engine_pid), "this program (producer, reader)": own_cpu_seconds()}
    if broker_pid is not None:
        cpu["broker"] = cpu_seconds(broker_pid)
    return cpu


SEGMENTS = ("poll", "identity", "customer", "decided", "written", "confirmed")


def breakdown(trace: Path, since: float) -> dict[str, Any]:
    """Where the time of traced decisions (events read from ``since`` on) went, and the engine's pauses
    from then on (see ``bench/latency_trace.py``)."""
    data = orjson.loads(trace.read_bytes())
    rows = [row for row in data["rows"] if row[0] >= since]
    polls = sorted(ms * 1000 for read, ms in data["poll"] if read >= since)
    segments: dict[str, list[float]] = {"poll": polls}
    for n, name in enumerate(SEGMENTS[1:]):
        segments[name] = sorted((row[n + 1] - row[n]) * 1000 for row in rows)
    segments["read to confirmed"] = sorted((row[-1] - row[0]) * 1000 for row in rows)
    pauses: dict[str, list[float]] = {}
    for what, began, seconds in data["pauses"]:
        if began >= since:
            pauses.setdefault(what, []).append(seconds * 1000)
    return {
        "segments": {
            name: {"count": len(v), "p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "max": v[-1]}
            for name, v in segments.items()
            if v
        },
        "pauses": {what: {"count": len(v), "total": sum(v), "max": max(v)} for what, v in sorted(pauses.items())},
    }


# --- report --------------------------------------------------------------------------------
@contextlib.contextmanager
def kafka() -> Iterator[tuple[str, int | None]]:
    """The brokers' address, and the process id of the broker when this program started it."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"], None
        return
    with (
        tempfile.TemporaryDirectory(prefix="nudgeflow-services-") as workdir,
        local_services(Path(workdir), kafka=True, redis=False, log=note) as services,
    ):
        recorded = orjson.loads((Path(workdir) / "services.json").read_bytes())["services"]
        yield services["KAFKA_BOOTSTRAP_SERVERS"], next(s["pid"] for s in recorded if s["name"] == "kafka")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=7, help="days of events (about 18 events per customer-day)")
    parser.add_argument("--rate", type=float, help="cap on the latency run's events/s (default: half of 1 process)")
    parser.add_argument("--duration", type=float, default=20, help="seconds of the latency run")
    parser.add_argument("--warmup", type=float, default=10, help="first seconds left out of the latency figures")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed for one engine run")
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput runs (needs --rate)")
    parser.add_argument("--throughput-only", action="store_true", help="skip the latency run")
    parser.add_argument("--trace", action="store_true", help="time each decision's path in the latency run")
    args = parser.parse_args()
    if args.latency_only and not args.rate:
        parser.error("--latency-only needs --rate")
    print(f"machine: {machine()}", flush=True)
    path = stream(args.customers, args.days)
    lines = list(read_lines(path))
    print(f"stream: {path.name}, {len(lines):,} events", flush=True)
    with kafka() as (bootstrap, broker_pid), tempfile.TemporaryDirectory(prefix="nudgeflow-trace-") as traces:
        rows = [] if args.latency_only else throughput(bootstrap, lines, args.timeout)
        rate = rows[0]["rate_net"] / 2 if rows else args.rate
        if args.rate:
            rate = min(rate, args.rate)
        lat = (
            None
            if args.throughput_only
            else latency(
                bootstrap,
                rate,
                args.duration,
                args.customers,
                args.days,
                args.warmup,
                broker_pid,
                Path(traces) / "trace.json" if args.trace else None,
            )
        )

    print(
        "\n| processes x workers | events | seconds (start to exit) | start-up | events/s | events/s after start-up |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['processes']} x 1 | {r['events']:,} | {r['seconds']:.1f} | {r['startup']:.1f} |"
            f" {r['rate']:,.0f} | {r['rate_net']:,.0f} |"
        )
    if lat is not None:
        report_latency(lat, args.duration)
    print("\ncommand: " + shlex.join([Path(sys.executable).name, *sys.argv]))


def report_latency(lat: dict[str, Any], duration: float) -> None:
    print(
        f"\nlatency run: {lat['events']:,} events at {lat['rate']:,.0f} events/s for {duration:.0f} s;"
        f" {lat['decisions']:,} decisions read"
    )
    print(
        f"\nfrom the broker appending an event to it appending the decision, events produced after the first"
        f" {lat['warmup']:.0f} s:"
    )
    print("\n| decisions | count | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |")
    for kind, s in lat["by_kind"].items():
        print(f"| {kind} | {s['count']:,} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    if lat["bench_side"]:
        print(
            f"\nthe same decisions from this program's produce() call to its read of the decision:"
            f" p50 {lat['bench_side']['p50']:.1f} ms, p99 {lat['bench_side']['p99']:.1f} ms"
        )
    if lat["to_broker"]:
        print(
            f"\nthis program's produce() call to the broker appending the event (its producer lingers 5 ms):"
            f" p50 {lat['to_broker']['p50']:.1f} ms, p99 {lat['to_broker']['p99']:.1f} ms"
        )
    engine = lat["engine"]
    print(
        "\nin the engine (its nudgeflow_decision_latency_seconds histogram, event-caused: from the source"
        f" reading the event to Kafka confirming the decision): p50 <= {engine['p50']:.0f} ms,"
        f" p99 <= {engine['p99']:.0f} ms (bucket bounds)"
    )
    print(f"\nCPU while events were produced (load average {lat['load']:.1f} on {os.cpu_count()} cores):")
    print("\n| process | CPU s per s |\n| --- | ---: |")
    for name, share in lat["cpu"].items():
        print(f"| {name} | {share:.2f} |")
    print("\nevery window (broker append times):")
    print("\n| produced during | decisions | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |")
    for window, s in lat["windows"].items():
        print(f"| {window} | {s['count']:,} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")

    if lat["trace"] is not None:
        report_trace(lat["trace"], lat["warmup"])


def report_trace(trace: dict[str, Any], warmup: float) -> None:
    print(f"\nwhere the time went (traced, events read after the first {warmup:.0f} s; wall clock):")
    print("\n| from -> to | count | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |")
    names = {
        "poll": "broker appends the event -> source reads it",
        "identity": "source reads it -> identity batch begins",
        "customer": "identity batch begins -> customer batch begins",
        "decided": "customer batch begins -> it ends (decision made)",
        "written": "decision made -> sink produces it",
        "confirmed": "sink produces it -> Kafka confirms it",
        "read to confirmed": "source reads the event -> Kafka confirms the decision",
    }
    for name, s in trace["segments"].items():
        print(f"| {names[name]} | {s['count']:,} | {s['p50']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    print("\npauses of the engine of 5 ms or more:")
    print("\n| what | count | total ms | max ms |\n| --- | ---: | ---: | ---: |")
    for what, s in trace["pauses"].items():
        print(f"| {what} | {s['count']:,} | {s['total']:.0f} | {s['max']:.1f} |")


if __name__ == "__main__":
    main()
