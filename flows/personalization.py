"""The personalization dataflow: ``build_flow(settings)``, and ``flow`` for ``python -m bytewax.run``.

    python -m bytewax.run flows.personalization:flow

reads ``NUDGEFLOW_*`` settings (default: the bundled sample into ``out/run``).
"""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from connectors.files import JsonlSource, OutputFolderSink, prepare_output_folder
from flows.settings import Settings
from operators.customer_state import personalize
from operators.engine import Output
from operators.rules import CompiledRules, load_rules


def build_flow(settings: Settings, rules: CompiledRules | None = None, snapshots: bool = False) -> Dataflow:
    """Source -> parse/validate -> dedupe -> key by customer -> state + rules -> output files."""
    rules = rules or load_rules(settings.rules)
    prepare_output_folder(settings.out, replace=settings.replace_output)
    flow = Dataflow("nudgeflow")
    raw = op.input("events", flow, JsonlSource(settings.input, batch_size=settings.batch_size))
    outputs = personalize(
        "personalize", raw, rules, settings.engine_config(snapshots), settings.shards, settings.max_event_bytes
    )
    keyed = op.map("by_stream", outputs, _by_stream)
    op.output("files", keyed, OutputFolderSink(settings.out))
    return flow


def _by_stream(output: Output) -> tuple[str, Output]:
    return output.stream, output


def __getattr__(name: str) -> Any:
    if name == "flow":
        return build_flow(Settings.from_env())
    raise AttributeError(name)
