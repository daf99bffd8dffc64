"""Per-customer features, fed through ``state.update.apply_event`` and read through the catalogue."""

from __future__ import annotations

import copy
import pickle
from random import Random
from typing import Any

import btyd_reference as btyd
import pytest
from conftest import T0, added, call, envelopes, order, raw_records, track
from risk_step_reference import next_alive_step, next_risk_step

from operators.expressions import compile_expression
from state.catalogue import FEATURES, FeatureView
from state.customer import MAX_CART_ITEMS, MAX_SESSION_PRODUCTS, CustomerState, Lifecycle
from state.update import apply_event
from state.windows import KIND_CODE

LC = Lifecycle()


def reference_population(lc: Lifecycle) -> btyd.Population:
    return lc.btyd


MIN = 60_000
DAY = 86_400_000
T0_MS = int(T0.timestamp() * 1000)  # 2026-01-05T10:00Z, a Monday in winter (Berlin is UTC+1)


def ms(minutes: float = 0, days: float = 0) -> int:
    return T0_MS + int(minutes * MIN + days * DAY)


def state_after(events: list[dict[str, Any]], lifecycle: Lifecycle = LC) -> CustomerState:
    envs = envelopes(events)
    state = CustomerState(envs[0].customer_id, envs[0].ts_ms)
    for env in envs:
        apply_event(state, env, lifecycle)
    return state


def feed(state: CustomerState, events: list[dict[str, Any]]) -> CustomerState:
    for env in envelopes(events):
        apply_event(state, env, LC)
    return state


def view(state: CustomerState, minutes: float = 0, days: float = 0) -> FeatureView:
    return FeatureView(state, None, ms(minutes, days), LC)


def viewed(product: str, minutes: float = 0, category: str = "shoes", **kw: Any) -> dict[str, Any]:
    return track("Product Viewed", minutes=minutes, props={"product_id": product, "category": category}, **kw)


def removed(product: str, minutes: float = 0, quantity: int = 1) -> dict[str, Any]:
    return track("Product Removed", minutes=minutes, props={"product_id": product, "quantity": quantity})


# --- orders: RFM -----------------------------------------------------------------------


def test_rfm_from_orders():
    lines = [{"product_id": "a", "price": 10.0, "quantity": 2}, {"product_id": "b", "price": 5.0}]
    state = state_after(
        [
            order(days=0, total=50.0),
            track("Order Completed", days=3, props={"order_id": "o-rev", "revenue": 30.0}),
            track("Order Completed", days=5, props={"order_id": "o-lines", "products": lines}),
        ]
    )
    features = view(state, days=7)
    assert features["orders"] == features["frequency"] == 3
    assert features["lifetime_spend"] == 105.0
    assert features["monetary"] == 35.0
    assert features["recency_days"] == 2.0
    assert state.last_order_id == "o-lines"
    assert state.first_order_ms == ms() and state.last_order_ms == ms(days=5)


def test_no_orders_yet():
    features = view(state_after([call("page")]), days=1)
    assert features["orders"] == 0
    assert features["monetary"] == 0.0
    assert features["recency_days"] is None
    assert features["mean_order_gap_days"] is None


def test_refunds_reduce_spend_but_not_below_zero():
    state = state_after([order(total=100.0), track("Order Refunded", minutes=5, props={"order_id": "o", "total": 30})])
    features = view(state, minutes=10)
    assert features["refunds"] == 1
    assert features["lifetime_spend"] == 70.0
    assert features["monetary"] == 70.0
    assert features["orders"] == 1
    feed(state, [track("Order Refunded", minutes=20, props={"order_id": "o", "total": 500})])
    assert state.lifetime_spend == 0.0 and state.refunds == 2


def test_a_late_order_does_not_become_the_last_order():
    state = state_after([order(days=5, total=10.0), order(days=1, total=10.0)])
    assert state.orders == 2
    assert state.last_order_ms == ms(days=5)
    assert state.first_order_ms == ms(days=1)


# --- cart ------------------------------------------------------------------------------


