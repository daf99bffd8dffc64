"""A real Kafka broker and a real Redis server, started once for the module and stopped by the last test."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.local_services import (
    RunningService,
    kafka_server_properties,
    local_services,
    main,
    new_cluster_id,
    start_kafka,
)


@dataclass
class Services:
    env: dict[str, str]
    workdir: Path
    stack: contextlib.ExitStack

    def pids(self) -> dict[str, int]:
        state = json.loads((self.workdir / "services.json").read_text())
        return {s["name"]: s["pid"] for s in state["services"]}


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    workdir = tmp_path_factory.mktemp("services")
    with contextlib.ExitStack() as stack:
        env = stack.enter_context(local_services(workdir))
        yield Services(env, workdir, stack)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _refused(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) != 0


def _produce(bootstrap: str, topic: str, values: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value in values:
        producer.produce(topic, key=value.encode(), value=value.encode())
    assert producer.flush(30) == 0


def _consume(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[str]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            seen.append(message.value().decode())
    finally:
        consumer.close()
    return seen


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    deadline = time.monotonic() + 30  # a new topic's metadata reaches the broker's cache a moment later
    while len(admin.list_topics(topic, timeout=10).topics[topic].partitions) < partitions:
        assert time.monotonic() < deadline, f"topic {topic} has no {partitions} partitions after 30 s"
        time.sleep(0.1)


def test_server_properties_name_the_kraft_listeners(tmp_path: Path) -> None:
    lines = kafka_server_properties(19092, 19093, tmp_path / "data").splitlines()
    assert "process.roles=broker,controller" in lines
    assert "controller.quorum.voters=1@127.0.0.1:19093" in lines
    assert "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in lines
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:19092" in lines
    assert "controller.listener.names=CONTROLLER" in lines
    assert f"log.dirs={tmp_path / 'data'}" in lines
    assert not any(line.startswith("auto.create.topics.enable") for line in lines)


def test_cluster_id_is_22_url_safe_characters() -> None:
    ids = {new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 and not i.startswith("-") and "=" not in i for i in ids)


def test_kafka_round_trip(services: Services) -> None:
    bootstrap = services.env["KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap.startswith("127.0.0.1:")
    _create_topic(bootstrap, "round-trip", 3)
    values = [f"m{i}" for i in range(100)]
    _produce(bootstrap, "round-trip", values)
    seen = _consume(bootstrap, "round-trip", len(values))
    assert len(seen) == len(values)
    assert set(seen) == set(values)


def test_redis_round_trip(services: Services) -> None:
    client = redis.Redis.from_url(services.env["REDIS_URL"])
    try:
        assert client.set("nudgeflow:test", "value")
        assert client.get("nudgeflow:test") == b"value"
    finally:
        client.close()


def test_kafka_restart_keeps_data_and_address(tmp_path: Path) -> None:
    first = start_kafka(tmp_path, log=lambda _: None)
    try:
        _create_topic(first.address, "kept", 2)
        _produce(first.address, "kept", ["a", "b", "c"])
    finally:
        first.stop()
    second = start_kafka(tmp_path, log=lambda _: None)
    try:
        assert second.address == first.address and second.pid != first.pid
        assert sorted(_consume(second.address, "kept", 3)) == ["a", "b", "c"]
    finally:
        second.stop()
    assert _gone(second.pid)


def test_stop_ignores_a_pid_that_is_not_ours(tmp_path: Path) -> None:
    RunningService("kafka", "127.0.0.1:1", os.getpid(), tmp_path).stop(1)  # our own pid, another work dir
    assert not _gone(os.getpid())


def test_run_command_sees_the_addresses(tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    script = 'echo "$KAFKA_BOOTSTRAP_SERVERS $REDIS_URL" > "$0"; exit 3'
    code = main(["run", "--dir", str(tmp_path / "svc"), "--", "sh", "-c", script, str(out)])
    assert code == 3
    kafka, redis_url = out.read_text().split()
    assert kafka.startswith("127.0.0.1:") and redis_url.startswith("redis://127.0.0.1:")


def test_services_stop_at_exit(services: Services) -> None:
    pids = services.pids()
    kafka_port = int(services.env["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1])
    redis_port = int(services.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    assert not _gone(pids["kafka"]) and not _gone(pids["redis"])
    services.stack.close()
    assert _gone(pids["kafka"]) and _gone(pids["redis"])
    assert _refused("127.0.0.1", kafka_port) and _refused("127.0.0.1", redis_port)
