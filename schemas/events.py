"""The input event contract: Segment Spec shaped events, as msgspec Structs.

:func:`validate_event` checks a decoded JSON object and returns its event: ``type`` picks the call
(track, identify, page, screen, alias) and, for ``track``, the ``event`` name picks the model. Track
events whose name is not listed here are accepted as :class:`UnknownTrack` (counted, never rejected).
A key the models do not name is accepted and not kept (see :func:`contract_notes` for the ones counted).

Types are strict: numbers, booleans and date-times are not read from strings (see
docs/contract.md for the one coercion accepted, an integer-valued number for an integer).
Date-times stay the ISO 8601 text sent; :func:`epoch_ms` reads them.
A bad line of an order or checkout drops that line, not the event (see :class:`OrderProperties`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import msgspec
import orjson
from msgspec import Meta, Struct

from schemas.timestamps import NOT_ISO, epoch_ms

Id = Annotated[str, Meta(min_length=1, max_length=200)]
Number = float
"""A JSON number (an integer is fine), never a string or a boolean."""
Integer = int
"""A JSON integer, or an integer-valued number such as ``2.0``; never a string or a boolean."""
Bool = bool
Timestamp = str
"""ISO 8601 text with a time zone, checked by :func:`validate_event` (see schemas.timestamps)."""
Money = Annotated[Number, Meta(ge=0, le=1e9)]
Quantity = Annotated[Integer, Meta(ge=1, le=100_000)]
LineQuantity = Annotated[Integer, Meta(ge=-100_000, le=100_000)]
"""An order line's quantity: 0 for a voided, weighed or free item, negative for a returned one."""
MAX_LINES = 500


class _Model(Struct, frozen=True, gc=False):
    """Base: immutable, so empty defaults are shared; keys the model does not name are skipped."""


class Location(_Model):
    city: str | None = None
    country: str | None = None
    latitude: Annotated[Number, Meta(ge=-90, le=90)] | None = None
    longitude: Annotated[Number, Meta(ge=-180, le=180)] | None = None


class Store(_Model, kw_only=True):
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


class Product(_Model, kw_only=True):
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


class _WithLines(Struct, kw_only=True, frozen=True, dict=True):
    """Properties with ``products`` lines: a bad line is dropped (reasons in ``dropped_lines``), not the event.

    The lines of a plain event come as ``state._native.OrderLines`` (read by the event scan, each
    decoded only when read), of any other as a list: both a sequence of :class:`Product`, equal alike.
    """

    products: Annotated[list[Product], Meta(max_length=MAX_LINES)] = []
    dropped_lines: ClassVar[tuple[str, ...]] = ()
    """Why each dropped line was dropped: ``missing_<field>``, ``bad_<field>`` or ``not_an_object``."""


class OrderProperties(_WithLines, kw_only=True):
    order_id: Id
    total: Money | None = None
    revenue: Money | None = None
    currency: str | None = None
    coupon: str | None = None
    """The coupon or offer the order redeemed (an offer of the catalogue: its id)."""
    discount: Money | None = None
    """What the coupon took off the order (currency units)."""

    def amount(self) -> float:
        """What the order is worth: ``total``, else ``revenue``, else the sum of its lines (returned
        items, with a negative quantity, count against it; the sum may then be negative)."""
        if self.total is not None:
            return self.total
        if self.revenue is not None:
            return self.revenue
        if type(self.products) is not list:  # lines read by the event scan sum themselves, natively
            return self.products.amount()  # type: ignore[attr-defined]
        return sum((p.price or 0.0) * p.quantity for p in self.products)


class CheckoutProperties(_WithLines, kw_only=True):
    order_id: str | None = None
    value: Money | None = None
    revenue: Money | None = None


class CouponProperties(_Model):
    coupon_id: str | None = None
    coupon_name: str | None = None
    order_id: str | None = None
    discount: Money | None = None


class PromotionProperties(_Model, kw_only=True):
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


