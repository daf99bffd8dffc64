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
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

import operators.models
from operators.models.protocol import OnlineModel
from schemas.errors import ConfigurationError

FORMAT = "nudgeflow.models/1"


def merge(exports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One set of parameters from the replicas', each model merging its own (see their ``merge``).
    The replicas are taken in a fixed order, so that the same run always gives the same bytes."""
    exports = sorted(exports, key=_canonical)
    models = operators.models.MODEL_TYPES
    merged = {model.name: model.merge([e[model.name] for e in exports if model.name in e]) for model in models}
    return {name: parameters for name, parameters in merged.items() if parameters is not None}  # None: nothing to keep


@cache
def _file_schema(models: tuple[type[OnlineModel], ...]) -> type[BaseModel]:
    """Every model's parameters under its name (a model that files may lack is optional)."""
    fields: dict[str, Any] = {
        model.name: (model.parameters, ...) if model.required_in_files else (model.parameters | None, None)
        for model in models
    }
    return create_model("Models", __config__=ConfigDict(extra="forbid"), **fields)


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
        return _file_schema(operators.models.MODEL_TYPES).model_validate(models).model_dump()
    except ValidationError as err:
        raise ConfigurationError(f"model file {path}: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from None


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def write_merged(path: Path, exports: Sequence[dict[str, Any]], version: str) -> None:
    """Write the merge of the shards' ``exports`` as the model file ``path`` (the output folder's sink)."""
    write(path, merge(exports), version)
