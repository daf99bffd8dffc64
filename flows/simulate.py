"""A generated stream whose customers answer the engine's decisions: the known truth to measure against.

The baseline stream (:func:`connectors.synthetic.generate_events`) does not depend on what the
engine sends; the responses do (:class:`connectors.responders.Responders`). :class:`ClosedLoop`
feeds the engine (:class:`operators.pipeline.Pipeline`, all shards in this process) a batch at a
time in event time, reads the triggers each batch delivers, and merges the responses they draw
into the rest of the stream, at their time. The recording is every line in the order it was fed,
so replaying it gives the same decisions (a replay's batches do not change them).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from connectors.responders import Responders
from connectors.synthetic import DEFAULT_START, generate_events
from operators.engine import EngineConfig
from operators.pipeline import Pipeline
from operators.rules import CompiledRules
from schemas.items import Output, RawEvent
from schemas.streams import TRIGGER_STREAMS
from schemas.timestamps import epoch_ms

BATCH = 20  # lines per batch fed: the loop reads triggers between batches (few, so answers are seldom late)
SHARDS = 16  # as the flow's default (NUDGEFLOW_SHARDS): each shard has its own models
_LINE = orjson.OPT_SORT_KEYS  # as ``nudgeflow generate`` writes events


@dataclass
class Simulation:
    """A closed-loop run: the recording, the decisions it gave, and the truth."""

    lines: list[bytes]  # the recording, one JSON event per line (no newline)
    outputs: list[Output]  # everything the engine emitted, in the order it did
    truth: dict[str, Any]

    def decisions(self, streams: Iterable[str] = TRIGGER_STREAMS) -> dict[str, list[bytes]]:
        """The records of ``streams``, each stream's sorted (a replay writes them in its own order)."""
        wanted = set(streams)
        found: dict[str, list[bytes]] = {name: [] for name in sorted(wanted)}
        for output in self.outputs:
            if output.stream in wanted:
                found[output.stream].append(output.body)
        return {name: sorted(bodies) for name, bodies in found.items()}

    def records(self) -> list[tuple[str, bytes]]:
        """Every output as ``(stream, body)``, in the order the engine emitted them."""
        return [(output.stream, output.body) for output in self.outputs]

    def recording(self) -> bytes:
        return b"".join(line + b"\n" for line in self.lines)


class ClosedLoop:
    """Feeds a pipeline in event time, answering each delivered trigger as the responders do."""

    def __init__(self, pipeline: Pipeline, responders: Responders, batch: int | None = None) -> None:
        self.pipeline, self.responders, self.batch_size = pipeline, responders, batch or BATCH
        self.responses: list[tuple[int, str, bytes]] = []  # (event time ms, messageId, line) not fed yet
        self.fed_ms = 0  # the latest event time fed
        self.lines: list[bytes] = []
        self.outputs: list[Output] = []
        self._batch: list[RawEvent] = []

    def run(self, events: Iterable[dict[str, Any]]) -> None:
        """Feed ``events`` (in time order) with the responses merged in, then end the input."""
        for event in events:
            at_ms = epoch_ms(event["timestamp"])
            self._responses_until(at_ms, event["messageId"])
            self._add(orjson.dumps(event, option=_LINE), at_ms)
        while self.responses or self._batch:
            self._responses_until(None)
            self._feed()
        self._read(self.pipeline.finish(), None)

    def _responses_until(self, at_ms: int | None, message_id: str = "") -> None:
        """Feed the responses that come before ``(at_ms, message_id)`` (all of them: ``None``)."""
        responses = self.responses
        while responses and (at_ms is None or responses[0][:2] < (at_ms, message_id)):
            at, _, line = heapq.heappop(responses)
            self._add(line, at)

    def _add(self, line: bytes, at_ms: int) -> None:
        self.lines.append(line)
        self.fed_ms = max(self.fed_ms, at_ms)
        seq = len(self.lines)
        self._batch.append(RawEvent(seq, {"line": seq}, line))
        if len(self._batch) >= self.batch_size:
            self._feed()

    def _feed(self) -> None:
        batch, self._batch = self._batch, []
        self._read(self.pipeline.feed(batch), self.fed_ms)

    def _read(self, outputs: list[Output], earliest_ms: int | None) -> None:
        """Keep the outputs; draw a response to each delivered trigger, not before ``earliest_ms``
        (``None``: the input has ended, nothing more can be answered)."""
        self.outputs += outputs
        delivered = [output for output in outputs if output.stream in TRIGGER_STREAMS]
        for output in sorted(delivered, key=Output.sort_key):  # in time order over the shards
            self._deliver(output, earliest_ms)

    def _deliver(self, output: Output, earliest_ms: int | None) -> None:
        data = orjson.loads(output.body)
        decision_id, rule_id, channel = data["id"], data["data"]["rule_id"], data["data"]["channel"]
        earliest = earliest_ms if earliest_ms is not None else 1 << 62
        response = self.responders.deliver(output.key, channel, decision_id, rule_id, output.time_ms, earliest)
        if response is not None:
            at_ms = epoch_ms(response["timestamp"])
            heapq.heappush(self.responses, (at_ms, response["messageId"], orjson.dumps(response, option=_LINE)))


def simulate(
    customers: int,
    days: int,
    seed: int,
    rules: CompiledRules,
    config: EngineConfig | None = None,
    shards: int = SHARDS,
    start: datetime = DEFAULT_START,
    responders: Responders | None = None,
) -> Simulation:
    """Generate ``customers`` for ``days`` and run them against ``rules`` in a closed loop (the
    customers of ``responders``, by default the generator's: see :mod:`connectors.responders`)."""
    responders = responders or Responders(customers, days, seed)
    loop = ClosedLoop(Pipeline(rules, config or EngineConfig(), shards=shards), responders)
    loop.run(generate_events(customers, days, seed, start))
    return Simulation(loop.lines, loop.outputs, responders.truth())
