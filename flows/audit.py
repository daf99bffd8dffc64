"""Every delivered trigger held against consent, quiet hours and frequency caps, from the outside.

The engine's contact policy decides as the events come; this module checks afterwards, from a
recording and the triggers delivered for it, with nothing of the engine's code: the customer's
consent per channel as their last ``Consent Updated`` before a delivery said it, their local time
from the time zone their events gave (UTC when none did), and every window of deliveries.
Each check returns the deliveries that break it (empty: kept).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import orjson

from operators.rules import CompiledRules
from schemas.policy import ANY_CHANNEL, LOCAL_DAY
from schemas.streams import TRIGGER_STREAMS
from schemas.timestamps import epoch_ms

CONSENT = "Consent Updated"
ORDER = "Order Completed"
ANSWER_PREFIX = "m-r-"  # the messageId of an order a delivery caused (connectors.responders)


@dataclass(frozen=True, slots=True)
class Sent:
    """A delivered trigger: to whom (as the engine knows them), on which channel, when, which rule."""

    customer: str
    channel: str
    at_ms: int
    rule_id: str
    decision_id: str


def delivered(records: Iterable[tuple[str, bytes]]) -> list[Sent]:
    """The delivered triggers among ``(stream, CloudEvent)`` records, in time order."""
    sent = []
    for stream, body in records:
        if stream in TRIGGER_STREAMS:
            record = orjson.loads(body)
            data = record["data"]
            sent.append(
                Sent(record["subject"], data["channel"], epoch_ms(record["time"]), data["rule_id"], record["id"])
            )
    return sorted(sent, key=lambda s: (s.at_ms, s.customer, s.decision_id))


class Customers:
    """What a recording says of each customer: who they are (an anonymous id linked to a userId, by
    an event with both or an ``alias``, is that user, as the engine links them), their consent log
    per channel, their time zone, and their own orders (those no delivery caused)."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        self.links: dict[str, str] = {}  # anonymous id -> the userId it was linked to first
        self.consent: dict[tuple[str, str], list[tuple[int, bool]]] = defaultdict(list)
        self.zones: dict[str, list[tuple[int, str]]] = defaultdict(list)  # customer -> (from, zone), in time order
        self.orders: dict[str, list[int]] = defaultdict(list)  # person -> times of their own orders
        consents: list[tuple[str, str, int, bool]] = []
        orders: list[tuple[str, int]] = []
        for line in lines:
            event = orjson.loads(line)
            user, anonymous = event.get("userId"), event.get("anonymousId") or event.get("previousId")
            if user and anonymous:
                self.links.setdefault(anonymous, user)
            customer = user or anonymous
            if not customer:
                continue
            zone = event.get("context", {}).get("timezone")
            if zone and (not self.zones[customer] or self.zones[customer][-1][1] != zone):
                self.zones[customer].append((epoch_ms(event["timestamp"]), zone))
            name = event.get("event")
            if name == CONSENT:
                props = event["properties"]
                consents.append((customer, props["channel"], epoch_ms(event["timestamp"]), props["granted"]))
            elif name == ORDER and not event["messageId"].startswith(ANSWER_PREFIX):
                orders.append((customer, epoch_ms(event["timestamp"])))
        for customer, channel, at, granted in consents:
            self.consent[self.person(customer), channel].append((at, granted))
        for log in self.consent.values():
            log.sort(key=lambda entry: entry[0])
        for customer, at in orders:
            self.orders[self.person(customer)].append(at)
        for times in self.orders.values():
            times.sort()

    def person(self, customer_id: str) -> str:
        return self.links.get(customer_id, customer_id)

    def zone(self, customer_id: str, at_ms: int, default: str = "UTC") -> str:
        """The time zone the customer's events last named at ``at_ms`` (under this id, else the
        person's), else ``default``."""
        for customer in (customer_id, self.person(customer_id)):
            log = self.zones.get(customer, [])
            known = bisect_right(log, at_ms, key=lambda entry: entry[0])
            if known:
                return log[known - 1][1]
        return default

    def consented(self, customer_id: str, channel: str, at_ms: int) -> bool | None:
        """The customer's last word on ``channel`` strictly before ``at_ms`` (``None``: none yet)."""
        log = self.consent.get((self.person(customer_id), channel), [])
        before = bisect_left(log, at_ms, key=lambda entry: entry[0])
        return log[before - 1][1] if before else None


