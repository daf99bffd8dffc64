"""The Redis store sink, against a real redis-server (``REDIS_URL``, else one started per module)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import bytewax.operators as op
import orjson
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from connectors.local_services import free_port, start_redis
from connectors.redis_store import (
    RedisStorePartition,
    RedisStoreSink,
    RedisStoreWriter,
    StoreConfig,
    audience_key,
    changes_key,
    check_store,
    connect,
    customer_keys,
    mask_url,
    take_unwritten,
)
from schemas.items import Output
from schemas.records import AUDIENCE_TYPE, TRIGGER_TYPE, cloud_event, iso_ms

T0_MS = 1_767_607_200_000  # 2026-01-05T10:00:00Z


@pytest.fixture(scope="module")
def redis_url(redis_service: dict[str, str]) -> str:
    return redis_service["REDIS_URL"]


@pytest.fixture
def db(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def prefix(db: redis.Redis) -> Iterator[str]:
    """A unique key prefix; its keys (only) are deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    keys = list(db.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        db.delete(*keys)


def profile(customer: str, version: int, features: int = 3, **traits: Any) -> tuple[str, Output]:
    body = {
        "customer_id": customer,
        "updated_ms": T0_MS + version,
        "updated_at": iso_ms(T0_MS + version),
        "features": {f"f{i}": version * 10 + i for i in range(features)}
        | {"cart": {"value": version + 0.1 + 0.2, "items": []}, "city": 'Zürich "Altstadt"\n\u2028'},
        "audiences": [f"a{version % 3}"],
        "traits": traits,
    }
    return "profiles", Output("profiles", customer, T0_MS + version, version, orjson.dumps(body))


def audience_change(customer: str, audience: str, change: str, stream: str = "audience_changes") -> tuple[str, Output]:
    data = {"audience": audience, "change": change, "reason": "test", "rule_id": audience, "caused_by": []}
    body = cloud_event(type_=AUDIENCE_TYPE, event_id=uuid.uuid4().hex, time_ms=T0_MS, subject=customer, data=data)
    return stream, Output(stream, customer, T0_MS, 0, body)


def trigger(customer: str, n: int, channel: str = "push", stream: str | None = None) -> tuple[str, Output]:
    stream = stream or f"triggers.{channel}"
    data = {"channel": channel, "rule_id": f"r{n}", "offer_id": f"o{n}", "content": {"title": "hi"}, "reason": "t"}
    body = cloud_event(type_=TRIGGER_TYPE, event_id=f"d{n}", time_ms=T0_MS + n, subject=customer, data=data)
    return stream, Output(stream, customer, T0_MS + n, n, body)


def deletion(customer: str) -> tuple[str, Output]:
    """The profile the engine sends for an erased or expired customer."""
    body = orjson.dumps({"customer_id": customer, "deleted": True})
    return "profiles", Output("profiles", customer, 0, 0, body)


def decision(n: int, channel: str = "push") -> dict[str, Any]:
    return {"id": f"d{n}", "rule_id": f"r{n}", "channel": channel, "offer_id": f"o{n}", "time": iso_ms(T0_MS + n)}


def expected_profile(customer: str, version: int, features: int = 3, **traits: Any) -> dict[str, str]:
    body = orjson.loads(profile(customer, version, features)[1].body)
    fields = {name: orjson.dumps(value).decode() for name, value in body["features"].items()}
    fields |= {f"trait.{name}": orjson.dumps(value).decode() for name, value in traits.items()}
    fields |= {"audiences": orjson.dumps(body["audiences"]).decode()}
    return fields | {"updated_at": body["updated_at"], "updated_ms": str(body["updated_ms"])}


def writer(url: str, prefix: str, **options: Any) -> RedisStoreWriter:
    options.setdefault("flush_interval_seconds", 3600)
    return RedisStoreWriter(partial(connect, url), StoreConfig(prefix=prefix, **options), mask_url(url))


def partition(url: str, prefix: str, resume: Any = None, **options: Any) -> RedisStorePartition:
    """A store partition as the flow builds it (with its flusher thread)."""
    return RedisStoreSink(url, prefix=prefix, **options).build_part("redis", "store-0", resume)


def eventually(condition: Callable[[], bool], timeout: float = 15) -> bool:
    """Whether ``condition`` holds within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def outputs(items: list[tuple[str, Output]]) -> list[Output]:
    """What the flow sends a store partition: the outputs (each names its stream)."""
    return [output for _, output in items]


def stored_profile(db: redis.Redis, prefix: str, customer: str) -> dict[str, str]:
    return db.hgetall(customer_keys(prefix, customer).profile)


def stored_decisions(db: redis.Redis, prefix: str, customer: str) -> list[dict[str, Any]]:
    return [orjson.loads(entry) for entry in db.lrange(customer_keys(prefix, customer).decisions, 0, -1)]


def test_keys_share_one_hash_tag_per_customer():
    keys = customer_keys("nf", "u-1")
    assert (keys.profile, keys.decisions) == ("nf:{u-1}:profile", "nf:{u-1}:decisions")
    assert audience_key("nf", "vip") == "nf:audience:{vip}"
    with pytest.raises(ValueError, match="braces"):
        StoreConfig(prefix="n{f}")


def test_password_is_masked():
    assert mask_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("rediss://app:s3cret@h/1?password=s3cret&ssl_cert_reqs=none").count("s3cret") == 0
    assert mask_url("redis://h:6379") == "redis://h:6379"


def test_records_land_at_the_documented_keys(db, redis_url, prefix):
    store = writer(redis_url, prefix, traits=["plan"])
    store.write(
        [
            profile("u1", 1, plan="gold", email="a@example.com"),
            audience_change("u1", "vip", "entered"),
            audience_change("u2", "vip", "entered"),
            audience_change("u2", "vip", "exited"),
            audience_change("u3", "lapsed", "entered"),
            trigger("u1", 1, "push"),
            trigger("u1", 2, "email"),
            trigger("u1", 3, "sms", stream="triggers.shadow"),
            audience_change("u4", "shadowy", "entered", stream="audience_changes.shadow"),
            ("dead_letters", Output("dead_letters", "u5", T0_MS, 0, b'{"reason": "bad"}')),
            ("stats", Output("stats", "", T0_MS, 0, b'{"events": {}}')),
        ]
    )
    store.close()
    assert stored_profile(db, prefix, "u1") == expected_profile("u1", 1, plan="gold")
    assert db.smembers(audience_key(prefix, "vip")) == {"u1"}
    assert db.smembers(audience_key(prefix, "lapsed")) == {"u3"}
    assert stored_decisions(db, prefix, "u1") == [decision(2, "email"), decision(1, "push")]
    assert sorted(db.scan_iter(match=f"{prefix}:*")) == sorted(
        [
            customer_keys(prefix, "u1").profile,
            customer_keys(prefix, "u1").decisions,
            audience_key(prefix, "vip"),
            audience_key(prefix, "lapsed"),
            changes_key(prefix, "vip"),
            changes_key(prefix, "lapsed"),
        ]
    )
    assert db.ttl(customer_keys(prefix, "u1").profile) == -1


def test_every_change_lands_in_its_audience_change_log_in_order_and_match_keys_in_the_profile(db, redis_url, prefix):
    store = writer(redis_url, prefix)
    body = orjson.loads(profile("u1", 1)[1].body) | {"match_keys": {"email_sha256": "ab" * 32}}
    store.write([
        ("profiles", Output("profiles", "u1", T0_MS, 1, orjson.dumps(body))),
        audience_change("u1", "vip", "entered"), audience_change("u2", "vip", "entered"),
        audience_change("u1", "vip", "exited"), audience_change("u1", "vip", "entered"),
    ])  # fmt: skip
    assert store.snapshot()[4] == (
        ("vip", "u1", "entered", T0_MS, "test"), ("vip", "u2", "entered", T0_MS, "test"),
        ("vip", "u1", "exited", T0_MS, "test"), ("vip", "u1", "entered", T0_MS, "test"),
    ), "a snapshot holds the change log entries not written"  # fmt: skip
    store.close()
    assert stored_profile(db, prefix, "u1")["match.email_sha256"] == "ab" * 32
    assert db.smembers(audience_key(prefix, "vip")) == {"u1", "u2"}, "memberships are coalesced"
    log = [(entry["customer"], entry["change"]) for _, entry in db.xrange(changes_key(prefix, "vip"))]
    assert log == [("u1", "entered"), ("u2", "entered"), ("u1", "exited"), ("u1", "entered")], "every change, in order"
    assert {entry["time_ms"] for _, entry in db.xrange(changes_key(prefix, "vip"))} == {str(T0_MS)}
    assert {entry["reason"] for _, entry in db.xrange(changes_key(prefix, "vip"))} == {"test"}, "why, as the record"
    assert changes_key(prefix, "vip") == f"{prefix}:audience:{{vip}}:changes", "in the slot of the member set"


def test_traits_stay_out_unless_allowlisted(db, redis_url, prefix):
    store = writer(redis_url, prefix)
    store.write([profile("u1", 1, email="a@example.com", plan="gold")])
    store.close()
    fields = stored_profile(db, prefix, "u1")
    assert fields and not [name for name in fields if name.startswith("trait.")]
    assert not any("a@example.com" in value for value in fields.values())


def test_updates_are_coalesced_to_the_latest(db, redis_url, prefix):
    store = writer(redis_url, prefix, decisions_kept=5)
    customers = [f"c{i}" for i in range(10)]
    updates = [profile(customers[n % 10], n) for n in range(1000)]
    for start in range(0, 1000, 170):
        store.write(updates[start : start + 170])
        assert store.pending <= 10
    store.write([trigger("c0", n) for n in range(12)])
    store.write([trigger("c0", n) for n in range(12, 14)])
    assert store.pending == 11
    assert store.flush()
    store.close()
    for i, customer in enumerate(customers):
        assert stored_profile(db, prefix, customer) == expected_profile(customer, 990 + i)
    assert stored_decisions(db, prefix, "c0") == [decision(n) for n in range(13, 8, -1)]


def test_a_newer_profile_replaces_the_whole_hash(db, redis_url, prefix):
    store = writer(redis_url, prefix)
    store.write([profile("u1", 1, features=6)])
    store.flush()
    store.write([profile("u1", 2, features=2)])
    store.close()
    assert stored_profile(db, prefix, "u1") == expected_profile("u1", 2, features=2)


def test_decisions_written_again_are_not_duplicated(db, redis_url, prefix):
    store = writer(redis_url, prefix)
    store.write([trigger("u1", 1), trigger("u1", 2)])
    store.flush()
    store.write([trigger("u1", 2), trigger("u1", 3)])
    store.close()
    assert stored_decisions(db, prefix, "u1") == [decision(3), decision(2), decision(1)]


def customer_state(db: redis.Redis, prefix: str, customer: str, audiences: list[str]) -> dict[str, Any]:
    """What the store holds of ``customer``: profile, decisions and the audiences (of ``audiences``) they are in."""
    return {
        "profile": stored_profile(db, prefix, customer),
        "decisions": stored_decisions(db, prefix, customer),
        "audiences": [a for a in audiences if db.sismember(audience_key(prefix, a), customer)],
    }


def test_an_erasure_leaves_nothing_of_what_was_buffered_before_it(db, redis_url, prefix):
    store = writer(redis_url, prefix)
    store.write([profile("c1", 1), trigger("c1", 1), audience_change("c1", "a", "entered"), profile("c2", 1)])
    assert store.flush()
    store.write([trigger("c1", 2), profile("c1", 2), audience_change("c1", "b", "entered"), trigger("c1", 3)])
    store.write([audience_change("c1", "a", "exited"), audience_change("c1", "b", "exited"), deletion("c1")])
    assert store.flush()
    store.close()
    assert customer_state(db, prefix, "c1", ["a", "b"]) == {"profile": {}, "decisions": [], "audiences": []}
    assert stored_profile(db, prefix, "c2") == expected_profile("c2", 1)


@pytest.mark.parametrize("via_snapshot", [False, True], ids=["buffered", "restored from a snapshot"])
def test_a_customer_who_comes_back_after_an_erasure_has_only_what_followed_it(db, redis_url, prefix, via_snapshot):
    before = writer(redis_url, prefix)
    before.write([profile("c1", 1), trigger("c1", 1), audience_change("c1", "a", "entered")])
    assert before.close() is None
    store = writer(redis_url, prefix)
    store.write([trigger("c1", 2), audience_change("c1", "a", "exited"), deletion("c1"), trigger("c1", 3)])
    store.write([profile("c1", 5), audience_change("c1", "b", "entered"), trigger("c1", 4)])
    if via_snapshot:  # held through a restart
        snapshot = store.snapshot()
        store = writer(redis_url, prefix)
        store.restore(snapshot)
    assert store.flush()
    store.close()
    assert customer_state(db, prefix, "c1", ["a", "b"]) == {
        "profile": expected_profile("c1", 5),
        "decisions": [decision(4), decision(3)],
        "audiences": ["b"],
    }


class ArrivingDuringWrite:
    """A Redis client that lets ``arrive`` run once, while its first pipeline is being written."""

    def __init__(self, client: redis.Redis, arrive: Callable[[], None]) -> None:
        self._client = client
        self._arrive: Callable[[], None] | None = arrive

    def pipeline(self, **options: Any) -> Any:
        pipe = self._client.pipeline(**options)
        if self._arrive is not None:
            arrive, self._arrive, execute = self._arrive, None, pipe.execute

            def arrive_then_execute(**kwargs: Any) -> Any:
                arrive()
                return execute(**kwargs)

            pipe.execute = arrive_then_execute
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.mark.parametrize(
    ("buffered", "arriving", "expected"),
    [
        ([deletion("c1"), trigger("c1", 2)], [profile("c1", 3)], {"profile": 3, "decisions": [2]}),
        ([deletion("c1"), profile("c1", 2), trigger("c1", 2)], [profile("c1", 3)], {"profile": 3, "decisions": [2]}),
        ([trigger("c1", 2)], [deletion("c1")], {"profile": None, "decisions": []}),
    ],
    ids=["back while the deletion is written", "updated while the comeback is written", "erased while written"],
)
def test_updates_arriving_while_a_flush_writes_keep_their_order(db, redis_url, prefix, buffered, arriving, expected):
    before = writer(redis_url, prefix)
    before.write([profile("c1", 1), trigger("c1", 1)])
    assert before.close() is None
    client = ArrivingDuringWrite(connect(redis_url), lambda: store.write(arriving))
    store = RedisStoreWriter(lambda: client, StoreConfig(prefix=prefix, flush_interval_seconds=3600))
    store.write(buffered)
    assert store.flush()
    assert store.pending == 1, "what arrived during the write is still buffered"
    assert store.flush()
    store.close()
    version = expected["profile"]
    assert customer_state(db, prefix, "c1", []) == {
        "profile": expected_profile("c1", version) if version else {},
        "decisions": [decision(n) for n in expected["decisions"]],
        "audiences": [],
    }


def test_customer_keys_carry_the_ttl(db, redis_url, prefix):
    store = writer(redis_url, prefix, ttl_seconds=600)
    store.write([profile("u1", 1), trigger("u1", 1), trigger("u2", 2)])
    store.close()
    keys = [customer_keys(prefix, "u1").profile, customer_keys(prefix, "u1").decisions]
    keys.append(customer_keys(prefix, "u2").decisions)
    for key in keys:
        assert 0 < db.ttl(key) <= 600, key


def test_a_partition_writes_by_size_and_by_time_without_further_output(db, redis_url, prefix):
    by_size = partition(redis_url, prefix, max_buffered=3, flush_interval_seconds=3600)
    by_size.write_batch(outputs([profile("u1", 1), profile("u2", 1)]))
    assert not eventually(lambda: db.exists(customer_keys(prefix, "u1").profile), timeout=0.3)
    by_size.write_batch(outputs([profile("u3", 1)]))
    assert eventually(lambda: db.exists(*(customer_keys(prefix, c).profile for c in ("u1", "u2", "u3"))) == 3)
    by_size.close()
    by_time = partition(redis_url, prefix, flush_interval_seconds=0.05)
    by_time.write_batch(outputs([profile("u4", 1)]))
    assert eventually(lambda: db.exists(customer_keys(prefix, "u4").profile) == 1), "a quiet flow's last update"
    by_time.close()


def test_nothing_is_lost_while_redis_is_down(caplog, tmp_path):
    server = start_redis(tmp_path / "redis", log=lambda _: None)  # its own server: it is stopped here
    prefix = "outage"
    customers = [f"c{i}" for i in range(10)]
    store = writer(server.address, prefix, flush_interval_seconds=0.3)
    try:
        store.write([profile(c, 0) for c in customers])
        assert store.flush()
        store.write([profile(c, 1) for c in customers] + [audience_change("c1", "vip", "entered"), trigger("c1", 1)])
        server.stop()
        with caplog.at_level(logging.WARNING, logger="connectors.redis_store"):
            for version in range(2, 30):
                store.write([profile(c, version) for c in customers[:5]] + [trigger("c1", version)])
                store.flush()
                time.sleep(0.02)
        assert store.pending == 5 + 5 + 1 + 1 + 1, "profiles, the membership, decisions, the change log entry"
        assert store.outages == 1
        assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
        port = urlsplit(server.address).port
        server = start_redis(tmp_path / "redis", port=port, log=lambda _: None)  # back on the same port
        with caplog.at_level(logging.WARNING, logger="connectors.redis_store"):
            assert eventually(store.flush)
        assert len([r for r in caplog.records if "available again" in r.getMessage()]) == 1
        assert store.close() is None
        db = redis.Redis.from_url(server.address, decode_responses=True)
        for customer in customers:
            assert stored_profile(db, prefix, customer) == expected_profile(customer, 29 if customer < "c5" else 1)
        assert db.smembers(audience_key(prefix, "vip")) == {"c1"}
        assert stored_decisions(db, prefix, "c1") == [decision(n) for n in range(29, 9, -1)]
        db.close()
    finally:
        server.stop()


def test_held_updates_are_written_when_redis_returns_with_no_new_output(tmp_path):
    server = start_redis(tmp_path / "redis", log=lambda _: None)
    port = urlsplit(server.address).port
    store = partition(server.address, "quiet", flush_interval_seconds=0.05)
    try:
        store.write_batch(outputs([profile("c1", 1)]))
        server.stop()
        store.write_batch(outputs([profile("c1", 2), audience_change("c1", "vip", "entered"), trigger("c1", 1)]))
        time.sleep(0.3)  # a few failed attempts
        server = start_redis(tmp_path / "redis", port=port, log=lambda _: None)
        db = redis.Redis.from_url(server.address, decode_responses=True)
        assert eventually(lambda: db.sismember(audience_key("quiet", "vip"), "c1")), "written without new output"
        assert eventually(lambda: stored_profile(db, "quiet", "c1") == expected_profile("c1", 2))
        assert stored_decisions(db, "quiet", "c1") == [decision(1)]
        db.close()
    finally:
        store.close()
        server.stop()


def test_a_snapshot_holds_what_is_not_written_and_a_restart_writes_it(tmp_path):
    server = start_redis(tmp_path / "redis", log=lambda _: None)
    port = urlsplit(server.address).port
    server.stop()
    store = partition(server.address, "resumed", flush_interval_seconds=0.05, close_timeout_seconds=0)
    store.write_batch(outputs([profile("c1", 1), audience_change("c1", "vip", "entered"), trigger("c1", 1)]))
    store.write_batch(outputs([profile("c1", 2), audience_change("c2", "vip", "entered"), trigger("c1", 2)]))
    snapshot = store.snapshot()
    store.close()  # the engine is gone (a crash would not even close it)
    assert take_unwritten()
    server = start_redis(tmp_path / "redis", port=port, log=lambda _: None)
    restarted = partition(server.address, "resumed", resume=snapshot, flush_interval_seconds=0.05)
    try:
        db = redis.Redis.from_url(server.address, decode_responses=True)
        assert eventually(lambda: stored_profile(db, "resumed", "c1") == expected_profile("c1", 2))
        assert db.smembers(audience_key("resumed", "vip")) == {"c1", "c2"}
        assert stored_decisions(db, "resumed", "c1") == [decision(2), decision(1)]
        assert eventually(lambda: restarted.snapshot()[1:] == ((), (), (), ())), "written: the next snapshot is empty"
        db.close()
    finally:
        restarted.close()
        server.stop()


def test_a_snapshot_of_the_format_before_reasons_resumes_with_empty_reasons(db, redis_url, prefix):
    earlier = (2, (), (), ((("vip", "c1"), True),), (("vip", "c1", "entered", T0_MS),))
    restarted = partition(redis_url, prefix, resume=earlier, flush_interval_seconds=0.05)
    try:
        assert eventually(lambda: len(db.xrange(changes_key(prefix, "vip"))) == 1)
        [(_, entry)] = db.xrange(changes_key(prefix, "vip"))
        assert entry == {"customer": "c1", "change": "entered", "time_ms": str(T0_MS), "reason": ""}
    finally:
        restarted.close()


def test_a_store_that_refuses_this_client_stops_the_start(redis_url):
    parts = urlsplit(redis_url)
    with pytest.raises(ValueError, match=r"redis store redis://nobody:\*\*\*@.*refused the connection: .*invalid"):
        check_store(f"redis://nobody:hunter2@{parts.netloc}/0")
    with pytest.raises(ValueError, match=r"refused the connection: .*DB index is out of range"):
        check_store(f"redis://{parts.netloc}/999")
    check_store(f"redis://127.0.0.1:{free_port()}/0")  # not up yet: its updates are held, the run starts


def test_close_gives_up_after_its_timeout_and_says_what_was_lost(caplog):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    config = StoreConfig(prefix="gone", close_timeout_seconds=0.5)
    store = RedisStoreWriter(partial(connect, url), config, mask_url(url))
    store.write([profile("u1", 1), profile("u2", 1), trigger("u3", 1)])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="connectors.redis_store"):
        account = store.close()
    assert time.monotonic() - started < 3
    assert str(account) == (
        f"redis store redis://:***@127.0.0.1:{urlsplit(url).port}/0: 3 customers' updates (u1, u2, u3: "
        "2 profiles, 1 decision lists, 0 audience memberships) not written"
    )
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [str(account)]
    assert "hunter2" not in caplog.text


def test_through_a_bytewax_flow(db, redis_url, prefix):
    items = [profile(f"u{n % 4}", n) for n in range(40)]
    items += [audience_change("u1", "vip", "entered"), trigger("u2", 1), trigger("u2", 2, stream="triggers.shadow")]
    flow = Dataflow("redis_store_test")
    stream = op.input("in", flow, TestingSource([(output.key, output) for _, output in items], batch_size=7))
    op.output("redis", stream, RedisStoreSink(redis_url, prefix=prefix, traits=["plan"], flush_interval_seconds=0))
    run_main(flow)
    for n in range(4):
        assert stored_profile(db, prefix, f"u{n}") == expected_profile(f"u{n}", 36 + n)
    assert db.smembers(audience_key(prefix, "vip")) == {"u1"}
    assert stored_decisions(db, prefix, "u2") == [decision(1)]


def measure_throughput(url: str, updates: int = 100_000, customers: int = 20_000, features: int = 20) -> float:
    """Profiles per second through the writer (default settings), until all are written; not a test."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    items = [profile(f"c{n % customers}", n, features=features - 2) for n in range(updates)]
    store = RedisStoreWriter(partial(connect, url), StoreConfig(prefix=prefix), mask_url(url))
    started = time.perf_counter()
    for start in range(0, updates, 1000):
        store.write(items[start : start + 1000])
        store.flush()
    store.close()
    elapsed = time.perf_counter() - started
    db = redis.Redis.from_url(url)
    keys = list(db.scan_iter(match=f"{prefix}:*", count=5000))
    assert len(keys) == customers
    db.delete(*keys)
    db.close()
    return updates / elapsed
