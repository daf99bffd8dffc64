"""JSONL files: a byte-safe replay source and an output-folder sink.

The source reads bytes, never text, so a non-UTF-8 line becomes a dead letter instead of
stopping the flow (Bytewax's own FileSource decodes text). The sink writes one file per
output stream and, at the end of input, sorts each file by event time and input position
so that replays are byte-identical whatever the worker count or scheduling. It holds a
bounded number of records per stream: beyond that, they wait sorted in run files, merged
into the output file at the end.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import heapq
import itertools
import os
import pickle
import re
import shutil
import socket
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.local_services import process_alive
from schemas.errors import InputError, OutputError, RecordingNotFound
from schemas.items import DEFAULT_MAX_EVENT_BYTES, ChunkEnd, EndOfInput, Output, RawEvent, ReadAhead
from schemas.metrics import INPUT_LINES
from schemas.records import DEAD_LETTER_PAYLOAD_CAP
from schemas.streams import EXPERIMENTS, MODEL_FILE, MODELS, OUTPUT_FILES, STATS


class OutputFolderError(OutputError):
    """The output folder cannot be used: not empty (and replacing it was not asked for), not a
    folder, or not writable."""


def fresh_folder(path: Path, replace: bool = False) -> Path:
    """Create ``path`` empty; refuse a non-empty folder unless ``replace``."""
    if path.exists() and any(path.iterdir()):
        if not replace:
            raise OutputFolderError(f"output folder {path} is not empty (use --force to replace it)")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_output_folder(path: Path, replace: bool = False) -> Path:
    """Create ``path`` empty (see :func:`fresh_folder`) with an empty file per output."""
    fresh_folder(path, replace)
    for name in OUTPUT_FILES.values():
        (path / name).touch()
    return path


def stage_output_folder(path: Path, replace: bool = False) -> Path:
    """A new empty folder for a run to write into: beside ``path``, or inside it when ``path``
    cannot be replaced by a rename (see :func:`_replaceable`).

    ``path`` is checked first: refused when not empty unless ``replace``, and it must be a
    folder that can be written to. It stays as it is until :func:`publish_outputs`. A symlinked
    ``path`` stands for its target.
    """
    path = output_target(path)
    try:
        if path.exists():
            if not path.is_dir():
                raise OutputFolderError(f"output folder {path} is not a folder")
            if any(path.iterdir()) and not replace:
                raise OutputFolderError(f"output folder {path} is not empty (use --force to replace it)")
            tempfile.TemporaryFile(dir=path).close()  # a read-only folder fails here, before the run
            if not _replaceable(path):
                return _new_staging(path, ".new-")
        existing = next(parent for parent in path.parents if parent.exists())
        if not existing.is_dir():
            raise OutputFolderError(f"cannot write output folder {path}: {existing} is a file")
        path.parent.mkdir(parents=True, exist_ok=True)
        return _new_staging(path.parent, f".{path.name}.new-")
    except OSError as err:
        raise OutputFolderError(f"cannot write output folder {path}: {err.strerror or err}") from None


def _new_staging(folder: Path, prefix: str) -> Path:
    """A new staging folder in ``folder``, named for this host and process, after removing the
    ones that runs of this host left behind when they were killed (their process is gone)."""
    host = socket.gethostname()
    for abandoned in folder.glob(f"{glob.escape(prefix + host)}-*"):
        pid = abandoned.name[len(prefix + host) + 1 :].split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(abandoned, ignore_errors=True)
    staging = folder / f"{prefix}{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def output_target(path: Path) -> Path:
    """``path``, or the folder it links to when it is a symlink (outputs go to the target)."""
    return path.resolve() if path.is_symlink() else path


def _replaceable(folder: Path) -> bool:
    """Whether an existing ``folder`` can be replaced by renaming another onto it: not a mount
    point (a volume, or a bind mount from the same file system), on its parent's device, with a
    parent that can be written to."""
    folder = folder.resolve()
    parent = folder.parent
    if os.path.ismount(folder) or str(folder) in _mount_points():
        return False
    return os.access(parent, os.W_OK) and folder.stat().st_dev == parent.stat().st_dev


def _mount_points() -> set[str]:
    """Where something is mounted, from ``/proc/self/mountinfo`` (empty where there is none).

    ``os.path.ismount`` misses a bind mount of a folder of the same file system."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return set()
    # field 5 is the mount point, with space, tab, newline and backslash written as octal escapes
    return {_unescape(fields[4]) for fields in map(str.split, lines) if len(fields) > 4}


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def publish_outputs(staging: Path, path: Path) -> str | None:
    """Put a finished run's outputs (``staging``) in place of ``path``; old outputs go only now.

    Returns a warning when the outputs are in place but the old ones could not all be removed.
    """
    path = output_target(path)
    if staging.parent == path:
        return _publish_inside(staging, path)
    if not path.exists():
        staging.rename(path)
        return None
    old = staging.with_name(staging.name + ".old")
    path.rename(old)
    try:
        staging.rename(path)
    except OSError:
        old.rename(path)
        raise
    return _remove_old(old, path)


