"""The flow keeps the live profile store in a real Redis: profiles, audience sets, last decisions."""

from __future__ import annotations

import orjson
import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from conftest import added, call, order, source_records, track

from connectors.redis_store import audience_key, customer_keys
from flows.personalization import build_flow
from flows.settings import Settings


def test_profiles_audiences_and_decisions_reach_redis_and_erasure_removes_them(services, tmp_path):
    prefix = f"t{tmp_path.name[-12:]}"
    events = [
        call("identify", "u1", 0, traits={"city": "Berlin", "age_band": "25-34", "urban": True, "gender": "f"}),
        added("u1", 1, product="p1", price=40.0),
        track("Product Viewed", "u1", 2, props={"product_id": "p2", "category": "coffee"}),
        order("u1", 5000, total=6000.0),
        call("identify", "u2", 3, traits={"city": "Paris"}),
        added("u2", 4),
        track("Erasure Requested", "u2", 6000, props={"request_id": "r-1"}),
    ]
    settings = Settings(
        out=tmp_path / "unused", shards=4, redis_url=services["REDIS_URL"], redis_prefix=prefix, redis_traits=["city"]
    )
    captured: list = []
    run_main(build_flow(settings, source=TestingSource(source_records(events)), sink=TestingSink(captured)))

    client = redis.Redis.from_url(services["REDIS_URL"])
    try:
        keys = customer_keys(prefix, "u1")
        profile = {k.decode(): v.decode() for k, v in client.hgetall(keys.profile).items()}
        assert orjson.loads(profile["orders"]) == 1 and orjson.loads(profile["lifetime_spend"]) == 6000.0
        assert "high_value" in orjson.loads(profile["audiences"])
        assert profile["trait.city"] == '"Berlin"' and not any(k.startswith("trait.age") for k in profile)
        decisions = [orjson.loads(d) for d in client.lrange(keys.decisions, 0, -1)]
        sent = {orjson.loads(o.body)["data"]["rule_id"] for s, o in captured if s.startswith("triggers.")}
        assert sent and {d["rule_id"] for d in decisions} <= sent
        assert client.sismember(audience_key(prefix, "high_value"), "u1")
        erased = customer_keys(prefix, "u2")
        assert not client.exists(erased.profile, erased.decisions), "an erased customer's profile is gone"
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
