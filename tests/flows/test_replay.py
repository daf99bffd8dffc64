"""Replays through the real file source and sink: determinism, golden output, diff, the CLI."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import added, call, order, track

import flows.cli
from connectors import files
from flows.cli import main
from operators.rules import STARTER_RULES
from schemas.errors import OutputError

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[2]


def write_stream(path: Path, events: list) -> Path:
    with path.open("wb") as out:
        for event in events:
            out.write((event if isinstance(event, bytes) else orjson.dumps(event)) + b"\n")
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def starter_rules_elsewhere() -> str:
    """The starter rules' text, for a copy in another folder (its offers file named absolutely)."""
    return STARTER_RULES.read_text().replace("offers: offers.yaml", f"offers: {STARTER_RULES.parent / 'offers.yaml'}")


def replay(stream: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> dict[str, bytes]:
    """Run ``nudgeflow replay`` in a fresh interpreter (so hash seeds can differ)."""
    cmd = [sys.executable, "-m", "flows.cli", "replay", str(stream), "--out", str(out), "--quiet", *extra]
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)
    return files_of(out)


def test_replays_are_byte_identical_across_runs_hash_seeds_workers_and_batch_sizes(tmp_path):
    stream = GOLDEN / "stream.jsonl.gz"
    first = replay(stream, tmp_path / "a", env={"PYTHONHASHSEED": "1"})
    second = replay(stream, tmp_path / "b", env={"PYTHONHASHSEED": "4242"})
    workers = replay(stream, tmp_path / "c", "-w", "2", env={"PYTHONHASHSEED": "7"})
    batches = replay(stream, tmp_path / "d", env={"NUDGEFLOW_BATCH_SIZE": "37"})
    assert first == second == workers == batches
    assert first["triggers.push.jsonl"] and first["audience_changes.jsonl"] and first["dead_letters.jsonl"]


def test_a_replay_shared_among_processes_writes_what_one_process_writes(tmp_path):
    """``--processes N`` starts N processes that each parse their own chunks of the recording: the
    output folder (decisions, dead letters, models, summary) is the one of a single process."""
    stream = GOLDEN / "stream.jsonl.gz"
    one = replay(stream, tmp_path / "one")
    assert replay(stream, tmp_path / "two", "--processes", "2") == one
    two_by_two = replay(stream, tmp_path / "2x2", "--processes", "2", "-w", "2", env={"NUDGEFLOW_BATCH_SIZE": "37"})
    assert two_by_two == one


def test_processes_that_read_in_step_with_the_slowest_write_what_one_process_writes(tmp_path, monkeypatch):
    """With no read-ahead at all, each process waits for the others' chunks before reading its next:
    the replay still ends, with the outputs of one process."""
    stream = GOLDEN / "stream.jsonl.gz"
    one = replay(stream, tmp_path / "one")
    monkeypatch.setattr(files, "READ_AHEAD_ROUNDS", 0)  # the forked processes inherit it
    monkeypatch.setenv("NUDGEFLOW_BATCH_SIZE", "50")
    out = tmp_path / "two"
    assert main(["replay", str(stream), "--out", str(out), "--processes", "2", "--quiet"]) == 0
    assert files_of(out) == one


def test_a_shared_replay_that_loses_a_process_stops_the_others_and_writes_nothing(tmp_path, monkeypatch, capfd):
    real_run = flows.cli.run_dataflow

    def second_process_fails(flow, settings, workers, process_id, addresses):
        if process_id == 1:
            raise OutputError("cannot write the run's folder: No space left on device")
        real_run(flow, settings, workers, process_id, addresses)  # waits for its peer until stopped

    monkeypatch.setattr(flows.cli, "run_dataflow", second_process_fails)
    stream = write_stream(tmp_path / "s.jsonl", [added("u1", 0), order("u1", 5)])
    out = tmp_path / "out"

    assert main(["replay", str(stream), "--out", str(out), "--processes", "2", "--quiet"]) == 2
    error = capfd.readouterr().err
    assert "No space left on device" in error
    assert "nudgeflow: process 1 of the replay exited with 2; nothing was written" in error
    assert not out.exists() and list(tmp_path.iterdir()) == [stream], "no folder left behind"


