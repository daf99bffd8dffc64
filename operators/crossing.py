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
    """The items for one shard in one pass: a list, pickled as one packed record.

    Bytewax pickles what goes to another process twice in a row, once to size the message and once
    to write it: the record made the first time is kept for the second (made again if the list
    has changed length since).
    """

    __slots__ = ("_packed",)

    def __reduce__(self) -> tuple[Any, tuple[bytes, list[Any]]]:
        packed: tuple[int, tuple[bytes, list[Any]]] | None = getattr(self, "_packed", None)
        if packed is None or packed[0] != len(self):
            packed = self._packed = (len(self), _PACKER.pack(self))
        return unpack, packed[1]


def unpack(record: bytes, others: list[Any]) -> Crossing:
    """A :class:`Crossing` back from its record and its items pickled apart."""
    return Crossing(_PACKER.unpack(record, others))
