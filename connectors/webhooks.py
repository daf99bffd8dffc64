"""Webhooks out: decisions POSTed to HTTP endpoints, signed the Standard Webhooks way.

:class:`WebhookSink` takes the flow's ``(customer id, Output)`` items of the streams its
destinations chose (see :mod:`schemas.webhooks`). Each delivery is one request: the body is the
decision's structured CloudEvent (``content-type: application/cloudevents+json``), with headers
``webhook-id`` (the CloudEvent id: the same on every retry and after a restart, so receivers
dedupe on it), ``webhook-timestamp`` (unix seconds of the attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` with the destination's secret).

The flow never waits on a receiver: ``write_batch`` only records the deliveries and hands them to
the partition's own asyncio loop thread, which sends them with one aiohttp session. Each
destination has its own bounded queue and its own limit of requests in flight (its
``concurrency``, split over the sink's partitions), so a slow or dead receiver holds up only
itself. What does not fit in a queue waits in the partition's state. A 5xx, a 429, a timeout or a
network error is retried after an exponential backoff with full jitter (a 429's ``Retry-After``
is honoured instead, at most an hour); any other answer but a 2xx is not retried. A delivery that
fails for good goes to the dead letters (``webhook_undeliverable``, the destination and the last
failure in its messages).

A recovery snapshot holds every delivery not done yet (queued, in flight, waiting to retry), so a
resumed engine sends them again. Close waits at most ``close_timeout`` for the rest; then, with
snapshots, what is left is in the last snapshot (and logged), and without, it goes to the dead
letters.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.redis_store import CloseDeadline
from schemas.errors import RecoveryStoreError
from schemas.items import Output
from schemas.metrics import SINK_ERRORS, WEBHOOK_ATTEMPTS, WEBHOOK_DELIVERIES, WEBHOOK_LATENCY, WEBHOOK_PENDING
from schemas.records import dead_letter
from schemas.streams import DEAD_LETTERS
from schemas.webhooks import Destination

log = logging.getLogger(__name__)

PROCESSOR = "nudgeflow.webhooks"
UNDELIVERABLE = "webhook_undeliverable"
DEAD_LETTER_FILE = "webhook_dead_letters.jsonl"
"""Where a run without Kafka puts its undeliverable decisions, in its output folder."""
CONTENT_TYPE = "application/cloudevents+json"
PARTITIONS = 4
"""Sink partitions (each with its own loop thread and HTTP session), spread over the workers."""
RETRY_AFTER_CAP = 3600.0
DEAD_LETTER_LOG_SECONDS = 60.0
ANSWER_BYTES = 64 * 1024
"""Of a receiver's answer body, read at most this much (the rest closes the connection, not memory)."""
SNAPSHOT_FORMAT = 1
"""Version of a partition's recovery snapshot (:data:`WebhookSnapshot`)."""

