"""An app instrumented with Segment's SDK, pointed at ``nudgeflow serve --kafka``: its events reach the
events topic, the engine decides on them, and the same front answers with the customer's profile, the
audience's members and its ad-platform export."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import aiohttp
import orjson
import redis
from segment.analytics import Client
from serve_process import front_env, keys_file, serving

from connectors.kafka import read_topic, readable
from flows.cli import execute
from flows.settings import Settings
from schemas.streams import AUDIENCE_CHANGES


def get(url: str, key: str, json: bool = True) -> tuple[int, Any]:
    async def send() -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=30)
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url, headers=headers) as response:
            return response.status, await (response.json() if json else response.text())

    return asyncio.run(send())


def test_segment_sdk_events_through_the_front_drive_the_engines_decisions(services, tmp_path):
    run = f"{os.getpid()}"
    topic, prefix, topics = f"e2e-events-{run}", f"e2e{run}", f"e2e{run}."
    keys, secrets = keys_file(tmp_path, app=["ingest"], crm=["read"])
    write_key, reader = secrets["app"], secrets["crm"]
    with serving(["--kafka", "--keys", str(keys)], front_env(services, topic, prefix)) as server:
        server.wait_for(r"serving the API on")
        errors: list = []
        app = Client(write_key, host=server.url, on_error=lambda err, _: errors.append(err), max_retries=1, timeout=5)
        app.identify("shopper-1", {"city": "Lyon", "email": "Shopper@Example.com"}, anonymous_id="anon-1")
        app.track("shopper-1", "Product Added", {"product_id": "p1", "price": 40.0, "category": "shoes"})
        app.track("shopper-1", "Order Completed", {"order_id": "o-1", "total": 6000.0})
        app.flush()
        app.shutdown()
        assert errors == []
        sent = {(m.key(), orjson.loads(m.value()).get("event", "identify")) for m in read_topic(
            services["KAFKA_BOOTSTRAP_SERVERS"], topic)}
        assert sent == {(b"anon-1", "identify"), (b"shopper-1", "Product Added"), (b"shopper-1", "Order Completed")}

        settings = Settings(
            source="kafka",
            kafka_bootstrap_servers=services["KAFKA_BOOTSTRAP_SERVERS"],
            events_topic=topic,
            until_end=True,
            topic_prefix=topics,
            topic_partitions=2,
            redis_url=services["REDIS_URL"],
            redis_prefix=prefix,
        )
        execute(settings, quiet=True)
        changes = [orjson.loads(readable(m)) for m in read_topic(services["KAFKA_BOOTSTRAP_SERVERS"],
                                                                 topics + AUDIENCE_CHANGES)]
        assert ("shopper-1", "high_value") in {(c["subject"], c["data"]["audience"]) for c in changes}

        status, profile = get(f"{server.url}/v1/customers/shopper-1", reader)
        assert status == 200 and profile["features"]["lifetime_spend"] == 6000.0
        assert "high_value" in profile["audiences"]
        status, page = get(f"{server.url}/v1/audiences/high_value/members?limit=10", reader)
        assert status == 200 and page["members"] == ["shopper-1"] and page["cursor"] is None
        status, text = get(f"{server.url}/v1/audiences/high_value/export?format=csv", reader, json=False)
        email = hashlib.sha256(b"shopper@example.com").hexdigest()
        assert status == 200 and text.splitlines()[1:] == [f"shopper-1,{email},"], text
        assert server.terminate() < 5

    client = redis.Redis.from_url(services["REDIS_URL"])
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()
