"""The model file's clv entry in the engine: loaded by every replica, never learnt, carried into the run's
model file, and on a restart taken from the model file (a refreshed fit) over the snapshot's."""

from __future__ import annotations

import pickle

import pytest
from conftest import EngineHarness, order, pickled_snapshots, restore_snapshots

from operators.engine import EngineConfig
from operators.models import ShardModels
from operators.models import files as model_files
from operators.models.clv import ClvParameters, LifetimeValue


def entry(r: float) -> dict:
    return ClvParameters.model_validate(
        {"bgnbd": {"r": r, "alpha": 50.7, "a": 0.03, "b": 2.6}, "gamma_gamma": {"p": 1.75, "q": 3.8, "v": 608.7}}
    ).model_dump()


def models_file(r: float) -> dict:
    return {**model_files.merge([ShardModels("learn", 1000).export()]), "clv": entry(r)}


def test_replicas_carry_the_loaded_entry_and_merge_keeps_it():
    replicas = [ShardModels("learn", 1000) for _ in range(3)]
    for replica in replicas:
        replica.load(models_file(0.7))
        replica.clv.learn("anything")  # nothing to learn in the stream
    merged = model_files.merge([replica.export() for replica in replicas])
    assert merged["clv"] == entry(0.7)
    assert sum(replica.stats()["clv"]["replicas_loaded"] for replica in replicas) == 3
    current = replicas[0].clv.current()
    assert current is not None and current.purchases().r == 0.7 and current.spend() is not None


def test_without_a_fit_a_model_file_has_no_clv_entry():
    assert "clv" not in model_files.merge([ShardModels("learn", 1000).export()])
    assert LifetimeValue().current() is None


def test_a_misnamed_field_of_the_entry_is_refused_naming_it(tmp_path):
    bad = models_file(0.7)
    bad["clv"] = {**bad["clv"], "bgnbd": {"r": 0.7, "alpha": 50.7, "a": 0.03, "beta": 2.6}}
    path = tmp_path / "models.json"
    model_files.write(path, bad, "v")
    with pytest.raises(ValueError, match=r"models.json: \('clv', 'bgnbd', 'b'\)"):
        model_files.read(path)
    bad["clv"] = {**entry(0.7), "bgnbd": {"r": -1.0, "alpha": 50.7, "a": 0.03, "b": 2.6}}
    model_files.write(path, bad, "v")
    with pytest.raises(ValueError, match="greater than 0"):
        model_files.read(path)


def test_a_restart_adopts_the_model_files_refreshed_entry_and_keeps_what_replicas_learnt(starter_rules):
    first = EngineHarness(starter_rules, EngineConfig(snapshots=True, initial_models=models_file(0.5)))
    first.feed([order("u1", 0), order("u1", 60)])
    snapshots = pickled_snapshots(first)
    learnt = first.customers.models.export()  # type: ignore[union-attr]

    refreshed = restore_snapshots(
        EngineHarness(starter_rules, EngineConfig(snapshots=True, initial_models=models_file(0.9))), snapshots
    )
    models = refreshed.customers.models
    assert models is not None and models.clv.export() == entry(0.9)
    assert {k: v for k, v in models.export().items() if k != "clv"} == {k: v for k, v in learnt.items() if k != "clv"}

    kept = restore_snapshots(EngineHarness(starter_rules, EngineConfig(snapshots=True)), snapshots)
    assert kept.customers.models is not None and kept.customers.models.clv.export() == entry(0.5)


def test_a_snapshot_from_before_lifetime_value_restores_without_it():
    models = ShardModels("learn", 1000)
    state = dict(models.__dict__)
    del state["clv"]
    old = object.__new__(ShardModels)
    old.__dict__.update({k: v for k, v in state.items() if k not in ("registry", "scorers")})
    restored = pickle.loads(pickle.dumps(old))
    assert restored.clv.current() is None and "clv" in restored.registry
