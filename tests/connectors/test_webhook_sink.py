"""The webhook sink's parts: signing against the Standard Webhooks reference library, the backoff
schedule, ``Retry-After``, and one partition's queue, snapshots, resume and close (against a real
local receiver; the dead letters are kept in a list)."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest
from aiohttp import web
from standardwebhooks import Webhook
from webhook_receiver import Receiver, new_secret, ok

from connectors.local_services import free_port
from connectors.webhooks import (
    RETRY_AFTER_CAP,
    SNAPSHOT_FORMAT,
    FileDeadLetters,
    WebhookPartition,
    WebhookSink,
    backoff_delay,
    retry_after_seconds,
    sign,
)
from schemas.errors import RecoveryStoreError
from schemas.items import Output
from schemas.records import TRIGGER_TYPE, cloud_event
from schemas.webhooks import Destination, signing_key


class ListDeadLetters:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, customer: str, record: bytes) -> None:
        self.records.append({"customer": customer, **orjson.loads(record)})

    def flush(self) -> None:
        return None


def decision(n: int, stream: str = "triggers.push") -> Output:
    body = cloud_event(type_=TRIGGER_TYPE, event_id=f"d{n:04d}", time_ms=1_000 * n, subject=f"c{n}", data={"n": n})
    return Output(stream, f"c{n}", 1_000 * n, n, body)


def destination(url: str, secret: str, **more) -> Destination:
    settings = {
        "name": "crm",
        "url": url,
        "streams": frozenset({"triggers.push"}),
        "timeout": 2.0,
        "max_attempts": 5,
        "backoff_start": 0.02,
        "backoff_cap": 0.05,
        "concurrency": 16,
        "queue": 100,
        **more,
    }
    return Destination(**settings, key=signing_key(secret))


def partition(dest: Destination, dead: ListDeadLetters, resume=None, snapshots=True, close_timeout=5.0):
    sink = WebhookSink([dest], dead, close_timeout=close_timeout, snapshots=snapshots, partitions=1)
    return sink.build_part("flow.webhooks", "webhooks-0", resume)


def test_signatures_are_those_of_the_standard_webhooks_library():
    for size in (24, 32, 64):
        secret = "whsec_" + base64.b64encode(os.urandom(size)).decode()
        library = Webhook(secret)
        for body in (b"{}", decision(7).body, '{"data":{"name":"Zoë"}}'.encode()):
            timestamp = int(datetime.now(UTC).timestamp())
            header = sign(signing_key(secret), "d0007", timestamp, body)
            assert header == library.sign("d0007", datetime.fromtimestamp(timestamp, UTC), body.decode())
            headers = {"webhook-id": "d0007", "webhook-timestamp": str(timestamp), "webhook-signature": header}
            library.verify(body, headers)


def test_backoff_doubles_from_its_start_up_to_its_cap_with_full_jitter():
    highest = [backoff_delay(attempt, 0.5, 10.0, draw=lambda: 1.0) for attempt in range(1, 9)]
    assert highest == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert backoff_delay(3, 0.5, 10.0, draw=lambda: 0.0) == 0.0
    assert backoff_delay(1000, 0.5, 10.0, draw=lambda: 1.0) == 10.0, "no overflow after many attempts"
    drawn = [backoff_delay(4, 0.5, 10.0) for _ in range(200)]
    assert all(0 <= d < 4.0 for d in drawn) and len(set(drawn)) > 100, "spread over the whole interval"


def test_retry_after_takes_seconds_or_an_http_date_and_ignores_nonsense():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("3", now.timestamp()) == 3.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=20), usegmt=True), now.timestamp()) == 20.0
    assert retry_after_seconds(format_datetime(now - timedelta(hours=1), usegmt=True), now.timestamp()) == 0.0
    assert retry_after_seconds("86400", now.timestamp()) == RETRY_AFTER_CAP
    assert retry_after_seconds("soon", now.timestamp()) is None
    assert retry_after_seconds(None, now.timestamp()) is None


def gated() -> tuple[threading.Event, object]:
    """A receiver behaviour that answers only once ``gate`` is set."""
    gate = threading.Event()

    async def wait_for_gate(webhook_id: str, attempt: int) -> web.Response:
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return web.Response(status=200)

    return gate, wait_for_gate


def test_a_full_queue_spills_into_the_partition_and_its_snapshot_holds_every_undelivered_decision():
    secret, dead = new_secret(), ListDeadLetters()
    gate, behaviour = gated()
    with Receiver({"crm": behaviour}) as receiver:
        part = partition(destination(receiver.url("crm"), secret, concurrency=1, queue=2), dead)
        part.write_batch([decision(n) for n in range(10)])
        part.write_batch([decision(n, "triggers.email") for n in range(10, 12)])  # not this destination's stream
        receiver.wait_for(lambda r: len(r.requests) == 1)
        held = part.snapshot()
        assert held[0] == SNAPSHOT_FORMAT
        assert sorted(h[1] for h in held[1]) == [f"d{n:04d}" for n in range(10)]
        assert len(receiver.requests) == 1, "one request in flight, the rest queued or waiting"
        gate.set()
        receiver.wait_for(lambda r: len(r.requests) == 10)
        part.close()
    assert part.snapshot() == (SNAPSHOT_FORMAT, ())
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == [f"d{n:04d}" for n in range(10)]
    assert not dead.records


def test_a_resumed_partition_sends_what_its_snapshot_held_under_the_same_ids():
    secret, dead = new_secret(), ListDeadLetters()
    port = free_port()
    first = partition(destination(f"http://127.0.0.1:{port}/crm", secret, max_attempts=100), dead, close_timeout=0.2)
    first.write_batch([decision(n) for n in range(5)])
    held = first.snapshot()
    first.close()  # the receiver is down: all five stay in the snapshot
    assert len(held[1]) == 5
    with Receiver({"crm": ok}, port=port) as receiver:
        second = partition(destination(receiver.url("crm"), secret), dead, resume=held)
        second.write_batch([decision(3)])  # re-emitted by the resumed engine while still pending: sent once
        second.close()
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == [f"d{n:04d}" for n in range(5)]
    verifier = Webhook(secret)
    for request in receiver.requests:
        verifier.verify(request.body, request.headers)


def test_without_a_recovery_store_what_is_left_at_close_goes_to_the_dead_letters(caplog):
    dead = ListDeadLetters()
    port = free_port()  # nothing listens there
    part = partition(
        destination(f"http://127.0.0.1:{port}/crm", new_secret(), max_attempts=100),
        dead,
        snapshots=False,
        close_timeout=0.3,
    )
    part.write_batch([decision(n) for n in range(3)])
    part.close()
    assert [r["position"]["id"] for r in sorted(dead.records, key=lambda r: r["position"]["id"])] == [
        "d0000",
        "d0001",
        "d0002",
    ]
    record = dead.records[0]
    assert record["reason"] == "webhook_undeliverable" and record["customer"] == f"c{int(record['position']['id'][1:])}"
    assert "not delivered before the engine stopped" in record["messages"][0]
    assert "no recovery store keeps them" in caplog.text


def test_with_a_recovery_store_what_is_left_at_close_stays_for_the_resumed_engine(caplog):
    dead = ListDeadLetters()
    part = partition(
        destination(f"http://127.0.0.1:{free_port()}/crm", new_secret(), max_attempts=100), dead, close_timeout=0.3
    )
    part.write_batch([decision(n) for n in range(3)])
    part.close()
    assert not dead.records
    assert "3 deliveries not done when the engine stopped (crm: 3); the recovery snapshot holds them" in caplog.text


def test_a_snapshot_of_another_format_is_refused():
    with pytest.raises(RecoveryStoreError, match="another format"):
        partition(destination("http://127.0.0.1:9/crm", new_secret()), ListDeadLetters(), resume=(99, ()))


def test_deliveries_held_for_a_destination_no_longer_configured_go_to_the_dead_letters(tmp_path):
    dead = FileDeadLetters(tmp_path / "out" / "webhook_dead_letters.jsonl")
    held = (SNAPSHOT_FORMAT, (("old-crm", "d0001", "triggers.push", "c1", 1000, decision(1).body, 2),))
    part: WebhookPartition = partition(destination("http://127.0.0.1:9/crm", new_secret()), dead, resume=held)
    part.close()
    (record,) = [orjson.loads(line) for line in dead.path.read_bytes().splitlines()]
    assert record["position"] == {"source": "webhooks/old-crm", "stream": "triggers.push", "id": "d0001"}
    assert record["messages"] == ["destination 'old-crm': no longer in the webhooks file (2 attempts)"]


def test_a_dead_letter_that_cannot_be_written_is_tried_again_and_nothing_is_lost():
    class FailingOnce(ListDeadLetters):
        failed = 0

        def write(self, customer: str, record: bytes) -> None:
            if not self.failed:
                self.failed += 1
                raise OSError("disk full")
            super().write(customer, record)

    async def reject(webhook_id: str, attempt: int) -> web.Response:
        return web.Response(status=404)

    dead = FailingOnce()
    with Receiver({"crm": reject}) as receiver:
        part = partition(destination(receiver.url("crm"), new_secret()), dead)
        part.write_batch([decision(1)])
        receiver.wait_for(lambda r: len(r.requests) == 2)  # dead-lettering failed: the delivery was kept
        part.close()
    assert dead.failed == 1
    assert [r["position"]["id"] for r in dead.records] == ["d0001"]
    assert dead.records[0]["messages"] == ["destination 'crm': HTTP 404 (not retried) (2 attempts)"]
    assert part.snapshot() == (SNAPSHOT_FORMAT, ())


def test_an_outage_is_logged_when_it_starts_and_when_it_ends_and_refusals_are_summed_up(caplog):
    down = threading.Event()
    down.set()

    async def unavailable_until_up(webhook_id: str, attempt: int) -> web.Response:
        return web.Response(status=503 if down.is_set() else 200)

    async def gone(webhook_id: str, attempt: int) -> web.Response:
        return web.Response(status=410)

    caplog.set_level(logging.WARNING, logger="connectors.webhooks")
    with Receiver({"crm": unavailable_until_up, "old": gone}) as receiver:
        crm = destination(receiver.url("crm"), new_secret(), max_attempts=1000)
        old = destination(receiver.url("old"), new_secret(), name="old")
        dead = ListDeadLetters()
        sink = WebhookSink([crm, old], dead, close_timeout=10, partitions=1)
        part = sink.build_part("flow.webhooks", "webhooks-0", None)
        part.write_batch([decision(n) for n in range(5)])
        receiver.wait_for(lambda r: len(r.on("crm")) >= 15 and len(r.on("old")) == 5)
        down.clear()
        part.close()
    lines = [record.getMessage() for record in caplog.records]
    assert sum("destination 'crm' failing (HTTP 503)" in line for line in lines) == 1
    again = [line for line in lines if "destination 'crm' taking deliveries again after" in line]
    assert len(again) == 1 and re.search(r"\((\d+) failed attempts\)", again[0])
    assert [line for line in lines if "'old'" in line] == [
        "webhooks: destination 'old': 1 decision sent to the dead letters (the last: HTTP 410 (not retried))"
    ], "one line for the first, then at most one a minute"
    assert len(dead.records) == 5 and len(receiver.on("crm")) >= 20
