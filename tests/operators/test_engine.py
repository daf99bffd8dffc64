"""Event-time semantics of the shard engine: timers, late and future events, identity, audiences."""

from __future__ import annotations

import base64
from dataclasses import replace

import orjson
import pytest
from conftest import CART_RULE, EngineHarness, added, at, call, decisions, envelopes, order, rules_from, track

from operators.engine import EngineConfig
from operators.expressions import Expression
from operators.ordering import OrderedRelease
from operators.rules import CompiledRules
from schemas.errors import RecoveryStoreError
from state import codec
from state.affinity import DAY_MS

CART_ONLY = CART_RULE + '    when: "cart.value > 0"\n'


def cart_triggers(outputs):
    return [d for d in decisions(outputs, "triggers.") if d["data"]["rule_id"] == "cart"]


def test_quiet_customer_gets_abandonment_when_other_events_move_the_clock():
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed([added("u1", 0)])
    # u1 says nothing more; u2's events move the shard clock past u1's due time (+ lateness)
    assert cart_triggers(h.feed([track("Product Viewed", "u2", 20, props={"product_id": "x"})])) == []
    fired = cart_triggers(h.feed([track("Product Viewed", "u2", 36, props={"product_id": "x"})]))
    assert [d["subject"] for d in fired] == ["u1"]
    assert fired[0]["time"] == at(30).replace("Z", ".000Z")
    assert fired[0]["data"]["reason"].startswith("30m after Product Added with no Order Completed")


def test_no_timer_fires_past_the_end_of_input():
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed([added("u1", 0), track("Product Viewed", "u2", 33, props={"product_id": "x"})])
    # the clock stops at 33 - 5 min lateness = 28 min: the 30 min timer is not due
    assert cart_triggers(h.outputs) == []


def test_each_add_rearms_and_the_trigger_fires_once_per_cart():
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed([added("u1", 0, "p1"), added("u1", 20, "p2"), added("u1", 45, "p3")])
    assert cart_triggers(h.outputs) == [], "re-armed by each add: not due before 75 min"
    h.feed([track("Product Viewed", "u2", 90, props={"product_id": "x"})])
    fired = cart_triggers(h.outputs)
    assert len(fired) == 1
    assert fired[0]["time"].startswith(at(75)[:16])
    assert len(fired[0]["data"]["caused_by"]) == 3
    # more adds to the same cart and more time: still only once for this cart
    h.feed([added("u1", 100, "p4"), track("Product Viewed", "u2", 200, props={"product_id": "x"})])
    assert len(cart_triggers(h.outputs)) == 1


def test_an_order_cancels_the_timer_and_a_new_cart_fires_again():
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed([added("u1", 0), order("u1", 10), track("Product Viewed", "u2", 60, props={"product_id": "x"})])
    assert cart_triggers(h.outputs) == []
    h.feed([added("u1", 70, "p9"), track("Product Viewed", "u2", 120, props={"product_id": "x"})])
    fired = cart_triggers(h.outputs)
    assert len(fired) == 1 and fired[0]["subject"] == "u1"


def test_own_late_event_fires_the_due_timer_first():
    """A timer fires before any later event of its customer is applied, even if the clock lags."""
    h = EngineHarness(rules_from(CART_ONLY))
    out = h.feed([added("u1", 0), order("u1", 32)])
    assert len(cart_triggers(out)) == 1, "due at 30, the order at 32 comes after it"


def test_trigger_id_is_deterministic_and_names_rule_and_version():
    runs = []
    for _ in range(2):
        h = EngineHarness(rules_from(CART_ONLY))
        h.feed([added("u1", 0, message_id="a1"), track("Page", "u2", 40, message_id="b1")])
        runs.append(cart_triggers(h.outputs))
    assert runs[0] == runs[1] and len(runs[0]) == 1
    data = runs[0][0]["data"]
    assert (data["rule_id"], data["ruleset_version"]) == ("cart", "v")
    assert runs[0][0]["specversion"] == "1.0" and runs[0][0]["type"] == "io.nudgeflow.trigger.v1"


