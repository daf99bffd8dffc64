"""The closed loop on a known truth: customers answer the engine's triggers, and the recording replays."""

from __future__ import annotations

import os
import subprocess
import sys
from bisect import bisect_left
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from connectors.responders import FATIGUE_DAYS, RESPONSE_WINDOW_MS, Responders
from connectors.synthetic import DAY_MS, generate_events
from flows.audit import Customers, delivered, policy_breaches
from flows.cli import main
from flows.lift import experiment_report
from flows.simulate import Simulation, simulate
from flows.truth import HOLDOUT_AND_TEST, exposures, measured_arms, per_message, true_lift, uncapped_rules
from operators.rules import STARTER_RULES, CompiledRules, load_rules, parse_rules
from schemas.experiments import CONTROL, HOLDOUT, TREATED
from schemas.streams import DECISION_STREAMS, OUTPUT_FILES, SUPPRESSIONS, TRIGGER_STREAMS
from schemas.timestamps import epoch_ms

REPO = Path(__file__).resolve().parents[2]
CUSTOMERS, DAYS, SEED = 200, 10, 3


@pytest.fixture(scope="module")
def rules() -> CompiledRules:
    return load_rules()


@pytest.fixture(scope="module")
def sim(rules: CompiledRules) -> Simulation:
    return simulate(CUSTOMERS, DAYS, SEED, rules)


def events_of(sim: Simulation) -> list[dict]:
    return [orjson.loads(line) for line in sim.lines]


def replay_files(recording: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> dict[str, list[bytes]]:
    """``nudgeflow replay`` of a recording: each decision stream's records (triggers, suppressions,
    audience changes), sorted."""
    cmd = [sys.executable, "-m", "flows.cli", "replay", str(recording), "--out", str(out), "--quiet", *extra]
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)
    files = {stream: out / OUTPUT_FILES[stream] for stream in DECISION_STREAMS}
    return {stream: sorted(path.read_bytes().splitlines()) for stream, path in sorted(files.items())}


def test_the_recording_replayed_gives_the_decisions_of_the_loop(sim: Simulation, tmp_path: Path) -> None:
    recording = tmp_path / "truth.jsonl"
    recording.write_bytes(sim.recording())
    decisions = sim.decisions(DECISION_STREAMS)
    assert len(decisions[SUPPRESSIONS]) > 100 and sum(map(len, decisions.values())) > 1000
    assert replay_files(recording, tmp_path / "out") == decisions


def test_the_loop_answers_the_decisions_so_they_change(sim: Simulation, rules: CompiledRules) -> None:
    """Responses are in the stream, and they change what the engine decides (a closed loop)."""
    baseline = simulate(CUSTOMERS, DAYS, SEED, rules, responders=NoAnswer(CUSTOMERS, DAYS, SEED))
    generated = [orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in generate_events(CUSTOMERS, DAYS, SEED)]
    assert baseline.lines == generated
    responses = set(sim.lines) - set(generated)
    responded = [d for d in sim.truth["deliveries"] if d["responded"]]
    assert len(responses) == len(responded) > 20
    assert baseline.decisions() != sim.decisions()


class NoAnswer(Responders):
    def deliver(self, *args, **kwargs) -> None:  # type: ignore[override]
        super().deliver(*args, **kwargs)


def test_same_seed_same_recording_and_truth(sim: Simulation, rules: CompiledRules) -> None:
    again = simulate(CUSTOMERS, DAYS, SEED, rules)
    assert again.lines == sim.lines and again.truth == sim.truth
    other = simulate(CUSTOMERS, DAYS, SEED + 1, rules)
    assert other.lines != sim.lines


