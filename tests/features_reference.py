"""The customer features as they were first written, in plain Python: the reference that the
compiled record (``state._native.Features``, behind ``state.customer.CustomerState``) must agree
with exactly, feature for feature (``tests/state/test_features_native.py``).

The classes of ``state/windows.py``, ``state/affinity.py``, ``state/customer.py`` and the update of
``state/update.py`` as they were, unchanged but for their imports (the constants come from the modules
that still define them).
"""

from __future__ import annotations

import math
from array import array
from operator import attrgetter
from sys import intern
from typing import Any

from risk_step_reference import next_alive_step, next_risk_step

from schemas.envelope import Envelope
from schemas.events import ConsentEvent, IdentifyEvent, OrderEvent, ProductEvent, StoreVisitEvent
from state.affinity import DAY_MS
from state.customer import (
    AFFINITY_K,
    CATEGORY_HALF_LIFE_MS,
    MAX_BOUGHT,
    MAX_CART_ITEMS,
    MAX_PENDING_OUTCOMES,
    MAX_SESSION_PRODUCTS,
    MIN_RHYTHM_MS,
    PRODUCT_HALF_LIFE_MS,
    TRAIT_KEYS,
    Lifecycle,
    Timer,
)
from state.update import COUNT_KIND, local_hour
from state.windows import COUNTED_KINDS, KIND_CODE, MINUTE_MS, WINDOWS_MIN

# --- state/windows.py ----------------------------------------------------------------------
_COMPACT_AT = 3 * 24  # compact once this many triples are held...
_COMPACT_EVERY = 64  # ...and then every this many added triples


def _width(age_min: int) -> int:
    if age_min < 60:
        return 5
    if age_min < 24 * 60:
        return 60
    return 24 * 60


class WindowedCounts:
    """Bucketed counts of event kinds; ``counts(now)`` gives every window at once."""

    __slots__ = ("buckets",)

    def __init__(self, buckets: array | None = None) -> None:
        self.buckets = buckets if buckets is not None else array("i")

    def add(self, kind: str, at_ms: int, now_ms: int) -> None:
        """Count one ``kind`` event at ``at_ms``; ``now_ms`` is the customer's latest time."""
        code = KIND_CODE.get(kind, KIND_CODE["other"])
        minute = at_ms // MINUTE_MS
        now_min = now_ms // MINUTE_MS
        if now_min - minute >= WINDOWS_MIN["30d"]:
            return
        width = _width(now_min - minute)
        start = minute - minute % width
        b = self.buckets
        for i in range(len(b) - 3, -1, -3):
            if b[i] == start and b[i + 1] == code:
                b[i + 2] += 1
                return
            if b[i] < start:
                break
        b.extend((start, code, 1))
        held = len(b) // 3
        if held > _COMPACT_AT and (held - _COMPACT_AT) % _COMPACT_EVERY == 1:
            self.compact(now_ms)

    def compact(self, now_ms: int) -> None:
        """Merge buckets into the width their age calls for and drop those past 30 days."""
        now_min = now_ms // MINUTE_MS
        merged: dict[tuple[int, int], int] = {}
        b = self.buckets
        for i in range(0, len(b), 3):
            age = now_min - b[i]
            if age >= WINDOWS_MIN["30d"]:
                continue
            width = _width(age)
            key = (b[i] - b[i] % width, b[i + 1])
            merged[key] = merged.get(key, 0) + b[i + 2]
        out = array("i")
        for (start, code), count in sorted(merged.items()):
            out.extend((start, code, count))
        self.buckets = out

    def counts(self, window: str, now_ms: int) -> dict[str, int]:
        """Counts per kind of the buckets starting within ``window`` before ``now_ms``."""
        since = now_ms // MINUTE_MS - WINDOWS_MIN[window]
        out: dict[str, int] = dict.fromkeys(COUNTED_KINDS, 0)
        b = self.buckets
        for i in range(0, len(b), 3):
            if b[i] > since:
                kind = COUNTED_KINDS[b[i + 1]]
                out[kind] += b[i + 2]
        return out

    def merge(self, other: WindowedCounts, now_ms: int) -> None:
        """Fold another customer's buckets into these (identity linking)."""
        self.buckets.extend(other.buckets)
        self.compact(now_ms)


