"""The items the engine's stages and its connectors exchange."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Output:
    """One record for a sink: ``stream`` names the output (file or topic), ``key`` the customer."""

    stream: str
    key: str
    time_ms: int
    seq: int
    body: bytes
    arrived: float = 0.0  # wall-clock arrival of what caused it (for latency metrics only)
    timer: bool = False  # caused by a timer (or a clock move) rather than by an event

    def sort_key(self) -> tuple[int, int, str, bytes]:
        """Stable file order: event time, then input position, then content."""
        return (self.time_ms, self.seq, self.key, self.body)
