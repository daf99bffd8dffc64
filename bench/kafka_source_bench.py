"""Kafka input alone: Bytewax's KafkaSource against nudgeflow's KafkaEventSource, same topic.

    python bench/kafka_source_bench.py [--events 300000] [--partitions 8]

Uses ``KAFKA_BOOTSTRAP_SERVERS`` when set, else starts a local broker. Each flow reads the
whole topic (stopping at its end) into a sink that only counts; the figure is messages per
second of wall time from the flow's start to its end, on one worker.
"""

from __future__ import annotations

import argparse
import time
import uuid

import orjson
from bytewax import operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from flow_bench import NullSink
from kafka_bench import kafka

from connectors.kafka import KafkaEventSource, ensure_topics, produce_records
from connectors.synthetic import generate_events


def timed(flow: Dataflow, sink: NullSink) -> tuple[int, float]:
    started = time.perf_counter()
    run_main(flow)
    return sink.counter[0], time.perf_counter() - started


def bytewax_source(servers: str, topic: str) -> tuple[int, float]:
    flow = Dataflow("bytewax-kafka")
    sink = NullSink()
    messages = op.input("in", flow, KafkaSource([servers], [topic], tail=False, batch_size=1000))
    op.output("out", messages, sink)
    return timed(flow, sink)


def nudgeflow_source(servers: str, topic: str) -> tuple[int, float]:
    flow = Dataflow("nudgeflow-kafka")
    sink = NullSink()
    records = op.input("in", flow, KafkaEventSource(servers, topic, until_end=True, batch_size=1000))
    op.output("out", op.filter("events", records, lambda r: hasattr(r, "payload")), sink)
    return timed(flow, sink)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    with kafka() as (servers, _):
        lines = []
        for event in generate_events(3000, 30, seed=5):
            lines.append(orjson.dumps(event))
            if len(lines) >= args.events:
                break
        topic = f"bench-source-{uuid.uuid4().hex[:8]}"
        ensure_topics(servers, [topic], args.partitions)
        produce_records(servers, topic, lines)
        print(f"{len(lines):,} events ({sum(map(len, lines)) / len(lines):.0f} B each) in {args.partitions} partitions")
        print("| source | messages | seconds | messages/s |\n| --- | ---: | ---: | ---: |")
        for name, read in (("bytewax KafkaSource", bytewax_source), ("nudgeflow KafkaEventSource", nudgeflow_source)):
            count, seconds = read(servers, topic)
            print(f"| {name} | {count:,} | {seconds:.2f} | {count / seconds:,.0f} |")


if __name__ == "__main__":
    main()
