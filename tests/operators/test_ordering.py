"""Ordered release of a chunked stream: a replay shared among processes reads one stream in
interleaved chunks, and every event still gets the mark (event time reached) and the order that one
reader of the whole stream gives it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import added, order, track

from connectors.files import JsonlSource
from operators.engine import EngineConfig
from operators.pipeline import Pipeline
from operators.rules import load_rules
from schemas.items import ChunkEnd, EndOfInput, Output, RawEvent

DAY_MINUTES = 24 * 60


def stream_with_jumps(path: Path) -> Path:
    """Chunks of 2 lines whose marks depend on other chunks: the event time jumps forward (a timer
    falls due), a chunk starts with a future-dated event (nothing in its chunk moved the mark before
    it), a line is not JSON, one is too old and one is late for what the stream has reached."""
    events: list[dict | bytes] = [
        added("u1", 0),
        track("Product Viewed", "u2", 1, props={"product_id": "p2"}),
        added("u3", 2, anon="a3"),
        track("Product Viewed", "u1", 3, props={"product_id": "p1"}),
        {**added("u2", 10), "receivedAt": "2025-12-01T00:00:00Z"},  # future-dated: its chunk's first line
        track("Page", None, 50, anon="a9"),  # the clock moves: u1's cart timer falls due
        b"{not json",
        order("u3", 60),
        track("Product Viewed", "u4", 70, props={"product_id": "p4"}),
        added("u4", 400 * DAY_MINUTES),  # a year later
        track("Product Viewed", "u5", 20, props={"product_id": "p5"}),  # too old now
        added("u1", 400 * DAY_MINUTES - 60),  # late
        order("u4", 400 * DAY_MINUTES + 1),
    ]
    path.write_bytes(b"".join((e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n" for e in events))
    return path


def replay(path: Path, parts: int, reading_order: list[int]) -> list[bytes]:
    """The stream through the in-process pipeline, read in ``parts`` partitions of 2-line chunks,
    a batch at a time from the partitions in ``reading_order`` (repeated until all have ended)."""
    source = JsonlSource([path], batch_size=2, parts=parts)
    readers = {n: source.build_part("events", name, None) for n, name in enumerate(source.list_parts())}
    pipeline = Pipeline(load_rules(), EngineConfig(source_partitions=parts), shards=3, chunked=parts > 1)
    outputs: list[Output] = []
    while readers:
        for n in reading_order:
            if n in readers:
                try:
                    outputs += pipeline.feed(readers[n].next_batch())
                except StopIteration:
                    del readers[n]
    outputs += pipeline.finish()
    return [o.body for o in sorted((o for o in outputs if o.stream != "stats"), key=Output.sort_key)]


@pytest.mark.parametrize("parts, reading_order", [(2, [0, 1]), (3, [2, 1, 0]), (4, [3, 0, 2, 1])])
def test_a_chunked_stream_gives_what_one_reader_gives_whatever_order_its_parts_are_read_in(
    tmp_path, parts, reading_order
):
    path = stream_with_jumps(tmp_path / "stream.jsonl")
    one_reader = replay(path, 1, [0])
    reasons = [orjson.loads(body).get("reason") for body in one_reader]
    assert {"future_dated", "invalid_json", "too_old"} <= set(reasons)
    assert any(b"cart_abandonment_push" in body for body in one_reader), "a timer fired on the clock"
    assert replay(path, parts, reading_order) == one_reader


def drain(part) -> list[list]:
    batches = []
    while True:
        try:
            batches.append(part.next_batch())
        except StopIteration:
            return batches


def test_a_part_passes_on_only_its_own_chunks_each_followed_by_its_end(tmp_path):
    path = stream_with_jumps(tmp_path / "stream.jsonl")  # 13 lines: chunks of 2, the last one short
    source = JsonlSource([path], batch_size=2, parts=3)
    batches = drain(source.build_part("events", "recordings-1", None))
    lines = [[item.seq for item in batch if isinstance(item, RawEvent)] for batch in batches]
    ends = [(item.seq, item.skip_to) for batch in batches for item in batch if isinstance(item, ChunkEnd)]
    assert lines == [[3, 4], [9, 10]]
    assert ends == [(4, 8), (10, 14)], "after each chunk: nothing more from this part up to its next chunk"
    assert isinstance(batches[-1][-1], EndOfInput)


def test_the_lines_of_a_split_source_are_counted_once(tmp_path):
    path = stream_with_jumps(tmp_path / "stream.jsonl")
    source = JsonlSource([path], batch_size=2, parts=3)
    for part in source.list_parts():
        drain(source.build_part("events", part, None))
    lines = [tally.lines["stream.jsonl"]["read"] for tally in source.part_tallies]
    assert lines == [5, 4, 4], "each part counts the lines of its own chunks"
