"""The offers catalogue: local windows across zones and DST, stores and radius, validity, budgets,
per-customer caps, redemptions, and the net-of-discount reward."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conftest import T0, EngineHarness, decisions, envelopes, rules_from, track

from operators.engine import EngineConfig
from operators.offers import OfferCatalogue, budget_share, check_catalogue, local_time
from operators.rules import RuleFileError
from schemas.errors import ConfigurationError
from state.reference import Reference, Store

STORES = Reference(
    stores={
        store.id: store
        for store in (
            Store(id="ny", timezone="America/New_York", latitude=40.7128, longitude=-74.006),
            Store(id="paris", timezone="Europe/Paris", latitude=48.8566, longitude=2.3522),
            Store(id="versailles", timezone="Europe/Paris", latitude=48.8049, longitude=2.1204),
            Store(id="lyon", timezone="Europe/Paris", latitude=45.764, longitude=4.8357),
        )
    }
)


def catalogue(*offers: str, policy: str = "{exploration: 0.0}") -> str:
    """Rules with one push trigger on every ``Nudge`` event taking the next best of ``offers``, and one
    on ``Ping`` naming the first offer."""
    first = offers[0].split("id: ")[1].split(",")[0]
    lines = "\n".join(f"  - {offer}" for offer in offers)
    return f"""
version: v
triggers:
  - {{id: nudge, channel: push, on: Nudge, offer_id: next_best}}
  - {{id: ping, channel: push, on: Ping, offer_id: {first}}}
offers:
{lines}
next_best_offer: {policy}
"""


def minutes(iso: str) -> float:
    """Minutes from the tests' T0 to ``iso`` (UTC)."""
    return (datetime.fromisoformat(iso).replace(tzinfo=UTC) - T0).total_seconds() / 60


def candidates(h: EngineHarness, user: str, iso: str) -> list[str] | None:
    """The offers a ``Nudge`` of ``user`` at ``iso`` (UTC) may take (``None``: the decision was suppressed)."""
    found = decisions(h.feed([track("Nudge", user, minutes(iso))]), "triggers")
    if not found:
        return None
    [decision] = found
    return decision["data"]["offer_choice"]["candidates"]


def shop_at(h: EngineHarness, user: str, store: str, iso: str = "2026-01-05T10:00:00") -> None:
    h.feed([track("Store Visited", user, minutes(iso), props={"store_id": store})])


def test_local_time_is_the_customers_wall_clock_across_daylight_saving_changes():
    def wall(zone, iso):
        return local_time(zone, int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000))

    assert wall("America/New_York", "2026-03-06T14:30:00")[:2] == (9 * 60 + 30, 4)  # Friday, EST
    assert wall("America/New_York", "2026-03-09T14:30:00")[:2] == (10 * 60 + 30, 0)  # Monday, EDT
    assert wall("Europe/Paris", "2026-03-29T00:30:00")[:2] == (1 * 60 + 30, 6)  # Sunday, CET
    assert wall("Europe/Paris", "2026-03-29T01:30:00")[:2] == (3 * 60 + 30, 6)  # an hour later, CEST
    assert wall("UTC", "2026-01-05T23:59:00") == (23 * 60 + 59, 0, 20458)


def test_windows_follow_each_customers_local_time_across_zones_and_dst():
    rules = rules_from(
        catalogue(
            "{id: morning, channels: [push], windows: [{days: [mon, tue, wed, thu, fri], hours: '09:00-10:00'}]}",
            "{id: anytime, channels: [push]}",
        )
    )
    h = EngineHarness(rules, EngineConfig(reference=STORES))
    shop_at(h, "u-ny", "ny")
    shop_at(h, "u-paris", "paris")
    both, later = ["morning", "anytime"], ["anytime"]
    assert candidates(h, "u-ny", "2026-03-06T14:30:00") == both  # Friday 09:30 EST
    assert candidates(h, "u-paris", "2026-03-06T14:31:00") == later  # 15:31 in Paris
    assert candidates(h, "u-ny", "2026-03-07T14:30:00") == later  # Saturday
    assert candidates(h, "u-ny", "2026-03-09T14:30:00") == later  # Monday 10:30 EDT: summer time began
    assert candidates(h, "u-ny", "2026-03-10T13:30:00") == both  # Tuesday 09:30 EDT
    assert candidates(h, "u-paris", "2026-03-27T08:30:00") == both  # Friday 09:30 CET
    assert candidates(h, "u-paris", "2026-03-30T08:30:00") == later  # Monday 10:30 CEST
    assert candidates(h, "u-paris", "2026-03-31T07:30:00") == both  # Tuesday 09:30 CEST
    assert candidates(h, "u-nowhere", "2026-03-31T09:30:00") == both, "no store, no zone: UTC"


