"""Apache Kafka in and out: the events topic as a Bytewax source, output streams to topics.

Source: one Bytewax partition per topic partition (partitions spread over all workers of all
processes); the partitions a process reads share one confluent-kafka consumer, assigned (no
consumer group: the resume position is the next offset, kept in Bytewax's recovery snapshots). Values are Segment-shaped
JSON; CloudEvents ``ce_*`` headers may be present and are not needed. A partition that has
read all there is says so with the batch that got there (:class:`schemas.items.EndOfInput`),
so the others' events are not held back until its next read; with ``until_end`` each partition
stops at the high watermark it saw at start.

Sink: each output stream goes to ``topic_prefix + stream`` (``nudgeflow.triggers.push``, ...).
Decisions are CloudEvents in binary mode: ``ce_*`` headers and the JSON ``data`` as value, the
customer id as key, so a customer's decisions stay in order in one partition. Dead letters keep
their JSON record as value with ``nf_reason`` / ``nf_source_*`` headers. The producer is
idempotent, compresses, buffers a bounded amount (a full buffer waits), counts and logs every
failed delivery and retries it, and is flushed at every snapshot and at close, so what a
snapshot covers has been delivered.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from schemas.errors import ServiceError
from schemas.items import EndOfInput, Output, RawEvent
from schemas.metrics import DECISION_LATENCY, KAFKA_LAG, SINK_ERRORS, SINK_RECORDS, SINK_RETRIES
from schemas.streams import DEAD_LETTERS, DECISION_STREAMS

log = logging.getLogger(__name__)

POLL_SECONDS = 0.010  # a partition that read all there was polls again at the next multiple of this
FETCH_MIN_BYTES = 1 << 20  # the broker answers a fetch when it has this much, else when its wait is over
BUFFERED_MESSAGES = 50_000  # read ahead by a process's consumer, over all its partitions
LAG_EVERY_SECONDS = 1.0
LEADER_WAIT_SECONDS = 30.0  # how long a partition may be without a leader (a topic just created) at start
NO_LEADER_YET = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})
MAX_DELIVERY_ATTEMPTS = 5


def kafka_config(bootstrap_servers: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap_servers, **(extra or {})}


def topic_partitions(
    bootstrap_servers: str, topic: str, client: dict[str, Any] | None = None, timeout: float = 10.0
) -> int:
    """The number of partitions of ``topic`` (an error if it does not exist or Kafka does not answer)."""
    metadata = _metadata(AdminClient(kafka_config(bootstrap_servers, client)), bootstrap_servers, timeout, topic)
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise ServiceError(f"Kafka topic {topic!r} does not exist on {bootstrap_servers}")
    return len(info.partitions)


def _metadata(admin: AdminClient, bootstrap_servers: str, timeout: float, topic: str | None = None) -> Any:
    try:
        return admin.list_topics(topic, timeout=timeout)
    except KafkaException as err:
        raise ServiceError(f"cannot reach Kafka at {bootstrap_servers}: {err.args[0].str()}") from None


def topic_exists(
    bootstrap_servers: str, topic: str, client: dict[str, Any] | None = None, timeout: float = 10.0
) -> bool:
    """Whether ``topic`` exists (asked without naming it, so that no broker creates it by asking)."""
    return topic in _metadata(AdminClient(kafka_config(bootstrap_servers, client)), bootstrap_servers, timeout).topics


def topic_config(
    bootstrap_servers: str, topic: str, name: str, client: dict[str, Any] | None = None, timeout: float = 10.0
) -> str | None:
    """The value of a topic's setting ``name`` (``None``: the brokers do not say)."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    admin = AdminClient(kafka_config(bootstrap_servers, client))
    try:
        entry = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout)
    except KafkaException as err:
        raise ServiceError(f"cannot read the settings of Kafka topic {topic!r}: {err.args[0].str()}") from None
    return entry[name].value if name in entry else None


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    partitions: int,
    client: dict[str, Any] | None = None,
    timeout: float = 10.0,
    configs: dict[str, dict[str, str]] | None = None,
) -> None:
    """Create the topics that do not exist yet (replication: up to 3, as brokers allow), each with
    its entry of ``configs`` (topic settings such as ``cleanup.policy``) if it has one."""
    admin = AdminClient(kafka_config(bootstrap_servers, client))
    metadata = _metadata(admin, bootstrap_servers, timeout)
    existing, brokers, configs = metadata.topics, len(metadata.brokers), configs or {}
    missing = [NewTopic(t, partitions, min(3, brokers), config=configs.get(t, {})) for t in topics if t not in existing]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ServiceError(f"cannot create Kafka topic {topic!r}: {err}") from None