class ConsentProperties(_Model, kw_only=True):
    """Our own ``Consent Updated`` event: a channel granted or revoked."""

    channel: Literal["push", "in_app", "email", "sms", "ads", "all"]
    granted: Bool
    source: Id | None = None  # where the change came from (app settings, a preference centre...)


class StoreVisitProperties(_Model, kw_only=True):
    """Our own ``Store Visited`` event: a customer seen in a store (beacon, wifi, check-in)."""

    store_id: Id
    duration_s: Annotated[Number, Meta(ge=0, le=86_400)] | None = None


class ErasureProperties(_Model, kw_only=True):
    """Our own ``Erasure Requested`` event (GDPR/CCPA): forget this customer."""

    request_id: Id
    regulation: Literal["gdpr", "ccpa", "other"] = "gdpr"


FreeProperties = dict[str, Any]
"""Properties of track events without a model of their own (and of page and screen): kept as sent."""


class _Call(_Model, kw_only=True):
    messageId: Id
    userId: Id | None = None
    anonymousId: Id | None = None
    timestamp: Timestamp
    receivedAt: Timestamp | None = None
    sentAt: Timestamp | None = None
    context: Context = Context()

    @property
    def customer_id(self) -> str:
        """The key state is kept under: ``userId``, else ``anonymousId``."""
        return self.userId or self.anonymousId  # type: ignore[return-value]


class _Track(_Call, kw_only=True):
    type: Literal["track"]
    event: Annotated[str, Meta(min_length=1, max_length=200)]


class ProductEvent(_Track, kw_only=True):
    event: Literal["Product Viewed", "Product Added", "Product Removed", "Product Clicked"]
    properties: ProductProperties


class OrderEvent(_Track, kw_only=True):
    event: Literal["Order Completed", "Order Refunded", "Order Cancelled"]
    properties: OrderProperties


class CheckoutEvent(_Track, kw_only=True):
    event: Literal["Checkout Started"]
    properties: CheckoutProperties = CheckoutProperties()


class CouponEvent(_Track, kw_only=True):
    event: Literal["Coupon Applied"]
    properties: CouponProperties = CouponProperties()


class PromotionEvent(_Track, kw_only=True):
    event: Literal["Promotion Viewed", "Promotion Clicked"]
    properties: PromotionProperties


class ApplicationEvent(_Track, kw_only=True):
    event: Literal["Application Opened", "Application Installed", "Application Backgrounded"]
    properties: ApplicationOpenedProperties = ApplicationOpenedProperties()


class PushEvent(_Track, kw_only=True):
    event: Literal["Push Notification Received", "Push Notification Tapped"]
    properties: PushProperties = PushProperties()


class SignedUpEvent(_Track, kw_only=True):
    event: Literal["Signed Up"]
    properties: FreeProperties = {}


class ConsentEvent(_Track, kw_only=True):
    event: Literal["Consent Updated"]
    properties: ConsentProperties


class StoreVisitEvent(_Track, kw_only=True):
    event: Literal["Store Visited"]
    properties: StoreVisitProperties


class ErasureEvent(_Track, kw_only=True):
    event: Literal["Erasure Requested"]
    properties: ErasureProperties


class UnknownTrack(_Track, kw_only=True):
    """A track event this contract does not model: kept, counted, never rejected."""

    properties: FreeProperties = {}


class Traits(_Model):
    """Identify traits; the typed ones feed features, ``email`` and ``phone`` are kept only as hashes
    (schemas.match_keys: a value that does not normalise is counted, not rejected), the rest are accepted
    and not kept."""

    age: Annotated[Integer, Meta(ge=0, le=130)] | None = None
    age_band: str | None = None
    city: str | None = None
    country: str | None = None
    urban: Bool | None = None
    gender: str | None = None
    loyalty_tier: str | None = None
    created_at: Timestamp | None = None
    email: Any = None
    phone: Any = None


class IdentifyEvent(_Call, kw_only=True):
    type: Literal["identify"]
    traits: Traits = Traits()


class PageEvent(_Call, kw_only=True):
    type: Literal["page"]
    name: str | None = None
    category: str | None = None
    properties: FreeProperties = {}