def test_a_window_past_midnight_belongs_to_the_day_it_starts():
    rules = rules_from(
        catalogue(
            "{id: late, channels: [push], windows: [{days: [fri], hours: '22:00-02:00'}]}",
            "{id: any, channels: [push]}",
        )
    )
    h = EngineHarness(rules)
    assert candidates(h, "u1", "2026-01-08T01:00:00") == ["any"]  # Thursday night
    assert candidates(h, "u1", "2026-01-09T23:00:00") == ["late", "any"]  # Friday 23:00
    assert candidates(h, "u1", "2026-01-10T01:30:00") == ["late", "any"]  # Saturday 01:30, still Friday's
    assert candidates(h, "u1", "2026-01-10T02:00:00") == ["any"]
    assert candidates(h, "u1", "2026-01-10T23:00:00") == ["any"]


def test_store_offers_reach_the_customers_last_store_or_stores_within_their_radius():
    rules = rules_from(
        catalogue(
            "{id: near-paris, channels: [push], stores: [paris], radius_km: 25}",
            "{id: paris-only, channels: [push], stores: [paris]}",
            "{id: any, channels: [push]}",
        )
    )
    h = EngineHarness(rules, EngineConfig(reference=STORES))
    for user, store in (("u-paris", "paris"), ("u-versailles", "versailles"), ("u-lyon", "lyon")):
        shop_at(h, user, store)
    assert candidates(h, "u-paris", "2026-01-06T10:00:00") == ["near-paris", "paris-only", "any"]
    assert candidates(h, "u-versailles", "2026-01-06T10:01:00") == ["near-paris", "any"], "18 km away"
    assert candidates(h, "u-lyon", "2026-01-06T10:02:00") == ["any"], "390 km away"
    assert candidates(h, "u-online", "2026-01-06T10:03:00") == ["any"], "no store known"


def test_store_rules_need_the_stores_they_name():
    rules = rules_from(catalogue("{id: near, channels: [push], stores: [paris], radius_km: 25}"))
    with pytest.raises(ConfigurationError, match="'radius_km' needs store locations"):
        check_catalogue(rules.offers, None)
    rules = rules_from(catalogue("{id: typo, channels: [push], stores: [pariss]}"))
    with pytest.raises(ConfigurationError, match=r"offer 'typo': stores \['pariss'\] are not in the stores file"):
        check_catalogue(rules.offers, STORES)
    check_catalogue(rules.offers, None)  # without a stores file, store ids are only compared


def test_validity_dates_are_the_customers_local_dates():
    rules = rules_from(
        catalogue(
            "{id: weekend, channels: [push], valid_from: 2026-01-10, valid_until: 2026-01-11}",
            "{id: any, channels: [push]}",
        )
    )
    h = EngineHarness(rules, EngineConfig(reference=STORES))
    shop_at(h, "u-paris", "paris")
    assert candidates(h, "u-paris", "2026-01-09T23:30:00") == ["weekend", "any"], "00:30 on the 10th in Paris"
    assert candidates(h, "u-utc", "2026-01-09T23:31:00") == ["any"], "still the 9th in UTC"
    assert candidates(h, "u-paris", "2026-01-11T23:30:00") == ["any"], "00:30 on the 12th in Paris"
    assert candidates(h, "u-utc", "2026-01-11T23:59:00") == ["weekend", "any"]


