"""The input event contract: Segment Spec shaped events.

One ``TypeAdapter`` over a discriminated union validates every event: ``type`` picks
the call (track, identify, page, screen, alias) and, for ``track``, the ``event`` name
picks the properties model. Track events whose name is not listed here are accepted
as :class:`UnknownTrack` (counted, never rejected).

Types are strict: numbers, booleans and date-times are not read from strings (see
docs/contract.md for the one coercion accepted, an integer-valued number for an integer).
A bad line of an order or checkout drops that line, not the event (see :class:`OrderProperties`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)


def _integral(value: Any) -> Any:
    """An integer-valued float (``2.0``) as an int; anything else as sent, for the strict check."""
    return int(value) if type(value) is float and value.is_integer() else value


def _iso_text(value: Any) -> Any:
    """Only ISO 8601 text (or a datetime) is a date-time: not a number, not ``"1767607200"``."""
    if (type(value) is str and value[4:5] == "-") or isinstance(value, datetime):
        return value
    raise ValueError("Input should be an ISO 8601 date-time with a time zone, e.g. 2026-01-05T10:00:00Z")


Id = Annotated[str, Field(min_length=1, max_length=200)]
Number = Annotated[float, Strict()]
"""A JSON number (an integer is fine), never a string or a boolean."""
Integer = Annotated[int, Strict(), BeforeValidator(_integral)]
"""A JSON integer, or an integer-valued number such as ``2.0``; never a string or a boolean."""
Bool = Annotated[bool, Strict()]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_text)]
Money = Annotated[Number, Field(ge=0, le=1e9)]
Quantity = Annotated[Integer, Field(ge=1, le=100_000)]
LineQuantity = Annotated[Integer, Field(ge=-100_000, le=100_000)]
"""An order line's quantity: 0 for a voided, weighed or free item, negative for a returned one."""


