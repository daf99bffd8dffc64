"""A webhook receiver that is down across an engine ``kill -9`` loses nothing: the recovery snapshot
holds the deliveries not done, and the resumed engine sends every one of them."""

from __future__ import annotations

import pickle
import signal
import sqlite3
import time
from pathlib import Path

import orjson
from standardwebhooks import Webhook
from test_kafka_flow import nudgeflow
from webhook_receiver import Receiver, new_secret, ok

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


def test_a_receiver_down_across_a_kill_9_loses_no_decision(tmp_path):
    recording = tmp_path / "events.jsonl"
    with recording.open("wb") as out:
        write_jsonl(generate_events(40, 3, seed=3, start=DEFAULT_START), out)
    reference = nudgeflow("replay", str(recording), "--out", str(tmp_path / "reference"), "--quiet", env={})
    assert reference.wait(120) == 0, reference.stdout.read().decode() if reference.stdout else ""
    expected = trigger_ids(tmp_path / "reference")
    assert len(expected) > 20

    port = free_port()
    (tmp_path / "webhooks.yaml").write_text(
        f"""close_timeout: 120s
destinations:
  - name: crm
    url: http://127.0.0.1:{port}/crm
    streams: [{", ".join(sorted(TRIGGER_STREAMS))}]
    secret_env: CRM_WEBHOOK_SECRET
    max_attempts: 100
    backoff: {{start: 50ms, cap: 200ms}}
"""
    )
    secret = new_secret()
    env = {
        "NUDGEFLOW_WEBHOOKS": str(tmp_path / "webhooks.yaml"),
        "NUDGEFLOW_SNAPSHOT_SECONDS": "0.2",
        "CRM_WEBHOOK_SECRET": secret,
    }
    recovery = tmp_path / "recovery"
    args = ("run", str(recording), "--out", str(tmp_path / "out"), "--recovery-dir", str(recovery), "--quiet")

    first = nudgeflow(*args, env=env)  # the receiver is down: every delivery keeps failing
    try:
        deadline = time.monotonic() + 60
        while held_in_snapshots(recovery) < len(expected):
            assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
            assert time.monotonic() < deadline, "no snapshot held the undelivered decisions within 60 s"
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)

    with Receiver({"crm": ok}, port=port) as receiver:
        second = nudgeflow(*args, "--force", env=env)
        output, _ = second.communicate(timeout=120)
        assert second.returncode == 0, output.decode()

    received = {r.headers["webhook-id"] for r in receiver.requests}
    assert received == expected, f"{len(expected - received)} missing, {len(received - expected)} unexpected"
    verifier = Webhook(secret)
    for request in receiver.requests:
        verifier.verify(request.body, request.headers)
