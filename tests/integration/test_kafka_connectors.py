"""Kafka connectors against a real broker: CloudEvents headers in and out, dead letters with their
source position and raw bytes, delivery failures counted and logged rather than lost silently."""

from __future__ import annotations

import base64
import logging
import os
import time
import uuid
from typing import Any

import orjson
from bytewax.testing import run_main
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import added, track
from prometheus_client import REGISTRY
from test_kafka_flow import produce

from connectors.kafka import KafkaOutputSink, read_topic
from flows.personalization import build_flow
from flows.settings import Settings
from schemas.items import Output


def test_events_with_or_without_cloudevents_headers_and_bad_bytes_to_dead_letters(services):
    servers = services["KAFKA_BOOTSTRAP_SERVERS"]
    topic = produce(services, [orjson.dumps(track("Signed Up", "k1", 0))], partitions=1)
    producer = Producer({"bootstrap.servers": servers})
    headers = [("ce_specversion", b"1.0"), ("ce_type", b"com.segment.track"), ("ce_id", b"x-1")]
    producer.produce(topic, orjson.dumps(added("k1", 1)), b"k1", headers=headers)
    producer.produce(topic, b"\xff\xfe not utf-8", b"k1")
    producer.produce(topic, b'{"type": "track"}', b"k1", headers=headers)
    producer.flush(30)
    settings = Settings(
        source="kafka", kafka_bootstrap_servers=servers, events_topic=topic, topic_prefix=f"{topic}.", until_end=True
    )
    run_main(build_flow(settings))

    dead = list(read_topic(servers, f"{topic}.dead_letters"))
    dead.sort(key=lambda m: int(dict(m.headers())["nf_source_offset"]))
    assert [dict(m.headers())["nf_reason"] for m in dead] == [b"not_utf8", b"schema_invalid"]
    first = orjson.loads(dead[0].value())
    assert first["position"] == {"topic": topic, "partition": 0, "offset": 2}
    assert base64.b64decode(first["payload_base64"]) == b"\xff\xfe not utf-8"
    assert dict(dead[0].headers())["nf_source_offset"] == b"2"

    pushes = list(read_topic(servers, f"{topic}.triggers.push"))
    assert len(pushes) == 1, "the welcome push for the identified customer"
    message = pushes[0]
    ce = dict(message.headers())
    assert message.key() == b"k1"
    assert ce["ce_specversion"] == b"1.0" and ce["ce_type"] == b"io.nudgeflow.trigger.v1"
    assert ce["ce_subject"] == b"k1" and len(ce["ce_id"]) == 32 and ce["content-type"] == b"application/json"
    assert orjson.loads(message.value())["rule_id"] == "onboarding_welcome_push", "binary mode: the value is data"


def test_failed_deliveries_are_retried_counted_and_logged(services, caplog):
    servers = services["KAFKA_BOOTSTRAP_SERVERS"]
    prefix = f"tiny-{uuid.uuid4().hex[:8]}-"  # fresh topics, also on a broker that outlives the run
    admin = AdminClient({"bootstrap.servers": servers})
    topic = NewTopic(prefix + "triggers.push", 1, 1, config={"max.message.bytes": "600"})
    admin.create_topics([topic])[topic.topic].result(30)
    config = {"message.timeout.ms": 5000, "linger.ms": 200}  # the two records go out in one batch
    sink = KafkaOutputSink(servers, prefix, partitions=1, producer_config=config)
    partition = sink.build_part("out", "producer-0", None)
    big = orjson.dumps({"specversion": "1.0", "id": "d1", "data": {"content": os.urandom(1500).hex()}})
    small = orjson.dumps({"specversion": "1.0", "id": "d2", "data": {"content": "ok"}})

    def errors() -> float:
        labels = {"sink": "kafka", "reason": "MSG_SIZE_TOO_LARGE"}
        return REGISTRY.get_sample_value("nudgeflow_sink_errors_total", labels) or 0

    before = errors()
    with caplog.at_level(logging.WARNING, logger="connectors.kafka"):
        partition.write_batch([Output("triggers.push", "c1", 0, 0, big), Output("triggers.push", "c2", 0, 0, small)])
        time.sleep(0.5)  # past the linger: the two leave together
        partition.close()
    assert errors() - before >= 2, "every failed attempt counted: in its batch, then alone"
    assert partition.failed == 1, "a batch-mate of the oversized record is retried alone and delivered"
    assert any("failed for good" in r.message and "c1" in r.message for r in caplog.records)
    delivered = list(read_topic(servers, prefix + "triggers.push"))
    assert [m.key() for m in delivered] == [b"c2"]