def test_cart_adds_and_removes():
    state = state_after(
        [
            added(minutes=0, product="p1", price=20.0),
            track("Product Added", minutes=1, props={"product_id": "p2", "price": 15.0, "quantity": 2}),
            added(minutes=2, product="p1", price=20.0),
        ]
    )
    cart = view(state, minutes=12)["cart"]
    assert cart["value"] == 70.0
    assert cart["items"] == 4
    assert cart["products"] == ["p1", "p2"]
    assert cart["minutes_since_add"] == 10.0
    feed(state, [removed("p2", minutes=3)])
    assert view(state, minutes=3)["cart"]["value"] == 55.0
    feed(state, [removed("p1", minutes=4, quantity=5), removed("unknown", minutes=4)])
    cart = view(state, minutes=4)["cart"]
    assert cart["value"] == 15.0 and cart["products"] == ["p2"] and cart["items"] == 1
    feed(state, [removed("p2", minutes=5)])
    assert state.features.cart_id is None
    assert view(state, minutes=5)["cart"] == {
        "id": None,
        "value": 0.0,
        "items": 0,
        "products": [],
        "minutes_since_add": None,
    }


def test_an_order_clears_the_cart_and_a_new_add_starts_a_new_one():
    state = state_after([added(minutes=0, product="p1"), added(minutes=1, product="p2")])
    first = state.features.cart_id
    assert len(state.features.cart_lines) == 2
    feed(state, [order(minutes=5)])
    assert state.features.cart_id is None
    feed(state, [added(minutes=6, product="p3")])
    assert state.features.cart_id != first and list(state.features.cart_lines) == ["p3"]


def test_a_late_order_from_before_the_cart_leaves_it():
    state = state_after([added(minutes=10, product="p1"), order(minutes=2)])
    assert state.features.cart_id is not None and state.features.cart_value == 20.0


def test_cart_id_comes_from_the_event_when_sent():
    state = state_after([track("Product Added", props={"product_id": "p1", "price": 3, "cart_id": "cart-9"})])
    assert view(state)["cart"]["id"] == "cart-9"


def test_cart_lines_are_bounded():
    state = state_after([added(minutes=i / 10, product=f"p{i}", price=1.0) for i in range(MAX_CART_ITEMS + 5)])
    assert len(state.features.cart_lines) == MAX_CART_ITEMS
    assert state.features.cart_value == MAX_CART_ITEMS * 1.0, "lines past the bound are not counted in the value"
    feed(state, [added(minutes=10, product="p0", price=1.0)])
    assert state.features.cart_lines["p0"][0] == 2, "existing lines still grow"


# --- sessions --------------------------------------------------------------------------


def test_a_new_session_starts_after_30_quiet_minutes():
    events = [call("page", minutes=0), call("page", minutes=10), call("screen", minutes=40)]
    state = state_after(events)
    first_id = events[0]["messageId"]
    session = view(state, minutes=40)["session"]
    assert session["id"] == first_id
    assert session["pages"] == 3
    assert session["minutes"] == 40.0
    late_start = call("page", minutes=71)
    feed(state, [late_start])
    session = view(state, minutes=71)["session"]
    assert session["id"] == late_start["messageId"]
    assert session["pages"] == 1 and session["minutes"] == 0.0


def test_the_session_feature_is_null_once_the_session_timed_out():
    state = state_after([call("page")])
    assert view(state, minutes=30)["session"] is not None
    assert view(state, minutes=31)["session"] is None


def test_a_late_event_does_not_start_an_old_session():
    state = state_after([call("page", minutes=100), call("page", minutes=10)])
    assert state.features.session_times[0] == ms(minutes=100)
    assert state.first_seen_ms == ms(minutes=10)
    assert state.last_seen_ms == ms(minutes=100)


def test_products_viewed_in_a_session_are_bounded_and_distinct():
    state = state_after([viewed(f"p{i}", minutes=i) for i in range(15)] + [viewed("p14", minutes=16)])
    session = view(state, minutes=16)["session"]
    assert session["products_viewed"] == MAX_SESSION_PRODUCTS
    assert session["products"] == [f"p{i}" for i in range(15 - MAX_SESSION_PRODUCTS, 15)]