def test_late_event_is_applied_counted_and_fires_no_past_timer():
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed([order("u1", 0, total=10.0), track("Page", "u2", 120)])
    # an order from 100 minutes ago arrives late: it counts for spend, a late add arms nothing
    h.feed([order("u1", 20, total=30.0), added("u1", 21)])
    assert h.customers.stats["late"] == 2
    state = h.customers.customers["u1"]
    assert state.lifetime_spend == 40.0 and state.orders == 2
    h.feed([track("Page", "u2", 300)])
    assert cart_triggers(h.outputs) == []


def test_future_dated_event_is_dead_lettered_with_reason():
    h = EngineHarness(rules_from(CART_ONLY))
    event = added("u1", 180, receivedAt=at(0))
    dead = decisions(h.feed([event]), "dead_letters")
    assert len(dead) == 1
    assert dead[0]["reason"] == "future_dated"
    assert "u1" not in h.customers.customers


def test_duplicates_are_ignored():
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed([order("u1", 0, message_id="dup"), order("u1", 1, message_id="dup")])
    assert h.customers.customers["u1"].orders == 1
    assert h.identity.stats["duplicates"] == 1


def test_dedupe_memory_is_bounded():
    h = EngineHarness(rules_from(CART_ONLY), EngineConfig(dedupe_per_shard=100))
    h.feed([track("Page", "u1", i / 10) for i in range(500)])
    assert len(h.identity.seen) == 100


def test_dedupe_memory_survives_a_snapshot_and_restore():
    config = EngineConfig(snapshots=True, dedupe_per_shard=2)
    h = EngineHarness(rules_from(CART_ONLY), config)
    h.feed([order("u1", i, message_id=f"m{i}") for i in range(3)])
    restored = EngineHarness(rules_from(CART_ONLY), config)
    restored.identity.restore(h.identity.snapshot())
    restored.feed([order("u1", 3, message_id=message_id) for message_id in ("m1", "m2", "m0")])
    assert restored.identity.stats["duplicates"] == 2, "m1 and m2 were remembered; m0, the oldest, was not"
    assert len(restored.identity.seen) == 2


def test_anonymous_cart_ordered_after_login_fires_no_abandonment():
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed(
        [
            added(None, 0, anon="anon-1"),
            call("identify", "u1", 5, anon="anon-1", traits={"city": "Lyon"}),
            order("u1", 12),  # POS-style: userId only
            track("Page", "u2", 120),
            track("Page", None, 130, anon="anon-9"),
        ]
    )
    assert cart_triggers(h.outputs) == []
    state = h.customers.customers["u1"]
    assert state.orders == 1 and state.traits["city"] == "Lyon" and "anon-1" in state.linked_ids


def test_anonymous_cart_without_login_still_fires_for_the_anonymous_id():
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed([added(None, 0, anon="anon-2"), track("Page", None, 50, anon="anon-3")])
    assert [d["subject"] for d in cart_triggers(h.outputs)] == ["anon-2"]


def test_events_with_either_id_update_the_same_customer_after_linking():
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed(
        [
            call("alias", "u7", 0, previousId="anon-7"),
            order(None, 1, anon="anon-7", total=10.0),
            order("u7", 2, total=5.0),
        ]
    )
    assert h.customers.customers["u7"].lifetime_spend == 15.0
    assert "anon-7" not in h.identity.customers


AUDIENCES = """
version: a1
audiences:
  - id: big
    when: "lifetime_spend >= 100"
  - id: lapsed
    when: "lifecycle == 'lapsed'"
  - id: quiet_big
    shadow: true
    when: "lifetime_spend >= 140"
"""


def test_audience_changes_only_on_membership_change_with_reason():
    h = EngineHarness(rules_from(AUDIENCES))
    h.feed([order("u1", 0, total=60.0), order("u1", 10, total=60.0), order("u1", 20, total=5.0)])
    changes = [d for d in decisions(h.outputs, "audience_changes") if d["data"]["audience"] == "big"]
    assert len(changes) == 1
    data = changes[0]["data"]
    assert data["change"] == "entered"
    assert data["reason"] == "lifetime_spend >= 100 became true (lifetime_spend=120.0)"
    h.feed([track("Order Refunded", "u1", 30, props={"order_id": "o", "total": 100.0})])
    changes = [d for d in decisions(h.outputs, "audience_changes") if d["data"]["audience"] == "big"]
    assert [d["data"]["change"] for d in changes] == ["entered", "exited"]


