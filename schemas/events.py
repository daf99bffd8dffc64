"""The input event contract: Segment Spec shaped events.

One ``TypeAdapter`` over a discriminated union validates every event: ``type`` picks
the call (track, identify, page, screen, alias) and, for ``track``, the ``event`` name
picks the properties model. Track events whose name is not listed here are accepted
as :class:`UnknownTrack` (counted, never rejected).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    model_validator,
)

Id = Annotated[str, Field(min_length=1, max_length=200)]
Money = Annotated[float, Field(ge=0, le=1e9)]
Quantity = Annotated[int, Field(ge=1, le=100_000)]


class _Model(BaseModel):
    """Base: unknown fields are kept (Segment adds many), numbers must be finite."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class Location(_Model):
    city: str | None = None
    country: str | None = None
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None


class Store(_Model):
    id: Id
    name: str | None = None
    city: str | None = None


class Context(_Model):
    """Where an event came from: ``channel`` is web, app, pos, kiosk or server."""

    channel: Literal["web", "app", "pos", "kiosk", "server"] | None = None
    store: Store | None = None
    location: Location | None = None
    timezone: str | None = None
    locale: str | None = None


class Product(_Model):
    product_id: Id
    sku: str | None = None
    name: str | None = None
    category: str | None = None
    brand: str | None = None
    price: Money | None = None
    quantity: Quantity = 1


class ProductProperties(Product):
    cart_id: str | None = None
    currency: str | None = None


class OrderProperties(_Model):
    order_id: Id
    total: Money | None = None
    revenue: Money | None = None
    currency: str | None = None
    coupon: str | None = None
    products: Annotated[list[Product], Field(max_length=500)] = []

    def amount(self) -> float:
        """What the order is worth: ``total``, else ``revenue``, else the sum of its lines."""
        if self.total is not None:
            return self.total
        if self.revenue is not None:
            return self.revenue
        return sum((p.price or 0.0) * p.quantity for p in self.products)


class CheckoutProperties(_Model):
    order_id: str | None = None
    value: Money | None = None
    revenue: Money | None = None
    products: Annotated[list[Product], Field(max_length=500)] = []


class CouponProperties(_Model):
    coupon_id: str | None = None
    coupon_name: str | None = None
    order_id: str | None = None
    discount: Money | None = None


class PromotionProperties(_Model):
    promotion_id: Id
    name: str | None = None
    creative: str | None = None
    position: str | None = None


class ApplicationOpenedProperties(_Model):
    from_background: bool | None = None
    version: str | None = None
    build: str | None = None


class PushProperties(_Model):
    """``trigger_id`` names the nudgeflow decision that sent the push, when known."""

    trigger_id: str | None = None
    campaign: dict[str, Any] | None = None


class ConsentProperties(_Model):
    """Our own ``Consent Updated`` event: a channel granted or revoked."""

    channel: Literal["push", "in_app", "email", "sms", "ads", "all"]
    granted: bool


class StoreVisitProperties(_Model):
    """Our own ``Store Visited`` event: a customer seen in a store (beacon, wifi, check-in)."""

    store_id: Id
    duration_s: Annotated[float, Field(ge=0, le=86_400)] | None = None


class ErasureProperties(_Model):
    """Our own ``Erasure Requested`` event (GDPR/CCPA): forget this customer."""

    request_id: Id
    regulation: Literal["gdpr", "ccpa", "other"] = "gdpr"


def _shared(model: type[_Model]) -> Any:
    """A default factory returning one shared empty instance (events are never mutated)."""
    empty = model()
    return lambda: empty


class FreeProperties(_Model):
    """Properties of track events without a model of their own."""


class _Call(_Model):
    messageId: Id
    userId: Id | None = None
    anonymousId: Id | None = None
    timestamp: AwareDatetime
    receivedAt: AwareDatetime | None = None
    sentAt: AwareDatetime | None = None
    context: Context = Field(default_factory=_shared(Context))

    @model_validator(mode="after")
    def _needs_an_id(self) -> _Call:
        if self.userId is None and self.anonymousId is None:
            raise ValueError("userId or anonymousId is required")
        return self

    @property
    def customer_id(self) -> str:
        """The key state is kept under: ``userId``, else ``anonymousId``."""
        return self.userId or self.anonymousId  # type: ignore[return-value]


class _Track(_Call):
    type: Literal["track"]
    event: Annotated[str, Field(min_length=1, max_length=200)]


class ProductEvent(_Track):
    event: Literal["Product Viewed", "Product Added", "Product Removed", "Product Clicked"]
    properties: ProductProperties


class OrderEvent(_Track):
    event: Literal["Order Completed", "Order Refunded", "Order Cancelled"]
    properties: OrderProperties


class CheckoutEvent(_Track):
    event: Literal["Checkout Started"]
    properties: CheckoutProperties = Field(default_factory=_shared(CheckoutProperties))


class CouponEvent(_Track):
    event: Literal["Coupon Applied"]
    properties: CouponProperties = Field(default_factory=_shared(CouponProperties))


class PromotionEvent(_Track):
    event: Literal["Promotion Viewed", "Promotion Clicked"]
    properties: PromotionProperties


class ApplicationEvent(_Track):
    event: Literal["Application Opened", "Application Installed", "Application Backgrounded"]
    properties: ApplicationOpenedProperties = Field(default_factory=_shared(ApplicationOpenedProperties))