# --- where and when ----------------------------------------------------------------------


def test_last_store_from_pos_context_and_from_store_visits():
    pos = {"channel": "pos", "store": {"id": "berlin-01"}}
    state = state_after([track("Order Completed", props={"order_id": "o1", "total": 5}, context=pos)])
    assert view(state)["last_store"] == "berlin-01"
    feed(state, [track("Store Visited", minutes=60, props={"store_id": "paris-02"})])
    assert view(state, minutes=60)["last_store"] == "paris-02"


def test_city_from_location_else_from_traits():
    state = state_after([call("identify", traits={"city": "Munich", "country": "DE"})])
    assert view(state)["city"] == "Munich" and view(state)["country"] == "DE"
    feed(state, [call("page", minutes=1, context={"location": {"city": "Lyon", "country": "FR"}})])
    assert view(state, minutes=1)["city"] == "Lyon" and view(state, minutes=1)["country"] == "FR"
    feed(state, [call("page", minutes=2, context={"location": {"latitude": 1.0}})])
    assert view(state, minutes=2)["city"] == "Lyon", "a location without a city keeps the last one"


def test_preferred_hour_is_in_the_local_timezone():
    berlin = {"timezone": "Europe/Berlin"}
    state = state_after(
        [
            call("page", minutes=0, context=berlin),  # 10:00 UTC = 11:00 in Berlin
            call("page", minutes=5, context=berlin),
            call("page", minutes=300),  # 15:00 UTC, no timezone
        ]
    )
    assert view(state)["preferred_hour"] == 11
    assert state.hours[15] == 1 and state.hours[10] == 0


def test_an_unknown_timezone_counts_in_utc():
    state = state_after([call("page", context={"timezone": "Mars/Olympus"})])
    assert state.preferred_hour() == 10


def test_preferred_hour_is_null_without_activity_and_survives_many_events():
    state = CustomerState("u1", T0_MS)
    assert state.preferred_hour() is None
    for n in range(301):
        hour = 9 if n < 300 else 20
        state.features.apply(T0_MS + n, f"m{n}", KIND_CODE["page"], hour, LC.session_timeout_ms, None, None, None)
    assert state.preferred_hour() == 9
    assert max(state.hours) <= 255


# --- traits and consent ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "band"),
    [(12, "<18"), (17, "<18"), (18, "18-24"), (24, "18-24"), (25, "25-34"), (44, "35-44"), (64, "55-64"), (65, "65+")],
)
def test_age_becomes_an_age_band(age, band):
    assert state_after([call("identify", traits={"age": age})]).traits == {"age_band": band}


def test_traits_keep_the_allowlist_and_later_identifies_update_them():
    state = state_after(
        [
            call("identify", traits={"age": 30, "city": "Berlin", "urban": True, "email": "a@b.c", "gender": "f"}),
            call("identify", minutes=5, traits={"loyalty_tier": "gold", "city": "Hamburg"}),
            call("identify", minutes=6, traits={"age": 40, "age_band": "custom"}),
        ]
    )
    assert view(state, minutes=6)["traits"] == {
        "age_band": "custom",
        "city": "Hamburg",
        "urban": True,
        "gender": "f",
        "loyalty_tier": "gold",
    }


def test_consent_per_channel_and_for_all():
    state = state_after([track("Consent Updated", props={"channel": "push", "granted": False})])
    assert view(state)["consent"] == {"push": False}
    feed(state, [track("Consent Updated", minutes=1, props={"channel": "all", "granted": True})])
    assert view(state, minutes=1)["consent"] == {"push": True, "in_app": True, "email": True, "sms": True, "ads": True}
    feed(state, [track("Consent Updated", minutes=2, props={"channel": "email", "granted": False})])
    assert view(state, minutes=2)["consent"]["email"] is False
    assert view(state, minutes=2)["consent"]["push"] is True


