"""Per-customer state, updated in event time: the features, one compiled record
(``state._native.Features``, in ``state/native/src/features.rs``), and the engine's bookkeeping.

Everything here is bounded: the cart keeps at most ``MAX_CART_ITEMS`` lines, the session
at most ``MAX_SESSION_PRODUCTS`` products, affinities the top ``AFFINITY_K`` items,
windows 30 days of buckets, traits an allowlist, ``caused_by`` lists a few ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from state._native import Features
from state.affinity import DAY_MS

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
EVERY_PART = frozenset({"places", "orders", "counts", "hours", "session", "cart", "affinities", "traits", "consent"})
"""The parts of the features updates change (where the customer was, orders, the windowed counts,
the hours, the session, the cart, the affinities, traits, consent): a checkpoint copies the
features if it is told any may."""
NO_PART: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """When a customer counts as new, lapsed, at risk; what a session is."""

    new_days: int = 30
    lapse_days: int = 60
    at_risk_gap_factor: float = 1.5
    session_timeout_ms: int = 30 * MINUTE_MS


class Timer:
    """A pending timer: when it is due, what it fires once for, the events that armed it.

    ``scheduled_ms`` is the due time of this timer's entry in the shard's heap (``None``:
    no entry yet); a timer pushed later keeps its older, earlier entry until that pops. While an
    event or a timer is applied, a customer's timers are replaced (:meth:`moved`), never changed:
    so a checkpoint keeps them by copying the dict that holds them.
    """

    __slots__ = ("cause", "caused_by", "due_ms", "scheduled_ms")

    def __init__(self, due_ms: int, cause: str, caused_by: list[str]) -> None:
        self.due_ms = due_ms
        self.cause = cause
        self.caused_by = caused_by
        self.scheduled_ms: int | None = None

    def moved(self, due_ms: int, caused_by: list[str] | None = None) -> Timer:
        """This timer due at ``due_ms`` instead (and caused by ``caused_by``), with its heap entry."""
        timer = Timer(due_ms, self.cause, self.caused_by if caused_by is None else caused_by)
        timer.scheduled_ms = self.scheduled_ms
        return timer


def _feature(name: str) -> Any:
    """The record's ``name``, read as an attribute of the customer's state (read only)."""
    return property(attrgetter(f"features.{name}"), doc=f"The features' ``{name}``.")


class CustomerState:
    """One customer: its features (one compiled record, :class:`state._native.Features`) and the
    engine's bookkeeping (timers, rules fired, open outcomes and offers, audiences, linked ids).
    Times are event-time epoch milliseconds."""

    __slots__ = (
        "audiences",
        "features",
        "fired",
        "id",
        "linked_ids",
        "offers_open",
        "outcomes",
        "timers",
    )

    def __init__(self, customer_id: str, first_seen_ms: int) -> None:
        self.id = customer_id
        self.features = Features(first_seen_ms)
        self.audiences: tuple[str, ...] = ()
        self.timers: dict[str, Timer] = {}  # by rule id, or "~recheck"
        self.fired: dict[str, str] = {}  # rule id -> last cause it fired for
        self.linked_ids: tuple[str, ...] = ()
        # decisions waiting for their outcome: (decided at, features then), oldest first
        self.outcomes: list[tuple[int, tuple[float, ...]]] = []
        # offers chosen by the next-best-offer policy, waiting for a reward: (decided at, offer, segment)
        self.offers_open: list[tuple[int, str, str]] = []

    # --- checkpoints, for undoing an update that failed halfway --------------------------
    def checkpoint(self, parts: frozenset[str] = EVERY_PART) -> Checkpoint:
        """What :meth:`rollback` needs to put this state back as it is now, provided that the
        features are left as they are until then unless ``parts`` (see :data:`EVERY_PART`) says
        they may change.

        Every field's value, copies of the containers the engine changes in place (``fired``,
        ``outcomes``, ``offers_open``, the timers' dict) and, when ``parts`` names any, of the
        features record (one native copy). Taken before every event and timer, so kept cheap.
        """
        return (
            _fields(self),
            self.features.copy() if parts else None,
            dict(self.fired),
            self.outcomes[:],
            self.offers_open[:],
            dict(self.timers),
        )

    def rollback(self, checkpoint: Checkpoint) -> None:
        """Put this state back as it was at ``checkpoint`` (taken by :meth:`checkpoint` on this object)."""
        fields, features, fired, outcomes, offers_open, timers = checkpoint
        for name, value in zip(CustomerState.__slots__, fields, strict=True):
            setattr(self, name, value)
        if features is not None:
            self.features = features
        self.fired, self.outcomes, self.offers_open, self.timers = fired, outcomes, offers_open, timers

    # --- features (read; see state.update.apply_event for the updates) --------------------
    first_seen_ms = _feature("first_seen_ms")
    last_seen_ms = _feature("last_seen_ms")
    last_event_id = _feature("last_event_id")
    orders = _feature("orders")
    refunds = _feature("refunds")
    lifetime_spend = _feature("lifetime_spend")
    first_order_ms = _feature("first_order_ms")
    last_order_ms = _feature("last_order_ms")
    last_order_id = _feature("last_order_id")
    order_gap_ms = _feature("order_gap_ms")  # running mean gap between orders
    last_store = _feature("last_store")
    last_city = _feature("last_city")
    last_country = _feature("last_country")
    hours = _feature("hours")
    traits = _feature("traits")
    consent = _feature("consent")
    bought = _feature("bought")  # products of the last order

    def lifecycle(self, now_ms: int, lc: Lifecycle) -> str:
        """``new`` (first seen recently), ``lapsed`` (no order, or no activity, for long) or ``active``."""
        return self.features.lifecycle(now_ms, lc.new_days, lc.lapse_days)

    def at_risk(self, now_ms: int, lc: Lifecycle) -> bool:
        """A repeat buyer overdue by ``at_risk_gap_factor`` times their usual gap, not yet lapsed.

        Orders less than a day apart on average (a basket split in two, say) are no rhythm."""
        return self.features.at_risk(now_ms, lc.lapse_days, lc.at_risk_gap_factor)

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
        return self.features.lapse_risk(now_ms, lc.lapse_days)

    def next_boundary(self, now_ms: int, lc: Lifecycle, risk_steps: bool = False) -> int | None:
        """The next event time at which ``lifecycle`` or ``at_risk`` (and, with ``risk_steps``,
        ``lapse_risk``, to the next tenth, found to the minute) can change with no new event."""
        return self.features.next_boundary(now_ms, lc.new_days, lc.lapse_days, lc.at_risk_gap_factor, risk_steps)

    def preferred_hour(self) -> int | None:
        """The local hour of day with most activity (ties: the earliest)."""
        return self.features.preferred_hour()

    def merge(self, other: CustomerState, now_ms: int) -> None:
        """Fold the state of a just-linked anonymous id into this customer."""
        self.features.merge(other.features, now_ms)
        for rule, timer in other.timers.items():
            self.timers.setdefault(rule, timer)
        self.outcomes = sorted(self.outcomes + other.outcomes)[-MAX_PENDING_OUTCOMES:]
        self.offers_open = sorted(self.offers_open + other.offers_open)[-MAX_PENDING_OUTCOMES:]
        for rule, cause in other.fired.items():
            self.fired.setdefault(rule, cause)
        self.linked_ids = (*self.linked_ids[-4:], other.id)


Checkpoint = tuple[Any, ...]
_fields = attrgetter(*CustomerState.__slots__)  # every field's value, in one call
