"""Compact encoding of a customer's state for snapshots: plain tuples, pickled once.

The features are the compiled record's own bytes (``state._native.Features.to_bytes``, names
spelt out, not the process's ids); the engine's bookkeeping is flattened to tuples of built-in
values, which pickles several times cheaper than the objects. The field order is part of the
snapshot format (``operators.engine.SNAPSHOT_FORMAT``): change it only together with that number.
"""

from __future__ import annotations

import pickle

from state._native import Features
from state.customer import CustomerState

_SCALARS = ("id", "audiences", "fired", "linked_ids", "outcomes", "offers_open")


def encode(state: CustomerState) -> bytes:
    """The state as bytes (see :func:`decode`)."""
    values = tuple(getattr(state, name) for name in _SCALARS)
    return pickle.dumps(
        (
            values,
            state.features.to_bytes(),
            state.timers,
        ),
        protocol=pickle.HIGHEST_PROTOCOL,
    )


def decode(blob: bytes) -> CustomerState:
    """A state written by :func:`encode`; its timers have no heap entry yet (``scheduled_ms``)."""
    values, features, timers = pickle.loads(blob)
    state = CustomerState.__new__(CustomerState)
    for name, value in zip(_SCALARS, values, strict=True):
        setattr(state, name, value)
    state.features = Features.from_bytes(features)
    state.timers, state.scheduled_ms = timers, None
    return state
