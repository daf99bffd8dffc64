"""The live store on a real 3-master Redis Cluster: the flow writes profiles, decision lists and
audience sets through the cluster (keys in many slots on every node), a cluster client reads them."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator

import orjson
import pytest
import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from conftest import added, call, order, source_records, track

from connectors.ad_audiences import Exported, export, export_format
from connectors.redis_reads import RedisReads
from connectors.redis_store import audience_key, changes_key, check_store, customer_keys
from flows.personalization import build_flow
from flows.settings import Settings


@pytest.fixture
def cluster(redis_cluster_url: str) -> Iterator[redis.RedisCluster]:
    client = redis.RedisCluster.from_url(redis_cluster_url, decode_responses=True)
    yield client
    client.close()


def test_the_flow_writes_the_store_through_a_redis_cluster(redis_cluster_url, cluster, tmp_path):
    prefix = f"c{uuid.uuid4().hex[:8]}"
    customers = [f"u{n}" for n in range(40)]
    events = []
    for n, customer in enumerate(customers):
        events += [
            call("identify", customer, n, traits={"city": "Berlin"}),
            added(customer, n + 1, product=f"p{n}", price=40.0),
            track("Product Viewed", customer, n + 2, props={"product_id": "p2", "category": "coffee"}),
        ]
        if n % 2 == 0:
            events.append(order(customer, 5000 + n, total=6000.0))
    settings = Settings(
        out=tmp_path / "unused", shards=4, redis_url=redis_cluster_url, redis_cluster=True, redis_prefix=prefix
    )
    captured: list = []
    run_main(build_flow(settings, source=TestingSource(source_records(events)), sink=TestingSink(captured)))

    nodes = {cluster.get_node_from_key(customer_keys(prefix, c).profile).name for c in customers}
    assert len(nodes) == 3, "the customers' keys are spread over every node"
    for n, customer in enumerate(customers):
        keys = customer_keys(prefix, customer)
        profile = cluster.hgetall(keys.profile)
        assert orjson.loads(profile["orders"]) == (1 if n % 2 == 0 else 0), customer
    sent = {(o.key, orjson.loads(o.body)["id"]) for s, o in captured if s.startswith("triggers.") and "shadow" not in s}
    stored = {
        (c, orjson.loads(d)["id"]) for c in customers for d in cluster.lrange(customer_keys(prefix, c).decisions, 0, -1)
    }
    assert sent and stored == sent
    entered = {(orjson.loads(o.body)["data"]["audience"], o.key) for s, o in captured if s == "audience_changes"}
    audiences = {audience for audience, _ in entered}
    assert len(audiences) >= 2 and len({cluster.keyslot(audience_key(prefix, a)) for a in audiences}) >= 2
    for audience in audiences:
        assert cluster.smembers(audience_key(prefix, audience)) == {c for a, c in entered if a == audience}
    for key in cluster.scan_iter(f"{prefix}:*", target_nodes=redis.RedisCluster.ALL_NODES):
        cluster.delete(key)


def test_a_cluster_that_refuses_the_client_stops_the_start(redis_cluster_url):
    host = redis_cluster_url.removeprefix("redis://").split("/")[0]
    with pytest.raises(ValueError, match=r"refused the connection"):
        check_store(f"redis://nobody:secret@{host}/0", cluster=True)


def test_an_audience_is_exported_from_a_redis_cluster(redis_cluster_url, cluster, tmp_path):
    """Match keys in profile hashes on every node, each audience's change log in its member set's slot."""
    prefix = f"c{uuid.uuid4().hex[:8]}"
    customers = [f"u{n}" for n in range(20)]
    events = [call("identify", c, n, traits={"email": f"{c}@Example.com"}) for n, c in enumerate(customers)]
    settings = Settings(
        out=tmp_path / "unused", shards=4, redis_url=redis_cluster_url, redis_cluster=True, redis_prefix=prefix
    )
    run_main(build_flow(settings, source=TestingSource(source_records(events)), sink=TestingSink([])))
    log, members = changes_key(prefix, "new_customers"), audience_key(prefix, "new_customers")
    assert cluster.keyslot(log) == cluster.keyslot(members)
    assert len(cluster.xrange(log)) == len(customers)
    nodes = {cluster.get_node_from_key(customer_keys(prefix, c).profile).name for c in customers}
    assert len(nodes) > 1, "the match keys are read from several nodes"

    async def exported() -> tuple[bytes, Exported]:
        source, out = RedisReads(redis_cluster_url, prefix, cluster=True), []
        try:
            done = await export(source, "new_customers", export_format("csv"), out.append)
            return b"".join(out), done
        finally:
            await source.close()

    body, done = asyncio.run(exported())
    rows = sorted(body.decode().splitlines()[1:])
    assert rows == sorted(f"{c},{hashlib.sha256(f'{c}@example.com'.encode()).hexdigest()}," for c in customers)
    assert (done.rows, done.without_keys) == (len(customers), 0)
