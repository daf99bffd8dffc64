"""The HTTP API's backend over Kafka and Redis: events to the events topic, state from the live store.

:class:`KafkaRedisBackend` is what ``nudgeflow serve --kafka`` hands the app: a stateless front, so
any number of copies can run beside the engine. Events go to the events topic through one
idempotent producer (``acks=all``) shared by every request; a thread serves its delivery reports
and resolves each event's future on the event loop, so a request is answered once Kafka has
confirmed (or refused) each of its events. Profiles, audiences, members, match keys and audience
changes are read from the Redis layout that :mod:`connectors.redis_store` writes, with
``redis.asyncio`` (a Redis Cluster too).
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from connectors.http.backend import Change, Page
from connectors.kafka import _DeliveryReports, event_key, kafka_config
from connectors.redis_reads import CHECK_TIMEOUT_SECONDS, RedisReads

PRODUCER_SETTINGS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 100_000,
    "queue.buffering.max.kbytes": 64 * 1024,
}
"""Idempotent, confirmed by every in-sync replica; a short linger batches concurrent requests."""
DELIVERY_TIMEOUT_SECONDS = 30.0
"""How long an event may wait for Kafka's confirmation before its request is told it failed."""
QUEUE_FULL_WAIT_SECONDS = 0.005


class KafkaRedisBackend:
    """Events to ``events_topic`` on ``bootstrap_servers``; state from the Redis store at ``redis_url``
    (keys under ``prefix``; ``cluster``: the URL names a node of a Redis Cluster). ``client_config``:
    librdkafka settings shared with the engine (security); ``producer_config``: producer settings over
    :data:`PRODUCER_SETTINGS`."""

    name = "kafka+redis"

    def __init__(
        self,
        bootstrap_servers: str,
        events_topic: str,
        redis_url: str,
        client_config: dict[str, Any] | None = None,
        cluster: bool = False,
        prefix: str = "nf",
        delivery_timeout: float = DELIVERY_TIMEOUT_SECONDS,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.events_topic = events_topic
        self.prefix = prefix
        self.delivery_timeout = delivery_timeout
        self._client_config = dict(client_config or {})
        timeout_ms = int(delivery_timeout * 1000)
        settings = {**PRODUCER_SETTINGS, "message.timeout.ms": timeout_ms, **(producer_config or {})}
        self._producer = Producer(kafka_config(bootstrap_servers, {**self._client_config, **settings}))
        self._reports = _DeliveryReports(self._producer)  # resolves each event's future as Kafka confirms it
        self._reports.use()
        self._reports.start()
        self._admin = AdminClient(kafka_config(bootstrap_servers, self._client_config))
        self.store = RedisReads(redis_url, prefix, cluster, client_name="nudgeflow-api")

    # --- events ------------------------------------------------------------------------------
    async def send(self, events: list[tuple[bytes | None, bytes]]) -> list[str | None]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[str | None]] = []
        for key, line in events:
            future: asyncio.Future[str | None] = loop.create_future()
            futures.append(future)
            await self._produce(loop, future, key if key is not None else event_key(line), line)
        done, pending = await asyncio.wait(futures, timeout=self.delivery_timeout + 5)
        for future in pending:
            future.cancel()
        return [f.result() if f in done else "delivery not confirmed in time" for f in futures]

    async def _produce(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[str | None], key: bytes | None, line: bytes
    ) -> None:
        """Produce one event, waiting (without blocking the loop) while the producer's queue is full."""
        deadline = loop.time() + self.delivery_timeout
        on_delivery = partial(_delivered, loop, future)
        while True:
            try:
                self._producer.produce(self.events_topic, line, key, on_delivery=on_delivery)
                return
            except BufferError:
                if loop.time() > deadline:
                    future.set_result("Kafka producer queue full")
                    return
                await asyncio.sleep(QUEUE_FULL_WAIT_SECONDS)
            except KafkaException as err:
                future.set_result(_kafka_text(err))
                return

    # --- state ---------------------------------------------------------------------------------
    async def profile(self, customer_id: str) -> dict[str, Any] | None:
        return await self.store.profile(customer_id)

    async def audiences(self) -> list[dict[str, Any]]:
        return await self.store.audiences()

    async def members(self, audience_id: str, cursor: str | None, limit: int) -> Page:
        return await self.store.members(audience_id, cursor, limit)

    async def match_keys(self, customer_ids: list[str]) -> dict[str, dict[str, str]]:
        return await self.store.match_keys(customer_ids)

    async def changes(self, audience_id: str, since_ms: int) -> list[Change]:
        return await self.store.changes(audience_id, since_ms)

    async def checks(self) -> dict[str, str]:
        kafka, redis_state = await asyncio.gather(asyncio.to_thread(self._check_kafka), self.store.check())
        return {"kafka": kafka, "redis": redis_state}

    def _check_kafka(self) -> str:
        """The events topic in the brokers' metadata (asked for all topics: a broker may create a topic
        that is asked for by name)."""
        try:
            metadata = self._admin.list_topics(timeout=CHECK_TIMEOUT_SECONDS)
        except KafkaException as err:
            return _kafka_text(err)
        topic = metadata.topics.get(self.events_topic)
        if topic is None or topic.error is not None:
            return f"topic {self.events_topic} not available"
        return "ok"

    async def close(self) -> None:
        """Wait for what is being delivered (at most the delivery timeout), then release the clients."""
        await asyncio.to_thread(self._producer.flush, self.delivery_timeout)
        self._reports.release()
        await asyncio.to_thread(self._reports.join, 5)
        await asyncio.to_thread(self._producer.close)
        await self.store.close()


def _delivered(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[str | None], err: KafkaError | None, _: Message
) -> None:
    """A delivery report (on the reports thread): resolve the event's future on its loop."""
    result = None if err is None else err.str()
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
        loop.call_soon_threadsafe(_resolve, future, result)


def _resolve(future: asyncio.Future[str | None], result: str | None) -> None:
    if not future.done():
        future.set_result(result)


def _kafka_text(err: KafkaException) -> str:
    first = err.args[0] if err.args else None
    return first.str() if isinstance(first, KafkaError) else str(err)
