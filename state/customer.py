"""Per-customer state, updated in event time: the features, one compiled record
(``state._native.Features``, in ``state/native/src/features.rs``), and the engine's bookkeeping.

Everything here is bounded: the cart keeps at most ``MAX_CART_ITEMS`` lines, the session
at most ``MAX_SESSION_PRODUCTS`` products, affinities the top ``AFFINITY_K`` items,
windows 30 days of buckets, traits an allowlist, ``caused_by`` lists a few ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from schemas import match_keys
from state._native import Bookkeeping, Features
from state.affinity import DAY_MS
from state.btyd import DEFAULT_BTYD, BtydParameters

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
MAX_CART_ITEMS = 50
MAX_SESSION_PRODUCTS = 10
MAX_CAUSED_BY = 5
MAX_BOUGHT = 20  # products of the last order remembered (recommendations leave them out)
MAX_PENDING_OUTCOMES = 4  # decisions whose outcome (order within the horizon or not) is still open
MIN_RHYTHM_MS = DAY_MS  # a mean gap between orders shorter than this is no purchase rhythm
AFFINITY_K = 5
CATEGORY_HALF_LIFE_MS = 14 * DAY_MS
PRODUCT_HALF_LIFE_MS = 3 * DAY_MS
TRAIT_KEYS: tuple[str, ...] = ("age_band", "city", "country", "urban", "gender", "loyalty_tier")
MAX_AUDIENCE_SETS = 4096  # distinct sets of audiences shared between customers (past it, each keeps its own)
_AUDIENCE_SETS: dict[tuple[str, ...], tuple[str, ...]] = {}


def shared_audiences(members: tuple[str, ...]) -> tuple[str, ...]:
    """``members`` as the one tuple that every customer in exactly these audiences holds: a
    customer's audiences cost a reference, not a tuple of its own."""
    shared = _AUDIENCE_SETS.get(members)
    if shared is None:
        if len(_AUDIENCE_SETS) >= MAX_AUDIENCE_SETS:
            return members
        shared = _AUDIENCE_SETS[members] = members
    return shared


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """When a customer counts as new, lapsed, at risk; what a session is."""

    new_days: int = 30
    lapse_days: int = 60
    at_risk_gap_factor: float = 1.5
    session_timeout_ms: int = 30 * MINUTE_MS
    btyd: BtydParameters = DEFAULT_BTYD  # behind lapse_risk, p_alive, expected_orders, clv
    clv_horizon_days: float = 365.0  # of expected_orders and clv

    @property
    def population(self) -> tuple[float, ...]:
        """The buy-till-you-die parameters as the compiled record reads them:
        ``(r, alpha, a, b, p, q, v, horizon_days)``."""
        b = self.btyd
        return (b.r, b.alpha, b.a, b.b, b.p, b.q, b.v, self.clv_horizon_days)


Timer = tuple[Any, ...]
"""A pending timer, as read: ``(due_ms, rule_id, cause, *caused_by)``, what it fires once for
(``cause``) and the ids of the events that armed it (at most :data:`MAX_CAUSED_BY`). A customer's
timers are kept in firing order (due time, then rule id) in its :class:`state._native.Bookkeeping`."""
NO_BOOKKEEPING = Bookkeeping()  # immutable: every customer starts with this one


def _feature(name: str) -> Any:
    """The record's ``name``, read as an attribute of the customer's state (read only)."""
    return property(attrgetter(f"features.{name}"), doc=f"The features' ``{name}``.")


