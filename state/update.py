"""Apply one validated event to a customer's feature state.

Ids and names from bounded vocabularies (products, categories, stores, cities, trait values)
are interned in the compiled record's table: every customer that holds one shares it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas.envelope import Envelope
from schemas.events import (
    ConsentEvent,
    IdentifyEvent,
    OrderEvent,
    ProductEvent,
    StoreVisitEvent,
)
from state.customer import HOUR_MS, CustomerState, Lifecycle
from state.reference import Reference
from state.windows import KIND_CODE

COUNT_KIND: dict[str, str] = {
    "Product Viewed": "product_viewed",
    "Product Added": "product_added",
    "Product Removed": "product_removed",
    "Checkout Started": "checkout_started",
    "Order Completed": "order_completed",
    "Order Refunded": "order_refunded",
    "Order Cancelled": "order_refunded",
    "Application Opened": "application_opened",
    "page": "page",
    "screen": "screen",
    "Promotion Clicked": "promotion_clicked",
    "Push Notification Tapped": "push_tapped",
    "Store Visited": "store_visited",
}
COUNT_CODE: dict[str, int] = {name: KIND_CODE[kind] for name, kind in COUNT_KIND.items()}
"""The code of the kind an event counts as, by event name (:data:`OTHER` for the rest)."""
OTHER = KIND_CODE["other"]
PRODUCT_ACTION: dict[str, int] = {"Product Viewed": 0, "Product Added": 1, "Product Removed": 2}
"""What a product event does besides counting: 0 view (affinity 1, the session), 1 add (affinity
3, the cart), 2 remove (from the cart); :data:`OTHER_ACTION` for the rest. An order line adds
affinity 5."""
OTHER_ACTION = 3
_NOT_ACTIVITY = frozenset({"identify", "alias", "Consent Updated", "Erasure Requested"})


@lru_cache(maxsize=512)
def known_zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@lru_cache(maxsize=65_536)
def utc_offset_minutes(timezone: str, utc_hour: int) -> int:
    """The zone's UTC offset during one UTC hour (offsets change on whole UTC hours)."""
    zone = known_zone(timezone)
    if zone is None:
        return 0
    offset = datetime.fromtimestamp(utc_hour * 3600, tz=UTC).astimezone(zone).utcoffset()
    return int(offset.total_seconds() // 60) if offset is not None else 0


def local_hour(ts_ms: int, timezone: str | None) -> int:
    """Hour of day of ``ts_ms`` in ``timezone`` (UTC when absent or unknown)."""
    if not timezone:
        return (ts_ms // HOUR_MS) % 24
    minutes = ts_ms // 60_000 + utc_offset_minutes(timezone, ts_ms // HOUR_MS)
    return (minutes // 60) % 24


def _age_band(age: int) -> str:
    for upper, band in ((17, "<18"), (24, "18-24"), (34, "25-34"), (44, "35-44"), (54, "45-54"), (64, "55-64")):
        if age <= upper:
            return band
    return "65+"


def apply_event(state: CustomerState, env: Envelope, lifecycle: Lifecycle, reference: Reference | None = None) -> None:
    """Update every feature ``env``'s event changes, in one call into the customer's record; safe
    for late (out-of-order) events."""
    method, args = feature_update(env, lifecycle, reference, event_zone(env, reference))
    getattr(state.features, method)(*args)


def feature_update(
    env: Envelope, lifecycle: Lifecycle, reference: Reference | None, zone: str | None
) -> tuple[str, tuple[Any, ...]]:
    """The call into the features record that applies ``env``: the method's name and its arguments
    (read from the event first: nothing is changed if reading it fails). ``zone`` is the event's time
    zone (:func:`event_zone`); with ``reference`` data, a product event without a category or price
    takes the product's."""
    event, name, at, message_id = env.event, env.name, env.ts_ms, env.message_id
    context = event.context
    store = context.store.id if context.store is not None else None
    location = context.location
    city, country = (location.city, location.country) if location is not None else (None, None)
    if name in _NOT_ACTIVITY:
        if isinstance(event, IdentifyEvent):
            traits = event.traits
            band = _age_band(traits.age) if traits.age is not None and traits.age_band is None else None
            return "apply_identify", (
                at, message_id, store, city, country, traits.age_band, traits.city, traits.country,
                traits.urban, traits.gender, traits.loyalty_tier, band,
            )  # fmt: skip
        if isinstance(event, ConsentEvent):
            props = event.properties
            return "apply_consent", (at, message_id, store, city, country, props.channel, props.granted)
        return "apply", (at, message_id, None, 0, 0, store, city, country)
    kind, hour, timeout = COUNT_CODE.get(name, OTHER), local_hour(at, zone), lifecycle.session_timeout_ms
    if isinstance(event, ProductEvent):
        props = event.properties
        category, price = props.category, props.price
        if reference is not None and (category is None or price is None):
            category, price = product_details(reference, props.product_id, category, price)
        return "apply_product", (
            at, message_id, kind, hour, timeout, store, city, country, PRODUCT_ACTION.get(name, OTHER_ACTION),
            props.product_id, category, props.cart_id, props.quantity, price,
        )  # fmt: skip
    if isinstance(event, OrderEvent):
        props = event.properties
        return "apply_order", (
            at, message_id, kind, hour, timeout, store, city, country, name == "Order Completed",
            props.order_id, props.amount(), props.products,
        )  # fmt: skip
    if isinstance(event, StoreVisitEvent):
        store = event.properties.store_id
    return "apply", (at, message_id, kind, hour, timeout, store, city, country)


def product_details(
    reference: Reference, product_id: str, category: str | None, price: float | None
) -> tuple[str | None, float | None]:
    """An event's ``category`` and ``price``, each taken from the reference product where missing."""
    product = reference.products.get(product_id)
    if product is None:
        return category, price
    return category if category is not None else product.category, price if price is not None else product.price


def event_zone(env: Envelope, reference: Reference | None) -> str | None:
    """The time zone ``env`` was sent from: its ``context.timezone``, else (with reference data) its store's."""
    context = env.event.context
    zone = context.timezone
    if zone is None and reference is not None and context.store is not None:
        zone = reference.store_zone(context.store.id)
    return zone