class _Model(BaseModel):
    """Base: unknown fields are kept (Segment adds many), numbers must be finite."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class Location(_Model):
    city: str | None = None
    country: str | None = None
    latitude: Annotated[Number, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[Number, Field(ge=-180, le=180)] | None = None


class Store(_Model):
    id: Id
    name: str | None = None
    city: str | None = None
    country: str | None = None


class Context(_Model):
    """Where an event came from: ``channel`` is web, app, pos, kiosk or server."""

    channel: Literal["web", "app", "pos", "kiosk", "server"] | None = None
    store: Store | None = None
    location: Location | None = None
    timezone: str | None = None
    locale: str | None = None


class Product(_Model):
    """A line of an order or checkout (a returned item has a negative ``quantity``)."""

    product_id: Id
    sku: str | None = None
    name: str | None = None
    category: str | None = None
    brand: str | None = None
    price: Money | None = None
    quantity: LineQuantity = 1


class ProductProperties(Product):
    quantity: Quantity = 1
    cart_id: str | None = None
    currency: str | None = None


Lines = Annotated[list[Product], Field(max_length=500)]


class _WithLines(_Model):
    """Properties with ``products`` lines: a bad line is dropped (reasons in ``dropped_lines``), not the event."""

    products: Lines = []
    _dropped: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _drop_bad_lines(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except ValidationError as err:
            bad = _bad_lines(err)
            if not bad:
                raise
            kept = [line for n, line in enumerate(data["products"]) if n not in bad]
            properties = handler({**data, "products": kept})
            properties._dropped = tuple(bad.values())
            return properties

    @property
    def dropped_lines(self) -> tuple[str, ...]:
        """Why each dropped line was dropped: ``missing_<field>``, ``bad_<field>`` or ``not_an_object``."""
        return self._dropped


def _bad_lines(err: ValidationError) -> dict[int, str] | None:
    """Line number -> why it is bad, when every error lies within a line of ``products``; else None."""
    bad: dict[int, str] = {}
    for error in err.errors(include_url=False, include_context=False, include_input=False):
        loc = error["loc"]
        if len(loc) < 2 or loc[0] != "products" or type(loc[1]) is not int:
            return None
        bad.setdefault(loc[1], _line_problem(loc[2:], error["type"]))
    return bad


def _line_problem(field: tuple[Any, ...], kind: str) -> str:
    if not field:
        return "not_an_object"
    return f"{'missing' if kind == 'missing' else 'bad'}_{field[0]}"


class OrderProperties(_WithLines):
    order_id: Id
    total: Money | None = None
    revenue: Money | None = None
    currency: str | None = None
    coupon: str | None = None

    def amount(self) -> float:
        """What the order is worth: ``total``, else ``revenue``, else the sum of its lines (returned
        items, with a negative quantity, count against it; the sum may then be negative)."""
        if self.total is not None:
            return self.total
        if self.revenue is not None:
            return self.revenue
        return sum((p.price or 0.0) * p.quantity for p in self.products)


class CheckoutProperties(_WithLines):
    order_id: str | None = None
    value: Money | None = None
    revenue: Money | None = None


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
    from_background: Bool | None = None
    version: str | None = None
    build: str | None = None


class PushProperties(_Model):
    """``trigger_id`` names the nudgeflow decision that sent the push, when known."""

    trigger_id: str | None = None
    campaign: dict[str, Any] | None = None


class ConsentProperties(_Model):
    """Our own ``Consent Updated`` event: a channel granted or revoked."""

    channel: Literal["push", "in_app", "email", "sms", "ads", "all"]
    granted: Bool


class StoreVisitProperties(_Model):
    """Our own ``Store Visited`` event: a customer seen in a store (beacon, wifi, check-in)."""

    store_id: Id
    duration_s: Annotated[Number, Field(ge=0, le=86_400)] | None = None


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
    timestamp: Timestamp
    receivedAt: Timestamp | None = None
    sentAt: Timestamp | None = None
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

    age: Annotated[Integer, Field(ge=0, le=130)] | None = None
    age_band: str | None = None
    city: str | None = None
    country: str | None = None
    urban: Bool | None = None
    gender: str | None = None
    loyalty_tier: str | None = None
    created_at: Timestamp | None = None


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


# Containers where an unknown key is likely a mapping mistake ("closed"), with the keys the
# Segment Spec (or a common collector) sends there besides the modelled ones. Other containers
# (the properties of most events, traits, campaign...) are open: anything goes.
SEGMENT_FIELDS = frozenset(
    [
        "anonymousId",
        "userId",
        "messageId",
        "type",
        "event",
        "timestamp",
        "receivedAt",
        "sentAt",
        "originalTimestamp",
        "context",
        "integrations",
        "properties",
        "traits",
        "name",
        "category",
        "previousId",
        "groupId",
        "version",
        "channel",
        "writeKey",
        "projectId",
        "_metadata",
    ]
)
SEGMENT_CONTEXT = frozenset(
    [
        "active",
        "app",
        "campaign",
        "device",
        "ip",
        "library",
        "locale",
        "location",
        "network",
        "os",
        "page",
        "referrer",
        "screen",
        "groupId",
        "timezone",
        "traits",
        "userAgent",
        "userAgentData",
        "instanceId",
        "protocols",
        "consent",
        "personas",
        "externalIds",
    ]
)
SEGMENT_LOCATION = frozenset({"region", "speed"})
SEGMENT_LINE = frozenset({"variant", "coupon", "position", "url", "image_url"})
_KNOWN_STORE = frozenset(Store.model_fields)
_KNOWN_LOCATION = SEGMENT_LOCATION | Location.model_fields.keys()
_KNOWN_LINE = SEGMENT_LINE | Product.model_fields.keys()
_WITH_LINES = frozenset({OrderEvent, CheckoutEvent})
_CLOSED_PROPERTIES = {
    event: frozenset(event.model_fields["properties"].annotation.model_fields)  # type: ignore[union-attr]
    for event in (ConsentEvent, StoreVisitEvent, ErasureEvent)
}
MAX_PATH_KEY = 100
"""Characters of an unknown key kept in its path."""

Note = tuple[str, str]
"""``("order_lines_dropped", reason)`` or ``("unknown_fields", path)``."""


def contract_notes(event: AnyEvent, data: dict[str, Any]) -> tuple[Note, ...]:
    """What a valid event carries that an integrator should hear of: each order or checkout line
    dropped, and each key of a closed container (see above) the contract does not know.

    ``data`` is the decoded JSON the event was validated from. Reading a model's attribute costs
    several times a dict lookup, so the models are read only where that is the one check needed.
    """
    notes: list[Note] = []
    if event.__pydantic_extra__:
        _unknown(notes, "", event.__pydantic_extra__, SEGMENT_FIELDS)
    context = data.get("context")
    if context:
        if event.context.__pydantic_extra__:
            _unknown(notes, "context.", event.context.__pydantic_extra__, SEGMENT_CONTEXT)
        store, location = context.get("store"), context.get("location")
        if store and not store.keys() <= _KNOWN_STORE:
            _unknown(notes, "context.store.", store, _KNOWN_STORE)
        if location and not location.keys() <= _KNOWN_LOCATION:
            _unknown(notes, "context.location.", location, _KNOWN_LOCATION)
    kind = type(event)  # not isinstance: that goes through pydantic's ABC metaclass, slowly
    if kind in _WITH_LINES:
        notes.extend(("order_lines_dropped", reason) for reason in event.properties.dropped_lines)
        for line in (data.get("properties") or {}).get("products", ()):
            if type(line) is dict and not line.keys() <= _KNOWN_LINE:
                _unknown(notes, "properties.products[].", line, _KNOWN_LINE)
    elif kind in _CLOSED_PROPERTIES and not data["properties"].keys() <= _CLOSED_PROPERTIES[kind]:
        _unknown(notes, "properties.", data["properties"], _CLOSED_PROPERTIES[kind])
    return tuple(notes) if notes else ()


def _unknown(notes: list[Note], prefix: str, container: dict[str, Any], known: frozenset[str]) -> None:
    notes.extend(("unknown_fields", prefix + key[:MAX_PATH_KEY]) for key in container if key not in known)


def event_name(event: AnyEvent) -> str:
    """The name rules listen to: the track ``event``, else the call type (``identify``...)."""
    return event.event if isinstance(event, _Track) else event.type


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime."""
    return int(moment.timestamp() * 1000)
