"""The envelope a validated event travels in through the dataflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Envelope:
    """A validated event with what routing and state need precomputed.

    ``seq`` is first the event's position in its source partition (line number, or offset),
    then its merge key over all partitions (:func:`operators.parse.order_key`), which fixes the
    order stages apply events in; ``mark_ms`` is the event time its partition had reached
    (the stages' clocks follow it); ``raw`` is kept so a later stage can still dead-letter it;
    ``arrived`` is the wall-clock time it was read.
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
