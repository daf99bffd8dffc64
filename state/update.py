"""Apply one validated event to a customer's feature state.

Ids and names from bounded vocabularies (products, categories, stores, cities, trait values)
are interned: every customer that holds one shares a single string.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from sys import intern
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas.envelope import Envelope
from schemas.events import (
    ConsentEvent,
    IdentifyEvent,
    OrderEvent,
    ProductEvent,
    StoreVisitEvent,
    model_named,
)
from state.customer import (
    AFFINITY_K,
    CATEGORY_HALF_LIFE_MS,
    HOUR_MS,
    MAX_BOUGHT,
    PRODUCT_HALF_LIFE_MS,
    TRAIT_KEYS,
    CustomerState,
    Lifecycle,
)

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
AFFINITY_WEIGHT: dict[str, float] = {"Product Viewed": 1.0, "Product Added": 3.0, "Order Completed": 5.0}
_NOT_ACTIVITY = frozenset({"identify", "alias", "Consent Updated", "Erasure Requested"})


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@lru_cache(maxsize=65_536)
def _utc_offset_minutes(timezone: str, utc_hour: int) -> int:
    """The zone's UTC offset during one UTC hour (offsets change on whole UTC hours)."""
    zone = _zone(timezone)
    if zone is None:
        return 0
    offset = datetime.fromtimestamp(utc_hour * 3600, tz=UTC).astimezone(zone).utcoffset()
    return int(offset.total_seconds() // 60) if offset is not None else 0


def local_hour(ts_ms: int, timezone: str | None) -> int:
    """Hour of day of ``ts_ms`` in ``timezone`` (UTC when absent or unknown)."""
    if not timezone:
        return (ts_ms // HOUR_MS) % 24
    minutes = ts_ms // 60_000 + _utc_offset_minutes(timezone, ts_ms // HOUR_MS)
    return (minutes // 60) % 24


def _age_band(age: int) -> str:
    for upper, band in ((17, "<18"), (24, "18-24"), (34, "25-34"), (44, "35-44"), (54, "45-54"), (64, "55-64")):
        if age <= upper:
            return band
    return "65+"


@lru_cache(maxsize=1024)
def changed_parts(name: str) -> frozenset[str]:
    """The feature containers (:data:`state.customer.EVERY_PART`) that :func:`apply_event` may
    change in place for an event called ``name``: what a checkpoint before it must copy."""
    model = model_named(name)
    parts = set() if name in _NOT_ACTIVITY else {"counts", "hours", "session"}
    if model is ProductEvent:
        parts |= {"affinities", "session", "cart"}
    elif model is OrderEvent:
        parts.add("affinities")  # an order drops the cart: a field, not a change in place
    elif model is IdentifyEvent:
        parts.add("traits")
    elif model is ConsentEvent:
        parts.add("consent")
    return frozenset(parts)


def apply_event(state: CustomerState, env: Envelope, lifecycle: Lifecycle) -> None:
    """Update every feature ``env``'s event changes; safe for late (out-of-order) events."""
    event, name, at = env.event, env.name, env.ts_ms
    context = event.context
    if name not in _NOT_ACTIVITY:
        state.touch(at, env.message_id, lifecycle)
        state.counts.add(COUNT_KIND.get(name, "other"), at, state.last_seen_ms)
        state.seen_hour(local_hour(at, context.timezone))
        if name in ("page", "screen") and state.session is not None:
            state.session.pages += 1
    if context.store is not None:
        state.last_store = intern(context.store.id)
    if context.location is not None:
        if context.location.city:
            state.last_city = intern(context.location.city)
        if context.location.country:
            state.last_country = intern(context.location.country)

    if isinstance(event, ProductEvent):
        _apply_product(state, env, event)
    elif isinstance(event, OrderEvent):
        _apply_order(state, env, event)
    elif isinstance(event, IdentifyEvent):
        _apply_traits(state, event)
    elif isinstance(event, ConsentEvent):
        channels = ("push", "in_app", "email", "sms", "ads")
        for channel in channels if event.properties.channel == "all" else (event.properties.channel,):
            state.consent[channel] = event.properties.granted
    elif isinstance(event, StoreVisitEvent):
        state.last_store = intern(event.properties.store_id)


def _apply_product(state: CustomerState, env: Envelope, event: ProductEvent) -> None:
    props, at = event.properties, env.ts_ms
    product_id = intern(props.product_id)
    weight = AFFINITY_WEIGHT.get(env.name)
    if weight is not None:
        state.products.add(product_id, weight, at, PRODUCT_HALF_LIFE_MS, AFFINITY_K)
        if props.category:
            state.categories.add(intern(props.category), weight, at, CATEGORY_HALF_LIFE_MS, AFFINITY_K)
    if env.name == "Product Viewed" and state.session is not None:
        state.session.viewed(product_id)
    elif env.name == "Product Added":
        state.add_to_cart(props.cart_id, product_id, props.quantity, props.price or 0.0, at, env.message_id)
    elif env.name == "Product Removed":
        state.remove_from_cart(product_id, props.quantity)


def _apply_order(state: CustomerState, env: Envelope, event: OrderEvent) -> None:
    """An order's lines with a quantity of 0 or more were bought (a free or voided item adds
    nothing to spend); a negative quantity is a returned item: not bought, its value netted."""
    props, at = event.properties, env.ts_ms
    if env.name == "Order Completed":
        state.order(props.order_id, max(0.0, props.amount()), at)
        bought = [p for p in props.products if p.quantity >= 0]
        if state.last_order_ms == at:
            state.bought = tuple(intern(p.product_id) for p in bought[:MAX_BOUGHT])
        weight = AFFINITY_WEIGHT["Order Completed"]
        for product in bought[:20]:
            state.products.add(intern(product.product_id), weight, at, PRODUCT_HALF_LIFE_MS, AFFINITY_K)
            if product.category:
                state.categories.add(intern(product.category), weight, at, CATEGORY_HALF_LIFE_MS, AFFINITY_K)
        if state.cart is not None and at >= state.cart.started_ms:
            state.cart = None
    else:
        state.refund(abs(props.amount()))  # refunded lines may be sent with negative quantities


def _apply_traits(state: CustomerState, event: IdentifyEvent) -> None:
    traits = event.traits
    for key in TRAIT_KEYS:
        value = getattr(traits, key)
        if value is not None:
            state.traits[key] = intern(value) if isinstance(value, str) else value
    if traits.age is not None and traits.age_band is None:
        state.traits["age_band"] = _age_band(traits.age)