def test_golden_replay(tmp_path):
    """The checked-in stream gives exactly the checked-in outputs (regenerate with UPDATE_GOLDEN=1)."""
    got = replay(GOLDEN / "stream.jsonl.gz", tmp_path / "out")
    expected_dir = GOLDEN / "expected"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_dir.mkdir(exist_ok=True)
        for name, body in got.items():
            (expected_dir / name).write_bytes(body)
    assert got == files_of(expected_dir)


def test_non_utf8_and_malformed_lines_become_dead_letters_not_a_crash(tmp_path):
    stream = write_stream(
        tmp_path / "bad.jsonl",
        [
            order("u1", 0),
            b"\xc3\x28 not utf-8",
            b'{"type": "track", "event": "Order Completed", "messageId": "x", "userId": "u1"}',
            b'{"type": "track", "event": "Product Viewed", "messageId": "n", "userId": "u1", '
            b'"timestamp": "2026-01-05T10:00:00Z", "properties": {"product_id": "p", "price": NaN}}',
            b"[]",
            b'{"type": "track", "event": "Signed Up", "messageId": "big", "userId": "u2", '
            b'"timestamp": "2026-01-05T10:00:00Z", "properties": {"blob": "' + b"x" * 40_000 + b'"}}',
            track("Signed Up", "u3", 1),
        ],
    )
    files = replay(stream, tmp_path / "out")
    dead = [orjson.loads(line) for line in files["dead_letters.jsonl"].splitlines()]
    assert [(d["position"]["line"], d["reason"]) for d in dead] == [
        (2, "not_utf8"),
        (3, "schema_invalid"),
        (4, "invalid_json"),
        (5, "schema_invalid"),
        (6, "too_large"),
    ]
    assert "timestamp: Field required" in dead[1]["messages"]
    assert dead[4]["payload_truncated"] is True and dead[4]["payload_size"] > 40_000
    welcome = [orjson.loads(line) for line in files["triggers.push.jsonl"].splitlines()]
    assert [w["subject"] for w in welcome] == ["u3"], "the flow kept running after the bad lines"
    summary = orjson.loads(files["summary.json"])
    assert summary["dead_letters"] == {"invalid_json": 1, "not_utf8": 1, "schema_invalid": 2, "too_large": 1}