def test_an_unreachable_broker_or_a_missing_topic_is_a_clear_error(services, capsys):
    from connectors.local_services import free_port
    from flows.cli import main

    code = main(["run", "--kafka", "--until-end", "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--quiet"])
    assert code == 2 and "cannot reach Kafka at 127.0.0.1:" in capsys.readouterr().err
    servers = services["KAFKA_BOOTSTRAP_SERVERS"]
    code = main(["run", "--kafka", "--bootstrap-servers", servers, "--topic", "no-such-topic", "--quiet"])
    assert code == 2 and "Kafka topic 'no-such-topic' does not exist" in capsys.readouterr().err


def test_the_partitions_of_a_process_share_one_consumer_and_get_only_their_own_messages(services):
    """Readers of several partitions, polled in turn with small batches: one consumer, each
    partition's messages exactly once and in offset order, a read-ahead that stays bounded."""
    from connectors import kafka
    from connectors.kafka import KafkaEventSource
    from schemas.items import EndOfInput

    lines = [orjson.dumps({"n": n}) for n in range(3000)]
    topic = produce(services, lines, partitions=3)
    source = KafkaEventSource(services["KAFKA_BOOTSTRAP_SERVERS"], topic, until_end=True, batch_size=7)
    parts = {name: source.build_part("in", name, None) for name in source.list_parts()}
    assert len({id(part.shared) for part in parts.values()}) == 1, "one consumer for the process"
    read: dict[int, list[int]] = {p.partition: [] for p in parts.values()}
    values: list[bytes] = []
    ended: set[int] = set()
    for _ in range(100_000):
        if len(ended) == len(parts):
            break
        for part in parts.values():
            if part.partition in ended:
                continue
            for item in part.next_batch():
                if isinstance(item, EndOfInput):
                    ended.add(item.partition)
                else:
                    assert item.partition == part.partition
                    read[part.partition].append(item.seq)
                    values.append(item.payload)
            assert part.shared.buffered <= kafka.BUFFERED_MESSAGES
    assert ended == set(read)
    assert sorted(values) == sorted(lines), "every message once"
    for offsets in read.values():
        assert offsets == list(range(len(offsets))), "each partition in offset order, from its start"
    assert next(iter(parts.values())).shared.closed, "the consumer closes with its last partition"


def test_partitions_that_read_all_there_was_wake_together(services):
    """A live partition that has read everything polls again at the next poll mark of the clock,
    the same for all: one activation of the source then reads every partition, not one each."""
    from connectors import kafka
    from connectors.kafka import KafkaEventSource

    topic = produce(services, [orjson.dumps({"n": n}) for n in range(40)], partitions=4)
    source = KafkaEventSource(services["KAFKA_BOOTSTRAP_SERVERS"], topic)
    wakes = _wakes_after_one_read(source)
    assert all(wake is not None for wake in wakes)
    for wake in wakes:
        ticks = wake.timestamp() / kafka.POLL_SECONDS
        assert abs(ticks - round(ticks)) < 1e-3, f"{wake} is on the shared grid"
    assert kafka.next_poll(100.0012) == kafka.next_poll(100.0099), "moments apart: the same instant"