def test_consent_and_identify_are_not_activity():
    state = state_after([call("page")])
    feed(
        state,
        [
            track("Consent Updated", minutes=50, props={"channel": "push", "granted": True}),
            call("identify", minutes=55, traits={"city": "Rome"}),
        ],
    )
    assert state.last_seen_ms == ms()
    assert view(state, minutes=55)["counts_24h"]["other"] == 0
    assert view(state, minutes=20)["session"]["pages"] == 1


# --- lifecycle -------------------------------------------------------------------------


def test_lifecycle_new_active_lapsed_for_a_browser():
    state = state_after([call("page")])
    assert view(state, days=29.9)["lifecycle"] == "new"
    assert view(state, days=30)["lifecycle"] == "active"
    assert view(state, days=59.9)["lifecycle"] == "active"
    assert view(state, days=60)["lifecycle"] == "lapsed"


def test_a_buyer_lapses_60_days_after_the_last_order_even_if_still_browsing():
    state = state_after([order(days=0), call("page", days=50)])
    assert view(state, days=59)["lifecycle"] == "active"
    assert view(state, days=60)["lifecycle"] == "lapsed"
    feed(state, [order(days=61)])
    assert view(state, days=61)["lifecycle"] == "active"


def test_at_risk_against_the_customers_own_rhythm():
    state = state_after([order(days=0), order(days=10)])
    features = view(state, days=10)
    assert features["mean_order_gap_days"] == 10.0
    assert features["at_risk"] is False
    assert view(state, days=24.9)["at_risk"] is False
    assert view(state, days=25)["at_risk"] is True, "1.5 x the 10 day rhythm overdue"
    assert view(state, days=69.9)["at_risk"] is True
    assert view(state, days=70)["at_risk"] is False, "lapsed, no longer at risk"
    assert view(state, days=70)["lifecycle"] == "lapsed"


def test_a_single_order_is_never_at_risk():
    state = state_after([order(days=0)])
    assert view(state, days=40)["at_risk"] is False


def test_mean_order_gap_is_the_mean_of_all_gaps():
    state = state_after([order(days=0), order(days=10), order(days=40)])
    assert view(state, days=40)["mean_order_gap_days"] == 20.0
    assert view(state, days=70)["at_risk"] is True, "overdue by 1.5 x 20 days"


def test_next_boundary_of_a_browser():
    state = state_after([call("page")])
    assert state.next_boundary(ms(), LC) == ms(days=30)  # stops being new
    assert state.next_boundary(ms(days=30), LC) == ms(days=60)  # lapses
    assert state.next_boundary(ms(days=60), LC) is None


def test_next_boundary_with_a_purchase_rhythm():
    state = state_after([order(days=0), order(days=10)])
    assert state.next_boundary(ms(days=10), LC) == ms(days=25)  # becomes at risk
    assert state.next_boundary(ms(days=25), LC) == ms(days=30)  # stops being new
    assert state.next_boundary(ms(days=30), LC) == ms(days=70)  # lapses
    assert state.next_boundary(ms(days=70), LC) is None


# --- identity merge ----------------------------------------------------------------------


def test_merge_folds_an_anonymous_history_into_the_customer():
    anon = state_after([added(user=None, anon="a1", product="p1"), order(user=None, anon="a1", minutes=5)])
    known = state_after([call("identify", minutes=30, traits={"city": "Oslo"}), call("page", minutes=31)])
    known.merge(anon, ms(minutes=31))
    features = view(known, minutes=31)
    assert features["orders"] == 1 and features["lifetime_spend"] == 50.0
    assert known.first_seen_ms == ms() and known.last_seen_ms == ms(minutes=31)
    assert features["traits"] == {"city": "Oslo"}
    assert features["counts_1h"]["product_added"] == 1 and features["counts_1h"]["page"] == 1
    assert known.linked_ids == ("a1",)


def test_merge_keeps_the_purchase_rhythm():
    anon = state_after([order(user=None, anon="a1", days=0), order(user=None, anon="a1", days=10)])
    known = state_after([call("page", days=11)])
    known.merge(anon, ms(days=11))
    assert view(known, days=11)["mean_order_gap_days"] == 10.0
    assert view(known, days=26)["at_risk"] is True


