"""A webhook receiver that is down across an engine ``kill -9`` loses nothing: the recovery snapshot
holds the deliveries not done, and the resumed engine sends every one of them."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import orjson
from standardwebhooks import Webhook
from test_kafka_flow import finish, kafka_env, nudgeflow, produce
from webhook_receiver import Receiver, new_secret, ok

from connectors.files import read_lines
from connectors.kafka import produce_records
from connectors.local_services import free_port
from connectors.synthetic import DEFAULT_START, generate_events, write_jsonl
from schemas.streams import TRIGGER_STREAMS


def held_in_snapshots(recovery: Path) -> int:
    """Deliveries the webhook sink's latest snapshots hold (0 before its first snapshot)."""
    held = 0
    for part in recovery.glob("part-*.sqlite3"):
        try:
            with sqlite3.connect(part) as db:
                rows = db.execute(
                    "SELECT state_key, ser_change FROM snaps WHERE step_id LIKE '%.webhooks'"
                    " AND ser_change IS NOT NULL ORDER BY snap_epoch"
                ).fetchall()
        except sqlite3.OperationalError:  # the engine is still creating the store
            continue
        latest = {key: pickle.loads(blob) for key, blob in rows}  # this test's own engine wrote them
        held += sum(len(state[1]) for state in latest.values())
    return held


def trigger_ids(folder: Path) -> set[str]:
    return {
        orjson.loads(line)["id"]
        for stream in TRIGGER_STREAMS
        for line in (folder / f"{stream}.jsonl").read_bytes().splitlines()
    }


def recording_and_expected(folder: Path, days: int) -> tuple[Path, set[str]]:
    """A generated recording (40 customers, in time order) and the trigger ids a replay of it decides."""
    recording = folder / "events.jsonl"
    with recording.open("wb") as out:
        write_jsonl(generate_events(40, days, seed=3, start=DEFAULT_START), out)
    finish(nudgeflow("replay", str(recording), "--out", str(folder / "reference"), "--quiet", env={}))
    expected = trigger_ids(folder / "reference")
    assert len(expected) > 20
    return recording, expected


def webhooks_env(folder: Path, port: int, secret: str) -> dict[str, str]:
    """Settings of a run that sends every trigger to ``port``, retrying for long, snapshotting often."""
    (folder / "webhooks.yaml").write_text(
        f"""close_timeout: 120s
destinations:
  - name: crm
    url: http://127.0.0.1:{port}/crm
    streams: [{", ".join(sorted(TRIGGER_STREAMS))}]
    secret_env: CRM_WEBHOOK_SECRET
    max_attempts: 1000
    backoff: {{start: 50ms, cap: 200ms}}
"""
    )
    return {
        "NUDGEFLOW_WEBHOOKS": str(folder / "webhooks.yaml"),
        "NUDGEFLOW_SNAPSHOT_SECONDS": "0.2",
        "NUDGEFLOW_RECOVERY_DIR": str(folder / "recovery"),
        "CRM_WEBHOOK_SECRET": secret,
    }


def kill_once_snapshots_hold(process: subprocess.Popen, recovery: Path, deliveries: int) -> None:
    """SIGKILL ``process`` once the webhook sink's snapshots hold at least ``deliveries`` (within 180 s:
    the engine starts in a few seconds alone, slower on a loaded host)."""
    try:
        deadline = time.monotonic() + 180
        while held_in_snapshots(recovery) < deliveries:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, f"no snapshot held {deliveries} undelivered decisions within 180 s"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)


def check_received(receiver: Receiver, secret: str, expected: set[str]) -> None:
    received = {r.headers["webhook-id"] for r in receiver.requests}
    assert received == expected, f"{len(expected - received)} missing, {len(received - expected)} unexpected"
    verifier = Webhook(secret)
    for request in receiver.requests:
        verifier.verify(request.body, request.headers)


def test_a_receiver_down_across_a_kill_9_loses_no_decision(tmp_path):
    """On a recording: killed once every decision waits in the snapshot, resumed with the receiver back."""
    recording, expected = recording_and_expected(tmp_path, days=3)
    port, secret = free_port(), new_secret()
    env = webhooks_env(tmp_path, port, secret)
    args = ("run", str(recording), "--out", str(tmp_path / "out"), "--quiet")

    kill_once_snapshots_hold(nudgeflow(*args, env=env), tmp_path / "recovery", len(expected))  # receiver down

    with Receiver({"crm": ok}, port=port) as receiver:
        finish(nudgeflow(*args, "--force", env=env), timeout=120)
    check_received(receiver, secret, expected)


def test_a_receiver_down_across_a_kill_9_mid_stream_loses_no_decision(kafka_service, tmp_path):
    """On Kafka: killed mid-stream with decisions waiting in the snapshot; the resumed engine sends
    those and decides the rest of the stream."""
    recording, expected = recording_and_expected(tmp_path, days=4)
    lines = list(read_lines(recording))
    middle = DEFAULT_START.replace(day=DEFAULT_START.day + 2).isoformat().replace("+00:00", "")
    first_half = [line for line in lines if orjson.loads(line)["timestamp"] < middle]
    topic = produce(kafka_service, first_half, partitions=2)
    port, secret = free_port(), new_secret()
    prefix = f"whk{os.getpid()}."
    env = kafka_env(kafka_service, topic, prefix, **webhooks_env(tmp_path, port, secret))

    kill_once_snapshots_hold(nudgeflow("run", "--quiet", env=env), tmp_path / "recovery", 1)  # receiver down

    produce_records(kafka_service["KAFKA_BOOTSTRAP_SERVERS"], topic, lines[len(first_half) :])
    with Receiver({"crm": ok}, port=port) as receiver:
        finish(nudgeflow("run", "--until-end", "--quiet", env=env), timeout=180)
    check_received(receiver, secret, expected)
