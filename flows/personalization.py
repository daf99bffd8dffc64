"""The personalization dataflow: ``build_flow(settings)``, and ``flow`` for ``python -m bytewax.run``.

    python -m bytewax.run flows.personalization:flow

reads ``NUDGEFLOW_*`` settings (default: the bundled sample into ``out/run``).
"""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from connectors.files import JsonlSource, OutputFolderSink, prepare_output_folder
from flows.runtime import tune_gc
from flows.settings import Settings
from operators.customer_state import personalize
from operators.engine import Output
from operators.parse import EndOfInput, RawEvent
from operators.rules import CompiledRules, load_rules


def build_flow(
    settings: Settings,
    rules: CompiledRules | None = None,
    snapshots: bool = False,
    source: Source[RawEvent | EndOfInput] | None = None,
    sink: Sink[tuple[str, Output]] | None = None,
    source_partitions: int = 1,
) -> Dataflow:
    """Source -> parse/validate -> dedupe -> key by customer -> state + rules -> output files.

    The source defaults to the JSONL recordings in ``settings.input``; the output folder
    ``settings.out`` is created empty (a non-empty one is refused unless ``replace_output``);
    a given ``sink`` receives ``(stream, Output)`` pairs instead. ``source_partitions`` is the
    number of partitions a given ``source`` has.
    """
    rules = rules or load_rules(settings.rules)
    if sink is None:
        prepare_output_folder(settings.out, replace=settings.replace_output)
        sink = OutputFolderSink(settings.out)
    flow = Dataflow("nudgeflow")
    source = source or JsonlSource(settings.input, batch_size=settings.batch_size)
    raw = op.input("events", flow, source)
    outputs = personalize(
        "personalize", raw, rules, settings.engine_config(snapshots, source_partitions), settings.shards, settings.max_event_bytes
    )
    op.output("outputs", outputs, sink)
    return flow


def __getattr__(name: str) -> Any:
    if name == "flow":
        tune_gc()
        return build_flow(Settings.from_env())
    raise AttributeError(name)