def _publish_inside(staging: Path, path: Path) -> str | None:
    """Publish ``staging``, a folder inside ``path``, entry by entry: the old entries move aside
    into another folder inside ``path`` (put back if the new ones cannot all move in)."""
    old = staging.with_name(staging.name + ".old")
    old.mkdir()
    kept = [entry for entry in path.iterdir() if entry not in (staging, old)]
    moved: list[Path] = []
    try:
        for entry in kept:
            entry.rename(old / entry.name)
        for entry in list(staging.iterdir()):
            entry.rename(path / entry.name)
            moved.append(path / entry.name)
    except OSError:
        for entry in moved:
            entry.rename(staging / entry.name)
        for entry in old.iterdir():
            entry.rename(path / entry.name)
        old.rmdir()
        raise
    staging.rmdir()
    return _remove_old(old, path)


def _remove_old(old: Path, path: Path) -> str | None:
    try:
        shutil.rmtree(old)
    except OSError as err:
        return f"the new outputs are in {path}, but the old ones in {old} could not be removed: {err.strerror or err}"
    return None


GZIP_MAGIC = b"\x1f\x8b"
SKIP_CHUNK = 1 << 20
"""A line over the size limit is read to its end this many bytes at a time, never whole."""
INPUT_PROCESSOR = "nudgeflow.files"