def _wakes_after_one_read(source: Any) -> list[Any]:
    """When each partition of ``source`` asks to be read again after reading once."""
    parts = [source.build_part("in", name, None) for name in source.list_parts()]
    wakes = []
    for part in parts:
        part.next_batch()
        wakes.append(part.next_awake())
        part.close()
    return wakes


def test_the_poll_interval_sets_when_caught_up_partitions_read_again_and_how_long_fetches_wait(services):
    """``NUDGEFLOW_KAFKA_POLL_MS``: caught-up partitions read again on its grid (one run of the flow
    for all the events of the interval), and the broker holds a fetch up to as long."""
    from connectors.kafka import KafkaEventSource

    topic = produce(services, [orjson.dumps({"n": n}) for n in range(40)], partitions=4)
    settings = Settings(kafka_poll_ms=40)
    source = KafkaEventSource(services["KAFKA_BOOTSTRAP_SERVERS"], topic, poll_seconds=settings.kafka_poll_ms / 1000)
    assert source.config["fetch.wait.max.ms"] == 40
    wakes = _wakes_after_one_read(source)
    for wake in wakes:
        ticks = wake.timestamp() / 0.040
        assert abs(ticks - round(ticks)) < 1e-3, f"{wake} is on the 40 ms grid"


def test_a_live_partition_that_read_all_there_was_holds_nothing_back_with_that_batch(services):
    """The batch that reads a live partition up to its end says the partition is idle (it holds
    nothing back), so the other partitions' events of the same moment are applied at once, not
    after this partition's next read."""
    from connectors.kafka import KafkaEventSource
    from schemas.items import EndOfInput

    topic = produce(services, [orjson.dumps({"n": n}) for n in range(5)], partitions=1)
    part = KafkaEventSource(services["KAFKA_BOOTSTRAP_SERVERS"], topic).build_part("in", f"{topic}#0", None)
    try:
        batch: list = []
        deadline = time.monotonic() + 30
        while not any(getattr(item, "seq", None) == 4 and not isinstance(item, EndOfInput) for item in batch):
            assert time.monotonic() < deadline, "the events were not read"
            batch = part.next_batch()
            time.sleep(0.01)
    finally:
        part.close()
    assert isinstance(batch[-1], EndOfInput), batch
    assert batch[-1].seq == 5, "idle from the next offset on"


def test_decision_latency_ends_when_kafka_confirms_not_when_the_engine_next_looks(services):
    """Kafka confirms a decision within milliseconds; the engine hears of it only when it next polls
    its producer (here: a second later, at close). The histogram counts up to the confirmation."""
    servers = services["KAFKA_BOOTSTRAP_SERVERS"]
    prefix = f"latency-{uuid.uuid4().hex[:8]}-"
    admin = AdminClient({"bootstrap.servers": servers})
    topic = NewTopic(prefix + "triggers.push", 1, 1)
    admin.create_topics([topic])[topic.topic].result(30)
    partition = KafkaOutputSink(servers, prefix, partitions=1).build_part("out", "producer-0", None)
    partition.write_batch([Output("triggers.push", "warm-up", 0, 0, b'{"id": "w", "data": {}}')])
    partition.snapshot()  # connected, and the producer id acquired

    def observed() -> tuple[float, float]:
        labels = {"origin": "event"}
        count = REGISTRY.get_sample_value("nudgeflow_decision_latency_seconds_count", labels) or 0
        return count, REGISTRY.get_sample_value("nudgeflow_decision_latency_seconds_sum", labels) or 0

    before = observed()
    body = orjson.dumps({"specversion": "1.0", "id": "d1", "data": {"content": "ok"}})
    partition.write_batch([Output("triggers.push", "c1", 0, 0, body, arrived=time.time())])
    time.sleep(1.0)  # delivered long before the engine looks again
    partition.close()
    after = observed()
    assert after[0] - before[0] == 1
    assert after[1] - before[1] < 0.5, "the time to Kafka's confirmation, not to the engine's next look"
