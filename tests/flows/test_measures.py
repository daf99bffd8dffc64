"""Experiments and attribution through real replays: byte-identical whatever the workers, processes and batches,
and ``nudgeflow report`` reads them back as tables."""

from __future__ import annotations

import orjson
from test_replay import GOLDEN, replay, starter_rules_elsewhere

from flows.cli import main

EXPERIMENTS = """
experiments:
  holdout: {share: 0.3, salt: h1}
  pre_period: 30d
  report_every: 7d
  tests:
    - id: cart_copy
      rule: cart_abandonment_push
      arms:
        - {id: personalized, share: 0.5}
        - {id: generic, share: 0.25, content: {template: cart_generic}}
        - {id: control, share: 0.25, send: false}
  costs:
    per_message: {push: 0.01, in_app: 0.002}
    per_offer: {browse-10pct: 1.5}
"""


def test_experiments_and_attributions_replay_byte_identically_and_report_reads_them(tmp_path, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text(starter_rules_elsewhere() + EXPERIMENTS)
    stream = GOLDEN / "stream.jsonl.gz"
    one = replay(stream, tmp_path / "one", "--rules", str(rules))
    two = replay(stream, tmp_path / "two", "--rules", str(rules), "-w", "2", env={"NUDGEFLOW_BATCH_SIZE": "37"})
    shared = replay(stream, tmp_path / "shared", "--rules", str(rules), "--processes", "2")
    assert one == two == shared
    periods = [orjson.loads(line) for line in one["experiments.jsonl"].splitlines()]
    assert len(periods) > 1 and [p["final"] for p in periods] == [False] * (len(periods) - 1) + [True]
    final = periods[-1]["experiments"]
    assert set(final) == {"holdout", "cart_copy"}
    treated = final["holdout"]["arms"]["treated"]
    assert treated["exposed"] > 0 and len(treated["lift_ci"]) == 2 and "cuped" in treated
    exposed = [
        p["experiments"].get("holdout", {}).get("arms", {}).get("treated", {}).get("exposed", 0) for p in periods
    ]
    assert exposed == sorted(exposed)  # cumulative, period by period
    summary = orjson.loads(one["summary.json"])
    assert summary["experiments"]["holdout"]["treated"]["exposed"] == treated["exposed"]
    attributions = [orjson.loads(line) for line in one["attributions.jsonl"].splitlines()]
    assert attributions and {a["data"]["model"] for a in attributions} == {"last_touch", "linear"}
    assert summary["outputs"]["attributions.jsonl"] == len(attributions)

    assert main(["report", str(tmp_path / "one")]) == 0
    text = capsys.readouterr().out
    assert "cart_copy            generic" in text and "holdout              treated" in text
    assert "CUPED: adjusted by each customer's orders in the 30d before exposure" in text
    assert "by rule" in text and "cart_abandonment_push" in text and "return" in text
    last_touch = sum(a["data"]["revenue"] for a in attributions if a["data"]["model"] == "last_touch")
    assert f"{last_touch:,.2f}" in text.split("by channel")[1].split("by offer")[0] or last_touch == 0


def test_report_of_a_folder_that_is_no_run_says_so(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert f"summary.json does not exist: is {tmp_path} the output folder of a run?" in capsys.readouterr().err


def test_the_run_summary_says_what_orders_were_credited_and_who_was_exposed():
    from flows.report import measured

    summary = {
        "attributions": {"last_touch.cart": 3, "linear.cart": 4, "last_touch.welcome": 1},
        "attributed_revenue_cents": {"last_touch.cart": 12_000, "linear.cart": 12_000, "last_touch.welcome": 550},
        "experiments": {"holdout": {"control": {"exposed": 2}, "treated": {"exposed": 30}}},
    }
    assert measured(summary) == "orders credited to deliveries 4 (revenue 125.50); exposed per experiment: holdout 32"
