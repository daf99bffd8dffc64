"""The contact policy: consent for every rule, cooldowns, caps, quiet hours, arbitration, exemptions."""

from __future__ import annotations

import pytest
from conftest import EngineHarness, decisions, pickled_snapshots, restore_snapshots, rules_from, track

from operators.engine import EngineConfig
from operators.rules import RuleFileError, load_rules
from schemas.records import SuppressionData

PARIS = {"timezone": "Europe/Paris"}
NEW_YORK = {"timezone": "America/New_York"}


def ruleset(policy: str, triggers: str | None = None) -> str:
    triggers = (
        triggers
        or """
  - id: promo
    channel: push
    on: Page
"""
    )
    return f"version: v\ntriggers:{triggers}\npolicy:\n{policy}"


def page(user: str = "u1", minutes: float = 0, days: float = 0, context: dict | None = None, **kw) -> dict:
    return track("Page", user, minutes, days, context=context or {}, **kw)


def consent(channel: str, granted: bool, minutes: float = 0, user: str = "u1", source: str | None = None) -> dict:
    props = {"channel": channel, "granted": granted} | ({"source": source} if source else {})
    return track("Consent Updated", user, minutes, props=props)


def sent(outputs: list) -> list[tuple[str, str, str]]:
    """(customer, rule, time) of every delivered trigger."""
    return [(d["subject"], d["data"]["rule_id"], d["time"]) for d in decisions(outputs, "triggers.")]


def stopped(outputs: list) -> list[tuple[str, str, str]]:
    """(customer, rule, reason) of every suppression, checked against the published contract."""
    records = decisions(outputs, "suppressions")
    for record in records:
        SuppressionData.model_validate(record["data"])
    return [(d["subject"], d["data"]["rule_id"], d["data"]["reason"]) for d in records]


def run(text: str, events: list[dict], config: EngineConfig | None = None) -> list:
    h = EngineHarness(rules_from(text), config)
    return h.feed(events)


def test_consent_is_enforced_for_a_rule_whose_condition_ignores_it():
    text = ruleset("  consent: {push: unless_denied}")
    out = run(
        text, [page(minutes=0), consent("push", False, 1), page(minutes=2), consent("push", True, 3), page(minutes=4)]
    )
    assert [t for _, _, t in sent(out)] == ["2026-01-05T10:00:00.000Z", "2026-01-05T10:04:00.000Z"]
    assert stopped(out) == [("u1", "promo", "no_consent")]
    assert decisions(out, "suppressions")[0]["data"]["detail"] == "push consent denied"


def test_a_channel_that_needs_a_grant_sends_nothing_until_granted():
    text = ruleset("  consent: {push: granted}")
    out = run(text, [page(minutes=0), consent("all", True, 1), page(minutes=2)])
    assert [t for _, _, t in sent(out)] == ["2026-01-05T10:02:00.000Z"]
    assert stopped(out) == [("u1", "promo", "no_consent")]


def test_a_consent_change_shows_its_source_and_time_in_the_profile():
    h = EngineHarness(rules_from(ruleset("  caps: []")), EngineConfig(profile_ms=1))
    out = h.feed([consent("push", False, 1, source="app_settings")])
    h.customers.profiles(out)  # those not sent yet
    profile = decisions(out, "profiles")[-1]
    assert profile["consent_changes"] == {
        "push": {"granted": False, "source": "app_settings", "at": "2026-01-05T10:01:00.000Z"}
    }


def test_a_rolling_cap_stops_what_exceeds_it_and_lets_through_after_the_window():
    text = ruleset("  caps: [{channel: push, max: 1, per: 4h}]")
    out = run(text, [page(minutes=0), page(minutes=60), page(minutes=241)])
    assert [t for _, _, t in sent(out)] == ["2026-01-05T10:00:00.000Z", "2026-01-05T14:01:00.000Z"]
    assert stopped(out) == [("u1", "promo", "frequency_cap")]
    assert decisions(out, "suppressions")[0]["data"]["detail"] == "at most 1 push per 4h"


def test_a_cap_across_channels_counts_every_channel():
    triggers = """
  - id: promo
    channel: push
    on: Page
  - id: banner
    channel: in_app
    on: Product Viewed
"""
    text = ruleset("  caps: [{channel: any, max: 2, per: 1d}]", triggers)
    viewed = [track("Product Viewed", "u1", m, props={"product_id": "p"}) for m in (1, 3)]
    out = run(text, [page(minutes=0), viewed[0], page(minutes=2), viewed[1]])
    assert [r for _, r, _ in sent(out)] == ["promo", "banner"]
    assert stopped(out) == [("u1", "promo", "frequency_cap"), ("u1", "banner", "frequency_cap")]


