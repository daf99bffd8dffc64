"""The HTTP API's routes, served for real over a MemoryBackend with the stream's own contract check."""

from __future__ import annotations

import gzip
import time

import orjson
from api_client import api, bearer, run
from conftest import track
from prometheus_client import REGISTRY

from connectors.http.app import ApiLimits
from connectors.http.backend import MemoryBackend
from operators.parse import Rejected, parse
from schemas.items import DEFAULT_MAX_EVENT_BYTES, RawEvent
from schemas.timestamps import epoch_ms

VIEW = track("Product Viewed", "u1", anon="a1", props={"product_id": "p1"})


def post(body: bytes | object, headers: dict[str, str] | None = None, **app: object) -> tuple[int, dict, MemoryBackend]:
    """POST /v1/events with the ingest key; (status, JSON answer, backend)."""
    backend = MemoryBackend()
    data = body if isinstance(body, bytes) else orjson.dumps(body)

    async def scenario(client):
        response = await client.post("/v1/events", data=data, headers={**bearer("ingest"), **(headers or {})})
        return response.status, await response.json()

    status, answer = run(api(backend, **app), scenario)
    return status, answer, backend


def dead_letter_reason(line: bytes) -> tuple[str, list[str]]:
    """The reason and messages the stream's parser gives ``line``."""
    rejected = parse(RawEvent(0, {}, line))
    assert isinstance(rejected, Rejected)
    return rejected.reason, orjson.loads(rejected.body)["messages"]


def test_a_valid_event_is_sent_keyed_like_produce_with_received_at_stamped():
    before = time.time() * 1000
    status, answer, backend = post(VIEW)
    assert status == 200
    assert answer == {"accepted": 1, "rejected": 0, "failed": 0, "results": [{"index": 0, "status": "accepted"}]}
    [(key, line)] = backend.sent
    assert key == b"a1"  # anonymousId first, as `nudgeflow produce` keys
    sent = orjson.loads(line)
    assert before - 1 <= epoch_ms(sent.pop("receivedAt")) <= time.time() * 1000 + 1
    assert sent == VIEW


def test_a_given_received_at_is_kept_and_user_id_keys_without_anonymous_id():
    event = {**track("Product Viewed", "u7", props={"product_id": "p1"}), "receivedAt": "2026-01-05T10:00:01.000Z"}
    status, _, backend = post(event)
    assert status == 200
    [(key, line)] = backend.sent
    assert key == b"u7"
    assert orjson.loads(line)["receivedAt"] == "2026-01-05T10:00:01.000Z"


def test_a_batch_answers_each_event_with_the_dead_letter_reason_and_sends_only_valid_ones():
    no_id = {k: v for k, v in track("Order Completed", "u2").items() if k != "messageId"}
    future = track("Product Viewed", "u3", props={"product_id": "p1"}, timestamp="2099-01-01T00:00:00Z")
    huge = track("Product Viewed", "u4", props={"product_id": "p1", "note": "x" * DEFAULT_MAX_EVENT_BYTES})
    repeated = b'{"type":"track","event":"Product Viewed","userId":"u5","userId":"u6","messageId":"r1",' \
        b'"timestamp":"2026-01-05T10:00:00Z","properties":{"product_id":"p1"}}'
    body = b'{"batch":[' + b",".join([orjson.dumps(VIEW), orjson.dumps(no_id), orjson.dumps(future),
                                      orjson.dumps(huge), repeated, b"42"]) + b"]}"
    status, answer, backend = post(body)
    assert status == 207
    assert (answer["accepted"], answer["rejected"], answer["failed"]) == (1, 5, 0)
    results = answer["results"]
    assert [r["status"] for r in results] == ["accepted"] + ["rejected"] * 5
    assert (results[1]["reason"], results[1]["messages"]) == dead_letter_reason(orjson.dumps(no_id))
    assert results[1]["reason"] == "schema_invalid" and "messageId" in results[1]["messages"][0]
    assert results[2]["reason"] == "future_dated"
    assert results[3]["reason"] == "too_large"
    assert (results[4]["reason"], results[4]["messages"]) == ("duplicate_key", ["userId: duplicate key"])
    assert (results[5]["reason"], results[5]["messages"]) == dead_letter_reason(b"42")
    assert [orjson.loads(line)["messageId"] for _, line in backend.sent] == [VIEW["messageId"]]


