"""What the HTTP API reads and writes through: the :class:`Backend` protocol and an in-memory one for tests.

``serve`` hands the app a backend: Kafka and Redis when they are configured (a stateless front), else the
in-process flow's journal and live store. The handlers see only this protocol.
"""

from __future__ import annotations

import base64
import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Page:
    """One page of an audience's members."""

    members: list[str]  # customer ids, at most `limit`
    cursor: str | None  # opaque; None when there are no more


@dataclass(frozen=True, slots=True)
class Change:
    """A customer entering or leaving an audience."""

    customer_id: str
    change: str  # "entered" | "exited"
    time_ms: int  # the audience change record's event time


class Backend(Protocol):
    """The events stream and the engine's state, as the HTTP API sees them."""

    name: str  # "kafka+redis" | "local"

    async def send(self, events: list[tuple[bytes | None, bytes]]) -> list[str | None]:
        """Append (key, JSON line) events to the events stream in order. Returns, per event, None once it
        is durably accepted (Kafka: delivery confirmed with acks=all; local: written to the journal),
        else a short error text (no secrets). Key = anonymousId else userId, like `nudgeflow produce`."""
        ...

    async def profile(self, customer_id: str) -> dict[str, Any] | None:
        """{"customer_id", "features": {...}, "audiences": [...], "traits": {...allowlisted only},
        "match_keys": {"email_sha256"?, "phone_sha256"?}, "updated_at": ISO|None,
        "decisions": [{"id","rule_id","channel","offer_id","time"}, ... newest first]} or None if unknown."""
        ...

    async def audiences(self) -> list[dict[str, Any]]:
        """[{"id": str, "size": int}] for every audience with members, sorted by id."""
        ...

    async def members(self, audience_id: str, cursor: str | None, limit: int) -> Page:
        """A page of the audience's members after ``cursor`` (None: from the start)."""
        ...

    async def match_keys(self, customer_ids: list[str]) -> dict[str, dict[str, str]]:
        """customer id -> {"email_sha256": hex, "phone_sha256": hex} (only the keys known)."""
        ...

    async def changes(self, audience_id: str, since_ms: int) -> list[Change]:
        """The audience's entries and exits with time_ms >= since_ms, oldest first (bounded history)."""
        ...

    async def checks(self) -> dict[str, str]:
        """component -> "ok" or a short error (e.g. {"kafka": "ok", "redis": "connection refused"})."""
        ...

    async def close(self) -> None:
        """Release the backend's clients."""
        ...


class BackendUnavailable(Exception):
    """A backend's store or stream did not answer; the text says why (never where, never a secret).

    The API answers 503 with ``Retry-After``: the caller may try again shortly."""


class InvalidCursor(ValueError):
    """A members cursor that this backend did not hand out."""


def encode_cursor(last_member: str) -> str:
    """An opaque cursor that resumes after ``last_member``."""
    return base64.urlsafe_b64encode(last_member.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The member a cursor from :func:`encode_cursor` resumes after; :class:`InvalidCursor` when it is not one."""
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except ValueError as err:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidCursor("invalid cursor") from err


@dataclass
class MemoryBackend:
    """A backend held in memory, for unit tests: what was sent is kept in :attr:`sent`; the test sets
    profiles, audience members, match keys, changes and component states directly."""

    name: str = "memory"
    sent: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    audience_members: dict[str, set[str]] = field(default_factory=dict)
    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    audience_changes: dict[str, list[Change]] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=lambda: {"memory": "ok"})
    refuse: Callable[[bytes | None, bytes], str | None] | None = None
    """When set: the error text for an event that the stream does not take (None: taken)."""
    closed: bool = False

    async def send(self, events: list[tuple[bytes | None, bytes]]) -> list[str | None]:
        results: list[str | None] = []
        for key, line in events:
            error = self.refuse(key, line) if self.refuse is not None else None
            if error is None:
                self.sent.append((key, line))
            results.append(error)
        return results

    async def profile(self, customer_id: str) -> dict[str, Any] | None:
        return self.profiles.get(customer_id)

    async def audiences(self) -> list[dict[str, Any]]:
        return [{"id": audience, "size": len(members)} for audience, members in sorted(self.audience_members.items())
                if members]

    async def members(self, audience_id: str, cursor: str | None, limit: int) -> Page:
        ordered = sorted(self.audience_members.get(audience_id, ()))
        start = 0 if cursor is None else bisect.bisect_right(ordered, decode_cursor(cursor))
        page = ordered[start:start + limit]
        more = start + limit < len(ordered)
        return Page(page, encode_cursor(page[-1]) if more and page else None)

    async def match_keys(self, customer_ids: list[str]) -> dict[str, dict[str, str]]:
        return {customer: dict(self.keys[customer]) for customer in customer_ids if self.keys.get(customer)}

    async def changes(self, audience_id: str, since_ms: int) -> list[Change]:
        found = [change for change in self.audience_changes.get(audience_id, ()) if change.time_ms >= since_ms]
        return sorted(found, key=lambda change: change.time_ms)

    async def checks(self) -> dict[str, str]:
        return dict(self.states)

    async def close(self) -> None:
        self.closed = True
