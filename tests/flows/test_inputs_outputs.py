"""Runs whose inputs cannot be read to the end or whose outputs cannot be written: every input
line is accounted for, old outputs are kept, and the command says what happened in one line."""

from __future__ import annotations

import gzip
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import order, track

from flows.personalization import build_flow
from flows.settings import Settings

REPO = Path(__file__).resolve().parents[2]
GOLDEN_STREAM = Path(__file__).parent / "golden" / "stream.jsonl.gz"


def nudgeflow(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command in a fresh interpreter, stderr to a pipe (not a terminal)."""
    cmd = [sys.executable, "-m", "flows.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def lines(*items: dict | bytes) -> bytes:
    return b"\n".join(item if isinstance(item, bytes) else orjson.dumps(item) for item in items)


def test_summary_accounts_for_every_line_and_a_truncated_gzip_ends_the_run_cleanly(tmp_path):
    welcome = track("Signed Up", "u1", 0)
    future = track("Product Viewed", "u1", 200, props={"product_id": "p"}, receivedAt="2026-01-05T10:00:00Z")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(
        lines(
            welcome,
            welcome,  # duplicate
            b"",
            b" \t \r",  # whitespace only
            b"not json",
            b"\xff\xfe",
            track("Product Viewed", "u1", 1),  # no product_id
            orjson.dumps(track("Signed Up", "u2", 2, props={"blob": "x" * 5000})),  # too large
            future,
            track("Loyalty Points Earned", "u2", 3),  # unknown event name: accepted
            order("u1", 4),  # the last line has no line end
        )
    )
    packed = gzip.compress(lines(*(track("Page Viewed", f"c{n}", 10 + n) for n in range(3000))) + b"\n")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    out = tmp_path / "out"
    result = nudgeflow("replay", mixed, cut, "--out", out, env={"NUDGEFLOW_MAX_EVENT_BYTES": "4096"})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    account = summary["lines"]
    read_from_cut = account["files"]["cut.jsonl.gz"]["read"]
    assert account["files"]["mixed.jsonl"] == {"read": 11, "blank": 2}
    assert account == {
        "read": 11 + read_from_cut,
        "blank": 2,
        "accepted": 3 + read_from_cut - 1,
        "dead_letters": 6,
        "duplicates": 1,
        "erased_events": 0,
        "unaccounted": 0,
        "files": account["files"],
    }
    assert summary["dead_letters"] == {
        "future_dated": 1,
        "invalid_json": 1,
        "not_utf8": 1,
        "schema_invalid": 1,
        "too_large": 1,
        "truncated_input": 1,
    }
    dead = [orjson.loads(line) for line in (out / "dead_letters.jsonl").read_bytes().splitlines()]
    truncated = dead[-1]
    assert truncated["position"] == {"source": "cut.jsonl.gz", "line": read_from_cut}
    assert (truncated["processor"], truncated["reason"]) == ("nudgeflow.files", "truncated_input")
    message = f"nudgeflow: {cut}: reading stopped at line {read_from_cut:,}: the compressed data ends early"
    assert message in result.stderr
    assert summary["outputs"]["dead_letters.jsonl"] == 6


def test_without_a_terminal_progress_is_logged_as_lines_at_the_set_interval(tmp_path):
    result = nudgeflow("replay", GOLDEN_STREAM, "--out", tmp_path / "out", env={"NUDGEFLOW_PROGRESS_SECONDS": "0.05"})
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if re.fullmatch(r"nudgeflow: \d+ s: .*", line)]
    assert progress, result.stderr
    counts = r"[\d,]+ triggers, [\d,]+ audience changes, [\d,]+ dead letters, lag 0"
    read = r"([\d,]+ lines read, [\d,]+/s, [\d,]+ events|[\d,]+ events, [\d,]+/s)"  # events until lines are read
    assert re.fullmatch(rf"nudgeflow: \d+ s: {read}, {counts}", progress[-1]), progress[-1]
    assert "\r" not in result.stderr and "\x1b[K" not in result.stderr, "no terminal control characters in a log"


def old_outputs(folder: Path) -> Path:
    folder.mkdir()
    (folder / "old.txt").write_text("outputs of an earlier run")
    return folder


@pytest.mark.parametrize("problem", ["missing", "not gzip", "a folder", "missing, with --diff"])
def test_force_keeps_the_old_outputs_when_an_input_cannot_be_read(tmp_path, problem):
    out = old_outputs(tmp_path / "out")
    recording = {"missing": tmp_path / "nope.jsonl", "a folder": tmp_path}.get(problem, tmp_path / "nope.jsonl")
    if problem == "not gzip":
        recording = tmp_path / "plain.jsonl.gz"
        recording.write_bytes(lines(track("Signed Up", "u1")))
    diff = ["--diff", REPO / "rules" / "starter.yaml"] if "diff" in problem else []
    result = nudgeflow("replay", recording, "--out", out, "--force", *diff)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and str(recording) in result.stderr, result.stderr
    assert sorted(os.listdir(out)) == ["old.txt"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system of its own (tmpfs; the tests run as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("diff", [False, True])
def test_a_full_disk_is_one_clear_line_and_the_old_outputs_stay(small_disk, diff):
    out = old_outputs(small_disk / "out")
    more = ["--diff", REPO / "rules" / "starter.yaml"] if diff else []
    result = nudgeflow("replay", GOLDEN_STREAM, "--out", out, "--force", "--quiet", *more)
    assert result.returncode == 2, result.stderr
    folder = re.escape(str(out))
    written = folder if diff else rf"{folder}/[\w.]+"  # a diff's two runs are named after --out
    pattern = rf"nudgeflow: cannot write {written}: No space left on device; {folder} was left as it was"
    assert re.fullmatch(pattern, result.stderr.strip()), result.stderr
    assert sorted(os.listdir(small_disk)) == ["out"], "no half-written folder is left behind"
    assert sorted(os.listdir(out)) == ["old.txt"]


@pytest.mark.parametrize("existing", [True, False])
def test_a_read_only_output_folder_is_one_clear_line(tmp_path, small_disk, existing):
    out = old_outputs(small_disk / "out") if existing else small_disk / "out"
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = nudgeflow("replay", GOLDEN_STREAM, "--out", out, "--force", "--quiet")
    assert result.returncode == 2
    assert result.stderr == f"nudgeflow: cannot write output folder {out}: Read-only file system\n"


def test_an_output_path_under_a_file_is_one_clear_line(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    result = nudgeflow("replay", GOLDEN_STREAM, "--out", a_file / "out", "--quiet")
    assert result.returncode == 2
    assert result.stderr == f"nudgeflow: cannot write output folder {a_file / 'out'}: {a_file} is a file\n"


def mount_tmpfs(folder: Path, size: str = "1m") -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)


def unmount(*folders: Path) -> None:
    for folder in folders:
        subprocess.run(["umount", str(folder)], check=False)


def tiny_stream(folder: Path) -> Path:
    stream = folder / "tiny.jsonl"
    stream.write_bytes(lines(track("Signed Up", "u1", 0), order("u1", 1)) + b"\n")
    return stream


@pytest.mark.parametrize("size", ["1m", "64k"])
def test_an_output_folder_that_is_a_mount_point_gets_the_new_outputs_or_keeps_the_old(tmp_path, size):
    """A volume mounted on --out cannot be renamed: the run writes inside it and moves each output
    into place; a run that fails (a full volume) leaves the old outputs as they were."""
    out = tmp_path / "out"
    out.mkdir()
    mount_tmpfs(out, size)
    try:
        (out / "old.txt").write_text("outputs of an earlier run")
        stream = tiny_stream(tmp_path) if size == "1m" else GOLDEN_STREAM
        result = nudgeflow("replay", stream, "--out", out, "--force", "--quiet")
        if size == "1m":
            assert result.returncode == 0, result.stderr
            assert "old.txt" not in os.listdir(out) and (out / "triggers.push.jsonl").exists()
            assert not [name for name in os.listdir(out) if name.startswith(".")], "no staging folder is left"
            assert orjson.loads((out / "summary.json").read_bytes())["lines"]["read"] == 2
        else:
            assert result.returncode == 2
            assert result.stderr.endswith(f"No space left on device; {out} was left as it was\n"), result.stderr
            assert sorted(os.listdir(out)) == ["old.txt"]
    finally:
        unmount(out)


def test_an_output_folder_bind_mounted_from_the_same_file_system_is_written_in_place(tmp_path):
    """A bind mount (``docker run -v /data/out:/out`` on one disk) is on its parent's device and
    not seen by ``os.path.ismount``: renaming onto it fails with EBUSY after the whole run."""
    source, out = tmp_path / "volume", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(out)], check=True)
    try:
        (out / "old.txt").write_text("outputs of an earlier run")
        result = nudgeflow("replay", tiny_stream(tmp_path), "--out", out, "--force", "--quiet")
        assert result.returncode == 0, result.stderr
        assert "old.txt" not in os.listdir(source) and (source / "triggers.push.jsonl").exists()
    finally:
        unmount(out)


def test_an_output_folder_whose_parent_is_read_only_is_written_in_place(tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    mount_tmpfs(parent)
    out = parent / "out"
    try:
        out.mkdir()
        mount_tmpfs(out)
        (out / "old.txt").write_text("outputs of an earlier run")
        subprocess.run(["mount", "-o", "remount,ro", str(parent)], check=True)
        result = nudgeflow("replay", tiny_stream(tmp_path), "--out", out, "--force", "--quiet")
        assert result.returncode == 0, result.stderr
        assert "old.txt" not in os.listdir(out) and (out / "triggers.push.jsonl").exists()
        assert not [name for name in os.listdir(out) if name.startswith(".")], "no staging folder is left"
    finally:
        unmount(out, parent)


def test_a_symlinked_output_folder_gets_the_new_outputs_in_its_target(tmp_path):
    target = old_outputs(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target)
    result = nudgeflow("replay", tiny_stream(tmp_path), "--out", link, "--force", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert link.is_symlink() and link.resolve() == target
    assert "old.txt" not in os.listdir(target) and (target / "summary.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["link", "real", "tiny.jsonl"]


def test_old_outputs_that_cannot_be_removed_after_publishing_are_a_warning(tmp_path):
    """The new outputs are in place: a leftover of the old folder (here a volume mounted inside
    it, which cannot be removed) is a warning naming it, and the run succeeds."""
    out = old_outputs(tmp_path / "out")
    (out / "volume").mkdir()
    mount_tmpfs(out / "volume")
    try:
        result = nudgeflow("replay", tiny_stream(tmp_path), "--out", out, "--force", "--quiet")
        assert result.returncode == 0, result.stderr
        assert (out / "summary.json").exists() and "old.txt" not in os.listdir(out)
        [leftover] = [name for name in os.listdir(tmp_path) if name.startswith(".out.new-")]
        assert result.stderr == (
            f"nudgeflow: warning: the new outputs are in {out}, but the old ones in {tmp_path / leftover}"
            " could not be removed: Device or resource busy\n"
        )
    finally:
        unmount(*tmp_path.glob(".out.new-*/volume"), out / "volume")


def test_staging_folders_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    """A run killed mid-way (SIGKILL, a power cut) leaves its staging folder; the next run of
    this host removes it, but never one whose process is still running."""
    host, out = socket.gethostname(), tmp_path / "out"
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    killed = tmp_path / f".out.new-{host}-{finished.pid}-0badc0de"
    running = tmp_path / f".out.new-{host}-{os.getpid()}-c0ffee00"
    for folder in (killed, running):
        folder.mkdir()
        (folder / "triggers.push.jsonl").write_text("half-written outputs")

    result = nudgeflow("replay", tiny_stream(tmp_path), "--out", out)

    assert result.returncode == 0, result.stderr
    assert not killed.exists(), "the killed run's staging folder is gone"
    assert running.exists(), "a running run's staging folder is left alone"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [running.name]


def test_the_bytewax_runner_flow_checks_its_recordings_before_replacing_the_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("outputs of an earlier run")
    settings = Settings(input=[tmp_path / "missing.jsonl"], out=out, replace_output=True)
    with pytest.raises(FileNotFoundError, match="no such recording"):
        build_flow(settings)
    assert os.listdir(out) == ["keep.txt"]
