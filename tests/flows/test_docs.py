"""The contract's output examples are what the flow makes of its input examples."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from bytewax.testing import TestingSink, TestingSource, run_main
from conftest import source_records

from flows.personalization import build_flow
from flows.settings import Settings
from schemas.records import CloudEvent

CONTRACT = (Path(__file__).resolve().parents[2] / "docs" / "contract.md").read_text()


def test_decision_examples_are_real_outputs_of_the_input_examples(tmp_path):
    inputs, outputs = CONTRACT.split("## 2. Output", 1)
    events = sorted(
        (orjson.loads(b) for b in re.findall(r"```json\n(.*?)\n```", inputs, re.S)), key=lambda e: e["timestamp"]
    )
    captured: list = []
    run_main(
        build_flow(Settings(out=tmp_path), source=TestingSource(source_records(events)), sink=TestingSink(captured))
    )
    real = {orjson.loads(o.body)["id"]: orjson.loads(o.body) for s, o in captured if s.startswith(("trig", "aud"))}
    examples = [orjson.loads(b) for b in re.findall(r"```json\n(.*?)\n```", outputs, re.S)]
    decisions = [e for e in examples if e.get("specversion")]
    assert len(decisions) >= 3
    for example in decisions:
        CloudEvent.model_validate(example)
        if example["id"] in real:
            assert example == real[example["id"]], f"docs/contract.md example {example['id']} is stale"
    assert sum(e["id"] in real for e in decisions) >= 2
