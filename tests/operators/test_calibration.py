"""The calibrator of model probabilities: identity without data, monotone, learns a known
miscalibration, merges and round-trips exactly; reliability tables; where the models use it."""

from __future__ import annotations

import itertools
import pickle
import random

import orjson
import pytest

from operators.models import files as model_files
from operators.models.bandit import OfferBandit
from operators.models.calibration import BINS, WINDOW, Calibrator, bin_of, reliability
from operators.models.propensity import FEATURES, Calibration, PropensityModel
from schemas.errors import ConfigurationError

GRID = [i / 200 for i in range(1, 200)]


def squared_stream(n: int, seed: int = 3) -> list[tuple[float, bool]]:
    """Raw scores uniform on (0, 1) whose outcomes occur with chance score squared: over-confident."""
    generator = random.Random(seed)
    return [(raw, generator.random() < raw * raw) for raw in (generator.random() for _ in range(n))]


def test_without_outcomes_the_calibrator_is_the_identity():
    calibrator = Calibrator()
    assert [calibrator(p) for p in GRID] == pytest.approx(GRID, abs=1e-12)
    assert (calibrator(0.0), calibrator(1.0), calibrator(0), calibrator(1)) == (0.0, 1.0, 0.0, 1.0)


def test_the_map_is_monotone_whatever_the_outcomes():
    generator = random.Random(11)
    calibrator = Calibrator()
    for _ in range(WINDOW + 300):  # outcomes unrelated to the score: violators to pool
        calibrator.learn(generator.random() ** 3, generator.random() < 0.3)
    mapped = [calibrator(p) for p in GRID]
    assert all(a <= b for a, b in itertools.pairwise(mapped))
    assert mapped[0] >= 0.0 and mapped[-1] <= 1.0


def test_it_learns_a_known_miscalibration_from_a_synthetic_stream():
    """Outcomes happen with chance raw**2: the calibrated probability comes within a few points of
    that everywhere, and its expected calibration error on later outcomes is a fraction of the raw one."""
    calibrator = Calibrator()
    for raw, y in squared_stream(2 * WINDOW):
        calibrator.learn(raw, y)
    for p in (0.2, 0.4, 0.6, 0.8, 0.9):
        assert calibrator(p) == pytest.approx(p * p, abs=0.07), p
    raw_quality, calibrated_quality = Calibration(), Calibration()
    for raw, y in squared_stream(5000, seed=4):  # held out: scored, then learnt
        raw_quality.add(raw, y)
        calibrated_quality.add(calibrator(raw), y)
        calibrator.learn(raw, y)
    assert raw_quality.reliability()["ece"] > 0.15
    assert calibrated_quality.reliability()["ece"] < 0.03


def test_it_forgets_outcomes_older_than_two_windows():
    """The model it calibrates keeps learning: a raw score's meaning from long ago no longer counts."""
    calibrator = Calibrator()
    for raw, _ in squared_stream(2 * WINDOW):
        calibrator.learn(raw, True)  # first every outcome positive...
    assert calibrator(0.3) > 0.8
    for raw, _ in squared_stream(2 * WINDOW, seed=5):
        calibrator.learn(raw, False)  # ...then none
    assert calibrator(0.7) < 0.1
    assert calibrator.count == 2 * WINDOW


def test_replicas_merged_equal_one_calibrator_over_all_their_outcomes():
    stream = squared_stream(WINDOW - 50)
    whole, replicas = Calibrator(), [Calibrator() for _ in range(3)]
    for i, (raw, y) in enumerate(stream):
        whole.learn(raw, y)
        replicas[i % 3].learn(raw, y)
    merged = Calibrator()
    merged.load(Calibrator.merge([r.export() for r in replicas]))
    assert merged.export() == whole.export()
    assert [merged(p) for p in GRID] == [whole(p) for p in GRID]


def test_export_load_and_pickle_round_trips_give_the_same_map():
    calibrator = Calibrator()
    for raw, y in squared_stream(WINDOW + 123):
        calibrator.learn(raw, y)
    loaded = Calibrator()
    loaded.load(orjson.loads(orjson.dumps(calibrator.export())))  # plain integers only
    unpickled = pickle.loads(pickle.dumps(calibrator))
    expected = [calibrator(p) for p in GRID]
    assert [loaded(p) for p in GRID] == expected
    assert [unpickled(p) for p in GRID] == expected
    for raw, y in squared_stream(WINDOW, seed=9):  # and they go on learning alike (generations too)
        for c in (calibrator, loaded, unpickled):
            c.learn(raw, y)
    assert loaded.export() == unpickled.export() == calibrator.export()