class PushEvent(_Track):
    event: Literal["Push Notification Received", "Push Notification Tapped"]
    properties: PushProperties = Field(default_factory=_shared(PushProperties))


class SignedUpEvent(_Track):
    event: Literal["Signed Up"]
    properties: FreeProperties = Field(default_factory=_shared(FreeProperties))


class ConsentEvent(_Track):
    event: Literal["Consent Updated"]
    properties: ConsentProperties


class StoreVisitEvent(_Track):
    event: Literal["Store Visited"]
    properties: StoreVisitProperties


class ErasureEvent(_Track):
    event: Literal["Erasure Requested"]
    properties: ErasureProperties


class UnknownTrack(_Track):
    """A track event this contract does not model: kept, counted, never rejected."""

    properties: FreeProperties = Field(default_factory=_shared(FreeProperties))


class Traits(_Model):
    """Identify traits; the typed ones feed features, the rest are kept as sent."""

    age: Annotated[int, Field(ge=0, le=130)] | None = None
    age_band: str | None = None
    city: str | None = None
    country: str | None = None
    urban: bool | None = None
    gender: str | None = None
    loyalty_tier: str | None = None
    created_at: AwareDatetime | None = None


class IdentifyEvent(_Call):
    type: Literal["identify"]
    traits: Traits = Field(default_factory=_shared(Traits))


class PageEvent(_Call):
    type: Literal["page"]
    name: str | None = None
    category: str | None = None
    properties: FreeProperties = Field(default_factory=_shared(FreeProperties))


class ScreenEvent(_Call):
    type: Literal["screen"]
    name: str | None = None
    properties: FreeProperties = Field(default_factory=_shared(FreeProperties))


class AliasEvent(_Call):
    """Links ``previousId`` (usually an anonymous id) to ``userId``."""

    type: Literal["alias"]
    previousId: Id
    userId: Id


TRACK_MODELS: dict[str, type[_Track]] = {
    name: model
    for model in (
        ProductEvent,
        OrderEvent,
        CheckoutEvent,
        CouponEvent,
        PromotionEvent,
        ApplicationEvent,
        PushEvent,
        SignedUpEvent,
        ConsentEvent,
        StoreVisitEvent,
        ErasureEvent,
    )
    for name in model.model_fields["event"].annotation.__args__  # type: ignore[union-attr]
}
KNOWN_TRACK_EVENTS: frozenset[str] = frozenset(TRACK_MODELS)


def _tag(raw: Any) -> str:
    if not isinstance(raw, dict):
        return "invalid"
    kind = raw.get("type")
    if kind == "track":
        name = raw.get("event")
        if isinstance(name, str) and name in TRACK_MODELS:
            return name
        return "track"
    return kind if kind in ("identify", "page", "screen", "alias") else "invalid"


class _Invalid(BaseModel):
    type: Literal["track", "identify", "page", "screen", "alias"]


Event = Annotated[
    Annotated[IdentifyEvent, Tag("identify")]
    | Annotated[PageEvent, Tag("page")]
    | Annotated[ScreenEvent, Tag("screen")]
    | Annotated[AliasEvent, Tag("alias")]
    | Annotated[UnknownTrack, Tag("track")]
    | Annotated[_Invalid, Tag("invalid")]
    | Annotated[ProductEvent, Tag("Product Viewed")]
    | Annotated[ProductEvent, Tag("Product Added")]
    | Annotated[ProductEvent, Tag("Product Removed")]
    | Annotated[ProductEvent, Tag("Product Clicked")]
    | Annotated[OrderEvent, Tag("Order Completed")]
    | Annotated[OrderEvent, Tag("Order Refunded")]
    | Annotated[OrderEvent, Tag("Order Cancelled")]
    | Annotated[CheckoutEvent, Tag("Checkout Started")]
    | Annotated[CouponEvent, Tag("Coupon Applied")]
    | Annotated[PromotionEvent, Tag("Promotion Viewed")]
    | Annotated[PromotionEvent, Tag("Promotion Clicked")]
    | Annotated[ApplicationEvent, Tag("Application Opened")]
    | Annotated[ApplicationEvent, Tag("Application Installed")]
    | Annotated[ApplicationEvent, Tag("Application Backgrounded")]
    | Annotated[PushEvent, Tag("Push Notification Received")]
    | Annotated[PushEvent, Tag("Push Notification Tapped")]
    | Annotated[SignedUpEvent, Tag("Signed Up")]
    | Annotated[ConsentEvent, Tag("Consent Updated")]
    | Annotated[StoreVisitEvent, Tag("Store Visited")]
    | Annotated[ErasureEvent, Tag("Erasure Requested")],
    Discriminator(_tag),
]
"""Any input event; validate with :data:`EVENT_ADAPTER`."""

EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)

AnyEvent = (
    IdentifyEvent
    | PageEvent
    | ScreenEvent
    | AliasEvent
    | UnknownTrack
    | ProductEvent
    | OrderEvent
    | CheckoutEvent
    | CouponEvent
    | PromotionEvent
    | ApplicationEvent
    | PushEvent
    | SignedUpEvent
    | ConsentEvent
    | StoreVisitEvent
    | ErasureEvent
)


def event_name(event: AnyEvent) -> str:
    """The name rules listen to: the track ``event``, else the call type (``identify``...)."""
    return event.event if isinstance(event, _Track) else event.type


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime."""
    return int(moment.timestamp() * 1000)