def redeem(h: EngineHarness, user: str, offer: str, at: float, order_id: str | None = None) -> None:
    props = {"coupon_id": offer, **({"order_id": order_id} if order_id else {})}
    h.feed([track("Coupon Applied", user, at, props=props)])


def offer_counts(h: EngineHarness) -> dict:
    stats = [d for d in decisions(h.finish(), "stats")]
    totals: dict = {}
    for part in stats:
        for offer, counts in part.get("offers", {}).items():
            for key, n in counts.items():
                totals.setdefault(offer, {}).setdefault(key, 0)
                totals[offer][key] += n
    return totals


def test_redemptions_are_counted_once_per_order_per_offer_and_customer():
    rules = rules_from(catalogue("{id: ten, channels: [push]}", "{id: five, channels: [push]}"))
    h = EngineHarness(rules)
    assert candidates(h, "u1", "2026-01-05T11:00:00")
    redeem(h, "u1", "ten", 70, "o1")
    h.feed([track("Order Completed", "u1", 71, props={"order_id": "o1", "total": 80.0, "coupon": "ten"})])
    h.feed([track("Order Completed", "u1", 90, props={"order_id": "o2", "total": 80.0, "coupon": "ten"})])
    redeem(h, "u2", "five", 91)
    redeem(h, "u2", "WELCOME10", 92)  # not an offer of the catalogue
    assert h.customers.customers["u1"].redemptions == ("ten", 2, "o2")
    assert h.customers.customers["u2"].redemptions == ("five", 1, "")
    assert offer_counts(h) == {"ten": {"given": 1, "redeemed": 2}, "five": {"redeemed": 1}}


def test_the_per_customer_cap_stops_an_offer_for_that_customer_only():
    rules = rules_from(catalogue("{id: once, channels: [push], per_customer: 1}", "{id: any, channels: [push]}"))
    h = EngineHarness(rules)
    redeem(h, "u1", "once", 0, "o1")
    assert candidates(h, "u1", "2026-01-05T11:00:00") == ["any"]
    assert candidates(h, "u2", "2026-01-05T11:01:00") == ["once", "any"]
    assert decisions(h.feed([track("Ping", "u1", 62)]), "triggers") == [], "a fixed offer it may not get: suppressed"
    [ping] = decisions(h.feed([track("Ping", "u2", 63)]), "triggers")
    assert ping["data"]["offer_id"] == "once"
    summary = [d for d in decisions(h.finish(), "stats") if "suppressions" in d]
    assert [s["suppressions"] for s in summary] == [{"budget_spent": {"ping": 1}}]


def test_a_budget_is_shared_evenly_by_the_shards():
    assert [budget_share(6, shard, 4) for shard in range(4)] == [2, 2, 1, 1]
    assert sum(budget_share(1000, shard, 16) for shard in range(16)) == 1000


def test_a_spent_budget_stops_the_offer_and_a_decision_with_no_offer_left_is_suppressed():
    rules = rules_from(catalogue("{id: scarce, channels: [push], budget: 2}"))
    h = EngineHarness(rules)
    assert candidates(h, "u1", "2026-01-05T11:00:00") == ["scarce"]
    redeem(h, "u1", "scarce", 61)
    redeem(h, "u2", "scarce", 62)
    assert candidates(h, "u3", "2026-01-05T11:03:00") is None, "every offer spent: suppressed"
    assert offer_counts(h) == {"scarce": {"given": 1, "redeemed": 2}}


def test_anonymous_customers_get_no_offer_with_a_budget():
    rules = rules_from(catalogue("{id: scarce, channels: [push], budget: 100}", "{id: any, channels: [push]}"))
    h = EngineHarness(rules)
    found = decisions(h.feed([track("Nudge", None, 0, anon="a1")]), "triggers")
    assert [d["data"]["offer_choice"]["candidates"] for d in found] == [["any"]]
    found = decisions(h.feed([track("Ping", None, 1, anon="a1")]), "suppressions")
    assert [d["data"]["detail"] for d in found] == ["scarce: has a budget: for identified customers only"]


