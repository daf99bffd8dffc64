"""Buy-till-you-die scores in the stream: the compiled formulas against SciPy and the papers',
audiences on ``lapse_risk`` and ``clv`` changing when the formulas say, the scores in the Redis
profile, and replays that stay byte-identical."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from random import Random

import btyd_reference as btyd
import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from conftest import T0, EngineHarness, call, order, rules_from, source_records, track
from scipy.special import hyp2f1 as scipy_hyp2f1

from connectors.redis_reads import RedisReads
from flows.personalization import build_flow
from flows.settings import Settings
from operators.engine import EngineConfig
from schemas.errors import ConfigurationError
from state._native import btyd_scores, hyp2f1
from state.btyd import DEFAULT_BTYD, BtydParameters
from state.catalogue import profile
from state.customer import Lifecycle

DAY_MS = 86_400_000
MINUTE_MS = 60_000
T0_MS = int(T0.timestamp() * 1000)
LC = Lifecycle()
POP = LC.btyd  # the engine's default parameters


def relative(got: float, expected: float) -> float:
    return abs(got - expected) / max(abs(expected), 1e-300)


# --- the formulas ------------------------------------------------------------------------


def test_hyp2f1_agrees_with_scipy_over_a_grid():
    """Against SciPy to 1e-10, but for one point where SciPy itself is off by 3e-5 (c - a - b = -10,
    z = 0.92); against the series in 50-digit arithmetic to 1e-12 everywhere."""
    worst_scipy = worst_exact = 0.0
    for a in (0.05, 0.243, 1.976, 7.5, 40.0):
        for b in (-0.9, -0.207, 0.5, 2.426, 30.0):
            for c in (0.6, 2.219, 12.2, 60.0):
                for z in (0.0, 0.1, 0.5, 0.8, 0.92, 0.97):
                    got = hyp2f1(a, b, c, z)
                    worst_exact = max(worst_exact, relative(got, btyd.hyp2f1_decimal(a, b, c, z)))
                    if (a, b, c, z) != (40.0, 30.0, 60.0, 0.92):
                        worst_scipy = max(worst_scipy, relative(got, scipy_hyp2f1(a, b, c, z)))
    assert worst_scipy < 1e-10
    assert worst_exact < 1e-12


def test_the_scores_agree_with_the_papers_formulas():
    """P(alive), the chance of no order in a span, the expected orders (the paper's plain 2F1,
    against the compiled Euler form) and Gamma-Gamma's order value, on random histories."""
    rng = Random(3)
    pops = [btyd.CDNOW_DAYS, btyd.Population(r=2.1, alpha=12.0, a=1.7, b=5.5, p=3.0, q=2.5, v=20.0)]
    for _ in range(400):
        pop = rng.choice(pops)
        x = rng.choice([0, 1, 2, 5, 20, 80])
        t_x = 0.0 if x == 0 else rng.uniform(0.5, 700)
        age = t_x + rng.uniform(0, 400)
        days, mean = rng.uniform(0, 400), rng.uniform(1, 300)
        args = (pop.r, pop.alpha, pop.a, pop.b, pop.p, pop.q, pop.v, 365.0)
        alive, silent, orders, value = btyd_scores(args, x, t_x, age, days, mean)
        assert relative(alive, btyd.p_alive(pop, x, t_x, age)) < 1e-12
        assert relative(silent, btyd.no_order_within(pop, days, x, t_x, age)) < 1e-12
        assert relative(orders, btyd.expected_orders(pop, days, x, t_x, age)) < 1e-9
        assert relative(value, btyd.expected_order_value(pop, x, mean)) < 1e-12


def test_the_lapse_risk_is_the_chance_of_no_order_integrated_over_the_rate():
    """The closed form is what it claims: dead, or alive with no Poisson order for the span,
    averaged over the buying rate's posterior (numerical integration)."""
    for x, t_x, age, days in [(0, 0, 10, 50), (2, 30, 90, 30), (9, 200, 260, 5), (1, 1, 2, 58)]:
        closed = btyd.no_order_within(btyd.CDNOW_DAYS, days, x, t_x, age)
        assert abs(closed - btyd.lapse_risk_by_integration(btyd.CDNOW_DAYS, days, x, t_x, age)) < 1e-8