def test_a_local_day_cap_follows_the_customer_s_calendar_day():
    text = ruleset("  caps: [{channel: push, max: 1, per: local_day}]")
    # 04:30Z and 05:30Z are 23:30 and 00:30 in New York: two local days, one UTC day
    early = [page(minutes=-330, context=NEW_YORK), page(minutes=-270, context=NEW_YORK)]
    # 06:00Z and 23:00Z fall on the 5th in New York too: both capped
    later = [page(minutes=-240, context=NEW_YORK), page(minutes=13 * 60, context=NEW_YORK)]
    out = run(text, early + later)
    assert [t for _, _, t in sent(out)] == ["2026-01-05T04:30:00.000Z", "2026-01-05T05:30:00.000Z"]
    assert stopped(out) == [("u1", "promo", "frequency_cap")] * 2


def test_a_cooldown_keeps_a_rule_away_from_a_customer_it_reached():
    triggers = """
  - id: promo
    channel: push
    on: Page
    cooldown: 1d
  - id: other
    channel: push
    on: Product Viewed
"""
    out = run(
        ruleset("  caps: []", triggers),
        [page(minutes=0), track("Product Viewed", "u1", 5, props={"product_id": "p"}), page(minutes=10), page(days=1)],
    )
    assert [r for _, r, _ in sent(out)] == ["promo", "other", "promo"]
    assert stopped(out) == [("u1", "promo", "cooldown")]


def test_quiet_hours_defer_a_decision_to_their_end_in_the_customer_s_time_zone():
    text = ruleset('  quiet_hours: [{channels: [push], from: "21:00", until: "08:00", action: defer}]')
    h = EngineHarness(rules_from(text))
    out = h.feed([page(minutes=12 * 60 + 30, context=PARIS)])  # 23:30 in Paris
    assert sent(out) == [] and stopped(out) == []
    out = h.feed([page("u2", days=1, minutes=60)])  # the clock passes 07:00Z, 08:00 in Paris
    assert sent(out) == [("u1", "promo", "2026-01-06T07:00:00.000Z"), ("u2", "promo", "2026-01-06T11:00:00.000Z")]
    assert h.customers.stats["deferred"] == {"promo": 1}


def test_quiet_hours_can_drop_and_a_held_decision_that_expires_is_suppressed():
    drop = ruleset('  quiet_hours: [{channels: [push], from: "21:00", until: "08:00", action: drop}]')
    out = run(drop, [page(minutes=12 * 60 + 30, context=PARIS)])
    assert stopped(out) == [("u1", "promo", "quiet_hours")]
    short = """
  - id: promo
    channel: push
    on: Page
    expires_in: 2h
"""
    text = ruleset('  quiet_hours: [{channels: [push], from: "21:00", until: "08:00"}]', short)
    out = run(text, [page(minutes=12 * 60 + 30, context=PARIS), page("u2", days=1, minutes=60)])
    assert stopped(out) == [("u1", "promo", "quiet_hours")]
    assert "expired" in decisions(out, "suppressions")[0]["data"]["detail"]


def test_defer_to_the_preferred_hour_waits_for_the_customer_s_usual_time():
    text = ruleset('  quiet_hours: [{channels: [push], from: "21:00", until: "08:00", defer_to: preferred_hour}]')
    h = EngineHarness(rules_from(text))
    habits = [track("Application Opened", "u1", days=-d, minutes=(d % 3), context=PARIS) for d in range(1, 6)]
    h.feed(habits)  # active around 11:00 in Paris (10:00Z)
    out = h.feed([page(minutes=12 * 60 + 30, context=PARIS), page("u2", days=1, minutes=120)])
    assert ("u1", "promo", "2026-01-06T10:00:00.000Z") in sent(out)


def test_decisions_of_one_moment_compete_and_the_best_is_delivered():
    triggers = """
  - id: low
    channel: push
    on: Page
    priority: 1
  - id: high
    channel: in_app
    on: Page
    priority: 5
  - id: order_update
    channel: push
    on: Page
    tags: [transactional]
"""
    out = run(ruleset("  caps: []", triggers), [page(minutes=0)])
    assert sorted(r for _, r, _ in sent(out)) == ["high", "order_update"]
    assert stopped(out) == [("u1", "low", "lower_priority")]
    assert decisions(out, "suppressions")[0]["data"]["detail"].startswith("high won")


def test_an_arbitration_window_holds_decisions_and_delivers_the_best_of_them():
    triggers = """
  - id: first
    channel: push
    on: Page
  - id: better
    channel: push
    on: Product Viewed
    priority: 3
"""
    text = ruleset("  arbitration: {window: 10m}", triggers)
    h = EngineHarness(rules_from(text))
    out = h.feed([page(minutes=0), track("Product Viewed", "u1", 4, props={"product_id": "p"})])
    assert sent(out) == []
    out = h.feed([page("u2", minutes=30)])
    assert ("u1", "better", "2026-01-05T10:10:00.000Z") in sent(out)
    assert stopped(out) == [("u1", "first", "lower_priority")]


