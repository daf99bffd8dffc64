"""The engine's measurement: arms decide what is delivered, exposures and conversions are counted per arm,
and orders are credited to the deliveries before them."""

from __future__ import annotations

import orjson
from conftest import EngineHarness, added, decisions, order, pickled_snapshots, restore_snapshots, rules_from, track

from connectors.files import add_counts
from operators.engine import EngineConfig
from operators.experiments import Experiments
from schemas.streams import ATTRIBUTIONS, EXPERIMENTS

WELCOME = """
version: v
triggers:
  - id: welcome
    channel: push
    on: Signed Up
    once_per: customer
    content: {title: "Welcome, friend"}
  - id: receipt_email
    channel: email
    on: Product Added
    once_per: cart
"""
TEST = """
experiments:
  tests:
    - id: welcome_copy
      rule: welcome
      arms:
        - {id: personalized, share: 0.4}
        - {id: generic, share: 0.3, content: {title: "Welcome"}}
        - {id: control, share: 0.3, send: false}
"""
CUSTOMERS = [f"c{n}" for n in range(60)]


def arms_of(rules) -> dict[str, str]:
    experiments = Experiments(rules.experiments)
    welcome = next(t.rule for t in rules.triggers if t.id == "welcome")
    return {cid: experiments.assign(cid, welcome).arm for cid in CUSTOMERS}


def counts(outputs) -> dict:
    """The experiments records summed over periods, as the output folder sums them."""
    total: dict = {}
    for item in outputs:
        if item.stream == EXPERIMENTS:
            for period in orjson.loads(item.body).values():
                add_counts(total, period)
    return total


def test_each_arm_gets_what_it_is_assigned_and_exposures_and_conversions_are_counted_per_arm():
    rules = rules_from(WELCOME + TEST)
    arms = arms_of(rules)
    assert set(arms.values()) == {"personalized", "generic", "control"}
    h = EngineHarness(rules)
    events = [track("Signed Up", cid, n) for n, cid in enumerate(CUSTOMERS)]
    buyers = CUSTOMERS[::2]
    events += [order(cid, 100 + n, total=10.0) for n, cid in enumerate(buyers)]
    events.append(order(CUSTOMERS[1], days=8))  # after the 7-day conversion window
    outputs = h.feed(events) + h.finish()

    pushed = {record["subject"]: record["data"]["content"] for record in decisions(outputs, "triggers.push")}
    assert set(pushed) == {cid for cid, arm in arms.items() if arm != "control"}
    for cid, content in pushed.items():
        assert content == ({"title": "Welcome, friend"} if arms[cid] == "personalized" else {"title": "Welcome"})

    measured = counts(outputs)["welcome_copy"]
    for arm in ("personalized", "generic", "control"):
        members = [cid for cid in CUSTOMERS if arms[cid] == arm]
        converted = [cid for cid in members if cid in buyers]
        assert measured[arm]["exposed"] == len(members)
        assert measured[arm].get("conversions", 0) == len(converted)
        assert measured[arm].get("revenue_cents", 0) == 1000 * len(converted)
    stats = next(orjson.loads(o.body) for o in outputs if o.stream == "stats" and o.key == "customer")
    assert stats["experiments"]["welcome_copy"]["control"]["exposed"] == sum(a == "control" for a in arms.values())


def test_rules_in_no_experiment_are_not_measured_and_cost_nothing_without_a_section():
    h = EngineHarness(rules_from(WELCOME))
    outputs = h.feed([track("Signed Up", "c1"), order("c1", 5)]) + h.finish()
    assert not [o for o in outputs if o.stream == EXPERIMENTS]
    assert h.customers.measurement is None