def test_lapsed_audience_entered_in_event_time_for_a_quiet_customer():
    h = EngineHarness(rules_from(AUDIENCES))
    h.feed([order("u1", 0, days=0)])
    h.feed([track("Page", "u2", 0, days=40), track("Page", "u2", 0, days=95)])
    lapsed = [d for d in decisions(h.outputs, "audience_changes") if d["data"]["audience"] == "lapsed"]
    assert [(d["subject"], d["data"]["change"]) for d in lapsed] == [("u1", "entered")]
    assert lapsed[0]["time"].startswith(at(days=60)[:10])
    h.feed([order("u1", 0, days=96)])
    lapsed = [d for d in decisions(h.outputs, "audience_changes") if d["data"]["audience"] == "lapsed"]
    assert [d["data"]["change"] for d in lapsed if d["subject"] == "u1"] == ["entered", "exited"]


def test_shadow_rules_are_recorded_apart():
    h = EngineHarness(rules_from(AUDIENCES))
    h.feed([order("u1", 0, total=150.0), track("Page", "u1", 0, days=2)])
    shadow = decisions(h.outputs, "audience_changes.shadow")
    assert [d["data"]["audience"] for d in shadow] == ["quiet_big"]
    assert shadow[0]["data"]["shadow"] is True
    live = [o for o in h.outputs if o.stream == "audience_changes"]
    assert all(b"quiet_big" not in o.body for o in live)


def test_erasure_removes_the_customer_and_exits_audiences():
    h = EngineHarness(rules_from(AUDIENCES))
    h.feed([order("u1", 0, total=150.0)])
    out = h.feed([track("Erasure Requested", "u1", 5, props={"request_id": "r-1"})])
    assert "u1" not in h.customers.customers
    exits = decisions(out, "audience_changes")
    assert [(d["data"]["audience"], d["data"]["change"]) for d in exits] == [("big", "exited"), ("quiet_big", "exited")]
    assert "erasure requested (r-1)" in exits[0]["data"]["reason"]


def test_state_expires_only_after_long_inactivity():
    config = EngineConfig(state_ttl_ms=400 * 86_400_000)
    h = EngineHarness(rules_from(AUDIENCES), config)
    h.feed([order("u1", 0)])
    h.feed([track("Page", "u2", 0, days=300)])
    assert "u1" in h.customers.customers, "lapsed customers stay known"
    h.feed([track("Page", "u2", 0, days=401)])
    assert "u1" not in h.customers.customers


def test_snapshot_round_trip_restores_customers_and_timers():
    rules = rules_from(CART_ONLY)
    config = EngineConfig(snapshots=True)
    h = EngineHarness(rules, config)
    h.feed([added("u1", 0), track("Page", "u2", 5)])
    snapshot = h.customers.snapshot()
    restored = EngineHarness(rules, config)
    restored.customers.restore(snapshot)
    assert restored.customers.customers["u1"].features.cart_value == 20.0
    out = restored.feed([track("Page", "u2", 40)])
    assert [d["subject"] for d in cart_triggers(out)] == ["u1"]


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 99])
def test_snapshots_of_other_formats_are_refused_clearly(version):
    """Format 1 held pending items in another layout; format 2 pickled customer objects; format 4's
    held-back envelopes had no contract notes; format 5 held every customer in the snapshot, and message ids
    themselves in its dedupe memory; format 6 kept the two stages' shards under different Bytewax keys and
    wrote its customer store before the snapshot completed; format 7 encoded features as Python objects, held
    the recommender and the dedupe memory whole, not in the customer store, a customer's timers as a dict of
    lists and its open decisions as tuples of floats; format 8 pickled a customer's timers, decisions fired and
    open offers as tuples; format 10 had no contact policy, offers redeemed, experiment or attribution slots; format
    11 no match keys."""
    h = EngineHarness(rules_from(CART_ONLY), EngineConfig(snapshots=True))
    with pytest.raises(ValueError, match=f"format {version} is not supported: this version reads format 12"):
        h.customers.restore((version, {}))


def test_a_new_customer_is_checked_against_every_audience():
    h = EngineHarness(rules_from("version: v\naudiences:\n  - id: prospects\n    when: 'orders == 0'\n"))
    h.feed([track("Product Viewed", "u1", 0, props={"product_id": "p"})])
    changes = decisions(h.outputs, "audience_changes")
    assert [(d["subject"], d["data"]["audience"], d["data"]["change"]) for d in changes] == [
        ("u1", "prospects", "entered")
    ]


