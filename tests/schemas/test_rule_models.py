"""Rule file models: durations, trigger constraints, unique ids, strict fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.rules import AudienceRule, RuleSet, TriggerRule, parse_duration

TRIGGER = {"id": "cart", "channel": "push", "on": "Product Added"}


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("30m", 30 * 60_000),
        ("2h", 2 * 3_600_000),
        ("7d", 7 * 86_400_000),
        ("90s", 90_000),
        ("500ms", 500),
        ("1.5h", 5_400_000),
        (" 10 m ", 600_000),
    ],
)
def test_parse_duration(text, ms):
    assert parse_duration(text) == ms


@pytest.mark.parametrize("bad", ["30", "m", "30 minutes", "2w", "-5m", "30M", "", None, True, 1.5, "1h30m", 1500, 90])
def test_parse_duration_rejects_what_is_not_a_duration(bad):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(bad)


def test_trigger_durations_are_parsed_and_must_be_positive():
    rule = TriggerRule(**TRIGGER, after="30m", unless="Order Completed", expires_in="2d")
    assert rule.after == 1_800_000
    assert rule.expires_in == 2 * 86_400_000
    assert rule.unless == ["Order Completed"], "a single event name becomes a list"
    assert TriggerRule(**TRIGGER).expires_in == 24 * 3_600_000
    for bad in ("0m", 0, -1000):
        with pytest.raises(ValidationError, match="after"):
            TriggerRule(**TRIGGER, after=bad)


def test_unless_without_after_is_rejected():
    with pytest.raises(ValidationError, match="'unless' needs 'after'"):
        TriggerRule(**TRIGGER, unless=["Order Completed"])


def test_trigger_needs_at_least_one_event_and_a_known_channel():
    with pytest.raises(ValidationError, match="on"):
        TriggerRule(**{**TRIGGER, "on": []})
    with pytest.raises(ValidationError, match="on"):
        TriggerRule(**{**TRIGGER, "on": [""]})
    with pytest.raises(ValidationError, match="channel"):
        TriggerRule(**{**TRIGGER, "channel": "fax"})
    with pytest.raises(ValidationError, match="once_per"):
        TriggerRule(**TRIGGER, once_per="week")


def test_duplicate_rule_ids_are_rejected():
    with pytest.raises(ValidationError, match="rule id 'cart' is used twice"):
        RuleSet(version="v1", triggers=[TRIGGER, {**TRIGGER, "channel": "sms"}])
    with pytest.raises(ValidationError, match="rule id 'vip' is used twice"):
        RuleSet(version="v1", audiences=[{"id": "vip", "when": "orders > 1"}, {"id": "vip", "when": "true"}])


def test_extra_fields_are_rejected_everywhere():
    with pytest.raises(ValidationError, match="colour"):
        TriggerRule(**TRIGGER, colour="red")
    with pytest.raises(ValidationError, match="channel"):
        AudienceRule(id="vip", when="orders > 1", channel="push")
    with pytest.raises(ValidationError, match="trigger"):
        RuleSet(version="v1", trigger=[TRIGGER])


@pytest.mark.parametrize("bad", ["Cart", "1cart", "cart rule", "", "c" * 65, "cart!"])
def test_rule_ids_must_match_the_pattern(bad):
    with pytest.raises(ValidationError, match="id"):
        TriggerRule(**{**TRIGGER, "id": bad})


@pytest.mark.parametrize("good", ["c", "cart_abandonment.v2", "winback-60d", "c" * 64])
def test_rule_ids_that_match_the_pattern(good):
    assert TriggerRule(**{**TRIGGER, "id": good}).id == good


def test_rules_are_frozen_and_version_is_required():
    rule = TriggerRule(**TRIGGER)
    with pytest.raises(ValidationError):
        rule.channel = "sms"
    with pytest.raises(ValidationError, match="version"):
        RuleSet(triggers=[TRIGGER])


def test_an_audience_cannot_share_a_trigger_id_and_errors_point_at_the_id():
    with pytest.raises(ValidationError) as info:
        RuleSet(
            version="v1", triggers=[TRIGGER], audiences=[{"id": "ok", "when": "true"}, {"id": "cart", "when": "true"}]
        )
    [error] = info.value.errors()
    assert error["loc"] == ("audiences", 1, "id")
    assert error["msg"] == "'cart' is also a trigger's id: give each rule its own"
    with pytest.raises(ValidationError) as info:
        RuleSet(version="v1", triggers=[TRIGGER, {**TRIGGER, "channel": "sms"}, {**TRIGGER, "channel": "email"}])
    assert [e["loc"] for e in info.value.errors()] == [("triggers", 1, "id"), ("triggers", 2, "id")]
