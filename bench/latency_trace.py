"""``nudgeflow`` with each event's path timed, for ``kafka_bench.py --trace``:

    python bench/latency_trace.py TRACE.json run --quiet

runs ``flows.cli`` with its arguments, and every second writes to ``TRACE.json`` where the time of
event-caused decisions went (wall clock, seconds):

- ``poll``: the broker appending the event (``LogAppendTime`` topics) -> the source reading it;
- ``identity``: source read -> the identity stage's batch holding it begins;
- ``customer``: identity batch begins -> the customer stage's batch holding it begins;
- ``decided``: customer batch begins -> the batch (which made the decision) ends;
- ``written``: decision made -> the Kafka sink producing it;
- ``confirmed``: produced -> Kafka confirming it;

and the pauses of the process: each stage batch, snapshot, sink flush and garbage collection
longer than 5 ms (when it began, how long), and each snapshot round (from the first shard's snapshot
to the next batch of a stage: the shards' snapshots, Bytewax writing them, the sinks' flushes).
It is a measuring tool: it adds work per event.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

LONG = 0.005  # pauses shorter than this are not listed


class Trace:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: dict[int, list[float]] = {}  # merge key -> [read, identity begins, customer begins]
        self.decisions: dict[int, list[float]] = {}  # merge key -> [..., decided]
        self.rows: list[list[float]] = []  # one per confirmed event-caused decision
        self.poll: list[tuple[float, float]] = []  # (read, read - broker append) per event
        self.pauses: list[tuple[str, float, float]] = []  # (what, began, seconds)
        self.gc_began = 0.0
        self.round_began: float | None = None  # when the first shard's snapshot of the current round began
        self.lock = threading.Lock()

    def pause(self, what: str, began: float) -> None:
        seconds = time.time() - began
        if seconds >= LONG:
            self.pauses.append((what, began, seconds))

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.gc_began = time.time()
        else:
            self.pause(f"gc{info['generation']}", self.gc_began)

    def write(self) -> None:
        """Replace the trace file whole (a reader never sees it half written)."""
        with self.lock:
            data = {"rows": self.rows, "poll": self.poll, "pauses": self.pauses}
            partial = self.path.with_suffix(".partial")
            partial.write_bytes(orjson.dumps(data))
            partial.replace(self.path)

    def keep_writing(self) -> None:
        while True:
            time.sleep(1.0)
            self.write()


def install(trace: Trace) -> None:
    """Wrap the source, both stages and the sink to stamp each event on its way."""
    from connectors import kafka
    from operators.engine import Forward
    from operators.pipeline import ShardLogic
    from schemas.envelope import Envelope
    from schemas.items import Output

    take = kafka._SharedConsumer.take

    def traced_take(self: Any, partition: int, count: int) -> list[Any]:
        messages = take(self, partition, count)
        now = time.time()
        for message in messages:
            if message.error() is None:
                trace.poll.append((now, now - message.timestamp()[1] / 1000))
        return messages

    kafka._SharedConsumer.take = traced_take  # type: ignore[method-assign]
    on_batch = ShardLogic.on_batch

    def traced_on_batch(self: Any, values: list[list[Any]]) -> Any:
        began = time.time()
        if trace.round_began is not None:  # the first batch after a snapshot round
            trace.pause("snapshot round", trace.round_began)
            trace.round_began = None
        customer = self.engine.sends_profiles
        for items in values:
            for item in items:
                kind = type(item)
                env = item.env if kind is Forward else item if kind is Envelope else None
                if env is None:
                    continue
                if customer:
                    stamps = trace.events.pop(env.seq, None)
                    if stamps is not None:
                        stamps.append(began)
                        trace.decisions[env.seq] = stamps
                else:
                    trace.events[env.seq] = [env.arrived, began]
        result = on_batch(self, values)
        ended = time.time()
        trace.pause("customer batch" if customer else "identity batch", began)
        if customer:
            for out in result[0]:
                for item in out:
                    if type(item) is Output and item.arrived and not item.timer:
                        stamps = trace.decisions.get(item.seq)
                        if stamps is not None and len(stamps) == 3:
                            stamps.append(ended)
        return result

    def traced_snapshot(self: Any) -> Any:
        began = time.time()
        if trace.round_began is None:
            trace.round_began = began
        try:
            return snapshot(self)
        finally:
            trace.pause(f"{'customer' if self.engine.sends_profiles else 'identity'} snapshot", began)

    snapshot = ShardLogic.snapshot
    ShardLogic.on_batch = traced_on_batch  # type: ignore[method-assign]
    ShardLogic.snapshot = traced_snapshot  # type: ignore[method-assign]

    produce = kafka._ProducerPartition._produce

    def traced_produce(self: Any, topic: str, output: Any, *args: Any, **kwargs: Any) -> None:
        stamps = trace.decisions.get(output.seq) if output.arrived and not output.timer else None
        if stamps is not None and len(stamps) == 4:
            stamps.append(time.time())
        produce(self, topic, output, *args, **kwargs)

    kafka._ProducerPartition._produce = traced_produce  # type: ignore[method-assign]

    confirmed = kafka._confirmed

    def traced_confirmed(output: Any, sent: float, message: Any) -> None:
        confirmed(output, sent, message)
        if not output.arrived or output.timer:
            return
        stamps = trace.decisions.pop(output.seq, None)
        if stamps is not None and len(stamps) == 5:
            with trace.lock:
                trace.rows.append([*stamps, sent + (message.latency() or time.time() - sent)])

    kafka._confirmed = traced_confirmed

    flush = kafka._ProducerPartition.snapshot

    def traced_flush(self: Any) -> None:
        began = time.time()
        try:
            return flush(self)
        finally:
            trace.pause("sink flush", began)

    kafka._ProducerPartition.snapshot = traced_flush  # type: ignore[method-assign]
    gc.callbacks.append(trace.on_gc)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the engine of this checkout
    trace = Trace(Path(sys.argv[1]))
    install(trace)
    threading.Thread(target=trace.keep_writing, daemon=True).start()
    from flows.cli import main as cli

    return cli(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
