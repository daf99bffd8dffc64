"""The HTTP API's Kafka + Redis backend against a real broker and a real Redis, fed by the real engine."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from hashlib import sha256
from typing import Any, TypeVar

import orjson
import pytest
import redis
from api_client import api, bearer, run
from conftest import added, call, order, track

from connectors.http.backend import InvalidCursor
from connectors.http.kafka_redis import KafkaRedisBackend
from connectors.kafka import ensure_topics, read_topic
from connectors.local_services import free_port
from connectors.redis_reads import StoreUnavailable
from connectors.redis_store import audience_key, customer_keys
from flows.cli import execute
from flows.settings import Settings

CUSTOMERS = 25
BIG_SPENDERS = 12  # u0..u11 order for 6000: high_value
_runs = itertools.count()
T = TypeVar("T")


def run_with(services: dict[str, str], prefix: str, use: Callable[[KafkaRedisBackend], Awaitable[T]], **kw: Any) -> T:
    """``use(backend)`` on a fresh event loop, the backend closed afterwards."""

    async def main() -> T:
        backend = KafkaRedisBackend(
            services["KAFKA_BOOTSTRAP_SERVERS"],
            kw.pop("topic", "nudgeflow.events"),
            kw.pop("redis_url", services["REDIS_URL"]),
            prefix=prefix,
            **kw,
        )
        try:
            return await use(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


def shop_events() -> list[dict[str, Any]]:
    """25 customers who identify (with an email) and add to cart; 12 of them order for 6000; a late view moves
    the clock on."""
    events: list[dict[str, Any]] = []
    for n in range(CUSTOMERS):
        traits = {"city": f"city{n % 3}", "email": f" U{n}@Example.com"}
        events += [call("identify", f"u{n}", n, traits=traits), added(f"u{n}", n + 1)]
    events += [order(f"u{n}", 40 + n, total=6000.0) for n in range(BIG_SPENDERS)]
    events.append(track("Product Viewed", "u0", 600, props={"product_id": "p9", "category": "c1"}))
    return events


@pytest.fixture(scope="module")
def store(services) -> Iterator[dict[str, Any]]:
    """Events sent through the backend to a new topic, then the engine run over that topic into Redis."""
    run = f"{os.getpid()}-{next(_runs)}"
    topic, prefix = f"api-events-{run}", f"api{run}"
    ensure_topics(services["KAFKA_BOOTSTRAP_SERVERS"], [topic], 3)
    lines = [orjson.dumps(e) for e in shop_events()]
    keyed = [(e["userId"].encode(), line) for e, line in zip(shop_events(), lines, strict=True)]
    results = run_with(services, prefix, lambda b: b.send(keyed), topic=topic)
    settings = Settings(
        source="kafka",
        kafka_bootstrap_servers=services["KAFKA_BOOTSTRAP_SERVERS"],
        events_topic=topic,
        until_end=True,
        topic_prefix=f"api{run}.",
        topic_partitions=2,
        redis_url=services["REDIS_URL"],
        redis_prefix=prefix,
        redis_traits=["city"],
        shards=4,
    )
    execute(settings, quiet=True)
    client = redis.Redis.from_url(services["REDIS_URL"])
    yield {"topic": topic, "prefix": prefix, "keyed": keyed, "results": results, "redis": client}
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def test_send_confirms_each_event_and_puts_it_on_the_topic_keyed_and_in_order(services, store):
    assert store["results"] == [None] * len(store["keyed"])
    messages = list(read_topic(services["KAFKA_BOOTSTRAP_SERVERS"], store["topic"]))
    by_key: dict[bytes, list[bytes]] = {}
    for message in messages:
        by_key.setdefault(message.key(), []).append(message.value())
    expected: dict[bytes, list[bytes]] = {}
    for key, line in store["keyed"]:
        expected.setdefault(key, []).append(line)
    assert by_key == expected, "every event once, keyed by customer, each customer's in the order sent"


def test_the_profile_is_the_engines_with_decisions_newest_first(services, store):
    profile, unknown = run_with(
        services, store["prefix"], lambda b: asyncio.gather(b.profile("u1"), b.profile("nobody"))
    )
    assert unknown is None
    assert profile["customer_id"] == "u1"
    assert profile["features"]["orders"] == 1 and profile["features"]["lifetime_spend"] == 6000.0
    assert "high_value" in profile["audiences"] and "new_customers" in profile["audiences"]
    assert profile["traits"] == {"city": "city1"}
    assert profile["updated_at"].startswith("2026-01-05T")
    assert profile["match_keys"] == {"email_sha256": sha256(b"u1@example.com").hexdigest()}
    stored = store["redis"].lrange(customer_keys(store["prefix"], "u1").decisions, 0, -1)
    assert profile["decisions"] == [orjson.loads(entry) for entry in stored]
    laggard = run_with(services, store["prefix"], lambda b: b.profile(f"u{CUSTOMERS - 1}"))
    assert [d["rule_id"] for d in laggard["decisions"]] and "high_value" not in laggard["audiences"]
    assert set(laggard["decisions"][0]) == {"id", "rule_id", "channel", "offer_id", "time"}


def test_audiences_are_listed_with_their_sizes_sorted_by_id(services, store):
    audiences = run_with(services, store["prefix"], lambda b: b.audiences())
    sizes = {a["id"]: a["size"] for a in audiences}
    assert sizes["high_value"] == BIG_SPENDERS and sizes["new_customers"] == CUSTOMERS
    assert [a["id"] for a in audiences] == sorted(sizes) and all(a["size"] > 0 for a in audiences)
    client = store["redis"]
    ghost = f"{audience_key(store['prefix'], 'ghost')}:changes"  # a change log whose audience has no members now
    client.xadd(ghost, {"customer": "u1", "change": "exited", "time_ms": "1"})
    assert run_with(services, store["prefix"], lambda b: b.audiences()) == audiences, "a change log is no audience"


async def all_pages(backend: KafkaRedisBackend, audience: str, limit: int) -> list[list[str]]:
    pages, cursor = [], None
    for _ in range(10_000):
        page = await backend.members(audience, cursor, limit)
        pages.append(page.members)
        cursor = page.cursor
        if cursor is None:
            return pages
    raise AssertionError("paging does not end")


def test_members_come_in_pages_of_at_most_the_limit_each_member_exactly_once(services, store):
    pages = run_with(services, store["prefix"], lambda b: all_pages(b, "new_customers", 10))
    assert [len(p) for p in pages] == [10, 10, 5]
    assert sorted(m for p in pages for m in p) == sorted(f"u{n}" for n in range(CUSTOMERS))

    client, prefix = store["redis"], store["prefix"]
    big = {f"c{n}" for n in range(1500)}  # a hash-table set (SSCAN's batches vary in size)
    numbers = {str(n) for n in range(300)}  # an integer set
    client.sadd(audience_key(prefix, "big"), *big)
    client.sadd(audience_key(prefix, "numbers"), *numbers)
    for audience, members, limit in (("big", big, 97), ("numbers", numbers, 64), ("big", big, 1000)):
        pages = run_with(services, prefix, lambda b, a=audience, n=limit: all_pages(b, a, n))
        assert all(0 < len(p) <= limit for p in pages) and len(pages[0]) == limit
        flat = [m for p in pages for m in p]
        assert len(flat) == len(members) and set(flat) == members, (audience, limit)
    assert run_with(services, prefix, lambda b: b.members("nobody", None, 10)).members == []


def test_a_cursor_that_was_not_handed_out_is_refused(services, store):
    for cursor in ("not-a-cursor", "WzEsMl0", "bnVsbA"):
        with pytest.raises(InvalidCursor):
            run_with(services, store["prefix"], lambda b, c=cursor: b.members("new_customers", c, 10))


def test_the_engines_match_keys_and_audience_changes_are_read_back(services, store):
    async def read(backend: KafkaRedisBackend) -> tuple[Any, ...]:
        customers = [f"u{n}" for n in range(CUSTOMERS)]
        return await backend.match_keys(customers), await backend.changes("high_value", 0)

    keys, changes = run_with(services, store["prefix"], read)
    hashed = {f"u{n}": sha256(f"u{n}@example.com".encode()).hexdigest() for n in range(CUSTOMERS)}
    assert keys == {customer: {"email_sha256": digest} for customer, digest in hashed.items()}
    assert sorted(c.customer_id for c in changes) == sorted(f"u{n}" for n in range(BIG_SPENDERS))
    times = [c.time_ms for c in changes]
    assert {c.change for c in changes} == {"entered"} and times == sorted(times)
    later = run_with(services, store["prefix"], lambda b: b.changes("high_value", changes[-1].time_ms))
    assert later and all(c.time_ms == changes[-1].time_ms for c in later)
    stream = f"{audience_key(store['prefix'], 'high_value')}:changes"
    length = store["redis"].xlen(stream)
    for entry in store["redis"].xrange(stream, count=3):  # written again, as a retried write of the store does
        store["redis"].xadd(stream, entry[1])
    assert run_with(services, store["prefix"], lambda b: b.changes("high_value", 0)) == changes
    assert store["redis"].xlen(stream) == length + 3


def test_match_keys_and_changes_are_read_from_the_store_layout(services, store):
    client, prefix = store["redis"], store["prefix"]
    client.hset(customer_keys(prefix, "x2").profile, mapping={"match.email_sha256": "ab" * 32})
    phone = {"match.phone_sha256": '"' + "cd" * 32 + '"', "match.phone_digits_sha256": "ef" * 32}
    client.hset(customer_keys(prefix, "x3").profile, mapping=phone)
    keys = run_with(services, prefix, lambda b: b.match_keys(["x2", "x3", "x4", "nobody"]))
    assert keys == {
        "x2": {"email_sha256": "ab" * 32},
        "x3": {"phone_sha256": "cd" * 32, "phone_digits_sha256": "ef" * 32},
    }
    profile = run_with(services, prefix, lambda b: b.profile("x2"))
    assert profile["match_keys"] == {"email_sha256": "ab" * 32} and "match.email_sha256" not in profile["features"]

    stream = f"{audience_key(prefix, 'vip')}:changes"
    for customer, change, time_ms in [("a", "entered", 100), ("b", "entered", 300), ("a", "exited", 200)]:
        client.xadd(stream, {"customer": customer, "change": change, "time_ms": str(time_ms)})
    changes = run_with(services, prefix, lambda b: b.changes("vip", 150))
    assert [(c.customer_id, c.change, c.time_ms) for c in changes] == [("a", "exited", 200), ("b", "entered", 300)]
    assert run_with(services, prefix, lambda b: b.changes("nobody", 0)) == []


def test_checks_say_ok_and_name_a_redis_that_does_not_answer(services, store):
    assert run_with(services, store["prefix"], lambda b: b.checks(), topic=store["topic"]) == {
        "kafka": "ok",
        "redis": "ok",
    }
    closed = f"redis://127.0.0.1:{free_port()}/0"
    states = run_with(services, store["prefix"], lambda b: b.checks(), topic=store["topic"], redis_url=closed)
    assert states["kafka"] == "ok" and "refused" in states["redis"].lower()
    for read in (lambda b: b.profile("u1"), lambda b: b.audiences(), lambda b: b.members("high_value", None, 5)):
        with pytest.raises(StoreUnavailable, match=r"^redis: connection refused$"):
            run_with(services, store["prefix"], read, redis_url=closed)
    missing = run_with(services, store["prefix"], lambda b: b.checks(), topic=f"absent-{next(_runs)}")
    assert missing["kafka"].startswith("topic absent-")
    no_kafka = {**services, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    started = time.monotonic()
    states = run_with(no_kafka, store["prefix"], lambda b: b.checks())
    assert states["redis"] == "ok" and states["kafka"] != "ok" and time.monotonic() - started < 10, states


def test_the_api_answers_503_with_retry_after_while_redis_does_not_answer(services, store):
    closed = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario(client):
        answers = []
        for path in ("/v1/customers/u1", "/v1/audiences", "/v1/audiences/high_value/members"):
            response = await client.get(path, headers=bearer("read"))
            answers.append((response.status, response.headers.get("Retry-After"), await response.json()))
        return answers

    async def main():
        backend = KafkaRedisBackend(services["KAFKA_BOOTSTRAP_SERVERS"], store["topic"], closed, prefix=store["prefix"])
        try:
            return await asyncio.to_thread(run, api(backend), scenario)
        finally:
            await backend.close()

    for status, retry_after, body in asyncio.run(main()):
        assert (status, retry_after, body) == (503, "1", {"error": "unavailable"})


def test_each_event_gets_its_own_result_and_a_full_queue_waits(services, store):
    topic = f"api-sizes-{os.getpid()}-{next(_runs)}"
    ensure_topics(services["KAFKA_BOOTSTRAP_SERVERS"], [topic], 1)
    big = orjson.dumps({"type": "track", "userId": "u1", "pad": "x" * 2_000_000})
    events = [(b"u1", b'{"n":1}'), (b"u1", big), (b"u1", b'{"n":2}')]
    results = run_with(services, store["prefix"], lambda b: b.send(events), topic=topic)
    assert results[0] is None and results[2] is None
    assert results[1] and "too large" in results[1].lower()

    many = [(None, orjson.dumps({"userId": f"k{n % 5}", "n": n})) for n in range(300)]
    small_queue = {"queue.buffering.max.messages": 10}
    results = run_with(services, store["prefix"], lambda b: b.send(many), topic=topic, producer_config=small_queue)
    assert results == [None] * len(many)
    messages = list(read_topic(services["KAFKA_BOOTSTRAP_SERVERS"], topic))
    assert [m.value() for m in messages] == [b'{"n":1}', b'{"n":2}', *(line for _, line in many)]
    assert {m.key() for m in messages[2:]} == {f"k{n}".encode() for n in range(5)}, "keyed like produce"


def test_a_redis_cluster_is_read_through_every_node(services, redis_cluster_url):
    prefix = f"cl{os.getpid()}-{next(_runs)}"
    cluster = redis.RedisCluster.from_url(redis_cluster_url)
    audiences = {f"a{n}": {f"m{n}-{i}" for i in range(n * 40 + 1)} for n in range(6)}
    try:
        for audience, members in audiences.items():
            cluster.sadd(audience_key(prefix, audience), *members)
        for n in range(30):
            cluster.hset(customer_keys(prefix, f"c{n}").profile, mapping={"orders": str(n), "match.email_sha256": "e"})
        slots = {cluster.keyslot(audience_key(prefix, a)) for a in audiences}
        assert len({cluster.get_node_from_key(audience_key(prefix, a)).name for a in audiences}) > 1, slots

        async def read(backend: KafkaRedisBackend) -> tuple[Any, ...]:
            pages = {a: await all_pages(backend, a, 50) for a in audiences}
            customers = [f"c{n}" for n in range(30)]
            return await backend.audiences(), pages, await backend.match_keys(customers), await backend.checks()

        listed, pages, keys, states = run_with(services, prefix, read, redis_url=redis_cluster_url, cluster=True)
        assert listed == [{"id": a, "size": len(m)} for a, m in sorted(audiences.items())]
        for audience, members in audiences.items():
            flat = [m for page in pages[audience] for m in page]
            assert len(flat) == len(members) and set(flat) == members
        assert keys == {f"c{n}": {"email_sha256": "e"} for n in range(30)}
        assert states["redis"] == "ok"
    finally:
        for node in cluster.get_primaries():
            for key in cluster.scan_iter(f"{prefix}:*", target_nodes=node):
                cluster.delete(key)
        cluster.close()