def test_the_default_parameters_are_cdnows_published_fit_in_days():
    """(Until the defaults are a fit of the UCI invoices.)"""
    assert (DEFAULT_BTYD.r, DEFAULT_BTYD.a, DEFAULT_BTYD.b) == (0.243, 0.793, 2.426)
    assert DEFAULT_BTYD.alpha == pytest.approx(4.414 * 7), "alpha, a time, scales with the unit: weeks to days"


def test_a_model_file_clv_entry_gives_the_parameters_in_days():
    entry = {"bgnbd": {"r": 0.5, "alpha": 2.0, "a": 0.7, "b": 3.0}, "gamma_gamma": {"p": 5, "q": 4, "v": 9}}
    assert BtydParameters.from_model_file(entry | {"time_unit_days": 7.0}).alpha == 14.0
    assert BtydParameters.from_model_file(entry).alpha == 2.0
    spend_not_fitted = BtydParameters.from_model_file({**entry, "gamma_gamma": None, "fitted": {"customers": 9}})
    assert (spend_not_fitted.r, spend_not_fitted.p, spend_not_fitted.v) == (0.5, DEFAULT_BTYD.p, DEFAULT_BTYD.v)
    with pytest.raises(ConfigurationError, match=r"models.json: clv: missing 'v'"):
        BtydParameters.from_model_file({**entry, "gamma_gamma": {"p": 5, "q": 4}}, "models.json")
    with pytest.raises(ConfigurationError, match=r"models.json: clv: q must be above 1"):
        BtydParameters.from_model_file({**entry, "gamma_gamma": {"p": 5, "q": 0.5, "v": 9}}, "models.json")


# --- audiences in a replay ---------------------------------------------------------------

RULES = """
version: v
audiences:
  - id: slipping
    when: "lapse_risk >= 0.8"
  - id: valuable
    when: "clv >= {clv}"
"""


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reference_risk(at_ms: int, orders_ms: list[int]) -> float:
    first, last = orders_ms[0], orders_ms[-1]
    x, t_x, age = len(orders_ms) - 1, (last - first) / DAY_MS, (at_ms - first) / DAY_MS
    return round(btyd.no_order_within(POP, (last + LC.lapse_days * DAY_MS - at_ms) / DAY_MS, x, t_x, age), 4)


def reference_clv(at_ms: int, orders_ms: list[int], totals: list[float]) -> float:
    first, last = orders_ms[0], orders_ms[-1]
    x, t_x, age = len(orders_ms) - 1, (last - first) / DAY_MS, (at_ms - first) / DAY_MS
    value = btyd.expected_order_value(POP, x, sum(totals) / len(totals))
    return round(btyd.expected_orders(POP, 365.0, x, t_x, age) * value, 2)


def changes(outputs) -> list[dict]:
    return [orjson.loads(o.body) for o in outputs if o.stream == "audience_changes"]


def test_audiences_on_lapse_risk_and_clv_change_when_the_formulas_say():
    days = [0, 7, 14]
    orders_ms = [T0_MS + d * DAY_MS for d in days]
    totals = [40.0, 60.0, 80.0]
    after_two, after_three = (reference_clv(orders_ms[n - 1], orders_ms[:n], totals[:n]) for n in (2, 3))
    assert after_two < after_three, "a third order in rhythm raises the expected value"
    threshold = round((after_two + after_three) / 2, 2)
    h = EngineHarness(rules_from(RULES.format(clv=threshold)))
    h.feed([order("u1", days=d, total=t) for d, t in zip(days, totals, strict=True)])
    h.feed([track("Page", "u2", days=70)])  # moves the clock on: u1 is silent
    h.finish()
    found = {(c["data"]["audience"], c["data"]["change"]): c for c in changes(h.outputs) if c["subject"] == "u1"}
    # (the last of each kind: a one-time buyer slips too, until their second order)

    valuable = found[("valuable", "entered")]
    assert valuable["time"] == iso(orders_ms[2]), "enters with the third order"
    assert f"clv={after_three}" in valuable["data"]["reason"]

    slipping = found[("slipping", "entered")]
    at_ms = int(datetime.fromisoformat(slipping["time"]).timestamp() * 1000)
    assert orders_ms[-1] < at_ms < orders_ms[-1] + LC.lapse_days * DAY_MS, "enters after the last order, no event"
    assert reference_risk(at_ms - MINUTE_MS, orders_ms) < 0.8 <= reference_risk(at_ms, orders_ms), (
        "within the minute the risk reaches 0.8"
    )


