"""A shard's items of one pass cross processes as one packed record and come back field for field."""

from __future__ import annotations

import pickle
import pickletools
from typing import Any

import msgspec
import orjson
import pytest
from conftest import added, call, envelopes, order, track

from operators import crossing
from operators.crossing import Crossing, unpack
from operators.engine import Forward
from operators.ordering import CatchUp, ChunkMark, Tick
from operators.parse import order_key
from schemas.envelope import Envelope
from schemas.items import Output
from state._native import CrossingPacker
from state.customer import CustomerState

_SENT = [name for name in Envelope.__struct_fields__ if name != "validated"]


def _fields(env: Envelope) -> list[tuple[type, Any]]:
    return [(type(getattr(env, name)), getattr(env, name)) for name in _SENT]


def _some_envelopes() -> list[Envelope]:
    events = [
        added("u1", 1, anon="a1"),
        order("u2", 2),
        added(None, 3, anon="a-ü"),  # anonymous, not ASCII
        call("identify", "u3", 4, traits={"email": "x@example.com"}),
        track("Product Viewed", "u1", 5, props={"product_id": "p9"}, context={"store_id": "s1"}),  # notes
    ]
    envs = envelopes(events)
    envs[0].seq = order_key(1_767_571_215_393, 3, 123_456)  # a merge key, beyond 64 bits
    envs[0].mark_ms, envs[0].arrived = 1_767_571_215_393, 1_767_571_216.25
    envs[1].position = {"topic": "nudgeflow.events", "partition": 5, "offset": 9_000_000_000}
    envs[1].received_ms = None
    return envs


def _crossed(items: list[Any]) -> list[Any]:
    back = pickle.loads(pickle.dumps(Crossing(items)))
    assert type(back) is Crossing
    return back


def test_a_shards_items_cross_processes_field_for_field_in_order():
    envs = _some_envelopes()
    assert envs[4].notes, "an event with unknown fields carries notes"
    items = [
        *envs,
        Forward(envs[2], "u9"),
        Forward(envs[0], "u1", CustomerState("a1", 5)),
        Output("dead_letters", "test.jsonl:7", 0, 42, b'{"reason":"invalid_json"}'),
        (Tick(1_767_571_215_393, 1 << 70, 3, shard=2, chunked=True), Tick(None, 0, 1)),
        CatchUp((Tick(5, 6, 0),)),
        ChunkMark(order_key(0, 0, 1000), None),
    ]

    back = _crossed(items)

    assert [type(item) for item in back] == [type(item) for item in items]
    for sent, got in zip(envs, back[: len(envs)], strict=True):
        assert _fields(got) == _fields(sent)
        assert got.validated is None, "the event is decoded again where it is read"
        assert msgspec.structs.asdict(got.event) == msgspec.structs.asdict(sent.event)
    forward, carrying = back[5], back[6]
    assert (forward.customer_id, forward.carried, _fields(forward.env)) == ("u9", None, _fields(envs[2]))
    assert carrying.customer_id == "u1" and carrying.carried.id == "a1"
    assert back[7:] == items[7:]


def test_a_shards_envelopes_cross_as_one_record_not_a_pickle_call_each():
    envs = envelopes([added(f"u{n}", n, anon=f"a{n}") for n in range(40)])
    items = [*envs, *(Forward(env, "u0") for env in envs)]

    opcodes = [op.name for op, _, _ in pickletools.genops(pickle.dumps(Crossing(items), pickle.HIGHEST_PROTOCOL))]

    assert opcodes.count("REDUCE") == 1, "one call rebuilds the whole list"
    assert [(_fields(env), env.event) for env in _crossed(items)[:40]] == [(_fields(env), env.event) for env in envs]


def test_a_crossing_is_the_list_it_holds():
    envs = envelopes([added("u1", 1)])
    crossing = Crossing()
    crossing += envs
    crossing.insert(0, CatchUp(()))
    assert crossing == [CatchUp(()), *envs] and isinstance(crossing, list)
    assert _crossed([]) == []


@pytest.mark.parametrize("record", [b"\x07", b"\x00\x01", b"\x02"], ids=["unknown item", "cut short", "missing other"])
def test_bytes_that_are_not_a_packed_record_are_refused_by_name(record):
    with pytest.raises(ValueError, match="not a record of items packed to cross processes"):
        unpack(record, [])


def test_an_envelope_of_an_unusual_shape_crosses_by_pickle():
    env = envelopes([added("u1", 1)])[0]
    env.position = {"source": "a.jsonl", "line": 1, "part": [1, 2]}  # a value the record does not hold
    env.seq = -1
    back = _crossed([env])[0]
    assert _fields(back) == _fields(env)
    assert orjson.loads(back.raw) == orjson.loads(env.raw)


def test_a_packer_for_an_envelope_of_other_fields_is_refused_at_start():
    class Other(msgspec.Struct):
        seq: int
        raw: bytes

    with pytest.raises(ValueError, match="the envelope's fields are"):
        CrossingPacker(Other, Forward, msgspec.structs.astuple)


class _CountingPacker:
    def __init__(self, packer: CrossingPacker) -> None:
        self.packer, self.packs = packer, 0

    def pack(self, items: list[Any]) -> tuple[bytes, list[Any]]:
        self.packs += 1
        return self.packer.pack(items)

    def unpack(self, record: bytes, others: list[Any]) -> list[Any]:
        return self.packer.unpack(record, others)


def test_items_pickled_twice_in_a_row_are_packed_once(monkeypatch):
    """The exchange pickles a message once to size it and once to write it: the second costs no packing."""
    counting = _CountingPacker(crossing._PACKER)
    monkeypatch.setattr(crossing, "_PACKER", counting)
    envs = envelopes([added("u1", 1), order("u2", 2)])
    items = Crossing(envs)

    first, second = pickle.dumps(items), pickle.dumps(items)

    assert first == second and counting.packs == 1
    items.append(Forward(envs[0], "u3"))
    assert [type(item) for item in pickle.loads(pickle.dumps(items))] == [Envelope, Envelope, Forward]
    assert counting.packs == 2, "a list that grew is packed again"
