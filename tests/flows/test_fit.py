"""``nudgeflow fit``: recorded orders to the model file's clv entry, which a later run starts from and
carries into its own model file; clear refusals and notes for input it cannot fit on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from conftest import T0, order, track

from flows.cli import main
from operators.models import files as model_files
from operators.models.btyd import BgNbd, GammaGamma, p_alive
from operators.models.clv import ClvParameters

REPO = Path(__file__).resolve().parents[2]
UCI = REPO.parent / "shared" / "data" / "online-retail-uci.csv.gz"
GOLDEN_MODELS = Path(__file__).parent / "golden" / "expected" / "models.json"
TRUTH = BgNbd(r=0.9, alpha=20.0, a=0.8, b=3.0)  # in days


def write(path: Path, events: list[dict | bytes]) -> Path:
    path.write_bytes(b"".join((e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n" for e in events))
    return path


SPEND = GammaGamma(p=4.0, q=5.0, v=40.0)  # a mean order value of p v / (q - 1) = 40


def bgnbd_orders(customers: int, days: float, seed: int) -> list[dict]:
    """Orders of customers drawn from :data:`TRUTH` (first orders spread over the first three quarters
    of the period) with values drawn from :data:`SPEND`, in time order."""
    rng = np.random.default_rng(seed)
    events = []
    for n in range(customers):
        rate, dropout = rng.gamma(TRUTH.r, 1 / TRUTH.alpha), rng.beta(TRUTH.a, TRUTH.b)
        value_rate = rng.gamma(SPEND.q, 1 / SPEND.v)
        clock = rng.uniform(0, days * 0.75)
        while clock <= days:
            spend = round(float(rng.gamma(SPEND.p, 1 / value_rate)), 2)
            events.append((clock, order(f"c{n}", days=clock, total=spend)))
            if len(events) > 1 and events[-2][1]["userId"] == f"c{n}" and rng.random() < dropout:
                break  # drops out after a repeat purchase
            clock += rng.exponential(1 / rate)
    return [event for _, event in sorted(events, key=lambda e: e[0])]


def fit(*args: str) -> int:
    return main(["fit", *map(str, args)])


def entry_of(path: Path) -> ClvParameters:
    return ClvParameters.model_validate(model_files.read(path)["clv"])


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("fit") / "orders.jsonl", bgnbd_orders(3000, 365.0, seed=4))


def test_fit_recovers_the_population_from_recorded_orders_in_days(simulated, tmp_path, capsys):
    """Summaries built from the events' timestamps (x, t_x, T in days) give back the parameters drawn from."""
    out = tmp_path / "models.json"
    assert fit(simulated, "--out", out) == 0
    entry = entry_of(out)
    assert entry.time_unit_days == 1.0 and entry.fitted is not None and entry.fitted.converged
    errors = entry.fitted.standard_errors
    for name, value in entry.bgnbd.model_dump().items():
        assert abs(value - getattr(TRUTH, name)) < 3 * errors[name], (name, value, errors[name])
    assert entry.fitted.source == [str(simulated)] and entry.fitted.purchase == "order"
    assert [row.repeat for row in entry.fitted.check][-1] == "7+"
    spend, spend_fit = entry.gamma_gamma, entry.fitted.spend
    assert spend is not None and spend_fit is not None and spend_fit.converged
    for name, value in spend.model_dump().items():
        assert abs(value - getattr(SPEND, name)) < 3 * spend_fit.standard_errors[name], (name, value)
    printed = capsys.readouterr().out
    assert "BG/NBD on 3,000 customers" in printed and "observed" in printed and "Gamma-Gamma on" in printed
    assert f"wrote {out}" in printed


def test_a_run_started_from_the_fitted_file_carries_its_clv_entry_into_its_own_model_file(simulated, tmp_path):
    fitted = tmp_path / "fitted.json"
    assert fit(simulated, "--out", fitted) == 0
    stream = write(
        tmp_path / "day.jsonl", [order("u1", 0), track("Product Viewed", "u2", 5, props={"product_id": "p1"})]
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flows.cli", "replay", str(stream), "--out", str(out), "--quiet"]
    env = {**os.environ, "NUDGEFLOW_MODEL_FILE": str(fitted)}
    subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=300)
    assert model_files.read(out / "models.json")["clv"] == model_files.read(fitted)["clv"]
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["models"]["clv"]["replicas_loaded"] > 0


def test_fit_replaces_only_the_clv_entry_of_the_model_file_it_starts_from(simulated, tmp_path):
    out = tmp_path / "models.json"
    assert fit(simulated, "--out", out, "--model-file", GOLDEN_MODELS) == 0
    before, after = model_files.read(GOLDEN_MODELS), model_files.read(out)
    assert {k: v for k, v in after.items() if k != "clv"} == {k: v for k, v in before.items() if k != "clv"}
    assert after["clv"]["bgnbd"]["r"] > 0
    rules_version = orjson.loads(GOLDEN_MODELS.read_bytes())["rules_version"]
    assert orjson.loads(out.read_bytes())["rules_version"] == rules_version


