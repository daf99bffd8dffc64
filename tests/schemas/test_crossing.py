"""Items that cross processes (outputs, forwarded events, ticks) come back whole, rebuilt by one
call of their class rather than slot by slot."""

from __future__ import annotations

import pickle
import pickletools
from dataclasses import fields
from typing import Any

import pytest
from conftest import added, envelopes

from operators.engine import Forward
from operators.ordering import Tick
from schemas.items import Output


def _items() -> list[Any]:
    env = envelopes([added("u1", 1, anon="a1")])[0]
    return [
        Output("triggers", "u1", 1_767_571_215_393, 42, b'{"id":"x"}', arrived=1.5, timer=True),
        Tick(1_767_571_215_393, 1 << 40, 3, idle=True, shard=7, chunked=True),
        Tick(None, 0, 0),
        Forward(env, "u1"),
    ]


@pytest.mark.parametrize("item", _items(), ids=lambda item: type(item).__name__)
def test_an_item_that_crosses_processes_comes_back_field_for_field(item):
    back = pickle.loads(pickle.dumps(item))
    assert type(back) is type(item)
    for f in fields(item):
        if f.name == "env":
            assert back.env.raw == item.env.raw and back.env.seq == item.env.seq
        else:
            assert getattr(back, f.name) == getattr(item, f.name), f.name
    opcodes = {op.name for op, _, _ in pickletools.genops(pickle.dumps(item, pickle.HIGHEST_PROTOCOL))}
    assert "BUILD" not in opcodes, "rebuilt by one call of its class, not slot by slot"
