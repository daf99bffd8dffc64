"""Offers through the whole flow: budgets give the same decisions with any number of workers or
processes, redemptions and suppressions reach summary.json, and bad reference data stops the start."""

from __future__ import annotations

import orjson
from conftest import track
from test_replay import replay, write_stream

from flows.cli import main

RULES = """
version: v
triggers:
  - {id: nudge, channel: push, on: Nudge, offer_id: next_best}
offers:
  - {id: scarce, channels: [push], budget: 20, per_customer: 1, discount: {percent: 20}, value: 30}
  - {id: plenty, channels: [push], windows: [{hours: '06:00-18:00'}]}
next_best_offer: {exploration: 0.0, reward_window: 1h}
"""


def offers_stream() -> list[dict]:
    """120 customers nudged twice a few hours apart; every other one redeems what the first nudge
    offered (`scarce` while its budget lasts), some by the order alone."""
    events = []
    for i in range(120):
        user, start = f"u{i:03d}", i * 7
        events.append(track("Nudge", user, start))
        if i % 2 == 0:
            events.append(track("Coupon Applied", user, start + 1, props={"coupon_id": "scarce", "order_id": f"o{i}"}))
            events.append(
                track(
                    "Order Completed", user, start + 2, props={"order_id": f"o{i}", "total": 60.0, "coupon": "scarce"}
                )
            )
        events.append(track("Nudge", user, start + 600))
    return sorted(events, key=lambda event: event["timestamp"])


def test_budgets_give_the_same_outputs_with_any_number_of_workers_and_processes(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    stream = write_stream(tmp_path / "offers.jsonl", offers_stream())
    one = replay(stream, tmp_path / "one", "--rules", str(rules))
    three = replay(stream, tmp_path / "three", "--rules", str(rules), "-w", "3")
    shared = replay(stream, tmp_path / "shared", "--rules", str(rules), "--processes", "2")
    assert one == three == shared
    summary = orjson.loads(one["summary.json"])
    scarce = summary["offers"]["scarce"]
    assert scarce["redeemed"] == 60, "a coupon and the order naming it are one redemption"
    assert summary["suppressions"]["budget_spent"]["nudge"] > 0, "no offer left at night once spent"
    given = [orjson.loads(line)["data"]["offer_id"] for line in one["triggers.push.jsonl"].splitlines()]
    assert given.count("scarce") == scarce["given"] and given.count("plenty") == summary["offers"]["plenty"]["given"]


def test_a_bad_stores_file_stops_the_start_naming_its_line(tmp_path, monkeypatch, capsys):
    stores = tmp_path / "stores.csv"
    stores.write_text("id,timezone,latitude,longitude\ns1,Europe/Paris,48.8,2.3\ns2,Mars/Olympus,1,2\n")
    monkeypatch.setenv("NUDGEFLOW_STORES", str(stores))
    stream = write_stream(tmp_path / "s.jsonl", [track("Signed Up", "u1", 0)])
    assert main(["replay", str(stream), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"{stores}:3: field 'timezone'" in error and "'Mars/Olympus' is not an IANA time zone" in error
    assert not (tmp_path / "out").exists(), "nothing written"
