"""API keys: the keys file (YAML) and the ``NUDGEFLOW_API_KEYS`` text, read into checked key entries.

Only the SHA-256 of each key is kept; a key itself is shown once, when it is made (:func:`new_key`).

```yaml
keys:
  - name: pos-tills            # shown in logs instead of the key
    sha256: 9f86d0...          # sha256 hex of the secret key
    scopes: [ingest]           # ingest, read, admin (admin implies the others)
    rate: 200                  # requests per second (token bucket), optional; default 100
    burst: 400                 # optional; default 2 x rate
```
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.errors import ConfigurationError

Scope = Literal["ingest", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("ingest", "read", "admin")
DEFAULT_RATE = 100.0
KEY_PREFIX = "nf_"
ENV_NAME = "NUDGEFLOW_API_KEYS"


class ApiKeySpec(BaseModel):
    """One API key as configured: its name, the SHA-256 of the key, its scopes and rate limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="SHA-256 hex of the key")
    scopes: list[Scope] = Field(min_length=1)
    rate: float = Field(DEFAULT_RATE, gt=0, description="requests per second (token bucket)")
    burst: float | None = Field(None, ge=1, description="bucket size (default: 2 x rate)")

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @property
    def bucket(self) -> float:
        """The bucket's size: ``burst``, else twice the rate (at least one request)."""
        return self.burst if self.burst is not None else max(1.0, 2 * self.rate)


class KeysFile(BaseModel):
    """A keys file: a list of keys with distinct names and distinct keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keys: list[ApiKeySpec]

    @model_validator(mode="after")
    def _distinct(self) -> KeysFile:
        _check_distinct(self.keys)
        return self


def key_hash(secret: str) -> str:
    """The SHA-256 hex of a key, as the keys file holds it."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key: ``nf_`` and 32 random bytes, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_entry(name: str, scopes: list[str], secret: str) -> str:
    """The keys file entry (YAML) of a key: its name, hash and scopes, never the key;
    :class:`ConfigurationError` for a bad name or scope."""
    try:
        spec = ApiKeySpec(name=name, sha256=key_hash(secret), scopes=scopes)  # type: ignore[arg-type]
    except ValidationError as err:
        raise ConfigurationError("; ".join(f"--{_field(e['loc'][:1])}: {_message(e)}" for e in err.errors())) from None
    entry = {"name": spec.name, "sha256": spec.sha256, "scopes": list(spec.scopes)}
    return yaml.safe_dump({"keys": [entry]}, sort_keys=False, default_flow_style=None)


def read_keys_file(path: Path) -> list[ApiKeySpec]:
    """The keys of a keys file; :class:`ConfigurationError` naming the file, line and field of each problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigurationError(f"keys file {path}: cannot be read ({err})") from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigurationError(f"keys file {path}{where}: not valid YAML") from None
    try:
        return list(KeysFile.model_validate(data if data is not None else {}).keys)
    except ValidationError as err:
        problems = [
            f"keys file {path}, line {_line(root, e['loc'])}, {_field(e['loc'])}: {_message(e)}" for e in err.errors()
        ]
        raise ConfigurationError("; ".join(problems)) from None


def parse_keys_env(text: str) -> list[ApiKeySpec]:
    """The keys of ``NUDGEFLOW_API_KEYS``: ``name:scope+scope:sha256hex[,...]``; errors name the entry."""
    specs = []
    for number, entry in enumerate((part.strip() for part in text.split(",")), start=1):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ConfigurationError(f"{ENV_NAME}, entry {number}: expected name:scope+scope:sha256hex")
        name, scopes, digest = parts
        try:
            specs.append(ApiKeySpec(name=name, scopes=scopes.split("+"), sha256=digest))  # type: ignore[arg-type]
        except ValidationError as err:
            problems = [f"{ENV_NAME}, entry {number}, {_field(e['loc'])}: {_message(e)}" for e in err.errors()]
            raise ConfigurationError("; ".join(problems)) from None
    try:
        _check_distinct(specs)
    except ValueError as err:
        raise ConfigurationError(f"{ENV_NAME}: {err}") from None
    return specs


def _check_distinct(keys: list[ApiKeySpec]) -> None:
    names, hashes = set(), set()
    for spec in keys:
        if spec.name in names:
            raise ValueError(f"two keys are named {spec.name!r}")
        if spec.sha256 in hashes:
            raise ValueError(f"key {spec.name!r} has the same sha256 as another key")
        names.add(spec.name)
        hashes.add(spec.sha256)


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "keys"


def _message(error: Any) -> str:
    """A validation message; never the value given (it could be a key pasted where its hash belongs)."""
    if error["loc"][-1:] == ("sha256",) and error["type"] == "string_pattern_mismatch":
        return "must be the SHA-256 hex (64 characters) of the key, never the key itself"
    return str(error["msg"]).removeprefix("Value error, ")


def _line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the YAML node at ``loc``, or of its nearest existing parent."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if found is None:
                return line
            key, node = found
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
