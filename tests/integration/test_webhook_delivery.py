"""The webhook sink in a real flow against a real aiohttp receiver that fails, times out, throttles,
rejects and is slow: every decision arrives signed, retries keep their id, failures go to the dead
letters, and one slow destination does not hold up another."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import web
from bytewax.testing import TestingSource, run_main
from conftest import CART_RULE, added, source_records, track
from standardwebhooks import Webhook
from webhook_receiver import Receiver, new_secret, ok

from connectors.local_services import free_port
from connectors.webhooks import DEAD_LETTER_FILE
from flows.personalization import build_flow
from flows.settings import Settings
from schemas.metrics import WEBHOOK_ATTEMPTS, WEBHOOK_DELIVERIES
from schemas.records import CloudEvent, DeadLetter

CUSTOMERS = 40
SLOW_SECONDS = 0.25


async def flaky(webhook_id: str, attempt: int) -> web.Response:
    """A 500, then no answer in time, then a 429 asking for a second's wait, then success."""
    if attempt == 1:
        return web.Response(status=500)
    if attempt == 2:
        await asyncio.sleep(1.0)  # the sink's timeout is 0.3 s
        return web.Response(status=200)
    if attempt == 3:
        return web.Response(status=429, headers={"Retry-After": "1"})
    return web.Response(status=200)


async def reject(webhook_id: str, attempt: int) -> web.Response:
    return web.Response(status=400, text="unknown customer")


async def slow(webhook_id: str, attempt: int) -> web.Response:
    await asyncio.sleep(SLOW_SECONDS)
    return web.Response(status=200)


@dataclass
class Run:
    receiver: Receiver
    secret: str
    decision_ids: set[str]
    dead_letters: list[dict]


def destinations(receiver: Receiver, down_port: int) -> str:
    common = "    streams: [triggers.push]\n    secret_env: SHOP_WEBHOOK_SECRET\n"
    return f"""
close_timeout: 60s
destinations:
  - name: flaky
    url: {receiver.url("flaky")}
{common}    timeout: 300ms
    max_attempts: 6
    backoff: {{start: 50ms, cap: 200ms}}
  - name: reject
    url: {receiver.url("reject")}
{common}  - name: down
    url: http://127.0.0.1:{down_port}/hooks
{common}    max_attempts: 3
    backoff: {{start: 20ms, cap: 50ms}}
  - name: slow
    url: {receiver.url("slow")}
{common}    concurrency: 4
  - name: fast
    url: {receiver.url("fast")}
{common}    headers: {{x-tenant: shop-1}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One flow: 40 carts abandoned, so 40 push reminders, sent to five destinations."""
    folder = tmp_path_factory.mktemp("webhooks")
    secret = new_secret()
    with Receiver({"flaky": flaky, "reject": reject, "slow": slow, "fast": ok}) as receiver:
        (folder / "rules.yaml").write_text(CART_RULE)
        (folder / "webhooks.yaml").write_text(destinations(receiver, free_port()))
        events = [added(f"c{i}", minutes=i * 0.1) for i in range(CUSTOMERS)]
        events.append(track("Page Viewed", "late", minutes=120))  # moves the clock past every reminder
        settings = Settings(out=folder / "out", rules=folder / "rules.yaml", webhooks=folder / "webhooks.yaml")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("SHOP_WEBHOOK_SECRET", secret)
            flow = build_flow(settings, source=TestingSource(source_records(events)))
        run_main(flow)  # returns once every delivery is done (or dead-lettered)
    out = folder / "out"
    ids = {orjson.loads(line)["id"] for line in (out / "triggers.push.jsonl").read_bytes().splitlines()}
    dead = [orjson.loads(line) for line in (out / DEAD_LETTER_FILE).read_bytes().splitlines()]
    return Run(receiver, secret, ids, dead)


def test_every_decision_arrives_after_a_500_a_timeout_and_a_429(run):
    flaky_requests = run.receiver.on("flaky")
    assert len(run.decision_ids) == CUSTOMERS
    by_id: dict[str, list] = {}
    for request in flaky_requests:
        by_id.setdefault(request.headers["webhook-id"], []).append(request)
    assert set(by_id) == run.decision_ids, "every decision of the output file, and nothing else"
    for webhook_id, attempts in by_id.items():
        assert len(attempts) == 4, "500, timeout, 429, then delivered: each retry under the same webhook-id"
        assert len({a.body for a in attempts}) == 1
        assert attempts[3].at - attempts[2].at >= 0.95, "the 429's Retry-After: 1 was honoured"
        event = CloudEvent.model_validate_json(attempts[0].body)
        assert event.id == webhook_id and event.type == "io.nudgeflow.trigger.v1"
        assert attempts[0].headers["Content-Type"] == "application/cloudevents+json"
    assert WEBHOOK_DELIVERIES.labels(destination="flaky", result="delivered")._value.get() == CUSTOMERS
    for outcome in ("http_5xx", "timeout", "http_429", "ok"):
        assert WEBHOOK_ATTEMPTS.labels(destination="flaky", outcome=outcome)._value.get() == CUSTOMERS


def test_every_request_verifies_with_the_standard_webhooks_library(run):
    verifier = Webhook(run.secret)
    assert len(run.receiver.requests) > 4 * CUSTOMERS
    for request in run.receiver.requests:
        verifier.verify(request.body, request.headers)
    tampered = run.receiver.requests[0]
    with pytest.raises(Exception, match="signature"):
        verifier.verify(tampered.body.replace(b"push", b"sms!"), tampered.headers)
    assert all(r.headers["x-tenant"] == "shop-1" for r in run.receiver.on("fast")), "the destination's own header"


def test_a_400_is_not_retried_and_goes_to_the_dead_letters_with_the_status(run):
    requests = run.receiver.on("reject")
    assert sorted(r.headers["webhook-id"] for r in requests) == sorted(run.decision_ids), "one attempt each"
    dead = {d["position"]["id"]: d for d in run.dead_letters if d["position"]["source"] == "webhooks/reject"}
    assert set(dead) == run.decision_ids
    for webhook_id, record in dead.items():
        DeadLetter.model_validate(record)
        assert record["processor"] == "nudgeflow.webhooks" and record["reason"] == "webhook_undeliverable"
        assert record["messages"] == ["destination 'reject': HTTP 400 (not retried) (1 attempt)"]
        assert orjson.loads(base64.b64decode(record["payload_base64"]))["id"] == webhook_id


def test_an_unreachable_destination_is_dead_lettered_after_its_last_attempt(run):
    dead = [d for d in run.dead_letters if d["position"]["source"] == "webhooks/down"]
    assert {d["position"]["id"] for d in dead} == run.decision_ids
    assert all("connection failed" in d["messages"][0] and "(3 attempts)" in d["messages"][0] for d in dead)
    assert len(run.dead_letters) == 2 * CUSTOMERS, "nothing else was dead-lettered"


def test_a_slow_destination_does_not_delay_a_fast_one(run):
    fast = sorted(r.at for r in run.receiver.on("fast"))
    slow = sorted(r.at for r in run.receiver.on("slow"))
    assert len(fast) == len(slow) == CUSTOMERS
    # the slow one takes 0.25 s per request, 4 at a time: about 2.5 s for all
    assert slow[-1] - slow[0] >= (CUSTOMERS / 4 - 1) * SLOW_SECONDS
    assert fast[-1] - fast[0] < 1.0
    assert sum(at <= fast[-1] for at in slow) < CUSTOMERS / 2, "the fast one was done long before the slow one"
