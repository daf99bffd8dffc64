"""Several source partitions (as a Kafka topic has): the same decisions whatever the interleaving."""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import orjson
import pytest
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, cluster_main, run_main
from conftest import track
from test_flow import mixed_stream

from flows.cli import run_dataflow
from flows.personalization import build_flow
from flows.settings import Settings
from schemas.items import EndOfInput, Output, RawEvent


class _ListPartition(StatefulSourcePartition[RawEvent | EndOfInput, int]):
    def __init__(
        self, partition: int, payloads: list[bytes], batch_size: int, resume: int | None, snapshots: list[int]
    ) -> None:
        self.partition, self.payloads, self.batch_size = partition, payloads, batch_size
        self.next = resume or 0
        self.snapshots = snapshots  # where each snapshot of any partition found its partition

    def next_batch(self) -> list[RawEvent | EndOfInput]:
        if self.next > len(self.payloads):
            raise StopIteration
        batch: list[RawEvent | EndOfInput] = []
        for offset in range(self.next, min(self.next + self.batch_size, len(self.payloads))):
            position = {"topic": "events", "partition": self.partition, "offset": offset}
            batch.append(RawEvent(offset, position, self.payloads[offset], partition=self.partition))
        self.next += len(batch)
        if self.next == len(self.payloads):
            batch.append(EndOfInput(self.next, self.partition))
            self.next += 1
        return batch

    def snapshot(self) -> int:
        self.snapshots.append(self.next)
        return self.next


class PartitionedSource(FixedPartitionedSource[RawEvent | EndOfInput, int]):
    """Payloads split over partitions, each read in batches of its own size."""

    def __init__(self, partitions: list[list[bytes]], batch_sizes: list[int]) -> None:
        self.partitions, self.batch_sizes = partitions, batch_sizes
        self.snapshots: list[int] = []

    def list_parts(self) -> list[str]:
        return [str(p) for p in range(len(self.partitions))]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _ListPartition:
        p = int(for_part)
        return _ListPartition(p, self.partitions[p], self.batch_sizes[p], resume_state, self.snapshots)


def split(events: list, partitions: int) -> list[list[bytes]]:
    """Round robin: one customer's events land in several partitions, as unkeyed producers do."""
    parts: list[list[bytes]] = [[] for _ in range(partitions)]
    for i, event in enumerate(events):
        parts[i % partitions].append(orjson.dumps(event))
    return parts


def decisions(parts: list[list[bytes]], batch_sizes: list[int], workers: int, tmp_path) -> list[bytes]:
    captured: list[tuple[str, Output]] = []
    settings = Settings(out=tmp_path / "unused", shards=8)
    source = PartitionedSource(parts, batch_sizes)
    flow = build_flow(settings, source=source, sink=TestingSink(captured), source_partitions=len(parts))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, addresses=[], proc_id=0, worker_count_per_proc=workers)
    return sorted(o.body for _, o in captured if o.stream != "stats")


def with_late_and_quiet_events() -> list:
    events = mixed_stream()
    # an event 30 minutes older than what its partition has seen, and a long pause
    return [*events, track("Product Viewed", "u3", 1990, props={"product_id": "late"}), *mixed_stream()[:5]]


@pytest.mark.parametrize("partitions", [2, 3])
def test_decisions_do_not_depend_on_workers_or_batching(tmp_path, partitions):
    parts = split(with_late_and_quiet_events(), partitions)
    expected = decisions(parts, [5] * partitions, 1, tmp_path)
    assert len(expected) > 20
    assert decisions(parts, [1, 17, 3][:partitions], 1, tmp_path) == expected
    assert decisions(parts, [64] * partitions, 3, tmp_path) == expected


def test_a_partition_far_behind_holds_the_others_back_instead_of_making_its_events_late(tmp_path):
    events = mixed_stream()
    early, later = events[: len(events) // 2], events[len(events) // 2 :]
    parts = [[orjson.dumps(e) for e in early], [orjson.dumps(e) for e in later]]
    # partition 1 is read in one batch before partition 0 has sent much: nothing is late anyway
    captured = decisions(parts, [2, 1000], 1, tmp_path)
    single = decisions([parts[0] + parts[1]], [50], 1, tmp_path)
    assert captured == single


def test_a_run_without_a_recovery_store_is_one_epoch(tmp_path):
    """Without a recovery store nothing needs an epoch's end, and at each one the workers (and processes)
    that finished it wait, spinning, for the slowest: such a run is one epoch, whatever the snapshot
    interval. Each partition is snapshotted once, when the run ends."""
    settings = Settings(out=tmp_path / "unused", shards=8, snapshot_seconds=0.001)
    source = PartitionedSource(split(mixed_stream() * 3, 2), [3, 5])
    flow = build_flow(settings, source=source, sink=TestingSink([]), source_partitions=2)
    run_dataflow(flow, settings, workers=2)
    assert len(source.snapshots) <= 2


class _TimerSlackSink(DynamicSink[Output]):
    """The timer slack of each worker thread that writes outputs, in nanoseconds."""

    def __init__(self) -> None:
        self.slack: dict[int, int] = {}

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Output]:
        slack = self.slack

        class _Partition(StatelessSinkPartition[Output]):
            def write_batch(self, items: list[Output]) -> None:
                slack[threading.get_ident()] = ctypes.CDLL(None).prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)

        return _Partition()


PR_GET_TIMERSLACK = 30


@pytest.mark.parametrize("workers", [1, 2])
def test_the_engine_threads_wake_from_timed_waits_in_bunches(tmp_path, workers):
    """A waiting Bytewax worker wakes every millisecond (and, with several, so does the thread that
    waits for them): the engine lets the kernel defer such a wake-up by up to half the Kafka poll
    interval, to wake once for several. The thread that ran it gets its own timers back."""
    settings = Settings(out=tmp_path / "unused", shards=8, kafka_poll_ms=6)
    sink = _TimerSlackSink()
    before = ctypes.CDLL(None).prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
    flow = build_flow(settings, source=PartitionedSource(split(mixed_stream(), 2), [3, 5]), sink=sink)
    run_dataflow(flow, settings, workers=workers)
    assert len(sink.slack) == workers and set(sink.slack.values()) == {3_000_000}
    assert ctypes.CDLL(None).prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) == before
