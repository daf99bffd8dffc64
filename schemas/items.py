"""The items sources, the flow and sinks exchange: raw input records, end-of-input marks, outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

import msgspec

DEFAULT_MAX_EVENT_BYTES = 32 * 1024
"""Largest raw event passed on whole by default (``NUDGEFLOW_MAX_EVENT_BYTES``); larger ones are dead-lettered."""


def fields_getter(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """The fields of an instance of dataclass ``cls``, in order: what an item that crosses processes
    is pickled as (with its class), to be rebuilt by one call of the class, at half the cost of
    pickle's default (which sets slot by slot)."""
    return attrgetter(*(f.name for f in fields(cls)))


class RawEvent(msgspec.Struct, gc=False):
    """Bytes as read from a source, with where they were read.

    A source that already knows a record is bad (an adapter's rejected row) sets
    ``rejected`` to ``(processor, reason, message)``; it then goes to the dead letters as is.
    One is made per input line: a Struct the garbage collector does not track (it leads back to
    nothing), made in one native call.
    """

    seq: int  # position in its source partition (line number, Kafka offset)
    position: dict[str, Any]
    payload: bytes
    rejected: tuple[str, str, str] | None = None
    partition: int = 0
    arrived: float = 0.0  # wall-clock time it was read (time.time()), for latency metrics
    whole: tuple[int, str] | None = None  # size and sha256 of the record when payload is only its start


@dataclass(slots=True)
class EndOfInput:
    """Sent by a source partition after its last record (or, live, when it has nothing new to read).

    The partition then holds back nothing: events of the other partitions need not wait for it.
    """

    seq: int
    partition: int = 0


@dataclass(slots=True)
class ChunkEnd:
    """Sent after each chunk of lines by a source partition that reads one part of a stream split
    into interleaved chunks (a replay spread over processes: see ``connectors.files.JsonlSource``).

    ``seq`` is the chunk's last line; ``skip_to`` the line before the partition's next chunk: the
    lines up to it are other partitions'.
    """

    seq: int
    skip_to: int
    partition: int = 0


@dataclass(slots=True)
class ReadAhead:
    """How far the parts of a chunked stream read ahead in one process: ``taken`` is the line up to
    which the process's identity shards have taken the lines of every part (``None``: none yet); a
    part begins no chunk more than ``lines`` beyond it, but waits, idle, for the slower parts.

    This bounds what a part holds for its slower peers; a shared replay needs no epochs for that
    (see ``flows.cli``), and an epoch's end would have every process spin until all finished it.
    """

    lines: int
    taken: int | None = None

    def allows(self, line: int) -> bool:
        """Whether a chunk that begins after ``line`` may be read now."""
        return self.taken is None or line - self.taken <= self.lines


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

    def __reduce__(self) -> tuple[type[Output], tuple[Any, ...]]:
        return Output, _OUTPUT_FIELDS(self)

    def sort_key(self) -> tuple[int, int, str, bytes]:
        """Stable file order: event time, then input position, then content."""
        return (self.time_ms, self.seq, self.key, self.body)


_OUTPUT_FIELDS = fields_getter(Output)
