"""Envelopes cross processes as their raw bytes and come back whole."""

from __future__ import annotations

import pickle

from conftest import added, envelopes, track


def test_an_envelope_survives_pickling_field_for_field():
    lines = [{"product_id": "a", "qty": 1}, {"price": 2.0}]
    events = [
        added("u1", 1, anon="a1"),
        track("Product Viewed", None, 2, anon="a2", props={"product_id": "p"}),
        track("Order Completed", "u1", 3, props={"order_id": "o", "products": lines}),
    ]
    for env in envelopes(events):
        env.seq, env.mark_ms, env.arrived = 12345678901234567890, env.ts_ms + 60_000, 1.5
        back = pickle.loads(pickle.dumps(env))
        assert back.validated is None, "validated again only where it is read"
        assert back.event == env.event
        assert {f: getattr(back, f) for f in env.__slots__} == {f: getattr(env, f) for f in env.__slots__}
        notes = sum(len(kind) + len(detail) + 10 for kind, detail, _ in env.notes)
        assert len(pickle.dumps(env)) < len(env.raw) + 200 + notes, "sent as its bytes, not as the validated model"


def test_an_envelope_held_back_by_an_earlier_version_loads_whole():
    """Snapshots of an earlier version hold back envelopes pickled as ``_rebuild(*fields)``."""
    from schemas.envelope import _AFTER_EVENT, _BEFORE_EVENT, _rebuild

    env = envelopes([added("u1", 1, anon="a1")])[0]

    class Earlier:
        def __reduce__(self):
            return _rebuild, (*_BEFORE_EVENT(env), *_AFTER_EVENT(env))

    back = pickle.loads(pickle.dumps(Earlier()))
    assert back.validated is None and back.event == env.event
    assert [getattr(back, f) for f in env.__struct_fields__ if f != "validated"] == [
        getattr(env, f) for f in env.__struct_fields__ if f != "validated"
    ]