def test_customers_in_the_same_audiences_share_one_set_of_them():
    """Audiences cost each customer a reference, not a tuple of their own, also after a restore."""
    audiences = "version: v\naudiences:\n  - id: prospects\n    when: 'orders == 0'\n  - id: all\n    when: 'true'\n"
    h = EngineHarness(rules_from(audiences))
    h.feed([track("Product Viewed", customer, 0, props={"product_id": "p"}) for customer in ("u1", "u2")])
    first, second = (h.customers.customers[customer] for customer in ("u1", "u2"))
    restored = codec.decode(codec.encode(second))

    assert first.audiences == ("all", "prospects")
    assert second.audiences is first.audiences and restored.audiences is first.audiences


def test_triggers_do_not_see_shadow_audiences():
    rules = rules_from(
        """
version: v
triggers:
  - id: vip_welcome
    channel: push
    on: Signed Up
    when: "'vip' in audiences"
audiences:
  - id: vip
    shadow: true
    when: "orders >= 1"
"""
    )
    h = EngineHarness(rules)
    h.feed([order("u1", 0), track("Signed Up", "u1", 1)])
    assert decisions(h.outputs, "audience_changes.shadow"), "the shadow audience is evaluated and recorded"
    assert decisions(h.outputs, "triggers.") == [], "but a live trigger cannot act on it"


def test_items_held_back_are_released_in_key_order_whatever_order_they_arrive_in():
    """Several upstreams deliver interleaved runs; each release applies exactly the items up to
    the slowest upstream's tick, in merge-key order (only newcomers are sorted in)."""
    import random

    from operators.ordering import Tick

    rng = random.Random(3)
    ordered = OrderedRelease(3, _key)
    applied: list[int] = []
    envs = envelopes([added(f"u{n}", n) for n in range(600)])
    streams = [envs[origin::3] for origin in range(3)]  # each upstream's own items, in key order
    sent = [0, 0, 0]
    while any(sent[o] < len(streams[o]) for o in range(3)):
        batch = []
        for _ in range(rng.randint(1, 6)):
            origin = rng.randrange(3)
            take = streams[origin][sent[origin] : sent[origin] + rng.randint(0, 5)]
            sent[origin] += len(take)
            batch += take
            if take:
                batch.append(Tick(take[-1].mark_ms, take[-1].seq, origin))
        before = len(applied)
        release(ordered, batch, applied)
        ticks = ordered.ticks
        if len(ticks) == 3:
            upto = min(t.seq for t in ticks.values())
            assert all(seq <= upto for seq in applied[before:])
            assert all(_key(item) > upto for item in ordered.pending)
    release(ordered, [Tick(None, 10**18, origin, idle=True) for origin in range(3)], applied)
    assert applied == sorted(env.seq for env in envs)


def release(ordered: OrderedRelease, batch: list[object], applied: list[int]) -> None:
    """What a stage does with a batch: note the ticks, hold the items back, apply what is released."""
    from operators.ordering import Tick

    for item in batch:
        if isinstance(item, Tick):
            ordered.ticks[item.origin] = item
        else:
            ordered.pending.append(item)
    progress = ordered.progress()
    if progress is not None:
        applied += [_key(item) for item in ordered.release(progress[0])]


def _key(item: object) -> int:
    return item.seq  # type: ignore[attr-defined]


def test_a_till_basket_with_free_voided_and_returned_lines_is_an_order():
    """Quantity 0 is bought and adds nothing; a returned item is not bought and nets the spend."""
    lines = [
        {"product_id": "milk", "category": "dairy", "price": 1.5, "quantity": 4},
        {"product_id": "bag", "category": "misc", "price": 0.0, "quantity": 1},
        {"product_id": "bananas", "category": "fruit", "price": 2.0, "quantity": 0},
        {"product_id": "eggs", "category": "eggs", "price": 3.0, "quantity": -1},
        {"category": "no id", "price": 9.0},
    ]
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed([track("Order Completed", "u1", 0, props={"order_id": "o1", "products": lines})])
    state = h.customers.customers["u1"]
    assert state.orders == 1 and state.lifetime_spend == 3.0
    assert state.bought == ("milk", "bag", "bananas")
    assert sorted(state.features.top_products()) == ["bag", "bananas", "milk"]
    assert "eggs" not in state.features.top_categories()
    assert h.customers.stats["order_lines_dropped"] == {"missing_product_id": 1}
    returned = [{"product_id": "eggs", "price": 3.0, "quantity": -2}]
    h.feed([track("Order Refunded", "u1", 1, props={"order_id": "o1", "products": returned})])
    assert state.lifetime_spend == 0.0, "a refund's negative lines refund their value"
    h.feed([track("Order Completed", "u1", 2, props={"order_id": "o2", "products": returned})])
    assert state.orders == 2 and state.lifetime_spend == 0.0, "a basket of returns adds no negative spend"


