"""The features rules can read, how each is computed, and which events change it.

Rules bind names lazily through :class:`FeatureView`: a rule that reads ``cart`` computes
the cart and nothing else. ``changed_by`` lets the rule engine evaluate an audience only
on the events that can change what it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from schemas import match_keys
from schemas.envelope import Envelope
from schemas.records import iso_ms
from state._native import Features
from state.affinity import DAY_MS
from state.customer import HOUR_MS, MINUTE_MS, CustomerState, Lifecycle

ANY_EVENT: frozenset[str] = frozenset({"*"})
ORDERS = frozenset({"Order Completed", "Order Refunded", "Order Cancelled"})
CART = frozenset({"Product Added", "Product Removed", "Order Completed"})
PRODUCTS = frozenset({"Product Viewed", "Product Added", "Order Completed"})
TRAITS = frozenset({"identify"})
CONSENT = frozenset({"Consent Updated"})


_MISSING = object()


class FeatureView(Mapping[str, Any]):
    """The variables of one rule evaluation, computed on first read and cached."""

    __slots__ = ("_cache", "env", "lifecycle", "now_ms", "scorers", "state")

    def __init__(
        self,
        state: CustomerState,
        env: Envelope | None,
        now_ms: int,
        lifecycle: Lifecycle,
        scorers: Mapping[str, Callable[[FeatureView], Any]] | None = None,
    ) -> None:
        self.state = state
        self.env = env
        self.now_ms = now_ms
        self.lifecycle = lifecycle
        self.scorers = scorers
        self._cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        value = self._cache.get(name, _MISSING)
        if value is _MISSING:
            value = self._cache[name] = _GETTERS[name](self)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(FEATURES)

    def __len__(self) -> int:
        return len(FEATURES)

    def memo(self, key: str, compute: Callable[[FeatureView], Any]) -> Any:
        """``compute(self)``, once per view (for values derived from several features)."""
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            value = self._cache[key] = compute(self)
        return value

    def has_read(self, name: str) -> bool:
        """Whether ``name`` was computed for this view (e.g. a rule's condition read it)."""
        return name in self._cache

    def scored(self, model: str) -> Any:
        """A model's score of this view (``None`` where the model is off)."""
        scorer = self.scorers.get(model) if self.scorers else None
        return None if scorer is None else scorer(self)


@dataclass(frozen=True)
class Feature:
    doc: str
    get: Callable[[FeatureView], Any]
    changed_by: frozenset[str] = ANY_EVENT
    time_dependent: bool = False
    composite: bool = False  # a mapping, list or view, never a scalar nor null: decision reasons leave it out


def _days(ms: float | None) -> float | None:
    return None if ms is None else round(ms / DAY_MS, 3)


def _since(v: FeatureView, at_ms: int | None) -> float | None:
    return None if at_ms is None else _days(max(0, v.now_ms - at_ms))


def _monetary(features: Features) -> float:
    orders = features.orders
    return round(features.lifetime_spend / orders, 2) if orders else 0.0


class _View:
    """Read-only fields computed when read; also readable as ``view["field"]`` and comparable to a dict."""

    __slots__ = ()
    FIELDS: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> Any:
        if name not in self.FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return self.as_dict() == other
        return isinstance(other, _View) and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.as_dict()})"


class SessionView(_View):
    """The current session as rules see it; each field is computed only when read."""

    __slots__ = ("_features", "_times")
    FIELDS = ("id", "pages", "products_viewed", "products", "minutes")

    def __init__(self, features: Features, times: tuple[int, int, int]) -> None:
        self._features = features
        self._times = times  # started, last, pages

    @property
    def id(self) -> str:
        return self._features.session_id

    @property
    def pages(self) -> int:
        return self._times[2]

    @property
    def products_viewed(self) -> int:
        return len(self._features.session_products)

    @property
    def products(self) -> list[str]:
        return self._features.session_products

    @property
    def minutes(self) -> float:
        started, last, _ = self._times
        return round((last - started) / MINUTE_MS, 2)


