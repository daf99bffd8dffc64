"""The Kafka flow and a real redis-server that is stopped mid-run, while events keep coming: when
Redis returns, the store holds exactly what the engine decided (its Kafka topics) and what the
events imply, also when the engine is killed during the outage and restarted from its recovery
snapshots."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import urllib.error
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis
from test_kafka_flow import decisions_in_topics, finish, kafka_env, nudgeflow, produce, recording  # noqa: F401
from test_metrics import scrape, value

from connectors.files import read_lines
from connectors.kafka import produce_records
from connectors.local_services import RunningService, free_port, start_redis
from schemas.records import TRIGGER_TYPE
from schemas.timestamps import epoch_ms

EVENT_COUNTS = ("orders", "lifetime_spend", "refunds", "frequency", "monetary", "city", "country")
"""Profile fields that follow from the events alone (others depend on the clock when the profile was sent)."""


class RedisServer:
    """A redis-server of its own (persistent, so a restart keeps the data) that a test stops and starts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.service: RunningService = start_redis(folder, persistent=True, log=lambda _: None)
        self.url = self.service.address
        self.port = urlsplit(self.url).port

    def stop(self) -> None:
        self.service.stop()

    def start(self) -> None:
        self.service = start_redis(self.folder, port=self.port, persistent=True, log=lambda _: None)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def store(url: str, prefix: str) -> dict[str, Any]:
    """Audience sets and change logs (as sets: an entry may repeat), decision ids per customer, and per
    customer the profile's event counts and audiences."""
    client = redis.Redis.from_url(url, decode_responses=True)
    contents: dict[str, Any] = {"audiences": {}, "changes": {}, "decisions": {}, "profiles": {}}
    try:
        for key in client.scan_iter(f"{prefix}:*", count=1000):
            name = key.removeprefix(f"{prefix}:")
            if name.startswith("audience:") and name.endswith(":changes"):
                log = client.xrange(key)
                audience = name.removeprefix("audience:").removesuffix(":changes")[1:-1]
                contents["changes"][audience] = {(e["customer"], e["change"], int(e["time_ms"])) for _, e in log}
            elif name.startswith("audience:"):
                contents["audiences"][name.removeprefix("audience:")[1:-1]] = client.smembers(key)
            elif name.endswith(":decisions"):
                entries = client.lrange(key, 0, -1)
                contents["decisions"][name[1:-11]] = {orjson.loads(entry)["id"] for entry in entries}
            else:
                fields = client.hgetall(key)
                profile = {f: orjson.loads(fields[f]) for f in EVENT_COUNTS if f in fields}
                contents["profiles"][name[1:-9]] = profile | {"audiences": set(orjson.loads(fields["audiences"]))}
        return contents
    finally:
        client.close()


def implied(records: list[dict], event_counts: dict[str, dict]) -> dict[str, Any]:
    """The store that the engine's decisions (from its topics, re-emitted ones once) and the events imply.

    An anonymous customer linked to a user has left every audience (its exits come after its
    entries on the topics); profiles are kept for identified customers only."""
    seen: set[str] = set()
    members: dict[str, dict[str, bool]] = defaultdict(dict)
    changes: dict[str, set[tuple[str, str, int]]] = defaultdict(set)
    decisions: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.get("id") in seen or "data" not in record:
            continue
        seen.add(record["id"])
        data, customer = record["data"], record["subject"]
        if "change" in data:
            members[data["audience"]][customer] = data["change"] == "entered"
            changes[data["audience"]].add((customer, data["change"], epoch_ms(record["time"])))
        elif record["type"] == TRIGGER_TYPE:  # suppressions are not delivered: the store does not keep them
            decisions[customer].add(record["id"])
    audiences = {a: {c for c, member in m.items() if member} for a, m in members.items()}
    audiences = {a: m for a, m in audiences.items() if m}
    joined: dict[str, set[str]] = defaultdict(set)
    for audience, customers in audiences.items():
        for customer in customers:
            joined[customer].add(audience)
    profiles = {c: counts | {"audiences": joined[c]} for c, counts in event_counts.items()}
    return {"audiences": audiences, "changes": dict(changes), "decisions": dict(decisions), "profiles": profiles}


