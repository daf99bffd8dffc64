"""Segment's HTTP Tracking API: Segment's own Python SDK against a real server, and the API's rules."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
import time

import orjson
from api_client import SECRETS, api, basic, run
from conftest import track
from segment.analytics import Client

from connectors.http.app import app_runner
from connectors.http.backend import MemoryBackend
from flows.api_validation import contract_validator
from schemas.timestamps import epoch_ms

VIEW = track("Product Viewed", "u1", props={"product_id": "p1"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def with_sdk(backend: MemoryBackend, write_key: str, calls, **client_options) -> list:
    """Serve the API on a free 127.0.0.1 port (aiohttp's AppRunner and TCPSite), make ``calls`` with a
    Segment SDK client pointed at it, flush, and return the errors the SDK reported."""
    errors: list = []

    def use_sdk(port: int) -> None:
        client = Client(write_key, host=f"http://127.0.0.1:{port}", on_error=lambda err, batch: errors.append(err),
                        max_retries=1, timeout=5, **client_options)
        calls(client)
        client.flush()
        client.shutdown()

    async def main() -> None:
        runner = app_runner(api(backend))
        await runner.setup()
        port = free_port()
        from aiohttp import web

        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await asyncio.wait_for(asyncio.to_thread(use_sdk, port), 60)
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return errors


def every_call(client: Client) -> None:
    client.identify("u1", {"email": "ada@example.com", "first_name": "Ada"}, anonymous_id="anon-1")
    client.track("u1", "Product Viewed", {"product_id": "p1", "price": 12.5})
    client.page("u1", category="shop", name="Home", properties={"url": "https://shop.example.com/"})
    client.screen("u1", name="Cart", properties={})
    client.alias("anon-2", "u1")
    client.group("u1", "g1", {"name": "Acme"})


def test_segments_sdk_calls_arrive_checked_and_keyed(caplog):
    caplog.set_level(logging.INFO)
    backend = MemoryBackend()
    errors = with_sdk(backend, SECRETS["ingest"], every_call)
    assert errors == []
    sent = [(key, orjson.loads(line)) for key, line in backend.sent]
    assert [event["type"] for _, event in sent] == ["identify", "track", "page", "screen", "alias", "group"]
    assert [key for key, _ in sent] == [b"anon-1", b"u1", b"u1", b"u1", b"u1", b"u1"]
    assert all("writeKey" not in line.decode() for _, line in backend.sent)
    assert sent[1][1]["properties"] == {"product_id": "p1", "price": 12.5}
    assert sent[4][1]["previousId"] == "anon-2"
    check = contract_validator()
    verdicts = [check(line, epoch_ms(orjson.loads(line)["receivedAt"])).reason for _, line in backend.sent]
    assert verdicts == [None, None, None, None, None, "schema_invalid"]  # group is not in the contract: dead-lettered
    for _, event in sent:
        assert abs(epoch_ms(event["timestamp"]) - time.time() * 1000) < 60_000  # corrected with sentAt
        assert event["originalTimestamp"]
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert SECRETS["ingest"] not in text and "aiohttp.access" not in {r.name for r in caplog.records}


def test_a_gzip_batch_from_the_sdk_arrives_too():
    backend = MemoryBackend()
    errors = with_sdk(backend, SECRETS["ingest"], lambda client: client.track("u9", "Product Viewed",
                                                                                 {"product_id": "p9"}), gzip=True)
    assert errors == [] and [key for key, _ in backend.sent] == [b"u9"]


def test_a_bad_write_key_is_refused_and_the_sdk_reports_it(caplog):
    backend = MemoryBackend()
    errors = with_sdk(backend, "nf_not-a-key", lambda client: client.track("u1", "Product Viewed", {}))
    assert backend.sent == []
    assert [getattr(err, "status", None) for err in errors] == [401]
    errors = with_sdk(backend, SECRETS["read"], lambda client: client.track("u1", "Product Viewed", {}))
    assert backend.sent == [] and [getattr(err, "status", None) for err in errors] == [403]


def post(path: str, body: bytes, headers: dict[str, str] | None = None, backend: MemoryBackend | None = None):
    backend = backend if backend is not None else MemoryBackend()

    async def scenario(client):
        response = await client.post(path, data=body, headers=basic(SECRETS["ingest"]) if headers is None else headers)
        return response.status, await response.json()

    status, answer = run(api(backend), scenario)
    return status, answer, backend


def test_the_clock_of_the_device_is_corrected_with_sent_at():
    event = {**VIEW, "timestamp": "2026-01-05T10:00:00.000Z", "sentAt": "2026-01-05T10:00:05.000Z"}
    before = time.time() * 1000
    status, answer, backend = post("/v1/track", orjson.dumps(event))
    assert (status, answer) == (200, {"success": True})
    [(_, line)] = backend.sent
    sent = orjson.loads(line)
    received = epoch_ms(sent["receivedAt"])
    assert before - 1 <= received <= time.time() * 1000 + 1
    assert epoch_ms(sent["timestamp"]) == received - 5000
    assert sent["originalTimestamp"] == "2026-01-05T10:00:00.000Z"


def test_a_single_call_takes_its_type_from_the_endpoint_and_missing_ids_and_times_are_filled():
    call = {"userId": "u5", "traits": {"first_name": "Bo"}, "type": "track"}
    status, _, backend = post("/v1/identify", orjson.dumps(call))
    assert status == 200
    [(key, line)] = backend.sent
    sent = orjson.loads(line)
    assert (key, sent["type"], sent["timestamp"]) == (b"u5", "identify", sent["receivedAt"])
    assert sent["messageId"].startswith("api-")
    assert contract_validator()(line, epoch_ms(sent["receivedAt"])).reason is None


def test_the_write_key_may_come_in_the_body_and_never_reaches_the_stream():
    body = orjson.dumps({**VIEW, "writeKey": SECRETS["ingest"]})
    status, answer, backend = post("/v1/track", body, headers={})
    assert (status, answer) == (200, {"success": True})
    assert b"writeKey" not in backend.sent[0][1]
    status, answer, backend = post("/v1/track", orjson.dumps({**VIEW, "writeKey": "nf_nope"}), headers={})
    assert (status, answer, backend.sent) == (401, {"error": "unauthorized"}, [])


def test_events_the_contract_refuses_are_still_sent_for_the_stream_to_dead_letter():
    batch = {"batch": [VIEW, {"type": "track", "userId": "u2"}, "not an event"]}
    status, answer, backend = post("/v1/batch", orjson.dumps(batch))
    assert (status, answer) == (200, {"success": True})
    assert [key for key, _ in backend.sent] == [b"u1", b"u2", None]
    check = contract_validator()
    reasons = [check(line, 0).reason for _, line in backend.sent]
    assert reasons == [None, "schema_invalid", "schema_invalid"]


def test_segments_size_limits_and_bad_bodies_answer_400():
    big_call = orjson.dumps({**VIEW, "properties": {"product_id": "p1", "note": "x" * 33_000}})
    status, answer, backend = post("/v1/track", big_call)
    assert (status, answer["success"], answer["code"], backend.sent) == (400, False, "too_large", [])
    big_batch = orjson.dumps({"batch": [{**VIEW, "properties": {"note": "x" * 30_000}}] * 18})  # about 540 KB
    status, answer, backend = post("/v1/batch", big_batch)
    assert (status, answer["code"], backend.sent) == (400, "too_large", [])
    status, answer, backend = post("/v1/batch", gzip.compress(big_batch), {**basic(SECRETS["ingest"]),
                                                                          "Content-Encoding": "gzip"})
    assert (status, answer["code"], backend.sent) == (400, "too_large", [])
    for path, body in (("/v1/track", b"{nope"), ("/v1/batch", b"[]"), ("/v1/batch", b'{"batch": 3}')):
        status, answer, backend = post(path, body)
        assert status == 400 and answer["success"] is False and backend.sent == [], (path, body)


def test_when_the_stream_does_not_take_every_event_the_answer_is_503_for_the_sdk_to_retry():
    backend = MemoryBackend(refuse=lambda key, line: "broker down" if key == b"u2" else None)
    batch = {"batch": [VIEW, track("Product Viewed", "u2", props={"product_id": "p1"})]}
    status, answer, _ = post("/v1/batch", orjson.dumps(batch), backend=backend)
    assert (status, answer["success"], answer["code"]) == (503, False, "unavailable")


def test_events_from_segments_sdk_drive_the_engines_decisions(tmp_path):
    from bytewax.testing import TestingSink, TestingSource, run_main
    from conftest import source_records

    from flows.personalization import build_flow
    from flows.settings import Settings

    backend = MemoryBackend()
    # the server dates events by its clock (sentAt): a zone where it is midday keeps push out of quiet hours
    daytime = {"timezone": f"Etc/GMT{time.gmtime().tm_hour - 12:+d}"}

    def sign_up(client: Client) -> None:
        client.identify("u-new", {"first_name": "Ada"}, anonymous_id="anon-9", context=daytime)
        client.track("u-new", "Signed Up", {"method": "email"}, anonymous_id="anon-9", context=daytime)

    assert with_sdk(backend, SECRETS["ingest"], sign_up) == []
    captured: list = []
    flow = build_flow(Settings(out=tmp_path), source=TestingSource(source_records([line for _, line in backend.sent])),
                      sink=TestingSink(captured))
    run_main(flow)
    triggers = [orjson.loads(output.body) for stream, output in captured if stream.startswith("triggers.")]
    assert [(trigger["subject"], trigger["data"]["rule_id"]) for trigger in triggers] == [
        ("u-new", "onboarding_welcome_push")
    ]