def test_bins_are_half_logit_units_wide_and_clamped():
    assert bin_of(0.5) == BINS // 2
    assert bin_of(1e-9) == 0 and bin_of(0.0) == 0
    assert bin_of(1 - 1e-9) == BINS - 1 and bin_of(1.0) == BINS - 1
    assert bin_of(0.6) == BINS // 2  # logit 0.41
    assert bin_of(0.65) == BINS // 2 + 1  # logit 0.62


def test_reliability_per_decile_and_expected_calibration_error():
    quality = Calibration()
    for _ in range(30):
        quality.add(0.12, False)
    for i in range(10):
        quality.add(0.72, i < 5)  # said 0.72, observed 0.5
    table = quality.reliability()
    assert table["deciles"] == [
        {"decile": 1, "outcomes": 30, "predicted": 0.12, "observed": 0.0},
        {"decile": 7, "outcomes": 10, "predicted": 0.72, "observed": 0.5},
    ]
    assert table["ece"] == pytest.approx((30 * 0.12 + 10 * 0.22) / 40, abs=1e-4)
    assert reliability([0] * 20, [0] * 20, [0] * 20) == {"deciles": [], "ece": None}


def test_the_propensity_score_rules_read_is_the_raw_score_calibrated_after_held_out_outcomes():
    model = PropensityModel()
    x, other = tuple(float(i) for i, _ in enumerate(FEATURES)), tuple(float(-i) for i, _ in enumerate(FEATURES))
    for i in range(300):
        raw_before = model.raw_score(x if i % 2 else other)
        raw, _ = model.learn(x if i % 2 else other, i % 4 == 1)
        assert raw == raw_before, "scored before the model learnt the outcome"
    assert model.calibrator.count == 300
    assert model.score(x) == model.calibrator(model.raw_score(x))
    assert model.score(x) != model.raw_score(x)


def test_a_frozen_model_does_not_learn_its_calibration_either():
    model = PropensityModel(frozen=True)
    x = tuple(float(i) for i, _ in enumerate(FEATURES))
    model.learn(x, True)
    assert model.calibrator.count == 0 and model.quality.count == 1


def test_model_files_carry_the_calibration_and_older_files_load_without_it(tmp_path):
    model = PropensityModel()
    x = tuple(float(i % 4) for i, _ in enumerate(FEATURES))
    for i in range(200):
        model.learn(tuple(v + i % 3 for v in x), i % 3 != 0)
    bandit = OfferBandit(0.1, 7)
    path = tmp_path / "models.json"
    model_files.write(path, {"propensity": model.export(), "next_best_offer": bandit.export()}, "v")
    loaded = PropensityModel()
    loaded.load(model_files.read(path)["propensity"])
    assert loaded.score(x) == pytest.approx(model.score(x), abs=1e-12)
    assert loaded.calibrator.export() == model.calibrator.export()

    older = model.export()
    del older["calibration"]
    model_files.write(path, {"propensity": older, "next_best_offer": {"segments": {}}}, "v")
    from_older = PropensityModel()
    from_older.load(model_files.read(path)["propensity"])
    assert from_older.score(x) == from_older.raw_score(x), "no calibration learnt: the identity"

    broken = model.export()
    broken["calibration"]["current"]["positives"] = [1, 2]
    model_files.write(path, {"propensity": broken, "next_best_offer": {"segments": {}}}, "v")
    with pytest.raises(ConfigurationError, match=r"calibration.*current.*positives"):
        model_files.read(path)


def test_the_merged_propensity_file_adds_the_replicas_calibration_counts():
    replicas = [PropensityModel() for _ in range(2)]
    x = tuple(float(i) for i, _ in enumerate(FEATURES))
    for i in range(100):
        replicas[i % 2].learn(x, i % 5 == 0)
    merged = PropensityModel.merge([r.export() for r in replicas])["calibration"]
    counts = [sum(merged["current"][name]) for name in ("positives", "negatives")]
    assert counts == [20, 80]