def test_an_audience_on_p_alive_enters_in_silence_when_it_falls_below_its_threshold():
    h = EngineHarness(rules_from('version: v\naudiences:\n  - id: fading\n    when: "p_alive < 0.3"\n'))
    days = [0, 3, 6, 9]
    h.feed([order("u1", days=d) for d in days])
    h.feed([track("Page", "u2", days=200)])  # moves the clock on: u1 is silent
    entered = [c for c in changes(h.outputs) if c["subject"] == "u1" and c["data"]["change"] == "entered"]
    assert len(entered) == 1 and entered[0]["data"]["audience"] == "fading"
    at_ms = int(datetime.fromisoformat(entered[0]["time"]).timestamp() * 1000)
    state = h.customers.customers["u1"]
    assert state.p_alive(at_ms - MINUTE_MS, LC) >= 0.3 > state.p_alive(at_ms, LC), "within the minute it falls below"
    age = (at_ms - T0_MS) / DAY_MS
    assert round(btyd.p_alive(POP, 3, 9, age), 4) < 0.3 <= round(btyd.p_alive(POP, 3, 9, age - 1 / 1440), 4)
    assert at_ms < T0_MS + (9 + LC.lapse_days) * DAY_MS, "well before the lapse boundary would recheck it"


def test_a_one_time_buyer_is_at_high_lapse_risk_and_worth_the_population_mean_order():
    h = EngineHarness(rules_from(RULES.format(clv=1e9)))
    h.feed([order("u1", 0, total=500.0)])
    state = h.customers.customers["u1"]
    assert state.features.p_alive(T0_MS, LC.population) == 1.0, "no repeat order: BG/NBD cannot have them stopped"
    mean = DEFAULT_BTYD.p * DEFAULT_BTYD.v / (DEFAULT_BTYD.q - 1)
    assert state.features.expected_order_value(LC.population) == round(mean, 2), "one order says nothing of its value"
    assert state.lapse_risk(T0_MS, LC) == round(btyd.no_order_within(POP, 60, 0, 0, 0), 4) > 0.5


# --- the profile in Redis and determinism ------------------------------------------------

SCORES = ("p_alive", "lapse_risk", "expected_orders", "expected_order_value", "clv")


def run_flow(settings: Settings, events: list[dict]) -> list:
    captured: list = []
    run_main(build_flow(settings, source=TestingSource(source_records(events)), sink=TestingSink(captured)))
    return captured


def test_the_engine_s_profile_carries_the_scores_and_null_before_an_order():
    """The document the engine sends to the live store (Redis, or the local engine's own)."""
    h = EngineHarness(rules_from(RULES.format(clv=1e9)))
    h.feed([order("u1", days=0, total=30.0), order("u1", days=10, total=50.0), track("Page", "u2", days=1)])
    at_ms = T0_MS + 12 * DAY_MS
    features = profile(h.customers.customers["u1"], at_ms, LC)["features"]
    assert features["p_alive"] == round(btyd.p_alive(POP, 1, 10, 12), 4)
    assert features["clv"] == reference_clv(at_ms, [T0_MS, T0_MS + 10 * DAY_MS], [30.0, 50.0])
    browser = profile(h.customers.customers["u2"], at_ms, LC)["features"]
    assert all(browser[name] is None for name in SCORES), "no order, no score"


