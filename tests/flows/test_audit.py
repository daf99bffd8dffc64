"""The outside check of deliveries against consent, quiet hours and caps, on hand-made cases."""

from __future__ import annotations

from typing import Any

import orjson

from connectors.synthetic import HOUR_MS, MINUTE_MS, iso
from flows.audit import (
    Customers,
    Sent,
    delivered,
    in_quiet_hours,
    over_daily_cap,
    over_rolling_cap,
    without_consent,
)
from schemas.timestamps import epoch_ms

MIDNIGHT_PARIS = epoch_ms("2026-01-05T23:00:00.000Z")  # 2026-01-06 00:00 in Paris (UTC+1 in winter)


def line(at: int, **fields: Any) -> bytes:
    return orjson.dumps({"type": "track", "messageId": f"m-{at}", "timestamp": iso(at), **fields})


def consent(at: int, channel: str, granted: bool, **ids: str) -> bytes:
    return line(at, event="Consent Updated", properties={"channel": channel, "granted": granted}, **ids)


def sent(customer: str, at: int, channel: str = "push") -> Sent:
    return Sent(customer, channel, at, "rule", f"d-{customer}-{at}")


def test_delivered_reads_triggers_in_time_order() -> None:
    def trigger(at: int, channel: str) -> bytes:
        data = {"channel": channel, "rule_id": "r"}
        return orjson.dumps({"id": f"d{at}", "subject": "u", "time": iso(at), "data": data})

    records = [
        ("triggers.push", trigger(2, "push")),
        ("audience_changes", b"{}"),
        ("triggers.in_app", trigger(1, "in_app")),
    ]
    assert delivered(records) == [Sent("u", "in_app", 1, "r", "d1"), Sent("u", "push", 2, "r", "d2")]


def test_a_delivery_after_a_no_breaks_consent_until_a_yes() -> None:
    t = MIDNIGHT_PARIS
    customers = Customers(
        [
            consent(t, "push", False, userId="u"),
            consent(t + HOUR_MS, "push", True, userId="u"),
            line(t, event="Product Viewed", anonymousId="a", userId="u"),
        ]
    )
    deliveries = [
        sent("u", t),
        sent("u", t + 1),
        sent("a", t + 2),
        sent("u", t + 3, "email"),
        sent("u", t + HOUR_MS + 1),
    ]
    assert without_consent(deliveries, customers) == deliveries[1:3]


def test_quiet_hours_are_in_the_customers_local_time() -> None:
    customers = Customers([line(0, event="Product Viewed", userId="paris", context={"timezone": "Europe/Paris"})])
    night = [
        sent("paris", MIDNIGHT_PARIS - 3 * HOUR_MS + 30 * MINUTE_MS),
        sent("paris", MIDNIGHT_PARIS + 8 * HOUR_MS - 1),
    ]
    day = [sent("paris", MIDNIGHT_PARIS + 8 * HOUR_MS), sent("paris", MIDNIGHT_PARIS - 3 * HOUR_MS - 1)]
    utc = [sent("nowhere", MIDNIGHT_PARIS + 7 * HOUR_MS + 30 * MINUTE_MS)]  # 07:30 UTC, 08:30 in Paris
    in_app = [sent("paris", MIDNIGHT_PARIS, "in_app")]
    found = in_quiet_hours(night + day + utc + in_app, customers, ("push", "sms"), 21 * 60, 8 * 60)
    assert found == [*night, *utc]
    assert in_quiet_hours(night + day, customers, ("push",), 12 * 60, 14 * 60) == []


def test_a_rolling_cap_counts_the_window_before_each_delivery() -> None:
    customers = Customers([line(0, event="Product Viewed", anonymousId="a", userId="u")])
    t = MIDNIGHT_PARIS
    deliveries = [sent("u", t), sent("a", t + 4 * HOUR_MS - 1), sent("u", t + 8 * HOUR_MS), sent("v", t + 1)]
    assert over_rolling_cap(deliveries, customers, ("push",), 1, 4 * HOUR_MS) == [deliveries[1]]
    assert over_rolling_cap(deliveries, customers, ("in_app",), 1, 4 * HOUR_MS) == []
    week = [sent("u", t + n * 2 * 24 * HOUR_MS) for n in range(5)]
    assert over_rolling_cap(week, customers, None, 3, 7 * 24 * HOUR_MS) == week[3:]  # days 0, 2, 4, 6; 2, 4, 6, 8


def test_a_daily_cap_counts_local_days() -> None:
    customers = Customers([line(0, event="Product Viewed", userId="u", context={"timezone": "Europe/Paris"})])
    t = MIDNIGHT_PARIS
    deliveries = [
        sent("u", t - 2 * HOUR_MS, "in_app"),
        sent("u", t + HOUR_MS, "in_app"),
        sent("u", t + 2 * HOUR_MS, "in_app"),
    ]
    assert over_daily_cap(deliveries, customers, ("in_app",), 1) == [deliveries[2]]
    assert over_daily_cap(deliveries, customers, ("in_app",), 2) == []


def test_the_zone_is_the_one_known_at_the_delivery() -> None:
    """Before any event names the customer's zone, the policy's default zone stands."""
    named = MIDNIGHT_PARIS + HOUR_MS
    customers = Customers([line(named, event="Product Viewed", userId="u", context={"timezone": "Europe/Paris"})])
    at_seven_utc = MIDNIGHT_PARIS + 8 * HOUR_MS + 30 * MINUTE_MS  # 07:30 UTC, 08:30 in Paris
    assert customers.zone("u", named - 1) == "UTC" and customers.zone("u", named) == "Europe/Paris"
    assert customers.zone("u", named - 1, "Europe/Lisbon") == "Europe/Lisbon"
    early = [sent("u", MIDNIGHT_PARIS + 30 * MINUTE_MS)]  # 23:30 UTC, 00:30 Paris: quiet either way
    assert in_quiet_hours([*early, sent("u", at_seven_utc)], customers, ("push",), 21 * 60, 8 * 60) == early