class ScreenEvent(_Call, kw_only=True):
    type: Literal["screen"]
    name: str | None = None
    properties: FreeProperties = {}


class AliasEvent(_Call, kw_only=True):
    """Links ``previousId`` (usually an anonymous id) to ``userId``."""

    type: Literal["alias"]
    previousId: Id
    userId: Id


class _Invalid(Struct):
    """What an event of no known ``type`` is checked against, to say what is wrong with its ``type``."""

    type: Literal["track", "identify", "page", "screen", "alias"]


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


def _field(model: type[Struct], name: str) -> msgspec.structs.FieldInfo:
    return next(info for info in msgspec.structs.fields(model) if info.name == name)


def field_names(model: type[Struct]) -> frozenset[str]:
    """The keys a model reads."""
    return frozenset(info.name for info in msgspec.structs.fields(model))


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
    for name in get_args(_field(model, "event").type)
}
KNOWN_TRACK_EVENTS: frozenset[str] = frozenset(TRACK_MODELS)
CALL_MODELS: dict[str, type[_Call]] = {
    "identify": IdentifyEvent,
    "page": PageEvent,
    "screen": ScreenEvent,
    "alias": AliasEvent,
}


def model_for(data: dict[str, Any]) -> type[Struct]:
    """The model an event object is checked against, from its ``type`` and (track) ``event``."""
    kind = data.get("type")
    if kind == "track":
        name = data.get("event")
        return TRACK_MODELS.get(name, UnknownTrack) if type(name) is str else UnknownTrack
    return CALL_MODELS.get(kind, _Invalid) if type(kind) is str else _Invalid


def model_named(name: str) -> type[_Call]:
    """The model of an accepted event called ``name`` (see :func:`event_name`)."""
    return TRACK_MODELS.get(name) or CALL_MODELS.get(name) or UnknownTrack


class ContractError(ValueError):
    """An event that breaks the contract: its ``problems`` as ``(path, problem)``, the path naming the
    field (``properties.price``, or empty for the event as a whole), in the order the models list the
    fields; ``messages`` as dead letters carry them (``path: problem``)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        self.messages = [f"{path}: {problem}" if path else problem for path, problem in problems]
        super().__init__("; ".join(self.messages))


def validate_event(data: dict[str, Any]) -> tuple[AnyEvent, int, int | None]:
    """The event a decoded JSON object holds, with its ``timestamp`` and ``receivedAt`` in epoch
    milliseconds; :class:`ContractError` if it breaks the contract. ``data`` is left as it is."""
    model = model_for(data)
    try:
        event = msgspec.convert(data, model)
    except msgspec.ValidationError as err:
        event = _repaired(data, model, err)
    try:
        ts_ms, received_ms = _times(event)
    except ValueError:
        raise _rejection(model, data) from None
    if event.userId is None and event.anonymousId is None:
        raise ContractError([("", "Value error, userId or anonymousId is required")])
    return event, ts_ms, received_ms


def _times(
    event: Any, read: Callable[[str], int] = epoch_ms, ts_ms: int | None = None, received_ms: int | None = None
) -> tuple[int, int | None]:
    """The event's ``timestamp`` and ``receivedAt`` in epoch milliseconds (``ts_ms`` and ``received_ms``
    if they were read already), once all its date-times are read (by ``read``, :func:`epoch_ms` or the
    same faster); ValueError if one is not a date-time."""
    if ts_ms is None:
        ts_ms = read(event.timestamp)
    if received_ms is None and event.receivedAt is not None:
        received_ms = read(event.receivedAt)
    if event.sentAt is not None:
        read(event.sentAt)
    if type(event) is IdentifyEvent and event.traits.created_at is not None:
        read(event.traits.created_at)
    return ts_ms, received_ms


EVENT_MODELS: tuple[type[_Call], ...] = (*CALL_MODELS.values(), *dict.fromkeys(TRACK_MODELS.values()), UnknownTrack)
"""Every model an accepted event can be."""
_DECODERS = {model: msgspec.json.Decoder(model) for model in EVENT_MODELS}


def plain_decoder(model: type[_Call]) -> Callable[[bytes], AnyEvent]:
    """The JSON decoder :func:`decode_plain` decodes ``model`` with."""
    return _DECODERS[model].decode


def decode_plain(
    raw: bytes,
    model: type[_Call],
    read_time: Callable[[str], int] = epoch_ms,
    ts_ms: int | None = None,
    received_ms: int | None = None,
    lines: tuple[Sequence[Product], bytes] | None = None,
) -> tuple[AnyEvent, int, int | None] | None:
    """What :func:`validate_event` gives for the JSON object ``raw``, decoded straight into ``model``
    (one pass, no dicts), or None when that is not enough: a problem, a coercion, a dropped line.

    Only for bytes known to be plain (``state._native.EventScan``): one JSON object that decoders
    read alike, with no repeated key, and ``model`` the one :func:`model_for` picks for it.
    ``read_time`` reads date-times as :func:`epoch_ms` does (``state._native.EpochMs`` is faster);
    ``ts_ms`` and ``received_ms`` are the ``timestamp`` and ``receivedAt`` if already read from ``raw``;
    ``lines`` are the order lines already read and checked, with ``raw`` without them: the rest is
    decoded and the lines put in.
    """
    try:
        event = _DECODERS[model].decode(raw if lines is None else lines[1])
        ts_ms, received_ms = _times(event, read_time, ts_ms, received_ms)
    except (msgspec.MsgspecError, ValueError):
        return None
    if event.userId is None and event.anonymousId is None:
        return None
    if lines is not None:
        msgspec.structs.force_setattr(event.properties, "products", lines[0])
    return event, ts_ms, received_ms


decode_line = msgspec.json.Decoder(Product).decode
"""One order line's JSON as its model (for lines the event scan has checked)."""