class CustomerState:
    """One customer: its features (one compiled record, :class:`state._native.Features`), its
    bookkeeping (timers, rules fired, open outcomes and offers: one compact immutable record,
    :class:`state._native.Bookkeeping`), audiences and linked ids. Times are event-time epoch
    milliseconds."""

    __slots__ = (
        "audiences",
        "book",
        "contacts",
        "exposures",
        "features",
        "id",
        "linked_ids",
        "match_keys",
        "redemptions",
        "scheduled_ms",
        "timezone",
        "touches",
    )

    def __init__(self, customer_id: str, first_seen_ms: int) -> None:
        self.id = customer_id
        self.features = Features(first_seen_ms)
        self.audiences: tuple[str, ...] = ()  # sorted member keys, shared (see shared_audiences)
        self.book = NO_BOOKKEEPING  # timers, rules fired, open outcomes and offers
        self.scheduled_ms: int | None = None  # due time of the customer's entry in the shard's timer heap
        self.linked_ids: tuple[str, ...] = ()
        self.timezone: str | None = None  # the last known IANA zone of its events
        self.contacts: tuple[Any, ...] = ()  # the contact policy's record (operators.policy); (): nothing yet
        self.redemptions: tuple[str | int, ...] = ()  # offers redeemed: offer id, times, last order id, ...
        self.exposures: tuple[Any, ...] = ()  # first exposure per experiment (operators.experiments)
        self.touches: tuple[Any, ...] = ()  # recent deliveries, for attribution (operators.attribution)
        self.match_keys: bytes | None = None  # hashed email and phone (schemas.match_keys.pack); None: none known

    # --- checkpoints, for undoing an update that failed halfway --------------------------
    def checkpoint(self, features: bool = True) -> Checkpoint:
        """What :meth:`rollback` needs to put this state back as it is now; without ``features``,
        provided that the features are left as they are until then (a timer changes none).

        Every field's value (the bookkeeping record and the tuples are immutable: replaced, never
        changed) and a copy of the features record (one native copy: every event changes
        some feature). Taken before every event and timer, so kept cheap.
        """
        return _fields(self), self.features.copy() if features else None

    def rollback(self, checkpoint: Checkpoint) -> None:
        """Put this state back as it was at ``checkpoint`` (taken by :meth:`checkpoint` on this object)."""
        fields, features = checkpoint
        for name, value in zip(CustomerState.__slots__, fields, strict=True):
            setattr(self, name, value)
        if features is not None:
            self.features = features

    # --- timers and decisions made (kept in the bookkeeping record) ------------------------
    @property
    def timers(self) -> tuple[Timer, ...]:
        """The pending timers, in firing order (due time, then rule id, or ``~recheck``...)."""
        return self.book.timers()

    def timer(self, rule_id: str) -> Timer | None:
        """The pending timer of ``rule_id`` (``None``: there is none)."""
        return self.book.timer(rule_id)

    def timer_due(self, rule_id: str) -> int | None:
        """When the pending timer of ``rule_id`` is due (``None``: there is none)."""
        return self.book.due(rule_id)

    def due_rules(self, upto_ms: int) -> list[str]:
        """The rules whose timers are due by ``upto_ms``, in firing order."""
        return self.book.due_rules(upto_ms)

    def set_timer(self, due_ms: int, rule_id: str, cause: str, caused_by: Iterable[str] = ()) -> None:
        """Arm the timer of ``rule_id``, replacing any pending one."""
        self.book = self.book.with_timer(due_ms, rule_id, cause, list(caused_by))

    def arm_timer(self, due_ms: int, rule_id: str, cause: str, message_id: str) -> None:
        """Arm the timer of ``rule_id`` for ``cause``, caused by ``message_id``. A pending timer with
        the same cause stays, due at the later of the two times, and adds ``message_id`` to its
        ``caused_by`` (the last :data:`MAX_CAUSED_BY` kept); any other is replaced."""
        self.book = self.book.rearmed(due_ms, rule_id, cause, message_id, MAX_CAUSED_BY)

    def drop_timer(self, rule_id: str) -> Timer | None:
        """Take the pending timer of ``rule_id`` away and return it (``None``: there was none)."""
        timer = self.book.timer(rule_id)
        if timer is not None:
            self.book = self.book.without_timer(rule_id)
        return timer

    @property
    def fired(self) -> tuple[str, ...]:
        """Rule id, the last cause it fired for, rule id, cause... in the order they first fired."""
        return self.book.fired()

    def fired_cause(self, rule_id: str) -> str | None:
        """The cause ``rule_id`` last fired for (``None``: it never fired)."""
        return self.book.fired_cause(rule_id)

    def set_fired(self, rule_id: str, cause: str) -> None:
        """Note that ``rule_id`` fired for ``cause``."""
        self.book = self.book.with_fired(rule_id, cause)

    @property
    def outcomes(self) -> bytes:
        """Decisions waiting for their outcome, oldest first, packed by the models (operators.models)."""
        return self.book.outcomes

    @outcomes.setter
    def outcomes(self, outcomes: bytes) -> None:
        self.book = self.book.with_outcomes(outcomes)

    @property
    def offers_open(self) -> tuple[Any, ...]:
        """Offers chosen by the next-best-offer policy, waiting for a reward: decided at, offer,
        segment, decided at...; oldest first."""
        return self.book.offers_open

    @offers_open.setter
    def offers_open(self, offers: tuple[Any, ...]) -> None:
        self.book = self.book.with_offers(offers)

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
        """How likely this buyer reaches the lapse point (their last order + ``lapse_days``)
        without another order, from the BG/NBD model: the chance they have stopped buying
        (1 - P(alive)) plus, alive, the chance of no order before then,
        ``1 - P(alive) (1 - ((alpha + T) / (alpha + T + h))^(r + x))`` with ``x`` repeat orders,
        ``T`` days since the first order and ``h`` days to the lapse point. With no new order it
        only rises (P(alive) falls and so does the chance of an order in the shrinking ``h``);
        ``None`` before the first order; 1 once lapsed."""
        return self.features.lapse_risk(now_ms, lc.lapse_days, lc.population)

    def p_alive(self, now_ms: int, lc: Lifecycle) -> float | None:
        """BG/NBD's chance that this buyer still buys: 1 until their second order, then falling with
        silence; ``None`` before the first order."""
        return self.features.p_alive(now_ms, lc.population)

    def next_boundary(
        self, now_ms: int, lc: Lifecycle, risk_steps: bool = False, alive_steps: bool = False
    ) -> int | None:
        """The next event time at which ``lifecycle`` or ``at_risk`` (and, with ``risk_steps``,
        ``lapse_risk``, to the next tenth; with ``alive_steps``, ``p_alive``, below the next tenth;
        found to the minute) can change with no new event."""
        return self.features.next_boundary(
            now_ms, lc.new_days, lc.lapse_days, lc.at_risk_gap_factor, risk_steps, lc.population, alive_steps
        )

    def preferred_hour(self) -> int | None:
        """The local hour of day with most activity (ties: the earliest)."""
        return self.features.preferred_hour()

    def merge(self, other: CustomerState, now_ms: int) -> None:
        """Fold the state of a just-linked anonymous id into this customer (the models fold their own
        open items: ``outcomes``, ``offers_open``)."""
        self.features.merge(other.features, now_ms)
        self.book = self.book.merged(other.book)  # its timers and causes of rules this one lacks
        self.linked_ids = (*self.linked_ids[-4:], other.id)
        self.timezone = self.timezone or other.timezone
        if other.contacts:
            self.contacts = merge_contacts(self.contacts, other.contacts)
        self.exposures = merge_exposures(self.exposures, other.exposures)
        self.touches = merge_touches(self.touches, other.touches)
        self.match_keys = match_keys.merged(self.match_keys, other.match_keys)


