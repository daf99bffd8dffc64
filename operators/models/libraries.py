"""River, which the models are built with, loaded without the parts of it and of SciPy they never use.

River's packages import, as they load, SciPy's statistics, sparse matrices, file formats and image
filters, and River's own datasets, streams, trees and probability distributions: about a second of
CPU at every start, while the models (a scaler, a logistic regression, ADWIN, running means) run no
line of them. :func:`defer_unused` has those modules created empty and run only when something
first reads one of their attributes, with the standard library's :class:`importlib.util.LazyLoader`
(installed through a finder ahead of the others on ``sys.meta_path``). Should something call them
after all, they load then, as they would have at start: results never depend on it.

Two adjustments to ``LazyLoader`` for Python 3.11: the import system reads a module's ``__spec__``
(on every ``import`` of it, to see whether it is still loading) and a package's ``__path__`` (to
import a submodule of it) without meaning to use the module, so these two do not load it (Python
3.14 passes ``__spec__`` through itself); and one lock makes sure a module loads once when several
worker threads reach it at the same moment.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from collections.abc import Sequence
from importlib.machinery import ModuleSpec, PathFinder
from typing import Any

DEFERRED = frozenset(
    {
        "river.datasets",  # imported by river.drift's __init__ (for its examples), with River's streams
        "river.drift.datasets",
        "river.feature_extraction",  # river.preprocessing's GapEncoder uses one function of it
        "river.proba",  # for the Bayesian linear regression of river.linear_model
        "river.stream",  # its ARFF reader imports scipy.io
        "river.tree",  # for river.feature_extraction's random trees
        "scipy.io",
        "scipy.ndimage",
        "scipy.sparse",
        "scipy.stats",  # for river.drift's KSWIN
        # NumPy's submodules that scipy.special (imported by River's losses) reads while it copies
        # NumPy into its array-API namespace, without running anything of them
        "numpy.f2py",
        "numpy.ma",
        "numpy.polynomial",
        "numpy.random",
        "numpy.testing",
    }
)
"""Modules River imports that the models never use (their submodules load as usual, when imported)."""
_LOAD_LOCK = threading.RLock()
_READ_WITHOUT_LOADING = frozenset({"__spec__", "__path__"})


def defer_unused() -> None:
    """Have the :data:`DEFERRED` modules load on first use; no effect on one imported already,
    nor when called again."""
    if not any(isinstance(finder, _DeferringFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeferringFinder())


class _DeferredModule(importlib.util._LazyModule):
    """A module that runs on the first read of one of its attributes (but ``__spec__``, ``__path__``)."""

    def __getattribute__(self, attr: str) -> Any:
        if attr in _READ_WITHOUT_LOADING:
            return types.ModuleType.__getattribute__(self, attr)
        with _LOAD_LOCK:
            if type(self) is _DeferredModule:  # not loaded by another thread meanwhile
                return super().__getattribute__(attr)
        return getattr(self, attr)


class _DeferringLoader(importlib.util.LazyLoader):
    def exec_module(self, module: types.ModuleType) -> None:
        super().exec_module(module)
        module.__class__ = _DeferredModule


class _DeferringFinder:
    """Finds the :data:`DEFERRED` modules as the path finder does, with a loader that defers them."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in DEFERRED:
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _DeferringLoader(spec.loader)
        return spec
