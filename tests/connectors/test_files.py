"""JSONL recordings in and output folders out."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import random
import shutil
import tracemalloc
from pathlib import Path

import orjson
import pytest
from bytewax.testing import run_main
from prometheus_client import REGISTRY

from connectors import files
from connectors.files import JsonlSource, OutputFolderError, OutputFolderSink, prepare_output_folder
from flows.personalization import build_flow
from flows.settings import Settings
from operators.parse import parse
from schemas.items import EndOfInput, Output, RawEvent, ReadAhead
from schemas.records import DEAD_LETTER_PAYLOAD_CAP
from schemas.streams import OUTPUT_FILES


def read_all(source: JsonlSource, resume=None) -> tuple[list, object]:
    part = source.build_part("in", source.list_parts()[0], resume)
    items: list = []
    state = None
    while True:
        try:
            items.extend(part.next_batch())
        except StopIteration:
            break
        state = part.snapshot()
    part.close()
    return items, state


def test_files_are_read_as_bytes_in_order_with_one_end_marker(tmp_path):
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b'{"a": 1}\n\n\xff\xfe not utf-8\r\n')
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"b": 2}\n{"b": 3}'))
    items, _ = read_all(JsonlSource([plain, packed], batch_size=2))
    records = [i for i in items if isinstance(i, RawEvent)]
    assert [r.payload for r in records] == [b'{"a": 1}', b"\xff\xfe not utf-8", b'{"b": 2}', b'{"b": 3}']
    assert [r.position for r in records] == [
        {"source": "a.jsonl", "line": 1},
        {"source": "a.jsonl", "line": 3},
        {"source": "b.jsonl.gz", "line": 1},
        {"source": "b.jsonl.gz", "line": 2},
    ]
    assert [r.seq for r in records] == [1, 3, 4, 5], "seq counts lines across files"
    assert [type(i) for i in items].count(EndOfInput) == 1 and isinstance(items[-1], EndOfInput)


def test_a_resumed_source_continues_where_its_snapshot_was(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(10)))
    source = JsonlSource([path], batch_size=4)
    part = source.build_part("in", "recordings", None)
    first = part.next_batch()
    state = part.snapshot()
    part.close()
    rest, _ = read_all(source, state)
    payloads = [r.payload for r in [*first, *rest] if isinstance(r, RawEvent)]
    assert payloads == [b'{"n": %d}' % i for i in range(10)]
    assert source.tally.lines == {"s.jsonl": {"read": 10, "blank": 0}}


def test_a_missing_recording_is_refused_up_front(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such recording"):
        JsonlSource([tmp_path / "nope.jsonl"])


def test_output_folder_is_created_with_every_file_and_never_appended_to(tmp_path):
    out = prepare_output_folder(tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES.values())
    with pytest.raises(OutputFolderError, match="not empty"):
        prepare_output_folder(out)
    (out / "triggers.push.jsonl").write_text("old")
    prepare_output_folder(out, replace=True)
    assert (out / "triggers.push.jsonl").read_text() == ""


def records_of(items: list) -> list[RawEvent]:
    return [item for item in items if isinstance(item, RawEvent)]


def test_every_line_read_is_counted_blank_and_whitespace_only_ones_too(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n\n   \t \r\n{"a": 2}\r\n\n{"a": 3}')
    source = JsonlSource([path])
    before = {kind: input_lines(kind) for kind in ("record", "blank")}
    items, _ = read_all(source)
    assert [r.payload for r in records_of(items)] == [b'{"a": 1}', b'{"a": 2}', b'{"a": 3}']
    assert source.tally.lines == {"a.jsonl": {"read": 6, "blank": 3}}
    assert {kind: input_lines(kind) - before[kind] for kind in before} == {"record": 3, "blank": 3}


def input_lines(kind: str) -> float:
    return REGISTRY.get_sample_value("nudgeflow_input_lines_total", {"kind": kind}) or 0.0


def test_a_line_over_the_limit_is_never_read_whole(tmp_path):
    """A 20 MB line costs a chunk of memory, not 20 MB, and the next line is read as usual."""
    path = tmp_path / "big.jsonl"
    big = b'{"blob": "' + b"x" * 20_000_000 + b'"}'
    path.write_bytes(b'{"n": 1}\n' + big + b'\r\n{"n": 2}\n')
    source = JsonlSource([path], max_event_bytes=1024)
    tracemalloc.start()
    try:
        items, _ = read_all(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"reading the long line took {peak:,} bytes"
    first, long, last = records_of(items)
    assert (first.payload, last.payload) == (b'{"n": 1}', b'{"n": 2}')
    assert long.position == {"source": "big.jsonl", "line": 2}
    assert long.rejected == ("nudgeflow.parse", "too_large", f"event is {len(big)} bytes, the limit is 1024")
    assert long.payload == big[:DEAD_LETTER_PAYLOAD_CAP]
    assert long.whole == (len(big), hashlib.sha256(big).hexdigest()), "size and sha256 of the line, without \\r\\n"
    record = orjson.loads(parse(long).body)
    assert (record["reason"], record["payload_size"], record["payload_truncated"]) == ("too_large", len(big), True)
    assert source.tally.lines == {"big.jsonl": {"read": 3, "blank": 0}}


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_a_long_line_is_measured_without_its_line_end_wherever_the_chunks_split_it(tmp_path, monkeypatch, line_end):
    monkeypatch.setattr(files, "SKIP_CHUNK", 64)
    path = tmp_path / "long.jsonl"
    for size in range(258 + 60, 258 + 200):  # the first read takes limit + 2 = 258 bytes, then chunks of 64
        line = bytes(range(65, 91)) * (size // 26) + b"z" * (size % 26)
        path.write_bytes(line + line_end + b"{}\n")
        long, rest = records_of(read_all(JsonlSource([path], max_event_bytes=256))[0])
        assert long.whole == (size, hashlib.sha256(line).hexdigest()), size
        assert long.payload == line and rest.payload == b"{}"


def test_a_truncated_gzip_ends_in_a_dead_letter_record_and_the_next_file_is_read(tmp_path):
    packed = gzip.compress(b"".join(b'{"n": %d}\n' % i for i in range(5000)))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    after = tmp_path / "after.jsonl"
    after.write_bytes(b'{"after": 1}\n')
    source = JsonlSource([cut, after], batch_size=100)
    items, _ = read_all(source)
    records = records_of(items)
    failure = next(r for r in records if r.rejected)
    read_before = failure.position["line"] - 1
    assert read_before > 0 and [r.payload for r in records[:read_before]] == [
        b'{"n": %d}' % i for i in range(read_before)
    ]
    assert failure.position == {"source": "cut.jsonl.gz", "line": read_before + 1}
    assert failure.rejected[:2] == ("nudgeflow.files", "truncated_input")
    assert f"reading stopped at line {read_before + 1:,}" in failure.rejected[2]
    assert records[-1].payload == b'{"after": 1}' and isinstance(items[-1], EndOfInput)
    assert source.tally.problems == [failure.rejected[2]]
    assert source.tally.lines["cut.jsonl.gz"] == {"read": read_before + 1, "blank": 0}


def test_corrupt_gzip_data_ends_its_file_in_a_dead_letter_record(tmp_path):
    packed = bytearray(gzip.compress(b"".join(b'{"n": %d}\n' % i for i in range(5000))))
    packed[len(packed) // 2 : len(packed) // 2 + 8] = b"\xff" * 8
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(bytes(packed))
    items, _ = read_all(JsonlSource([bad]))
    failure = records_of(items)[-1]
    assert failure.rejected[:2] == ("nudgeflow.files", "corrupt_input")
    assert isinstance(items[-1], EndOfInput)


def test_a_file_that_disappears_before_it_is_read_is_a_dead_letter_record_and_the_run_goes_on(tmp_path):
    paths = [tmp_path / f"{name}.jsonl" for name in "abc"]
    for path in paths:
        path.write_bytes(b'{"from": "%s"}\n' % path.stem.encode())
    source = JsonlSource(paths, batch_size=1)
    part = source.build_part("in", "recordings", None)
    first = part.next_batch()
    paths[1].unlink()
    rest = []
    with contextlib.suppress(StopIteration):
        while True:
            rest.extend(part.next_batch())
    part.close()
    records = records_of([*first, *rest])
    assert [r.payload for r in records if not r.rejected] == [b'{"from": "a"}', b'{"from": "c"}']
    gone = next(r for r in records if r.rejected)
    assert gone.position == {"source": "b.jsonl", "line": 1}
    assert gone.rejected[:2] == ("nudgeflow.files", "unreadable_input") and "No such file" in gone.rejected[2]
    assert source.tally.lines == {
        "a.jsonl": {"read": 1, "blank": 0},
        "b.jsonl": {"read": 1, "blank": 0},
        "c.jsonl": {"read": 1, "blank": 0},
    }


def test_a_recording_that_cannot_be_read_is_refused_up_front(tmp_path):
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_bytes(b'{"a": 1}\n')
    with pytest.raises(ValueError, match="is not gzip data"):
        JsonlSource([not_gzip])
    with pytest.raises(FileNotFoundError, match="is not a file"):
        JsonlSource([tmp_path])


GOLDEN = Path(__file__).parents[1] / "flows" / "golden"


def replay_into(out: Path, **sink_options: int) -> dict[str, bytes]:
    """The golden stream through the flow into ``OutputFolderSink(out, **sink_options)``: the files written."""
    prepare_output_folder(out)
    settings = Settings(input=[GOLDEN / "stream.jsonl.gz"], out=out)
    run_main(build_flow(settings, sink=OutputFolderSink(out, **sink_options)))
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def test_outputs_written_in_many_small_runs_are_byte_identical_to_the_golden_ones(tmp_path):
    """Two records a run: hundreds of runs, merged in more than one pass, and empty streams."""
    whole = replay_into(tmp_path / "whole")
    runs = replay_into(tmp_path / "runs", run_records=2)
    assert runs == whole, "no run file is left behind, every file is the same"
    for name in OUTPUT_FILES.values():
        if name.endswith(".jsonl"):
            assert runs[name] == (GOLDEN / "expected" / name).read_bytes(), name
    assert len(runs["triggers.in_app.jsonl"].splitlines()) > 2 * files.MERGE_FAN_IN


def shuffled_outputs(count: int, body_bytes: int = 0) -> list[Output]:
    """Records in random order, with ties on event time, input position and customer."""
    rng = random.Random(7)
    outputs = [
        Output(
            "triggers.push", f"c{rng.randrange(5)}", rng.randrange(20), rng.randrange(3), b"%d" % n + b"x" * body_bytes
        )
        for n in range(count)
    ]
    rng.shuffle(outputs)
    return outputs


def batches(values: list, size: int) -> list[list]:
    return [values[i : i + size] for i in range(0, len(values), size)]


@pytest.mark.parametrize(("options", "body_bytes"), [({"run_records": 4}, 0), ({"run_bytes": 1000}, 300)])
def test_a_stream_holds_a_bounded_number_of_records_and_writes_them_in_order(tmp_path, options, body_bytes):
    sink = OutputFolderSink(tmp_path, **options)
    part = sink.build_part("outputs", "triggers.push", None)
    outputs = shuffled_outputs(400, body_bytes)
    held = []
    for batch in batches(outputs, 9):
        part.write_batch(batch)
        held.append(part.held)
    assert max(held) <= 3, "a full run goes to a file at once"
    assert len(list(tmp_path.iterdir())) > files.MERGE_FAN_IN, "the records wait in run files"
    part.close()
    expected = b"".join(o.body + b"\n" for o in sorted(outputs, key=Output.sort_key))
    assert [p.name for p in tmp_path.iterdir()] == ["triggers.push.jsonl"], "the run files are gone"
    assert (tmp_path / "triggers.push.jsonl").read_bytes() == expected


def test_a_run_file_that_cannot_be_written_fails_the_stream_and_its_records_are_no_longer_held(tmp_path):
    errors: files.WriteErrors = []
    folder = tmp_path / "staging"
    folder.mkdir()
    part = OutputFolderSink(folder, errors, run_records=4).build_part("outputs", "triggers.push", None)
    outputs = shuffled_outputs(20)
    part.write_batch(outputs[:6])
    shutil.rmtree(folder)  # e.g. the disk is gone
    part.write_batch(outputs[6:])
    assert part.held == 0
    part.close()
    assert [(path.name, type(err)) for path, err in errors] == [("triggers.push.jsonl", FileNotFoundError)]


class ByTime(Output):
    def sort_key(self) -> tuple[int, ...]:
        return (self.time_ms,)


def test_records_of_equal_sort_keys_keep_their_arrival_order_across_runs(tmp_path):
    """As one stable sort would: whatever the runs and merge passes."""
    outputs = [ByTime("triggers.push", "c", n % 5, 0, b"%d" % n) for n in range(300)]
    part = OutputFolderSink(tmp_path, run_records=2).build_part("outputs", "triggers.push", None)
    for batch in batches(outputs, 7):
        part.write_batch(batch)
    part.close()
    expected = b"".join(o.body + b"\n" for o in sorted(outputs, key=ByTime.sort_key))
    assert (tmp_path / "triggers.push.jsonl").read_bytes() == expected


def _awkward_recordings(folder: Path) -> list[Path]:
    """Recordings with blank and CRLF lines, a line over 256 bytes, bytes that are not UTF-8, an empty
    file, a .gz file and a truncated .gz one."""
    lines = [b'{"n": %d}' % i for i in range(40)]
    lines[5:5] = [b"", b"   ", b'{"crlf": 1}\r', b"\xff\xfe", b'{"long": "' + b"x" * 600 + b'"}']
    plain = folder / "a.jsonl"
    plain.write_bytes(b"\n".join(lines))  # no line end at the end
    empty = folder / "empty.jsonl"
    empty.write_bytes(b"")
    packed = folder / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    many = gzip.compress(b"".join(b'{"m": %d}\n' % i for i in range(3000)))
    cut = folder / "cut.jsonl.gz"
    cut.write_bytes(many[: len(many) // 2])
    last = folder / "c.jsonl"
    last.write_bytes(b'{"last": 1}\n\n')
    return [plain, empty, packed, cut, last]


def _drain(part) -> list:
    items: list = []
    with contextlib.suppress(StopIteration):
        while True:
            items.extend(part.next_batch())
    part.close()
    return items


@pytest.mark.parametrize(("parts", "chunk"), [(2, 1), (3, 7), (4, 50)])
def test_the_parts_of_a_split_source_read_together_what_one_reader_reads(tmp_path, parts, chunk):
    paths = _awkward_recordings(tmp_path)
    one = JsonlSource(paths, batch_size=chunk, max_event_bytes=256)
    expected = [(r.seq, r.position, r.payload, r.rejected, r.whole) for r in records_of(read_all(one)[0])]
    split = JsonlSource(paths, batch_size=chunk, max_event_bytes=256, parts=parts)
    records = []
    for name in split.list_parts():
        records += records_of(_drain(split.build_part("in", name, None)))
    assert sorted((r.seq, r.position, r.payload, r.rejected, r.whole) for r in records) == expected
    lines: dict = {}
    for tally in split.part_tallies:
        files.add_counts(lines, tally.lines)
    assert {name: counts for name, counts in lines.items() if counts["read"]} == {
        name: counts for name, counts in one.tally.lines.items() if counts["read"]
    }
    assert [problem for tally in split.part_tallies for problem in tally.problems] == one.tally.problems


class _CountingFile(io.FileIO):
    """A file that counts the bytes read from it (all instances together)."""

    read_bytes = 0

    def readinto(self, buffer) -> int | None:
        count = super().readinto(buffer)
        _CountingFile.read_bytes += count or 0
        return count


def test_a_part_of_a_split_source_reads_only_its_own_chunks(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * 200) for i in range(4000)))
    source = JsonlSource([path], batch_size=100, parts=4)
    monkeypatch.setattr(files, "_open", lambda p: io.BufferedReader(_CountingFile(p)))
    records = records_of(_drain(source.build_part("in", "recordings-1", None)))
    assert len(records) == 1000
    assert _CountingFile.read_bytes < path.stat().st_size * 0.3, "about a quarter of the file, not all of it"


def test_a_part_of_a_split_source_reads_no_further_ahead_than_the_flow_allows(tmp_path):
    """A part whose peers are slower waits (reads nothing) rather than reading its chunks on, and
    goes on once the flow has taken the other parts' lines up to where it stopped."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(100)))
    source = JsonlSource([path], batch_size=2, parts=2)
    assert source.read_ahead == ReadAhead(files.READ_AHEAD_ROUNDS * 2 * 2)
    source.read_ahead = ReadAhead(lines=8, taken=0)
    part = source.build_part("in", "recordings-0", None)
    lines = [record.seq for _ in range(6) for record in records_of(part.next_batch())]
    assert lines == [1, 2, 5, 6, 9, 10], "the chunks beginning up to 8 lines after what was taken"
    assert part.next_batch() == [], "nothing more until the flow takes more"
    source.read_ahead.taken = 40
    assert [record.seq for record in records_of(part.next_batch())] == [13, 14]