# --- the catalogue -----------------------------------------------------------------------


def test_counts_and_top_category_through_the_catalogue():
    state = state_after(
        [
            viewed("p1", minutes=0, category="shoes"),
            viewed("p2", minutes=1, category="bags"),
            added(minutes=2, product="p2") | {"properties": {"product_id": "p2", "price": 9, "category": "bags"}},
            call("page", minutes=3),
            track("Wishlist Shared", minutes=4),
            viewed("p3", days=-2, category="shoes"),
        ]
    )
    counts = view(state, minutes=5)["counts_24h"]
    assert counts["product_viewed"] == 2
    assert counts["product_added"] == 1
    assert counts["page"] == 1
    assert counts["other"] == 1
    assert view(state, minutes=5)["counts_7d"]["product_viewed"] == 3
    assert view(state, minutes=5)["counts_1h"]["product_viewed"] == 2
    assert view(state, days=2)["counts_24h"]["product_viewed"] == 0
    assert view(state, minutes=5)["top_category"] == "bags", "an add weighs more than a view"
    assert view(state, minutes=5)["top_products"][0] == "p2"


def test_top_category_is_null_without_product_events():
    assert view(state_after([call("page")]))["top_category"] is None


def test_feature_view_is_a_lazy_mapping_of_every_feature():
    state = state_after([call("page")])
    features = view(state)
    assert set(features) == set(FEATURES) and len(features) == len(FEATURES)
    assert features["customer_id"] == "u1"
    assert features["event"] is None, "no event in a timer evaluation"
    assert features["hour"] == 10
    assert features["tenure_days"] == 0.0 and features["days_since_seen"] == 0.0


@pytest.mark.parametrize(
    ("event", "expression"),
    [
        (track("Product Viewed", props={"product_id": "p1", "colour": "red"}), "event.properties.colour == 'red'"),
        (track("Product Viewed", props={"product_id": "p1", "colour": "red"}), "event.properties.quantity == 1"),
        (track("Product Added", props={"product_id": "p1", "quantity": 2.0}), "event.properties.quantity == 2"),
        (track("Wishlist Shared", props={"list": "summer"}), "event.properties['list'] == 'summer'"),
        (
            track("Order Completed", props={"order_id": "o", "products": [{"price": 1}, {"product_id": "b"}]}),
            "event.properties.products[0].product_id == 'b'",
        ),
        (call("identify", properties={"plan": "pro"}), "event.properties.plan == 'pro'"),
        (
            {k: v for k, v in track("Checkout Started").items() if k != "properties"},
            "len(event.properties.products) == 0",
        ),
        (call("page", context={"channel": "pos", "store": {"id": "s1"}}), "event.store_id == 's1'"),
    ],
    ids=["unknown-key", "default", "coerced", "unknown-event", "kept-lines", "identify", "defaults-only", "store"],
)
def test_rules_read_the_event_properties_as_sent_with_the_contract_values(event, expression):
    [env] = envelopes([event])
    env = pickle.loads(pickle.dumps(env))  # as the customer stage of another worker reads it
    rule = compile_expression(expression, FEATURES)
    assert rule.evaluate(FeatureView(CustomerState("u1", env.ts_ms), env, env.ts_ms, LC)) is True


CHANGERS = {
    "Product Viewed": viewed("p9", minutes=10, category="hats"),
    "Product Added": added(minutes=10, product="p9"),
    "Product Removed": removed("p2", minutes=10),
    "Order Completed": order(minutes=10, total=30.0),
    "Order Refunded": track("Order Refunded", minutes=10, props={"order_id": "o1", "total": 20.0}),
    "Order Cancelled": track("Order Cancelled", minutes=10, props={"order_id": "o1", "total": 20.0}),
    "identify": call("identify", minutes=10, traits={"age": 40, "loyalty_tier": "gold"}),
    "Consent Updated": track("Consent Updated", minutes=10, props={"channel": "push", "granted": False}),
    "Store Visited": track("Store Visited", minutes=10, props={"store_id": "s1"}),
    "page": call("page", minutes=10),
    "Checkout Started": track("Checkout Started", minutes=10),
}