class CartView(_View):
    """The current cart as rules see it (empty when there is none); fields computed when read."""

    __slots__ = ("_features", "_now_ms")
    FIELDS = ("id", "value", "items", "products", "minutes_since_add")

    def __init__(self, features: Features, now_ms: int) -> None:
        self._features = features
        self._now_ms = now_ms

    @property
    def id(self) -> str | None:
        return self._features.cart_id

    @property
    def value(self) -> float:
        return self._features.cart_value

    @property
    def items(self) -> int:
        return self._features.cart_items

    @property
    def products(self) -> list[str]:
        return sorted(self._features.cart_products)

    @property
    def minutes_since_add(self) -> float | None:
        times = self._features.cart_times
        if times is None:
            return None
        return round(max(0, self._now_ms - times[1]) / MINUTE_MS, 2)


def _session(v: FeatureView) -> SessionView | None:
    features = v.state.features
    times = features.session_times
    if times is None or v.now_ms - times[1] > v.lifecycle.session_timeout_ms:
        return None
    return SessionView(features, times)


def _cart(v: FeatureView) -> CartView:
    return CartView(v.state.features, v.now_ms)


def _event(v: FeatureView) -> dict[str, Any] | None:
    env = v.env
    if env is None:
        return None
    event = env.event
    return {
        "name": env.name,
        "properties": env.properties_as_sent(),
        "channel": event.context.channel,
        "store_id": event.context.store.id if event.context.store else None,
    }


def _counts(window: str) -> Feature:
    return Feature(
        f"events per kind in the last {window} (product_viewed, order_completed, ...)",
        lambda v: v.state.features.counts(window, v.now_ms),
        time_dependent=True,
        composite=True,
    )


