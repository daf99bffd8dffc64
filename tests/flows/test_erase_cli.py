"""``nudgeflow erase`` and the erasure ledger file: requests into a recording, the ledger a replay reads
first, and a replay of data recorded before an erasure that never brings the customer back."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest
from conftest import added, track

from connectors.erasures import append_ledger, carry_ledger, read_ledger_file
from connectors.files import read_lines
from flows.cli import main
from operators.engine import ERASURE
from schemas.erasures import LedgerError, erasure_record, read_ledger
from schemas.events import validate_event
from schemas.timestamps import epoch_ms

GOLDEN = Path(__file__).resolve().parent / "golden" / "stream.jsonl.gz"
LATER = "2026-06-01T00:00:00Z"  # after everything in the golden stream


def test_a_ledger_keeps_each_customer_s_latest_erasure_and_names_a_bad_record():
    records = [
        erasure_record("u1", epoch_ms("2026-01-05T10:00:00Z"), "r1", "gdpr"),
        b"",
        erasure_record("u2", epoch_ms("2026-01-06T10:00:00Z"), "r2", "ccpa"),
        erasure_record("u1", epoch_ms("2026-01-07T10:00:00Z"), "r3", "gdpr"),
        erasure_record("u1", epoch_ms("2026-01-01T10:00:00Z"), "r0", "gdpr"),  # older: changes nothing
    ]
    assert read_ledger(records, "x") == {"u1": epoch_ms("2026-01-07T10:00:00Z"), "u2": epoch_ms("2026-01-06T10:00:00Z")}
    with pytest.raises(LedgerError, match=r"erasure ledger x, record 2: erased_at must be an ISO 8601 time"):
        read_ledger([records[0], b'{"customer_id": "u3"}'], "x")
    with pytest.raises(LedgerError, match=r"record 1: not JSON"):
        read_ledger([b"{oops"], "x")


def test_the_ledger_file_is_read_carried_into_a_run_s_folder_and_added_to(tmp_path):
    assert read_ledger_file(tmp_path / "none.jsonl") == (b"", {}), "no file yet: nothing erased"
    ledger = tmp_path / "ledger.jsonl"
    first = erasure_record("u1", 1_000, "r1", "gdpr")
    append_ledger(ledger, first)  # no newline at its end
    second = erasure_record("u2", 2_000, "r2", "gdpr") + b"\n"
    append_ledger(ledger, second)
    previous, read = read_ledger_file(ledger)
    assert read == {"u1": 1_000, "u2": 2_000}
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "erasures.jsonl").write_bytes(erasure_record("u3", 3_000, "r3", "gdpr") + b"\n")
    added = carry_ledger(folder, previous)
    assert added == erasure_record("u3", 3_000, "r3", "gdpr") + b"\n"
    assert read_ledger_file(folder / "erasures.jsonl")[1] == {"u1": 1_000, "u2": 2_000, "u3": 3_000}


def test_erase_appends_one_valid_erasure_request_to_a_recording(tmp_path, capsys):
    requests = tmp_path / "requests.jsonl"
    assert main(["erase", "c-42", "--file", str(requests), "--request-id", "dsr-7", "--regulation", "ccpa",
                 "--at", "2026-03-01T12:00:00+01:00"]) == 0  # fmt: skip
    assert main(["erase", "c-43", "--file", str(requests)]) == 0
    first, second = (orjson.loads(line) for line in read_lines(requests))
    assert first["userId"] == "c-42" and first["timestamp"] == "2026-03-01T11:00:00.000Z"
    assert first["properties"] == {"request_id": "dsr-7", "regulation": "ccpa"}
    event, _, _ = validate_event(first)
    assert type(event).__name__ == "ErasureEvent"
    assert second["userId"] == "c-43" and second["properties"]["regulation"] == "gdpr"
    assert second["properties"]["request_id"].startswith("erasure-") and first["messageId"] != second["messageId"]
    told = capsys.readouterr().err
    assert "erasure of customer c-42 requested (request dsr-7, ccpa, at 2026-03-01T11:00:00.000Z)" in told
    assert f"appended to {requests}" in told


def test_erase_appends_to_a_gzip_recording_and_refuses_a_bad_time_or_id(tmp_path, capsys):
    packed = tmp_path / "requests.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"a": 1}\n'))
    assert main(["erase", "c-1", "--file", str(packed)]) == 0
    assert [orjson.loads(line).get("userId") for line in read_lines(packed)] == [None, "c-1"]
    assert main(["erase", "c-1", "--file", str(tmp_path / "x.jsonl"), "--at", "yesterday"]) == 2
    assert "nudgeflow: --at 'yesterday' is not an ISO 8601 time with a time zone" in capsys.readouterr().err
    assert main(["erase", "c" * 201, "--file", str(tmp_path / "x.jsonl")]) == 2
    assert "not a valid erasure request: userId" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists(), "nothing written for a refused request"


def subjects(folder: Path) -> dict[str, set[str]]:
    """Who got triggers, and who entered audiences, in a run's folder."""
    got: dict[str, set[str]] = {"triggers": set(), "audiences": set()}
    for path in folder.glob("triggers.*.jsonl"):
        got["triggers"] |= {orjson.loads(line)["subject"] for line in read_lines(path)}
    for line in read_lines(folder / "audience_changes.jsonl"):
        record = orjson.loads(line)
        if record["data"]["change"] == "entered":
            got["audiences"].add(record["subject"])
    return got