def test_a_model_file_without_a_clv_entry_still_loads(tmp_path):
    assert "clv" not in orjson.loads(GOLDEN_MODELS.read_bytes())["models"]
    assert model_files.read(GOLDEN_MODELS).get("clv") is None


def test_until_ends_the_calibration_period_and_leaves_later_orders_out(simulated, tmp_path, capsys):
    out = tmp_path / "models.json"
    until = (T0 + timedelta(days=200)).date().isoformat()
    assert fit(simulated, "--out", out, "--until", until) == 0
    fitted = entry_of(out).fitted
    assert fitted is not None
    assert fitted.calibration_end == f"{until}T00:00:00.000Z"
    assert fitted.skipped["after_until"] > 0
    assert "left out (after_until)" in capsys.readouterr().err


def test_orders_of_one_day_make_one_purchase_with_per_day(tmp_path):
    events = []
    for n in range(60):  # each orders twice on day 0 and twice on day 10
        events += [order(f"c{n}", minutes=m, days=d) for d in (0, 10) for m in (0, 60)]
    stream = write(tmp_path / "o.jsonl", sorted(events, key=lambda e: e["timestamp"]))
    per_order, per_day = tmp_path / "a.json", tmp_path / "b.json"
    assert fit(stream, "--out", per_order) == 0 and fit(stream, "--out", per_day, "--per-day") == 0
    by_order, by_day = (entry_of(path).fitted for path in (per_order, per_day))
    assert by_order is not None and by_day is not None and by_day.purchase == "day"
    assert {row.repeat: row.observed for row in by_order.check}["3"] == 60
    assert {row.repeat: row.observed for row in by_day.check}["1"] == 60


def test_a_part_of_a_split_order_and_an_event_sent_twice_are_not_new_purchases(tmp_path):
    events = []
    for n in range(60):
        first = order(f"c{n}", 0, total=30.0)
        part = {**first, "messageId": f"{first['messageId']}-p2"}
        again = order(f"c{n}", days=5, total=20.0 + n)
        events += [first, part, again, again]
    stream = write(tmp_path / "o.jsonl", events)
    out = tmp_path / "m.json"
    assert fit(stream, "--out", out) == 0
    fitted = entry_of(out).fitted
    assert fitted is not None
    assert {row.repeat: row.observed for row in fitted.check}["1"] == 60
    assert fitted.skipped == {"duplicate": 60}


def test_a_recording_without_orders_is_refused_with_a_clear_message(tmp_path, capsys):
    stream = write(tmp_path / "views.jsonl", [track("Product Viewed", "u1", props={"product_id": "p"})])
    assert fit(stream, "--out", tmp_path / "m.json") == 2
    assert f"nudgeflow: no Order Completed events to fit on in {stream}" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_too_few_repeat_buyers_are_refused(tmp_path, capsys):
    events = [order(f"c{n}", days=n % 3) for n in range(200)] + [order(f"c{n}", days=20) for n in range(10)]
    assert fit(write(tmp_path / "o.jsonl", events), "--out", tmp_path / "m.json") == 2
    error = capsys.readouterr().err
    assert "only 10 of 200 customers ordered again: at least 50 repeat buyers are needed" in error


def test_bad_lines_1970_clocks_and_negative_orders_are_noted_not_fatal(simulated, tmp_path, capsys):
    good = simulated.read_bytes().splitlines()
    bad_order = b'{"type": "track", "event": "Order Completed", "messageId": "x", "userId": "u1"}'
    in_1970 = orjson.dumps({**order("old"), "timestamp": "1970-01-01T00:00:00Z", "receivedAt": "1970-01-01T00:00:00Z"})
    returned = [{"product_id": "p", "price": 10.0, "quantity": -3}]
    negative = [
        orjson.dumps(track("Order Completed", "neg", days=d, props={"order_id": f"r{d}", "products": returned}))
        for d in (1, 2)
    ]
    stream = write(tmp_path / "mixed.jsonl", [in_1970, bad_order, *negative, *good])
    out = tmp_path / "m.json"
    assert fit(stream, "--out", out) == 0
    captured = capsys.readouterr()
    assert f"1 left out (invalid), the first at {stream}:2: schema_invalid" in captured.err
    assert f"1 left out (before_2000), the first at {stream}:1" in captured.err
    fitted = entry_of(out).fitted
    assert fitted is not None and fitted.negative_orders == 2
    assert fitted.spend is not None and fitted.spend.left_out == 1  # the customer whose mean order is below 0
    assert "orders with a value below 0" in captured.out


def test_a_missing_recording_or_bad_until_is_a_clear_error(tmp_path, capsys):
    assert fit(tmp_path / "nope.jsonl", "--out", tmp_path / "m.json") == 2
    assert "no such recording" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fit(tmp_path / "nope.jsonl", "--out", tmp_path / "m.json", "--until", "last tuesday")
    assert "'last tuesday' is not an ISO 8601 date" in capsys.readouterr().err