# --- source --------------------------------------------------------------------------------
class _SharedConsumer:
    """One consumer for every topic partition a process reads, its messages handed out per
    partition: one client, one fetch loop and one set of threads, however many partitions.

    Workers are threads of one process, so taking is locked. A partition's reader refills the
    buffers when its own is empty, up to :data:`BUFFERED_MESSAGES` held in all.
    """

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self.consumer = Consumer(config)
        self.topic = topic
        self.buffers: dict[int, deque[Message]] = {}
        self.buffered = 0
        self.closed = False
        self.lock = threading.Lock()

    def add(self, partition: int, offset: int) -> None:
        with self.lock:
            self.buffers[partition] = deque()
            self.consumer.incremental_assign([TopicPartition(self.topic, partition, offset)])

    def take(self, partition: int, count: int) -> list[Message]:
        """Up to ``count`` messages of ``partition``, in offset order (never waits)."""
        with self.lock:
            buffer = self.buffers[partition]
            if not buffer and self.buffered < BUFFERED_MESSAGES:
                for message in self.consumer.consume(count * len(self.buffers), timeout=0):
                    owner = self.buffers.get(message.partition())
                    if owner is not None:
                        owner.append(message)
                        self.buffered += 1
            taken = [buffer.popleft() for _ in range(min(count, len(buffer)))]
            self.buffered -= len(taken)
            return taken

    def high_watermark(self, partition: int) -> int:
        """The partition's high watermark as of the latest fetch (-1 when unknown)."""
        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, partition), cached=True)
        except KafkaException:
            return -1
        return high

    def remove(self, partition: int) -> None:
        """Stop reading ``partition``; the consumer closes with its last partition."""
        with self.lock:
            buffer = self.buffers.pop(partition, None)
            if buffer is None:
                return
            self.buffered -= len(buffer)
            self.consumer.incremental_unassign([TopicPartition(self.topic, partition)])
            if not self.buffers:
                self.consumer.close()
                self.closed = True