def test_a_json_array_is_a_batch_too_and_the_order_is_kept():
    events = [track("Product Viewed", f"u{n}", props={"product_id": "p1"}) for n in range(5)]
    status, answer, backend = post(events)
    assert status == 200 and answer["accepted"] == 5
    assert [key for key, _ in backend.sent] == [f"u{n}".encode() for n in range(5)]


def test_a_body_that_is_not_json_is_refused_whole():
    for body in (b'{"type": "track",', b"NaN", b"\xff\xfe", b'"just text"', b'{"batch": {"a": 1}}'):
        status, answer, backend = post(body)
        assert status == 400, body
        assert answer["error"] == "invalid_body" and answer["message"]
        assert backend.sent == []


def test_limits_on_the_body_and_the_number_of_events_answer_413_and_send_nothing():
    status, answer, backend = post([VIEW] * 11, limits=ApiLimits(max_events=10))
    assert (status, answer["error"], backend.sent) == (413, "too_many_events", [])
    big = orjson.dumps([VIEW] * 40)
    status, answer, backend = post(big, limits=ApiLimits(max_body_bytes=len(big) - 1))
    assert (status, answer["error"], backend.sent) == (413, "too_large", [])


def test_a_gzip_body_is_inflated_and_its_limit_applies_after_inflating():
    events = [track("Product Viewed", f"u{n}", props={"product_id": "p1"}) for n in range(50)]
    status, answer, backend = post(gzip.compress(orjson.dumps(events)), {"Content-Encoding": "gzip"})
    assert status == 200 and answer["accepted"] == 50 and len(backend.sent) == 50
    bomb = gzip.compress(b"[" + b" " * (64 << 20) + b"]", 1)  # 64 MiB of spaces in under 300 KB
    started = time.monotonic()
    status, answer, backend = post(bomb, {"Content-Encoding": "gzip"})
    assert (status, answer["error"], backend.sent) == (413, "too_large", [])
    assert time.monotonic() - started < 10
    status, answer, _ = post(b"not gzip at all", {"Content-Encoding": "gzip"})
    assert status == 400


def test_events_the_stream_does_not_take_are_answered_failed():
    backend = MemoryBackend(refuse=lambda key, line: "broker unavailable" if key == b"u1" else None)
    events = [track("Product Viewed", user, props={"product_id": "p1"}) for user in ("u0", "u1", "u2")]

    async def scenario(client):
        response = await client.post("/v1/events", json=events, headers=bearer("ingest"))
        return response.status, await response.json()

    status, answer = run(api(backend), scenario)
    assert status == 207
    assert answer["results"][1] == {"index": 1, "status": "failed", "reason": "not_sent",
                                    "messages": ["broker unavailable"]}
    assert [key for key, _ in backend.sent] == [b"u0", b"u2"]


def test_event_results_are_counted_in_the_metrics():
    def count(result: str) -> float:
        return REGISTRY.get_sample_value("nudgeflow_http_events_total", {"result": result}) or 0.0

    before = count("accepted"), count("rejected")
    post([VIEW, {"type": "track"}])
    assert (count("accepted") - before[0], count("rejected") - before[1]) == (1, 1)
    requests = REGISTRY.get_sample_value("nudgeflow_http_requests_total", {"route": "/v1/events", "status": "207"})
    assert requests and requests >= 1


def test_a_customer_profile_is_answered_and_an_unknown_one_is_404():
    profile = {"customer_id": "u1", "features": {"orders_30d": 2}, "audiences": ["vip"], "traits": {},
               "match_keys": {}, "updated_at": None, "decisions": []}
    backend = MemoryBackend(profiles={"u1": profile})

    async def scenario(client):
        known = await client.get("/v1/customers/u1", headers=bearer("read"))
        unknown = await client.get("/v1/customers/u404", headers=bearer("read"))
        return known.status, await known.json(), unknown.status, await unknown.json()

    assert run(api(backend), scenario) == (200, profile, 404, {"error": "not_found"})


