"""Customers who answer the engine's messages with a known lift and a known fatigue.

The generated stream (:mod:`connectors.synthetic`) is what customers do on their own. Here they
also respond to what reaches them: a delivered trigger adds, with a chance known in advance, an
order within the channel's response window. The chance is the persona's lift on the channel
(:data:`RESPONSE_LIFT`), multiplied by :data:`FATIGUE_FACTOR` for every message the customer
received in the :data:`FATIGUE_DAYS` before it (under any of their ids): more messages, weaker
response.

Each delivery is drawn from ``Random(f"{seed}:respond:{decision id}")``, so the same decisions
give the same responses whatever else happens. :meth:`Responders.deliver` is called by a closed
loop (``flows.simulate``) that feeds the engine, reads its triggers and merges the responses into
the stream; :meth:`Responders.truth` is the ground truth: the parameters, and every delivery with
its chance and whether (and when) the customer responded because of it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import asdict, dataclass
from random import Random
from typing import Any

from connectors.synthetic import CATALOG, CURRENCY, DAY_MS, HOUR_MS, MINUTE_MS, Profile, _profile, iso
from schemas.errors import ConfigurationError

__all__ = [
    "FATIGUE_DAYS",
    "FATIGUE_FACTOR",
    "RESPONSE_LIFT",
    "RESPONSE_WINDOW_MS",
    "Delivery",
    "Responders",
]

# The extra chance of an order within the channel's window after a delivered trigger, for a
# customer who received no other message in the last FATIGUE_DAYS.
RESPONSE_LIFT: dict[str, dict[str, float]] = {
    "high_value": {"push": 0.10, "in_app": 0.12, "email": 0.05, "sms": 0.08},
    "lapsed": {"push": 0.15, "in_app": 0.10, "email": 0.06, "sms": 0.10},
    "new": {"push": 0.12, "in_app": 0.15, "email": 0.08, "sms": 0.06},
    "browser": {"push": 0.05, "in_app": 0.10, "email": 0.03, "sms": 0.03},
    "store_regular": {"push": 0.06, "in_app": 0.04, "email": 0.04, "sms": 0.05},
}
RESPONSE_WINDOW_MS: dict[str, int] = {"push": 24 * HOUR_MS, "in_app": HOUR_MS, "email": 7 * DAY_MS, "sms": 24 * HOUR_MS}
FATIGUE_DAYS = 7
FATIGUE_FACTOR = 0.5  # each message received in the last FATIGUE_DAYS multiplies the response by this
RESPONSE_MIN_DELAY_MS = MINUTE_MS  # nobody orders within a minute of a message


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivered trigger and what the truth made of it."""

    decision_id: str
    customer: str  # as the engine knows them: their userId, or an anonymous id
    person: str  # who they are: their userId, also before they signed up
    persona: str | None  # None: a customer the generator does not know
    channel: str
    rule_id: str
    at: str  # when it was delivered
    earlier_messages: int  # messages the customer received in the FATIGUE_DAYS before it
    chance: float  # the chance it caused an order within its window (0 when seen too late, see deliver)
    responded: bool
    answer_from: str | None = None  # when an answer may come (uniformly), if it can
    answer_until: str | None = None
    order_id: str | None = None
    order_at: str | None = None


