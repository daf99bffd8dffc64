"""Webhooks and the command line: a destinations file that cannot be used stops the start before
anything is read or written, and a replay (a what-if on recordings) never sends anything."""

from __future__ import annotations

import base64

from conftest import line_of
from webhook_receiver import Receiver, new_secret, ok

from connectors.synthetic import DEFAULT_START, generate_events, write_jsonl
from flows.cli import EXIT_PROBLEM, main
from flows.settings import SAMPLE_STREAM

HOOKS = """destinations:
  - name: crm
    url: http://127.0.0.1:9/hooks
    streams: [triggers.email]
    secret_env: CRM_WEBHOOK_SECRET
"""


def test_a_missing_secret_stops_the_run_before_the_output_folder_is_made(tmp_path, monkeypatch, capsys):
    (tmp_path / "hooks.yaml").write_text(HOOKS)
    monkeypatch.setenv("NUDGEFLOW_WEBHOOKS", str(tmp_path / "hooks.yaml"))
    monkeypatch.delenv("CRM_WEBHOOK_SECRET", raising=False)

    code = main(["run", str(SAMPLE_STREAM), "--out", str(tmp_path / "out")])

    assert code == EXIT_PROBLEM
    error = capsys.readouterr().err
    line = line_of(HOOKS, "secret_env")
    assert f"{tmp_path / 'hooks.yaml'}:{line}: destination 'crm' field 'secret_env'" in error
    assert "environment variable CRM_WEBHOOK_SECRET is not set" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hooks.yaml"], "nothing staged, nothing left behind"


def test_a_malformed_secret_is_refused_without_being_printed(tmp_path, monkeypatch, capsys):
    secret = "whsec_" + base64.b64encode(b"too short").decode()
    (tmp_path / "hooks.yaml").write_text(HOOKS)
    monkeypatch.setenv("NUDGEFLOW_WEBHOOKS", str(tmp_path / "hooks.yaml"))
    monkeypatch.setenv("CRM_WEBHOOK_SECRET", secret)

    assert main(["run", str(SAMPLE_STREAM), "--out", str(tmp_path / "out")]) == EXIT_PROBLEM

    error = capsys.readouterr().err
    assert "the secret in environment variable CRM_WEBHOOK_SECRET decodes to 9 bytes" in error
    assert secret.removeprefix("whsec_") not in error


def test_a_destinations_file_that_is_not_there_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NUDGEFLOW_WEBHOOKS", str(tmp_path / "missing.yaml"))
    assert main(["run", str(SAMPLE_STREAM), "--out", str(tmp_path / "out")]) == EXIT_PROBLEM
    assert f"webhooks file {tmp_path / 'missing.yaml'}: cannot be read" in capsys.readouterr().err


def test_a_replay_sends_no_webhook_even_with_destinations_configured(tmp_path, monkeypatch):
    recording = tmp_path / "events.jsonl"
    with recording.open("wb") as out:
        write_jsonl(generate_events(40, 3, seed=3, start=DEFAULT_START), out)
    with Receiver({"hooks": ok}) as receiver:
        hooks = HOOKS.replace("http://127.0.0.1:9/hooks", receiver.url("hooks")).replace(
            "[triggers.email]", "[triggers.push, triggers.in_app]"
        )
        (tmp_path / "hooks.yaml").write_text(hooks)
        monkeypatch.setenv("NUDGEFLOW_WEBHOOKS", str(tmp_path / "hooks.yaml"))
        monkeypatch.setenv("CRM_WEBHOOK_SECRET", new_secret())
        assert main(["replay", str(recording), "--out", str(tmp_path / "replay"), "--quiet"]) == 0
        assert main(["run", str(recording), "--out", str(tmp_path / "run"), "--quiet"]) == 0
        decided = sum(
            len((tmp_path / "run" / f).read_bytes().splitlines())
            for f in ("triggers.push.jsonl", "triggers.in_app.jsonl")
        )
    assert decided > 0
    assert len(receiver.requests) == decided, "the run sent each decision once; the replay sent none"
