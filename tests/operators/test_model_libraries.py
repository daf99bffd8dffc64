"""The models' library loads without what they never use, and the models learn, score, snapshot and
restore as with all of it loaded (see ``operators/models/libraries.py``). Each check runs in a fresh
interpreter: what a process has imported already cannot be imported lazily again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from operators.models.propensity import FEATURES, PropensityModel, _pipeline

ROOT = Path(__file__).resolve().parents[2]

TRAIN = """
import pickle, random, sys
from operators.models import ShardModels, import_model_libraries
from operators.models.propensity import FEATURES

import_model_libraries()
models = ShardModels("learn", horizon_ms=1)
rng = random.Random(7)
examples = [(tuple(rng.uniform(0, 9) for _ in FEATURES), rng.random() < 0.3) for _ in range(300)]
for x, y in examples:
    models.propensity.learn(x, y)
probe = [x for x, _ in examples[:20]]
scores = [models.propensity.score(x) for x in probe]
"""
REPORT = """
import orjson
heavy = sorted(name for name in ("scipy.stats._stats_py", "scipy.sparse._base", "river.tree.hoeffding_tree")
               if name in sys.modules)
print(orjson.dumps({"scores": scores, "export": models.export()["propensity"], "loaded": heavy}).decode())
"""


def _run(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout.splitlines()[-1])


def test_the_models_learn_and_score_without_loading_scipy_statistics_or_rivers_unused_parts():
    run = _run(TRAIN + REPORT)
    assert run["loaded"] == [], "these take about a second of CPU to import at every start"
    assert run["export"]["learnt"] == 300


def test_the_models_learn_and_score_the_same_with_all_of_river_and_scipy_loaded_first():
    everything = "import scipy.stats, scipy.sparse, river.tree, river.datasets, river.proba\n"
    deferred, eager = _run(TRAIN + REPORT), _run(everything + TRAIN + REPORT)
    assert eager["loaded"], "the first process loaded all of them"
    assert (deferred["scores"], deferred["export"]) == (eager["scores"], eager["export"])


def test_a_snapshot_taken_with_all_of_river_loaded_restores_and_scores_the_same(tmp_path):
    snapshot = tmp_path / "models.pickle"
    everything = "import scipy.stats, scipy.sparse, river.tree, river.datasets, river.proba\n"
    save = f"\npickle.dump(models.snapshot(), open({str(snapshot)!r}, 'wb'))\n"
    taken = _run(everything + TRAIN + save + REPORT)
    restore = (
        TRAIN
        + f"\nmodels = ShardModels.from_snapshot(pickle.load(open({str(snapshot)!r}, 'rb')))\n"
        + "scores = [models.propensity.score(x) for x in probe]\n"
    )
    restored = _run(restore + REPORT)
    assert restored["loaded"] == []
    assert (restored["scores"], restored["export"]) == (taken["scores"], taken["export"])


def test_a_deferred_module_loads_when_something_uses_it():
    used = _run(
        "import sys, orjson\nimport operators.models\nfrom scipy import stats\n"
        "cdf = float(stats.norm.cdf(0.0))\n"
        "print(orjson.dumps({'cdf': cdf, 'loaded': 'scipy.stats._stats_py' in sys.modules}).decode())"
    )
    assert used == {"cdf": 0.5, "loaded": True}


def test_a_model_that_learns_nothing_scores_and_exports_as_a_new_pipeline_without_importing_river():
    fresh = _run(
        "import sys, orjson\nfrom operators.models import ShardModels\n"
        "from operators.models.propensity import FEATURES\n"
        "models = ShardModels('learn', horizon_ms=1)\n"
        "scores = [models.propensity.score(tuple(float(i * k) for i in range(len(FEATURES)))) for k in (0, 1, 1e6)]\n"
        "merged = models.propensity.merge([models.propensity.export()])\n"
        "print(orjson.dumps({'scores': scores, 'merged': merged, 'river': 'river' in sys.modules}).decode())"
    )
    new_pipeline = PropensityModel()
    new_pipeline.pipeline = _pipeline()  # as every model started before it was built on first use
    scores = [new_pipeline.score(tuple(float(i * k) for i in range(len(FEATURES)))) for k in (0, 1, 1e6)]
    merged = orjson.loads(orjson.dumps(PropensityModel.merge([new_pipeline.export()])))
    assert fresh == {"scores": scores, "merged": merged, "river": False}