def test_the_offer_policy_states_a_calibrated_click_rate_learnt_from_rewards():
    """Rewards are rare (1 in 10) and new segments keep coming: the shrunk mean of an offer tried a
    few times says far more (1/2 untried), the calibrated rate it states comes near the truth, and it
    round-trips with the policy's parameters."""
    bandit = OfferBandit(0.0, 7)
    generator = random.Random(2)
    for i in range(3000):
        segment = f"s{i // 10}"  # each segment tried 10 times
        choice = bandit.choose(f"d{i}", ["a"], segment)
        bandit.learn(choice.offer, segment, generator.random() < 0.1)
    choice = bandit.choose("next", ["a"], "a-new-segment")
    assert choice.scores["a"] == 0.5 and choice.expected_rate < 0.2
    tables = Calibration.from_counts(bandit.stats()["progressive"]).reliability()
    assert tables["ece"] < 0.05
    other = OfferBandit(0.0, 7)
    other.load(orjson.loads(orjson.dumps(bandit.export())))
    assert other.choose("next", ["a"], "a-new-segment") == choice
    merged = OfferBandit.merge([bandit.export(), OfferBandit(0.0, 7).export()])
    assert merged["calibration"] == bandit.export()["calibration"]


def test_a_replay_reports_each_models_reliability_in_its_summary(tmp_path):
    """summary.json: per model that states probabilities, predicted against observed per decile and
    the expected calibration error, from the progressive counts of every shard."""
    from flows.cli import main

    out = tmp_path / "out"
    assert main(["run", "--out", str(out), "--quiet"]) == 0
    models = orjson.loads((out / "summary.json").read_bytes())["models"]
    for name in ("propensity", "next_best_offer"):
        table = models[name]["reliability"]
        outcomes = sum(row["outcomes"] for row in table["deciles"])
        assert outcomes == models[name]["quality"]["outcomes"] > 100, name
        assert 0 <= table["ece"] < 0.25, name
        for row in table["deciles"]:
            assert row["decile"] / 10 <= row["predicted"] <= (row["decile"] + 1) / 10
    raw = models["propensity"]["reliability_raw"]
    assert sum(row["outcomes"] for row in raw["deciles"]) == models["propensity"]["quality"]["outcomes"]


def test_metrics_count_predictions_beside_outcomes_by_decile():
    """Prometheus: the sum of the probabilities given, per model and decile, beside the outcomes
    (their ratio is the mean prediction of the reliability table)."""
    from conftest import CART_RULE, EngineHarness, added, order, rules_from, track
    from prometheus_client import REGISTRY

    from operators.engine import EngineConfig

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"model": "propensity", "decile": "5", **labels}) or 0.0

    before = value("nudgeflow_model_predicted_total"), value("nudgeflow_model_outcomes_total", outcome="positive")
    h = EngineHarness(rules_from(CART_RULE), EngineConfig(models="frozen"))  # every score 0.5: decile 5
    metrics = h.pipeline.customers[0].metrics
    h.feed([added("u1", 0), track("Page", "u2", 40), order("u1", 60)])
    metrics.publish(final=True)
    metrics.publish(final=True)  # nothing new: nothing counted twice
    after = value("nudgeflow_model_predicted_total"), value("nudgeflow_model_outcomes_total", outcome="positive")
    assert (after[0] - before[0], after[1] - before[1]) == (0.5, 1)


def test_a_shard_snapshot_restores_the_calibration_exactly():
    from conftest import CART_RULE, EngineHarness, added, order, rules_from, track

    from operators.engine import EngineConfig

    def harness() -> EngineHarness:
        config = EngineConfig(models="learn", propensity_horizon_ms=7 * 86_400_000, snapshots=True)
        return EngineHarness(rules_from(CART_RULE), config)

    h = harness()
    for i in range(40):
        user = f"u{i}"
        h.feed([added(user, i * 100), track("Page", "z", i * 100 + 40)])
        if i % 3:
            h.feed([order(user, i * 100 + 40)])
    h.feed([track("Page", "z", 40 * 100 + 8 * 24 * 60)])  # every horizon passes
    before = h.customers.models.propensity
    assert before.calibrator.count > 30
    restored = harness()
    restored.customers.restore(pickle.loads(pickle.dumps(h.customers.snapshot())))
    after = restored.customers.models.propensity
    assert after.calibrator.export() == before.calibrator.export()
    assert after.quality.to_counts() == before.quality.to_counts()
    x = tuple(float(i % 3) for i, _ in enumerate(FEATURES))
    assert after.score(x) == before.score(x)