@pytest.mark.parametrize("name", [pytest.param(n) if n == "Order Cancelled" else n for n in CHANGERS])
def test_an_event_only_changes_features_that_declare_it(name):
    """``changed_by`` must list every event that can change a feature, or audiences miss the change."""
    history = [call("identify", traits={"city": "Paris"}), added(minutes=1, product="p1"), order(minutes=2)]
    state = state_after([*history, added(minutes=3, product="p2")])
    now_minutes = 10
    skip = {"event", "audiences"}
    before = {k: copy.deepcopy(view(state, now_minutes)[k]) for k in FEATURES if k not in skip}
    feed(state, [CHANGERS[name]])
    after = {k: view(state, now_minutes)[k] for k in FEATURES if k not in skip}
    changed = {k for k in before if before[k] != after[k]}
    assert changed, "every event here changes something"
    undeclared = {k for k in changed if "*" not in FEATURES[k].changed_by and name not in FEATURES[k].changed_by}
    assert undeclared == set()


# --- memory ----------------------------------------------------------------------------


def test_a_busy_customer_stays_small():
    events: list[dict[str, Any]] = []
    berlin = {"timezone": "Europe/Berlin", "location": {"city": "Berlin", "country": "DE"}}
    for i in range(50):
        minutes = i * 97  # spread over ~3 days, many sessions and hours
        kind = i % 8
        if kind == 0:
            events.append(viewed(f"p{i}", minutes=minutes, category=f"c{i % 11}", context=berlin))
        elif kind == 1:
            events.append(added(minutes=minutes, product=f"p{i}", price=12.5))
        elif kind == 2:
            events.append(call("page", minutes=minutes, name="home"))
        elif kind == 3:
            events.append(order(minutes=minutes, total=40.0, context={"channel": "pos", "store": {"id": f"s{i}"}}))
        elif kind == 4:
            events.append(call("identify", minutes=minutes, traits={"age": 30, "city": "Berlin", "urban": True}))
        elif kind == 5:
            events.append(track("Application Opened", minutes=minutes))
        elif kind == 6:
            events.append(track("Consent Updated", minutes=minutes, props={"channel": "all", "granted": True}))
        else:
            events.append(track("Store Visited", minutes=minutes, props={"store_id": f"s{i}"}))
    state = state_after(events)
    assert state.orders == 6 and state.traits["age_band"] == "25-34"
    size = len(pickle.dumps(state))
    assert size < 2048, size
    restored = pickle.loads(pickle.dumps(state))
    assert restored.features.counts("30d", state.last_seen_ms) == state.features.counts("30d", state.last_seen_ms)
    assert restored.features.session_id == state.features.session_id


# --- lapse risk and the at-risk boundary ------------------------------------------------


def test_lapse_risk_is_the_bgnbd_chance_of_no_order_before_the_lapse_point():
    assert state_after([track("Page", minutes=0)]).lapse_risk(ms(days=10), LC) is None, "no order yet"
    weekly = state_after([order(days=d) for d in (0, 7, 14, 21)])
    pop = reference_population(LC)
    # 3 repeat orders over 21 days, seen at day 40: the lapse point (day 81) is 41 days away
    expected = btyd.no_order_within(pop, 41, x=3, t_x=21, age=40)
    assert weekly.lapse_risk(ms(days=40), LC) == round(expected, 4)
    once = state_after([order(days=21)])
    assert weekly.lapse_risk(ms(days=22), LC) < 0.25 < 0.5 < once.lapse_risk(ms(days=22), LC), (
        "a day after an order, a weekly buyer will likely order again; a one-time buyer likely not"
    )
    assert weekly.lapse_risk(ms(days=22), LC) < weekly.lapse_risk(ms(days=40), LC) < 1.0
    assert weekly.lapse_risk(ms(days=21 + 60), LC) == 1.0, "lapsed"


