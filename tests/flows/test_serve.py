"""``nudgeflow serve`` as a user starts it: a real process answering real HTTP requests, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import orjson
import pytest
import redis
from conftest import call, order
from serve_process import front_env, keys_file, serving

from connectors.kafka import read_topic
from connectors.local_services import free_port
from connectors.redis_store import customer_keys

STOP_SECONDS = 5.0


def http(method: str, url: str, key: str | None = None, body: Any = None) -> tuple[int, Any]:
    """One request with aiohttp's client: the status and the JSON answer."""

    async def send() -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            data = None if body is None else orjson.dumps(body)
            headers |= {"Content-Type": "application/json"} if data is not None else {}
            async with session.request(method, url, data=data, headers=headers) as response:
                text = await response.read()
                return response.status, orjson.loads(text) if text else None

    return asyncio.run(send())


async def fetch_text(url: str) -> str:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        assert response.status == 200
        return await response.text()


async def first_frame(url: str, key: str) -> dict[str, Any]:
    """The first data frame of a server-sent events stream with a total count of events."""
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url, headers=headers) as response:
        assert response.status == 200
        async for line in response.content:
            if line.startswith(b"data: "):
                frame = orjson.loads(line[6:])
                if frame["events"]["total"]:
                    return frame
    raise AssertionError("the stream ended without a frame")


def test_the_kafka_front_answers_health_takes_keyed_events_and_stops_on_sigterm(services, tmp_path):
    path, secrets = keys_file(tmp_path, tills=["ingest"], support=["read"])
    topic, prefix = f"serve-events-{os.getpid()}", f"serve{os.getpid()}"
    with serving(["--kafka", "--keys", str(path)], front_env(services, topic, prefix)) as server:
        server.wait_for(r"serving the API on http://127\.0\.0\.1:\d+ \(front on Kafka and Redis\)")

        assert http("GET", f"{server.url}/healthz")[0] == 200
        status, ready = http("GET", f"{server.url}/readyz")
        assert status == 200, ready

        events = [call("identify", "u1", traits={"city": "Oslo"}), order("u1", 1, total=80.0)]
        status, answer = http("POST", f"{server.url}/v1/events", secrets["tills"], {"batch": events})
        assert status == 200, answer
        on_topic = list(read_topic(services["KAFKA_BOOTSTRAP_SERVERS"], topic))
        assert [m.key() for m in on_topic] == [b"u1", b"u1"]
        assert [orjson.loads(m.value())["messageId"] for m in on_topic] == [e["messageId"] for e in events]

        assert http("POST", f"{server.url}/v1/events", None, events[0]) == (401, {"error": "unauthorized"})
        assert http("POST", f"{server.url}/v1/events", "nf_not-a-key", events[0]) == (401, {"error": "unauthorized"})
        assert http("POST", f"{server.url}/v1/events", secrets["support"], events[0]) == (403, {"error": "forbidden"})

        client = redis.Redis.from_url(services["REDIS_URL"])
        try:
            client.hset(customer_keys(prefix, "u1").profile, mapping={"orders": "1", "audiences": '["new_customers"]'})
            status, profile = http("GET", f"{server.url}/v1/customers/u1", secrets["support"])
            assert status == 200 and profile["features"] == {"orders": 1} and profile["audiences"] == ["new_customers"]
        finally:
            client.delete(customer_keys(prefix, "u1").profile)
            client.close()

        assert server.terminate() < STOP_SECONDS
        assert not any(secret in server.stderr for secret in secrets.values()), "no key in the logs"
        assert "/v1/customers/{customer_id}" in server.stderr and "/v1/customers/u1" not in server.stderr


def test_the_local_engine_serves_its_own_decisions_with_a_key_made_for_the_run(tmp_path):
    out = tmp_path / "live"
    with serving(["--out", str(out)], {}) as server:
        key = server.wait_for(r"/dashboard#key=(nf_[A-Za-z0-9_-]+)").group(1)
        server.wait_for(r"serving the API on http://127\.0\.0\.1:\d+ \(local engine")
        assert http("GET", f"{server.url}/healthz")[0] == 200

        events = [call("identify", "u1", traits={"city": "Oslo"}), order("u1", 1, total=6000.0)]
        status, answer = http("POST", f"{server.url}/v1/events", key, events)
        assert status == 200, answer
        deadline, profile = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            status, profile = http("GET", f"{server.url}/v1/customers/u1", key)
            if status == 200 and profile["features"].get("lifetime_spend") == 6000.0:
                break
            time.sleep(0.2)
        assert profile is not None and "high_value" in profile["audiences"], profile
        assert http("GET", f"{server.url}/readyz")[0] == 200
        page = asyncio.run(fetch_text(f"{server.url}/dashboard"))
        assert "<html" in page.lower()
        frame = asyncio.run(first_frame(f"{server.url}/dashboard/stream", key))
        assert frame["events"]["total"] >= len(events), "the dashboard reads the in-process engine's metrics"

        assert server.terminate() < STOP_SECONDS
        changes = [orjson.loads(line) for line in (out / "audience_changes.jsonl").read_bytes().splitlines()]
        assert {(c["subject"], c["data"]["audience"], c["data"]["change"]) for c in changes} >= {
            ("u1", "high_value", "entered")
        }
        assert server.stderr.count(key) == 1, "the generated key is shown once, and never logged"


@pytest.fixture
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("NUDGEFLOW_")]:
        monkeypatch.delenv(name)


def test_what_cannot_be_served_stops_the_start_with_one_line(tmp_path, capsys, no_settings):
    from flows.cli import main

    bad_keys = tmp_path / "keys.yaml"
    bad_keys.write_text("keys:\n  - name: tills\n    sha256: nothex\n    scopes: [ingest]\n")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    port = str(free_port())
    cases = [
        (["--keys", str(bad_keys)], f"keys file {bad_keys}, line 3"),
        (["--kafka"], "NUDGEFLOW_REDIS_URL"),
        (["--out", str(foreign)], str(foreign)),
    ]
    for args, named in cases:
        assert main(["serve", "--port", port, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("nudgeflow: ") and named in err and err.count("\n") == 1, err
    assert (foreign / "notes.txt").read_text() == "mine", "a folder that is not a live run's is left alone"