def test_replay_diff_reports_added_removed_and_changed(tmp_path, capsys):
    stream = write_stream(
        tmp_path / "s.jsonl",
        [
            track("Signed Up", "u1", 0),
            added("u2", 0),
            track("Product Viewed", "u3", 10, props={"product_id": "p"}),
            track("Page", "u9", 200),
        ],
    )
    rules_b = tmp_path / "b.yaml"
    text = starter_rules_elsewhere()
    text = text.replace("after: 30m", "after: 45m")  # cart reminder later: changed
    text = text.replace(
        "    once_per: customer\n    priority: 1\n", '    once_per: customer\n    when: "false"\n', 1
    )  # removed
    rules_b.write_text(text + '  - id: everyone\n    when: "orders == 0"\n')  # new audience: added
    assert main(["replay", str(stream), "--diff", str(rules_b), "--out", str(tmp_path / "d"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    diff = orjson.loads((tmp_path / "d" / "diff.json").read_bytes())
    assert [(c["rule_id"], c["customer"]) for c in diff["removed"]] == [("onboarding_welcome_push", "u1")]
    assert [(c["rule_id"], sorted(c["fields"])) for c in diff["changed"]] == [
        ("cart_abandonment_push", ["expires_at", "time"])
    ]
    assert sorted(c["customer"] for c in diff["added"] if c["rule_id"] == "everyone") == ["u1", "u2", "u3", "u9"]
    assert "removed 1: onboarding_welcome_push 1" in printed


def test_output_folder_must_be_empty_unless_forced(tmp_path, capsys):
    stream = write_stream(tmp_path / "s.jsonl", [track("Signed Up", "u1", 0)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["replay", str(stream), "--out", str(out), "--quiet"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
    assert main(["replay", str(stream), "--out", str(out), "--quiet", "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "triggers.push.jsonl").exists()


def test_rules_check_prints_what_rules_listen_to_and_rejects_bad_files(tmp_path, capsys):
    assert main(["rules", "check"]) == 0
    out = capsys.readouterr().out
    assert "trigger cart_abandonment_push: push, timer 30m after Product Added" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        'version: v1\ntriggers:\n  - id: oops\n    channel: push\n    on: Signed Up\n    when: "ordrs > 1"\n'
    )
    assert main(["rules", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:6: rule 'oops' field 'when': unknown name 'ordrs'" in err


def test_run_without_arguments_replays_the_bundled_sample(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["run", "--out", str(out)]) == 0
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["customers"] > 100
    assert summary["outputs"]["triggers.push.jsonl"] > 0
    assert "records from sample.jsonl.gz" in capsys.readouterr().err


def test_generate_is_deterministic_and_writes_to_stdout(tmp_path):
    cmd = [sys.executable, "-m", "flows.cli", "generate", "--customers", "30", "--days", "2", "--seed", "5"]
    first = subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=120).stdout
    second = subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=120).stdout
    assert first == second and first.count(b"\n") > 100
    to_file = tmp_path / "g.jsonl"
    assert main(["generate", "--customers", "30", "--days", "2", "--seed", "5", "--out", str(to_file)]) == 0
    assert to_file.read_bytes() == first


@pytest.mark.parametrize("flag", ["--rules", "--diff"])
def test_a_missing_rule_file_is_a_clear_error(tmp_path, capsys, flag):
    stream = write_stream(tmp_path / "s.jsonl", [call("identify", "u1", 0)])
    args = ["replay", str(stream), "--out", str(tmp_path / "o"), flag, str(tmp_path / "nope.yaml")]
    assert main(args) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_the_flow_module_builds_nothing_until_its_factory_is_called(tmp_path, monkeypatch):
    import flows.personalization as personalization

    monkeypatch.setenv("NUDGEFLOW_OUT", str(tmp_path / "out"))
    assert not hasattr(personalization, "flow"), "no flow is built by looking up a module attribute"
    assert not (tmp_path / "out").exists(), "and no output folder is prepared"


def test_bytewax_runner_runs_the_flow_of_the_factory(tmp_path):
    env = {**os.environ, "NUDGEFLOW_INPUT": str(GOLDEN / "stream.jsonl.gz"), "NUDGEFLOW_OUT": str(tmp_path / "bw")}
    cmd = [sys.executable, "-m", "bytewax.run", "flows.personalization:get_flow()", "-w", "2"]
    subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=300)
    by_runner = files_of(tmp_path / "bw")
    expected = files_of(GOLDEN / "expected")
    by_runner.pop("summary.json"), expected.pop("summary.json")  # the CLI adds file counts to its summary
    assert by_runner == expected


def test_every_output_record_follows_the_published_contract():
    """The golden outputs validate against the output models in schemas.records."""
    from schemas.records import (
        ATTRIBUTION_TYPE,
        AUDIENCE_TYPE,
        SUPPRESSION_TYPE,
        TRIGGER_TYPE,
        AttributionData,
        AudienceData,
        CloudEvent,
        DeadLetter,
        SuppressionData,
        TriggerData,
    )

    expected = GOLDEN / "expected"
    counted = 0
    for path in sorted(expected.glob("*.jsonl")):
        if path.name == "experiments.jsonl":  # a report by period, not records
            continue
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            counted += 1
            if path.name == "dead_letters.jsonl":
                DeadLetter.model_validate(record)
                continue
            envelope = CloudEvent.model_validate(record)
            models = {
                TRIGGER_TYPE: TriggerData,
                AUDIENCE_TYPE: AudienceData,
                SUPPRESSION_TYPE: SuppressionData,
                ATTRIBUTION_TYPE: AttributionData,
            }
            data_model = models[envelope.type]
            data_model.model_validate(envelope.data)
            files = {
                TriggerData: "triggers.",
                AudienceData: "audience_changes",
                SuppressionData: "suppressions",
                AttributionData: "attributions",
            }
            assert path.name.startswith(files[data_model])
    assert counted > 100


def test_a_models_score_changes_the_flows_decisions(tmp_path):
    """The same replay, rules reading `propensity`: untrained (every score 0.5) against a model
    file trained on the first replay; the persuadable band lets different customers through."""
    band = starter_rules_elsewhere().replace(
        'when: "cart.value > 0"',
        'when: "cart.value > 0 and propensity < 0.6"',
    )
    rules = tmp_path / "band.yaml"
    rules.write_text(band)
    stream = GOLDEN / "stream.jsonl.gz"
    trained = replay(stream, tmp_path / "trained", "--rules", str(rules))
    model_file = tmp_path / "trained" / "models.json"
    untrained = replay(stream, tmp_path / "untrained", "--rules", str(rules), "--models", "frozen")
    frozen = replay(
        stream, tmp_path / "frozen", "--rules", str(rules), "--models", "frozen",
        env={"NUDGEFLOW_MODEL_FILE": str(model_file)},
    )  # fmt: skip

    def cart_pushes(files: dict[str, bytes]) -> set[str]:
        records = [orjson.loads(line) for line in files["triggers.push.jsonl"].splitlines()]
        return {r["id"] for r in records if r["data"]["rule_id"] == "cart_abandonment_push"}

    assert cart_pushes(untrained) and cart_pushes(frozen) != cart_pushes(untrained), "the model changes who is nudged"
    assert all(
        orjson.loads(line)["data"]["score"] < 0.6 for line in frozen["triggers.push.jsonl"].splitlines()
        if orjson.loads(line)["data"]["rule_id"] == "cart_abandonment_push"
    )  # fmt: skip
    assert trained["triggers.push.jsonl"] != untrained["triggers.push.jsonl"]


def test_dropped_lines_unknown_fields_and_repeated_keys_are_accounted_in_the_summary(tmp_path):
    till = {"channel": "pos", "store_id": "st-1"}  # a mapping mistake: context.store.id was meant
    lines = [{"product_id": "milk", "price": 2.0, "quantity": 0}, {"price": 1.0}, {"product_id": "eggs", "qty": 2}]
    stream = write_stream(
        tmp_path / "s.jsonl",
        [
            track("Order Completed", "u1", 0, props={"order_id": "o1", "products": lines}, message_id="m1"),
            track("Store Visited", "u2", 1, props={"store_id": "s"}, context=till, message_id="m2"),
            track("Order Completed", "u3", 2, props={"order_id": "o3", "total": 5.0}, context=till, message_id="m3"),
            b'{"type":"alias","type":"track","event":"Signed Up","messageId":"m4","userId":"u4",'
            b'"timestamp":"2026-01-05T10:03:00Z"}',
        ],
    )
    runs = [replay(stream, tmp_path / "one"), replay(stream, tmp_path / "two", "-w", "2")]
    assert runs[0]["summary.json"] == runs[1]["summary.json"], "the first sighting is the same with any workers"
    summary = orjson.loads(runs[0]["summary.json"])
    assert summary["events"]["Order Completed"] == 2
    assert summary["order_lines_dropped"] == {"missing_product_id": 1}
    assert summary["unknown_fields"] == {
        "context.store_id": {"count": 2, "first_message_id": "m2", "first_position": {"line": 2, "source": "s.jsonl"}},
        "properties.products[].qty": {
            "count": 1,
            "first_message_id": "m1",
            "first_position": {"line": 1, "source": "s.jsonl"},
        },
    }
    assert summary["dead_letters"] == {"duplicate_key": 1}
    dead = orjson.loads(runs[0]["dead_letters.jsonl"])
    assert dead["messages"] == ["type: duplicate key"]


def test_the_run_summary_on_stderr_names_dropped_lines_and_unknown_fields(tmp_path, capsys):
    lines = [{"product_id": "milk", "price": -2.0}, {"product_id": "eggs", "price": 3.0}]
    stream = write_stream(
        tmp_path / "s.jsonl",
        [track("Order Completed", "u1", 0, props={"order_id": "o", "products": lines}, context={"store_id": "s"})],
    )
    assert main(["replay", str(stream), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "order lines dropped: bad_price 1; unknown fields: context.store_id 1 (see summary.json)" in err


def test_an_event_that_cannot_be_applied_is_dead_lettered_and_the_replay_goes_on(tmp_path):
    """Applying a valid event raises (year 7000 is beyond what the windowed counts hold): the event
    becomes a processing_error dead letter, the customer stays as it was, the rest is applied."""
    viewed = {"product_id": "p1", "category": "shoes"}
    stream = write_stream(
        tmp_path / "s.jsonl",
        [
            track("Product Viewed", "u1", 0, props=viewed),
            track("Product Viewed", "u1", 1, props=viewed, timestamp="1970-01-01T00:00:00Z"),
            track("Signed Up", "u2", 2),
            track("Signed Up", "u4", 3),
            track("Page", "u2", 4, timestamp="7000-01-01T00:00:00Z", receivedAt="7000-01-01T00:00:00Z"),
        ],
    )
    files = replay(stream, tmp_path / "out")
    dead = [orjson.loads(line) for line in files["dead_letters.jsonl"].splitlines()]
    assert [(d["position"]["line"], d["reason"]) for d in dead] == [(2, "too_old"), (5, "processing_error")]
    assert dead[1]["messages"][0].startswith("OverflowError: ")
    welcome = [orjson.loads(line) for line in files["triggers.push.jsonl"].splitlines()]
    assert [w["subject"] for w in welcome] == ["u2", "u4"]
    summary = orjson.loads(files["summary.json"])
    assert summary["dead_letters"] == {"processing_error": 1, "too_old": 1}
    assert summary["processing_error"] == 1 and summary["too_old"] == 1
    assert sum(summary["events"].values()) == 3, "the failed event is not counted as accepted"


def test_a_shared_replay_of_awkward_recordings_writes_what_one_process_writes(tmp_path):
    """Each process reads only its own chunks, wherever they begin: in a plain file with blank,
    broken and over-long lines, after an empty file, in a .gz file, in one cut short."""
    lines = gzip.decompress((GOLDEN / "stream.jsonl.gz").read_bytes()).splitlines()
    half = len(lines) // 2
    first = lines[:half]
    first[10:10] = [b"", b"  ", b"{not json", b"\xff\xfe", b'{"huge": "' + b"x" * 40_000 + b'"}']
    (tmp_path / "a.jsonl").write_bytes(b"\r\n".join(first))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    packed = gzip.compress(b"\n".join(lines[half:]) + b"\n")
    (tmp_path / "b.jsonl.gz").write_bytes(packed[: len(packed) * 3 // 4])
    inputs = [str(tmp_path / name) for name in ("a.jsonl", "empty.jsonl", "b.jsonl.gz")]

    def replay_all(out: Path, *extra: str) -> dict[str, bytes]:
        cmd = [sys.executable, "-m", "flows.cli", "replay", *inputs, "--out", str(out), "--quiet", *extra]
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "NUDGEFLOW_BATCH_SIZE": "50"}, timeout=300)
        return files_of(out)

    one = replay_all(tmp_path / "one")
    summary = orjson.loads(one["summary.json"])
    assert summary["lines"]["unaccounted"] == 0 and set(summary["lines"]["files"]) == {
        "a.jsonl",
        "empty.jsonl",
        "b.jsonl.gz",
    }
    assert b"truncated_input" in one["dead_letters.jsonl"] and b"too_large" in one["dead_letters.jsonl"]
    assert replay_all(tmp_path / "three", "--processes", "3") == one


def test_replay_diff_shows_what_a_policy_change_would_have_done(tmp_path, capsys):
    stream = write_stream(tmp_path / "s.jsonl", [track("Page", "u1", 0), track("Page", "u1", 60)])
    rules = "version: v\ntriggers:\n  - {id: promo, channel: push, on: Page}\n"
    (tmp_path / "a.yaml").write_text(rules)
    (tmp_path / "b.yaml").write_text(rules + "policy:\n  caps: [{channel: push, max: 1, per: 4h}]\n")
    args = ["replay", str(stream), "--rules", str(tmp_path / "a.yaml"), "--diff", str(tmp_path / "b.yaml")]
    assert main([*args, "--out", str(tmp_path / "d"), "--quiet"]) == 0
    diff = orjson.loads((tmp_path / "d" / "diff.json").read_bytes())
    assert [(c["rule_id"], c["fields"]["stream"], c["fields"]["suppressed"]) for c in diff["changed"]] == [
        ("promo", ["triggers.push", "suppressions"], [None, "frequency_cap"])
    ]
    assert "by the contact policy: suppressed (frequency_cap) 1" in capsys.readouterr().out