def test_redemptions_made_anonymously_count_for_the_customer_they_are_linked_to():
    rules = rules_from(catalogue("{id: once, channels: [push], per_customer: 1}", "{id: any, channels: [push]}"))
    h = EngineHarness(rules)
    h.feed([track("Coupon Applied", None, 0, anon="a1", props={"coupon_id": "once", "order_id": "o1"})])
    h.feed([track("Signed Up", "u1", 1, anon="a1")])
    assert h.customers.customers["u1"].redemptions == ("once", 1, "o1")
    assert candidates(h, "u1", "2026-01-05T10:05:00") == ["any"]


def test_an_order_naming_an_offer_rewards_the_policy():
    rules = rules_from(catalogue("{id: ten, channels: [push]}"))
    h = EngineHarness(rules)
    candidates(h, "u1", "2026-01-05T11:00:00")
    h.feed([track("Order Completed", "u1", 70, props={"order_id": "o1", "total": 80.0, "coupon": "ten"})])
    assert h.customers.models.bandit.rewards == {"ten": 1}
    assert not h.customers.customers["u1"].offers_open


def test_with_the_net_value_reward_the_policy_learns_the_least_discount_that_converts():
    """Two offers convert equally often (every third customer given one redeems it); the deeper
    discount comes first in the catalogue, so it wins ties. Rewarded by conversions the policy learns
    the same mean for both, so has no reason to prefer either; rewarded net of the discount, it ends
    up choosing the shallower one, whatever the seed of its exploration."""

    def run(reward: str, seed: int) -> tuple[list[str], dict[str, float]]:
        text = catalogue(
            "{id: deep, channels: [push], discount: {percent: 40}, value: 50}",
            "{id: shallow, channels: [push], discount: {percent: 5}, value: 50}",
            policy=f"{{exploration: 0.2, seed: {seed}, reward_window: 1h, reward: {reward}}}",
        )
        h = EngineHarness(rules_from(text))
        chosen: list[str] = []
        for i in range(300):
            nudge = track("Nudge", f"u{i}", i * 10, message_id=f"nudge-{i}")
            [decision] = decisions(h.feed([nudge]), "triggers")
            chosen.append(decision["data"]["offer_id"])
            if chosen.count(chosen[-1]) % 3 == 1:
                redeem(h, f"u{i}", chosen[-1], i * 10 + 1)
        [means] = h.customers.models.bandit.means.values()
        return chosen[-100:], {offer: mean.get() for offer, mean in means.items()}

    for seed in (1, 2, 3):
        net, _ = run("net_value", seed)
        assert net.count("shallow") >= 80, seed
        _, means = run("conversion", seed)
        assert means["deep"] == pytest.approx(1 / 3, abs=0.02) and means["shallow"] == pytest.approx(1 / 3, abs=0.02)


def test_the_net_value_is_the_order_or_offer_value_less_the_discount():
    rules = rules_from(catalogue("{id: pct, channels: [push], discount: {percent: 10}, value: 40}"))
    offers = OfferCatalogue(rules.offers)
    order, coupon, told = envelopes(
        [
            track("Order Completed", "u1", 0, props={"order_id": "o", "total": 120.0, "coupon": "pct"}),
            track("Coupon Applied", "u1", 0, props={"coupon_id": "pct"}),
            track("Coupon Applied", "u1", 0, props={"coupon_id": "pct", "discount": 7.5}),
        ]
    )
    assert offers.net_value("pct", order) == 108.0
    assert offers.net_value("pct", coupon) == 36.0
    assert offers.net_value("pct", told) == 32.5