class _TopicPartitionReader(StatefulSourcePartition[RawEvent | EndOfInput, int]):
    """One topic partition; its snapshot is the next offset to read."""

    def __init__(
        self,
        shared: _SharedConsumer,
        partition: int,
        start: int,
        until_end: bool,
        batch_size: int,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.shared, self.topic, self.partition, self.batch_size = shared, shared.topic, partition, batch_size
        self.poll_seconds = poll_seconds
        low, high = watermarks(shared.consumer, TopicPartition(self.topic, partition))
        self.next = {OFFSET_BEGINNING: low, OFFSET_END: high}.get(start, start)
        self.end = high if until_end else None
        shared.add(partition, self.next)
        self.idle = False
        self.done = False
        self.lag = KAFKA_LAG.labels(topic=self.topic, partition=str(partition))
        self.lag_at = 0.0
        self._awake: Any = None

    def next_batch(self) -> list[RawEvent | EndOfInput]:
        if self.done:
            raise StopIteration
        if self.end is not None and self.next >= self.end:
            self.done = True
            self.lag.set(0)
            self.shared.remove(self.partition)
            return [EndOfInput(self.next, self.partition)]
        messages = self.shared.take(self.partition, self.batch_size)
        now = time.time()
        batch: list[RawEvent | EndOfInput] = []
        for message in messages:
            if message.error() is not None:
                self._error(message)
                continue
            offset = message.offset()
            if self.end is not None and offset >= self.end:
                break
            position = {"topic": self.topic, "partition": self.partition, "offset": offset}
            batch.append(RawEvent(offset, position, message.value() or b"", partition=self.partition, arrived=now))
            self.next = offset + 1
        self._awake = None
        if batch:
            self.idle = False
            if len(messages) < self.batch_size:  # caught up: let the next batch gather for a moment
                self._awake = next_poll(now, self.poll_seconds)
        elif self.end is None:
            self._awake = next_poll(now, self.poll_seconds)
        if self.end is None and self._awake is not None and not self.idle and self._caught_up():
            # read all there was: the other partitions' events need not wait for this one's next read
            self.idle = True
            batch.append(EndOfInput(self.next, self.partition))
        if now - self.lag_at >= LAG_EVERY_SECONDS:
            self.lag_at = now
            self._update_lag()
        return batch

    def next_awake(self) -> Any:
        return self._awake

    def _error(self, message: Message) -> None:
        err = message.error()
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise KafkaException(err)
        log.warning("Kafka %s[%d]: %s", self.topic, self.partition, err)

    def _caught_up(self) -> bool:
        """Read up to the high watermark of the latest fetch (not merely waiting for a fetch)."""
        high = self.shared.high_watermark(self.partition)
        return high >= 0 and self.next >= high

    def _update_lag(self) -> None:
        high = self.shared.high_watermark(self.partition)
        if high >= 0:
            self.lag.set(max(0, high - self.next))

    def snapshot(self) -> int:
        return self.next

    def close(self) -> None:
        self.shared.remove(self.partition)


def watermarks(consumer: Any, partition: TopicPartition, wait: float = LEADER_WAIT_SECONDS) -> tuple[int, int]:
    """The partition's low and high offsets, waiting up to ``wait`` seconds while it has no leader yet
    (the brokers of a topic just created are still electing one)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=10.0)
        except KafkaException as err:
            if err.args[0].code() not in NO_LEADER_YET:
                raise
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"Kafka topic {partition.topic!r} partition {partition.partition} has no leader after {wait:.0f} s:"
                    f" {err.args[0].str()}"
                ) from None
            time.sleep(0.2)


def next_poll(now: float, every: float = POLL_SECONDS) -> datetime:
    """When a partition that read all there was polls again: the next multiple of ``every`` seconds.

    Every partition of a process asks for the same instant, so one activation of the source reads
    them all (and the flow runs once for their events) instead of one activation each.
    """
    return datetime.fromtimestamp((now // every + 1) * every, UTC)


def part_names(topic: str, partitions: int) -> list[str]:
    """The source's partition names (also those a warm start writes its state under)."""
    return [f"{topic}#{p}" for p in range(partitions)]


class KafkaEventSource(FixedPartitionedSource[RawEvent | EndOfInput, int]):
    """The events topic, one Bytewax partition per topic partition.

    ``start_from`` ("earliest" or "latest") applies where no recovery snapshot says where to
    resume; ``until_end`` stops each partition at the high watermark it saw at start. A partition
    that read all there was reads again ``poll_seconds`` later (on a grid shared by all), and the
    broker holds a fetch up to as long for more records: the events that arrive meanwhile are
    handled together, one run of the flow for all, which costs far less CPU than a run each.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        start_from: str = "earliest",
        until_end: bool = False,
        batch_size: int = 1000,
        consumer_config: dict[str, Any] | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.topic = topic
        self.poll_seconds = poll_seconds
        self.partitions = topic_partitions(bootstrap_servers, topic, consumer_config)
        self.start = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END}[start_from]
        self.until_end = until_end
        self.batch_size = batch_size
        self.config = kafka_config(
            bootstrap_servers,
            {
                "group.id": "nudgeflow",  # required by the client; offsets are never committed
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": max(1, round(poll_seconds * 1000)),
                "fetch.min.bytes": FETCH_MIN_BYTES,
                **(consumer_config or {}),
            },
        )
        self._shared: _SharedConsumer | None = None  # one per process, made with the first partition
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        return part_names(self.topic, self.partitions)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _TopicPartitionReader:
        partition = int(for_part.rsplit("#", 1)[1])
        start = self.start if resume_state is None else resume_state  # None also after a warm start
        with self._lock:
            if self._shared is None or self._shared.closed:
                self._shared = _SharedConsumer(self.config, self.topic)
            shared = self._shared
        return _TopicPartitionReader(shared, partition, start, self.until_end, self.batch_size, self.poll_seconds)


# --- sink ----------------------------------------------------------------------------------
def kafka_record(output: Output) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of one output record (binary-mode CloudEvents for decisions)."""
    if output.stream in DECISION_STREAMS:
        event = orjson.loads(output.body)
        data = event.pop("data")
        headers = [(f"ce_{name}", str(value).encode()) for name, value in event.items() if name != "datacontenttype"]
        headers.append(("content-type", event.get("datacontenttype", "application/json").encode()))
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS), headers
    if output.stream == DEAD_LETTERS:
        record = orjson.loads(output.body)
        position = record.get("position") or {}
        headers = [("nf_reason", record["reason"].encode())]
        headers += [(f"nf_source_{k}", str(v).encode()) for k, v in sorted(position.items())]
        return output.body, headers
    return output.body, []