UNSET_CLOCK = "1970-01-01T00:00:00Z"  # a device clock that was never set


def viewed(user: str, minutes: float = 0, product: str = "p1", **kw) -> dict:
    return track("Product Viewed", user, minutes, props={"product_id": product, "category": "shoes"}, **kw)


def test_an_event_far_older_than_the_clock_is_dead_lettered_too_old_and_the_flow_goes_on():
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed([viewed("u1", 0), track("Page", "u1", 10)])
    dead = decisions(h.feed([viewed("u1", 11, "p-old", timestamp=UNSET_CLOCK)]), "dead_letters")
    assert [d["reason"] for d in dead] == ["too_old"]
    assert dead[0]["processor"] == "nudgeflow.state"
    assert "days before the event time already reached" in dead[0]["messages"][0]
    h.feed([viewed("u1", 12, "p2")])
    state = h.customers.customers["u1"]
    assert state.first_seen_ms == envelopes([viewed("u1", 0)])[0].ts_ms, "the old event changed nothing"
    assert "p-old" not in state.features.product_scores and "p2" in state.features.product_scores
    assert h.identity.stats["too_old"] == 1


def test_a_late_event_within_the_age_limit_is_still_applied():
    h = EngineHarness(rules_from(CART_ONLY))
    h.feed([viewed("u1", days=300), viewed("u1", days=0.5, product="p-late")])
    assert not decisions(h.outputs, "dead_letters")
    assert h.customers.stats["late"] == 1
    assert "p-late" in h.customers.customers["u1"].features.product_scores


def test_the_age_limit_is_a_setting_and_a_corrected_resend_is_accepted():
    h = EngineHarness(rules_from(CART_ONLY), EngineConfig(max_age_ms=2 * DAY_MS))
    h.feed([viewed("u1", days=3)])
    dead = decisions(h.feed([viewed("u1", 0, "p-old", message_id="m-fix")]), "dead_letters")
    assert [d["reason"] for d in dead] == ["too_old"]
    assert not decisions(h.feed([viewed("u1", days=2.5, product="p-old", message_id="m-fix")]), "dead_letters")
    assert "p-old" in h.customers.customers["u1"].features.product_scores, (
        "the resend with a corrected time was applied"
    )


# --- failures while processing: dead-lettered, undone, and the flow goes on ------------------
FAILING_RULES = """
version: v
triggers:
  - id: added_now
    channel: push
    on: Product Added
    when: "cart.value > 0"
  - id: cart
    channel: push
    on: Product Added
    after: 30m
    unless: [Order Completed]
    once_per: cart
    when: "cart.value > 0"
audiences:
  - id: carters
    when: "cart.value > 0"
"""


def raising_when(source: str, fails) -> Expression:
    """A compiled condition that raises (as a rule can at run time) when ``fails(view)``; else true."""

    def evaluate(view):
        if fails(view):
            raise RuntimeError("condition blew up")
        return True

    return Expression(source, frozenset(), evaluate)


def with_failing(rules_text: str, rule_id: str, fails) -> CompiledRules:
    """The rules with ``rule_id``'s condition replaced by one that raises when ``fails(view)``."""
    rules = rules_from(rules_text)
    triggers = [replace(t, when=raising_when(t.when.source, fails)) if t.id == rule_id else t for t in rules.triggers]
    audiences = [replace(a, when=raising_when(a.when.source, fails)) if a.id == rule_id else a for a in rules.audiences]
    return CompiledRules(rules.version, rules.source, triggers, audiences)


def holds(view, product: str) -> bool:
    return product in view.state.features.cart_lines


