"""The event journal and the source that tails it, in real Bytewax flows."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main
from conftest import track

from connectors.journal import EventJournal, JournalSource
from operators.parse import Rejected, parse
from schemas.items import EndOfInput, RawEvent

WAIT_SECONDS = 20.0
REPO = Path(__file__).resolve().parents[2]


def events(count: int, start: int = 0) -> list[bytes]:
    return [
        orjson.dumps(track("Product Viewed", f"u{n % 3}", n, props={"product_id": f"p{n}"}, message_id=f"m{n}"))
        for n in range(start, start + count)
    ]


def records(captured: list) -> list[RawEvent]:
    return [item for item in captured if isinstance(item, RawEvent)]


class TailingFlow:
    """A flow reading the journal into a list, run in a thread until its source is stopped."""

    def __init__(
        self, path: Path, batch_size: int = 100, recovery: RecoveryConfig | None = None, mark_idle: bool = True
    ) -> None:
        self.captured: list = []
        self.source = JournalSource(path, batch_size, mark_idle=mark_idle)
        flow = Dataflow("journal")
        op.output("out", op.input("in", flow, self.source), TestingSink(self.captured))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(flow, recovery), daemon=True)
        self.thread.start()

    def _run(self, flow: Dataflow, recovery: RecoveryConfig | None) -> None:
        try:
            run_main(flow, epoch_interval=timedelta(milliseconds=50), recovery_config=recovery)
        except BaseException as err:
            self.error = err

    def wait_for(self, count: int) -> list[RawEvent]:
        deadline = time.monotonic() + WAIT_SECONDS
        while len(records(self.captured)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return records(self.captured)

    def stop(self) -> float:
        """Stop the source; the seconds the flow took to end."""
        started = time.monotonic()
        self.source.stop.set()
        self.thread.join(WAIT_SECONDS)
        assert not self.thread.is_alive(), "the flow ended once its source was stopped"
        assert self.error is None, self.error
        return time.monotonic() - started


def test_events_appended_while_a_flow_tails_the_journal_arrive_in_order_as_they_come(tmp_path):
    path = tmp_path / "events.jsonl"
    journal = EventJournal(path)
    flow = TailingFlow(path, batch_size=7)
    try:
        sent = events(60)
        for n in range(0, 60, 20):
            journal.append(sent[n : n + 20])
            got = flow.wait_for(n + 20)
            assert [r.payload for r in got] == sent[: n + 20], "each append is read before the next one"
            assert isinstance(flow.captured[-1], EndOfInput), "caught up: the engine need not wait for more"
    finally:
        flow.stop()
    got = records(flow.captured)
    assert [r.position for r in got] == [{"source": "events.jsonl", "line": n} for n in range(1, 61)]
    assert [r.seq for r in got] == list(range(1, 61))
    assert all(r.arrived > 0 for r in got)
    ends = [item for item in flow.captured if isinstance(item, EndOfInput)]
    assert 3 <= len(ends) <= 10, "an end of input each time it caught up, not one per idle poll"


def test_without_idle_marks_the_only_end_of_input_comes_at_the_end(tmp_path):
    path = tmp_path / "events.jsonl"
    journal = EventJournal(path)
    flow = TailingFlow(path, batch_size=7, mark_idle=False)
    try:
        for n in range(3):
            journal.append(events(10, start=10 * n))
            flow.wait_for(10 * (n + 1))
        assert not any(isinstance(item, EndOfInput) for item in flow.captured)
    finally:
        flow.stop()
    assert [type(item) for item in flow.captured] == [RawEvent] * 30 + [EndOfInput]
    assert flow.captured[-1].seq == 30


def test_stop_ends_the_flow_after_what_was_appended_before_it(tmp_path):
    path = tmp_path / "events.jsonl"
    journal = EventJournal(path)
    flow = TailingFlow(path, batch_size=10)
    time.sleep(0.3)  # idle a while: the flow waits on the source's next wake-up
    journal.append(events(35))
    seconds = flow.stop()
    assert len(records(flow.captured)) == 35, "everything appended before the stop was read"
    assert seconds < 5


def test_a_resumed_source_reads_on_from_its_snapshot_offset(tmp_path):
    path = tmp_path / "events.jsonl"
    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    journal = EventJournal(path)
    journal.append(events(5))
    first = TailingFlow(path, recovery=RecoveryConfig(str(db)))
    first.wait_for(5)
    first.stop()

    journal.append(events(4, start=5))
    second = TailingFlow(path, recovery=RecoveryConfig(str(db)))
    second.wait_for(4)
    second.stop()

    assert [r.payload for r in records(first.captured)] == events(5)
    resumed = records(second.captured)
    assert [r.payload for r in resumed] == events(4, start=5), "resumed after the last line read, nothing twice"
    assert [r.position["line"] for r in resumed] == [6, 7, 8, 9]


def test_a_line_being_written_is_left_until_it_is_complete(tmp_path):
    path = tmp_path / "events.jsonl"
    first, second = events(2)
    path.write_bytes(first + b"\n" + second[:20])
    source = JournalSource(path, batch_size=10)
    part = source.build_part("in", "journal", None)
    assert [r.payload for r in records(part.next_batch())] == [first]
    with path.open("ab") as f:
        f.write(second[20:] + b"\n")
    assert [r.payload for r in records(part.next_batch())] == [second]
    assert part.snapshot() == (len(first) + len(second) + 2, 2)


def test_a_torn_last_line_after_a_crash_becomes_a_dead_letter_and_the_next_event_starts_a_line(tmp_path):
    path = tmp_path / "events.jsonl"
    whole, torn, after = events(3)
    path.write_bytes(whole + b"\n" + torn[:25])  # the process died while writing
    journal = EventJournal(path)
    journal.append([after])
    part = JournalSource(path, batch_size=10).build_part("in", "journal", None)
    got = records(part.next_batch())
    assert [r.payload for r in got] == [whole, torn[:25], after]
    assert type(parse(got[1])) is Rejected and parse(got[1]).reason == "invalid_json"
    assert type(parse(got[2])) is not Rejected, "the event after the torn line is read whole"


def test_an_event_with_a_line_break_is_refused_and_nothing_of_its_batch_is_written(tmp_path):
    journal = EventJournal(tmp_path / "events.jsonl")
    with pytest.raises(ValueError, match="line break"):
        journal.append([events(1)[0], b'{"type":\n"track"}'])
    assert journal.size == 0
    assert (tmp_path / "events.jsonl").read_bytes() == b""


FAILING_WRITE = """
import resource, sys
from pathlib import Path
from connectors.journal import EventJournal