def _open(path: Path) -> BinaryIO:
    """Open a recording for reading bytes; ``.gz`` files are decompressed on the fly."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def check_recordings(paths: Sequence[Path]) -> None:
    """Refuse, before anything is written, a recording that is missing or unreadable, or a
    ``.gz`` one that does not start as gzip."""
    for path in paths:
        if not path.is_file():
            problem = f"recording {path} is not a file" if path.exists() else f"no such recording: {path}"
            raise RecordingNotFound(problem)
        try:
            with path.open("rb") as f:
                start = f.read(len(GZIP_MAGIC))
        except OSError as err:
            raise InputError(f"cannot read recording {path}: {err.strerror or err}") from None
        if path.suffix == ".gz" and start and start != GZIP_MAGIC:
            raise InputError(f"recording {path} is not gzip data (its name ends in .gz)")


@dataclass
class InputTally:
    """What a file source read: per file name, its lines (blank ones included) and blank lines;
    and one sentence per file that could not be read to its end."""

    lines: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


JsonlState = tuple[Any, ...]
"""(file index, byte offset, line, seq, blank lines in the file, (name, lines, blank) of files done)"""


class _JsonlPartition(StatefulSourcePartition[RawEvent | EndOfInput, JsonlState]):
    """Reads the files one after the other; ``seq`` counts lines across all of them.

    A line longer than ``max_bytes`` is never held whole: it becomes a ``too_large`` record of
    its first bytes. A file that ends early (truncated or corrupt ``.gz``) or cannot be read
    becomes one dead-letter record at the line where reading stopped; the next file follows.
    """

    def __init__(
        self, paths: list[Path], batch_size: int, resume: JsonlState | None, max_bytes: int, tally: InputTally
    ) -> None:
        self._paths = paths
        self._batch_size = batch_size
        self._limit = max_bytes + 2  # room for the line end
        self._max_bytes = max_bytes
        self._tally = tally
        self._index, self._offset, self._line, self._seq, *rest = resume or (0, 0, 0, 0)
        self._blank, done = rest or (0, ())
        self._first_line = 0  # the line of the current file reading began after
        self._end = NO_END  # the seq reading stops at
        tally.lines.clear()
        for name, lines, blank in done:
            _add_lines(tally, name, lines, blank)
        self._blank_lines, self._record_lines = INPUT_LINES.labels(kind="blank"), INPUT_LINES.labels(kind="record")
        self._file: BinaryIO | None = None
        self._file_path: Path | None = None
        self._records = self._read()
        self._ended = False

    def next_batch(self) -> list[RawEvent | EndOfInput]:
        if self._ended:
            raise StopIteration
        seq = self._seq
        batch: list[RawEvent | EndOfInput] = list(itertools.islice(self._records, self._batch_size))
        self._record_lines.inc(len(batch))
        self._blank_lines.inc(self._seq - seq - len(batch))  # every line read is a record or blank
        if len(batch) < self._batch_size:
            self._ended = True
            batch.append(EndOfInput(self._seq))
        return batch

    def _read(self) -> Iterator[RawEvent]:
        """The records from the position held (file, offset, line, seq) to the end of the files, or
        up to line ``_end`` (counted across the files: the end of a chunk)."""
        while self._index < len(self._paths):
            path = self._paths[self._index]
            failure = None
            try:
                self._open_at(path, self._offset)
                yield from self._lines(path.name)
            except (OSError, EOFError, zlib.error) as err:
                failure = self._cut_short(path, err)
            if failure is None and self._seq == self._end:
                return  # perhaps within the file, which stays open
            self._next_file(path)
            if failure is not None:
                yield failure

    def _open_at(self, path: Path, offset: int) -> None:
        """Have ``_file`` read ``path`` from byte ``offset``, keeping the file open already when it
        is ``path`` and not past ``offset`` (a ``.gz`` file cannot seek back without decompressing
        again from its start)."""
        if self._file is not None and (self._file_path != path or self._file.tell() > offset):
            self._close_file()
        if self._file is None:
            self._file, self._file_path = _open(path), path
        if offset != self._file.tell():
            self._file.seek(offset)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _lines(self, name: str) -> Iterator[RawEvent]:
        file, limit, end = self._file, self._limit, self._end
        assert file is not None
        while self._seq < end and (line := file.readline(limit)):
            self._line += 1
            self._seq += 1
            cut = len(line) == limit and not line.endswith(b"\n")
            if cut:
                yield self._too_large(name, line)
                continue
            payload = line.rstrip(b"\r\n")
            if payload and not payload.isspace():  # not blank (without a stripped copy)
                yield RawEvent(self._seq, {"source": name, "line": self._line}, payload)
            else:
                self._blank += 1

    def _too_large(self, name: str, start: bytes) -> RawEvent:
        """A line over the size limit, read to its end a chunk at a time: its first bytes only."""
        assert self._file is not None
        head, size, sha256 = _rest_of_line(self._file, start)
        message = f"event is {size} bytes, the limit is {self._max_bytes}"
        position = {"source": name, "line": self._line}
        rejected = ("nudgeflow.parse", "too_large", message)
        return RawEvent(self._seq, position, head, rejected=rejected, whole=(size, sha256))

    def _cut_short(self, path: Path, err: BaseException) -> RawEvent:
        """The dead-letter record of a file that could not be read to its end."""
        self._line += 1
        self._seq += 1
        reason, what = _read_failure(err)
        message = (
            f"{path}: reading stopped at line {self._line:,}: {what}; the lines before it were processed,"
            " the rest of the file is lost"
        )
        self._tally.problems.append(message)
        rejected = (INPUT_PROCESSOR, reason, message)
        return RawEvent(self._seq, {"source": path.name, "line": self._line}, b"", rejected=rejected)

    def _next_file(self, path: Path) -> None:
        self._count_lines(path)
        self._close_file()
        self._index += 1
        self._offset = self._line = self._first_line = self._blank = 0

    def _count_lines(self, path: Path) -> None:
        """Add the lines read in ``path`` (since line ``_first_line``) to the tally."""
        _add_lines(self._tally, path.name, self._line - self._first_line, self._blank)

    def snapshot(self) -> JsonlState:
        offset = self._file.tell() if self._file is not None else 0
        done = tuple((name, c["read"], c["blank"]) for name, c in self._tally.lines.items())
        return (self._index, offset, self._line, self._seq, self._blank, done)

    def close(self) -> None:
        self._records.close()
        self._close_file()


def _add_lines(tally: InputTally, name: str, lines: int, blank: int) -> None:
    counts = tally.lines.setdefault(name, {"read": 0, "blank": 0})
    counts["read"] += lines
    counts["blank"] += blank


def _rest_of_line(file: BinaryIO, start: bytes) -> tuple[bytes, int, str]:
    """Read a long line that begins with ``start`` to its end, :data:`SKIP_CHUNK` bytes at a time.

    Returns its first bytes (up to the dead-letter cap), its size and its sha256, without the line end.
    """
    digest = hashlib.sha256()
    head, size, held = start[:DEAD_LETTER_PAYLOAD_CAP], 0, start
    while not held.endswith(b"\n"):
        more = file.readline(SKIP_CHUNK)
        if not more:
            break
        if len(head) < DEAD_LETTER_PAYLOAD_CAP:
            head += more[: DEAD_LETTER_PAYLOAD_CAP - len(head)]
        digest.update(held[:-1])  # the last byte is held back: it may be the \r of a \r\n
        size += len(held) - 1
        held = held[-1:] + more
    tail = held.rstrip(b"\r\n")
    digest.update(tail)
    size += len(tail)
    return head[:size], size, digest.hexdigest()


def _read_failure(err: BaseException) -> tuple[str, str]:
    """The dead-letter reason of a read that failed, and what happened in words."""
    if isinstance(err, EOFError):
        return "truncated_input", "the compressed data ends early (the file is truncated)"
    if isinstance(err, (gzip.BadGzipFile, zlib.error)):
        return "corrupt_input", f"the compressed data is corrupt ({err})"
    strerror = err.strerror if isinstance(err, OSError) else None
    return "unreadable_input", f"the file cannot be read ({strerror or err})"


NO_END = 1 << 62
"""The ``seq`` a reader of whole files never reaches."""

ChunkStart = tuple[int, int, int, int]
"""Where a chunk of a split stream begins: (file index, byte offset, line, seq), the line and seq
(counted across the files) being those before its first line."""


def chunk_starts(paths: list[Path], chunk_lines: int, max_bytes: int) -> tuple[list[ChunkStart], int]:
    """Where each chunk of ``chunk_lines`` lines (counted across the files, as one reader counts
    them: a line over the size limit is one line, and so is a read failure) begins, and how many
    lines there are: one pass over the files that only finds line ends."""
    limit, starts, seq = max_bytes + 2, [], 0
    for index, path in enumerate(paths):
        offset = line = 0
        try:
            with _open(path) as file:
                while text := file.readline(limit):
                    if seq % chunk_lines == 0:
                        starts.append((index, offset, line, seq))
                    line, seq = line + 1, seq + 1
                    if len(text) == limit and not text.endswith(b"\n"):
                        _skip_rest_of_line(file)
                        offset = file.tell()
                    else:
                        offset += len(text)
        except (OSError, EOFError, zlib.error):  # the reader's record of the failure is a line too
            if seq % chunk_lines == 0:
                starts.append((index, offset, line, seq))
            seq += 1
    return starts, seq


class _JsonlPart(_JsonlPartition):
    """One of ``parts`` parts of the recordings, read as a chunked stream: chunk ``c`` (lines
    ``c * chunk + 1`` to ``(c + 1) * chunk``, counted across the files) is this part's when
    ``c % parts == part``. The part opens the files where its chunks begin (``starts``, see
    :func:`chunk_starts`) and reads only their lines, each chunk's records followed by a
    :class:`ChunkEnd`; its ``tally`` counts the lines it read. It begins a chunk only when
    ``read_ahead`` allows (else it returns nothing, and Bytewax calls again after a pause). A part is
    not resumed: it starts from the beginning.
    """

    def __init__(
        self,
        paths: list[Path],
        chunk: int,
        part: int,
        parts: int,
        max_bytes: int,
        tally: InputTally,
        starts: list[ChunkStart],
        lines: int,
        read_ahead: ReadAhead | None = None,
    ) -> None:
        super().__init__(paths, chunk, None, max_bytes, tally)
        self._part, self._parts = part, parts
        self._starts, self._lines_in_all = starts, lines
        self._chunk = part  # the next chunk to read
        self._read_ahead = read_ahead

    def next_batch(self) -> list[RawEvent | EndOfInput | ChunkEnd]:
        if self._ended:
            raise StopIteration
        chunk, chunk_lines = self._chunk, self._batch_size
        if chunk >= len(self._starts):
            self._ended = True
            return [EndOfInput(self._lines_in_all, self._part)]
        if self._read_ahead is not None and not self._read_ahead.allows(chunk * chunk_lines):
            return []  # the slower parts catch up first
        self._index, self._offset, self._first_line, start = self._starts[chunk]
        self._line, self._seq, self._end, self._blank = self._first_line, start, (chunk + 1) * chunk_lines, 0
        batch: list[RawEvent | EndOfInput | ChunkEnd] = list(self._read())
        if self._index < len(self._paths):  # stopped within a file (or at its end)
            self._count_lines(self._paths[self._index])
        for record in batch:
            record.partition = self._part  # type: ignore[union-attr]
        self._record_lines.inc(len(batch))
        self._blank_lines.inc(self._seq - start - len(batch))
        self._chunk += self._parts
        batch.append(ChunkEnd((chunk + 1) * chunk_lines, (chunk + self._parts) * chunk_lines, self._part))
        if self._chunk >= len(self._starts):
            self._ended = True
            batch.append(EndOfInput(self._lines_in_all, self._part))
        return batch

    def snapshot(self) -> None:
        return None


def _skip_rest_of_line(file: BinaryIO) -> None:
    while (more := file.readline(SKIP_CHUNK)) and not more.endswith(b"\n"):
        pass


READ_AHEAD_ROUNDS = 8
"""Rounds of chunks (a chunk from every part) a part of a split source may read beyond the line the
flow of its process has taken every part's lines up to."""


