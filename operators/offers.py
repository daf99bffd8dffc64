"""The offers catalogue at decision time: which offers a customer may get now, budgets, redemptions.

An offer may be given when the customer is in one of its audiences, their local time is in one of
its windows, their last known store is one of its stores (or within its radius of one), their local
date is within its validity, its budget is not spent and they have not reached its cap (see
:mod:`schemas.offers`). Only offers that may be given reach the next-best-offer policy.

**Budgets, whatever the number of workers.** Customers live in a fixed number of shards
(``NUDGEFLOW_SHARDS``), each applying its events in one deterministic order. Each customer shard owns
an equal share of every offer's budget of redemptions: ``budget // shards``, plus one for the first
``budget % shards`` shards; the offer is spent on a shard once that shard's customers have redeemed
its share. So a replay gives the same decisions with any number of workers or processes. Anonymous
customers (kept by the identity stage) own no share: offers with a budget go to identified customers
only.

**Redemptions.** A ``Coupon Applied`` naming an offer (``coupon_id``) or an ``Order Completed`` naming
it (``coupon``) is a redemption, counted once per order (the coupon applied and the order that
follows it with the same ``order_id`` are one), per offer for the shard and per customer (in the
customer's ``redemptions``: offer, times, the last order id, ... for the per-customer cap).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from itertools import chain
from typing import Any

from operators.policy import local_time as policy_local_time
from schemas.envelope import Envelope
from schemas.errors import ConfigurationError
from schemas.offers import DAYS, Offer, hours_span
from state.customer import CustomerState
from state.reference import NO_REFERENCE, Reference

REDEMPTION_FIELDS = {"Coupon Applied": "coupon_id", "Order Completed": "coupon"}  # event -> offer id field
REDEEMED_FIELDS = 3  # an offer's entry in ``state.redemptions``: offer id, times redeemed, last order id
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
WHY = {
    "window": "outside its local hours",
    "store": "not for the customer's store",
    "validity": "not valid on the customer's date",
    "budget": "budget spent",
    "anonymous": "has a budget: for identified customers only",
    "per_customer": "redeemed as often as a customer may",
}


def budget_share(budget: int, shard: int, shards: int) -> int:
    """The redemptions of a ``budget`` that customer shard ``shard`` (of ``shards``) may give."""
    return budget // shards + (1 if shard < budget % shards else 0)


def local_time(zone: str, at_ms: int) -> tuple[int, int, int]:
    """``at_ms`` in ``zone``: minute of the day, weekday (Monday 0), day number (days since 1970-01-01
    there), as the contact policy reads local time."""
    minute, day = policy_local_time(zone, at_ms)
    return minute, (day + 3) % 7, day


@dataclass(frozen=True, slots=True)
class _Rules:
    """An offer's gates, read once from its definition."""

    offer: Offer
    spans: tuple[tuple[frozenset[int], int, int], ...]  # (weekdays, first minute, end minute)
    first_day: int | None
    last_day: int | None
    stores: frozenset[str]

    @classmethod
    def of(cls, offer: Offer) -> _Rules:
        spans = tuple(
            (frozenset(DAYS.index(day) for day in window.days), *hours_span(window.hours)) for window in offer.windows
        )
        first = offer.valid_from.toordinal() - _EPOCH_ORDINAL if offer.valid_from else None
        last = offer.valid_until.toordinal() - _EPOCH_ORDINAL if offer.valid_until else None
        return cls(offer, spans, first, last, frozenset(offer.stores))

    def in_window(self, minute: int, weekday: int) -> bool:
        for days, start, end in self.spans:
            if start < end:
                if weekday in days and start <= minute < end:
                    return True
            elif (weekday in days and minute >= start) or ((weekday - 1) % 7 in days and minute < end):
                return True
        return False