HeldDelivery = tuple[str, str, str, str, int, bytes, int]
"""A delivery in a snapshot: destination, webhook id, stream, customer, time (ms), body, attempts made."""
WebhookSnapshot = tuple[int, tuple[HeldDelivery, ...]]


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` of a request: ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``."""
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def backoff_delay(attempt: int, start: float, cap: float, draw: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): drawn uniformly below
    ``min(cap, start * 2 ** (attempt - 1))`` ("full jitter", so retries of many deliveries spread out)."""
    return draw() * min(cap, start * 2.0 ** min(attempt - 1, 64))


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header's wait (delay seconds or an HTTP date), at most an hour; None when
    absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


class DeadLetterWriter(Protocol):
    """Where undeliverable decisions go: a dead-letter record per decision, keyed by customer."""

    def write(self, customer: str, record: bytes) -> None: ...

    def flush(self) -> None:
        """Return once what was written is stored (called before a snapshot is taken and at close)."""


class FileDeadLetters:
    """Dead-letter records appended to a JSONL file (created when the first one comes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, customer: str, record: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as file:
                file.write(record + b"\n")

    def flush(self) -> None:
        return None  # each write is closed, so in the file, before it returns


class KafkaDeadLetters:
    """Dead-letter records sent to a Kafka topic (keyed by customer, with the Kafka sink's ``nf_*`` headers)."""

    def __init__(self, bootstrap_servers: str, topic: str, client: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self.config = {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True, "acks": "all"}
        self.config.update(client or {})
        self._producer: Any = None
        self._lock = threading.Lock()

    def write(self, customer: str, record: bytes) -> None:
        from connectors.kafka import kafka_record, produce_waiting

        value, headers = kafka_record(Output(DEAD_LETTERS, customer, 0, 0, record))
        with self._lock:
            if self._producer is None:
                from confluent_kafka import Producer

                self._producer = Producer(self.config)
            produce_waiting(self._producer, self.topic, value, customer.encode(), headers=headers, on_delivery=_sent)
            self._producer.poll(0)

    def flush(self) -> None:
        with self._lock:
            producer = self._producer
        if producer is not None and producer.flush(30):
            log.error("webhook dead letters: %d records not confirmed by Kafka within 30 s", len(producer))


def _sent(err: Any, _: Any) -> None:
    if err is not None:
        SINK_ERRORS.labels(sink="webhooks", reason=err.name()).inc()
        log.error("webhook dead letter not delivered to Kafka: %s", err)


@dataclass(slots=True)
class Delivery:
    """One decision for one destination, until it is delivered or dead-lettered."""

    destination: str
    id: str
    stream: str
    customer: str
    time_ms: int
    body: bytes
    attempts: int = 0
    since: float = 0.0  # monotonic time it reached the sink (or was resumed)

    def held(self) -> HeldDelivery:
        return (self.destination, self.id, self.stream, self.customer, self.time_ms, self.body, self.attempts)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one request came to: its outcome label, whether to retry, a message, a ``Retry-After`` wait."""

    outcome: str
    retry: bool
    message: str = ""
    wait: float | None = None


OK = Attempt("ok", False)


class DestinationHealth:
    """Logs when a destination starts failing and when it takes deliveries again: once for all the
    sink's partitions in a process (the first that fails, the last that delivers again); and the
    decisions it dead-letters, the first at once, then at most one line a minute."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._failing: set[int] = set()
        self._since = 0.0
        self._failures = 0
        self._dead = 0
        self._dead_logged = -DEAD_LETTER_LOG_SECONDS

    def dead_lettered(self, why: str) -> None:
        with self._lock:
            self._dead += 1
            now = time.monotonic()
            if now - self._dead_logged < DEAD_LETTER_LOG_SECONDS:
                return
            count = f"{self._dead} decision{'' if self._dead == 1 else 's'}"
            log.warning("webhooks: destination '%s': %s sent to the dead letters (the last: %s)", self.name, count, why)
            self._dead, self._dead_logged = 0, now

    def failed(self, partition: object, message: str) -> None:
        with self._lock:
            self._failures += 1
            if not self._failing:
                self._since = time.monotonic()
                log.warning("webhooks: destination '%s' failing (%s); retrying where allowed", self.name, message)
            self._failing.add(id(partition))

    def delivered(self, partition: object) -> None:
        with self._lock:
            if id(partition) not in self._failing:
                return
            self._failing.discard(id(partition))
            if not self._failing:
                seconds = time.monotonic() - self._since
                log.warning("webhooks: destination '%s' taking deliveries again after %.1f s (%d failed attempts)",
                            self.name, seconds, self._failures)  # fmt: skip
                self._failures = 0


class _Lane:
    """One destination's sending side in a partition's loop: its queue, its slots, its timers (loop thread only)."""

    def __init__(self, destination: Destination, slots: int) -> None:
        self.destination = destination
        self.slot_count = slots
        self.waiting: deque[Delivery] = deque()  # what does not fit in the queue yet
        self.queue: asyncio.Queue[Delivery] | None = None
        self.slots: asyncio.Semaphore | None = None
        self.dispatcher: asyncio.Task[None] | None = None
        self.retries: dict[str, asyncio.TimerHandle] = {}


class WebhookPartition(StatefulSinkPartition[Output, WebhookSnapshot]):
    """One partition's deliveries and the loop thread that sends them."""

    def __init__(
        self,
        destinations: Sequence[Destination],
        dead_letters: DeadLetterWriter,
        *,
        snapshots: bool,
        share: int,
        deadline: CloseDeadline,
        health: dict[str, DestinationHealth],
        name: str,
        resume_state: WebhookSnapshot | None = None,
    ) -> None:
        if resume_state is not None:
            _check_format(resume_state)
        self._lanes = {d.name: _Lane(d, max(1, d.concurrency // share)) for d in destinations}
        self._health = health
        self._routes: dict[str, list[_Lane]] = {}
        for lane in self._lanes.values():
            for stream in sorted(lane.destination.streams):
                self._routes.setdefault(stream, []).append(lane)
        self._dead_letters = dead_letters
        self._snapshots = snapshots
        self._deadline = deadline
        self._deadline.opened()
        self._pending: dict[tuple[str, str], Delivery] = {}
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        if resume_state is not None:
            self._resume(resume_state)

    # --- the worker's side ------------------------------------------------------------------
    def write_batch(self, values: list[Output]) -> None:
        now = time.monotonic()
        added: list[tuple[_Lane, Delivery]] = []
        with self._lock:
            for output in values:
                lanes = self._routes.get(output.stream)
                if not lanes:
                    continue
                webhook_id = _event_id(output.body)
                for lane in lanes:
                    if (lane.destination.name, webhook_id) in self._pending:
                        continue  # re-emitted while still pending: one delivery is enough
                    name, stream = lane.destination.name, output.stream
                    delivery = Delivery(name, webhook_id, stream, output.key, output.time_ms, output.body, 0, now)
                    added.append((lane, self._hold(delivery)))
        if added:
            self._loop.call_soon_threadsafe(self._accept, added)

    def snapshot(self) -> WebhookSnapshot:
        with self._lock:
            held = tuple(delivery.held() for delivery in self._pending.values())
        self._dead_letters.flush()  # what left the pending set for the dead letters is stored
        return (SNAPSHOT_FORMAT, held)

    def close(self) -> None:
        self._idle.wait(max(0.0, self._deadline.closing() - time.monotonic()))
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
        self._deadline.closed()
        with self._lock:
            left = list(self._pending.values())
        if left and self._snapshots:
            for delivery in left:
                WEBHOOK_PENDING.labels(destination=delivery.destination).dec()  # this process holds them no more
            log.warning(
                "webhooks: %d deliveries not done when the engine stopped (%s); the recovery snapshot holds them"
                " and a resumed engine sends them",
                len(left),
                _by_destination(left),
            )
        elif left:
            log.error(
                "webhooks: %d deliveries not done when the engine stopped (%s) and no recovery store keeps them:"
                " sent to the dead letters",
                len(left),
                _by_destination(left),
            )
            for delivery in left:
                self._give_up(delivery, "not delivered before the engine stopped")
        self._dead_letters.flush()

    def _hold(self, delivery: Delivery) -> Delivery:
        """Count ``delivery`` as pending (under the lock)."""
        self._pending[(delivery.destination, delivery.id)] = delivery
        self._idle.clear()
        WEBHOOK_PENDING.labels(destination=delivery.destination).inc()
        return delivery

    def _release(self, delivery: Delivery) -> None:
        with self._lock:
            if self._pending.pop((delivery.destination, delivery.id), None) is not None:
                WEBHOOK_PENDING.labels(destination=delivery.destination).dec()
            if not self._pending:
                self._idle.set()

    def _resume(self, state: WebhookSnapshot) -> None:
        now = time.monotonic()
        added: list[tuple[_Lane, Delivery]] = []
        gone: list[Delivery] = []
        with self._lock:
            for held in state[1]:
                delivery = Delivery(*held, since=now)
                lane = self._lanes.get(delivery.destination)
                if lane is None:
                    gone.append(delivery)
                elif (delivery.destination, delivery.id) not in self._pending:
                    added.append((lane, self._hold(delivery)))
        for delivery in gone:
            self._give_up(delivery, "no longer in the webhooks file")
        if added:
            log.info("webhooks: resuming %d deliveries from the recovery snapshot", len(added))
            self._loop.call_soon_threadsafe(self._accept, added)

    def _give_up(self, delivery: Delivery, why: str) -> bool:
        """Send ``delivery`` to the dead letters; it stays pending if they cannot be written (False)."""
        attempts = f"{delivery.attempts} attempt{'s' if delivery.attempts != 1 else ''}"
        record = dead_letter(
            processor=PROCESSOR,
            reason=UNDELIVERABLE,
            messages=[f"destination '{delivery.destination}': {why} ({attempts})"],
            position={"source": f"webhooks/{delivery.destination}", "stream": delivery.stream, "id": delivery.id},
            payload=delivery.body,
            failed_at_ms=delivery.time_ms,
        )
        try:
            self._dead_letters.write(delivery.customer, record)
        except Exception:
            log.exception("webhooks: a dead letter for destination '%s' could not be written", delivery.destination)
            return False
        WEBHOOK_DELIVERIES.labels(destination=delivery.destination, result="dead_lettered").inc()
        if delivery.destination in self._health:
            self._health[delivery.destination].dead_lettered(why)
        self._release(delivery)
        return True

    # --- the loop's side --------------------------------------------------------------------
    async def _start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0)  # each destination's slots bound its requests
        self._session = aiohttp.ClientSession(connector=connector, headers={"user-agent": "nudgeflow-webhooks"})
        for lane in self._lanes.values():
            lane.queue = asyncio.Queue(lane.destination.queue)
            lane.slots = asyncio.Semaphore(lane.slot_count)
            lane.dispatcher = asyncio.create_task(self._dispatch(lane))

    async def _stop(self) -> None:
        running: list[asyncio.Task[None]] = list(self._tasks)
        for lane in self._lanes.values():
            for handle in lane.retries.values():
                handle.cancel()
            if lane.dispatcher is not None:
                running.append(lane.dispatcher)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _accept(self, added: list[tuple[_Lane, Delivery]]) -> None:
        for lane, delivery in added:
            lane.waiting.append(delivery)
        for lane in {id(lane): lane for lane, _ in added}.values():
            self._feed(lane)

    def _feed(self, lane: _Lane) -> None:
        assert lane.queue is not None
        while lane.waiting and not lane.queue.full():
            lane.queue.put_nowait(lane.waiting.popleft())

    async def _dispatch(self, lane: _Lane) -> None:
        assert lane.queue is not None and lane.slots is not None
        while True:
            await lane.slots.acquire()
            delivery = await lane.queue.get()
            self._feed(lane)
            task = asyncio.create_task(self._send(lane, delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, lane: _Lane, delivery: Delivery) -> None:
        assert lane.slots is not None
        destination = lane.destination
        try:
            attempt = await self._attempt(destination, delivery)
        finally:
            lane.slots.release()
        delivery.attempts += 1
        WEBHOOK_ATTEMPTS.labels(destination=destination.name, outcome=attempt.outcome).inc()
        if attempt is OK:
            self._health[destination.name].delivered(self)
            WEBHOOK_LATENCY.labels(destination=destination.name).observe(time.monotonic() - delivery.since)
            WEBHOOK_DELIVERIES.labels(destination=destination.name, result="delivered").inc()
            self._release(delivery)
            return
        if attempt.retry:  # the destination may be down; a refusal concerns one decision
            self._health[destination.name].failed(self, attempt.message)
        if attempt.retry and delivery.attempts < destination.max_attempts:
            delay = attempt.wait
            if delay is None:
                delay = backoff_delay(delivery.attempts, destination.backoff_start, destination.backoff_cap)
            lane.retries[delivery.id] = asyncio.get_running_loop().call_later(delay, self._retry, lane, delivery)
        else:
            why = attempt.message if not attempt.retry else f"gave up after the last attempt: {attempt.message}"
            if not self._give_up(delivery, why):  # tried again later, then dead-lettered again if it fails
                loop = asyncio.get_running_loop()
                lane.retries[delivery.id] = loop.call_later(destination.backoff_cap, self._retry, lane, delivery)

    def _retry(self, lane: _Lane, delivery: Delivery) -> None:
        lane.retries.pop(delivery.id, None)
        lane.waiting.appendleft(delivery)
        self._feed(lane)

    async def _attempt(self, destination: Destination, delivery: Delivery) -> Attempt:
        assert self._session is not None
        timestamp = int(time.time())
        headers = {
            **dict(destination.headers),
            "content-type": CONTENT_TYPE,
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(destination.key, delivery.id, timestamp, delivery.body),
        }
        timeout = aiohttp.ClientTimeout(total=destination.timeout)
        try:
            async with self._session.post(
                destination.url, data=delivery.body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                await response.content.read(ANSWER_BYTES)
                status, retry_after = response.status, response.headers.get("Retry-After")
        except TimeoutError:
            return Attempt("timeout", True, f"no answer within {destination.timeout:g} s")
        except (aiohttp.ClientError, OSError) as err:
            return Attempt("connection", True, _network_error(err))
        except Exception as err:  # a bug must not leave the delivery stuck: it goes to the dead letters
            log.exception("webhooks: sending to destination '%s' failed", destination.name)
            return Attempt("error", False, f"could not be sent ({type(err).__name__})")
        if 200 <= status < 300:
            return OK
        if status == 429:
            return Attempt("http_429", True, "HTTP 429", retry_after_seconds(retry_after, time.time()))
        if status >= 500:
            return Attempt("http_5xx", True, f"HTTP {status}")
        return Attempt(f"http_{status // 100}xx", False, f"HTTP {status} (not retried)")


def _check_format(state: Any) -> None:
    if not (isinstance(state, tuple) and len(state) == 2 and state[0] == SNAPSHOT_FORMAT):
        raise RecoveryStoreError(
            f"the recovery store holds webhook deliveries of another format ({str(state)[:40]});"
            f" this engine reads format {SNAPSHOT_FORMAT}: start a new recovery store"
        )


def _event_id(body: bytes) -> str:
    """The CloudEvent id of a decision record (its ``webhook-id``)."""
    return str(orjson.loads(body)["id"])


def _network_error(err: BaseException) -> str:
    """A short description of a failed connection (no URL: it may hold a token)."""
    cause = getattr(err, "os_error", None) or err
    text = getattr(cause, "strerror", None) or type(cause).__name__
    return f"connection failed: {text}"


def _by_destination(deliveries: list[Delivery]) -> str:
    counts = Counter(delivery.destination for delivery in deliveries)
    return ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))


class WebhookSink(FixedPartitionedSink[Output, WebhookSnapshot]):
    """Deliver decisions to webhook destinations (see the module doc); items are ``(customer id, Output)``.

    ``snapshots``: the flow runs with a recovery store, whose snapshots hold what is not delivered
    yet (without one, what is left at close goes to the dead letters).
    """

    def __init__(
        self,
        destinations: Sequence[Destination],
        dead_letters: DeadLetterWriter,
        *,
        close_timeout: float = 10.0,
        snapshots: bool = False,
        partitions: int = PARTITIONS,
    ) -> None:
        self.destinations = tuple(destinations)
        self.dead_letters = dead_letters
        self.snapshots = snapshots
        self.partitions = partitions
        self._deadline = CloseDeadline(close_timeout)  # shared by this process's partitions
        self._health = {d.name: DestinationHealth(d.name) for d in self.destinations}

    def __repr__(self) -> str:
        return f"WebhookSink({[d.name for d in self.destinations]})"

    def list_parts(self) -> list[str]:
        return [f"webhooks-{n}" for n in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: WebhookSnapshot | None) -> WebhookPartition:
        return WebhookPartition(
            self.destinations,
            self.dead_letters,
            snapshots=self.snapshots,
            share=self.partitions,
            deadline=self._deadline,
            health=self._health,
            name=f"webhooks-{step_id}-{for_part}",
            resume_state=resume_state,
        )