def test_every_delivered_trigger_is_in_the_truth_and_every_answer_in_the_recording(sim: Simulation) -> None:
    triggers = [orjson.loads(body) for bodies in sim.decisions().values() for body in bodies]
    deliveries = {d["decision_id"]: d for d in sim.truth["deliveries"]}
    assert sorted(deliveries) == sorted(t["id"] for t in triggers)
    orders = {e["properties"]["order_id"]: e for e in events_of(sim) if e.get("event") == "Order Completed"}
    for trigger in triggers:
        delivery = deliveries[trigger["id"]]
        assert (delivery["customer"], delivery["channel"], delivery["at"]) == (
            trigger["subject"],
            trigger["data"]["channel"],
            trigger["time"],
        )
        if delivery["responded"]:
            order = orders[delivery["order_id"]]
            assert order.get("userId", order.get("anonymousId")) == delivery["customer"]
            delay = epoch_ms(order["timestamp"]) - epoch_ms(delivery["at"])
            assert 0 < delay <= RESPONSE_WINDOW_MS[delivery["channel"]]


def test_the_recording_is_in_time_order(sim: Simulation) -> None:
    times = [epoch_ms(e["timestamp"]) for e in events_of(sim)]
    assert times == sorted(times)


def test_fatigue_counts_the_messages_of_the_days_before(sim: Simulation) -> None:
    """Each delivery's fatigue is the customer's deliveries in the FATIGUE_DAYS before it, and its
    chance the persona's lift weakened by them (or nothing, when it was seen too late)."""
    times: dict[str, list[int]] = defaultdict(list)
    for d in sim.truth["deliveries"]:
        times[d["person"]].append(epoch_ms(d["at"]))
    for customer_times in times.values():
        customer_times.sort()
    fatigued = 0
    for d in sim.truth["deliveries"]:
        at, before = epoch_ms(d["at"]), times[d["person"]]
        assert d["earlier_messages"] == bisect_left(before, at) - bisect_left(before, at - FATIGUE_DAYS * DAY_MS)
        full = Responders.chance(d["persona"], d["channel"], d["earlier_messages"])
        assert d["chance"] in (full, 0.0)
        fatigued += d["earlier_messages"] > 0
    assert fatigued > len(sim.truth["deliveries"]) / 3
    seen_late = sum(d["chance"] == 0.0 for d in sim.truth["deliveries"])
    assert seen_late < len(sim.truth["deliveries"]) / 10


def test_answers_follow_the_chances(sim: Simulation) -> None:
    deliveries = sim.truth["deliveries"]
    expected = sum(d["chance"] for d in deliveries)
    spread = sum(d["chance"] * (1 - d["chance"]) for d in deliveries) ** 0.5
    answered = sum(d["responded"] for d in deliveries)
    assert abs(answered - expected) <= 3 * spread


def test_every_delivery_keeps_the_starter_policy(sim: Simulation, rules: CompiledRules) -> None:
    """Checked from the outside: consent as the customer last gave it, quiet hours in their local
    time, every cap of the policy and every cooldown; the policy had work to do."""
    customers = Customers(sim.lines)
    assert any(not granted for log in customers.consent.values() for _, granted in log)
    breaches = policy_breaches(delivered(sim.records()), customers, rules)
    assert breaches == {"no_consent": [], "quiet_hours": [], "frequency_cap": [], "cooldown": []}
    reasons = Counter(orjson.loads(body)["data"]["reason"] for body in sim.decisions([SUPPRESSIONS])[SUPPRESSIONS])
    assert reasons["frequency_cap"] > 20 and reasons["quiet_hours"] + reasons["cooldown"] > 20


def test_caps_raise_conversions_per_message_on_a_tiring_truth(sim: Simulation) -> None:
    """The starter policy's caps and cooldowns send far fewer messages for as many orders caused: each
    message works better, as fatigue says it should."""
    uncapped = simulate(CUSTOMERS, DAYS, SEED, uncapped_rules(STARTER_RULES))
    capped, free = per_message(sim.truth["deliveries"]), per_message(uncapped.truth["deliveries"])
    assert capped["messages"] < 0.8 * free["messages"]
    assert capped["expected_per_message"] > 1.2 * free["expected_per_message"]
    assert capped["caused_per_message"] > free["caused_per_message"]


