"""The event journal of a flow run in-process: events accepted over HTTP, appended to one JSONL
file, and a Bytewax source that tails it.

:class:`EventJournal` appends whole lines under a lock and flushes them before returning, so an
event is in the file (the operating system's, or the disk's with ``fsync``) once accepted. The
file only grows. A process killed in the middle of a write can leave a last line without its
end, and so can a write that fails (a full disk): the next write ends it first (a journal opened
on the file: at once), so the following events start on a line of their own, and the torn line
becomes a dead letter (``invalid_json``) with its bytes.

:class:`JournalSource` reads the file as it grows (one partition; its resume state is the byte
offset and line reached): a batch holds what was appended since the last one, and an
:class:`schemas.items.EndOfInput` follows whenever it has read everything there is (with
``mark_idle``; else only at its end), so the engine spares its idle shards while it waits. It
ends once its ``stop`` event is set and everything appended before is read. The journal is also
a recording: ``nudgeflow replay`` takes it as is.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.files import InputTally, _add_lines, _rest_of_line
from connectors.kafka import next_poll
from schemas.items import DEFAULT_MAX_EVENT_BYTES, EndOfInput, RawEvent
from schemas.metrics import INPUT_LINES

POLL_SECONDS = 0.010
"""A source that read everything looks again this much later (one activation of the flow per look)."""

JournalState = tuple[int, int]
"""(byte offset, line) of the next line to read."""


class EventJournal:
    """Appends events (JSON lines, without line ends) to ``path``, across restarts; thread-safe.

    The file only grows (a reader tailing it never sees it shrink): a line that a failed write or
    a crash left without its end is ended before the next events."""

    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = self.path.open("ab", buffering=0)  # each write goes to the file at once
        self._size = self._file.seek(0, os.SEEK_END)
        self._torn = self._size > 0 and _last_byte(self.path, self._size) != b"\n"
        if self._torn:
            self._write(b"")

    def append(self, lines: Sequence[bytes]) -> None:
        """Append ``lines``, in order, written (and synced with ``fsync``) before returning.

        A line holding a line break is refused (``ValueError``) before anything is written. When a
        write fails (``OSError``), the lines before the failure may be in the file (a retry gives
        the engine duplicates, which it drops by ``messageId``), and a line cut short by it is ended
        by the next write (a dead letter, ``invalid_json``)."""
        for line in lines:
            if b"\n" in line or b"\r" in line:
                raise ValueError("an event holds a line break")
        if lines:
            self._write(b"".join(line + b"\n" for line in lines))

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._torn:
                data = b"\n" + data
            written = 0
            try:
                while written < len(data):
                    written += self._file.write(data[written:]) or 0
                if self.fsync:
                    os.fsync(self._file.fileno())
            finally:
                self._size += written
                if written:
                    self._torn = data[written - 1 : written] != b"\n"

    @property
    def size(self) -> int:
        """Bytes in the file (written by this journal, or found at its start)."""
        return self._size

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _last_byte(path: Path, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(size - 1)
        return f.read(1)


class _JournalTail(StatefulSourcePartition[RawEvent | EndOfInput, JournalState]):
    """Reads the journal from a byte offset, as far as it is written; a line without its end yet
    (a write in progress) is left for the next batch."""

    def __init__(self, source: JournalSource, resume: JournalState | None) -> None:
        self._path = source.path
        self._name = source.path.name
        self._batch_size = source.batch_size
        self._stop = source.stop
        self._max_bytes = source.max_event_bytes
        self._limit = source.max_event_bytes + 2  # room for the line end
        self._offset, self._line = resume or (0, 0)
        self._caught_up = source.caught_up
        self._mark_idle = source.mark_idle
        self._tally = source.tally
        self._file: BinaryIO | None = None
        self._idle = False  # said so (EndOfInput) since the last record
        self._ending = False
        self._awake: datetime | None = None
        self._blank_lines, self._record_lines = INPUT_LINES.labels(kind="blank"), INPUT_LINES.labels(kind="record")

    def next_batch(self) -> list[RawEvent | EndOfInput]:
        if self._ending:
            raise StopIteration
        stopping = self._stop.is_set()  # what was appended before the stop is read first
        batch: list[RawEvent | EndOfInput] = self._read()
        now = time.time()
        self._awake = None
        if len(batch) < self._batch_size:  # read all there is
            if (self._mark_idle or stopping) and (batch or not self._idle):
                batch.append(EndOfInput(self._line))
                self._idle = True
            self._caught_up.set()
            self._ending = stopping
            self._awake = next_poll(now, POLL_SECONDS)
        else:
            self._idle = False
        return batch

    def next_awake(self) -> datetime | None:
        return self._awake

    def _read(self) -> list[RawEvent | EndOfInput]:
        file = self._open()
        if file is None:
            return []
        batch: list[RawEvent | EndOfInput] = []
        blank = 0
        now = time.time()
        while len(batch) < self._batch_size:
            start = self._offset
            line = file.readline(self._limit)
            if not line.endswith(b"\n"):
                if len(line) < self._limit:  # the end of what is written (perhaps within a line)
                    file.seek(start)
                    break
                record = self._too_large(file, line, now)
                if record is None:
                    file.seek(start)
                    break
                batch.append(record)
                continue
            self._offset += len(line)
            self._line += 1
            payload = line.rstrip(b"\r\n")
            if payload and not payload.isspace():
                position = {"source": self._name, "line": self._line}
                batch.append(RawEvent(self._line, position, payload, arrived=now))
            else:
                blank += 1
        self._record_lines.inc(len(batch))
        self._blank_lines.inc(blank)
        _add_lines(self._tally, self._name, len(batch) + blank, blank)
        return batch

    def _too_large(self, file: BinaryIO, start: bytes, now: float) -> RawEvent | None:
        """A line over the size limit, read to its end: its first bytes only (``None``: not ended yet)."""
        head, size, sha256 = _rest_of_line(file, start)
        end = file.tell()
        file.seek(end - 1)
        if file.read(1) != b"\n":
            return None
        self._offset = end
        self._line += 1
        message = f"event is {size} bytes, the limit is {self._max_bytes}"
        position = {"source": self._name, "line": self._line}
        rejected = ("nudgeflow.parse", "too_large", message)
        return RawEvent(self._line, position, head, rejected=rejected, arrived=now, whole=(size, sha256))

    def _open(self) -> BinaryIO | None:
        if self._file is None:
            try:
                self._file = self._path.open("rb")
            except FileNotFoundError:
                return None  # nothing appended yet
            self._file.seek(self._offset)
        return self._file

    def snapshot(self) -> JournalState:
        return (self._offset, self._line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class JournalSource(FixedPartitionedSource[RawEvent | EndOfInput, JournalState]):
    """Tails the event journal at ``path`` (one partition; see the module doc) until ``stop`` is set.

    ``caught_up`` is set once the source has read everything the journal held (at start: the
    events of earlier runs, which rebuild the engine's state); ``tally`` counts the lines read.
    ``mark_idle``: an end-of-input mark each time it has caught up, else only at its end (one
    partition holds nothing back either way; the marks spare the engine's idle shards a tick)."""

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 1000,
        stop: threading.Event | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        mark_idle: bool = True,
    ) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.stop = stop or threading.Event()
        self.max_event_bytes = max_event_bytes
        self.mark_idle = mark_idle
        self.caught_up = threading.Event()
        self.tally = InputTally()

    def list_parts(self) -> list[str]:
        return ["journal"]

    def build_part(self, step_id: str, for_part: str, resume_state: JournalState | None) -> _JournalTail:
        return _JournalTail(self, resume_state)