class OfferCatalogue:
    """The catalogue of one rule set, with the reference data its store rules need."""

    def __init__(self, offers: Sequence[Offer], reference: Reference | None = None, default_zone: str = "UTC") -> None:
        self.reference = reference or NO_REFERENCE
        self.default_zone = default_zone  # of customers whose own is not known (the contact policy's)
        self.rules = {offer.id: _Rules.of(offer) for offer in offers}
        self._reach: dict[tuple[str, str], bool] = {}  # (offer, store) -> the store is within the offer's reach

    def __contains__(self, offer_id: object) -> bool:
        return offer_id in self.rules

    def why_not(
        self,
        offer_id: str,
        state: CustomerState,
        at_ms: int,
        shard: int | None,
        shards: int,
        counts: dict[str, dict[str, int]],
    ) -> str | None:
        """Why ``offer_id`` may not be given to this customer at ``at_ms`` (a key of :data:`WHY`), or
        ``None``: it may. ``shard`` is the customer's shard of ``shards`` (``None``: an anonymous
        customer, whose shard owns no budget); ``counts`` the shard's counts per offer (``redeemed``)."""
        rules = self.rules[offer_id]
        offer = rules.offer
        if rules.spans or rules.first_day is not None or rules.last_day is not None:
            minute, weekday, day = local_time(self.customer_zone(state), at_ms)
            if rules.spans and not rules.in_window(minute, weekday):
                return "window"
            if (rules.first_day is not None and day < rules.first_day) or (
                rules.last_day is not None and day > rules.last_day
            ):
                return "validity"
        if rules.stores and not self._within_reach(rules, state.last_store):
            return "store"
        if offer.budget is not None:
            if shard is None:
                return "anonymous"
            if counts.get(offer_id, {}).get("redeemed", 0) >= budget_share(offer.budget, shard, shards):
                return "budget"
        if offer.per_customer is not None and redeemed(state, offer_id) >= offer.per_customer:
            return "per_customer"
        return None

    def customer_zone(self, state: CustomerState) -> str:
        """The customer's time zone: the last one their events named (or their store's), else that of
        their last store, else the default."""
        return state.timezone or self.reference.store_zone(state.last_store) or self.default_zone

    def _within_reach(self, rules: _Rules, store: str | None) -> bool:
        """Whether the customer's last known ``store`` is one of the offer's, or within its radius of one."""
        if store is None:
            return False
        if store in rules.stores:
            return True
        offer = rules.offer
        if offer.radius_km is None:
            return False
        if store not in self.reference.stores:
            return False  # no location: only its id can match
        known = self._reach.get((offer.id, store))
        if known is None:  # at most one entry per offer and store of the stores file
            distances = (self.reference.distance_km(store, other) for other in offer.stores)
            known = self._reach[offer.id, store] = any(d is not None and d <= offer.radius_km for d in distances)
        return known

    # --- redemptions ---------------------------------------------------------------------
    def redeem(self, state: CustomerState, env: Envelope, stats: dict[str, Any]) -> str | None:
        """Count the redemption ``env`` makes of a catalogue offer (once per order) for the customer and
        in the shard's ``stats`` (``offers``); return the offer."""
        props = env.event.properties
        offer_id = getattr(props, REDEMPTION_FIELDS[env.name], None)
        if offer_id is None or offer_id not in self.rules:
            return None
        order_id = getattr(props, "order_id", None) or ""
        entries = redemption_entries(state)
        times, last_order = entries.get(offer_id, (0, ""))
        if order_id and order_id == last_order:
            return None  # the order of a coupon applied before it: one redemption
        entries[offer_id] = (times + 1, order_id)
        state.redemptions = tuple(chain.from_iterable((offer, *entry) for offer, entry in entries.items()))
        offer_counts = stats.setdefault("offers", {}).setdefault(offer_id, {})
        offer_counts["redeemed"] = offer_counts.get("redeemed", 0) + 1
        return offer_id

    def net_value(self, offer_id: str, env: Envelope) -> float:
        """What a redemption of ``offer_id`` by ``env`` earned net of the discount: the order's amount (an
        order naming it) or the offer's ``value`` (a coupon applied), minus the discount given (the
        event's ``discount`` where it says, else the offer's discount on that value)."""
        offer = self.rules[offer_id].offer
        props = env.event.properties
        value = props.amount() if env.name == "Order Completed" else offer.value
        discount = getattr(props, "discount", None)
        if discount is None:
            discount = offer.discount.cost(value) if offer.discount is not None else 0.0
        return round(value - discount, 6)


def redemption_entries(state: CustomerState) -> dict[str, tuple[int, str]]:
    """The customer's redemptions: offer -> (times, last order id), in the order first redeemed."""
    flat = state.redemptions
    return {flat[at]: (flat[at + 1], flat[at + 2]) for at in range(0, len(flat), REDEEMED_FIELDS)}


def redeemed(state: CustomerState, offer_id: str) -> int:
    """How many times the customer redeemed ``offer_id``."""
    flat = state.redemptions
    for at in range(0, len(flat), REDEEMED_FIELDS):
        if flat[at] == offer_id:
            return flat[at + 1]
    return 0


def merge_redemptions(state: CustomerState, other: CustomerState) -> None:
    """Fold the redemptions of a just-linked anonymous customer into ``state``'s."""
    if not other.redemptions:
        return
    entries = redemption_entries(state)
    for offer_id, (times, last_order) in redemption_entries(other).items():
        mine, _ = entries.get(offer_id, (0, ""))
        entries[offer_id] = (mine + times, last_order)
    state.redemptions = tuple(chain.from_iterable((offer, *entry) for offer, entry in entries.items()))


def refusal_detail(reasons: Iterable[tuple[str, str]]) -> str:
    """Human text for offers that may not be given: ``browse-10pct: budget spent; ...``."""
    return "; ".join(f"{offer}: {WHY[why]}" for offer, why in reasons)


def check_catalogue(offers: Sequence[Offer], reference: Reference | None) -> None:
    """Refuse offers whose store rules the reference data cannot serve: a radius without store
    locations, or (with a stores file) stores it does not list."""
    stores = (reference or NO_REFERENCE).stores
    problems = []
    for offer in offers:
        if offer.radius_km is not None and not stores:
            problems.append(f"offer '{offer.id}': 'radius_km' needs store locations (set NUDGEFLOW_STORES)")
        unknown = [store for store in offer.stores if stores and store not in stores]
        if unknown:
            problems.append(f"offer '{offer.id}': stores {unknown} are not in the stores file (NUDGEFLOW_STORES)")
    if problems:
        raise ConfigurationError("\n".join(problems))