def test_the_redis_profile_carries_the_scores(redis_service, tmp_path):
    prefix = f"t{tmp_path.name[-12:]}"
    events = [call("identify", "u1", 0, traits={"city": "Berlin"})]
    events += [order("u1", days=d, total=t) for d, t in ((0, 30.0), (10, 50.0), (25, 70.0))]
    events += [track("Page", "u2", days=30)]
    url = redis_service["REDIS_URL"]
    run_flow(Settings(out=tmp_path / "unused", shards=2, redis_url=url, redis_prefix=prefix), events)

    async def read() -> dict | None:
        reads = RedisReads(url, prefix)
        try:
            return await reads.profile("u1")
        finally:
            await reads.close()

    profile = asyncio.run(read())  # as GET /v1/customers/u1 reads it
    assert profile is not None
    features = profile["features"]
    assert set(SCORES) <= set(features)
    at_ms = int(datetime.fromisoformat(profile["updated_at"]).timestamp() * 1000)
    first, last = T0_MS, T0_MS + 25 * DAY_MS
    age = (at_ms - first) / DAY_MS
    assert features["p_alive"] == round(btyd.p_alive(POP, 2, 25, age), 4) < 1.0
    assert features["lapse_risk"] == reference_risk(at_ms, [first, T0_MS + 10 * DAY_MS, last])
    assert features["expected_orders"] == round(btyd.expected_orders(POP, 365, 2, 25, age), 4)
    assert features["expected_order_value"] == round(btyd.expected_order_value(POP, 2, 50.0), 2)
    assert features["clv"] == reference_clv(at_ms, [first, T0_MS + 10 * DAY_MS, last], [30.0, 50.0, 70.0])


def test_a_replay_reading_the_scores_is_the_same_whatever_the_shards(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(clv=60) + '  - id: fading\n    when: "p_alive < 0.5"\n')
    rng = Random(5)
    events = []
    for n in range(40):
        for day in sorted(rng.sample(range(90), rng.randint(1, 6))):
            events.append(order(f"u{n}", days=day, total=round(rng.uniform(5, 200), 2)))
    events.sort(key=lambda e: e["timestamp"])
    runs = [
        [(s, o.body) for s, o in run_flow(Settings(out=tmp_path / "unused", shards=shards, rules=rules), events)]
        for shards in (1, 4, 4)
    ]
    audience = sorted(body for s, body in runs[0] if s == "audience_changes")
    assert {orjson.loads(b)["data"]["audience"] for b in audience} == {"slipping", "valuable", "fading"}
    for other in runs[1:]:
        assert sorted(body for s, body in other if s == "audience_changes") == audience
    assert runs[1] == runs[2], "the same replay twice: the same outputs, byte for byte, in the same order"


def test_the_engine_reads_the_model_file_s_clv_entry(tmp_path):
    entry = {"bgnbd": {"r": 1.5, "alpha": 3.0, "a": 0.5, "b": 4.0}, "gamma_gamma": {"p": 2.0, "q": 3.0, "v": 10.0}}
    settings = Settings(out=tmp_path / "unused")
    config: EngineConfig = settings.engine_config()
    assert config.lifecycle.btyd == DEFAULT_BTYD and config.lifecycle.clv_horizon_days == 365
    assert settings._btyd({"clv": entry | {"time_unit_days": 7.0}}).alpha == 21.0
    assert Settings(out=tmp_path, clv_horizon_days=90).engine_config().lifecycle.population[-1] == 90


def test_rules_check_knows_the_scores(tmp_path, capsys):
    from flows.cli import main

    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: v\naudiences:\n"
        '  - id: worth_keeping\n    when: "clv > 200 and p_alive > 0.5 and expected_orders >= 2"\n'
        '  - id: fading_value\n    when: "expected_order_value > 50 and lapse_risk >= 0.7"\n'
    )
    assert main(["rules", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "worth_keeping" in out and "clv" in out and "p_alive" in out