@pytest.mark.parametrize("rule_id", ["added_now", "carters"])
@pytest.mark.parametrize("ids", [{"user": "u1"}, {"user": None, "anon": "a1"}], ids=["customer", "anonymous"])
def test_an_event_whose_rule_raises_is_dead_lettered_and_the_customer_left_as_before(rule_id, ids):
    h = EngineHarness(with_failing(FAILING_RULES, rule_id, lambda view: holds(view, "boom")))
    user, anon = ids["user"], ids.get("anon")
    customer = user or anon
    h.feed([track("Page", user, 0, anon=anon), added(user, 1, "p1", anon=anon)])
    engine = h.customers if user else h.identity
    before = codec.encode(engine.customers[customer])
    stats_before = {k: v for k, v in engine.stats.items() if k in ("triggers", "audience_changes", "events")}
    failed = h.feed([added(user, 2, "boom", anon=anon, message_id="m-boom")])
    dead = decisions(failed, "dead_letters")
    assert [d["reason"] for d in dead] == ["processing_error"]
    assert dead[0]["messages"][:2] == [f"rule {rule_id}", "RuntimeError: condition blew up"]
    assert orjson.loads(base64.b64decode(dead[0]["payload_base64"]))["messageId"] == "m-boom"
    assert decisions(failed, "triggers.") == [] and decisions(failed, "audience_changes") == []
    assert codec.encode(engine.customers[customer]) == before, "the customer is as before the event"
    assert {k: v for k, v in engine.stats.items() if k in stats_before} == stats_before
    assert engine.stats["processing_error"] == 1
    later = h.feed([added(user, 3, "p2", anon=anon), added("u2", 3, "p3")])
    assert {d["subject"] for d in decisions(later, "triggers.")} == {customer, "u2"}
    assert engine.customers[customer].features.cart_lines.keys() == {"p1", "p2"}


def test_a_timer_whose_rule_raises_is_dropped_with_a_dead_letter_naming_customer_and_rule():
    h = EngineHarness(with_failing(FAILING_RULES, "cart", lambda view: view.state.id == "u1"))
    h.feed([added("u1", 0, "p1"), added("u2", 0, "p2")])
    before = codec.encode(h.customers.customers["u1"])
    out = h.feed([track("Page", "u3", 40)])  # moves the clock past both timers
    dead = decisions(out, "dead_letters")
    assert len(dead) == 1 and dead[0]["reason"] == "processing_error"
    assert dead[0]["messages"][:3] == [
        f"timer cart of customer u1, due {at(30).replace('Z', '.000Z')}",
        "rule cart",
        "RuntimeError: condition blew up",
    ]
    assert dead[0]["position"] == {"source": "timer"}
    assert orjson.loads(base64.b64decode(dead[0]["payload_base64"]))["customer_id"] == "u1"
    assert [d["subject"] for d in cart_triggers(out)] == ["u2"], "the other customer's timer fired"
    expected = codec.decode(before)
    expected.drop_timer("cart")
    assert codec.encode(h.customers.customers["u1"]) == codec.encode(expected), "only the timer is gone"
    h.feed([added("u1", 50, "p9"), track("Page", "u3", 100)])
    assert h.customers.customers["u1"].features.cart_lines.keys() == {"p1", "p9"}, "later events are applied"
    assert h.customers.stats["processing_error"] == 2, "the re-armed timer raised again, and was dropped again"


def test_a_new_customer_whose_first_event_fails_leaves_no_trace_in_the_profiles():
    """No profile, not even a deletion: a deletion would erase a live store's copy of the customer."""
    h = EngineHarness(with_failing(FAILING_RULES, "added_now", lambda view: True), EngineConfig(profile_ms=1000))
    h.feed([added("u1", 0, "p1")])
    assert decisions(h.outputs, "dead_letters")[0]["reason"] == "processing_error"
    profiles: list = []
    h.customers.profiles(profiles)
    assert profiles == [] and "u1" not in h.customers.customers


def test_an_erased_customer_whose_next_event_fails_still_has_its_profile_deleted():
    h = EngineHarness(
        with_failing(FAILING_RULES, "added_now", lambda view: holds(view, "boom")), EngineConfig(profile_ms=1000)
    )
    h.feed([added("u1", 0, "p1"), track("Erasure Requested", "u1", 1, props={"request_id": "r1"})])
    h.feed([added("u1", 2, "boom")])
    profiles: list = []
    h.customers.profiles(profiles)
    assert [orjson.loads(p.body) for p in profiles] == [{"customer_id": "u1", "deleted": True}]