def test_silence_says_more_of_a_weekly_buyer_than_of_a_monthly_one():
    """After 35 silent days a weekly buyer has more likely stopped than a monthly one. (BG/NBD lets a
    buyer stop right after an order, with chance a / (a + b + x - 1): P(alive) is below 1 even then.)"""
    weekly = state_after([order(days=d) for d in (0, 7, 14, 21)])
    monthly = state_after([order(days=d) for d in (0, 30, 60)])
    weekly_alive = weekly.features.p_alive(ms(days=21 + 35), LC.population)
    monthly_alive = monthly.features.p_alive(ms(days=60 + 35), LC.population)
    assert weekly_alive < monthly_alive < 1.0
    assert weekly.features.p_alive(ms(days=22), LC.population) > 0.8
    assert weekly.features.p_alive(ms(days=21 + 35), LC.population) == round(
        btyd.p_alive(reference_population(LC), 3, 21, 56), 4
    )


def test_lapse_risk_only_rises_in_silence():
    """With no new order P(alive) falls and so does the chance of an order before the lapse point,
    so the risk never falls as event time passes (which the rechecks at each tenth rely on)."""
    rng = Random(11)
    for _ in range(300):
        state, lc = random_buyer(rng)
        last = state.last_order_ms
        risks = [state.lapse_risk(last + step * lc.lapse_days * DAY // 50, lc) for step in range(51)]
        assert risks == sorted(risks), risks
        assert risks[-1] == 1.0


def test_the_risk_rechecks_land_on_each_tenth():
    weekly = state_after([order(days=d) for d in (0, 7, 14)])
    now = ms(days=14)
    step = weekly.next_boundary(now, LC, risk_steps=True)
    assert step is not None
    before, at = weekly.lapse_risk(step - MIN, LC), weekly.lapse_risk(step, LC)
    assert int(before * 10) < int(at * 10), (before, at)


def test_the_p_alive_rechecks_land_below_each_tenth():
    weekly = state_after([order(days=d) for d in (0, 7, 14)])
    now = ms(days=14)
    step = weekly.next_boundary(now, LC, alive_steps=True)
    assert step is not None and step < weekly.next_boundary(now, LC)
    before, at = weekly.p_alive(step - MIN, LC), weekly.p_alive(step, LC)
    assert before >= 0.8 > at, (before, at)  # type: ignore[operator]
    assert state_after([order(days=0)]).next_boundary(now, LC, alive_steps=True) == state_after(
        [order(days=0)]
    ).next_boundary(now, LC), "a one-time buyer's P(alive) stays 1: no step"


def test_the_next_alive_step_is_the_one_the_search_finds():
    rng = Random(9)
    for _ in range(1500):
        state, lc = random_buyer(rng)
        last = state.last_order_ms
        now = rng.choice([last, last - rng.randrange(3 * DAY), last + rng.randrange(400 * DAY)])
        candidates = (state.next_boundary(now, lc), next_alive_step(state, now, lc))
        expected = min((at for at in candidates if at is not None and at > now), default=None)
        assert state.next_boundary(now, lc, alive_steps=True) == expected, (state.orders, now - last, lc)


def test_at_risk_holds_exactly_at_its_boundary():
    """The boundary is rounded up: a recheck there finds the customer at risk, not "not yet"."""
    state = state_after([order(minutes=0), order(days=3, minutes=55.1)])
    boundary = state.next_boundary(ms(days=3, minutes=56), LC)
    assert state.at_risk(boundary, LC) and not state.at_risk(boundary - 1, LC)


def test_orders_less_than_a_day_apart_are_no_rhythm():
    state = state_after([order(minutes=0), order(minutes=55)])
    assert not state.at_risk(ms(days=2), LC)


def test_a_rollback_undoes_every_update_since_its_checkpoint():
    from state import codec

    state = state_after(
        [
            call("identify", "u1", 0, traits={"city": "Lyon", "age": 30}),
            track("Consent Updated", "u1", 1, props={"channel": "push", "granted": True}),
            viewed("p1", 2),
            added("u1", 3, "p2"),
            order("u1", 4),
            added("u1", 5, "p3"),
        ]
    )
    state.set_timer(ms(40), "cart", "c1", ["m1"])
    state.scheduled_ms = ms(40)
    state.set_fired("welcome", "customer")
    state.outcomes += b"open decision"
    state.offers_open += (ms(4), "o1", "s")
    before = codec.encode(state)
    checkpoint = state.checkpoint()
    other = state_after([call("identify", "a9", 0, traits={"gender": "f"}), added("a9", 1, "p9"), viewed("p8", 2)])
    feed(state, [viewed("p4", 6), added("u1", 7, "p2"), removed("p3", 8), track("Page", "u1", 90), order("u1", 91)])
    feed(state, [call("identify", "u1", 92, traits={"city": "Paris"})])
    feed(state, [track("Consent Updated", "u1", 93, props={"channel": "all", "granted": False})])
    state.merge(other, ms(95))
    state.set_timer(ms(41), "cart", "c1", ["m1", "m2"])
    state.scheduled_ms = None
    state.set_fired("welcome", "again")
    state.outcomes += b"another"
    state.offers_open = ()
    state.set_timer(ms(99), "new", "n")
    state.rollback(checkpoint)
    assert codec.encode(state) == before, "every field is as it was"
    assert state.scheduled_ms == ms(40), "and the customer's timers keep their heap entry"


def test_a_checkpoint_of_what_an_event_changes_undoes_that_event_whatever_its_kind():
    """Rolling back to a checkpoint taken before an event gives the state before it, for every
    kind of event, in order or late."""
    from connectors.synthetic import generate_events
    from operators.parse import parse
    from schemas.envelope import Envelope
    from state import codec

    generated = list(generate_events(60, 5, seed=3, defects=0.02))
    more = [
        call("screen", "u1", 0, name="Home"),
        track("Order Refunded", "u1", 1, props={"order_id": "o1", "total": 20.0}),
        track("Erasure Requested", "u1", 2, props={"request_id": "r1"}),
        track("Something Custom", "u1", 3),
        call("alias", "u1", 4, previousId="a1"),
        track("Consent Updated", "u1", 5, props={"channel": "all", "granted": False}),
        removed("p-none", 6),
    ]
    envs = [env for raw in raw_records([*generated, *more]) if isinstance(env := parse(raw), Envelope)]
    names = {env.name for env in envs}
    assert {"identify", "screen", "Order Refunded", "Product Removed", "Consent Updated", "Store Visited"} <= names
    states: dict[str, CustomerState] = {}
    for env in [*envs, *envs[::7]]:  # then again, late
        state = states.setdefault(env.customer_id, CustomerState(env.customer_id, env.ts_ms))
        before = codec.encode(state)
        checkpoint = state.checkpoint()
        apply_event(state, env, LC)
        state.rollback(checkpoint)
        assert codec.encode(state) == before, f"{env.name} is undone"
        apply_event(state, env, LC)


def random_buyer(rng: Random) -> tuple[CustomerState, Lifecycle]:
    """A buyer of 1 to 6 orders, from minutes to a year apart, and a lapse threshold of 7 to 400 days."""
    offset, orders = 0, []
    for _ in range(rng.randint(1, 6)):
        offset += rng.choice([rng.randrange(1, 120) * MIN, rng.randrange(1, 400) * DAY + rng.randrange(DAY)])
        orders.append(order(minutes=offset / MIN))
    lc = Lifecycle(lapse_days=rng.choice([7, 30, 60, 90, 400]))
    return state_after(orders, lc), lc


def test_the_next_risk_step_is_the_one_the_bisection_finds():
    """The compiled search for the next lapse-risk step lands where a bisection computing the risk
    at every probe does, on buyers of every rhythm, late events included."""
    rng = Random(7)
    for _ in range(3000):
        state, lc = random_buyer(rng)
        last, lapse = state.last_order_ms, lc.lapse_days * DAY
        now = rng.choice([last, last - rng.randrange(3 * DAY), last + rng.randrange(lapse + DAY)])
        candidates = (state.next_boundary(now, lc), next_risk_step(state, now, lc))
        expected = min((at for at in candidates if at is not None), default=None)
        assert state.next_boundary(now, lc, risk_steps=True) == expected, (state.orders, now - last, lc)
