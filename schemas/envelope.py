"""The envelope a validated event travels in through the dataflow."""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import msgspec
import orjson

from schemas.events import KNOWN_TRACK_EVENTS, AliasEvent, Note, decode_event, event_name

KNOWN_NAMES = KNOWN_TRACK_EVENTS | {"identify", "page", "screen", "alias"}


class Envelope(msgspec.Struct, gc=False):
    """A validated event with what routing and state need precomputed.

    ``seq`` is first the event's position in its source partition (line number, or offset),
    then its merge key over all partitions (:func:`operators.parse.order_key`), which fixes the
    order stages apply events in; ``mark_ms`` is the event time its partition had reached
    (the stages' clocks follow it); ``raw`` is kept so a later stage can still dead-letter it;
    ``arrived`` is the wall-clock time it was read.

    Between processes an envelope travels as its raw bytes and precomputed fields (packed with
    the rest of its shard's pass: ``operators.crossing``), and the event is decoded again only
    where it is read (the identity stage routes most events without reading it): cheaper than
    pickling the event's Structs.

    A Struct the garbage collector does not track (it refers to no container that could lead back
    to it): made in one native call, and freed without the collector's bookkeeping.
    """

    seq: int
    position: dict[str, Any]
    raw: bytes
    validated: Any  # one of schemas.events.AnyEvent, or None until read after a crossing
    name: str
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    ts_ms: int
    mark_ms: int
    received_ms: int | None
    known: bool
    arrived: float = 0.0
    notes: tuple[Note, ...] = ()  # dropped order lines and unknown fields (schemas.events.contract_notes)

    @property
    def customer_id(self) -> str:
        return self.user_id or self.anonymous_id  # type: ignore[return-value]

    @property
    def event(self) -> Any:
        """The validated event (decoded again from ``raw`` on first read after a crossing)."""
        if self.validated is None:
            self.validated = decode_event(self.raw, self.name)
        return self.validated

    def properties_as_sent(self) -> Any:
        """The event's ``properties`` as sent, with the contract's values over them where it has a
        model of them (defaults, integer quantities, the order lines kept). Off the hot path: for rules
        that read ``event.properties``."""
        typed = getattr(self.event, "properties", None)
        if type(typed) is dict:
            return typed
        sent = orjson.loads(self.raw).get("properties")
        if typed is None:
            return sent
        properties = {**(sent or {}), **msgspec.structs.asdict(typed)}
        if "products" in properties:
            properties["products"] = list(properties["products"])  # rules read a list of lines
        return properties

    def __reduce__(self) -> tuple[type[Envelope], tuple[Any, ...]]:
        """Every field but the validated event, rebuilt by one call of the class (half the cost of
        setting each slot on its own)."""
        return Envelope, (*_BEFORE_EVENT(self), None, *_AFTER_EVENT(self))


def envelope_of(
    event: Any,
    raw: bytes,
    seq: int,
    position: dict[str, Any],
    ts_ms: int,
    received_ms: int | None,
    arrived: float = 0.0,
    notes: tuple[Note, ...] = (),
) -> Envelope:
    """Wrap a validated event, its ``timestamp`` and ``receivedAt`` in epoch milliseconds."""
    name = event_name(event)
    anonymous_id = event.previousId if type(event) is AliasEvent else event.anonymousId
    # positional (per event, keywords cost more): the fields in the order Envelope lists them
    return Envelope(
        seq,
        position,
        raw,
        event,
        name,
        event.messageId,
        event.userId,
        anonymous_id,
        ts_ms,
        ts_ms,  # mark_ms
        received_ms,
        name in KNOWN_NAMES,
        arrived,
        notes,
    )


_SENT = tuple(name for name in Envelope.__struct_fields__ if name != "validated")
_EVENT_AT = Envelope.__struct_fields__.index("validated")
_BEFORE_EVENT, _AFTER_EVENT = attrgetter(*_SENT[:_EVENT_AT]), attrgetter(*_SENT[_EVENT_AT:])


def _rebuild(*fields: Any) -> Envelope:
    """An envelope pickled by an earlier version (held back in a recovery snapshot): every field but
    the validated event."""
    if len(fields) != len(_SENT):
        raise ValueError(f"an envelope has {len(_SENT)} fields besides its event, not {len(fields)}")
    return Envelope(*fields[:_EVENT_AT], None, *fields[_EVENT_AT:])
