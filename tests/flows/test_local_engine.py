"""The engine run in-process, fed through the local backend: live decisions, profiles and audiences,
the same decisions as a replay of its journal, and a restart that rebuilds its state from the journal."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from api_client import api, bearer, run
from conftest import CART_RULE, added, track
from prometheus_client import REGISTRY
from standardwebhooks import Webhook
from webhook_receiver import Receiver, new_secret, ok

from connectors.synthetic import generate_events
from flows.cli import main
from flows.local_engine import EngineFailed, LocalEngine, start_local_engine
from flows.settings import Settings
from operators.rules import STARTER_RULES
from schemas.streams import AUDIENCE_CHANGES, DEAD_LETTERS, ERASURES, EXPERIMENTS, OUTPUT_FILES, STATS, TRIGGER_STREAMS

WAIT_SECONDS = 30.0
SHARDS = 4


def eventually(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.05)


def lines(out: Path, stream: str) -> list[bytes]:
    return (out / OUTPUT_FILES[stream]).read_bytes().splitlines()


def decisions(out: Path) -> dict[str, list[bytes]]:
    """Every output stream's records (decisions, dead letters, attributions, erasures...), sorted (live
    files are in arrival order); not the run's counters."""
    return {stream: sorted(lines(out, stream)) for stream in sorted(OUTPUT_FILES) if stream != STATS}


def memberships(out: Path) -> dict[str, set[str]]:
    """Each audience's members, from the audience changes in the output folder."""
    members: dict[str, set[str]] = {}
    for line in lines(out, AUDIENCE_CHANGES):
        record = orjson.loads(line)
        audience = members.setdefault(record["data"]["audience"], set())
        (audience.add if record["data"]["change"] == "entered" else audience.discard)(record["subject"])
    return {audience: found for audience, found in members.items() if found}