def structured_event(value: bytes, headers: list[tuple[str, bytes]] | None) -> dict[str, Any]:
    """A binary-mode CloudEvent read back as the structured (JSON) form."""
    event: dict[str, Any] = {}
    for name, raw in headers or ():
        if name.startswith("ce_"):
            event[name[3:]] = raw.decode()
        elif name == "content-type":
            event["datacontenttype"] = raw.decode()
    event["data"] = orjson.loads(value)
    return event


class _DeliveryReports(threading.Thread):
    """Serves a producer's delivery reports as they come, for as long as a sink partition uses it:
    a decision's latency ends when Kafka confirms it, not when the flow next writes."""

    def __init__(self, producer: Producer) -> None:
        super().__init__(name="kafka-delivery-reports", daemon=True)
        self.producer = producer
        self.users = 0
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.halt.is_set():
            self.producer.poll(0.05)

    def use(self) -> None:
        with self.lock:
            self.users += 1

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                self.halt.set()


class _ProducerPartition(StatefulSinkPartition[Output, None]):
    def __init__(
        self, producer: Producer, config: dict[str, Any], topic_prefix: str, reports: _DeliveryReports
    ) -> None:
        self.producer = producer  # shared by the process's partitions: one client, one set of threads
        self.topic_prefix = topic_prefix
        self.reports = reports
        self.failed = 0
        self.timeout = float(config.get("message.timeout.ms", 300_000)) / 1000 + 30
        # to be retried each on its own; filled by delivery reports (served on another thread too)
        self._too_large: deque[tuple[str, Output, bytes, list]] = deque()

    def write_batch(self, values: list[Output]) -> None:
        for output in values:  # the flow sends decisions and dead letters only
            value, headers = kafka_record(output)
            self._produce(self.topic_prefix + output.stream, output, value, headers, 1)
        if self._too_large:
            self._flush()

    def _produce(
        self, topic: str, output: Output, value: bytes, headers: list, attempt: int, alone: bool = False
    ) -> None:
        sent = time.time()

        def delivered(err: KafkaError | None, message: Message) -> None:
            if err is None:
                _confirmed(output, sent, message)
            else:
                self._failed(err, topic, output, value, headers, attempt, alone)

        produce_waiting(self.producer, topic, value, output.key.encode(), headers=headers, on_delivery=delivered)

    def _failed(
        self, err: KafkaError, topic: str, output: Output, value: bytes, headers: list, attempt: int, alone: bool
    ) -> None:
        SINK_ERRORS.labels(sink="kafka", reason=err.name()).inc()
        too_large = err.code() == KafkaError.MSG_SIZE_TOO_LARGE
        if too_large and not alone:
            # The broker rejects a whole batch for one oversized record: each is retried alone, so
            # batch-mates get through and a record too large by itself fails for good at once.
            SINK_RETRIES.labels(sink="kafka").inc()
            self._too_large.append((topic, output, value, headers))
            return
        if not too_large and attempt < MAX_DELIVERY_ATTEMPTS and not err.fatal():
            SINK_RETRIES.labels(sink="kafka").inc()
            log.warning("Kafka delivery to %s failed (%s); retry %d", topic, err, attempt)
            self._produce(topic, output, value, headers, attempt + 1, alone)
            return
        self.failed += 1
        log.error("Kafka delivery to %s failed for good (%s): key %s, %s", topic, err, output.key, output.body[:200])

    def _flush(self) -> None:
        """Wait until every record produced so far is delivered or failed for good. A record's count
        in ``len(producer)`` ends after its delivery report was served, so retries are asked first."""
        self._wait_for_deliveries()
        while self._too_large:
            topic, output, value, headers = self._too_large.popleft()
            self._produce(topic, output, value, headers, 1, alone=True)
            self._wait_for_deliveries()

    def _wait_for_deliveries(self) -> None:
        deadline = time.monotonic() + self.timeout
        while len(self.producer) and time.monotonic() < deadline:
            self.producer.flush(1.0)
        if len(self.producer):
            raise ServiceError(f"{len(self.producer)} Kafka records not delivered within {self.timeout:.0f} s")

    def snapshot(self) -> None:
        self._flush()  # what the snapshot covers has reached Kafka
        return None

    def close(self) -> None:
        self._flush()
        self.reports.release()
        if self.failed:
            log.error("%d Kafka records could not be delivered (see the errors above)", self.failed)


