"""The input contract: which Segment-shaped events validate, to which model, and which are refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from conftest import T0, call, track

from schemas.events import (
    AliasEvent,
    ApplicationEvent,
    CheckoutEvent,
    ConsentEvent,
    ContractError,
    CouponEvent,
    ErasureEvent,
    IdentifyEvent,
    OrderEvent,
    OrderProperties,
    PageEvent,
    Product,
    ProductEvent,
    PromotionEvent,
    PushEvent,
    ScreenEvent,
    SignedUpEvent,
    StoreVisitEvent,
    UnknownTrack,
    contract_notes,
    decode_event,
    epoch_ms,
    event_name,
    validate_event,
)

PRODUCT = {"product_id": "p1", "name": "Runner", "category": "shoes", "price": 49.9, "quantity": 2}


T0_MS = int(T0.timestamp() * 1000)


def validate(event: dict[str, Any]) -> Any:
    return validate_event(event)[0]


def errors(event: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """The field path and problem of each error that rejects ``event``."""
    with pytest.raises(ContractError) as info:
        validate(event)
    return [(tuple(path.split(".")) if path else (), problem) for path, problem in info.value.problems]


@pytest.mark.parametrize(
    ("event", "model"),
    [
        (track("Product Viewed", props=PRODUCT), ProductEvent),
        (track("Product Added", props={**PRODUCT, "cart_id": "c1"}), ProductEvent),
        (track("Product Removed", props={"product_id": "p1"}), ProductEvent),
        (track("Order Completed", props={"order_id": "o1", "total": 99.8, "products": [PRODUCT]}), OrderEvent),
        (
            track(
                "Order Completed",
                props={"order_id": "o2", "revenue": 12.0},
                context={"channel": "pos", "store": {"id": "berlin-01", "city": "Berlin"}},
            ),
            OrderEvent,
        ),
        (track("Order Refunded", props={"order_id": "o1", "total": 10.0}), OrderEvent),
        (track("Checkout Started", props={"order_id": "o3", "value": 30.0, "products": [PRODUCT]}), CheckoutEvent),
        (track("Coupon Applied", props={"coupon_id": "c", "discount": 5}), CouponEvent),
        (track("Promotion Clicked", props={"promotion_id": "promo-1", "creative": "banner"}), PromotionEvent),
        (track("Application Opened", props={"from_background": True, "version": "3.2"}), ApplicationEvent),
        (track("Push Notification Tapped", props={"trigger_id": "cart_abandonment_push"}), PushEvent),
        (track("Signed Up", props={"method": "email"}), SignedUpEvent),
        (track("Consent Updated", props={"channel": "push", "granted": False}), ConsentEvent),
        (track("Store Visited", props={"store_id": "berlin-01", "duration_s": 600}), StoreVisitEvent),
        (track("Erasure Requested", props={"request_id": "r1", "regulation": "ccpa"}), ErasureEvent),
        (call("identify", traits={"age": 29, "city": "Berlin", "urban": True, "email": "a@b.c"}), IdentifyEvent),
        (call("page", name="Home", properties={"path": "/"}), PageEvent),
        (call("screen", name="Cart"), ScreenEvent),
        (call("alias", previousId="anon-1"), AliasEvent),
    ],
    ids=lambda v: (v.get("event") or v["type"]) if isinstance(v, dict) else v.__name__,
)
def test_each_event_family_validates_to_its_model(event, model):
    parsed, ts_ms, _ = validate_event(event)
    assert type(parsed) is model
    assert parsed.messageId == event["messageId"]
    assert ts_ms == T0_MS


def test_pos_order_keeps_the_store_of_its_context():
    pos = {"channel": "pos", "store": {"id": "s7"}}
    parsed = validate(track("Order Completed", props={"order_id": "o1", "total": 5}, context=pos))
    assert parsed.context.channel == "pos"
    assert parsed.context.store.id == "s7"


def test_typed_fields_are_parsed_and_unknown_ones_accepted():
    event = call("identify", traits={"age": 29, "email": "a@b.c"}, context={"timezone": "Europe/Berlin"})
    parsed = validate(event)
    assert type(parsed) is IdentifyEvent
    assert parsed.traits.age == 29
    assert contract_notes(parsed, event) == (), "traits are open: an unknown trait is not even noted"
    assert parsed.context.timezone == "Europe/Berlin"
    product = validate(track("Product Viewed", props={"product_id": "p1"})).properties
    assert product.quantity == 1 and product.price is None


def test_an_unknown_track_event_is_accepted_as_unknown_track():
    parsed = validate(track("Wishlist Shared", props={"list": "summer", "count": 3}))
    assert type(parsed) is UnknownTrack
    assert parsed.event == "Wishlist Shared"
    assert parsed.properties == {"list": "summer", "count": 3}, "kept as sent"
    assert event_name(parsed) == "Wishlist Shared"


def test_an_anonymous_only_event_is_valid_and_keyed_by_its_anonymous_id():
    parsed = validate(track("Product Viewed", user=None, anon="a-9", props=PRODUCT))
    assert parsed.userId is None
    assert parsed.customer_id == "a-9"
    assert validate(track("Product Viewed", user="u1", anon="a-9", props=PRODUCT)).customer_id == "u1"


def test_missing_both_user_and_anonymous_id_is_rejected():
    [(_, msg)] = errors(track("Product Viewed", user=None, props=PRODUCT))
    assert "userId or anonymousId is required" in msg


def test_a_timestamp_without_timezone_is_rejected():
    [(loc, msg)] = errors(track("Product Viewed", props=PRODUCT, timestamp="2026-01-05T10:00:00"))
    assert loc[-1] == "timestamp"
    assert "timezone" in msg


def test_a_timestamp_with_an_offset_is_the_same_instant():
    _, ts_ms, _ = validate_event(track("Product Viewed", props=PRODUCT, timestamp="2026-01-05T11:00:00+01:00"))
    assert ts_ms == T0_MS


@pytest.mark.parametrize(
    ("props", "field"),
    [
        ({"product_id": "p1", "price": -0.01}, "price"),
        ({"product_id": "p1", "price": "abc"}, "price"),
        ({"product_id": "p1", "price": float("nan")}, "price"),
        ({"product_id": "p1", "price": float("inf")}, "price"),
        ({"product_id": "p1", "quantity": 0}, "quantity"),
        ({"product_id": ""}, "product_id"),
        ({"product_id": "p1", "price": [1]}, "price"),
    ],
    ids=["negative", "not-a-number", "nan", "inf", "zero-quantity", "empty-id", "list"],
)
def test_bad_product_properties_are_rejected_naming_the_field(props, field):
    found = errors(track("Product Viewed", props=props))
    assert [loc for loc, _ in found] == [("properties", field)]


def test_nan_is_rejected_in_nested_typed_floats():
    found = errors(call("page", context={"location": {"latitude": float("inf")}}))
    assert found[0][0] == ("context", "location", "latitude")
    assert "finite" in found[0][1]
    nan_line = {"product_id": "a", "price": float("nan")}
    parsed = validate(track("Order Completed", props={"order_id": "o", "products": [nan_line]}))
    assert parsed.properties.products == [] and parsed.properties.dropped_lines == ("bad_price",)


def order_with(*lines: Any, **props: Any) -> Any:
    return validate(track("Order Completed", props={"order_id": "o1", "products": list(lines), **props})).properties


def test_what_real_tills_send_is_accepted_line_by_line():
    """A voided, weighed or free item (quantity 0) and a returned one (negative) are lines like any other."""
    props = order_with(
        {"product_id": "milk", "price": 1.2, "quantity": 2},
        {"product_id": "bananas", "price": 2.4, "quantity": 0},
        {"product_id": "bag", "price": 0.0, "quantity": 1},
        {"product_id": "eggs", "price": 3.0, "quantity": -1},
    )
    assert [(p.product_id, p.quantity) for p in props.products] == [
        ("milk", 2),
        ("bananas", 0),
        ("bag", 1),
        ("eggs", -1),
    ]
    assert props.dropped_lines == ()
    assert props.amount() == pytest.approx(2.4 - 3.0), "returned items count against the sum of the lines"


GOOD_LINE = {"product_id": "milk", "price": 1.2, "quantity": 2}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({"price": 1.0, "quantity": 1}, "missing_product_id"),
        ({"product_id": "", "price": 1.0}, "bad_product_id"),
        ({"product_id": "p", "price": -0.5}, "bad_price"),
        ({"product_id": "p", "price": "12.50"}, "bad_price"),
        ({"product_id": "p", "price": float("inf")}, "bad_price"),
        ({"product_id": "p", "quantity": 1_000_000}, "bad_quantity"),
        ({"product_id": "p", "quantity": -1_000_000}, "bad_quantity"),
        ({"product_id": "p", "quantity": "3"}, "bad_quantity"),
        ({"product_id": "p", "quantity": True}, "bad_quantity"),
        ({"product_id": "p", "quantity": 1.5}, "bad_quantity"),
        ("milk", "not_an_object"),
        (None, "not_an_object"),
    ],
    ids=[
        "no-id",
        "empty-id",
        "negative-price",
        "price-text",
        "price-inf",
        "absurd-quantity",
        "absurd-return",
        "quantity-text",
        "quantity-bool",
        "quantity-fraction",
        "text",
        "null",
    ],
)
def test_a_bad_line_is_dropped_with_its_reason_and_the_order_kept(line, reason):
    props = order_with(GOOD_LINE, line, GOOD_LINE, total=7.0)
    assert [p.product_id for p in props.products] == ["milk", "milk"]
    assert props.dropped_lines == (reason,)
    assert props.amount() == 7.0
    checkout = validate(track("Checkout Started", props={"products": [line, GOOD_LINE]})).properties
    assert checkout.dropped_lines == (reason,) and len(checkout.products) == 1


def test_every_bad_line_is_dropped_and_a_fault_outside_the_lines_still_rejects_the_order():
    props = order_with({"product_id": "a", "price": -1}, {"quantity": 2}, GOOD_LINE)
    assert props.dropped_lines == ("bad_price", "missing_product_id") and len(props.products) == 1
    found = errors(track("Order Completed", props={"total": 5.0, "products": [{"quantity": 2}]}))
    assert ("properties", "order_id") in [loc for loc, _ in found]
    found = errors(track("Order Completed", props={"order_id": "o", "total": -5.0, "products": [GOOD_LINE]}))
    assert [loc for loc, _ in found] == [("properties", "total")]
    assert errors(track("Order Completed", props={"order_id": "o", "products": [GOOD_LINE] * 501}))


def test_a_lines_validation_gives_the_same_event_from_bytes():
    """Events are decoded again from their bytes after crossing processes: lines are dropped alike."""
    event = track("Order Completed", props={"order_id": "o", "products": [GOOD_LINE, {"product_id": "p", "price": -2}]})
    again = decode_event(orjson.dumps(event), "Order Completed")
    assert again.properties == validate(event).properties
    assert again.properties.dropped_lines == ("bad_price",)


def test_wrong_types_of_ids_are_rejected():
    found = errors(track("Product Viewed", props=PRODUCT, userId=42))
    assert [loc[-1] for loc, _ in found] == ["userId"]


def test_an_unknown_type_is_rejected():
    found = errors({**call("page"), "type": "group"})
    assert [loc[-1] for loc, _ in found] == ["type"]


def test_a_missing_message_id_is_rejected():
    event = call("page")
    del event["messageId"]
    assert [loc[-1] for loc, _ in errors(event)] == ["messageId"]


def test_alias_needs_previous_id():
    assert [loc[-1] for loc, _ in errors(call("alias"))] == ["previousId"]


def test_alias_needs_a_user_id_even_with_an_anonymous_id():
    found = errors(call("alias", user=None, anon="a1", previousId="a0"))
    assert [loc[-1] for loc, _ in found] == ["userId"]


def test_consent_with_an_unknown_channel_is_rejected():
    found = errors(track("Consent Updated", props={"channel": "fax", "granted": True}))
    assert [loc for loc, _ in found] == [("properties", "channel")]


def test_known_events_need_their_required_properties():
    assert ("properties",) in [loc for loc, _ in errors({**track("Order Completed"), "properties": None})]
    assert [loc for loc, _ in errors(track("Order Completed", props={"total": 5}))] == [("properties", "order_id")]
    assert [loc for loc, _ in errors(track("Promotion Clicked"))] == [("properties", "promotion_id")]


def test_an_unknown_context_channel_is_rejected():
    found = errors(call("page", context={"channel": "carrier-pigeon"}))
    assert [loc for loc, _ in found] == [("context", "channel")]


def test_order_amount_prefers_total_then_revenue_then_the_lines():
    lines = [
        Product(product_id="a", price=10.0, quantity=3),
        Product(product_id="b", price=2.5),
        Product(product_id="c"),
    ]
    assert OrderProperties(order_id="o", total=7.0, revenue=8.0, products=lines).amount() == 7.0
    assert OrderProperties(order_id="o", revenue=8.0, products=lines).amount() == 8.0
    assert OrderProperties(order_id="o", products=lines).amount() == 32.5
    assert OrderProperties(order_id="o").amount() == 0
    assert OrderProperties(order_id="o", total=0.0, revenue=8.0).amount() == 0.0, "a zero total is a total"


def test_event_name_is_the_track_name_or_the_call_type():
    assert event_name(validate(track("Order Refunded", props={"order_id": "o"}))) == "Order Refunded"
    assert event_name(validate(call("identify"))) == "identify"
    assert event_name(validate(call("page", name="Home"))) == "page"
    assert event_name(validate(call("alias", previousId="a"))) == "alias"


def test_epoch_ms_keeps_milliseconds():
    assert epoch_ms("2026-01-05T10:00:00.123Z") == 1_767_607_200_123
    parsed = validate(call("page", timestamp="2026-01-05T10:00:00.999Z"))
    assert epoch_ms(parsed.timestamp) == 1_767_607_200_999


@pytest.mark.parametrize(
    ("event", "loc"),
    [
        (track("Product Viewed", props=PRODUCT, timestamp=1767607200), ("timestamp",)),
        (track("Product Viewed", props=PRODUCT, timestamp=1767607200.5), ("timestamp",)),
        (track("Product Viewed", props=PRODUCT, timestamp="1767607200"), ("timestamp",)),
        (track("Product Viewed", props=PRODUCT, receivedAt=1767607200000), ("receivedAt",)),
        (track("Consent Updated", props={"channel": "push", "granted": "yes"}), ("properties", "granted")),
        (track("Consent Updated", props={"channel": "push", "granted": 1}), ("properties", "granted")),
        (track("Product Added", props={"product_id": "p", "quantity": "3"}), ("properties", "quantity")),
        (track("Product Added", props={"product_id": "p", "quantity": True}), ("properties", "quantity")),
        (track("Product Added", props={"product_id": "p", "price": "12.50"}), ("properties", "price")),
        (track("Product Added", props={"product_id": "p", "price": True}), ("properties", "price")),
        (track("Order Completed", props={"order_id": "o", "total": "12.50"}), ("properties", "total")),
        (track("Application Opened", props={"from_background": "false"}), ("properties", "from_background")),
        (call("identify", traits={"age": "29"}), ("traits", "age")),
        (call("identify", traits={"urban": "true"}), ("traits", "urban")),
        (call("identify", traits={"created_at": 1767607200}), ("traits", "created_at")),
        (call("page", context={"location": {"latitude": "52.5"}}), ("context", "location", "latitude")),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, tuple) else None,
)
def test_a_wrong_type_is_not_coerced(event, loc):
    assert [found for found, _ in errors(event)] == [loc]


def test_the_one_coercion_accepted_is_an_integer_valued_number_for_an_integer():
    props = validate(track("Product Added", props={"product_id": "p", "quantity": 2.0, "price": 12})).properties
    assert props.quantity == 2 and type(props.quantity) is int
    assert props.price == 12.0 and type(props.price) is float
    assert validate(call("identify", traits={"age": 29.0})).traits.age == 29