def without_consent(sent: list[Sent], customers: Customers, granted_only: Iterable[str] = ()) -> list[Sent]:
    """Deliveries on a channel the customer had said no to, or on one of ``granted_only`` without a yes."""
    needs_yes = set(granted_only)
    found = []
    for s in sent:
        said = customers.consented(s.customer, s.channel, s.at_ms)
        if said is False or (said is None and s.channel in needs_yes):
            found.append(s)
    return found


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_minute(at_ms: int, zone: str) -> int:
    """The minute of the day at ``at_ms`` in ``zone``."""
    local = datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(_zone(zone))
    return local.hour * 60 + local.minute


def local_day(at_ms: int, zone: str) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(_zone(zone)).date().isoformat()


def in_quiet_hours(
    sent: list[Sent],
    customers: Customers,
    channels: Iterable[str],
    start_minute: int,
    end_minute: int,
    default_zone: str = "UTC",
) -> list[Sent]:
    """Deliveries on ``channels`` at a local time within ``[start, end)`` (minutes of the day; a span
    over midnight when ``start > end``)."""
    quiet = set(channels)
    found = []
    for s in sent:
        if s.channel not in quiet:
            continue
        minute = local_minute(s.at_ms, customers.zone(s.customer, s.at_ms, default_zone))
        inside = (
            start_minute <= minute < end_minute
            if start_minute < end_minute
            else not end_minute <= minute < start_minute
        )
        if inside:
            found.append(s)
    return found


def over_rolling_cap(
    sent: list[Sent], customers: Customers, channels: Iterable[str] | None, limit: int, window_ms: int
) -> list[Sent]:
    """Deliveries (on ``channels``; ``None``: any) that make more than ``limit`` to one customer within
    ``window_ms`` (the deliveries in ``(t - window, t]``)."""
    found = []
    for times, group in _by_person(sent, customers, channels).values():
        for index, s in enumerate(group):
            if index + 1 - bisect_right(times, s.at_ms - window_ms, 0, index) > limit:
                found.append(s)
    return found


def over_daily_cap(
    sent: list[Sent], customers: Customers, channels: Iterable[str] | None, limit: int, default_zone: str = "UTC"
) -> list[Sent]:
    """Deliveries (on ``channels``; ``None``: any) beyond ``limit`` to one customer on one local day."""
    found = []
    for _, group in _by_person(sent, customers, channels).values():
        per_day: dict[str, int] = defaultdict(int)
        for s in group:
            day = local_day(s.at_ms, customers.zone(s.customer, s.at_ms, default_zone))
            per_day[day] += 1
            if per_day[day] > limit:
                found.append(s)
    return found


def _by_person(
    sent: list[Sent], customers: Customers, channels: Iterable[str] | None
) -> dict[str, tuple[list[int], list[Sent]]]:
    wanted = None if channels is None else set(channels)
    groups: dict[str, tuple[list[int], list[Sent]]] = defaultdict(lambda: ([], []))
    for s in sent:  # in time order
        if wanted is None or s.channel in wanted:
            times, group = groups[customers.person(s.customer)]
            times.append(s.at_ms)
            group.append(s)
    return groups


def policy_breaches(sent: list[Sent], customers: Customers, rules: CompiledRules) -> dict[str, list[Sent]]:
    """The deliveries that break ``rules``' contact policy, by what they break: consent (every rule),
    quiet hours, frequency caps and cooldowns (marketing rules: all but those tagged transactional)."""
    policy, zone = rules.policy, rules.policy.timezone
    transactional = {trigger.rule.id for trigger in rules.triggers if trigger.rule.transactional}
    marketing = [s for s in sent if s.rule_id not in transactional]
    granted_only = [channel for channel, needs in policy.consent.items() if needs == "granted"]
    consent = without_consent(marketing, customers, granted_only)
    consent += without_consent([s for s in sent if s.rule_id in transactional], customers)
    quiet = []
    for hours in policy.quiet_hours:
        quiet += in_quiet_hours(marketing, customers, hours.channels, hours.start, hours.end, zone)
    capped = []
    for cap in policy.caps:
        channels = None if cap.channel == ANY_CHANNEL else (cap.channel,)
        if cap.per == LOCAL_DAY:
            capped += over_daily_cap(marketing, customers, channels, cap.max, zone)
        else:
            capped += over_rolling_cap(marketing, customers, channels, cap.max, int(cap.per))
    cooldown = []
    for trigger in rules.triggers:
        if trigger.rule.cooldown and not trigger.rule.transactional:
            of_rule = [s for s in sent if s.rule_id == trigger.rule.id]
            cooldown += over_rolling_cap(of_rule, customers, None, 1, trigger.rule.cooldown)
    return {"no_consent": consent, "quiet_hours": quiet, "frequency_cap": capped, "cooldown": cooldown}
