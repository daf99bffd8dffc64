"""Events that arrive over HTTP: the body read and split into events, ``receivedAt`` stamped, each one
checked, and sent to the events stream (:func:`take_events`).

The check itself is handed in (:data:`Validator`): the flows build it from the stream's own parser,
so an event refused here has the reason the stream would have dead-lettered it with. Bodies are read
as JSON once; a body with a repeated key somewhere is read again keeping every pair, so an event
with a repeated key reaches the check as it was sent (the stream refuses those as ``duplicate_key``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from connectors.http.backend import Backend
from connectors.kafka import event_key
from schemas.json_text import lost_a_key
from schemas.metrics import HTTP_EVENTS
from schemas.records import iso_ms

log = logging.getLogger("nudgeflow.http")


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


class BodyTooLarge(BodyError):
    """A request body over its limit (after inflating a compressed one)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one event of a request."""

    STATUSES: ClassVar[tuple[str, ...]] = ("accepted", "rejected", "failed")

    status: str  # accepted (sent), rejected (by the contract), failed (the events stream did not take it)
    reason: str | None = None  # the dead-letter reason of a rejected event; "not_sent" for a failed one
    messages: tuple[str, ...] = ()

    def result(self, index: int) -> dict[str, Any]:
        """The event's entry in a response: ``{"index", "status", "reason"?, "messages"?}``."""
        if self.reason is None:
            return {"index": index, "status": self.status}
        return {"index": index, "status": self.status, "reason": self.reason, "messages": list(self.messages)}


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, inflated when compressed (aiohttp inflates it in bounded steps as it is read).

    :class:`BodyTooLarge` beyond ``limit`` bytes (read no further), :class:`BodyError` when the
    compressed data is not valid."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"the body is over {limit} bytes") from None
    except RequestPayloadError:  # compressed data that does not inflate
        raise BodyError(f"the body is not valid {request.headers.get('Content-Encoding', 'compressed')} data") from None
    if len(body) > limit:
        raise BodyTooLarge(f"the body is over {limit} bytes")
    return body


async def take_events(
    backend: Backend, validator: Validator, events: list[Any], received_ms: int, forward: bool = False
) -> list[Outcome]:
    """Check each event (``receivedAt`` stamped where missing) and send the valid ones to the events
    stream, in order; with ``forward`` the rejected ones too (the stream dead-letters them with the
    same reason). Counted in ``nudgeflow_http_events_total``."""
    lines = [encode(stamped(event, received_ms)) for event in events]
    checked = [validator(line, received_ms) for line in lines]
    outcomes = [Outcome("accepted") if c.line is not None else Outcome("rejected", c.reason, tuple(c.messages))
                for c in checked]
    sending = [
        (index, (c.key, c.line) if c.line is not None else (event_key(line), line))
        for index, (line, c) in enumerate(zip(lines, checked, strict=True))
        if c.line is not None or forward
    ]
    failures = await _send(backend, [event for _, event in sending])
    for (index, _), failure in zip(sending, failures, strict=True):
        if failure is not None:
            outcomes[index] = Outcome("failed", "not_sent", (failure,))
    for status in Outcome.STATUSES:
        count = sum(outcome.status == status for outcome in outcomes)
        if count:
            HTTP_EVENTS.labels(status).inc(count)
    return outcomes


async def _send(backend: Backend, events: list[tuple[bytes | None, bytes]]) -> list[str | None]:
    """The backend's answer per event; every event failed when the backend itself fails."""
    if not events:
        return []
    try:
        failures = await backend.send(events)
    except Exception as err:
        log.exception("sending %d events failed", len(events))
        failures = [f"the events stream is unavailable ({type(err).__name__})"] * len(events)
    if len(failures) != len(events):
        log.error("the backend answered for %d events of %d", len(failures), len(events))
        return [f"no answer for this event ({backend.name})"] * len(events)
    return failures


class Pairs(list[tuple[str, Any]]):
    """A JSON object read keeping every key, repeated ones too, in order."""


def read_json(body: bytes) -> Any:
    """The JSON document of ``body``: dicts, or :class:`Pairs` when an object repeats a key.

    :class:`BodyError` when it is not JSON (NaN and Infinity are not JSON either). Numbers are read as
    the stream reads them (orjson: an integer beyond 64 bits becomes a float)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BodyError(f"the body is not JSON: {_short(err)}") from None
    return _read_pairs(body) if lost_a_key(body, data) else data


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


def now_ms() -> int:
    """The server's time, epoch milliseconds: when a request's events were received."""
    return int(time.time() * 1000)


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
