"""The webhook destinations file (``NUDGEFLOW_WEBHOOKS``): where decisions are sent over HTTP.

.. code-block:: yaml

    close_timeout: 10s                  # optional: how long a stopping engine waits for deliveries
    destinations:
      - name: push-service
        url: https://push.example.com/hooks/nudgeflow
        streams: [triggers.push]        # trigger streams, audience_changes, suppressions
        secret_env: PUSH_WEBHOOK_SECRET # env var holding a Standard Webhooks secret (whsec_<base64>)
        timeout: 5s
        max_attempts: 8
        backoff: {start: 1s, cap: 5m}
        concurrency: 16
        queue: 1000
        headers: {x-tenant: shop-1}

Errors name the file, the line, the destination and the field. Secrets are read from the
environment variables the file names, once, at start; a missing or malformed one is refused
naming the destination and the variable, never the value.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.durations import parse_duration
from schemas.errors import ConfigurationError
from schemas.streams import AUDIENCE_CHANGES, SUPPRESSIONS, TRIGGER_STREAMS
from schemas.yaml_lines import node_line

WEBHOOK_STREAMS = frozenset({*TRIGGER_STREAMS, AUDIENCE_CHANGES, SUPPRESSIONS})
"""The streams a destination may receive."""
SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)
"""Size range of a signing secret, as the Standard Webhooks specification asks."""
RESERVED_HEADERS = frozenset(
    {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length", "host"}
)
_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

Seconds = Annotated[float, BeforeValidator(lambda value: parse_duration(value) / 1000), Field(gt=0)]


class Backoff(BaseModel):
    """Retry delays: exponential from ``start``, at most ``cap``, each drawn at random below that (full jitter)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: Seconds = 1.0
    cap: Seconds = 300.0

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.cap < self.start:
            raise ValueError("the backoff's cap must not be shorter than its start")
        return self


class DestinationConfig(BaseModel):
    """One destination as the file writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=_NAME)]
    url: str
    streams: list[str] = Field(min_length=1)
    secret_env: Annotated[str, Field(pattern=_ENV_NAME)]
    timeout: Seconds = 5.0
    max_attempts: int = Field(8, ge=1, le=1000)
    backoff: Backoff = Backoff()
    concurrency: int = Field(16, ge=1, le=1024)
    queue: int = Field(1000, ge=1, le=1_000_000, description="deliveries handed to the sender ahead of time")
    headers: dict[str, str] = {}

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return url

    @field_validator("streams")
    @classmethod
    def _known_streams(cls, streams: list[str]) -> list[str]:
        unknown = [s for s in streams if s not in WEBHOOK_STREAMS]
        if unknown:
            raise ValueError(f"unknown streams {unknown}; choose among {sorted(WEBHOOK_STREAMS)}")
        return list(dict.fromkeys(streams))

    @field_validator("headers")
    @classmethod
    def _own_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the sink itself")
            if not value.isascii() or not value.isprintable():
                raise ValueError(f"header {name!r}: its value must be printable ASCII")
        return headers


class WebhooksConfig(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    close_timeout: Seconds = 10.0
    destinations: list[DestinationConfig] = Field(min_length=1)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, destinations: list[DestinationConfig]) -> list[DestinationConfig]:
        names = [d.name for d in destinations]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"destination names used twice: {twice}")
        return destinations


@dataclass(frozen=True, slots=True)
class Destination:
    """A destination ready to use: its settings and its signing key (never in ``repr``)."""

    name: str
    url: str
    streams: frozenset[str]
    timeout: float
    max_attempts: int
    backoff_start: float
    backoff_cap: float
    concurrency: int
    queue: int
    headers: tuple[tuple[str, str], ...] = ()
    key: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Webhooks:
    """The destinations of a destinations file, and how long a stopping engine waits for deliveries."""

    destinations: tuple[Destination, ...]
    close_timeout: float = 10.0

    @property
    def streams(self) -> frozenset[str]:
        """Every stream some destination receives."""
        return frozenset().union(*(d.streams for d in self.destinations))


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_`` (optional) then base64 of 24 to 64 bytes."""
    text = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)  # padding is optional
    except (binascii.Error, ValueError):
        raise ValueError("is not base64 after its 'whsec_' prefix") from None
    low, high = SECRET_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"decodes to {len(key)} bytes; a signing secret has {low} to {high}")
    return key


class WebhooksFileError(ConfigurationError):
    """A destinations file that cannot be used; ``str()`` lists every problem, one per line."""


def load_webhooks(path: Path, environ: Mapping[str, str]) -> Webhooks:
    """The destinations of the file at ``path``, with their secrets from ``environ``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise WebhooksFileError(
            f"webhooks file {path}: cannot be read ({getattr(err, 'strerror', None) or err})"
        ) from None
    return parse_webhooks(text, str(path), environ)


def parse_webhooks(text: str, source: str, environ: Mapping[str, str]) -> Webhooks:
    """The destinations of YAML ``text`` (named ``source`` in errors), with their secrets from ``environ``."""
    try:
        root, data = yaml.compose(text), yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise WebhooksFileError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    try:
        config = WebhooksConfig.model_validate(data)
    except ValidationError as err:
        problems = [_problem(source, root, data, e["loc"], e["msg"]) for e in err.errors()]
        raise WebhooksFileError("\n".join(problems)) from None
    destinations = []
    problems = []
    for index, d in enumerate(config.destinations):
        key = b""
        secret = environ.get(d.secret_env)
        if not secret:
            message = f"environment variable {d.secret_env} is not set"
            problems.append(_problem(source, root, data, ("destinations", index, "secret_env"), message))
        else:
            try:
                key = signing_key(secret)
            except ValueError as err:
                message = f"the secret in environment variable {d.secret_env} {err}"
                problems.append(_problem(source, root, data, ("destinations", index, "secret_env"), message))
        destinations.append(
            Destination(
                name=d.name,
                url=d.url,
                streams=frozenset(d.streams),
                timeout=d.timeout,
                max_attempts=d.max_attempts,
                backoff_start=d.backoff.start,
                backoff_cap=d.backoff.cap,
                concurrency=d.concurrency,
                queue=d.queue,
                headers=tuple(d.headers.items()),
                key=key,
            )
        )
    if problems:
        raise WebhooksFileError("\n".join(problems))
    return Webhooks(tuple(destinations), config.close_timeout)


def _problem(source: str, root: yaml.Node | None, data: Any, loc: tuple[Any, ...], message: str) -> str:
    """``file:line: destination 'name' field 'f': message``."""
    line = node_line(root, loc)
    where = f"{source}:{line}" if line else source
    name = None
    if len(loc) >= 2 and loc[0] == "destinations" and isinstance(loc[1], int):
        try:
            name = data["destinations"][loc[1]].get("name")
        except (KeyError, IndexError, TypeError, AttributeError):
            name = None
    destination = f" destination '{name}'" if name else ""
    inner = loc[2:] if len(loc) >= 2 and loc[0] == "destinations" and isinstance(loc[1], int) else loc
    field_name = ".".join(str(part) for part in inner) or "-"
    return f"{where}:{destination} field '{field_name}': {message}"