def triggers_by_customer(out: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for stream in TRIGGER_STREAMS:
        for line in lines(out, stream):
            record = orjson.loads(line)
            found.setdefault(record["subject"], set()).add(record["id"])
    return found


def decisions_timed() -> float:
    """Decisions whose latency, from their event's arrival to their file, was observed so far."""
    return REGISTRY.get_sample_value("nudgeflow_decision_latency_seconds_count", {"origin": "event"}) or 0.0


def send_all(engine: LocalEngine, events: list[bytes], batch: int = 40) -> None:
    async def send() -> list[str | None]:
        results: list[str | None] = []
        for n in range(0, len(events), batch):
            results += await engine.backend.send([(None, line) for line in events[n : n + batch]])
        return results

    assert asyncio.run(send()) == [None] * len(events), "every event accepted"


def answers_match_the_files(engine: LocalEngine, out: Path) -> bool:
    """The backend's audiences and profiles agree with the decisions appended to the files."""
    backend, expected = engine.backend, memberships(out)
    audiences = asyncio.run(backend.audiences())
    if audiences != [{"id": audience, "size": len(members)} for audience, members in sorted(expected.items())]:
        return False
    for customer, ids in triggers_by_customer(out).items():
        profile = asyncio.run(backend.profile(customer))
        if profile is None or {d["id"] for d in profile["decisions"]} != ids:
            return False
        if set(profile["audiences"]) != {audience for audience, members in expected.items() if customer in members}:
            return False
    return True


def profiles_count_the_orders(engine: LocalEngine, stream: list[bytes]) -> bool:
    """Every identified customer's profile counts the orders sent for it (duplicates once)."""
    orders: dict[str, set[str]] = {}
    for event in map(orjson.loads, stream):
        if user := event.get("userId"):
            found = orders.setdefault(user, set())
            if event.get("event") == "Order Completed":
                found.add(event["messageId"])
    for customer, ids in orders.items():
        profile = asyncio.run(engine.backend.profile(customer))
        if profile is None or profile["features"].get("orders") != len(ids):  # empty until the engine sends one
            return False
    return True


EXPERIMENT = """
experiments:
  tests:
    - id: cart_copy
      rule: cart_abandonment_push
      arms:
        - {id: personalized, share: 0.5}
        - {id: control, share: 0.5, send: false}
"""


@pytest.fixture
def rules(tmp_path) -> Path:
    """The starter rules with an experiment (its report is written when the engine stops)."""
    folder = tmp_path / "rules"
    folder.mkdir()
    shutil.copy(STARTER_RULES.parent / "offers.yaml", folder)
    path = folder / "rules.yaml"
    path.write_text(STARTER_RULES.read_text() + EXPERIMENT)
    return path


@pytest.fixture(scope="module")
def stream() -> list[bytes]:
    events = list(generate_events(12, 4, seed=5, defects=0.02))
    return [orjson.dumps(event) for event in events]


@pytest.mark.parametrize("workers", [1, 2], ids=["one worker", "two workers"])
def test_the_engine_in_process_answers_live_and_decides_as_a_replay_of_its_journal(tmp_path, stream, rules, workers):
    out = tmp_path / "live"
    settings = Settings(shards=SHARDS, rules=rules)
    timed_before = decisions_timed()
    engine = start_local_engine(settings, out, workers)
    try:
        eventually(engine.ready, "the engine is ready")
        assert asyncio.run(engine.backend.checks()) == {"engine": "ok"}
        half = len(stream) // 2
        send_all(engine, stream[:half])
        eventually(lambda: any(lines(out, s) for s in TRIGGER_STREAMS), "triggers appended before the stop")
        send_all(engine, stream[half:])
        eventually(lambda: answers_match_the_files(engine, out), "profiles and audiences answered live")
        eventually(lambda: profiles_count_the_orders(engine, stream), "profiles of every identified customer")
        assert triggers_by_customer(out), "the stream drives decisions"
        assert memberships(out), "and audiences"
        assert lines(out, DEAD_LETTERS), "the defects in the stream are dead-lettered"
        assert decisions_timed() > timed_before, "event-to-decision latency is measured (the dashboard shows it)"
        live = decisions(out)
        started = time.monotonic()
    finally:
        engine.stop()
    assert time.monotonic() - started < 10, "stop joins the flow within seconds"
    assert lines(out, EXPERIMENTS), "the experiment's report is written at the stop"
    assert {**decisions(out), EXPERIMENTS: []} == live, "every decision was in the files before the stop"
    live = decisions(out)
    assert asyncio.run(engine.backend.checks()) == {"engine": "stopped"}

    journal = out / "events.jsonl"
    assert journal.read_bytes() == b"".join(line + b"\n" for line in stream), "the journal holds what was accepted"
    replayed = tmp_path / "replay"
    replay = ["replay", str(journal), "--out", str(replayed), "--shards", str(SHARDS), "--rules", str(rules)]
    assert main([*replay, "--quiet"]) == 0
    assert decisions(replayed) == live, "the same decisions, ids and all, as a replay of the journal"
    summary = orjson.loads((out / OUTPUT_FILES[STATS]).read_bytes())
    assert summary == orjson.loads((replayed / OUTPUT_FILES[STATS]).read_bytes()), "and the same summary"
    assert summary["lines"]["read"] == len(stream) and summary["lines"]["unaccounted"] == 0

    restarted = start_local_engine(settings, out, workers)  # state and files rebuilt from the journal
    try:
        eventually(restarted.ready, "the restarted engine has read the journal")
        eventually(lambda: answers_match_the_files(restarted, out), "profiles answered after a restart")
        eventually(lambda: profiles_count_the_orders(restarted, stream), "every profile after a restart")
    finally:
        restarted.stop()
    assert decisions(out) == live


def test_a_failing_flow_is_logged_and_reported_by_the_readiness_check_and_by_stop(tmp_path, monkeypatch, caplog):
    import flows.local_engine

    def broken(flow, settings, workers):
        raise OSError("disk on fire")

    monkeypatch.setattr(flows.local_engine, "run_dataflow", broken)
    engine = start_local_engine(Settings(shards=SHARDS), tmp_path / "out")
    engine.thread.join(WAIT_SECONDS)
    assert not engine.ready()
    assert asyncio.run(engine.backend.checks()) == {"engine": "stopped: OSError: disk on fire"}
    assert "the engine stopped with an error" in caplog.text and "disk on fire" in caplog.text
    with pytest.raises(EngineFailed, match="disk on fire"):
        engine.stop()


@pytest.mark.parametrize("given", [False, True], ids=["folder's ledger", "a ledger file given"])
def test_an_erased_customer_is_gone_from_the_answers_and_stays_gone_after_a_restart(tmp_path, stream, given):
    ledger = tmp_path / "ledger.jsonl" if given else None  # another ledger read first (none here yet)
    out, settings = tmp_path / "live", Settings(shards=SHARDS, erasure_ledger=ledger)
    customer = "u-000003"
    last = max(orjson.loads(line)["timestamp"] for line in stream)
    erasure = {
        "type": "track",
        "event": "Erasure Requested",
        "messageId": "erase-1",
        "userId": customer,
        "timestamp": last,
        "receivedAt": last,
        "properties": {"request_id": "dsr-1"},
    }

    def gone(engine: LocalEngine) -> bool:
        in_audience = any(customer in members for members in memberships(out).values())
        return asyncio.run(engine.backend.profile(customer)) is None and not in_audience

    engine = start_local_engine(settings, out)
    try:
        send_all(engine, stream)
        eventually(lambda: asyncio.run(engine.backend.profile(customer)) is not None, "the customer's profile")
        send_all(engine, [orjson.dumps(erasure)])
        eventually(lambda: gone(engine), "profile, decisions and memberships removed")
        eventually(lambda: lines(out, ERASURES), "the erasure is in the ledger")
    finally:
        engine.stop()

    restarted = start_local_engine(settings, out)
    try:
        eventually(restarted.ready, "the restarted engine has read the journal")
        eventually(lambda: answers_match_the_files(restarted, out), "the others' profiles answered")
        assert gone(restarted), "the customer's earlier events in the journal are skipped"
    finally:
        restarted.stop()
    assert len(lines(out, ERASURES)) == 1, "the ledger holds the erasure once"


def test_the_http_api_over_the_engine_in_process_takes_events_and_answers_from_its_state(tmp_path, stream):
    engine = start_local_engine(Settings(shards=SHARDS), tmp_path / "live")
    out, customer = tmp_path / "live", "u-000003"

    async def scenario(client) -> None:
        sent = await client.post("/v1/events", data=b'{"batch":[' + b",".join(stream) + b"]}", headers=bearer("ingest"))
        assert sent.status in (200, 207)  # 207: the stream's defects are refused one by one
        assert (await sent.json())["accepted"] >= len(stream) * 0.95
        deadline = time.monotonic() + WAIT_SECONDS
        while not await answered(client):
            assert time.monotonic() < deadline, "profiles and audiences answered over HTTP"
            await asyncio.sleep(0.05)
        assert (await client.get("/readyz")).status == 200
        erased = await client.delete(f"/v1/customers/{customer}", headers=bearer("admin"))
        assert erased.status == 202
        while (await client.get(f"/v1/customers/{customer}", headers=bearer("read"))).status != 404:
            assert time.monotonic() < deadline + WAIT_SECONDS, "the erased customer's profile is gone"
            await asyncio.sleep(0.05)

    async def answered(client) -> bool:
        audiences = await (await client.get("/v1/audiences", headers=bearer("read"))).json()
        expected = memberships(out)
        if audiences.get("audiences") != [{"id": a, "size": len(m)} for a, m in sorted(expected.items())]:
            return False
        profile = await client.get(f"/v1/customers/{customer}", headers=bearer("read"))
        return profile.status == 200 and (await profile.json())["customer_id"] == customer

    try:
        run(api(engine.backend), scenario)
    finally:
        engine.stop()


def test_the_engine_in_process_sends_its_decisions_to_webhooks_as_it_makes_them(tmp_path, monkeypatch):
    """``serve`` without Kafka: triggers reach a real receiver, signed, while the engine runs (not at its stop)."""
    secret = new_secret()
    monkeypatch.setenv("SHOP_WEBHOOK_SECRET", secret)
    (tmp_path / "rules.yaml").write_text(CART_RULE)
    with Receiver({"push": ok}) as receiver:
        (tmp_path / "webhooks.yaml").write_text(
            f"destinations:\n  - name: push\n    url: {receiver.url('push')}\n"
            "    streams: [triggers.push]\n    secret_env: SHOP_WEBHOOK_SECRET\n"
        )
        settings = Settings(shards=SHARDS, rules=tmp_path / "rules.yaml", webhooks=tmp_path / "webhooks.yaml")
        out = tmp_path / "live"
        engine = start_local_engine(settings, out)
        try:
            eventually(engine.ready, "the engine is ready")
            carts = [added(f"c{n}", minutes=n * 0.1) for n in range(5)]
            send_all(engine, [orjson.dumps(event) for event in [*carts, track("Page Viewed", "late", minutes=120)]])
            receiver.wait_for(lambda r: len(r.on("push")) >= len(carts))
        finally:
            engine.stop()
    sent = {orjson.loads(line)["id"] for line in lines(out, "triggers.push")}
    verifier = Webhook(secret)
    received = {verifier.verify(r.body, r.headers)["id"] for r in receiver.on("push")}
    assert len(sent) == len(carts) and received == sent