def summary(folder: Path) -> dict:
    return orjson.loads((folder / "summary.json").read_bytes())


def test_a_replay_of_data_recorded_before_an_erasure_never_brings_the_customer_back(tmp_path, monkeypatch):
    """Record, erase a customer (``nudgeflow erase --file``, applied by a run that keeps the ledger),
    replay the original recording with the ledger: the customer gets nothing, and every line counts."""
    before = tmp_path / "before"
    assert main(["replay", str(GOLDEN), "--out", str(before), "--quiet"]) == 0
    got = subjects(before)
    customer = sorted(c for c in got["triggers"] & got["audiences"] if c.startswith("u-"))[0]  # identified
    requests = tmp_path / "requests.jsonl"
    assert main(["erase", customer, "--file", str(requests), "--at", LATER, "--request-id", "dsr-1"]) == 0
    monkeypatch.setenv("NUDGEFLOW_ERASURE_LEDGER", str(tmp_path / "ledger.jsonl"))
    assert main(["replay", str(requests), "--out", str(tmp_path / "erase"), "--quiet"]) == 0
    assert read_ledger_file(tmp_path / "ledger.jsonl")[1] == {customer: epoch_ms(LATER)}

    after = tmp_path / "after"
    assert main(["replay", str(GOLDEN), "--out", str(after), "--quiet"]) == 0
    got_after = subjects(after)
    assert customer not in got_after["triggers"] | got_after["audiences"]
    assert got_after["triggers"] == got["triggers"] - {customer}, "everyone else gets what they got"
    lines, lines_before = summary(after)["lines"], summary(before)["lines"]
    assert lines["erased_events"] > 0 and lines["unaccounted"] == 0
    assert lines["accepted"] == lines_before["accepted"] - lines["erased_events"], "the customer's events, no other"
    assert read_ledger_file(after / "erasures.jsonl")[1] == {customer: epoch_ms(LATER)}, "the folder keeps the ledger"
    assert read_ledger_file(tmp_path / "ledger.jsonl")[0].count(b"\n") == 1, "nothing new to add"


def test_a_run_into_the_same_folder_keeps_its_ledger_without_the_setting(tmp_path):
    requests = tmp_path / "requests.jsonl"
    assert main(["erase", "c-9", "--file", str(requests), "--at", "2026-01-01T00:00:00Z"]) == 0
    out = tmp_path / "out"
    assert main(["replay", str(requests), "--out", str(out), "--quiet"]) == 0
    assert main(["replay", str(GOLDEN), "--out", str(out), "--force", "--quiet"]) == 0
    assert read_ledger_file(out / "erasures.jsonl")[1] == {"c-9": epoch_ms("2026-01-01T00:00:00Z")}
    (out / "erasures.jsonl").write_bytes(b'{"customer_id": "c-9"}\n')
    assert main(["replay", str(GOLDEN), "--out", str(out), "--force", "--quiet"]) == 2, "a damaged ledger stops"


def test_an_erasure_unlinks_every_anonymous_id_in_a_replay_shared_among_processes(tmp_path):
    """u1 was seen with ten anonymous ids (spread over the identity shards of two processes); after its
    erasure, carts started under those ids alone remind their anonymous owners, never u1."""
    anonymous = [f"dev-{n}" for n in range(10)]
    events = [track("Page", "u1", n, anon=anon) for n, anon in enumerate(anonymous)]
    events += [track(ERASURE, "u1", 20, props={"request_id": "dsr-5"})]
    events += [added(None, 30 + n, anon=anon) for n, anon in enumerate(anonymous)]
    events += [track("Page", "u2", 300 + n) for n in range(200)]  # the clock moves on: reminders fall due
    recording = tmp_path / "stream.jsonl"
    recording.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))
    shared, single = tmp_path / "shared", tmp_path / "single"
    settings = ["--shards", "8", "--quiet"]
    assert main(["replay", str(recording), "--out", str(shared), "--processes", "2", *settings]) == 0
    assert main(["replay", str(recording), "--out", str(single), *settings]) == 0
    assert files_of(shared) == files_of(single)
    reminded = {orjson.loads(line)["subject"] for line in read_lines(shared / "triggers.push.jsonl")}
    assert reminded == set(anonymous)
    ledger = [orjson.loads(line) for line in read_lines(shared / "erasures.jsonl")]
    assert [(record["customer_id"], record["request_id"]) for record in ledger] == [("u1", "dsr-5")]


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_both_rule_sets_of_a_diff_read_the_ledger_and_neither_adds_to_it(tmp_path, monkeypatch, capsys):
    customer = "u-000000"
    requests, ledger = tmp_path / "requests.jsonl", tmp_path / "ledger.jsonl"
    assert main(["erase", customer, "--file", str(requests), "--at", LATER]) == 0
    monkeypatch.setenv("NUDGEFLOW_ERASURE_LEDGER", str(ledger))
    assert main(["replay", str(requests), "--out", str(tmp_path / "erase"), "--quiet"]) == 0
    kept = ledger.read_bytes()
    starter = Path(__file__).resolve().parents[2] / "rules" / "starter.yaml"
    assert main(["replay", str(GOLDEN), "--diff", str(starter), "--out", str(tmp_path / "diff")]) == 0
    for run in ("a", "b"):
        assert summary(tmp_path / "diff" / run)["lines"]["erased_events"] > 0
        assert customer not in subjects(tmp_path / "diff" / run)["triggers"]
    assert ledger.read_bytes() == kept
