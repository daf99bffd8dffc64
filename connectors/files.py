"""JSONL files: a byte-safe replay source and an output-folder sink.

The source reads bytes, never text, so a non-UTF-8 line becomes a dead letter instead of
stopping the flow (Bytewax's own FileSource decodes text). The sink writes one file per
output stream and, at the end of input, sorts each file by event time and input position
so that replays are byte-identical whatever the worker count or scheduling.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from operators.engine import Output
from operators.models import export as model_files
from operators.parse import EndOfInput, RawEvent

OUTPUT_FILES: dict[str, str] = {
    "triggers.push": "triggers.push.jsonl",
    "triggers.in_app": "triggers.in_app.jsonl",
    "triggers.email": "triggers.email.jsonl",
    "triggers.sms": "triggers.sms.jsonl",
    "triggers.shadow": "triggers.shadow.jsonl",
    "audience_changes": "audience_changes.jsonl",
    "audience_changes.shadow": "audience_changes.shadow.jsonl",
    "dead_letters": "dead_letters.jsonl",
    "stats": "summary.json",
}


MODEL_FILE = "models.json"


class OutputFolderError(ValueError):
    """The output folder exists and is not empty (and replacing it was not asked for)."""


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


def _open(path: Path) -> BinaryIO:
    """Open a recording for reading bytes; ``.gz`` files are decompressed on the fly."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


class _JsonlPartition(StatefulSourcePartition[RawEvent | EndOfInput, tuple[int, int, int, int]]):
    """Reads the files one after the other; ``seq`` counts lines across all of them."""

    def __init__(self, paths: list[Path], batch_size: int, resume: tuple[int, int, int, int] | None) -> None:
        self._paths = paths
        self._batch_size = batch_size
        self._index, offset, self._line, self._seq = resume or (0, 0, 0, 0)
        self._ended = False
        self._file: BinaryIO | None = None
        if self._index < len(paths):
            self._file = _open(paths[self._index])
            self._file.seek(offset)

    def next_batch(self) -> list[RawEvent | EndOfInput]:
        batch: list[RawEvent | EndOfInput] = []
        while self._file is not None and len(batch) < self._batch_size:
            line = self._file.readline()
            if not line:
                self._next_file()
                continue
            self._line += 1
            self._seq += 1
            payload = line.rstrip(b"\r\n")
            if payload.strip():
                position = {"source": self._paths[self._index].name, "line": self._line}
                batch.append(RawEvent(self._seq, position, payload))
        if self._file is None:
            if self._ended:
                raise StopIteration
            self._ended = True
            batch.append(EndOfInput(self._seq))
        return batch

    def _next_file(self) -> None:
        assert self._file is not None
        self._file.close()
        self._index += 1
        self._line = 0
        self._file = _open(self._paths[self._index]) if self._index < len(self._paths) else None

    def snapshot(self) -> tuple[int, int, int, int]:
        offset = self._file.tell() if self._file is not None else 0
        return (self._index, offset, self._line, self._seq)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class JsonlSource(FixedPartitionedSource[RawEvent | EndOfInput, tuple[int, int, int, int]]):
    """Read JSONL recordings (plain or ``.gz``) as raw bytes, in order, as one stream (one partition)."""

    def __init__(self, paths: Sequence[str | Path], batch_size: int = 1000) -> None:
        self.paths = [Path(p) for p in paths]
        self.batch_size = batch_size
        for path in self.paths:
            if not path.is_file():
                raise FileNotFoundError(f"no such recording: {path}")

    def list_parts(self) -> list[str]:
        return ["recordings"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _JsonlPartition:
        return _JsonlPartition(self.paths, self.batch_size, resume_state)


class _FilePartition(StatefulSinkPartition[Output, None]):
    """One output stream: records are held and written sorted (event time, input position) at close."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._rows: list[tuple[Any, bytes]] = []

    def write_batch(self, values: list[Output]) -> None:
        self._rows.extend((value.sort_key(), value.body) for value in values)

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._rows.sort(key=lambda row: row[0])
        with self._path.open("wb") as out:
            for _, body in self._rows:
                out.write(body)
                out.write(b"\n")


class _SummaryPartition(StatefulSinkPartition[Output, None]):
    """The shards' counters, added up into one JSON document at close."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._counts: dict[str, Any] = {}

    def write_batch(self, values: list[Output]) -> None:
        for value in values:
            add_counts(self._counts, orjson.loads(value.body))

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
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


class _ModelsPartition(StatefulSinkPartition[Output, None]):
    """The shards' model parameters, merged into one model file at close (when models ran)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._exports: list[dict[str, Any]] = []
        self._version = ""

    def write_batch(self, values: list[Output]) -> None:
        for value in values:
            self._exports.append(orjson.loads(value.body))
            self._version = value.key

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        if self._exports:
            model_files.write(self._path, model_files.merge(self._exports), self._version)


class OutputFolderSink(FixedPartitionedSink[Output, None]):
    """Write each output stream to its file in ``folder`` (see :data:`OUTPUT_FILES`), and the
    merged model parameters to ``models.json``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.streams = sorted([*OUTPUT_FILES, "models"])
        self._index = {stream: i for i, stream in enumerate(self.streams)}

    def list_parts(self) -> list[str]:
        return self.streams

    def part_fn(self, item_key: str) -> int:
        return self._index[item_key]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> StatefulSinkPartition[Output, None]:
        if for_part == "models":
            return _ModelsPartition(self.folder / MODEL_FILE)
        path = self.folder / OUTPUT_FILES[for_part]
        return _SummaryPartition(path) if for_part == "stats" else _FilePartition(path)


def read_lines(path: Path) -> Iterator[bytes]:
    """The non-empty lines of a recording (plain or ``.gz``), without line ends."""
    with _open(path) as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


class _HistoryPartition(StatefulSourcePartition[RawEvent | EndOfInput, None]):
    """The recordings (``paths``), or nothing (an empty list); no resume state of its own."""

    def __init__(self, paths: list[Path], partition: int, batch_size: int) -> None:
        self._reader = _JsonlPartition(paths, batch_size, None) if paths else None
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

    def __init__(self, paths: Sequence[str | Path], part_names: list[str], batch_size: int = 1000) -> None:
        self.paths = [Path(p) for p in paths]
        self.part_names = part_names
        self.batch_size = batch_size
        for path in self.paths:
            if not path.is_file():
                raise FileNotFoundError(f"no such recording: {path}")

    def list_parts(self) -> list[str]:
        return self.part_names

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _HistoryPartition:
        index = self.part_names.index(for_part)
        return _HistoryPartition(self.paths if index == 0 else [], index, self.batch_size)


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
            if value.stream == "stats":
                add_counts(self._stats, orjson.loads(value.body))
            else:
                add_counts(self._stats, {"discarded": {value.stream: 1}})

    def snapshot(self) -> None:
        return None
