"""Compact encoding of a customer's state for snapshots: plain tuples, pickled once.

The features and the bookkeeping (timers, rules fired, open decisions and offers) are the compiled
records' own bytes (``to_bytes``: names spelt out, not the process's ids); the rest is tuples of
built-in values, which pickle several times cheaper than the objects. The field order is part of the
snapshot format (``operators.engine.SNAPSHOT_FORMAT``): change it only together with that number.
"""

from __future__ import annotations

import pickle
import sys

from state._native import Bookkeeping, Features
from state.customer import CustomerState, shared_audiences

_SCALARS = (
    "id", "audiences", "linked_ids", "timezone", "contacts", "redemptions", "exposures", "touches", "match_keys",
)  # fmt: skip


def encode(state: CustomerState) -> bytes:
    """The state as bytes (see :func:`decode`)."""
    values = tuple(getattr(state, name) for name in _SCALARS)
    return pickle.dumps(
        (values, state.features.to_bytes(), state.book.to_bytes()),
        protocol=pickle.HIGHEST_PROTOCOL,
    )


def decode(blob: bytes) -> CustomerState:
    """A state written by :func:`encode`; its timers have no heap entry yet (``scheduled_ms``)."""
    values, features, book = pickle.loads(blob)
    state = CustomerState.__new__(CustomerState)
    for name, value in zip(_SCALARS, values, strict=True):
        setattr(state, name, value)
    state.audiences = shared_audiences(state.audiences)
    if state.timezone is not None:  # one string per zone, shared by its customers
        state.timezone = sys.intern(state.timezone)
    state.features = Features.from_bytes(features)
    state.book, state.scheduled_ms = Bookkeeping.from_bytes(book), None
    return state
