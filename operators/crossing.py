"""What the router sends a shard in one pass, packed in one native call when it crosses processes.

Bytewax pickles an item only when it goes to a worker of another process. A :class:`Crossing` then
travels as one record of its envelopes' fields (``state/native/src/crossing.rs``): the raw bytes,
the merge key and what the stages decided (ids, marks, a forward's customer), with no event (it is
decoded again where it is read) and no pickle call, tuple or memo entry per field. Items the record
does not hold (outputs, ticks, a forward that carries state) are pickled as they are, in order.
"""

from __future__ import annotations

from typing import Any

import msgspec

from operators.engine import Forward
from schemas.envelope import Envelope
from state._native import CrossingPacker

_PACKER = CrossingPacker(Envelope, Forward, msgspec.structs.astuple)


class Crossing(list[Any]):
    """The items for one shard in one pass: a list, pickled as one packed record."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, tuple[bytes, list[Any]]]:
        return unpack, _PACKER.pack(self)


def unpack(record: bytes, others: list[Any]) -> Crossing:
    """A :class:`Crossing` back from its record and its items pickled apart."""
    return Crossing(_PACKER.unpack(record, others))
