"""JSONL recordings in and output folders out."""

from __future__ import annotations

import gzip

import pytest

from connectors.files import OUTPUT_FILES, JsonlSource, OutputFolderError, prepare_output_folder
from operators.parse import EndOfInput, RawEvent


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
