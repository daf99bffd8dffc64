"""Per-customer feature state, updated in event time.

Everything here is bounded: the cart keeps at most ``MAX_CART_ITEMS`` lines, the session
at most ``MAX_SESSION_PRODUCTS`` products, affinities the top ``AFFINITY_K`` items,
windows 30 days of buckets, traits an allowlist, ``caused_by`` lists a few ids.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from state.affinity import DAY_MS, DecayedTopK
from state.windows import WindowedCounts

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
MAX_CART_ITEMS = 50
MAX_SESSION_PRODUCTS = 10
MAX_CAUSED_BY = 5
MAX_BOUGHT = 20  # products of the last order remembered (recommendations leave them out)
MAX_PENDING_OUTCOMES = 4  # decisions whose outcome (order within the horizon or not) is still open
PRIOR_ORDER_GAP_DAYS = 30  # expected gap between orders before a customer's own rhythm is known
PRIOR_CHURN = 0.1  # prior chance that a buyer has stopped buying for good
MIN_RHYTHM_MS = DAY_MS  # a mean gap between orders shorter than this is no purchase rhythm
AFFINITY_K = 5
CATEGORY_HALF_LIFE_MS = 14 * DAY_MS
PRODUCT_HALF_LIFE_MS = 3 * DAY_MS
TRAIT_KEYS: tuple[str, ...] = ("age_band", "city", "country", "urban", "gender", "loyalty_tier")
EVERY_PART = frozenset({"counts", "hours", "session", "cart", "affinities", "traits", "consent"})
"""The feature containers updates change in place (the windowed counts, the hours, the session,
the cart, the affinities, traits, consent): a checkpoint copies those it is told may change."""
NO_PART: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """When a customer counts as new, lapsed, at risk; what a session is."""

    new_days: int = 30
    lapse_days: int = 60
    at_risk_gap_factor: float = 1.5
    session_timeout_ms: int = 30 * MINUTE_MS


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


Timer = tuple[Any, ...]
"""A pending timer: ``(due_ms, rule_id, cause, *caused_by)``, what it fires once for (``cause``)
and the ids of the events that armed it (at most :data:`MAX_CAUSED_BY`), in one flat tuple. A
customer's timers are a tuple of them in firing order (due time, then rule id): replaced as a
whole, never changed, so a checkpoint keeps them by keeping the tuple."""
NO_TIMERS: tuple[Timer, ...] = ()


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
        "scheduled_ms",
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
        self.timers = NO_TIMERS  # by due time, then rule id (or "~recheck")
        self.scheduled_ms: int | None = None  # due time of the customer's entry in the shard's timer heap
        self.fired: tuple[str, ...] = ()  # rule id, last cause it fired for, rule id, cause...
        self.linked_ids: tuple[str, ...] = ()
        # decisions waiting for their outcome, oldest first, packed by the models (operators.models)
        self.outcomes = b""
        # offers chosen by the next-best-offer policy, waiting for a reward: decided at, offer, segment, ...
        self.offers_open: tuple[Any, ...] = ()
        self.bought: tuple[str, ...] = ()  # products of the last order

    # --- checkpoints, for undoing an update that failed halfway --------------------------
    def checkpoint(self, parts: frozenset[str] = EVERY_PART) -> Checkpoint:
        """What :meth:`rollback` needs to put this state back as it is now, provided that of the
        feature containers only ``parts`` (see :data:`EVERY_PART`) are changed in place until then.

        Every field's value (the engine's bookkeeping, timers to open offers, is immutable: replaced,
        never changed) and copies of ``parts``. Taken before every event and timer, so kept cheap: no
        object is built but copies of built-in containers, and only of what the update can change
        (:func:`state.update.changed_parts`).
        """
        session, cart, categories, products = self.session, self.cart, self.categories, self.products
        return (
            _fields(self),
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
        fields, buckets, hours, session, cart, affinities, *dicts = checkpoint
        for name, value in zip(CustomerState.__slots__, fields, strict=True):
            setattr(self, name, value)  # first: the session and the cart are put back before their contents
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

    # --- timers and decisions made --------------------------------------------------------
    def timer(self, rule_id: str) -> Timer | None:
        """The pending timer of ``rule_id`` (``None``: there is none)."""
        for timer in self.timers:
            if timer[1] == rule_id:
                return timer
        return None

    def set_timer(self, due_ms: int, rule_id: str, cause: str, caused_by: Iterable[str] = ()) -> None:
        """Arm the timer of ``rule_id``, replacing any pending one."""
        timers = [timer for timer in self.timers if timer[1] != rule_id]
        insort(timers, (due_ms, rule_id, cause, *caused_by))
        self.timers = tuple(timers)

    def drop_timer(self, rule_id: str) -> Timer | None:
        """Take the pending timer of ``rule_id`` away and return it (``None``: there was none)."""
        timer = self.timer(rule_id)
        if timer is not None:
            self.timers = tuple(other for other in self.timers if other is not timer)
        return timer

    def fired_cause(self, rule_id: str) -> str | None:
        """The cause ``rule_id`` last fired for (``None``: it never fired)."""
        fired = self.fired
        for at in range(0, len(fired), 2):
            if fired[at] == rule_id:
                return fired[at + 1]
        return None

    def set_fired(self, rule_id: str, cause: str) -> None:
        """Note that ``rule_id`` fired for ``cause``."""
        fired = self.fired
        for at in range(0, len(fired), 2):
            if fired[at] == rule_id:
                self.fired = (*fired[: at + 1], cause, *fired[at + 2 :])
                return
        self.fired = (*fired, rule_id, cause)

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
        """How likely this buyer reaches ``lapse_days`` without another order, from their rhythm.

        Orders of a buyer who is still "alive" come as a Poisson process with the customer's
        mean gap ``g`` (shrunk towards :data:`PRIOR_ORDER_GAP_DAYS` by one prior gap); a buyer
        may also have stopped for good, prior chance :data:`PRIOR_CHURN`. After a silence ``w``
        the chance they stopped is ``c / (c + (1 - c) e^(-w/g))``; one still alive reaches the
        threshold without ordering with chance ``e^(-left/g)``. A silence long against the
        customer's own rhythm therefore raises the risk. ``None`` before the first order; 1 once
        lapsed.
        """
        if self.last_order_ms is None:
            return None
        lapse_at = self.last_order_ms + lc.lapse_days * DAY_MS
        if now_ms >= lapse_at:
            return 1.0
        gap = self._expected_gap_ms()
        silent = math.exp(-max(0, now_ms - self.last_order_ms) / gap)
        stopped = PRIOR_CHURN / (PRIOR_CHURN + (1 - PRIOR_CHURN) * silent)
        return round(stopped + (1 - stopped) * math.exp(-(lapse_at - now_ms) / gap), 4)

    def _expected_gap_ms(self) -> float:
        gaps = self.orders - 1 if self.orders >= 2 and self.order_gap_ms >= MIN_RHYTHM_MS else 0
        return (self.order_gap_ms * gaps + PRIOR_ORDER_GAP_DAYS * DAY_MS) / (gaps + 1)

    def _next_risk_step(self, now_ms: int, lc: Lifecycle) -> int | None:
        """When ``lapse_risk`` (rising with silence) next reaches a tenth above its value now."""
        risk = self.lapse_risk(now_ms, lc)
        if risk is None or risk >= 0.9:
            return None
        step = (math.floor(risk * 10 + 1e-9) + 1) / 10
        low, high = now_ms, self.last_order_ms + lc.lapse_days * DAY_MS  # type: ignore[operator]
        while high - low > MINUTE_MS:  # the first minute at which the risk has reached the step
            middle = (low + high) // 2
            if self.lapse_risk(middle, lc) >= step:  # type: ignore[operator]
                high = middle
            else:
                low = middle
        return high

    def next_boundary(self, now_ms: int, lc: Lifecycle, risk_steps: bool = False) -> int | None:
        """The next event time at which ``lifecycle`` or ``at_risk`` (and, with ``risk_steps``,
        ``lapse_risk``, to the next tenth) can change with no new event."""
        last = self.last_order_ms if self.last_order_ms is not None else self.last_seen_ms
        best = None
        for at in (
            self.first_seen_ms + lc.new_days * DAY_MS,
            last + lc.lapse_days * DAY_MS,
            self.last_order_ms + math.ceil(lc.at_risk_gap_factor * self.order_gap_ms)
            if self.orders >= 2 and self.last_order_ms is not None and self.order_gap_ms >= MIN_RHYTHM_MS
            else None,
            self._next_risk_step(now_ms, lc) if risk_steps else None,
        ):
            if at is not None and at > now_ms and (best is None or at < best):
                best = at
        return best

    def preferred_hour(self) -> int | None:
        best = max(range(24), key=lambda h: (self.hours[h], -h))
        return best if self.hours[best] else None

    def merge(self, other: CustomerState, now_ms: int) -> None:
        """Fold the state of a just-linked anonymous id into this customer (the models fold their own
        open items: ``outcomes``, ``offers_open``)."""
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
        for timer in other.timers:
            if self.timer(timer[1]) is None:
                self.timers = tuple(sorted((*self.timers, timer)))
        for at in range(0, len(other.fired), 2):
            if self.fired_cause(other.fired[at]) is None:
                self.set_fired(other.fired[at], other.fired[at + 1])
        self.last_store = self.last_store or other.last_store
        self.last_city = self.last_city or other.last_city
        self.last_country = self.last_country or other.last_country
        self.linked_ids = (*self.linked_ids[-4:], other.id)


Checkpoint = tuple[Any, ...]
_fields = attrgetter(*CustomerState.__slots__)  # every field's value, in one call