class JsonlSource(FixedPartitionedSource[RawEvent | EndOfInput | ChunkEnd, JsonlState | None]):
    """Read JSONL recordings (plain or ``.gz``) as raw bytes, in order, as one stream (one partition).

    With ``parts`` above 1 the stream is read in ``parts`` partitions, each reading every
    ``parts``-th chunk of ``batch_size`` lines (see :class:`_JsonlPart`), so that the processes of
    a replay share reading and parsing; such a source is not resumed from a snapshot. Where the
    chunks begin is found when it is made (before a replay's processes are forked from it); its
    parts read at most :data:`READ_AHEAD_ROUNDS` rounds of chunks ahead of the flow's progress in
    their process (``read_ahead``, which the flow keeps up to date).
    ``tally`` counts the lines read, in this process (see :class:`InputTally`); a split source's
    parts count theirs in ``part_tallies``.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 1000,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        parts: int = 1,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.batch_size = batch_size
        self.max_event_bytes = max_event_bytes
        self.parts = parts
        self.tally = InputTally()
        self.part_tallies: list[InputTally] = []
        check_recordings(self.paths)
        self.read_ahead = ReadAhead(READ_AHEAD_ROUNDS * parts * batch_size)
        if parts > 1:
            self.starts, self.lines = chunk_starts(self.paths, batch_size, max_event_bytes)

    def list_parts(self) -> list[str]:
        if self.parts == 1:
            return ["recordings"]
        return [f"recordings-{part}" for part in range(self.parts)]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _JsonlPartition:
        if self.parts == 1:
            return _JsonlPartition(self.paths, self.batch_size, resume_state, self.max_event_bytes, self.tally)
        part, tally = int(for_part.rpartition("-")[2]), InputTally()
        self.part_tallies.append(tally)
        return _JsonlPart(
            self.paths,
            self.batch_size,
            part,
            self.parts,
            self.max_event_bytes,
            tally,
            self.starts,
            self.lines,
            self.read_ahead,
        )


WriteErrors = list[tuple[Path, OSError]]


class _OutputFile(StatefulSinkPartition[Output, None]):
    """An output file, written at close. A failed write is kept in ``errors`` when given, for
    the caller to report after the run: raised inside a Bytewax sink, it aborts the process."""

    def __init__(self, path: Path, errors: WriteErrors | None) -> None:
        self._path = path
        self._errors = errors

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        try:
            self._write()
        except OSError as err:
            self._failed(err)

    def _failed(self, err: OSError) -> None:
        if self._errors is None:
            raise err
        self._errors.append((self._path, err))

    def _write(self) -> None:
        raise NotImplementedError


RUN_RECORDS = 5_000
"""Records of one output stream held in memory at most; beyond, they go to a run file."""
RUN_BYTES = 4 << 20
"""Bytes of records (their bodies) of one output stream held in memory at most."""
MERGE_FAN_IN = 64
"""Run files merged at once (each holds an open file and a chunk of records)."""
RUN_CHUNK = 256
"""Records pickled together in a run file, and read together when merging."""

Row = tuple[Any, bytes]
"""(sort key, body) of an output record"""
_row_key = itemgetter(0)


class _FilePartition(_OutputFile):
    """One output stream, written sorted (see :meth:`Output.sort_key`) at close.

    At most ``run_records`` records (and ``run_bytes`` of bodies) are held: when full, they go
    sorted to a run file beside the output file (in the run's staging folder), and the runs are
    merged into the output file at close, then removed. After a failed write the stream's
    further records are dropped (the run fails; see :class:`_OutputFile`).
    """

    def __init__(self, path: Path, errors: WriteErrors | None, run_records: int, run_bytes: int) -> None:
        super().__init__(path, errors)
        self._run_records = run_records
        self._run_bytes = run_bytes
        self._rows: list[Row] = []
        self._bytes = 0
        self._runs: list[Path] = []
        self._runs_made = 0
        self._broken = False

    @property
    def held(self) -> int:
        """Records held in memory."""
        return len(self._rows)

    def write_batch(self, values: list[Output]) -> None:
        if self._broken:
            return
        rows = self._rows
        for value in values:
            rows.append((value.sort_key(), value.body))
            self._bytes += len(value.body)
            if len(rows) >= self._run_records or self._bytes >= self._run_bytes:
                self._spill()
                if self._broken:
                    return
                rows = self._rows

    def _spill(self) -> None:
        """Write the records held, sorted, to a new run file."""
        self._rows.sort(key=_row_key)
        try:
            self._new_run(self._rows)
        except OSError as err:
            self._broken = True
            self._remove_runs()
            self._failed(err)
        finally:
            self._rows, self._bytes = [], 0

    def _new_run(self, rows: Iterable[Row]) -> None:
        """Write ``rows`` (sorted) to a new run file, listed first so that a partial one is removed too."""
        run = self._path.with_name(f".{self._path.name}.run-{self._runs_made}")
        self._runs_made += 1
        self._runs.append(run)
        _write_run(run, rows)

    def _write(self) -> None:
        if self._broken:
            return
        try:
            self._rows.sort(key=_row_key)
            while len(self._runs) >= MERGE_FAN_IN:
                self._merge_some_runs()
            sources = [*map(_read_run, self._runs), self._rows]
            with self._path.open("wb") as out:
                for _, body in heapq.merge(*sources, key=_row_key):
                    out.write(body)
                    out.write(b"\n")
        finally:
            self._rows = []
            self._remove_runs()

    def _merge_some_runs(self) -> None:
        """Merge the first :data:`MERGE_FAN_IN` runs into one, put first: records of equal sort
        keys keep their arrival order, as in one sort."""
        merged, self._runs = self._runs[:MERGE_FAN_IN], self._runs[MERGE_FAN_IN:]
        try:
            self._new_run(heapq.merge(*map(_read_run, merged), key=_row_key))
        finally:
            for run in merged:
                run.unlink(missing_ok=True)
        self._runs.insert(0, self._runs.pop())

    def _remove_runs(self) -> None:
        for run in self._runs:
            run.unlink(missing_ok=True)
        self._runs = []


def _write_run(path: Path, rows: Iterable[Row]) -> None:
    """Write sorted ``rows`` to a run file, pickled :data:`RUN_CHUNK` at a time."""
    rows = iter(rows)
    with path.open("wb") as out:
        while chunk := list(itertools.islice(rows, RUN_CHUNK)):
            pickle.dump(chunk, out, pickle.HIGHEST_PROTOCOL)


def _read_run(path: Path) -> Iterator[Row]:
    """The rows of a run file, in order, read a chunk at a time."""
    with path.open("rb") as run:
        while True:
            try:
                chunk = pickle.load(run)
            except EOFError:
                return
            yield from chunk


class _SummaryPartition(_OutputFile):
    """The shards' counters, added up into one JSON document at close."""

    def __init__(self, path: Path, errors: WriteErrors | None) -> None:
        super().__init__(path, errors)
        self._counts: dict[str, Any] = {}

    def write_batch(self, values: list[Output]) -> None:
        for value in values:
            add_counts(self._counts, orjson.loads(value.body))

    def _write(self) -> None:
        self._path.write_bytes(orjson.dumps(self._counts, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))


def add_counts(total: dict[str, Any], part: dict[str, Any]) -> None:
    """Add nested counters ``part`` into ``total``."""
    for key, value in part.items():
        if isinstance(value, dict):
            add_counts(total.setdefault(key, {}), value)
        elif isinstance(value, list):  # a sample, [merge key, ...]: the earliest is kept
            total[key] = min(total.get(key, value), value)
        else:
            total[key] = total.get(key, 0) + value


class _ExperimentsPartition(_OutputFile):
    """The shards' ``experiments`` increments, summed by report period (any order gives the same
    sums) and written at close as one line per period with the counts up to its end."""

    def __init__(self, path: Path, errors: WriteErrors | None) -> None:
        super().__init__(path, errors)
        self._periods: dict[str, Any] = {}

    def write_batch(self, values: list[Output]) -> None:
        for value in values:
            add_counts(self._periods, orjson.loads(value.body))

    def _write(self) -> None:
        running: dict[str, Any] = {}
        with self._path.open("wb") as out:
            for period in sorted(self._periods, key=int):
                add_counts(running, self._periods[period])
                line = {"period_start_ms": int(period), "experiments": running}
                out.write(orjson.dumps(line, option=orjson.OPT_SORT_KEYS) + b"\n")


ModelsWriter = Callable[[Path, list[dict[str, Any]], str], None]
"""Writes the shards' model exports, merged, as one model file (``operators.models.files.write_merged``)."""


class _ModelsPartition(_OutputFile):
    """The shards' model parameters, merged into one model file at close (when models ran)."""

    def __init__(self, path: Path, errors: WriteErrors | None, write_models: ModelsWriter) -> None:
        super().__init__(path, errors)
        self.write_models = write_models
        self._exports: list[dict[str, Any]] = []
        self._version = ""

    def write_batch(self, values: list[Output]) -> None:
        for value in values:
            self._exports.append(orjson.loads(value.body))
            self._version = value.key

    def _write(self) -> None:
        if self._exports:
            self.write_models(self._path, self._exports, self._version)


class OutputFolderSink(FixedPartitionedSink[Output, None]):
    """Write each output stream to its file in ``folder`` (see :data:`schemas.streams.OUTPUT_FILES`), and the
    merged model parameters to ``models.json``.

    Files that cannot be written go to ``errors`` (path, error), when given, for the caller to
    report after the run (in this process); without it a failed write stops the run. The model
    file is written by ``write_models`` (none without it). Each
    stream holds at most ``run_records`` records (and ``run_bytes`` of them) in memory; see
    :class:`_FilePartition`.
    """

    def __init__(
        self,
        folder: str | Path,
        errors: WriteErrors | None = None,
        run_records: int = RUN_RECORDS,
        run_bytes: int = RUN_BYTES,
        write_models: ModelsWriter | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.write_models = write_models
        self.streams = sorted([*OUTPUT_FILES, MODELS])
        self._index = {stream: i for i, stream in enumerate(self.streams)}
        self.errors = errors
        self.run_records = run_records
        self.run_bytes = run_bytes

    def list_parts(self) -> list[str]:
        return self.streams

    def part_fn(self, item_key: str) -> int:
        return self._index[item_key]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> StatefulSinkPartition[Output, None]:
        if for_part == MODELS:
            if self.write_models is None:
                return _DiscardPartition({})
            return _ModelsPartition(self.folder / MODEL_FILE, self.errors, self.write_models)
        path = self.folder / OUTPUT_FILES[for_part]
        if for_part == STATS:
            return _SummaryPartition(path, self.errors)
        if for_part == EXPERIMENTS:
            return _ExperimentsPartition(path, self.errors)
        return _FilePartition(path, self.errors, self.run_records, self.run_bytes)


def read_lines(path: Path) -> Iterator[bytes]:
    """The non-empty lines of a recording (plain or ``.gz``), without line ends."""
    with _open(path) as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


class _HistoryPartition(StatefulSourcePartition[RawEvent | EndOfInput, None]):
    """The recordings (``paths``), or nothing (an empty list); no resume state of its own."""

    def __init__(self, paths: list[Path], partition: int, batch_size: int, max_bytes: int) -> None:
        self._reader = _JsonlPartition(paths, batch_size, None, max_bytes, InputTally()) if paths else None
        self._partition = partition
        self._ended = False

    def next_batch(self) -> list[RawEvent | EndOfInput]:
        if self._reader is not None:
            return self._reader.next_batch()
        if self._ended:
            raise StopIteration
        self._ended = True
        return [EndOfInput(0, self._partition)]

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class HistorySource(FixedPartitionedSource[RawEvent | EndOfInput, None]):
    """Recordings read under the partition names of the live source, for a warm start.

    The live run resumes from the recovery store this run writes: its engine state is kept,
    and its source partitions find no position there, so they start where the settings say.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        part_names: list[str],
        batch_size: int = 1000,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.part_names = part_names
        self.batch_size = batch_size
        self.max_event_bytes = max_event_bytes
        check_recordings(self.paths)

    def list_parts(self) -> list[str]:
        return self.part_names

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _HistoryPartition:
        index = self.part_names.index(for_part)
        paths = self.paths if index == 0 else []
        return _HistoryPartition(paths, index, self.batch_size, self.max_event_bytes)


class DiscardSink(FixedPartitionedSink[Output, None]):
    """Drops every output but the engine's counters (kept in ``stats``, per process)."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}

    def list_parts(self) -> list[str]:
        return ["discard"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DiscardPartition:
        return _DiscardPartition(self.stats)


class _DiscardPartition(StatefulSinkPartition[Output, None]):
    def __init__(self, stats: dict[str, Any]) -> None:
        self._stats = stats

    def write_batch(self, values: list[Output]) -> None:
        for value in values:
            if value.stream == STATS:
                add_counts(self._stats, orjson.loads(value.body))
            else:
                add_counts(self._stats, {"discarded": {value.stream: 1}})

    def snapshot(self) -> None:
        return None