def test_an_erasure_request_sends_the_erasure_event_keyed_by_the_customer():
    backend = MemoryBackend()

    async def scenario(client):
        body = {"request_id": "ticket-77", "regulation": "ccpa"}
        by_reader = await client.delete("/v1/customers/u1", json=body, headers=bearer("read"))
        by_admin = await client.delete("/v1/customers/u1", json=body, headers=bearer("admin"))
        default = await client.delete("/v1/customers/u2", headers=bearer("admin"))
        bad = await client.delete("/v1/customers/u3", json={"regulation": "hipaa"}, headers=bearer("admin"))
        return [(r.status, await r.json()) for r in (by_reader, by_admin, default, bad)]

    by_reader, by_admin, default, bad = run(api(backend), scenario)
    assert by_reader == (403, {"error": "forbidden"})
    assert by_admin == (202, {"request_id": "ticket-77", "regulation": "ccpa", "status": "accepted"})
    assert default[0] == 202 and default[1]["request_id"].startswith("erasure-") and default[1]["regulation"] == "gdpr"
    assert bad[0] == 400
    [(key1, line1), (key2, line2)] = backend.sent
    assert (key1, key2) == (b"u1", b"u2")
    erasure = orjson.loads(line1)
    assert (erasure["event"], erasure["userId"], erasure["properties"]) == (
        "Erasure Requested", "u1", {"request_id": "ticket-77", "regulation": "ccpa"})
    assert parse(RawEvent(0, {}, line2)).name == "Erasure Requested"  # the stream takes it


def test_audiences_and_their_members_page_by_page_each_member_once():
    members = {f"c{n:03}" for n in range(250)}
    backend = MemoryBackend(audience_members={"vip": members, "lapsed": {"c1"}, "empty": set()})

    async def scenario(client):
        audiences = await (await client.get("/v1/audiences", headers=bearer("read"))).json()
        pages, cursor = [], None
        while len(pages) < 10:
            query = {"limit": "100", **({"cursor": cursor} if cursor else {})}
            page = await (await client.get("/v1/audiences/vip/members", params=query, headers=bearer("read"))).json()
            pages.append(page["members"])
            cursor = page["cursor"]
            if cursor is None:
                break
        first = await (await client.get("/v1/audiences/vip/members", headers=bearer("read"))).json()
        bad_limits = [
            (await client.get("/v1/audiences/vip/members", params={"limit": limit}, headers=bearer("read"))).status
            for limit in ("0", "1001", "ten", "-5")
        ]
        bad_cursor = await client.get("/v1/audiences/vip/members", params={"cursor": "%%%"}, headers=bearer("read"))
        return audiences, pages, len(first["members"]), bad_limits, bad_cursor.status

    audiences, pages, default_size, bad_limits, bad_cursor = run(api(backend), scenario)
    assert audiences == {"audiences": [{"id": "lapsed", "size": 1}, {"id": "vip", "size": 250}]}
    assert [len(page) for page in pages] == [100, 100, 50]
    assert sorted(member for page in pages for member in page) == sorted(members)
    assert default_size == 100
    assert bad_limits == [400, 400, 400, 400]
    assert bad_cursor == 400


def test_health_is_always_200_and_readiness_names_what_is_not_ready():
    backend = MemoryBackend(states={"kafka": "ok", "redis": "ok"})

    async def scenario(client):
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        backend.states["redis"] = "connection refused"
        not_ready = await client.get("/readyz")
        return [(r.status, await r.json()) for r in (health, ready, not_ready)]

    health, ready, not_ready = run(api(backend), scenario)
    assert health == (200, {"status": "ok"})
    assert ready == (200, {"status": "ready", "checks": {"kafka": "ok", "redis": "ok"}})
    assert not_ready == (503, {"status": "unavailable", "checks": {"kafka": "ok", "redis": "connection refused"}})


def test_unknown_routes_and_methods_answer_json_errors():
    async def scenario(client):
        missing = await client.get("/v1/nothing", headers=bearer("read"))
        method = await client.put("/v1/events", headers=bearer("ingest"))
        return missing.status, await missing.json(), method.status, await method.json()

    assert run(api(), scenario) == (404, {"error": "not_found"}, 405, {"error": "method_not_allowed"})


def test_a_backend_that_fails_outright_fails_every_event_and_loses_none_silently():
    backend = MemoryBackend()

    async def down(events):
        raise ConnectionError("no brokers")

    backend.send = down  # type: ignore[method-assign]

    async def scenario(client):
        response = await client.post("/v1/events", json=[VIEW, VIEW], headers=bearer("ingest"))
        return response.status, await response.json()

    status, answer = run(api(backend), scenario)
    assert status == 207 and (answer["accepted"], answer["failed"]) == (0, 2)
    assert answer["results"][0]["messages"] == ["the events stream is unavailable (ConnectionError)"]
