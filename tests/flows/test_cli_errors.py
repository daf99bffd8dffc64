"""The command line tells a problem the operator can fix (one line, exit 2) from a bug (a traceback)."""

from __future__ import annotations

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from conftest import order, track
from test_inputs_outputs import lines

import flows.cli
from flows.cli import EXIT_INTERNAL_ERROR, main
from operators import engine
from schemas.errors import ConfigurationError, InputError, OutputError, RecoveryStoreError, ServiceError


def failing(err: Exception):
    def command(*_args, **_kwargs):
        raise err

    return command


def test_a_programming_error_is_reported_with_its_traceback_not_as_a_user_error(monkeypatch, capsys):
    monkeypatch.setattr(flows.cli, "load_rules", failing(ValueError("unpacked the wrong tuple")))

    code = main(["rules", "check"])

    assert code == EXIT_INTERNAL_ERROR and code not in (0, 1, 2)
    error = capsys.readouterr().err
    assert "Traceback" in error and "ValueError: unpacked the wrong tuple" in error
    assert "internal error" in error


@pytest.mark.parametrize(
    "err",
    [
        ConfigurationError("invalid settings: shards: ..."),
        InputError("recording x.gz is not gzip data"),
        OutputError("cannot write output folder out: Read-only file system"),
        ServiceError("cannot reach Kafka at 127.0.0.1:1: ..."),
        RecoveryStoreError("recovery store r is writable by other users"),
    ],
)
def test_an_operational_error_is_one_line_and_exit_2(monkeypatch, capsys, err):
    monkeypatch.setattr(flows.cli, "load_rules", failing(err))

    assert main(["rules", "check"]) == 2
    error = capsys.readouterr().err
    assert error == f"nudgeflow: {err}\n"


def test_a_recovery_store_of_another_snapshot_format_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    stream = tmp_path / "tiny.jsonl"
    stream.write_bytes(lines(track("Signed Up", "u1", 0), order("u1", 1)) + b"\n")
    recovery = ["--recovery-dir", str(tmp_path / "recovery"), "--quiet"]
    assert main(["run", str(stream), "--out", str(tmp_path / "first"), *recovery]) == 0
    monkeypatch.setattr(engine, "SNAPSHOT_FORMAT", engine.SNAPSHOT_FORMAT + 1)  # a later version of the engine

    code = main(["run", str(stream), "--out", str(tmp_path / "second"), *recovery])

    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("nudgeflow: recovery snapshot format ") and "Start with a new recovery directory" in error
    assert "Traceback" not in error


@pytest.mark.parametrize(
    ("err", "code"),
    [(ServiceError("3 Kafka records not delivered"), 2), (OSError(28, "No space left on device"), 1)],
)
def test_an_error_raised_in_a_step_of_the_running_flow_is_reported_as_itself(monkeypatch, capsys, err, code):
    def run_a_flow_whose_step_fails(*_args):
        flow = Dataflow("failing")
        items = op.input("in", flow, TestingSource([1]))
        op.output("out", op.map("deliver", items, failing(err)), TestingSink([]))
        run_main(flow)

    monkeypatch.setattr(flows.cli, "load_rules", run_a_flow_whose_step_fails)

    assert main(["rules", "check"]) == code
    assert capsys.readouterr().err.splitlines()[-1] == f"nudgeflow: {err}"


def test_an_os_error_keeps_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(flows.cli, "load_rules", failing(PermissionError(13, "Permission denied", "rules.yaml")))

    assert main(["rules", "check"]) == 1
    assert capsys.readouterr().err == "nudgeflow: [Errno 13] Permission denied: 'rules.yaml'\n"


def test_each_problem_is_raised_as_its_kind_where_it_is_found(tmp_path, monkeypatch):
    from connectors.files import check_recordings, prepare_output_folder
    from flows.runtime import check_trusted
    from flows.settings import Settings
    from operators.rules import load_rules

    with pytest.raises(InputError, match="no such recording") as missing:
        check_recordings([tmp_path / "missing.jsonl"])
    assert isinstance(missing.value, FileNotFoundError), "still a FileNotFoundError for callers that catch it"
    (tmp_path / "fake.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match="not gzip data"):
        check_recordings([tmp_path / "fake.jsonl.gz"])
    (tmp_path / "rules.yaml").write_text("triggers: [")
    with pytest.raises(ConfigurationError):
        load_rules(tmp_path / "rules.yaml")
    monkeypatch.setenv("NUDGEFLOW_SHARDS", "none")
    with pytest.raises(ConfigurationError, match="invalid settings"):
        Settings.from_env()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("")
    with pytest.raises(OutputError, match="not empty"):
        prepare_output_folder(tmp_path / "out")
    tmp_path.chmod(0o777)
    with pytest.raises(RecoveryStoreError, match="writable by other users"):
        check_trusted(tmp_path)


def test_a_model_file_of_other_features_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from operators.models import files as model_files
    from operators.models.propensity import PropensityModel

    propensity = PropensityModel().export()
    propensity["features"] = [*propensity["features"], "shoe_size"]
    path = tmp_path / "models.json"
    model_files.write(path, {"propensity": propensity, "next_best_offer": {"segments": {}}}, "v")
    stream = tmp_path / "tiny.jsonl"
    stream.write_bytes(lines(track("Signed Up", "u1", 0), order("u1", 1)) + b"\n")
    monkeypatch.setenv("NUDGEFLOW_MODEL_FILE", str(path))

    assert main(["run", str(stream), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "nudgeflow: the propensity model was trained on other features"


def test_a_redis_url_redis_cannot_parse_is_one_line_and_exit_2(tmp_path, capsys):
    stream = tmp_path / "tiny.jsonl"
    stream.write_bytes(lines(track("Signed Up", "u1", 0)) + b"\n")

    code = main(["run", str(stream), "--out", str(tmp_path / "out"), "--redis-url", "localhost:6379", "--quiet"])

    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith(
        "nudgeflow: redis store localhost:6379: Redis URL must specify one of the following schemes"
    )
    assert "Traceback" not in error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--processes", "2"], "run --processes shares the Kafka flow; recordings: replay --processes N"),
        (["run", "--kafka", "--processes", "0"], "--processes must be at least 1"),
        (
            ["run", "--kafka", "--processes", "2", "-a", "127.0.0.1:1,127.0.0.1:2"],
            "--processes starts every process on this host: give it or -i/-a, not both",
        ),
        (
            ["run", "--kafka", "--processes", "2", "-i", "1"],
            "--processes starts every process on this host: give it or -i/-a, not both",
        ),
    ],
)
def test_run_in_processes_refuses_what_it_cannot_share(args, message, capsys):
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"nudgeflow: {message}"