def test_transactional_rules_pass_caps_and_quiet_hours_but_not_a_denial():
    triggers = """
  - id: receipt
    channel: push
    on: Page
    tags: [transactional]
"""
    policy = (
        '  caps: [{channel: push, max: 1, per: 1d}]\n  quiet_hours: [{channels: [push], from: "21:00", until: "08:00"}]'
    )
    night = 12 * 60 + 30
    events = [page(minutes=night, context=PARIS), page(minutes=night + 1), consent("push", False, night + 2)]
    out = run(ruleset(policy, triggers), [*events, page(minutes=night + 3)])
    assert len(sent(out)) == 2
    assert stopped(out) == [("u1", "receipt", "no_consent")]


def test_a_held_decision_survives_a_restore_and_is_delivered_once():
    text = ruleset('  quiet_hours: [{channels: [push], from: "21:00", until: "08:00"}]')
    h = EngineHarness(rules_from(text), EngineConfig(snapshots=True))
    h.feed([page(minutes=12 * 60 + 30, context=PARIS)])
    restored = restore_snapshots(EngineHarness(rules_from(text), EngineConfig(snapshots=True)), pickled_snapshots(h))
    out = restored.feed([page("u2", days=1, minutes=60)])
    assert [(c, t) for c, _, t in sent(out)] == [("u1", "2026-01-06T07:00:00.000Z"), ("u2", "2026-01-06T11:00:00.000Z")]


@pytest.mark.parametrize(
    ("policy", "field", "message"),
    [
        ("  caps: [{channel: push, max: 1, per: 4 hours}]", "policy.caps.0.per", "is not a duration"),
        (
            '  quiet_hours: [{channels: [push], from: "9pm", until: "08:00"}]',
            "policy.quiet_hours.0.from",
            "time of day",
        ),
        ("  timezone: Mars/Olympus", "policy.timezone", "IANA time zone"),
        ("  consent: {push: maybe}", "policy.consent.push", "granted"),
        ("  caps: [{channel: fax, max: 1, per: 1d}]", "policy.caps.0.channel", "push"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field_and_line(policy, field, message):
    with pytest.raises(RuleFileError) as err:
        rules_from(ruleset(policy))
    text = str(err.value)
    assert f"field '{field}'" in text and message in text and "test.yaml:8" in text, text


def test_a_policy_file_is_read_and_its_errors_name_it(tmp_path):
    (tmp_path / "policy.yaml").write_text("caps:\n  - {channel: push, max: 2, per: 1d}\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: v\npolicy: policy.yaml\n")
    assert load_rules(rules).policy.caps[0].max == 2
    (tmp_path / "policy.yaml").write_text("caps:\n  - {channel: push, max: 0, per: 1d}\n")
    with pytest.raises(RuleFileError) as err:
        load_rules(rules)
    assert "policy.yaml:2" in str(err.value) and "policy.caps.0.max" in str(err.value)


def test_the_starter_policy_has_the_documented_caps_and_quiet_hours():
    policy = load_rules().policy
    caps = {(c.channel, c.max, c.per) for c in policy.caps}
    assert caps == {("push", 1, 4 * 3_600_000), ("push", 3, 7 * 86_400_000), ("in_app", 1, "local_day")}
    quiet = policy.quiet_hours[0]
    assert sorted(quiet.channels) == ["push", "sms"] and (quiet.start, quiet.end) == (21 * 60, 8 * 60)


def test_the_offer_value_outweighs_priority_and_counts_only_offers_that_may_be_given():
    text = """
version: v
triggers:
  - {id: cheap, channel: in_app, on: Page, priority: 9, offer_id: small}
  - {id: rich, channel: in_app, on: Page, offer_id: big}
  - {id: pick, channel: push, on: Product Viewed, priority: 1, offer_id: next_best}
  - {id: plain, channel: push, on: Product Viewed, priority: 2}
offers:
  - {id: small, channels: [in_app], value: 1}
  - {id: big, channels: [in_app], value: 20}
  - {id: spent, channels: [push], value: 50, valid_until: "2026-01-01"}
  - {id: modest, channels: [push], value: 0.5}
"""
    viewed = track("Product Viewed", "u1", 5, props={"product_id": "p"})
    out = run(text, [page(minutes=0), viewed], EngineConfig(models="off"))
    assert [r for _, r, _ in sent(out)] == ["rich", "plain"]  # 'spent' is out of date: 'pick' is worth 0.5
    assert stopped(out) == [("u1", "cheap", "lower_priority"), ("u1", "pick", "lower_priority")]
