"""Compact encoding of a customer's state for snapshots: plain tuples, pickled once.

Pickling the state objects directly looks up every class by name and stores every slot
by name; flattening to tuples of built-in values first makes a snapshot several times
cheaper and about half the size. The field order is part of the snapshot format
(``operators.engine.SNAPSHOT_FORMAT``): change it only together with that number.
"""

from __future__ import annotations

import pickle
from array import array
from typing import Any

from state.affinity import DecayedTopK
from state.customer import Cart, CustomerState, Session
from state.windows import WindowedCounts

_SCALARS = (
    "id",
    "first_seen_ms",
    "last_seen_ms",
    "last_event_id",
    "orders",
    "refunds",
    "lifetime_spend",
    "first_order_ms",
    "last_order_ms",
    "last_order_id",
    "order_gap_ms",
    "last_store",
    "last_city",
    "last_country",
    "traits",
    "consent",
    "audiences",
    "fired",
    "linked_ids",
    "outcomes",
    "offers_open",
    "bought",
)


def encode(state: CustomerState) -> bytes:
    """The state as bytes (see :func:`decode`)."""
    values = tuple(getattr(state, name) for name in _SCALARS)
    return pickle.dumps(
        (
            values,
            state.counts.buckets.tobytes(),
            (state.categories.ref_ms, state.categories.scores),
            (state.products.ref_ms, state.products.scores),
            _pack(state.session, SESSION_FIELDS),
            _pack(state.cart, CART_FIELDS),
            bytes(state.hours),
            state.timers,
        ),
        protocol=pickle.HIGHEST_PROTOCOL,
    )


def decode(blob: bytes) -> CustomerState:
    """A state written by :func:`encode`; its timers have no heap entry yet (``scheduled_ms``)."""
    values, counts, categories, products, session, cart, hours, timers = pickle.loads(blob)
    state = CustomerState.__new__(CustomerState)
    for name, value in zip(_SCALARS, values, strict=True):
        setattr(state, name, value)
    buckets = array("i")
    buckets.frombytes(counts)
    state.counts = WindowedCounts(buckets)
    state.categories = _topk(categories)
    state.products = _topk(products)
    state.session = _unpack(Session, session, SESSION_FIELDS)
    state.cart = _unpack(Cart, cart, CART_FIELDS)
    state.hours = bytearray(hours)
    state.timers, state.scheduled_ms = timers, None
    return state


SESSION_FIELDS = ("id", "started_ms", "last_ms", "pages", "products")  # the first two are Session's arguments
CART_FIELDS = ("id", "started_ms", "items", "value", "last_add_ms")  # the first two are Cart's arguments


def _pack(item: Session | Cart | None, fields: tuple[str, ...]) -> tuple | None:
    return None if item is None else tuple(getattr(item, name) for name in fields)


def _unpack(cls: type[Session] | type[Cart], values: tuple | None, fields: tuple[str, ...]) -> Any:
    if values is None:
        return None
    item = cls(values[0], values[1])
    for name, value in zip(fields[2:], values[2:], strict=True):
        setattr(item, name, value)
    return item


def _topk(values: tuple[Any, dict[str, float]]) -> DecayedTopK:
    topk = DecayedTopK()
    topk.ref_ms, topk.scores = values
    return topk