def test_generate_respond_writes_the_recording_and_the_truth(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stream, truth = tmp_path / "stream.jsonl", tmp_path / "truth.json"
    args = ["generate", "--customers", "80", "--days", "6", "--seed", "9", "--out", str(stream), "--truth", str(truth)]
    assert main([*args, "--respond", str(STARTER_RULES)]) == 0
    written = orjson.loads(truth.read_bytes())
    assert "delivered" in capsys.readouterr().err
    replayed = replay_files(stream, tmp_path / "out")
    triggers = [body for stream, bodies in replayed.items() if stream in TRIGGER_STREAMS for body in bodies]
    delivered_ids = sorted(orjson.loads(body)["id"] for body in triggers)
    assert delivered_ids == sorted(d["decision_id"] for d in written["deliveries"])
    answers = [d["order_id"] for d in written["deliveries"] if d["responded"]]
    assert answers and all(f'"order_id":"{order}"'.encode() in stream.read_bytes() for order in answers)


def test_generate_respond_refuses_defects(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "stream.jsonl"
    assert main(["generate", "--respond", str(STARTER_RULES), "--defects", "0.1", "--out", str(out)]) == 2
    assert "--respond takes no --defects" in capsys.readouterr().err
    assert not out.exists()


def test_the_measured_lift_covers_the_true_lift() -> None:
    """A global holdout and a test of the browse offer against no trigger: the engine's 95 % interval
    for the treated arm's lift covers the truth's (bench/truth_bench.py counts how often, over seeds)."""
    rules = parse_rules(STARTER_RULES.read_text() + HOLDOUT_AND_TEST, str(STARTER_RULES))
    sim = simulate(400, 14, SEED, rules)
    customers, measured, exposed = Customers(sim.lines), measured_arms(sim.outputs), exposures(sim.outputs)
    withheld = {
        HOLDOUT: lambda d: True,  # the starter rules are all marketing rules
        "browse_offer_test": lambda d: d["rule_id"] == "browse_abandonment_offer",
    }
    for experiment, in_experiment in withheld.items():
        arms = measured[experiment]
        assert len(exposed[experiment]) == sum(counts["exposed"] for counts in arms.values()) > 100
        truth = true_lift(exposed[experiment], TREATED, sim.truth["deliveries"], customers, 7 * DAY_MS, in_experiment)
        assert truth is not None and truth > 0.01
        low, high = experiment_report(arms, CONTROL)[TREATED]["lift_ci"]
        assert low <= truth <= high


ERASING_SEED = 46  # a high-value customer asks for erasure on day 2 and stays away


def test_an_erased_customer_gets_nothing_after_erasure_even_on_a_replay_of_older_data(
    rules: CompiledRules, tmp_path: Path
) -> None:
    """The generator's erasure requests, replayed: nothing reaches an erased customer after their
    erasure (no timer, no held decision); and the same data recorded before the erasures, replayed
    with the ledger the first run kept, gives them nothing at all."""
    sim = simulate(CUSTOMERS, DAYS, ERASING_SEED, rules)
    erased = {e["userId"]: epoch_ms(e["timestamp"]) for e in events_of(sim) if e.get("event") == "Erasure Requested"}
    assert erased
    recording = tmp_path / "truth.jsonl"
    recording.write_bytes(sim.recording())
    first = replay_files(recording, tmp_path / "a")
    customers = Customers(sim.lines)
    sent = [s for s in delivered(flatten(first)) if customers.person(s.customer) in erased]
    assert sent and all(s.at_ms <= erased[customers.person(s.customer)] for s in sent)

    older = tmp_path / "older.jsonl"
    older.write_bytes(b"".join(line + b"\n" for line in sim.lines if b'"Erasure Requested"' not in line))
    ledger = {"NUDGEFLOW_ERASURE_LEDGER": str(tmp_path / "a" / "erasures.jsonl")}
    second = replay_files(older, tmp_path / "b", env=ledger)
    about = [record for _, record in flatten(second) if customers.person(orjson.loads(record)["subject"]) in erased]
    assert about == []
    assert sum(map(len, second.values())) > 1000


def flatten(decisions: dict[str, list[bytes]]) -> list[tuple[str, bytes]]:
    return [(stream, body) for stream, bodies in decisions.items() for body in bodies]