# --- state/affinity.py ---------------------------------------------------------------------
_RENORMALIZE_AT = 2.0**500
_MAX_EXPONENT = 500.0  # 2 ** 500 times any weight stays far below the float limit (2 ** 1024)


class DecayedTopK:
    """Scores that halve every ``half_life_ms``; only the ``k`` strongest items are kept.

    Forward decay: a weight added at time ``t`` is stored as ``weight * 2 ** ((t - ref) /
    half_life)`` against a fixed landmark ``ref_ms``, so an update touches one entry and the
    ranking needs no decay at all; reading a score at ``now`` multiplies by
    ``2 ** ((ref - now) / half_life)``. The landmark moves (and the scores shrink) only when
    they grow too large for floats. No pair of times overflows: a time far before the landmark
    counts as 0, one far after it moves the landmark first.
    """

    __slots__ = ("ref_ms", "scores")

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}
        self.ref_ms: int | None = None

    def add(self, item: str, weight: float, at_ms: int, half_life_ms: int, k: int) -> None:
        """Add ``weight`` to ``item`` at ``at_ms`` (earlier times count decayed)."""
        if self.ref_ms is None:
            self.ref_ms = at_ms
        exponent = (at_ms - self.ref_ms) / half_life_ms
        scaled = weight * math.exp2(min(exponent, _MAX_EXPONENT))
        if scaled > _RENORMALIZE_AT or exponent > _MAX_EXPONENT:
            self._move_landmark(at_ms, half_life_ms)
            scaled = weight
        scores = self.scores
        scores[item] = scores.get(item, 0.0) + scaled
        if len(scores) > k:
            weakest = max(scores.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # last in top() order
            del scores[weakest]

    def _move_landmark(self, to_ms: int, half_life_ms: int) -> None:
        assert self.ref_ms is not None
        factor = math.exp2((self.ref_ms - to_ms) / half_life_ms)
        self.scores = {item: score * factor for item, score in self.scores.items()}
        self.ref_ms = to_ms

    def top(self, n: int | None = None) -> list[str]:
        """Items by descending score (ties by name)."""
        ranked = sorted(self.scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return [item for item, _ in ranked[:n]]

    def as_of(self, now_ms: int, half_life_ms: int) -> dict[str, float]:
        """Scores decayed to ``now_ms``, rounded for stable output."""
        if self.ref_ms is None:
            return {}
        factor = math.exp2(min(0, self.ref_ms - now_ms) / half_life_ms)
        return {item: round(score * factor, 4) for item, score in sorted(self.scores.items())}

    def merge(self, other: DecayedTopK, half_life_ms: int, k: int) -> None:
        """Fold another customer's affinities into these."""
        if other.ref_ms is None:
            return
        for item, score in other.scores.items():
            self.add(item, score, other.ref_ms, half_life_ms, k)


# --- state/customer.py ---------------------------------------------------------------------
EVERY_PART = frozenset({"counts", "hours", "session", "cart", "affinities", "traits", "consent"})
"""The feature containers updates change in place (the windowed counts, the hours, the session,
the cart, the affinities, traits, consent): a checkpoint copies those it is told may change."""
NO_PART: frozenset[str] = frozenset()


class Cart:
    """The current cart: lines, value, when it was started and last added to."""

    __slots__ = ("id", "items", "last_add_ms", "started_ms", "value")

    def __init__(self, cart_id: str, started_ms: int) -> None:
        self.id = cart_id
        self.items: dict[str, tuple[float, float]] = {}  # product_id -> (quantity, unit price)
        self.value = 0.0
        self.started_ms = started_ms
        self.last_add_ms = started_ms

    def add(self, product_id: str, quantity: int, price: float, at_ms: int) -> None:
        line = self.items.get(product_id)
        if line is None:
            if len(self.items) >= MAX_CART_ITEMS:
                return
            self.items[product_id] = (float(quantity), price)
        else:
            self.items[product_id] = (line[0] + quantity, price)
        self.value = round(self.value + quantity * price, 2)
        self.last_add_ms = max(self.last_add_ms, at_ms)

    def remove(self, product_id: str, quantity: int) -> None:
        line = self.items.get(product_id)
        if line is None:
            return
        taken = min(line[0], quantity)
        self.value = max(0.0, round(self.value - taken * line[1], 2))
        if line[0] - taken <= 0:
            del self.items[product_id]
        else:
            self.items[product_id] = (line[0] - taken, line[1])
        if not self.items:
            self.value = 0.0


class Session:
    """The current session: started by the first event after ``session_timeout_ms`` of quiet."""

    __slots__ = ("id", "last_ms", "pages", "products", "started_ms")

    def __init__(self, session_id: str, started_ms: int) -> None:
        self.id = session_id
        self.started_ms = started_ms
        self.last_ms = started_ms
        self.pages = 0
        self.products: list[str] = []

    def viewed(self, product_id: str) -> None:
        products = self.products
        if product_id in products:
            return
        products.append(product_id)
        if len(products) > MAX_SESSION_PRODUCTS:
            del products[0]


class CustomerState:
    """Features of one customer. Times are event-time epoch milliseconds."""

    __slots__ = (
        "audiences",
        "bought",
        "cart",
        "categories",
        "consent",
        "counts",
        "fired",
        "first_order_ms",
        "first_seen_ms",
        "hours",
        "id",
        "last_city",
        "last_country",
        "last_event_id",
        "last_order_id",
        "last_order_ms",
        "last_seen_ms",
        "last_store",
        "lifetime_spend",
        "linked_ids",
        "offers_open",
        "order_gap_ms",
        "orders",
        "outcomes",
        "products",
        "refunds",
        "session",
        "timers",
        "traits",
    )

    def __init__(self, customer_id: str, first_seen_ms: int) -> None:
        self.id = customer_id
        self.first_seen_ms = first_seen_ms
        self.last_seen_ms = first_seen_ms
        self.last_event_id = ""
        self.orders = 0
        self.refunds = 0
        self.lifetime_spend = 0.0
        self.first_order_ms: int | None = None
        self.last_order_ms: int | None = None
        self.last_order_id: str | None = None
        self.order_gap_ms = 0.0  # running mean gap between orders
        self.counts = WindowedCounts()
        self.categories = DecayedTopK()
        self.products = DecayedTopK()
        self.session: Session | None = None
        self.cart: Cart | None = None
        self.last_store: str | None = None
        self.last_city: str | None = None
        self.last_country: str | None = None
        self.hours = bytearray(24)
        self.traits: dict[str, object] = {}
        self.consent: dict[str, bool] = {}
        self.audiences: tuple[str, ...] = ()
        self.timers: dict[str, Timer] = {}  # by rule id, or "~recheck"
        self.fired: dict[str, str] = {}  # rule id -> last cause it fired for
        self.linked_ids: tuple[str, ...] = ()
        # decisions waiting for their outcome: (decided at, features then), oldest first
        self.outcomes: list[tuple[int, tuple[float, ...]]] = []
        # offers chosen by the next-best-offer policy, waiting for a reward: (decided at, offer, segment)
        self.offers_open: list[tuple[int, str, str]] = []
        self.bought: tuple[str, ...] = ()  # products of the last order

    # --- checkpoints, for undoing an update that failed halfway --------------------------
    def checkpoint(self, parts: frozenset[str] = EVERY_PART) -> Checkpoint:
        """What :meth:`rollback` needs to put this state back as it is now, provided that of the
        feature containers only ``parts`` (see :data:`EVERY_PART`) are changed in place until then.

        Every field's value, copies of the containers the engine changes in place (``fired``,
        ``outcomes``, ``offers_open``, the timers' dict) and of ``parts``. Taken before every event
        and timer, so kept cheap: no object is built but copies of built-in containers, and only of
        what the update can change (:func:`state.update.changed_parts`).
        """
        session, cart, categories, products = self.session, self.cart, self.categories, self.products
        return (
            _fields(self),
            dict(self.fired),
            self.outcomes[:],
            self.offers_open[:],
            dict(self.timers),
            self.counts.buckets[:] if "counts" in parts else None,
            self.hours[:] if "hours" in parts else None,
            (session.last_ms, session.pages, session.products[:])
            if session is not None and "session" in parts
            else None,
            (dict(cart.items), cart.value, cart.last_add_ms) if cart is not None and "cart" in parts else None,
            (categories.ref_ms, dict(categories.scores), products.ref_ms, dict(products.scores))
            if "affinities" in parts
            else None,
            dict(self.traits) if "traits" in parts else None,
            dict(self.consent) if "consent" in parts else None,
        )

    def rollback(self, checkpoint: Checkpoint) -> None:
        """Put this state back as it was at ``checkpoint`` (taken by :meth:`checkpoint` on this object)."""
        fields, fired, outcomes, offers_open, timers, buckets, hours, session, cart, affinities, *dicts = checkpoint
        for name, value in zip(CustomerState.__slots__, fields, strict=True):
            setattr(self, name, value)  # first: the session and the cart are put back before their contents
        self.fired, self.outcomes, self.offers_open, self.timers = fired, outcomes, offers_open, timers
        if buckets is not None:
            self.counts.buckets = buckets
        if hours is not None:
            self.hours = hours
        if session is not None:
            self.session.last_ms, self.session.pages, self.session.products = session  # type: ignore[union-attr]
        if cart is not None:
            self.cart.items, self.cart.value, self.cart.last_add_ms = cart  # type: ignore[union-attr]
        if affinities is not None:
            self.categories.ref_ms, self.categories.scores, self.products.ref_ms, self.products.scores = affinities
        traits, consent = dicts
        if traits is not None:
            self.traits = traits
        if consent is not None:
            self.consent = consent

    # --- updates -----------------------------------------------------------------------
    def touch(self, at_ms: int, message_id: str, lifecycle: Lifecycle) -> None:
        """Advance recency and the session for any event at ``at_ms``."""
        session = self.session
        if session is None or at_ms - session.last_ms > lifecycle.session_timeout_ms:
            if session is None or at_ms > session.last_ms:
                self.session = Session(message_id, at_ms)
        else:
            session.last_ms = max(session.last_ms, at_ms)
        if at_ms >= self.last_seen_ms:
            self.last_seen_ms = at_ms
            self.last_event_id = message_id
        self.first_seen_ms = min(self.first_seen_ms, at_ms)

    def seen_hour(self, hour: int) -> None:
        """Count activity in a local hour of day (halving all counts before one overflows)."""
        hours = self.hours
        if hours[hour] == 255:
            self.hours = hours = bytearray(value // 2 for value in hours)
        hours[hour] += 1

    def order(self, order_id: str, amount: float, at_ms: int) -> None:
        self.orders += 1
        self.lifetime_spend = round(self.lifetime_spend + amount, 2)
        if self.first_order_ms is None or at_ms < self.first_order_ms:
            self.first_order_ms = at_ms
        if self.last_order_ms is None or at_ms >= self.last_order_ms:
            self.last_order_ms = at_ms
            self.last_order_id = order_id
        self._update_order_gap()

    def _update_order_gap(self) -> None:
        """Mean gap between orders: the span from first to last order over the gaps in it."""
        if self.orders >= 2 and self.first_order_ms is not None and self.last_order_ms is not None:
            self.order_gap_ms = (self.last_order_ms - self.first_order_ms) / (self.orders - 1)

    def refund(self, amount: float) -> None:
        self.refunds += 1
        self.lifetime_spend = max(0.0, round(self.lifetime_spend - amount, 2))

    def add_to_cart(
        self, cart_id: str | None, product_id: str, quantity: int, price: float, at_ms: int, message_id: str
    ) -> None:
        cart = self.cart
        if cart is None or (cart_id is not None and cart_id != cart.id and not cart.items):
            cart = self.cart = Cart(cart_id or message_id, at_ms)
        cart.add(product_id, quantity, price, at_ms)

    def remove_from_cart(self, product_id: str, quantity: int) -> None:
        if self.cart is not None:
            self.cart.remove(product_id, quantity)
            if not self.cart.items:
                self.cart = None

    # --- derived features --------------------------------------------------------------
    def lifecycle(self, now_ms: int, lc: Lifecycle) -> str:
        """``new`` (first seen recently), ``lapsed`` (no order, or no activity, for long) or ``active``."""
        if now_ms - self.first_seen_ms < lc.new_days * DAY_MS:
            return "new"
        last = self.last_order_ms if self.last_order_ms is not None else self.last_seen_ms
        if now_ms - last >= lc.lapse_days * DAY_MS:
            return "lapsed"
        return "active"

    def at_risk(self, now_ms: int, lc: Lifecycle) -> bool:
        """A repeat buyer overdue by ``at_risk_gap_factor`` times their usual gap, not yet lapsed.

        Orders less than a day apart on average (a basket split in two, say) are no rhythm."""
        if self.orders < 2 or self.last_order_ms is None or self.order_gap_ms < MIN_RHYTHM_MS:
            return False
        overdue = now_ms - self.last_order_ms
        return lc.at_risk_gap_factor * self.order_gap_ms <= overdue < lc.lapse_days * DAY_MS

    def lapse_risk(self, now_ms: int, lc: Lifecycle) -> float | None:
        """How likely this buyer reaches the lapse point (last order + ``lapse_days``) without another
        order, from BG/NBD: stopped (1 - P(alive)), or alive and silent until then. ``None`` before
        the first order; 1 once lapsed. (The same operations as the compiled record, so the same bits.)"""
        if self.last_order_ms is None or self.first_order_ms is None:
            return None
        lapse_at = self.last_order_ms + lc.lapse_days * DAY_MS
        if now_ms >= lapse_at:
            return 1.0
        pop = lc.btyd
        x, _, age = self._history(now_ms)
        alive = self._p_alive(now_ms, lc)
        days = (lapse_at - now_ms) / DAY_MS
        silent = ((pop.alpha + age) / (pop.alpha + age + days)) ** (pop.r + x)
        return round(min(max(1 - alive * (1 - silent), 0.0), 1.0), 4)

    def _history(self, now_ms: int) -> tuple[int, float, float]:
        """Repeat orders, days from the first order to the last, days from the first to now."""
        first, last = self.first_order_ms, self.last_order_ms
        assert first is not None and last is not None
        return max(self.orders - 1, 0), max(last - first, 0) / DAY_MS, max(max(now_ms, last) - first, 0) / DAY_MS

    def _p_alive(self, now_ms: int, lc: Lifecycle) -> float:
        pop = lc.btyd
        x, t_x, age = self._history(now_ms)
        odds = 0.0
        if x > 0:
            ratio = (pop.alpha + age) / (pop.alpha + t_x)
            odds = math.exp(math.log(pop.a / (pop.b + x - 1)) + (pop.r + x) * math.log(ratio))
        return 1 / (1 + odds)

    def p_alive(self, now_ms: int, lc: Lifecycle) -> float | None:
        """BG/NBD's P(alive), 1 until a repeat order; ``None`` before the first order."""
        if self.first_order_ms is None:
            return None
        return round(self._p_alive(now_ms, lc), 4)

    def _next_alive_step(self, now_ms: int, lc: Lifecycle) -> int | None:
        """When ``p_alive`` next drops below the highest tenth at or under its value now."""
        return next_alive_step(self, now_ms, lc)  # type: ignore[arg-type]

    def _next_risk_step(self, now_ms: int, lc: Lifecycle) -> int | None:
        """When ``lapse_risk`` (rising with silence) next reaches a tenth above its value now."""
        return next_risk_step(self, now_ms, lc)  # type: ignore[arg-type]

    def next_boundary(
        self, now_ms: int, lc: Lifecycle, risk_steps: bool = False, alive_steps: bool = False
    ) -> int | None:
        """The next event time at which ``lifecycle`` or ``at_risk`` (and, with ``risk_steps``,
        ``lapse_risk``, to the next tenth; with ``alive_steps``, ``p_alive``, below the next tenth)
        can change with no new event."""
        last = self.last_order_ms if self.last_order_ms is not None else self.last_seen_ms
        best = None
        for at in (
            self.first_seen_ms + lc.new_days * DAY_MS,
            last + lc.lapse_days * DAY_MS,
            self.last_order_ms + math.ceil(lc.at_risk_gap_factor * self.order_gap_ms)
            if self.orders >= 2 and self.last_order_ms is not None and self.order_gap_ms >= MIN_RHYTHM_MS
            else None,
            self._next_risk_step(now_ms, lc) if risk_steps else None,
            self._next_alive_step(now_ms, lc) if alive_steps else None,
        ):
            if at is not None and at > now_ms and (best is None or at < best):
                best = at
        return best

    def preferred_hour(self) -> int | None:
        best = max(range(24), key=lambda h: (self.hours[h], -h))
        return best if self.hours[best] else None

    def merge(self, other: CustomerState, now_ms: int) -> None:
        """Fold the state of a just-linked anonymous id into this customer."""
        self.first_seen_ms = min(self.first_seen_ms, other.first_seen_ms)
        if other.last_seen_ms > self.last_seen_ms:
            self.last_seen_ms, self.last_event_id = other.last_seen_ms, other.last_event_id
        self.orders += other.orders
        self.refunds += other.refunds
        self.lifetime_spend = round(self.lifetime_spend + other.lifetime_spend, 2)
        if other.first_order_ms is not None and (
            self.first_order_ms is None or other.first_order_ms < self.first_order_ms
        ):
            self.first_order_ms = other.first_order_ms
        if other.last_order_ms is not None and (self.last_order_ms is None or other.last_order_ms > self.last_order_ms):
            self.last_order_ms, self.last_order_id = other.last_order_ms, other.last_order_id
        self._update_order_gap()
        self.counts.merge(other.counts, now_ms)
        self.categories.merge(other.categories, CATEGORY_HALF_LIFE_MS, AFFINITY_K)
        self.products.merge(other.products, PRODUCT_HALF_LIFE_MS, AFFINITY_K)
        if other.session is not None and (self.session is None or other.session.last_ms > self.session.last_ms):
            self.session = other.session
        if self.cart is None:
            self.cart = other.cart
        for hour in range(24):
            self.hours[hour] = min(255, self.hours[hour] + other.hours[hour])
        for key, value in other.traits.items():
            self.traits.setdefault(key, value)
        for key, value in other.consent.items():
            self.consent.setdefault(key, value)
        for rule, timer in other.timers.items():
            self.timers.setdefault(rule, timer)
        self.outcomes = sorted(self.outcomes + other.outcomes)[-MAX_PENDING_OUTCOMES:]
        self.offers_open = sorted(self.offers_open + other.offers_open)[-MAX_PENDING_OUTCOMES:]
        for rule, cause in other.fired.items():
            self.fired.setdefault(rule, cause)
        self.last_store = self.last_store or other.last_store
        self.last_city = self.last_city or other.last_city
        self.last_country = self.last_country or other.last_country
        self.linked_ids = (*self.linked_ids[-4:], other.id)


Checkpoint = tuple[Any, ...]
_fields = attrgetter(*CustomerState.__slots__)  # every field's value, in one call


# --- state/update.py -----------------------------------------------------------------------
AFFINITY_WEIGHT: dict[str, float] = {"Product Viewed": 1.0, "Product Added": 3.0, "Order Completed": 5.0}
_NOT_ACTIVITY = frozenset({"identify", "alias", "Consent Updated", "Erasure Requested"})


def _age_band(age: int) -> str:
    for upper, band in ((17, "<18"), (24, "18-24"), (34, "25-34"), (44, "35-44"), (54, "45-54"), (64, "55-64")):
        if age <= upper:
            return band
    return "65+"


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