def test_outcomes_an_event_resolves_stand_when_the_rest_of_it_fails():
    """An order resolves an earlier decision (learnt as a success) and then a rule raises: the
    decision must not come back and be learnt again, as a failure, when its horizon passes."""
    rules = rules_from(
        "version: v\ntriggers:\n"
        "  - id: welcome\n    channel: push\n    on: Signed Up\n    when: 'propensity >= 0'\n"
        "  - id: greedy\n    channel: push\n    on: Order Completed\n"
        "    when: 'len(customer_id * orders * 20000) > 0'\n"
    )
    h = EngineHarness(rules)
    h.feed([track("Signed Up", "u-long", 0)])
    failed = h.feed([order("u-long", 60)])
    assert [d["reason"] for d in decisions(failed, "dead_letters")] == ["processing_error"]
    h.feed([track("Page", "u2", days=9)])  # the decision's 7-day horizon has passed
    stats = h.customers.models.stats()["propensity"]
    assert stats["learnt"] == 1, "one decision, one outcome"
    counts = stats["progressive"]
    assert (sum(counts["positives"].values()), sum(counts["negatives"].values())) == (1, 0), "learnt as a success"


def test_a_shard_snapshotted_to_a_store_before_holding_any_customer_restores_empty(tmp_path):
    from operators.engine import CustomerStage

    config = EngineConfig(snapshots=True, state_store=tmp_path / "customers")
    empty = CustomerStage(rules_from(CART_ONLY), config, upstreams=4)
    snapshot = empty.snapshot()
    restored = CustomerStage(rules_from(CART_ONLY), config, upstreams=4)
    restored.restore(snapshot)  # type: ignore[arg-type]
    assert restored.customers == {} and restored.snapshot_seq == 1


def test_a_snapshot_does_not_wait_for_a_busy_customer_store_and_restores_every_customer(tmp_path):
    """The store is written by a thread of its own: a snapshot taken while the disk is busy (here:
    another connection holds the store's write lock) returns at once, and until the store has the
    changes they travel in the snapshot itself, so a restore from it misses nothing."""
    import sqlite3

    rules = rules_from(CART_ONLY)
    config = EngineConfig(snapshots=True, state_store=tmp_path / "customers")
    h = EngineHarness(rules, config)
    h.feed([added("u1", 0), track("Page", "u2", 5)])
    first = h.customers.snapshot()
    h.customers.store.wait_saved(1)  # type: ignore[union-attr]
    h.feed([added("u1", 10, "p2"), track("Page", "u3", 12)])
    busy = sqlite3.connect(h.customers.store.path, isolation_level=None)  # type: ignore[union-attr]
    busy.execute("BEGIN IMMEDIATE")
    try:
        second = h.customers.snapshot()
    finally:
        busy.execute("ROLLBACK")
        busy.close()
    assert second[1]["store"][1] == 1, "the store held snapshot 1 only when snapshot 2 was taken"  # type: ignore[index]
    assert first is not None
    restored = EngineHarness(rules, config)
    restored.customers.restore(second)  # type: ignore[arg-type]
    assert sorted(restored.customers.customers) == ["u1", "u2", "u3"]
    assert restored.customers.customers["u1"].features.cart_value == 40.0
    out = restored.feed([track("Page", "u2", 60)])
    assert [d["subject"] for d in cart_triggers(out)] == ["u1"]


def test_a_customer_store_that_cannot_be_written_stops_the_engine_at_the_next_snapshot(tmp_path):
    from state.store import wait_for_writes

    blocked = tmp_path / "customers"
    blocked.write_text("a file where the stores' folder should be")
    h = EngineHarness(rules_from(CART_ONLY), EngineConfig(snapshots=True, state_store=blocked))
    h.feed([added("u1", 0)])
    h.customers.snapshot()  # handed to the store thread, which fails
    wait_for_writes()
    with pytest.raises(RecoveryStoreError, match=r"customer store .*customer-0000\.sqlite3 could not be written"):
        h.customers.snapshot()