FEATURES: dict[str, Feature] = {
    "customer_id": Feature("the customer's id", lambda v: v.state.id, frozenset()),
    "lifecycle": Feature(
        "'new', 'active' or 'lapsed'",
        lambda v: v.state.features.lifecycle(v.now_ms, v.lifecycle.new_days, v.lifecycle.lapse_days),
        time_dependent=True,
    ),
    "at_risk": Feature(
        "repeat buyer overdue against their own purchase rhythm, not yet lapsed",
        lambda v: v.state.features.at_risk(v.now_ms, v.lifecycle.lapse_days, v.lifecycle.at_risk_gap_factor),
        ORDERS,
        time_dependent=True,
    ),
    "recency_days": Feature(
        "days since the last order (null before the first)",
        lambda v: _since(v, v.state.features.last_order_ms),
        ORDERS,
        time_dependent=True,
    ),
    "days_since_seen": Feature(
        "days since the last activity", lambda v: _since(v, v.state.features.last_seen_ms), time_dependent=True
    ),
    "tenure_days": Feature(
        "days since first seen", lambda v: _since(v, v.state.features.first_seen_ms), frozenset(), time_dependent=True
    ),
    "orders": Feature("orders completed (RFM frequency)", lambda v: v.state.features.orders, ORDERS),
    "frequency": Feature("alias of orders", lambda v: v.state.features.orders, ORDERS),
    "monetary": Feature(
        "average order value (RFM monetary)",
        lambda v: _monetary(v.state.features),
        ORDERS,
    ),
    "lifetime_spend": Feature("orders minus refunds", lambda v: v.state.features.lifetime_spend, ORDERS),
    "refunds": Feature("refunds received", lambda v: v.state.features.refunds, ORDERS),
    "lapse_risk": Feature(
        "BG/NBD chance (0-1) a buyer reaches lapse_days after their last order without another (null before one)",
        lambda v: v.state.features.lapse_risk(v.now_ms, v.lifecycle.lapse_days, v.lifecycle.population),
        ORDERS,
        time_dependent=True,
    ),
    "p_alive": Feature(
        "BG/NBD chance (0-1) a buyer still buys: 1 until their second order, then falls with silence",
        lambda v: v.state.features.p_alive(v.now_ms, v.lifecycle.population),
        ORDERS,
        time_dependent=True,
    ),
    "expected_orders": Feature(
        "BG/NBD expected orders over the next NUDGEFLOW_CLV_HORIZON_DAYS (365) (null before an order)",
        lambda v: v.state.features.expected_orders(v.now_ms, v.lifecycle.population),
        ORDERS,
        time_dependent=True,
    ),
    "expected_order_value": Feature(
        "Gamma-Gamma expected value of an order: own mean shrunk to the population's (null before an order)",
        lambda v: v.state.features.expected_order_value(v.lifecycle.population),
        ORDERS,
    ),
    "clv": Feature(
        "customer lifetime value over the horizon: expected_orders x expected_order_value (null before an order)",
        lambda v: v.state.features.clv(v.now_ms, v.lifecycle.population),
        ORDERS,
        time_dependent=True,
    ),
    "mean_order_gap_days": Feature(
        "mean days between orders (null before the second)",
        lambda v: _days(v.state.features.order_gap_ms) if v.state.features.orders >= 2 else None,
        ORDERS,
    ),
    "counts_1h": _counts("1h"),
    "counts_24h": _counts("24h"),
    "counts_7d": _counts("7d"),
    "counts_30d": _counts("30d"),
    "top_category": Feature(
        "strongest decayed category affinity", lambda v: next(iter(v.state.features.top_categories(1)), None), PRODUCTS
    ),
    "categories": Feature(
        "category affinities decayed to now",
        lambda v: v.state.features.categories_as_of(v.now_ms),
        PRODUCTS,
        composite=True,
    ),
    "top_products": Feature(
        "top products by decayed affinity", lambda v: v.state.features.top_products(5), PRODUCTS, composite=True
    ),
    "session": Feature("current session: id, pages, products_viewed, products, minutes", _session),
    "cart": Feature("current cart: id, value, items, products, minutes_since_add", _cart, CART, composite=True),
    "last_store": Feature("last store visited or bought in", lambda v: v.state.features.last_store),
    "city": Feature(
        "last known city (context.location, else traits)",
        lambda v: v.state.features.last_city or v.state.features.trait_value("city"),
    ),
    "country": Feature(
        "last known country", lambda v: v.state.features.last_country or v.state.features.trait_value("country")
    ),
    "preferred_hour": Feature("local hour of day with most activity", lambda v: v.state.features.preferred_hour()),
    "hour": Feature("UTC hour of day of the decision", lambda v: (v.now_ms // HOUR_MS) % 24, time_dependent=True),
    "traits": Feature(
        "identify traits: age_band, city, country, urban, gender, loyalty_tier",
        lambda v: v.state.features.traits,
        TRAITS,
        composite=True,
    ),
    "consent": Feature(
        "consent per channel (push, in_app, email, sms, ads): true, false or null",
        lambda v: v.state.features.consent,
        CONSENT,
        composite=True,
    ),
    "audiences": Feature(
        "live audiences the customer is in (triggers only)",
        lambda v: tuple(a for a in v.state.audiences if not a.startswith("shadow:")),
        composite=True,
    ),
    "event": Feature("the current event: name, properties, channel, store_id (null in timers)", _event),
    "propensity": Feature(
        "P(order within the propensity horizon) from the online model, calibrated on past outcomes"
        " (null when models are off)",
        lambda v: v.scored("propensity"),
        time_dependent=True,
    ),
}

_GETTERS = {name: feature.get for name, feature in FEATURES.items()}  # read on every feature's first use


PROFILE_EXCLUDED = frozenset({"customer_id", "event", "hour", "traits", "audiences", "propensity"})
PROFILE_FEATURES = tuple(name for name in FEATURES if name not in PROFILE_EXCLUDED)


def profile(state: CustomerState, now_ms: int, lifecycle: Lifecycle) -> dict[str, Any]:
    """The customer's live profile (every feature, audiences, traits, hashed match keys when known) as
    JSON-ready values."""
    view = FeatureView(state, None, now_ms, lifecycle)
    features = {name: _plain(view[name]) for name in PROFILE_FEATURES}
    found = {
        "customer_id": state.id,
        "updated_ms": now_ms,
        "features": features,
        "audiences": list(state.audiences),
        "traits": state.features.traits,
        "consent_changes": {
            channel: {"granted": granted, "source": source, "at": iso_ms(at)}
            for channel, granted, source, at in (state.contacts[2] if state.contacts else ())
        },
    }
    if state.match_keys is not None:
        found["match_keys"] = match_keys.to_hex(state.match_keys)
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, _View):
        return {name: _plain(getattr(value, name)) for name in value.FIELDS}
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value
