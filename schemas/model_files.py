"""Model files: the parameters of every shard's replicas, merged into one, as checked JSON.

A file holds plain numbers and names only (no pickle, nothing that runs on load), a format
name, and the SHA-256 of its canonical content; loading refuses a file whose digest does not
match (a truncated or edited file) and validates every value's type with pydantic before any
model sees it. The digest protects against corruption, not against a deliberate forger: keep
model files where only the engine's operators can write.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from schemas.errors import ConfigurationError

FORMAT = "nudgeflow.models/1"


class _Scaler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    counts: dict[str, int]
    means: dict[str, float]
    vars: dict[str, float]


class _Propensity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: list[str]
    scaler: _Scaler
    weights: dict[str, float]
    intercept: float
    learnt: int


class _Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int
    mean: float


class _Offers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    segments: dict[str, dict[str, _Arm]]


class _Recommendations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    links: dict[str, dict[str, float]]
    counts: dict[str, int]
    categories: dict[str, str]


class _Models(BaseModel):
    model_config = ConfigDict(extra="forbid")
    propensity: _Propensity
    next_best_offer: _Offers
    recommendations: _Recommendations | None = None


def merge(exports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One set of parameters from the replicas': propensity weights averaged by how much each
    replica learnt, scaler statistics pooled, offer reward means pooled per segment, product
    links and counts added up (each replica saw other sessions). The
    replicas are taken in a fixed order, so that the same run always gives the same bytes."""
    exports = sorted(exports, key=_canonical)
    propensities = [e["propensity"] for e in exports]
    learnt = [p["learnt"] for p in propensities]
    total = sum(learnt) or 1
    share = [n / total if sum(learnt) else 1 / len(learnt) for n in learnt]
    names = propensities[0]["features"]
    counts = {f: sum(p["scaler"]["counts"].get(f, 0) for p in propensities) for f in names}

    def pooled(stat: str) -> dict[str, float]:
        out = {}
        for f in names:
            n = counts[f] or 1
            out[f] = sum(p["scaler"][stat].get(f, 0.0) * p["scaler"]["counts"].get(f, 0) for p in propensities) / n
        return out

    segments: dict[str, dict[str, dict[str, float]]] = {}
    for export in exports:
        for segment, offers in export["next_best_offer"]["segments"].items():
            for offer, arm in offers.items():
                merged = segments.setdefault(segment, {}).setdefault(offer, {"n": 0, "mean": 0.0})
                n = merged["n"] + arm["n"]
                if n:
                    merged["mean"] = (merged["mean"] * merged["n"] + arm["mean"] * arm["n"]) / n
                merged["n"] = n
    return {
        "propensity": {
            "features": names,
            "scaler": {"counts": counts, "means": pooled("means"), "vars": pooled("vars")},
            "weights": {f: _weighted(share, [p["weights"].get(f, 0.0) for p in propensities]) for f in names},
            "intercept": _weighted(share, [p["intercept"] for p in propensities]),
            "learnt": sum(learnt),
        },
        "next_best_offer": {"segments": segments},
        "recommendations": _merge_recommendations([e["recommendations"] for e in exports if "recommendations" in e]),
    }


def _merge_recommendations(replicas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    links: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    categories: dict[str, str] = {}
    for replica in replicas:
        for product, neighbours in replica["links"].items():
            merged = links.setdefault(product, {})
            for other, weight in neighbours.items():
                merged[other] = merged.get(other, 0.0) + weight
        for product, count in replica["counts"].items():
            counts[product] = counts.get(product, 0) + count
        categories.update(replica["categories"])
    return {
        "links": {p: dict(sorted(n.items())) for p, n in sorted(links.items())},
        "counts": dict(sorted(counts.items())),
        "categories": dict(sorted(categories.items())),
    }


def _weighted(shares: Sequence[float], values: Sequence[float]) -> float:
    return sum(s * v for s, v in zip(shares, values, strict=True))


def write(path: Path, models: dict[str, Any], rules_version: str) -> None:
    content = _canonical(models)
    document = {
        "format": FORMAT,
        "rules_version": rules_version,
        "sha256": hashlib.sha256(content).hexdigest(),
        "models": models,
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))


def read(path: Path) -> dict[str, Any]:
    """The models of a file written by :func:`write`; a clear error for anything else."""
    try:
        document = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as err:
        raise ConfigurationError(f"model file {path}: {err}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ConfigurationError(f"model file {path}: not a {FORMAT} file")
    models = document.get("models")
    if hashlib.sha256(_canonical(models)).hexdigest() != document.get("sha256"):
        raise ConfigurationError(f"model file {path}: content does not match its sha256 (changed or truncated)")
    try:
        return _Models.model_validate(models).model_dump()
    except ValidationError as err:
        raise ConfigurationError(f"model file {path}: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from None


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