class Responders:
    """The generated customers, answering deliveries with known chances (see the module's docs)."""

    def __init__(self, customers: int, days: int, seed: int) -> None:
        if customers < 0 or days < 0:
            raise ConfigurationError("customers and days must be >= 0")
        self.seed = seed
        self.customers, self.days = customers, days
        self.profiles: dict[str, Profile] = {}
        for index in range(customers if days else 0):
            profile = _profile(index, seed, days)
            for customer_id in (profile.user_id, profile.app_id, profile.web_id):
                self.profiles[customer_id] = profile
        self.received: dict[str, list[int]] = defaultdict(list)  # person -> delivery times (ms), in order
        self.deliveries: list[Delivery] = []

    def deliver(
        self, customer: str, channel: str, decision_id: str, rule_id: str, at_ms: int, earliest_ms: int
    ) -> dict[str, Any] | None:
        """Note a delivery at ``at_ms``; the customer's response (an ``Order Completed``), if any.

        ``earliest_ms`` is the first time the response may be placed at (the stream before it is
        already written): a delivery whose window ends before it cannot be answered (chance 0,
        as an in-app message seen only after its moment passed); otherwise the order falls
        uniformly between the later of the two and the window's end.
        """
        profile = self.profiles.get(customer)
        persona, person = (profile.persona, profile.user_id) if profile is not None else (None, customer)
        earlier = self._earlier_messages(person, at_ms)
        window_end = at_ms + RESPONSE_WINDOW_MS.get(channel, 0)
        start = max(at_ms + RESPONSE_MIN_DELAY_MS, earliest_ms)
        chance = self.chance(persona, channel, earlier) if start <= window_end else 0.0
        rng = Random(f"{self.seed}:respond:{decision_id}")
        responded = rng.random() < chance
        order = None
        if responded and profile is not None:
            order = self._order(profile, customer, decision_id, rng.randint(start, window_end), rng)
        answerable = chance > 0
        self.deliveries.append(
            Delivery(
                decision_id,
                customer,
                person,
                persona,
                channel,
                rule_id,
                iso(at_ms),
                earlier,
                chance,
                order is not None,
                iso(start) if answerable else None,
                iso(window_end) if answerable else None,
                order and order["properties"]["order_id"],
                order and order["timestamp"],
            )
        )
        return order

    @staticmethod
    def chance(persona: str | None, channel: str, earlier_messages: int) -> float:
        """The truth: the chance a delivery causes an order, after ``earlier_messages`` in the fatigue window."""
        lift = RESPONSE_LIFT.get(persona or "", {}).get(channel, 0.0)
        return lift * FATIGUE_FACTOR**earlier_messages

    def _earlier_messages(self, person: str, at_ms: int) -> int:
        times = self.received[person]
        before = bisect_left(times, at_ms)
        earlier = before - bisect_left(times, at_ms - FATIGUE_DAYS * DAY_MS, 0, before)
        times.insert(before, at_ms)
        return earlier

    def _order(self, profile: Profile, customer: str, decision_id: str, at_ms: int, rng: Random) -> dict[str, Any]:
        """An app order by ``customer`` (as the engine knows them) at ``at_ms``: one favourite product."""
        items = CATALOG[rng.choice(profile.favourites)]
        item = items[int(len(items) * rng.random() ** 2)]
        quantity = 1 + int(rng.random() ** 3 * 2)
        total = round(item.price * quantity, 2)
        order_id = f"o-r-{decision_id}"
        line = {"product_id": item.id, "name": item.name, "category": item.category, "price": item.price}
        event: dict[str, Any] = {
            "type": "track",
            "event": "Order Completed",
            "messageId": f"m-r-{decision_id}",
            "timestamp": iso(at_ms),
            "receivedAt": iso(at_ms + 200),
            "context": {"channel": "app", "timezone": profile.city.timezone, "locale": profile.city.locale},
            "properties": {
                "order_id": order_id,
                "total": total,
                "currency": CURRENCY,
                "products": [{**line, "quantity": quantity}],
            },
        }
        event["userId" if customer == profile.user_id else "anonymousId"] = customer
        return event

    def truth(self) -> dict[str, Any]:
        """The parameters, and every delivery with its chance and response."""
        return {
            "seed": self.seed,
            "customers": self.customers,
            "days": self.days,
            "response_lift": RESPONSE_LIFT,
            "response_window_ms": RESPONSE_WINDOW_MS,
            "fatigue": {"days": FATIGUE_DAYS, "factor": FATIGUE_FACTOR},
            "personas": {p.user_id: p.persona for customer, p in self.profiles.items() if customer == p.user_id},
            "deliveries": [asdict(d) for d in self.deliveries],
        }
