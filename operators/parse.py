"""Parse and validate raw event bytes: valid events become envelopes, the rest dead letters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.envelope import Envelope
from schemas.events import EVENT_ADAPTER, KNOWN_TRACK_EVENTS, AliasEvent, epoch_ms, event_name
from schemas.records import dead_letter

DEFAULT_MAX_EVENT_BYTES = 32 * 1024
_KNOWN_NAMES = KNOWN_TRACK_EVENTS | {"identify", "page", "screen", "alias"}


@dataclass(slots=True)
class RawEvent:
    """Bytes as read from a source, with where they were read.

    A source that already knows a record is bad (an adapter's rejected row) sets
    ``rejected`` to ``(processor, reason, message)``; it then goes to the dead letters as is.
    """

    seq: int
    position: dict[str, Any]
    payload: bytes
    rejected: tuple[str, str, str] | None = None


@dataclass(slots=True)
class EndOfInput:
    """Sent by a bounded source after its last record: the clock may move to the last event."""

    seq: int


@dataclass(slots=True)
class Rejected:
    """A raw event that failed parsing or validation, as a dead-letter record body.

    ``key`` (its input position) is the record's key on the dead-letter output.
    """

    key: str
    body: bytes


def parse(raw: RawEvent, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Envelope | Rejected:
    """Decode (orjson), validate (one pydantic TypeAdapter) and wrap one event."""
    payload = raw.payload
    if raw.rejected is not None:
        processor, reason, message = raw.rejected
        return _reject(raw, reason, [message], processor)
    if len(payload) > max_bytes:
        return _reject(raw, "too_large", [f"event is {len(payload)} bytes, the limit is {max_bytes}"])
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as bad:
            return _reject(raw, "not_utf8", [f"invalid UTF-8 at byte {bad.start}"])
        return _reject(raw, "invalid_json", [str(err)])
    if not isinstance(data, dict):
        return _reject(raw, "schema_invalid", [f"an event is a JSON object, not {type(data).__name__}"])
    try:
        event = EVENT_ADAPTER.validate_python(data)
    except ValidationError as err:
        return _reject(raw, "schema_invalid", _messages(err))
    anonymous_id = event.previousId if isinstance(event, AliasEvent) else event.anonymousId
    name = event_name(event)
    return Envelope(
        seq=raw.seq,
        position=raw.position,
        raw=payload,
        event=event,
        name=name,
        message_id=event.messageId,
        user_id=event.userId,
        anonymous_id=anonymous_id,
        ts_ms=epoch_ms(event.timestamp),
        received_ms=epoch_ms(event.receivedAt) if event.receivedAt is not None else None,
        known=name in _KNOWN_NAMES,
    )


def _messages(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors(include_url=False)[:20]:
        # the first part of ``loc`` is the union tag (the event name): leave it out
        loc = ".".join(str(part) for part in e["loc"][1:] if not str(part).startswith("function-"))
        out.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return out


def _reject(raw: RawEvent, reason: str, messages: list[str], processor: str = "nudgeflow.parse") -> Rejected:
    body = dead_letter(
        processor=processor, reason=reason, messages=messages, position=raw.position, payload=raw.payload
    )
    return Rejected(str(raw.seq), body)