def decode_event(raw: bytes, name: str) -> AnyEvent:
    """The event of bytes accepted before as an event called ``name`` (after crossing processes)."""
    try:
        return msgspec.json.decode(raw, type=model_named(name))
    except (msgspec.MsgspecError, RecursionError):  # a coercion, a dropped line, deep nesting: the general way
        return validate_event(orjson.loads(raw))[0]


# The slow way, only when msgspec refused the event: an integer-valued number for an integer is
# accepted, and a bad order line is dropped; anything else is the event's error.
_AT = re.compile(r"(.*) - at `\$(.*)`", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_MISSING = re.compile(r"Object missing required field `(.*)`")
_WANTS_INT = re.compile(r"Expected `int( \| null)?`, got `float`")
_MAX_REPAIRS = 8
MAX_PROBLEMS = 20
"""Problems a refused event's dead letter names."""
FieldPath = tuple[str | int, ...]
"""Where a value is in an event: ``("properties", "products", 1, "quantity")``."""


def _repaired(data: dict[str, Any], model: type[Any], err: msgspec.ValidationError) -> Any:
    """The event once integer-valued numbers are integers and bad order lines are dropped."""
    fixed, dropped = data, ()
    for _ in range(_MAX_REPAIRS):
        path, problem = _where(err)
        if issubclass(model, (OrderEvent, CheckoutEvent)) and len(path) > 2 and path[:2] == ("properties", "products"):
            fixed, dropped = _without_bad_lines(fixed)
        elif _WANTS_INT.fullmatch(problem) and _integral(_at(fixed, path)):
            fixed = _replaced(fixed, path, int(_at(fixed, path)))
        else:
            raise _rejection(model, data, (path, problem)) from None
        try:
            event = msgspec.convert(fixed, model)
        except msgspec.ValidationError as again:
            err = again
            continue
        if dropped:
            msgspec.structs.force_setattr(event.properties, "dropped_lines", dropped)
        return event
    raise _rejection(model, data, _where(err))


def _where(err: msgspec.ValidationError) -> tuple[FieldPath, str]:
    """The path (``("properties", "products", 1, "quantity")``) and problem of a msgspec error."""
    message = str(err)
    found = _AT.fullmatch(message)
    problem, where = (found.group(1), found.group(2)) if found else (message, "")
    path: list[str | int] = [key if key is not None else int(index) for key, index in _STEP.findall(where)]
    missing = _MISSING.fullmatch(problem)
    if missing:
        path.append(missing.group(1))
        problem = "Field required"
    return tuple(path), problem


_BOUND = re.compile(r"Expected `\w+` (>=|<=) (.*)")
_LENGTH = re.compile(r"Expected `(str|array)` of length (>=|<=) (\d+)")
_WRONG_TYPE = re.compile(r"Expected `(\w+)( \| null)?`, got `\w+`")
_KINDS = {"float": "number", "int": "integer", "str": "string", "bool": "boolean", "array": "list"}
_TIMESTAMPS = frozenset({"timestamp", "receivedAt", "sentAt", "created_at"})


def _rejection(model: type[Any], data: dict[str, Any], first: tuple[FieldPath, str] | None = None) -> ContractError:
    """Every problem of a refused event (``first``, the one msgspec met, if no other is found), in the
    words dead letters have always used."""
    problems: list[tuple[FieldPath, str]] = []
    _walk(model, data, (), problems)
    if not problems and first is not None:
        problems.append(first)
    worded = [(".".join(map(str, path)), _worded(model, data, path, problem)) for path, problem in problems]
    return ContractError(worded[:MAX_PROBLEMS])


def _walk(target: Any, value: Any, path: FieldPath, problems: list[tuple[FieldPath, str]]) -> None:
    """Collect the problems of ``value`` checked against ``target``, field by field."""
    bare = _bare(target)
    if type(value) is dict and isinstance(bare, type) and issubclass(bare, Struct):
        found: list[tuple[FieldPath, str]] = []
        for info in _in_order(bare):
            if info.name in value:
                _walk(info.type, value[info.name], (*path, info.name), found)
            elif info.required:
                found.append(((*path, info.name), "Field required"))
        lines = (*path, "products")
        if not (issubclass(bare, _WithLines) and all(where[: len(lines)] == lines != where for where, _ in found)):
            problems.extend(found)  # problems only in order lines are not: those lines are dropped
        return
    try:
        msgspec.convert(int(value) if bare is int and _integral(value) else value, target)
    except msgspec.ValidationError as err:
        inner, problem = _where(err)
        if inner and type(value) is list:
            for n, item in enumerate(value):
                _walk(get_args(bare)[0], item, (*path, n), problems)
        else:
            problems.append(((*path, *inner), problem))
        return
    if path and path[-1] in _TIMESTAMPS and type(value) is str:
        try:
            epoch_ms(value)
        except ValueError as err:
            problems.append((path, str(err)))


def _in_order(model: type[Struct]) -> list[msgspec.structs.FieldInfo]:
    """A model's fields in the order its classes list them (base classes first)."""
    fields = {info.name: info for info in msgspec.structs.fields(model)}
    names = dict.fromkeys(name for cls in reversed(model.__mro__) for name in vars(cls).get("__annotations__", {}))
    return [fields[name] for name in names if name in fields]


def _worded(model: type[Any], data: Any, path: FieldPath, problem: str) -> str:
    """msgspec's ``problem`` with the value at ``path``, said as dead letters have always said it."""
    if problem == "Field required":
        return problem
    target = _target(model, path)
    if get_origin(target) is Literal:
        *first, last = (repr(choice) for choice in get_args(target))
        return f"Input should be {', '.join(first)} or {last}" if first else f"Input should be {last}"
    if path and path[-1] in _TIMESTAMPS:
        return f"Value error, {NOT_ISO}" if problem.startswith("Expected") or problem == NOT_ISO else problem
    if length := _LENGTH.fullmatch(problem):
        kind, bound, size = length.groups()
        if kind == "array":
            return f"List should have at most {size} items after validation, not {len(_at(data, path))}"
        limit = "at least" if bound == ">=" else "at most"
        return f"String should have {limit} {size} character{'' if size == '1' else 's'}"
    if bound := _BOUND.fullmatch(problem):
        value, limit = _at(data, path), float(bound.group(2))
        if value != value or value in (float("inf"), float("-inf")):
            return "Input should be a finite number"
        side = "greater" if bound.group(1) == ">=" else "less"
        return f"Input should be {side} than or equal to {int(limit) if limit.is_integer() else limit}"
    if wrong := _WRONG_TYPE.fullmatch(problem):
        kind = wrong.group(1)
        if kind in _KINDS:
            return f"Input should be a valid {_KINDS[kind]}"
        if kind == "object" and isinstance(target, type) and issubclass(target, Struct):
            return f"Input should be a valid dictionary or instance of {target.__name__}"
        if kind == "object":
            return "Input should be a valid dictionary" + (
                " or instance of FreeProperties" if path == ("properties",) else ""
            )
    return problem


def _target(model: Any, path: FieldPath) -> Any:
    """The type the value at ``path`` is checked against (``Any`` where that is not a Struct field)."""
    target = model
    for step in path:
        target = _bare(target)
        if type(step) is int and get_origin(target) is list:
            target = get_args(target)[0]
        elif isinstance(target, type) and issubclass(target, Struct):
            target = next((info.type for info in msgspec.structs.fields(target) if info.name == step), Any)
        else:
            return Any
    return _bare(target)


def _bare(target: Any) -> Any:
    """``target`` without its constraints and ``| None``."""
    while True:
        if get_origin(target) is Annotated:
            target = get_args(target)[0]
        elif get_origin(target) in (Union, UnionType) and type(None) in get_args(target):
            rest = [member for member in get_args(target) if member is not type(None)]
            if len(rest) != 1:
                return target
            target = rest[0]
        else:
            return target


def _integral(value: Any) -> bool:
    return type(value) is float and value.is_integer()


def _at(data: Any, path: FieldPath) -> Any:
    for step in path:
        data = data[step]
    return data


def _replaced(data: Any, path: FieldPath, value: Any) -> Any:
    """A copy of ``data`` with ``value`` at ``path`` (the containers on the way copied, the rest shared)."""
    if not path:
        return value
    copy = list(data) if isinstance(data, list) else dict(data)
    copy[path[0]] = _replaced(data[path[0]], path[1:], value)  # type: ignore[index]
    return copy


_LINE_FIELDS = _in_order(Product)


def _without_bad_lines(data: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A copy of ``data`` without its bad order lines (integer-valued quantities made integers), and
    why each was dropped."""
    kept, dropped = [], []
    for line in data["properties"]["products"]:
        line, problem = _checked_line(line)
        if problem is None:
            kept.append(line)
        else:
            dropped.append(problem)
    return {**data, "properties": {**data["properties"], "products": kept}}, tuple(dropped)


def _checked_line(line: Any) -> tuple[Any, str | None]:
    """The line (its quantity an integer if it was an integer-valued number), or what is wrong with
    it: the first bad field in the order the model lists them (a good line is checked whole, once)."""
    if type(line) is not dict:
        return line, "not_an_object"
    try:
        msgspec.convert(line, Product)
        return line, None
    except msgspec.ValidationError:
        pass
    for info in _LINE_FIELDS:
        if info.name not in line:
            if info.required:
                return line, f"missing_{info.name}"
            continue
        value = line[info.name]
        if info.name == "quantity" and _integral(value):
            line = {**line, "quantity": int(value)}
            value = line["quantity"]
        try:
            msgspec.convert(value, info.type)
        except msgspec.ValidationError:
            return line, f"bad_{info.name}"
    return line, None


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
_KNOWN_FIELDS: dict[type[Any], frozenset[str]] = {
    model: SEGMENT_FIELDS | field_names(model)
    for model in {*TRACK_MODELS.values(), *CALL_MODELS.values(), UnknownTrack}
}
_KNOWN_CONTEXT = SEGMENT_CONTEXT | field_names(Context)
_KNOWN_STORE = field_names(Store)
_KNOWN_LOCATION = SEGMENT_LOCATION | field_names(Location)
_KNOWN_LINE = SEGMENT_LINE | field_names(Product)
_WITH_LINES = frozenset({OrderEvent, CheckoutEvent})
_CLOSED_PROPERTIES = {
    event: field_names(_field(event, "properties").type) for event in (ConsentEvent, StoreVisitEvent, ErasureEvent)
}


def closed_containers(model: type[_Call]) -> list[tuple[tuple[str | None, ...], frozenset[str]]]:
    """The containers of a ``model`` event whose unknown keys :func:`contract_notes` counts, by path
    (``None`` for any element of a list), with the keys known there."""
    containers = [
        ((), _KNOWN_FIELDS[model]),
        (("context",), _KNOWN_CONTEXT),
        (("context", "store"), _KNOWN_STORE),
        (("context", "location"), _KNOWN_LOCATION),
    ]
    if model in _WITH_LINES:
        containers.append((("properties", "products", None), _KNOWN_LINE))
    elif model in _CLOSED_PROPERTIES:
        containers.append((("properties",), _CLOSED_PROPERTIES[model]))
    return containers


MAX_PATH_KEY = 100
"""Characters of an unknown key kept in its path."""

Note = tuple[str, str, int]
"""``("order_lines_dropped", reason, lines)`` or ``("unknown_fields", path, times)``: each reason or
path once, with how many lines were dropped for it or how many times the path came (a key on
every line of an order comes once per line)."""


def contract_notes(event: AnyEvent, data: dict[str, Any]) -> tuple[Note, ...]:
    """What a valid event carries that an integrator should hear of: the order or checkout lines
    dropped, and the keys of closed containers (see above) the contract does not know, in the order
    they first came.

    ``data`` is the decoded JSON the event was validated from.
    """
    notes: list[tuple[str, str]] = []
    kind = type(event)
    known = _KNOWN_FIELDS[kind]
    if not data.keys() <= known:
        _unknown(notes, "", data, known)
    context = data.get("context")
    if context:
        if not context.keys() <= _KNOWN_CONTEXT:
            _unknown(notes, "context.", context, _KNOWN_CONTEXT)
        store, location = context.get("store"), context.get("location")
        if store and not store.keys() <= _KNOWN_STORE:
            _unknown(notes, "context.store.", store, _KNOWN_STORE)
        if location and not location.keys() <= _KNOWN_LOCATION:
            _unknown(notes, "context.location.", location, _KNOWN_LOCATION)
    if kind in _WITH_LINES:
        notes.extend(("order_lines_dropped", reason) for reason in event.properties.dropped_lines)  # type: ignore[union-attr]
        for line in (data.get("properties") or {}).get("products", ()):
            if type(line) is dict and not line.keys() <= _KNOWN_LINE:
                _unknown(notes, "properties.products[].", line, _KNOWN_LINE)
    elif kind in _CLOSED_PROPERTIES and not data["properties"].keys() <= _CLOSED_PROPERTIES[kind]:
        _unknown(notes, "properties.", data["properties"], _CLOSED_PROPERTIES[kind])
    return tuple((about, detail, times) for (about, detail), times in Counter(notes).items()) if notes else ()


def _unknown(notes: list[tuple[str, str]], prefix: str, container: dict[str, Any], known: frozenset[str]) -> None:
    notes.extend(("unknown_fields", prefix + key[:MAX_PATH_KEY]) for key in container if key not in known)


def unknown_field_notes(paths: list[tuple[str, int]]) -> tuple[Note, ...]:
    """The notes of unknown fields found at ``paths``, each with how many times (as
    :func:`contract_notes` words them)."""
    return tuple([("unknown_fields", path, times) for path, times in paths])


def is_track(model: type[_Call]) -> bool:
    """Whether events of ``model`` are named by their ``event`` (see :func:`event_name`)."""
    return issubclass(model, _Track)


def event_name(event: AnyEvent) -> str:
    """The name rules listen to: the track ``event``, else the call type (``identify``...)."""
    return event.event if isinstance(event, _Track) else event.type
