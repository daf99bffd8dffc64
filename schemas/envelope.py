"""The envelope a validated event travels in through the dataflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.events import EVENT_ADAPTER, KNOWN_TRACK_EVENTS, AliasEvent, epoch_ms, event_name

KNOWN_NAMES = KNOWN_TRACK_EVENTS | {"identify", "page", "screen", "alias"}


@dataclass(slots=True)
class Envelope:
    """A validated event with what routing and state need precomputed.

    ``seq`` is first the event's position in its source partition (line number, or offset),
    then its merge key over all partitions (:func:`operators.parse.order_key`), which fixes the
    order stages apply events in; ``mark_ms`` is the event time its partition had reached
    (the stages' clocks follow it); ``raw`` is kept so a later stage can still dead-letter it;
    ``arrived`` is the wall-clock time it was read.

    Between processes an envelope travels as its raw bytes and is validated again on
    arrival: cheaper than pickling the validated model (about 2 us to send instead of 25).
    """

    seq: int
    position: dict[str, Any]
    raw: bytes
    event: Any  # one of schemas.events.AnyEvent
    name: str
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    ts_ms: int
    mark_ms: int
    received_ms: int | None
    known: bool
    arrived: float = 0.0

    @property
    def customer_id(self) -> str:
        return self.user_id or self.anonymous_id  # type: ignore[return-value]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _from_raw, (self.raw, self.seq, self.position, self.mark_ms, self.arrived)


def envelope_of(event: Any, raw: bytes, seq: int, position: dict[str, Any], arrived: float = 0.0) -> Envelope:
    """Wrap a validated event."""
    name = event_name(event)
    ts_ms = epoch_ms(event.timestamp)
    return Envelope(
        seq=seq,
        position=position,
        raw=raw,
        event=event,
        name=name,
        message_id=event.messageId,
        user_id=event.userId,
        anonymous_id=event.previousId if isinstance(event, AliasEvent) else event.anonymousId,
        ts_ms=ts_ms,
        mark_ms=ts_ms,
        received_ms=epoch_ms(event.receivedAt) if event.receivedAt is not None else None,
        known=name in KNOWN_NAMES,
        arrived=arrived,
    )


def _from_raw(raw: bytes, seq: int, position: dict[str, Any], mark_ms: int, arrived: float) -> Envelope:
    """Rebuild a pickled envelope from its bytes (they were valid when it was made)."""
    envelope = envelope_of(EVENT_ADAPTER.validate_json(raw), raw, seq, position, arrived)
    envelope.mark_ms = mark_ms
    return envelope