def test_an_order_is_credited_to_the_deliveries_within_their_windows():
    h = EngineHarness(rules_from(WELCOME))
    outputs = h.feed(
        [
            track("Signed Up", "c1", 0),  # a push: 24 h window
            added("c1", 10),  # an email: 7 d window
            order("c1", 60 * 30, total=80.0),  # 30 h later: only the email is still in its window
            order("c1", 60 * 200, total=20.0, days=7),  # past every window
        ]
    )
    records = [r["data"] for r in decisions(outputs, ATTRIBUTIONS)]
    assert [(r["model"], r["rule_id"], r["credit"], r["revenue"]) for r in records] == [
        ("last_touch", "receipt_email", 1.0, 80.0),
        ("linear", "receipt_email", 1.0, 80.0),
    ]


def test_exposures_and_touches_survive_a_snapshot(tmp_path):
    rules = rules_from(WELCOME + TEST)
    arms = arms_of(rules)
    treated = next(cid for cid in CUSTOMERS if arms[cid] == "personalized")
    config = EngineConfig(snapshots=True, state_store=tmp_path / "store")
    h = EngineHarness(rules, config)
    h.feed([track("Signed Up", treated, 0)])
    restored = restore_snapshots(EngineHarness(rules, config), pickled_snapshots(h))
    outputs = restored.feed([order(treated, 60, total=12.5)])
    assert counts(outputs)["welcome_copy"]["personalized"] == {
        "conversions": 1,
        "conversions_pre": 0,
        "orders": 1,
        "revenue_cents": 1250,
    }
    assert [r["data"]["rule_id"] for r in decisions(outputs, ATTRIBUTIONS)] == ["welcome", "welcome"]


def test_an_event_that_fails_after_an_exposure_takes_the_exposure_back(monkeypatch):
    """The customer is exposed at the policy's last gate, then writing the trigger raises: the event is
    dead-lettered, and neither the exposure record nor its count nor the customer's exposure stays."""
    rules = rules_from(WELCOME + TEST)
    treated = next(cid for cid, arm in arms_of(rules).items() if arm == "personalized")
    h = EngineHarness(rules)
    h.feed([track("Page", treated, 0)])

    def fails(*args, **kwargs):
        raise RuntimeError("cannot write")

    monkeypatch.setattr(h.customers.writer, "trigger", fails)
    outputs = h.feed([track("Signed Up", treated, 1)])
    assert [d["reason"] for d in decisions(outputs, "dead_letters")] == ["processing_error"]
    assert not [o for o in outputs if o.stream in (EXPERIMENTS, "triggers.push")]
    assert h.customers.customers[treated].exposures == ()
    assert h.customers.stats["experiments"]["welcome_copy"]["personalized"]["exposed"] == 0


def test_exposures_conversions_and_attributed_revenue_reach_the_metrics():
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    rules = rules_from(WELCOME + TEST)
    treated = next(cid for cid, arm in arms_of(rules).items() if arm == "generic")
    arm = {"experiment": "welcome_copy", "arm": "generic"}
    revenue = {"model": "last_touch", "channel": "push", "rule": "welcome"}
    before = [
        sample("nudgeflow_experiment_exposures_total", **arm),
        sample("nudgeflow_experiment_conversions_total", **arm),
        sample("nudgeflow_experiment_revenue_total", **arm),
        sample("nudgeflow_attributed_revenue_total", **revenue),
    ]
    h = EngineHarness(rules)
    h.feed([track("Signed Up", treated, 0), order(treated, 30, total=40.0)])
    h.pipeline.customers[0].metrics.publish(final=True)
    after = [
        sample("nudgeflow_experiment_exposures_total", **arm),
        sample("nudgeflow_experiment_conversions_total", **arm),
        sample("nudgeflow_experiment_revenue_total", **arm),
        sample("nudgeflow_attributed_revenue_total", **revenue),
    ]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 40.0, 40.0]


HOLDOUT_RULES = """
version: v
triggers:
  - id: promo
    channel: push
    on: Product Viewed
    once_per: event
  - id: receipt
    channel: email
    on: Order Completed
    tags: [transactional]
policy:
  caps:
    - {channel: push, max: 1, per: 4h}
  consent: {email: unless_denied}
experiments:
  holdout: {share: 0.5, salt: h}
"""


