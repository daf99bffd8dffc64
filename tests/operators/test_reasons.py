"""Decision reasons: the rule's text, then the values of the scalar features its condition read."""

from __future__ import annotations

from conftest import EngineHarness, added, call, decisions, order, rules_from, track

from state.catalogue import FEATURES, FeatureView
from state.customer import Lifecycle

RULES = """
version: v
triggers:
  - id: welcome
    channel: push
    on: Product Added
    once_per: customer
    when: "customer_id != 'nobody' and cart.value > 0 and consent.push != false"
  - id: quiet_cart
    channel: push
    on: Product Added
    after: 45m
    once_per: cart
    when: "cart.items > 0 and session == null and orders == 0"
audiences:
  - id: browsers
    when: "top_category == 'shoes' and counts_24h['product_viewed'] >= 1"
  - id: buyers
    when: "orders >= 1 and traits.city != 'Nowhere'"
"""


def viewed(user: str, minutes: float, category: str) -> dict:
    return track("Product Viewed", user, minutes, props={"product_id": "p9", "category": category})


def reasons(h: EngineHarness, stream: str) -> dict[str, str]:
    found = {}
    for record in decisions(h.outputs, stream):
        data = record["data"]
        found[data.get("rule_id") if stream == "triggers" else f"{data['audience']}.{data['change']}"] = data["reason"]
    return found


def test_reasons_show_the_scalar_values_read_natively_and_in_python_and_leave_out_the_rest():
    h = EngineHarness(rules_from(RULES))
    h.feed([viewed("u1", 0, "shoes"), added("u1", 1, price=30.0), track("Page", "u2", 60)])
    h.feed([order("u1", 70, total=30.0)])
    assert reasons(h, "triggers") == {
        "welcome": "on Product Added; customer_id != 'nobody' and cart.value > 0 and consent.push != false"
        " (customer_id=u1)",
        "quiet_cart": "45m after Product Added; cart.items > 0 and session == null and orders == 0"
        " (orders=0, session=none)",
    }
    assert reasons(h, "audience_changes") == {
        "browsers.entered": "top_category == 'shoes' and counts_24h['product_viewed'] >= 1 became true"
        " (top_category=shoes)",
        "buyers.entered": "orders >= 1 and traits.city != 'Nowhere' became true (orders=1)",
    }


def test_a_feature_kept_out_of_reasons_is_never_a_scalar_nor_null():
    """The catalogue's ``composite`` features (mappings, lists, views) show no value in a reason, so a
    reason reads none of them: for that they must never be a scalar or null, whatever the customer."""
    h = EngineHarness(rules_from(RULES))
    h.feed([track("Page", "new", 0)])
    h.feed([viewed("shopper", 0, "shoes"), added("shopper", 1), call("identify", "shopper", 2, traits={"city": "X"})])
    h.feed([order("buyer", 0), track("Consent Updated", "buyer", 5, props={"channel": "push", "granted": False})])
    composite = [name for name, feature in FEATURES.items() if feature.composite]
    assert {"cart", "consent", "traits", "counts_24h", "categories", "top_products", "audiences"} <= set(composite)
    for state in h.customers.customers.values():
        for now_ms in (state.last_seen_ms, state.last_seen_ms + 90 * 86_400_000):
            view = FeatureView(state, None, now_ms, Lifecycle())
            for name in composite:
                assert view[name] is not None and not isinstance(view[name], bool | int | float | str), name


def test_values_read_natively_are_the_feature_views():
    """A reason whose values the rule program reads them all takes them from the features record in one
    call: the same values as the feature view gives, for every such feature, customers in every
    state, at once and long after (a session is read for whether it is still going)."""
    from operators.reasons import PRESENCE
    from operators.rule_program import SCALARS
    from state._native import ReasonValues

    lifecycle = Lifecycle()
    names = sorted(SCALARS)
    reads = [[(SCALARS[name], "", False) for name in names] + [(*PRESENCE["session"], True)]]
    native = ReasonValues(
        reads, lifecycle.new_days, lifecycle.lapse_days, lifecycle.at_risk_gap_factor, 1_800_000, lifecycle.population
    )
    h = EngineHarness(rules_from(RULES))
    h.feed([viewed("shopper", 0, "shoes"), added("shopper", 1), call("identify", "shopper", 2, traits={"city": "X"})])
    h.feed([order("buyer", 0), order("buyer", 0, days=3, total=80.5), track("Page", "buyer", 10, days=3)])
    h.feed([track("Page", "new", 0), track("Store Visited", "new", 3, props={"store_id": "s1"})])
    for state in h.customers.customers.values():
        for now_ms in (state.last_seen_ms, state.last_seen_ms + 20 * 60_000, state.last_seen_ms + 70 * 86_400_000):
            view = FeatureView(state, None, now_ms, lifecycle)
            expected = [view[name] for name in names] + [None if view["session"] is None else ()]
            found = list(native.values(state.features, now_ms, 0))
            assert [(value, type(value)) for value in found] == [(value, type(value)) for value in expected]
