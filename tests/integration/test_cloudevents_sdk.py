"""Decisions the Kafka flow writes are binary-mode CloudEvents that the CloudEvents Python SDK reads
(its Kafka binding), and they say what the file output of the same events says."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import orjson
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from connectors.kafka import ensure_topics, produce_records, read_topic
from connectors.synthetic import DEFAULT_START, generate_events, write_jsonl
from flows.cli import execute
from flows.settings import Settings
from schemas.streams import DECISION_STREAMS, KAFKA_STREAMS, OUTPUT_FILES


def file_events(folder: Path, stream: str) -> dict[str, dict]:
    records = [orjson.loads(line) for line in (folder / OUTPUT_FILES[stream]).read_bytes().splitlines() if line]
    by_id = {record["id"]: record for record in records}
    assert len(by_id) == len(records), f"{stream}: ids are unique"
    return by_id


def test_decisions_on_kafka_parse_with_the_cloudevents_sdk_and_match_the_file_output(services, tmp_path):
    recording = tmp_path / "events.jsonl"
    with recording.open("wb") as out:
        write_jsonl(generate_events(60, 6, seed=7, start=DEFAULT_START), out)
    files = Settings(input=[recording], out=tmp_path / "files")
    execute(files, quiet=True)

    servers = services["KAFKA_BOOTSTRAP_SERVERS"]
    topic, prefix = f"ce-events-{os.getpid()}", f"ce{os.getpid()}."
    ensure_topics(servers, [topic], 3)
    produce_records(servers, topic, recording.read_bytes().splitlines())
    kafka = Settings(
        source="kafka", kafka_bootstrap_servers=servers, events_topic=topic, until_end=True, topic_prefix=prefix
    )
    execute(kafka, quiet=True)

    checked = 0
    for stream in sorted(DECISION_STREAMS & set(KAFKA_STREAMS)):
        expected = file_events(tmp_path / "files", stream)
        seen: set[str] = set()
        for message in read_topic(servers, prefix + stream):
            event = from_binary_event(KafkaMessage(dict(message.headers()), message.key(), message.value()))
            record = expected[event.get_id()]
            assert event.get_specversion() == "1.0"
            assert event.get_type() == record["type"] and event.get_source() == record["source"]
            assert event.get_subject() == record["subject"] == message.key().decode()
            assert event.get_time() == datetime.fromisoformat(record["time"])
            assert event.get_datacontenttype() == "application/json"
            assert event.get_data() == record["data"]
            seen.add(event.get_id())
        assert seen == set(expected), f"{stream}: every decision of the files, and only those"
        checked += len(seen)
    assert checked > 100
