"""The envelope a validated event travels in through the dataflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Envelope:
    """A validated event with what routing and state need precomputed.

    ``seq`` is the event's position in its source (line number, or offset), used to keep
    a deterministic order; ``raw`` is kept so a later stage can still dead-letter it.
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
    received_ms: int | None
    known: bool

    @property
    def customer_id(self) -> str:
        return self.user_id or self.anonymous_id  # type: ignore[return-value]
