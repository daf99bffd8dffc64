"""The flow against a real Kafka broker: same decisions as the file replay, with several workers
and processes, and after a SIGKILL and restart from the recovery snapshots."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
import redis

from connectors.files import read_lines
from connectors.kafka import produce_records, read_topic, readable
from connectors.local_services import free_port, process_alive
from connectors.synthetic import DEFAULT_START, generate_events, write_jsonl
from schemas.streams import KAFKA_STREAMS, OUTPUT_FILES, STATS

REPO = Path(__file__).resolve().parents[2]
_runs = itertools.count()


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """Generated events in event-time order: 120 customers over 8 days (about 9k events)."""
    path = tmp_path_factory.mktemp("recording") / "events.jsonl"
    with path.open("wb") as out:
        write_jsonl(generate_events(120, 8, seed=11, start=DEFAULT_START), out)
    return path


def nudgeflow(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    return text


def kafka_env(services: dict[str, str], topic: str, prefix: str, **more: str) -> dict[str, str]:
    return {
        "NUDGEFLOW_SOURCE": "kafka",
        "NUDGEFLOW_KAFKA_BOOTSTRAP_SERVERS": services["KAFKA_BOOTSTRAP_SERVERS"],
        "NUDGEFLOW_EVENTS_TOPIC": topic,
        "NUDGEFLOW_TOPIC_PREFIX": prefix,
        "NUDGEFLOW_TOPIC_PARTITIONS": "3",
        **more,
    }


def produce(services: dict[str, str], lines: list[bytes], partitions: int = 4) -> str:
    from connectors.kafka import ensure_topics

    topic = f"events-{os.getpid()}-{next(_runs)}"
    ensure_topics(services["KAFKA_BOOTSTRAP_SERVERS"], [topic], partitions)
    produce_records(services["KAFKA_BOOTSTRAP_SERVERS"], topic, lines)
    return topic


def decisions_in_topics(services: dict[str, str], prefix: str) -> list[dict]:
    """Every record of the decision topics, as structured CloudEvents (dead letters as they are)."""
    records = []
    for stream in KAFKA_STREAMS:
        for message in read_topic(services["KAFKA_BOOTSTRAP_SERVERS"], prefix + stream):
            records.append(orjson.loads(readable(message)))
    return records


def decisions_in_folder(folder: Path) -> list[dict]:
    records = []
    for stream, name in OUTPUT_FILES.items():
        if stream != STATS:
            records += [orjson.loads(line) for line in (folder / name).read_bytes().splitlines() if line]
    return records


def canonical(records: list[dict]) -> list[bytes]:
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)


@pytest.fixture(scope="module")
def file_decisions(recording, tmp_path_factory) -> list[bytes]:
    out = tmp_path_factory.mktemp("replay") / "out"
    finish(nudgeflow("replay", str(recording), "--out", str(out), "--quiet", env={}))
    return canonical(decisions_in_folder(out))


def test_the_kafka_path_and_the_file_path_agree(services, recording, file_decisions):
    topic = produce(services, list(read_lines(recording)))
    prefix = f"run{next(_runs)}."
    finish(nudgeflow("run", "--until-end", "--quiet", env=kafka_env(services, topic, prefix)))
    in_kafka = decisions_in_topics(services, prefix)
    assert len(file_decisions) > 100
    assert canonical(in_kafka) == file_decisions


def test_two_processes_of_two_workers_decide_like_one_worker(services, recording, file_decisions):
    topic = produce(services, list(read_lines(recording)), partitions=6)
    prefix = f"run{next(_runs)}."
    env = kafka_env(services, topic, prefix)
    addresses = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    processes = [
        nudgeflow("run", "--until-end", "--quiet", "-w", "2", "-i", str(i), "-a", addresses, env=env) for i in (0, 1)
    ]
    for process in processes:
        finish(process)
    assert canonical(decisions_in_topics(services, prefix)) == file_decisions


def test_sigkill_and_restart_lose_nothing_and_re_emit_the_same_ids(services, recording, file_decisions, tmp_path):
    lines = list(read_lines(recording))
    middle = DEFAULT_START.replace(day=DEFAULT_START.day + 4).isoformat().replace("+00:00", "")
    first = [line for line in lines if orjson.loads(line)["timestamp"] < middle]
    rest = lines[len(first) :]
    assert all(orjson.loads(line)["timestamp"] >= middle for line in rest), "the recording is in time order"
    topic = produce(services, first)
    prefix = f"run{next(_runs)}."
    env = kafka_env(
        services,
        topic,
        prefix,
        NUDGEFLOW_RECOVERY_DIR=str(tmp_path / "recovery"),
        NUDGEFLOW_SNAPSHOT_SECONDS="0.3",
    )
    live = nudgeflow("run", "--quiet", env=env)
    try:
        emitted = _wait_for_records(services, prefix + "triggers.push", live)
        time.sleep(1.5)  # a few snapshots go by
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait(30)
    assert emitted > 0, "the first run decided something before it was killed"
    produce_records(services["KAFKA_BOOTSTRAP_SERVERS"], topic, rest)
    finish(nudgeflow("run", "--until-end", "--quiet", env=env))

    records = decisions_in_topics(services, prefix)
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for record in records:
        if "id" in record:
            by_id[record["id"]].add(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
    assert all(len(bodies) == 1 for bodies in by_id.values()), "a re-emitted decision is the same record"
    unique = sorted({body for bodies in by_id.values() for body in bodies})
    assert all("id" in record for record in records), "no dead letters: the recording is clean"
    missing, extra = set(file_decisions) - set(unique), set(unique) - set(file_decisions)
    kinds = sorted(f"{'-' if b in missing else '+'}{orjson.loads(b)['data']['rule_id']}" for b in missing | extra)
    assert not missing and not extra, f"{len(missing)} missing, {len(extra)} new: {kinds}"


def _wait_for_records(services: dict[str, str], topic: str, process: subprocess.Popen, timeout: float = 120) -> int:
    from confluent_kafka import KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": services["KAFKA_BOOTSTRAP_SERVERS"]})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode(errors="replace") if process.stdout else ""
        topics = admin.list_topics(timeout=10).topics
        if topic in topics:
            from confluent_kafka import Consumer

            consumer = Consumer({"bootstrap.servers": services["KAFKA_BOOTSTRAP_SERVERS"], "group.id": "probe"})
            try:
                total = sum(
                    consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in topics[topic].partitions
                )
            except KafkaException:  # a new topic's partitions may have no leader yet
                total = 0
            finally:
                consumer.close()
            if total > 0:
                return total
        time.sleep(0.2)
    raise TimeoutError(f"nothing arrived on {topic} within {timeout:.0f} s")


def test_warm_start_builds_state_from_history_and_the_live_run_continues(services, recording, file_decisions, tmp_path):
    lines = list(read_lines(recording))
    middle = DEFAULT_START.replace(day=DEFAULT_START.day + 5).isoformat().replace("+00:00", "")
    history = [line for line in lines if orjson.loads(line)["timestamp"] < middle]
    (tmp_path / "history.jsonl").write_bytes(b"\n".join(history) + b"\n")
    topic = produce(services, [], partitions=3)
    prefix = f"run{next(_runs)}."
    env = kafka_env(services, topic, prefix, NUDGEFLOW_RECOVERY_DIR=str(tmp_path / "recovery"))
    store = {"NUDGEFLOW_REDIS_URL": services["REDIS_URL"], "NUDGEFLOW_REDIS_PREFIX": prefix.rstrip(".")}
    report = finish(nudgeflow("warm-start", str(tmp_path / "history.jsonl"), env={**env, **store}))
    assert "customers in state" in report and "outputs not sent" in report
    client = redis.Redis.from_url(services["REDIS_URL"])
    try:
        assert list(client.scan_iter(f"{store['NUDGEFLOW_REDIS_PREFIX']}:*")) == [], "the live store is left alone"
    finally:
        client.close()
    produce_records(services["KAFKA_BOOTSTRAP_SERVERS"], topic, lines[len(history) :])
    finish(nudgeflow("run", "--until-end", "--quiet", env=env))

    live = canonical(decisions_in_topics(services, prefix))
    assert live and set(live) <= set(file_decisions), "the live run decides exactly as one run over everything"
    after_split = {d for d in file_decisions if orjson.loads(d)["time"] >= middle}
    assert after_split <= set(live), "nothing decided after the history is missing"
    last = max(datetime.fromisoformat(orjson.loads(line)["timestamp"]) for line in history)
    lateness = timedelta(minutes=5)  # timers due within the allowed lateness of the end fire in the live run
    assert all(datetime.fromisoformat(orjson.loads(d)["time"]) > last - lateness for d in live), "nothing sent twice"


def test_produce_then_consume_records_a_replayable_file(services, recording, tmp_path):
    """`nudgeflow produce` a recording, `nudgeflow consume --out` it back: the same events, replayable."""
    topic = f"events-cli-{os.getpid()}-{next(_runs)}"
    env = {"NUDGEFLOW_KAFKA_BOOTSTRAP_SERVERS": services["KAFKA_BOOTSTRAP_SERVERS"]}
    report = finish(nudgeflow("produce", str(recording), "--topic", topic, "--partitions", "3", env=env))
    lines = list(read_lines(recording))
    assert f"sent {len(lines):,} events" in report
    recorded = tmp_path / "week.jsonl"
    finish(nudgeflow("consume", topic, "--out", str(recorded), env=env))
    assert sorted(read_lines(recorded)) == sorted(lines)
    out = tmp_path / "replay"
    finish(nudgeflow("replay", str(recorded), "--out", str(out), "--quiet", env={}))
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert sum(summary["events"].values()) == len(lines) and not summary["dead_letters"]
    shown = finish(nudgeflow("consume", topic, env=env))
    assert shown.count("\n") >= len(lines)


def test_one_command_runs_two_processes_that_decide_like_one_worker(services, recording, file_decisions):
    """``run --kafka --processes 2`` forks both processes of the cluster from one command."""
    topic = produce(services, list(read_lines(recording)), partitions=6)
    prefix = f"run{next(_runs)}."
    finish(nudgeflow("run", "--until-end", "--quiet", "--processes", "2", env=kafka_env(services, topic, prefix)))
    assert canonical(decisions_in_topics(services, prefix)) == file_decisions


def test_stopping_the_command_of_a_run_in_processes_stops_every_process(services, recording):
    topic = produce(services, list(read_lines(recording)), partitions=2)
    prefix = f"run{next(_runs)}."
    live = nudgeflow("run", "--quiet", "--processes", "2", env=kafka_env(services, topic, prefix))
    children: list[int] = []
    try:
        _wait_for_records(services, prefix + "triggers.push", live)
        children = [int(pid) for pid in Path(f"/proc/{live.pid}/task/{live.pid}/children").read_text().split()]
        assert len(children) == 2
        live.send_signal(signal.SIGTERM)
        live.wait(30)
        left = [pid for pid in children if process_alive(pid)]
    finally:
        for pid in [live.pid, *children]:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert live.returncode != 0
    assert not left, "no process of the run is left behind"