def _confirmed(output: Output, sent: float, message: Message) -> None:
    """Count a delivered record; a decision's latency ends when Kafka confirmed it (``sent`` plus the
    client's own measure), not when the engine next polled its producer and heard of it."""
    SINK_RECORDS.labels(sink="kafka", stream=output.stream).inc()
    if output.arrived and output.stream != DEAD_LETTERS:
        confirmed = sent + (message.latency() or time.time() - sent)
        origin = "timer" if output.timer else "event"
        DECISION_LATENCY.labels(origin=origin).observe(max(0.0, confirmed - output.arrived))


def produce_waiting(producer: Producer, topic: str, value: bytes, key: bytes | None, **kwargs: Any) -> None:
    """Produce, waiting for deliveries while the bounded buffer is full (at most ~8 minutes)."""
    for _ in range(10_000):
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)
    raise ServiceError(f"Kafka producer buffer stayed full; {topic} is not accepting records")


class KafkaOutputSink(FixedPartitionedSink[Output, None]):
    """Output streams to Kafka topics, keyed by customer; items are ``(customer id, Output)``."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic_prefix: str = "nudgeflow.",
        partitions: int = 16,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        self.topic_prefix = topic_prefix
        self.partitions = partitions
        self.config = kafka_config(
            bootstrap_servers,
            {
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "lz4",
                "linger.ms": 5,
                "queue.buffering.max.messages": 100_000,
                "queue.buffering.max.kbytes": 64 * 1024,
                **(producer_config or {}),
            },
        )
        self._producer: Producer | None = None  # one per process, made when the first partition is built
        self._reports: _DeliveryReports | None = None
        self._lock = threading.Lock()  # workers are threads of one process

    def list_parts(self) -> list[str]:
        return [f"producer-{n}" for n in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode()) % self.partitions

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ProducerPartition:
        with self._lock:
            if self._producer is None:
                self._producer = Producer(self.config)
            if self._reports is None or self._reports.halt.is_set():
                self._reports = _DeliveryReports(self._producer)
                self._reports.start()
            self._reports.use()
            return _ProducerPartition(self._producer, self.config, self.topic_prefix, self._reports)


# --- tools: produce a recording, read a topic ----------------------------------------------
def produce_records(
    bootstrap_servers: str,
    topic: str,
    lines: Iterable[bytes],
    rate: float | None = None,
    progress: Any = None,
    client: dict[str, Any] | None = None,
) -> int:
    """Send JSONL event lines to ``topic`` (keyed by ``anonymousId`` else ``userId``), at most
    ``rate`` per second; return how many. Delivery failures raise at the end."""
    settings = {"enable.idempotence": True, "compression.type": "lz4", "linger.ms": 20, "acks": "all"}
    producer = Producer(kafka_config(bootstrap_servers, {**(client or {}), **settings}))
    failures: list[str] = []

    def delivered(err: KafkaError | None, _: Message) -> None:
        if err is not None:
            failures.append(str(err))

    started = time.monotonic()
    sent = 0
    for line in lines:
        key = event_key(line)
        produce_waiting(producer, topic, line, key, on_delivery=delivered)
        sent += 1
        if progress is not None:
            progress.update(1)
        if rate:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        if sent % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    if failures or len(producer):
        raise ServiceError(f"{len(failures) + len(producer)} events not delivered: {failures[:3]}")
    return sent


def event_key(line: bytes) -> bytes | None:
    """The partitioning key of an event line: its ``anonymousId``, else its ``userId``."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    key = event.get("anonymousId") or event.get("userId")
    return str(key).encode() if key is not None else None


