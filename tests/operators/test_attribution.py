"""Attribution: an order credited to the deliveries before it, within their channel's window."""

from __future__ import annotations

import orjson

from operators.attribution import Attributor, credits, read_touches, stamp, touched
from operators.decisions import DecisionWriter
from schemas.experiments import Attribution
from schemas.streams import ATTRIBUTIONS
from state.customer import MAX_TOUCHES, CustomerState, merge_touches

HOUR = 3_600_000
T0 = 1_767_571_200_000  # 2026-01-05T00:00Z
WINDOWS = Attribution().windows


def touch(at_ms: int, n: int, channel: str = "push", offer: str = "") -> tuple:
    """A delivery as read: decision ``n``'s id is ``n`` in 32 hex digits."""
    return (at_ms, f"{n:032x}", f"rule_{channel}", channel, offer)


def kept(*touches: tuple) -> tuple:
    """Deliveries as a customer's state keeps them."""
    return tuple(value for t in touches for value in (stamp(t[0], t[1]), *t[2:]))


def test_each_channel_has_its_own_window():
    touches = kept(touch(T0, 1, "email"), touch(T0 + 20 * HOUR, 2, "push"), touch(T0 + 25 * HOUR, 3, "in_app"))
    # at T0 + 27h: the email (7 d) and the push (24 h) count; the in-app message is 2 h old (1 h window)
    found = credits(touches, T0 + 27 * HOUR, WINDOWS)
    assert [(t, credit) for t, credit in found["last_touch"]] == [(touch(T0 + 20 * HOUR, 2, "push"), 1.0)]
    assert [(t[1][-1], credit) for t, credit in found["linear"]] == [("1", 0.5), ("2", 0.5)]
    assert credits(touches, T0 - 1, WINDOWS) == {}  # nothing was delivered before it


def test_touches_keep_the_newest_within_the_longest_window():
    touches: tuple = ()
    for n in range(12):
        touches = touched(touches, touch(T0 + n * HOUR, n), 7 * 24 * HOUR)
    assert read_touches(touches) == [touch(T0 + n * HOUR, n) for n in range(12 - MAX_TOUCHES, 12)]
    touches = touched(touches, touch(T0 + 30 * 24 * HOUR, 99), 7 * 24 * HOUR)
    assert read_touches(touches) == [touch(T0 + 30 * 24 * HOUR, 99)]  # the old ones are past every window


def test_a_linked_customer_keeps_the_touches_of_its_anonymous_state_in_time_order():
    own, carried = kept(touch(T0 + 2, 2)), kept(touch(T0 + 1, 1), touch(T0 + 3, 3))
    assert merge_touches(own, carried) == kept(touch(T0 + 1, 1), touch(T0 + 2, 2), touch(T0 + 3, 3))


def test_an_order_gives_one_record_per_model_and_credited_delivery():
    stats: dict = {}
    attributor = Attributor(Attribution(), DecisionWriter("v1", stats))
    state = CustomerState("c1", T0)
    first, second = "a" * 32, "b" * 32
    attributor.delivered(state, T0, first, "cart_push", "push", None)
    attributor.delivered(state, T0 + HOUR, second, "offer_email", "email", "ten_off")
    out: list = []
    attributor.ordered(state, T0 + 2 * HOUR, "o-1", 30.0, "m-order", out)
    records = [orjson.loads(item.body) for item in out]
    assert {item.stream for item in out} == {ATTRIBUTIONS}
    assert [
        (r["data"]["model"], r["data"]["decision_id"], r["data"]["credit"], r["data"]["revenue"]) for r in records
    ] == [
        ("last_touch", second, 1.0, 30.0),
        ("linear", first, 0.5, 15.0),
        ("linear", second, 0.5, 15.0),
    ]
    last = records[0]
    assert last["type"] == "io.nudgeflow.attribution.v1" and last["subject"] == "c1"
    assert last["time"] == "2026-01-05T02:00:00.000Z"
    assert last["data"]["offer_id"] == "ten_off" and last["data"]["order_id"] == "o-1"
    assert last["data"]["caused_by"] == ["m-order"] and last["data"]["delivered_at"] == "2026-01-05T01:00:00.000Z"
    assert len({r["id"] for r in records}) == 3
    assert stats["attributions"] == {"last_touch.offer_email": 1, "linear.cart_push": 1, "linear.offer_email": 1}
    assert stats["attributed_revenue_cents"]["linear.cart_push"] == 1500
    again: list = []
    attributor.ordered(state, T0 + 2 * HOUR, "o-1", 30.0, "m-order", again)
    assert [item.body for item in again] == [item.body for item in out]  # the same ids and bytes on a replay
