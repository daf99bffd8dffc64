"""Hostile or mistaken rule files: `rules check` and a run's start-up refuse them with the file and line, never a
traceback, and a file built to exhaust memory is refused without using it (checked in a process with bounded
memory only, so that a regression cannot take the machine down)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import order, track
from test_replay import write_stream

from flows.cli import main

REPO = Path(__file__).resolve().parents[2]
HEAD = "version: v1\ntriggers:\n  - id: hostile\n    channel: push\n    on: Signed Up\n"
LAUGHS = (
    HEAD
    + "    content:\n      l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"      l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]\n" for n in range(1, 10))
)  # 10**10 strings once expanded

HOSTILE = {
    "huge text": (
        HEAD + "    when: \"len('x' * 100000000000) > 0\"\n",
        6,
        "rule 'hostile' field 'when': '*' would build",
    ),
    "huge list": (HEAD + '    when: "[0] * 100000000000"\n', 6, "rule 'hostile' field 'when': '*' would build a list"),
    "a list of 100,000 lists": (
        HEAD + '    when: "max([[1] * 100000] * 100000) == cart.value"\n',
        6,
        "rule 'hostile' field 'when': a list literal would build a list of size 100,001 (limit 100,000)",
    ),
    "600 terms": (HEAD + "    when: " + "+".join(["1"] * 600) + "\n", 6, "rule 'hostile' field 'when': nested too"),
    "900 nots": (HEAD + "    when: " + "not " * 900 + "orders\n", 6, "rule 'hostile' field 'when': expression of"),
    "audience with a trigger's id": (
        HEAD + "audiences:\n  - id: hostile\n    when: orders > 1\n",
        7,
        "rule 'hostile' field 'id': 'hostile' is also a trigger's id",
    ),
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_rules_check_refuses_with_file_and_line(tmp_path, capsys, case):
    text, line, words = HOSTILE[case]
    path = write(tmp_path, text)
    assert main(["rules", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nudgeflow: {path}:{line}: {words}"), err
    assert "Traceback" not in err
    assert len(err) < 400  # a long expression is quoted in part


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_a_run_refuses_to_start(tmp_path, capsys, case):
    text, line, words = HOSTILE[case]
    path = write(tmp_path, text)
    out = tmp_path / "out"
    assert main(["run", "--rules", str(path), "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"nudgeflow: {path}:{line}: {words}")
    assert not (out / "summary.json").exists()


def _limit_memory() -> None:
    """At most 2 GiB of address space: a regression fails with MemoryError instead of taking the machine down."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_billion_laughs_is_refused_by_the_command_within_bounded_memory(tmp_path):
    path = write(tmp_path, LAUGHS)
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "rules", "check", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=_limit_memory,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"nudgeflow: {path}:7: field '-': YAML anchors and aliases (&name, *name, <<) are not allowed:"
        " write each value out\n"
    )


def test_a_rule_that_builds_too_much_at_run_time_dead_letters_the_event_and_the_run_goes_on(tmp_path, capsys):
    """The limit depends on a customer's data, so only the run can find it: that event becomes a
    processing_error dead letter naming the rule, and every other event is applied."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: v1\ntriggers:\n"
        "  - id: greedy\n    channel: push\n    on: Order Completed\n"
        '    when: "len(customer_id * orders * 20000) > 0"\n'  # 20,000 times the id: too long for "u-long"
        "  - id: welcome\n    channel: push\n    on: Signed Up\n"
    )
    stream = write_stream(
        tmp_path / "s.jsonl",
        [order("u1", 0), order("u-long", 1), track("Signed Up", "u-long", 2), order("u1", 3)],
    )
    out = tmp_path / "out"
    assert main(["replay", str(stream), "--out", str(out), "--rules", str(rules)]) == 0
    dead = [orjson.loads(line) for line in (out / "dead_letters.jsonl").read_bytes().splitlines()]
    assert [(d["reason"], d["position"]["line"]) for d in dead] == [("processing_error", 2)]
    assert dead[0]["messages"][0] == "rule greedy"
    assert dead[0]["messages"][1].startswith("ExpressionLimitError: '*' would build a text of length 120,000")
    triggers = [orjson.loads(line) for line in (out / "triggers.push.jsonl").read_bytes().splitlines()]
    assert sorted((t["data"]["rule_id"], t["subject"]) for t in triggers) == [
        ("greedy", "u1"),
        ("greedy", "u1"),
        ("welcome", "u-long"),
    ], "u1's two orders and u-long's sign-up were applied"
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["dead_letters"] == {"processing_error": 1} and summary["lines"]["unaccounted"] == 0


def test_a_timer_that_fails_is_counted_apart_from_the_input_lines(tmp_path, capsys):
    """A delayed rule whose condition fails when its timer fires dead-letters the timer (no input
    line): the line account stays exact and the failure is counted under ``timer_errors``."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: v1\ntriggers:\n"
        "  - id: greedy_later\n    channel: push\n    on: Order Completed\n    after: 10m\n"
        '    when: "len(customer_id * orders * 20000) > 0"\n'
    )
    stream = write_stream(tmp_path / "s.jsonl", [order("u-long", 0), track("Signed Up", "u2", 60)])
    out = tmp_path / "out"
    assert main(["replay", str(stream), "--out", str(out), "--rules", str(rules)]) == 0
    dead = [orjson.loads(line) for line in (out / "dead_letters.jsonl").read_bytes().splitlines()]
    assert [(d["reason"], d["position"]["source"]) for d in dead] == [("processing_error", "timer")]
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["timer_errors"] == 1
    assert summary["lines"]["unaccounted"] == 0 and summary["lines"]["dead_letters"] == 0
    stderr = capsys.readouterr().err
    assert "not accounted for" not in stderr
    assert "nudgeflow: 2 records from s.jsonl" in stderr and "timer errors 1" in stderr