journal = EventJournal(Path(sys.argv[1]))
journal.append([b'{"n":1}'])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))  # the file may not grow beyond 100 bytes
try:
    journal.append([b'{"n":2}', b'{"n":3,"pad":"' + b"x" * 300 + b'"}'])
except OSError as err:
    print(err.strerror)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
journal.append([b'{"n":4}'])
"""


def test_after_a_write_cut_short_the_next_events_start_on_a_line_of_their_own(tmp_path):
    path = tmp_path / "events.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", FAILING_WRITE, str(path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "File too large"
    lines = path.read_bytes().split(b"\n")
    assert lines[:2] == [b'{"n":1}', b'{"n":2}'], "what was written before the failure stays"
    assert lines[2].startswith(b'{"n":3,"pad":"xx') and len(lines[2]) < 300, "cut at the size limit"
    assert lines[3:] == [b'{"n":4}', b""], "the cut line is ended; the next event is whole"
    got = records(JournalSource(path).build_part("in", "journal", None).next_batch())
    assert [r.payload for r in got] == lines[:4]
    assert parse(got[2]).reason == "invalid_json"


def test_appends_from_many_threads_keep_every_line_whole(tmp_path):
    path = tmp_path / "events.jsonl"
    journal = EventJournal(path)
    batches = [events(50, start=n * 50) for n in range(8)]
    threads = [threading.Thread(target=journal.append, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_bytes().splitlines()
    assert sorted(lines) == sorted(line for batch in batches for line in batch)
    for batch in batches:
        start = lines.index(batch[0])
        assert lines[start : start + 50] == batch, "one append's lines stay together"
    assert journal.size == path.stat().st_size


def test_a_line_over_the_size_limit_is_read_as_a_too_large_record_of_its_first_bytes(tmp_path):
    path = tmp_path / "events.jsonl"
    small = events(1)[0]
    big = b'{"type":"track","pad":"' + b"x" * 5000 + b'"}'
    path.write_bytes(big + b"\n" + small + b"\n")
    part = JournalSource(path, batch_size=10, max_event_bytes=1024).build_part("in", "journal", None)
    got = records(part.next_batch())
    assert [r.position["line"] for r in got] == [1, 2]
    assert got[0].rejected is not None and got[0].rejected[1] == "too_large"
    assert got[0].whole is not None and got[0].whole[0] == len(big)
    assert got[1].payload == small