def merge_contacts(mine: tuple[Any, ...], theirs: tuple[Any, ...]) -> tuple[Any, ...]:
    """The records of two customers becoming one (an anonymous id linked): deliveries and held
    decisions of both in time order, the latest consent change per channel."""
    (deliveries, held, consents), (their_deliveries, their_held, their_consents) = mine or ((), (), ()), theirs
    latest: dict[str, tuple[Any, ...]] = {}
    for change in sorted((*their_consents, *consents), key=lambda c: c[3]):
        latest[change[0]] = change
    return (
        tuple(sorted({*deliveries, *their_deliveries})),
        tuple(sorted({*held, *their_held}, key=lambda entry: (entry[0], entry[1]))),
        tuple(sorted(latest.values())),
    )


EXPOSURE_FIELDS = 5
"""A customer's ``exposures``, flat: (experiment, arm, first exposed at, converted 0/1, pre-period orders) each."""
TOUCH_FIELDS = 4
"""A customer's ``touches``, flat, oldest first: (stamp, rule id, channel, offer id or "") each, the stamp being
the delivery's time (8 bytes, big-endian milliseconds) and its decision id (16 bytes) in one bytes object."""
MAX_TOUCHES = 8


def merge_exposures(own: tuple[Any, ...], carried: tuple[Any, ...]) -> tuple[Any, ...]:
    """A linked customer's exposures: its own, and the adopted anonymous state's in other experiments."""
    known = own[::EXPOSURE_FIELDS]
    merged = own
    for at in range(0, len(carried), EXPOSURE_FIELDS):
        if carried[at] not in known:
            merged += carried[at : at + EXPOSURE_FIELDS]
    return merged


def merge_touches(own: tuple[Any, ...], carried: tuple[Any, ...]) -> tuple[Any, ...]:
    """A linked customer's touches and the adopted anonymous state's, by time, the last :data:`MAX_TOUCHES`."""
    if not carried:
        return own
    touches = sorted(
        tuple(values[at : at + TOUCH_FIELDS]) for values in (own, carried) for at in range(0, len(values), TOUCH_FIELDS)
    )
    return tuple(value for touch in touches[-MAX_TOUCHES:] for value in touch)


Checkpoint = tuple[Any, ...]
_fields = attrgetter(*CustomerState.__slots__)  # every field's value, in one call
