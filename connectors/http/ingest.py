"""Events that arrive over HTTP: the body split into events, ``receivedAt`` stamped, each one checked.

The check itself is handed in (:data:`Validator`): the flows build it from the stream's own parser,
so an event refused here has the reason the stream would have dead-lettered it with. Bodies are read
as JSON once; a body with a repeated key somewhere is read again keeping every pair, so an event
with a repeated key reaches the check as it was sent (the stream refuses those as ``duplicate_key``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.json_text import lost_a_key
from schemas.records import iso_ms


@dataclass(frozen=True, slots=True)
class Checked:
    """One event after the contract check."""

    line: bytes | None  # the event to send (receivedAt stamped), None when rejected
    key: bytes | None  # partition key (anonymousId else userId)
    reason: str | None  # the dead-letter reason the stream would give (schema_invalid, invalid_json, too_large, ...)
    messages: list[str]  # the dead letter's messages


Validator = Callable[[bytes, int], Checked]
"""(event JSON bytes, received_at epoch ms) -> :class:`Checked`."""


class BodyError(ValueError):
    """A request body that is not JSON, or not of a shape that holds events."""


class Pairs(list[tuple[str, Any]]):
    """A JSON object read keeping every key, repeated ones too, in order."""


def read_json(body: bytes) -> Any:
    """The JSON document of ``body``: dicts, or :class:`Pairs` when an object repeats a key.

    :class:`BodyError` when it is not JSON (NaN and Infinity are not JSON either)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = _read_pairs(body)  # not JSON, or beyond orjson (integers over 64 bits): the strict reader says
    else:
        if not lost_a_key(body, data):
            return data
        data = _read_pairs(body)
    return data


def events_of(document: Any) -> list[Any]:
    """The events a body holds: one event object, ``{"batch": [...]}``, or a JSON array of events."""
    if isinstance(document, list) and not isinstance(document, Pairs):
        return document
    batch = field(document, "batch")
    if batch is not None:
        if isinstance(batch, list) and not isinstance(batch, Pairs):
            return batch
        raise BodyError("batch must be a JSON array of events")
    if isinstance(document, dict | Pairs):
        return [document]
    raise BodyError("the body must be an event object, {\"batch\": [...]} or a JSON array of events")


def field(obj: Any, name: str) -> Any:
    """The value of ``name`` in a JSON object (the last one, as JSON readers keep), else None."""
    if isinstance(obj, dict):
        return obj.get(name)
    if isinstance(obj, Pairs):
        return next((value for key, value in reversed(obj) if key == name), None)
    return None


def with_fields(obj: Any, **values: Any) -> Any:
    """A JSON object with ``values`` set (replacing any of the same name); other values as they are."""
    if isinstance(obj, Pairs):
        return Pairs([*((key, value) for key, value in obj if key not in values), *values.items()])
    if isinstance(obj, dict):
        return {**obj, **values}
    return obj


def without(obj: Any, name: str) -> Any:
    """A JSON object without ``name``; anything else as it is."""
    if isinstance(obj, Pairs):
        return Pairs([(key, value) for key, value in obj if key != name])
    if isinstance(obj, dict) and name in obj:
        return {key: value for key, value in obj.items() if key != name}
    return obj


def stamped(event: Any, received_ms: int) -> Any:
    """The event with ``receivedAt`` set to the server's time when it has none (others as they are)."""
    if isinstance(event, dict | Pairs) and field(event, "receivedAt") is None:
        return with_fields(event, receivedAt=iso_ms(received_ms))
    return event


def encode(value: Any) -> bytes:
    """Compact JSON of a value read by :func:`read_json` (repeated keys written again as they came)."""
    if isinstance(value, Pairs):
        return b"{" + b",".join(orjson.dumps(key) + b":" + encode(item) for key, item in value) + b"}"
    if isinstance(value, list) and any(isinstance(item, list | Pairs) for item in value):
        return b"[" + b",".join(encode(item) for item in value) + b"]"
    return _dumps(value)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits: the stdlib writes it exactly
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def check_events(events: list[Any], validator: Validator, received_ms: int) -> list[Checked]:
    """Each event stamped with ``receivedAt``, encoded and checked."""
    return [validator(encode(stamped(event, received_ms)), received_ms) for event in events]


def _read_pairs(body: bytes) -> Any:
    try:
        return json.loads(body, object_pairs_hook=Pairs, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BodyError(f"the body is not JSON: {_short(err)}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(err: Exception) -> str:
    return str(err)[:200]
