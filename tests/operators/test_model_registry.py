"""One protocol for every model: the shard's stats, model files and modes go through the list of
models; the recommender learns every product event as the plain-Python reference model did."""

from __future__ import annotations

import pickle
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict
from recommend_reference import CoOccurrence as Reference

import operators.models
from operators.models import MODEL_TYPES, ShardModels, interests, session_products
from operators.models import files as model_files
from operators.models.protocol import OnlineModel
from operators.models.recommend import CoOccurrence, sampled
from state.customer import CustomerState


def test_every_model_follows_the_protocol_and_the_shard_holds_each_through_it():
    models = ShardModels("learn", 1000)
    assert [type(m) for m in models.registry.values()] == list(MODEL_TYPES)
    for model in models.registry.values():
        assert isinstance(model, OnlineModel), type(model).__name__
    assert list(models.stats()) == list(models.export()) == [model.name for model in MODEL_TYPES]
    models.set_mode("frozen")
    assert all(model.frozen for model in models.registry.values())


class _Visits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seen: int


class VisitCounter:
    """A model added later: follows the protocol, and nothing else is changed for it."""

    name: ClassVar[str] = "visits"
    parameters: ClassVar[type[BaseModel]] = _Visits
    required_in_files: ClassVar[bool] = False

    def __init__(self) -> None:
        self.frozen = False
        self.seen = 0

    def learn(self) -> None:
        if not self.frozen:
            self.seen += 1

    def export(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load(self, data: Mapping[str, Any]) -> None:
        self.seen = data["seen"]

    def stats(self) -> dict[str, Any]:
        return {"seen": self.seen}

    @staticmethod
    def merge(exports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {"seen": sum(e["seen"] for e in exports)}


def test_a_new_model_reaches_stats_model_files_and_modes_through_the_registry(tmp_path, monkeypatch):
    monkeypatch.setattr(operators.models, "MODEL_TYPES", (*MODEL_TYPES, VisitCounter))

    def shard(visits: int) -> ShardModels:
        models = ShardModels("learn", 1000)
        counter = models.registry["visits"] = VisitCounter()
        for _ in range(visits):
            counter.learn()
        return models

    a, b = shard(2), shard(3)
    assert a.stats()["visits"] == {"seen": 2}
    path = tmp_path / "models.json"
    model_files.write(path, model_files.merge([a.export(), b.export()]), "v1")
    merged = model_files.read(path)
    assert merged["visits"] == {"seen": 5}, "the replicas are merged by the model's own merge"
    later = shard(0)
    later.load(merged)
    assert later.registry["visits"].seen == 5
    later.set_mode("frozen")
    later.registry["visits"].learn()
    assert later.registry["visits"].seen == 5, "frozen: the mode reaches every model"

    broken = {**merged, "visits": {"seen": "many"}}
    model_files.write(path, broken, "v1")
    with pytest.raises(ValueError, match="visits"):
        model_files.read(path)


TIMEOUT_MS = 30 * 60_000
VIEWED = 0  # the counted kind and the product action of a view


def _customer(session: list[str], at_ms: int) -> CustomerState:
    """A customer whose session, still going at ``at_ms``, viewed the products of ``session`` in order."""
    state = CustomerState("u1", at_ms)
    for n, product in enumerate(session):
        args = (None, None, None, VIEWED, product, None, None, 1, None)
        state.features.apply_product(at_ms, f"v{n}", VIEWED, 0, TIMEOUT_MS, *args)
    return state


def test_the_shards_recommender_learns_every_product_event_as_the_reference_model_does():
    """Checks, carousels, stats, exports and snapshots in between see every earlier product event."""
    rng = random.Random(3)
    products = [f"p{n:02d}" for n in range(80)]
    shard, reference = ShardModels("learn", 1000), Reference()
    session: list[str] = []
    for n in range(6000):
        product = products[min(int(rng.paretovariate(1.1)) - 1, 79)]
        category = f"c{int(product[1:]) % 5}"
        viewed, message_id, at_ms = rng.random() < 0.8, f"m{n}", n * 1000
        state = _customer(session, at_ms)
        held = session_products(state, at_ms, TIMEOUT_MS)  # the session as kept: repeats once
        favourites, categories = interests(state), state.features.category_scores
        if viewed and sampled(message_id):
            reference.check(held, product, favourites, categories)
        reference.learn(held, product, category)
        shard.product_touched(state, product, category, message_id, viewed, at_ms)
        if n % 97 == 0:
            assert shard.recommend(state, 4, at_ms) == reference.recommend(held, 4, (), favourites, categories)
        if n % 1499 == 0:
            shard = pickle.loads(pickle.dumps(shard))  # a recovery snapshot
        session = [*session[-9:], product] if rng.random() < 0.9 else []
    assert shard.stats()["recommendations"] == reference.stats()
    assert shard.export()["recommendations"] == reference.export()
    recommender = shard.recommender.__getstate__()
    assert recommender["popular"] == reference.popular
    assert recommender["popular_in"] == reference.popular_in


def test_frozen_and_off_modes_learn_no_product_event():
    shard = ShardModels("frozen", 1000)
    for n in range(200):
        shard.product_touched(_customer(["a", "b"], n), "c", "k", f"m{n}", True, n)
    assert shard.recommender.stats()["products"] == 0


def test_pickled_models_restore_and_continue_identically():
    """The shard's models pickled with the recommender in its pickle layout (the attributes of the
    plain-Python model it was checked against) restore to the same model and go on learning alike."""
    events = [(["a", "b", "c"][:n], product, "k") for n, product in enumerate(["a", "b", "c", "a", "b"])]
    reference = Reference()
    for history, product, category in events:
        reference.learn(history, product, category)
    current = ShardModels("learn", 1000)
    for n, (history, product, category) in enumerate(events):
        current.product_touched(_customer(history, n), product, category, f"m{n}", False, n)
    expected = current.recommend(_customer(["a"], 5), 2, 5)
    fields = {k: v for k, v in current.__dict__.items() if k not in ("recommender", "registry")}

    class PlainModel:  # unpickles as the plain-Python CoOccurrence did: a bare object, then its attributes
        def __init__(self, model: Reference) -> None:
            self.state = dict(model.__dict__)

        def __reduce__(self) -> tuple[Any, ...]:
            return CoOccurrence.__new__, (CoOccurrence,), self.state

    old = object.__new__(ShardModels)
    old.__dict__.update({**fields, "recommender": PlainModel(reference)})
    restored = pickle.loads(pickle.dumps(old))
    assert restored.recommend(_customer(["a"], 5), 2, 5) == expected
    restored.product_touched(_customer(["a"], 6), "d", "k", "m9", False, 6)
    assert restored.stats()["recommendations"]["products"] == 4
    assert restored.export() == {**current.export(), "recommendations": restored.recommender.export()}