def read_topic(
    bootstrap_servers: str,
    topic: str,
    until_end: bool = True,
    from_beginning: bool = True,
    client: dict[str, Any] | None = None,
    stall_seconds: float = 60.0,
) -> Iterator[Message]:
    """Every message of ``topic`` (all partitions, in each partition's order); with ``until_end``
    stop at the high watermarks seen at start, else follow the topic."""
    settings = {"group.id": "nudgeflow-reader", "enable.auto.commit": False}
    consumer = Consumer(kafka_config(bootstrap_servers, {**(client or {}), **settings}))
    try:
        count = topic_partitions(bootstrap_servers, topic, client)
        ends: dict[int, int] = {}
        assignment = []
        for p in range(count):
            low, high = watermarks(consumer, TopicPartition(topic, p))  # a topic just created: its leaders
            if high > low or not until_end:
                ends[p] = high
                assignment.append(TopicPartition(topic, p, low if from_beginning else high))
        consumer.assign(assignment)
        remaining = set(ends)
        quiet_since = time.monotonic()
        while remaining:
            message = consumer.poll(0.2)
            if message is None:
                if until_end and time.monotonic() - quiet_since > stall_seconds:
                    raise TimeoutError(f"{topic}: stopped receiving before the end of partitions {sorted(remaining)}")
                continue
            quiet_since = time.monotonic()
            if message.error() is not None:
                if message.error().code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(message.error())
                continue
            yield message
            if until_end and message.offset() + 1 >= ends[message.partition()]:
                remaining.discard(message.partition())
    finally:
        consumer.close()


def readable(message: Message) -> bytes:
    """One record as a JSON line: decisions as structured CloudEvents, anything else as its value."""
    headers = message.headers() or []
    if any(name == "ce_specversion" for name, _ in headers):
        return orjson.dumps(structured_event(message.value(), headers), option=orjson.OPT_SORT_KEYS)
    return message.value() or b""