@pytest.mark.parametrize(
    ("offer", "field", "message"),
    [
        ("{id: a, channels: [push], windows: [{hours: '25:00-26:00'}]}", "windows.0.hours", "hours run from"),
        ("{id: a, channels: [push], windows: [{days: [funday]}]}", "windows.0.days.0", "Input should be"),
        ("{id: a, channels: [push], discount: {percent: 10, amount: 5}}", "discount", "either a 'percent'"),
        ("{id: a, channels: [push], radius_km: 5}", "offers.1", "name them"),
        ("{id: a, channels: [push], valid_from: 2026-02-01, valid_until: 2026-01-01}", "offers.1", "before"),
        ("{id: a, channels: [push], budget: 0}", "budget", "greater than or equal to 1"),
    ],
)
def test_bad_offers_are_refused_naming_the_file_line_offer_and_field(tmp_path, offer, field, message):
    from operators.rules import load_rules

    (tmp_path / "offers.yaml").write_text(
        f"offers:\n  - {{id: ok, channels: [push]}}\n  - {offer.replace('id: a', 'id: bad')}\n"
    )
    (tmp_path / "rules.yaml").write_text("version: v\noffers: offers.yaml\n")
    with pytest.raises(RuleFileError) as err:
        load_rules(tmp_path / "rules.yaml")
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'offers.yaml'}:3:"), text
    assert f"rule 'bad' field '{field}'" in text and message in text, text


def test_a_trigger_may_name_a_catalogue_offer_only_for_its_channels():
    with pytest.raises(RuleFileError, match="offer 'inapp' is not for channel push"):
        rules_from(
            catalogue("{id: inapp, channels: [in_app]}").replace(
                "id: nudge, channel: push", "id: nudge, channel: in_app"
            )
        )


def test_the_offer_field_table_lists_every_offer_field_with_its_default():
    from pathlib import Path

    from schemas.offers import Offer

    doc = (Path(__file__).resolve().parents[2] / "docs" / "rules.md").read_text()
    table = doc.split("### Offer fields")[1].split("\n\n")[1]
    documented = {}
    for row in table.splitlines()[2:]:
        field, required, default, _ = (cell.strip() for cell in row.strip("|").split("|"))
        for name in field.replace("`", "").split(", "):
            documented[name] = (required, default)
    assert sorted(documented) == sorted(Offer.model_fields)
    for name, (required, default) in documented.items():
        info = Offer.model_fields[name]
        assert required == ("yes" if info.is_required() else "no"), name
        if not info.is_required() and info.default is not None:
            expected = '""' if info.default == "" else str(info.default)
            assert default.split(" ")[0].strip("`") == expected, name


def test_a_decision_with_no_offer_to_give_is_suppressed_before_the_contact_policy():
    text = catalogue("{id: once, channels: [push], per_customer: 1}")
    text = text.replace("offers:", "  - {id: hello, channel: push, on: Hello}\noffers:")
    text += "policy: {caps: [{channel: push, max: 1, per: 1d}]}\n"
    h = EngineHarness(rules_from(text))
    redeem(h, "u1", "once", 0, "o1")
    out = h.feed([track("Ping", "u1", 1, message_id="ping-1")])
    assert decisions(out, "triggers") == []
    [suppressed] = decisions(out, "suppressions")
    data = suppressed["data"]
    assert (data["reason"], data["rule_id"], data["offer_id"]) == ("budget_spent", "ping", "once")
    assert data["detail"] == "once: redeemed as often as a customer may" and data["would_have_sent"] is True
    [hello] = decisions(h.feed([track("Hello", "u1", 2)]), "triggers")
    assert hello["data"]["rule_id"] == "hello", "the suppressed decision took no place under the cap"
    assert decisions(h.feed([track("Hello", "u1", 3)]), "suppressions")[0]["data"]["reason"] == "frequency_cap"


def test_a_decision_held_for_quiet_hours_is_checked_again_when_released():
    text = catalogue("{id: once, channels: [push], per_customer: 1}")
    text += 'policy: {quiet_hours: [{channels: [push], from: "21:00", until: "08:00", action: defer}]}\n'
    h = EngineHarness(rules_from(text))
    assert decisions(h.feed([track("Ping", "u1", 12 * 60)]), "triggers") == [], "22:00: held until 08:00"
    redeem(h, "u1", "once", 13 * 60, "o1")  # redeemed meanwhile, through another channel
    out = h.feed([track("Page", "u2", 22 * 60 + 10)])  # the clock passes 08:00
    assert decisions(out, "triggers") == []
    [suppressed] = decisions(out, "suppressions")
    assert (suppressed["data"]["reason"], suppressed["time"]) == ("budget_spent", "2026-01-06T08:00:00.000Z")
