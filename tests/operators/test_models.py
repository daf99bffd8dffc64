"""Online models in the engine: delayed labels, no leakage, frozen mode, recovery, decisions."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from conftest import CART_RULE, EngineHarness, added, call, decisions, order, product_views, rules_from, track

from operators.engine import OUTCOME, EngineConfig
from operators.models import open_decisions
from operators.models.propensity import FEATURES, Calibration, PropensityModel, _pipeline

DAY_MIN = 24 * 60
CART = CART_RULE


def harness(mode: str = "learn", rules: str = CART, horizon_days: int = 7) -> EngineHarness:
    config = EngineConfig(models=mode, propensity_horizon_ms=horizon_days * DAY_MIN * 60_000, snapshots=True)
    return EngineHarness(rules_from(rules), config)


def learnt(h: EngineHarness) -> int:
    return h.customers.models.propensity.learnt


def outcomes(h: EngineHarness) -> Calibration:
    return h.customers.models.propensity.quality


def test_an_order_within_the_horizon_labels_the_decision_1_with_its_features_then():
    h = harness()
    h.feed([added("u1", 0, price=40.0), track("Page", "u2", 40)])  # the cart trigger fires at 30 min
    state = h.customers.customers["u1"]
    [(decided, features)] = open_decisions(state)
    assert decided == state.timer(OUTCOME)[0] - 7 * DAY_MIN * 60_000
    cart_value = features[FEATURES.index("cart_value")]
    h.feed([added("u1", 60, product="p2", price=500.0)])  # after the decision: must not leak into it
    assert open_decisions(state)[0][1][FEATURES.index("cart_value")] == cart_value
    h.feed([order("u1", 2 * DAY_MIN)])
    assert learnt(h) == 1 and sum(outcomes(h).positives) == 1 and not state.outcomes
    assert state.timer(OUTCOME) is None


def test_an_anonymous_customer_s_open_decision_moves_to_the_user_on_linking_with_its_features():
    h = harness()
    h.feed([added(None, 0, price=40.0, anon="a1"), track("Page", "u2", 40)])  # the anonymous cart's reminder
    [anonymous] = open_decisions(h.identity.customers["a1"])
    h.feed([added(None, 45, price=10.0, anon="a9"), track("Page", "u2", 80)])
    h.feed([call("identify", "u1", 90, anon="a1")])  # links a1 to u1: its state moves
    state = h.customers.customers["u1"]
    assert open_decisions(state) == [anonymous] and state.timer(OUTCOME)[0] == anonymous[0] + 7 * DAY_MIN * 60_000
    h.feed([order("u1", 100)])
    assert h.customers.models.propensity.learnt == 1 and not state.outcomes


def test_the_horizon_passing_without_an_order_labels_it_0():
    h = harness(horizon_days=1)
    h.feed([added("u1", 0), track("Page", "u2", 40)])
    h.feed([track("Page", "u2", DAY_MIN + 40)])  # the clock passes decision + 1 day (+ lateness)
    assert learnt(h) == 1 and sum(outcomes(h).negatives) == 1
    h.feed([order("u1", DAY_MIN + 60)])  # too late for that decision
    assert learnt(h) == 1 and sum(outcomes(h).positives) == 0


def test_an_order_before_the_decision_is_not_its_outcome():
    h = harness()
    h.feed([added("u1", 0), track("Page", "u2", 40)])
    h.feed([order("u1", 10)])  # late: ordered before the trigger fired (it arrives after)
    assert learnt(h) == 0 and h.customers.customers["u1"].outcomes


def test_frozen_models_score_and_measure_but_do_not_learn():
    h = harness("frozen")
    h.feed([added("u1", 0), track("Page", "u2", 40), order("u1", 60)])
    model = h.customers.models.propensity
    assert model.learnt == 0 and outcomes(h).count == 1
    assert decisions(h.outputs, "triggers")[0]["data"]["score"] == 0.5, "an untrained model says 0.5"


def test_models_off_give_no_score_and_keep_no_outcomes():
    h = harness("off")
    h.feed([added("u1", 0), track("Page", "u2", 40)])
    assert decisions(h.outputs, "triggers")[0]["data"]["score"] is None
    assert not h.customers.customers["u1"].outcomes and h.customers.models is None


def test_a_rule_reading_the_score_only_nudges_the_persuadable_band():
    rules = CART.replace("once_per: cart", "once_per: cart\n    when: 'propensity < 0.9'")
    events = [added("u1", 0, price=40.0), track("Page", "u2", 40)]
    probe = harness("frozen", rules)
    probe.feed(events)
    [(_, seen)] = open_decisions(probe.customers.customers["u1"])  # the features this decision point has
    trained = harness(rules=rules)
    model: PropensityModel = trained.customers.models.propensity
    for _ in range(300):
        model.learn(seen, True)  # customers like this one always ordered
        model.learn(tuple(0.0 for _ in FEATURES), False)
    trained.feed(events)
    assert decisions(trained.outputs, "triggers") == [], "a likely buyer is not nudged"
    [nudge] = decisions(probe.outputs, "triggers")
    assert nudge["data"]["score"] == 0.5 and "propensity < 0.9" in nudge["data"]["reason"]
    # the suppressed decision point is still recorded, so the model keeps learning about it
    assert trained.customers.customers["u1"].outcomes


def test_model_state_survives_snapshot_and_restore_with_the_same_predictions():
    h = harness()
    for i in range(20):
        user = f"u{i}"
        h.feed([added(user, i * 100), track("Page", "z", i * 100 + 40)])
        if i % 2:
            h.feed([order(user, i * 100 + 40)])
    snapshot = h.customers.snapshot()
    restored = harness()
    restored.customers.restore(pickle_round_trip(snapshot))
    x = tuple(float(i % 3) for i, _ in enumerate(FEATURES))
    assert restored.customers.models.propensity.score(x) == h.customers.models.propensity.score(x)
    assert learnt(restored) == learnt(h) > 0


def pickle_round_trip(value):
    import pickle

    return pickle.loads(pickle.dumps(value))


def test_export_and_load_give_the_same_scores():
    model = PropensityModel()
    x = tuple(float(i) for i, _ in enumerate(FEATURES))
    for i in range(50):
        model.learn(x, i % 3 == 0)
    exported = orjson.loads(orjson.dumps(model.export()))  # plain JSON numbers, nothing to unpickle
    other = PropensityModel()
    other.load(exported)
    assert other.score(x) == pytest.approx(model.score(x), abs=1e-12)


def test_progressive_counts_of_shards_add_up_to_the_same_auc():
    whole, a, b = Calibration(), Calibration(), Calibration()
    for i in range(200):
        p, y = (i % 17) / 17, i % 3 == 0
        whole.add(p, y)
        (a if i % 2 else b).add(p, y)
    merged = Calibration.from_counts(_added(a.to_counts(), b.to_counts()))
    assert merged.summary() == whole.summary()


def _added(x: dict, y: dict) -> dict:
    from connectors.files import add_counts

    total: dict = {}
    add_counts(total, x)
    add_counts(total, y)
    return total


def test_model_metrics_count_outcomes_by_decile_of_the_score():
    from prometheus_client import REGISTRY

    def value(outcome: str) -> float:
        labels = {"model": "propensity", "decile": "5", "outcome": outcome}
        return REGISTRY.get_sample_value("nudgeflow_model_outcomes_total", labels) or 0.0

    before = value("positive")
    h = harness("frozen")  # every score 0.5: decile 5
    metrics = h.pipeline.customers[0].metrics  # published after every batch
    h.feed([added("u1", 0), track("Page", "u2", 40), order("u1", 60)])
    metrics.publish(final=True)
    metrics.publish(final=True)  # nothing new: nothing counted twice
    assert value("positive") - before == 1


def test_a_run_writes_its_models_and_a_later_run_starts_from_them(tmp_path, monkeypatch):
    from flows.cli import main
    from operators.models import files as model_files

    first = tmp_path / "first"
    assert main(["run", "--out", str(first), "--quiet"]) == 0
    models = model_files.read(first / "models.json")
    assert models["propensity"]["learnt"] > 1000, "the replicas' learning is merged into one file"
    second = tmp_path / "second"
    env_file = tmp_path / "settings.yaml"
    env_file.write_text(f"model_file: {first / 'models.json'}\nmodels: frozen\n")
    monkeypatch.setenv("NUDGEFLOW_CONFIG", str(env_file))
    assert main(["run", "--out", str(second), "--quiet"]) == 0
    frozen = orjson.loads((second / "triggers.push.jsonl").read_bytes().splitlines()[0])
    assert frozen["data"]["score"] != 0.5, "a frozen run scores with the loaded parameters"


def test_a_changed_or_foreign_model_file_is_refused(tmp_path):
    from operators.models import files as model_files

    model = PropensityModel()
    path = tmp_path / "models.json"
    model_files.write(path, {"propensity": model.export(), "next_best_offer": {"segments": {}}}, "v")
    assert model_files.read(path)["propensity"]["intercept"] == 0.0
    path.write_bytes(path.read_bytes().replace(b'"intercept": 0.0', b'"intercept": 5.0'))
    with pytest.raises(ValueError, match="does not match its sha256"):
        model_files.read(path)
    path.write_bytes(b'{"format": "pickle", "models": {}}')
    with pytest.raises(ValueError, match=r"not a nudgeflow\.models/1 file"):
        model_files.read(path)


def test_a_models_snapshot_costs_what_was_learnt_since_the_last_and_restores_them_exactly():

    h = harness()
    h.feed(product_views(2000))
    first = h.customers.snapshot()[1]["models"]
    h.feed(product_views(10, 2000))
    rest, base, journals = h.customers.snapshot()[1]["models"]
    assert base is first[1], "the recommender's base is not pickled again"
    assert len(rest) + sum(map(len, journals)) < len(base) / 5, "what the 10 views since changed, mostly"
    h.feed(product_views(1500, 2010))  # more checks and lessons, then a restore from the third snapshot
    restored = harness()
    restored.customers.restore(pickle_round_trip(h.customers.snapshot()))
    before, after = h.customers.models, restored.customers.models
    assert after.stats() == before.stats() and after.stats()["recommendations"]["checked"] > 0
    assert after.recommender.__getstate__() == before.recommender.__getstate__(), "the same model, link for link"
    later = product_views(100, 3510)
    assert restored.feed(later) == h.feed(later)
    assert orjson.dumps(after.recommender.export()) == orjson.dumps(before.recommender.export())


def test_models_keep_no_journal_of_what_they_learnt_in_a_run_without_snapshots():
    unsnapshotted = EngineHarness(rules_from(CART), EngineConfig(models="learn"))
    unsnapshotted.feed(product_views(500))
    models = unsnapshotted.customers.models
    assert models.recommender.stats()["products"] > 0
    assert models._journal is None, "a replay without snapshots must not keep every product event"


def test_the_propensity_score_is_the_pipelines_own_to_the_bit():
    """The raw score (before calibration) is computed natively from the pipeline's parameters: the
    same number (and type) as the pipeline's ``predict_proba_one`` gives, and the same parameters
    after it (the pipeline adds a variance, or a weight from its initializer, for an input it lacks),
    for a model that has learnt nothing, one learning (one input never varies), inputs far enough out
    that River's logistic function answers the integers 0 and 1, and models loaded from a model file,
    whole or not."""
    import copy
    import random

    generator = random.Random(5)

    def inputs(scale: float) -> tuple[float, ...]:
        x = [generator.uniform(-scale, scale) for _ in FEATURES]
        x[3] = 1.0  # a variance of 0: scaled to 0
        return tuple(x)

    def parameters(pipeline: Any) -> tuple[Any, ...]:
        scaler, regression = pipeline.steps.values()
        return dict(scaler.means), dict(scaler.vars), regression._weights.to_dict(), regression.intercept

    answers = set()

    def check(model: PropensityModel, x: tuple[float, ...]) -> None:
        built = model.pipeline is not None  # a model builds its pipeline when it first learns
        twin = copy.deepcopy(model.pipeline) if built else _pipeline()
        expected = twin.predict_proba_one(dict(zip(FEATURES, x, strict=True))).get(True, 0.5)
        score = model.raw_score(x)
        assert (score, type(score)) == (expected, type(expected))
        if built:
            assert parameters(model.pipeline) == parameters(twin)
        answers.add(type(score))

    model = PropensityModel()
    for step in range(200):
        check(model, inputs(3.0))
        check(model, inputs(1e4))
        model.learn(inputs(3.0), step % 3 == 0)
    exported = model.export()
    partial = {**exported, "weights": dict(list(exported["weights"].items())[:5])}
    for data in (exported, partial):
        loaded = PropensityModel()
        loaded.load(data)
        for _ in range(20):
            check(loaded, inputs(3.0))
    assert answers == {int, float}