@pytest.mark.skipif(not UCI.exists(), reason="the UCI invoices are not in /work/shared/data")
def test_fit_on_the_uci_invoices(tmp_path, capsys):
    """The real POS invoices: identified customers only (a guest invoice has an id of its own)."""
    out = tmp_path / "models.json"
    assert fit(UCI, "--format", "uci-retail", "--out", out) == 0
    entry = entry_of(out)
    fitted = entry.fitted
    assert fitted is not None and fitted.converged and fitted.customers == 4338 and fitted.repeat_buyers == 2845
    assert fitted.skipped == {"guest": 1954}
    assert entry.gamma_gamma is not None and entry.gamma_gamma.q > 1
    check = {row.repeat: (row.observed, row.expected) for row in fitted.check}
    assert check["0"][0] == 1493 and abs(check["0"][1] - 1493) < 0.1 * 1493
    # a customer who bought monthly and then went quiet for a quarter is less likely alive than one who just bought
    purchases = entry.purchases()
    assert p_alive(purchases, 6, 180.0, 270.0) < p_alive(purchases, 6, 265.0, 270.0)


def test_fit_on_a_warm_start_store_gives_the_fit_on_its_recording(tmp_path, capsys):
    """The customers' saved states (a recovery directory's customer stores) summarise their orders as
    the recording does: the same purchases, ages and population parameters."""
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import TestingSink, TestingSource, run_main
    from conftest import source_records

    from flows.personalization import build_flow
    from flows.settings import Settings
    from state.store import wait_for_writes

    events = bgnbd_orders(400, 200.0, seed=9)
    folder = tmp_path / "recovery"
    folder.mkdir()
    init_db_dir(folder, 1)
    settings = Settings(out=tmp_path / "unused", shards=4, recovery_dir=folder)
    source = TestingSource(source_records(events), batch_size=500)
    flow = build_flow(settings, snapshots=True, source=source, sink=TestingSink([]))
    run_main(flow, epoch_interval=timedelta(seconds=100), recovery_config=RecoveryConfig(str(folder)))
    wait_for_writes()  # the stores are written by a thread

    from_store, from_recording = tmp_path / "store.json", tmp_path / "recording.json"
    assert fit("--recovery-dir", folder, "--out", from_store) == 0
    assert fit(write(tmp_path / "orders.jsonl", events), "--out", from_recording) == 0
    store, recording = entry_of(from_store), entry_of(from_recording)
    assert store.fitted is not None and recording.fitted is not None
    assert store.fitted.check == recording.fitted.check
    assert store.fitted.calibration_end == recording.fitted.calibration_end
    for name, value in recording.bgnbd.model_dump().items():
        assert getattr(store.bgnbd, name) == pytest.approx(value, rel=1e-3), name
    assert store.gamma_gamma is not None  # fitted on mean order values (the store keeps no order one by one)

    assert fit("--recovery-dir", folder, "--out", from_store, "--until", "2026-03-01") == 2
    assert "--until, --per-day and --format read recordings" in capsys.readouterr().err
    assert fit("--out", from_store) == 2
    assert "reads recordings or a recovery directory" in capsys.readouterr().err


def test_a_customers_record_adds_parts_to_the_purchase_they_belong_to_and_takes_a_late_first_order():
    from flows.fit import DAY_MS, History

    start = int(T0.timestamp() * 1000)
    history = History()
    for message, order_id, days, value in [("m1", "A", 0, 10.0), ("m2", "B", 5, 20.0), ("m3", "B", 5, 5.0)]:
        assert history.add("c", message, order_id, start + days * DAY_MS, value) is None
    customer = history.customers["c"]
    assert (customer.repeats, customer.first_value, customer.repeat_value) == (1, 10.0, 25.0)
    assert history.add("c", "m4", "Z", start - 2 * DAY_MS, 7.0) is None  # a late order before the first
    assert (customer.repeats, customer.first_value, customer.repeat_value) == (2, 7.0, 35.0)
    x, t_x, T, m = history.summaries()
    assert (x[0], t_x[0], T[0], m[0]) == (2, 7.0, 7.0, 17.5)
    assert history.add("c", "m4", "Z", start, 7.0) == "duplicate"


def test_fit_on_a_generated_stream_counts_every_buyer_and_order(tmp_path):
    """``nudgeflow generate``'s personas: every customer with an order (userId, else anonymousId) is one
    record, and every order is used."""
    stream = tmp_path / "generated.jsonl"
    assert main(["generate", "--customers", "80", "--days", "30", "--seed", "3", "--out", str(stream)]) == 0
    orders = [e for e in map(orjson.loads, stream.read_bytes().splitlines()) if e.get("event") == "Order Completed"]
    per_buyer = Counter(e.get("userId") or e["anonymousId"] for e in orders)
    out = tmp_path / "models.json"
    assert fit(stream, "--out", out) == 0
    fitted = entry_of(out).fitted
    assert fitted is not None and fitted.converged
    assert (fitted.customers, fitted.orders, fitted.skipped) == (len(per_buyer), len(orders), {})
    assert sum(row.observed for row in fitted.check) == len(per_buyer)
    assert fitted.repeat_buyers == sum(1 for n in per_buyer.values() if n > 1)
