"""Next-best offer: eligibility, exact logged probabilities, determinism, learning from rewards."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import CART_RULE, EngineHarness, added, decisions, order, rules_from, track

from operators.engine import REWARD, EngineConfig
from operators.models import open_offers
from operators.models.bandit import OfferBandit
from operators.rules import RuleFileError

RULES = (
    CART_RULE
    + """    offer_id: next_best
offers:
  - {id: ten-pct, channels: [push]}
  - {id: free-ship, channels: [push, in_app], content: {free_shipping: true}}
  - {id: in-app-only, channels: [in_app]}
  - {id: vip, channels: [push], audiences: [big]}
next_best_offer: {exploration: 0.2, seed: 3, reward_window: 1d}
audiences:
  - {id: big, when: "lifetime_spend >= 1000"}
"""
)


def nudge(h: EngineHarness, user: str, at: float) -> dict:
    out = h.feed([added(user, at), track("Page", "zz", at + 40)])
    [decision] = decisions(out, "triggers")
    return decision["data"]


def test_only_offers_for_the_channel_and_the_customers_audiences_are_candidates():
    h = EngineHarness(rules_from(RULES))
    assert nudge(h, "u1", 0)["offer_choice"]["candidates"] == ["ten-pct", "free-ship"]
    h.feed([order("u2", 100, total=2000.0)])
    data = nudge(h, "u2", 200)
    assert data["offer_choice"]["candidates"] == ["ten-pct", "free-ship", "vip"]


def test_the_logged_probability_is_exact():
    h = EngineHarness(rules_from(RULES))
    data = nudge(h, "u1", 0)
    choice = data["offer_choice"]
    k, e = len(choice["candidates"]), choice["exploration"]
    best = choice["candidates"][0]  # untrained: every score 0.5, the first in the catalogue wins ties
    assert set(choice["scores"].values()) == {0.5}
    expected = (1 - e) + e / k if data["offer_id"] == best else e / k
    assert choice["probability"] == pytest.approx(expected)


def test_choices_follow_their_logged_probabilities_and_repeat_for_the_same_decision():
    bandit = OfferBandit(exploration=0.3, seed=11)
    context = "active/buyer/regular"
    candidates = ["a", "b", "c"]
    picks = Counter()
    for i in range(6000):
        choice = bandit.choose(f"decision-{i}", candidates, context)
        picks[choice.offer] += 1
        assert bandit.choose(f"decision-{i}", candidates, context).offer == choice.offer
    assert picks["a"] / 6000 == pytest.approx(0.7 + 0.1, abs=0.02)
    assert picks["b"] / 6000 == pytest.approx(0.1, abs=0.02)


def test_a_click_within_the_window_rewards_the_offer_and_expiry_gives_zero():
    h = EngineHarness(rules_from(RULES), EngineConfig())
    first = nudge(h, "u1", 0)
    state = h.customers.customers["u1"]
    assert state.offers_open and state.timer(REWARD) is not None
    h.feed([track("Promotion Clicked", "u1", 60, props={"promotion_id": first["offer_id"]})])
    bandit = h.customers.models.bandit
    assert bandit.rewards == {first["offer_id"]: 1} and not state.offers_open
    assert state.timer(REWARD) is None
    second = nudge(h, "u3", 100)
    [(_, offer, seg)] = open_offers(h.customers.customers["u3"])
    before = bandit.score(seg, offer)
    h.feed([track("Page", "zz", 100 + 24 * 60 + 40)])  # the clock passes the 1-day window
    assert not h.customers.customers["u3"].offers_open and offer == second["offer_id"]
    assert bandit.score(seg, offer) < before, "the missing reward was learnt as 0"


def test_an_offer_that_keeps_being_clicked_becomes_the_one_chosen():
    h = EngineHarness(rules_from(RULES.replace("exploration: 0.2", "exploration: 0.0")), EngineConfig())
    bandit = h.customers.models.bandit
    for _ in range(200):
        bandit.learn("free-ship", "new/prospect/regular", True)
        bandit.learn("ten-pct", "new/prospect/regular", False)
    chosen = nudge(h, "u1", 0)
    assert chosen["offer_id"] == "free-ship"
    assert chosen["content"]["free_shipping"] is True, "the chosen offer's content is sent"
    assert nudge(h, "u5", 100)["offer_choice"]["scores"]["free-ship"] > 0.99


def test_frozen_policies_choose_but_do_not_learn():
    h = EngineHarness(rules_from(RULES), EngineConfig(models="frozen"))
    data = nudge(h, "u1", 0)
    h.feed([track("Promotion Clicked", "u1", 60, props={"promotion_id": data["offer_id"]})])
    assert h.customers.models.bandit.means == {}, "nothing learnt"
    assert h.customers.models.bandit.rewards == {data["offer_id"]: 1}, "the reward is still counted"


def test_a_next_best_trigger_needs_an_offer_for_its_channel():
    with pytest.raises(RuleFileError, match="no offer has its channel"):
        rules_from(RULES.replace("channel: push\n    on: Product Added", "channel: sms\n    on: Product Added"))
    with pytest.raises(RuleFileError, match="unknown audiences"):
        rules_from(RULES.replace("audiences: [big]", "audiences: [giants]"))


def test_offers_can_come_from_their_own_file_and_its_errors_name_it(tmp_path):
    from operators.rules import load_rules

    rules = tmp_path / "rules.yaml"
    inline = RULES[RULES.index("offers:") : RULES.index("next_best_offer")]
    rules.write_text(RULES.replace(inline, "offers: offers.yaml\n"))
    offers = tmp_path / "offers.yaml"
    offers.write_text("offers:\n  - {id: ten-pct, channels: [push]}\n  - {id: vip, channels: [push], audiences: [big]}")
    assert [o.id for o in load_rules(rules).offers] == ["ten-pct", "vip"]
    offers.write_text("- id: ten-pct\n  channels: [push]\n- id: bad\n  channels: [fax]\n")
    with pytest.raises(RuleFileError) as err:
        load_rules(rules)
    message = str(err.value)
    assert f"{offers}:4:" in message and "'bad'" in message and "channels" in message
    offers.unlink()
    with pytest.raises(RuleFileError, match="cannot read the offers file"):
        load_rules(rules)


def test_a_choice_scores_what_the_bandit_has_learnt_up_to_it():
    """Scores are kept per segment between choices: a reward learnt in between, a model loaded or a
    pickled copy restored gives the next choice the scores as they are then."""
    import pickle

    bandit = OfferBandit(exploration=0.0, seed=1)
    context, candidates = "active/buyer/regular", ["a", "b"]
    assert bandit.choose("d1", candidates, context).scores == {"a": 0.5, "b": 0.5}
    bandit.learn("b", context, True)
    choice = bandit.choose("d2", candidates, context)
    assert (choice.offer, choice.scores) == ("b", {"a": 0.5, "b": bandit.score(context, "b")})
    copy = pickle.loads(pickle.dumps(bandit))
    copy.learn("b", context, False)
    bandit.learn("a", context, True)
    assert copy.choose("d3", candidates, context).scores == {"a": 0.5, "b": 0.5}
    fresh = OfferBandit(exploration=0.0, seed=1)
    fresh.choose("d4", candidates, context)
    fresh.load(bandit.export())
    assert fresh.choose("d5", candidates, context).scores == bandit.choose("d5", candidates, context).scores