def test_a_held_out_customer_gets_holdout_suppressions_counted_in_its_caps_and_transactional_triggers():
    rules = rules_from(HOLDOUT_RULES)
    experiments = Experiments(rules.experiments)
    promo = next(t.rule for t in rules.triggers if t.id == "promo")
    held = [cid for cid in CUSTOMERS if experiments.assign(cid, promo).holdout]
    treated = [cid for cid in CUSTOMERS if cid not in held]
    assert held and treated
    h = EngineHarness(rules)
    views = [track("Product Viewed", cid, minute, props={"product_id": "p"}) for cid in CUSTOMERS for minute in (0, 5)]
    outputs = h.feed(sorted(views, key=lambda e: e["timestamp"]) + [order(cid, 10) for cid in CUSTOMERS])
    pushed = [r["subject"] for r in decisions(outputs, "triggers.push")]
    assert sorted(pushed) == sorted(treated), "one push each (the cap), none to the held out"
    suppressed = [(r["subject"], r["data"]["reason"]) for r in decisions(outputs, "suppressions")]
    assert sorted(c for c, reason in suppressed if reason == "holdout") == sorted(held)
    # the held-out contact counts in the cap, as a delivery would: the second view is capped for everyone
    assert sorted(c for c, reason in suppressed if reason == "frequency_cap") == sorted(CUSTOMERS)
    receipts = [r["subject"] for r in decisions(outputs, "triggers.email")]
    assert sorted(receipts) == sorted(CUSTOMERS), "transactional triggers reach the held out too"
    holdout = next(r for r in decisions(outputs, "suppressions") if r["data"]["reason"] == "holdout")
    assert holdout["data"]["detail"] == "experiment holdout, arm control" and holdout["data"]["would_have_sent"]
    measured = counts(outputs)["holdout"]
    assert measured["control"]["exposed"] == len(held) and measured["treated"]["exposed"] == len(treated)
    assert measured["control"]["conversions"] == len(held)


def test_a_next_best_offer_of_a_generic_arm_comes_with_the_arm_content():
    rules = rules_from(
        """
version: v
triggers:
  - id: browse
    channel: in_app
    on: Product Viewed
    content: {template: personal, greeting: "Hi {name}"}
    offer_id: next_best
offers:
  - {id: ten_off, channels: [in_app], content: {discount: 10}}
experiments:
  tests:
    - id: copy
      rule: browse
      arms:
        - {id: control, share: 0.5}
        - {id: generic, share: 0.5, content: {template: generic}}
"""
    )
    experiments = Experiments(rules.experiments)
    browse = rules.triggers[0].rule
    arms = {cid: experiments.assign(cid, browse).arm for cid in CUSTOMERS}
    h = EngineHarness(rules)
    views = [track("Product Viewed", cid, n, props={"product_id": "p"}) for n, cid in enumerate(CUSTOMERS)]
    contents = {r["subject"]: r["data"]["content"] for r in decisions(h.feed(views), "triggers.in_app")}
    assert set(contents) == set(CUSTOMERS)
    for cid, content in contents.items():
        if arms[cid] == "generic":
            assert content == {"template": "generic", "discount": 10}
        else:
            assert content == {"template": "personal", "greeting": "Hi {name}", "discount": 10}


def test_an_exposure_carries_the_orders_of_the_pre_period_for_cuped():
    rules = rules_from(WELCOME + TEST + "  pre_period: 7d\n")
    treated = next(cid for cid, arm in arms_of(rules).items() if arm == "personalized")
    h = EngineHarness(rules)
    before = [order(treated, days=-10), order(treated, days=-3), order(treated, days=-1)]  # two within 7 days
    outputs = h.feed([*before, track("Signed Up", treated, 0), order(treated, 30)])
    assert counts(outputs)["welcome_copy"]["personalized"] == {
        "exposed": 1,
        "pre": 2,
        "pre_squares": 4,
        "conversions": 1,
        "conversions_pre": 2,
        "orders": 1,
        "revenue_cents": 5000,
    }
