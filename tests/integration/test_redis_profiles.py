"""The flow keeps the live profile store in a real Redis: profiles, audience sets, last decisions."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import redis
from bytewax.testing import TestingSink, TestingSource, run_main
from conftest import added, call, order, source_records, track

from connectors.local_services import free_port
from connectors.redis_store import audience_key, changes_key, customer_keys
from flows.cli import main
from flows.personalization import build_flow
from flows.settings import Settings

GOLDEN = Path(__file__).resolve().parents[1] / "flows" / "golden"


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_profiles_audiences_and_decisions_reach_redis_and_erasure_removes_them(services, tmp_path):
    prefix = f"t{tmp_path.name[-12:]}"
    events = [
        call("identify", "u1", 0, traits={"city": "Berlin", "age_band": "25-34", "urban": True, "gender": "f"}),
        added("u1", 1, product="p1", price=40.0),
        track("Product Viewed", "u1", 2, props={"product_id": "p2", "category": "coffee"}),
        call("identify", "u3", 3, traits={"city": "Rome"}),
        added("u3", 4, product="p1", price=40.0),  # its cart reminder is due before its erasure
        order("u1", 5000, total=6000.0),
        track("Erasure Requested", "u3", 5001, props={"request_id": "r-2"}),
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
        for customer in ("u2", "u3"):
            erased = customer_keys(prefix, customer)
            assert not client.exists(erased.profile, erased.decisions), f"{customer}'s profile and decisions are gone"
        assert any(o.key == "u3" for s, o in captured if s.startswith("triggers.")), "u3 had a decision before"
        sets = client.scan_iter(f"{prefix}:audience:*", _type="set")  # not the audiences' change logs
        audiences = [key for key in sets if client.sismember(key, "u3")]
        assert audiences == [], "an erased customer is in no audience"
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def test_match_keys_and_each_audience_s_change_log_reach_redis(services, tmp_path):
    prefix = f"t{tmp_path.name[-12:]}"
    events = [
        call("identify", "u1", 0, traits={"email": " Ann@Example.com", "phone": "030 1234567", "country": "DE"}),
        added("u1", 1, product="p1", price=40.0),
        order("u1", 5000, total=6000.0),
        call("identify", "u2", 3, traits={"email": "bob@example.com"}),
        added("u2", 4),
        track("Erasure Requested", "u2", 6000, props={"request_id": "r-1"}),
    ]
    settings = Settings(out=tmp_path / "unused", shards=4, redis_url=services["REDIS_URL"], redis_prefix=prefix)
    captured: list = []
    run_main(build_flow(settings, source=TestingSource(source_records(events)), sink=TestingSink(captured)))

    client = redis.Redis.from_url(services["REDIS_URL"], decode_responses=True)
    try:
        profile = client.hgetall(customer_keys(prefix, "u1").profile)
        assert profile["match.email_sha256"] == hashlib.sha256(b"ann@example.com").hexdigest()
        assert profile["match.phone_sha256"] == hashlib.sha256(b"+49301234567").hexdigest()
        assert profile["match.phone_digits_sha256"] == hashlib.sha256(b"49301234567").hexdigest()
        assert not any("example" in value.lower() or "1234567" in value for value in profile.values()), "hashes only"
        assert not client.exists(customer_keys(prefix, "u2").profile), "erasure removes the keys with the profile"
        changes: dict[str, list[tuple[str, str, int]]] = {}
        for _, output in (item for item in captured if item[0] == "audience_changes"):
            data = orjson.loads(output.body)["data"]
            changes.setdefault(data["audience"], []).append((output.key, data["change"], output.time_ms))
        assert changes and any(change == "exited" for log in changes.values() for _, change, _ in log)
        for audience, expected in changes.items():
            log = client.xrange(changes_key(prefix, audience))
            stored = [(e["customer"], e["change"], int(e["time_ms"])) for _, e in log]
            assert sorted(stored) == sorted(expected), f"{audience}: one log entry per change, with its time"
            for customer in {customer for customer, _, _ in expected}:
                mine = [change for who, change, _ in stored if who == customer]
                assert mine == [change for who, change, _ in expected if who == customer], "in order per customer"
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()


def keys_under(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(f"{prefix}:*", count=1000))


def test_a_replay_in_a_shell_with_the_live_store_set_writes_files_only(redis_service, tmp_path, monkeypatch, capsys):
    stream = GOLDEN / "stream.jsonl.gz"
    assert main(["replay", str(stream), "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    prefix = f"t{tmp_path.name[-12:]}"
    monkeypatch.setenv("NUDGEFLOW_REDIS_URL", redis_service["REDIS_URL"])
    monkeypatch.setenv("NUDGEFLOW_REDIS_PREFIX", prefix)
    assert main(["replay", str(stream), "--out", str(tmp_path / "with_env"), "--quiet"]) == 0
    assert files_of(tmp_path / "with_env") == files_of(tmp_path / "plain")
    client = redis.Redis.from_url(redis_service["REDIS_URL"])
    try:
        assert keys_under(client, prefix) == [], "a replay leaves the live store alone"
        assert main(["run", str(stream), "--out", str(tmp_path / "run"), "--quiet"]) == 0
        assert files_of(tmp_path / "run") == files_of(tmp_path / "plain")
        profiles = [k for k in keys_under(client, prefix) if k.endswith(b":profile")]
        customers = orjson.loads((tmp_path / "plain" / "summary.json").read_bytes())["customers"]
        assert len(profiles) == customers, "run on recordings fills the store when asked"
    finally:
        for key in keys_under(client, prefix):
            client.delete(key)
        client.close()


def test_a_store_that_refuses_the_password_stops_the_run_at_start(redis_service, tmp_path, capsys):
    host = urlsplit(redis_service["REDIS_URL"]).netloc
    url = f"redis://nobody:hunter2@{host}/0"
    code = main(["run", str(GOLDEN / "stream.jsonl.gz"), "--out", str(tmp_path / "out"), "--redis-url", url])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"nudgeflow: redis store redis://nobody:***@{host}/0 refused the connection: invalid")
    assert err.count("\n") == 1 and "hunter2" not in err


def test_a_bounded_run_that_cannot_write_its_store_fails_naming_what_is_missing(tmp_path, capsys):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    stream = GOLDEN / "stream.jsonl.gz"
    code = main(["run", str(stream), "--out", str(tmp_path / "out"), "--redis-url", url, "--quiet"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert last.startswith(f"nudgeflow: redis store {url}: ") and "customers' updates (" in last
    assert "profiles" in last and "not written" in last