def compared(contents: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """The store as :func:`implied` sees it (audiences left empty are no sets in Redis)."""
    audiences = {a: m for a, m in contents["audiences"].items() if m}
    parts = {"changes": contents["changes"], "decisions": contents["decisions"], "profiles": contents["profiles"]}
    return {"audiences": audiences, **parts}


def explain(actual: dict[str, Any], expected: dict[str, Any]) -> str:
    """Per part and key, what the store has that it should not, and what it lacks."""
    lines = []
    for part in ("audiences", "changes", "decisions", "profiles"):
        for key in sorted(actual[part].keys() | expected[part].keys()):
            got, want = actual[part].get(key), expected[part].get(key)
            if got != want:
                lines.append(f"{part} {key}: stored {got}, expected {want}")
    return f"{len(lines)} differences:\n" + "\n".join(lines[:40])


@pytest.fixture(scope="module")
def event_counts(recording, redis_service, tmp_path_factory) -> dict[str, dict]:  # noqa: F811
    """Each identified customer's profile fields that follow from the events alone, from a run on the recording."""
    prefix = f"ref{uuid.uuid4().hex[:8]}"
    out = tmp_path_factory.mktemp("reference") / "out"
    env = {"NUDGEFLOW_REDIS_URL": redis_service["REDIS_URL"], "NUDGEFLOW_REDIS_PREFIX": prefix}
    finish(nudgeflow("run", str(recording), "--out", str(out), "--quiet", env=env))
    profiles = store(redis_service["REDIS_URL"], prefix)["profiles"]
    assert len(profiles) >= 100
    return {c: {f: v for f, v in p.items() if f != "audiences"} for c, p in profiles.items() if c.startswith("u-")}


def wait_until(condition: Callable[[], bool], what: str, engine: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if engine.poll() is not None:
            output = engine.stdout.read().decode(errors="replace") if engine.stdout else ""
            raise AssertionError(f"the engine stopped while waiting for {what}:\n{output}")
        if time.monotonic() > deadline:
            engine.kill()
            output = engine.communicate(timeout=30)[0].decode(errors="replace")
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the engine said:\n{output}")
        time.sleep(0.2)


def profiles_in(url: str, prefix: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in client.scan_iter(f"{prefix}:*:profile", count=1000))
    finally:
        client.close()


def events_counted(metrics_port: int) -> float:
    """Events the engine has applied (its metrics; 0 until it serves them)."""
    with contextlib.suppress(urllib.error.URLError, ConnectionError):
        return value(scrape(metrics_port), "nudgeflow_events_total")
    return 0


class Run:
    """The engine on Kafka writing to ``server``, with a recovery store, fed the recording in two
    parts: the second arrives while Redis is down, and then no event comes."""

    def __init__(self, services: dict[str, str], recording: Path, server: RedisServer, folder: Path) -> None:  # noqa: F811
        lines = list(read_lines(recording))
        self.first, self.rest = lines[: len(lines) // 2], lines[len(lines) // 2 :]
        self.services, self.server = services, server
        self.topic = produce(services, self.first)
        self.prefix = f"live{uuid.uuid4().hex[:8]}"
        self.metrics_port = free_port()
        self.env = kafka_env(
            services,
            self.topic,
            f"{self.prefix}.",
            NUDGEFLOW_REDIS_URL=server.url,
            NUDGEFLOW_REDIS_PREFIX=self.prefix,
            NUDGEFLOW_RECOVERY_DIR=str(folder / "recovery"),
            NUDGEFLOW_SNAPSHOT_SECONDS="0.3",
            NUDGEFLOW_METRICS_PORT=str(self.metrics_port),
        )
        self.engine = nudgeflow("run", "--quiet", env=self.env)

    def outage_with_traffic(self) -> None:
        """First profiles written; Redis stops; the rest of the events arrive and are applied."""
        wait_until(lambda: profiles_in(self.server.url, self.prefix) > 20, "the first profiles", self.engine)
        self.server.stop()
        produce_records(self.services["KAFKA_BOOTSTRAP_SERVERS"], self.topic, self.rest)
        total = len(self.first) + len(self.rest)
        wait_until(lambda: events_counted(self.metrics_port) >= total, "every event applied", self.engine)
        time.sleep(1)  # a few snapshots and failed writes go by

    def kill(self) -> None:
        self.engine.send_signal(signal.SIGKILL)
        self.engine.communicate(timeout=60)

    def expected(self, event_counts: dict[str, dict]) -> dict[str, Any]:
        return implied(decisions_in_topics(self.services, f"{self.prefix}."), event_counts)

    def stored(self, expected: dict[str, Any]) -> dict[str, Any]:
        return compared(store(self.server.url, self.prefix), expected)


def test_updates_held_during_an_outage_reach_redis_when_it_returns(
    services,
    recording,  # noqa: F811
    event_counts,
    server,
    tmp_path,
):
    run = Run(services, recording, server, tmp_path)
    try:
        run.outage_with_traffic()
        server.start()
        expected = run.expected(event_counts)
        assert len(expected["decisions"]) > 50 and len(expected["audiences"]) >= 3
        with contextlib.suppress(AssertionError):
            wait_until(lambda: run.stored(expected) == expected, "the store to catch up", run.engine, 30)
        stored = run.stored(expected)
        assert stored == {k: expected[k] for k in stored}, explain(stored, expected)
    finally:
        run.kill()


def test_a_restart_after_a_crash_during_the_outage_writes_what_was_held(
    services,
    recording,  # noqa: F811
    event_counts,
    server,
    tmp_path,
):
    run = Run(services, recording, server, tmp_path)
    try:
        run.outage_with_traffic()
    finally:
        run.kill()
    server.start()
    finish(nudgeflow("run", "--until-end", "--quiet", env=run.env))
    expected = run.expected(event_counts)
    stored = run.stored(expected)
    assert stored == {k: expected[k] for k in stored}, explain(stored, expected)
