"""Erasure against a real Kafka broker and a real Redis: ``nudgeflow erase`` onto the events topic, the
customer's keys and memberships gone from the store, the erasure in a compacted ledger topic, and a
later run that reads that ledger first and never brings the customer back from older events."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path

import orjson
import redis
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from conftest import added, at, call, order, track

from connectors.erasures import read_ledger_topic
from connectors.kafka import ensure_topics, produce_records, read_topic, readable
from connectors.redis_store import audience_key, customer_keys
from schemas.erasures import erasure_record

REPO = Path(__file__).resolve().parents[2]
_runs = itertools.count()


def nudgeflow(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        timeout=240,
    )
    text = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, text
    return text


def events_topic(servers: str, events: list[dict]) -> str:
    topic = f"erase-events-{os.getpid()}-{next(_runs)}"
    ensure_topics(servers, [topic], 3)
    produce_records(servers, topic, [orjson.dumps(event) for event in events])
    return topic


def records(servers: str, topic: str) -> list[tuple[bytes, dict]]:
    return [(message.key(), orjson.loads(readable(message))) for message in read_topic(servers, topic)]


def about(servers: str, prefix: str, customer: str) -> list[dict]:
    """The triggers and audience changes sent for ``customer``."""
    found = []
    for stream in ("triggers.push", "triggers.in_app", "audience_changes"):
        found += [record for _, record in records(servers, prefix + stream) if record["subject"] == customer]
    return found


def memberships(client: redis.Redis, prefix: str, customer: str) -> list[bytes]:
    return [key for key in client.scan_iter(f"{prefix}:audience:*", _type="set") if client.sismember(key, customer)]


def test_an_erasure_clears_the_store_is_kept_in_a_compacted_topic_and_a_later_run_drops_older_events(services):
    servers = services["KAFKA_BOOTSTRAP_SERVERS"]
    run = next(_runs)
    prefix, store = f"erase{os.getpid()}-{run}.", f"e{os.getpid()}x{run}"
    history = [
        track("Signed Up", "u1", 0, anon="a1"),  # a welcome push
        call("identify", "u1", 1, traits={"city": "Berlin"}),
        order("u1", 2, total=6000.0),  # high value
        track("Page", None, 3, anon="a1"),
        added("u2", 4),
        order("u2", 5, total=7000.0),
    ]
    env = {
        "NUDGEFLOW_KAFKA_BOOTSTRAP_SERVERS": servers,
        "NUDGEFLOW_TOPIC_PREFIX": prefix,
        "NUDGEFLOW_TOPIC_PARTITIONS": "3",
        "NUDGEFLOW_REDIS_URL": services["REDIS_URL"],
        "NUDGEFLOW_REDIS_PREFIX": store,
        "NUDGEFLOW_REDIS_TRAITS": "city",
    }
    topic = events_topic(servers, history)
    client = redis.Redis.from_url(services["REDIS_URL"])
    try:
        nudgeflow("run", "--kafka", "--until-end", "--quiet", "--topic", topic, env=env)
        keys = customer_keys(store, "u1")
        assert client.exists(keys.profile) and memberships(client, store, "u1"), "u1 was in the store"

        told = nudgeflow("erase", "u1", "--topic", topic, "--at", at(10), "--request-id", "dsr-1", env=env)
        assert f"sent to {topic}" in told
        nudgeflow("run", "--kafka", "--until-end", "--quiet", "--topic", topic, env=env)
        assert not client.exists(keys.profile, keys.decisions), "u1's profile and decisions are gone"
        assert memberships(client, store, "u1") == [], "u1 left every audience set"
        assert client.sismember(audience_key(store, "high_value"), "u2"), "u2 stays"
        exits = [r["data"]["reason"] for r in about(servers, prefix, "u1") if r["data"].get("change") == "exited"]
        assert "erasure requested (dsr-1)" in exits

        ledger = prefix + "erasures"
        admin = AdminClient({"bootstrap.servers": servers})
        resource = ConfigResource(ResourceType.TOPIC, ledger)
        assert admin.describe_configs([resource])[resource].result()["cleanup.policy"].value == "compact"
        expected = {"customer_id": "u1", "erased_at": at(10).replace("Z", ".000Z"), "regulation": "gdpr"}
        assert records(servers, ledger) == [(b"u1", {**expected, "request_id": "dsr-1"})]

        sent_before = len(about(servers, prefix, "u1"))
        replayed = events_topic(servers, history)  # data recorded before the erasure, sent again
        newer = "e2" + store
        nudgeflow("run", "--kafka", "--until-end", "--quiet", "--topic", replayed,
                  env={**env, "NUDGEFLOW_REDIS_PREFIX": newer})  # fmt: skip
        assert len(about(servers, prefix, "u1")) == sent_before, "no trigger, no audience change for u1"
        erased = customer_keys(newer, "u1")
        assert not client.exists(erased.profile, erased.decisions) and memberships(client, newer, "u1") == []
        assert client.exists(customer_keys(newer, "u2").profile), "the others are back as they were"
        assert len(records(servers, ledger)) == 1, "nothing new to record"
    finally:
        for pattern in (f"{store}:*", f"e2{store}:*"):
            for key in client.scan_iter(pattern):
                client.delete(key)
        client.close()


def test_a_ledger_topic_that_does_not_keep_its_records_is_read_with_a_warning(services, caplog):
    servers = services["KAFKA_BOOTSTRAP_SERVERS"]
    topic = f"erase-plain-{os.getpid()}-{next(_runs)}.erasures"
    ensure_topics(servers, [topic], 1)  # the broker's default: cleanup.policy=delete
    produce_records(servers, topic, [erasure_record("u7", 1_000, "r7", "other")])
    with caplog.at_level(logging.WARNING):
        assert read_ledger_topic(servers, topic) == {"u7": 1_000}
    assert f"erasure ledger topic {topic} has cleanup.policy=delete" in caplog.text
    assert read_ledger_topic(servers, f"erase-none-{os.getpid()}-{next(_runs)}") == {}, "no topic yet: no erasure"
