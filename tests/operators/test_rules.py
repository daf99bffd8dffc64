"""Rule files: the starter set, what each rule listens to, and errors that point at file, rule, field and line."""

from __future__ import annotations

import pytest
from conftest import line_of, rule_file_problems

from operators.rules import STARTER_RULES, RuleFileError, load_rules, parse_rules

FILE = "rules/shop.yaml"

TRIGGER_HEAD = """\
# a shop's rules
version: v1
triggers:
  - id: first_rule
    channel: push
    on: Signed Up
"""
SECOND = "  - id: second_rule\n    channel: push\n    on: Product Added\n"


def test_starter_rules_load(starter_rules):
    assert starter_rules.version == "starter-2026.11"
    assert [t.id for t in starter_rules.triggers] == [
        "cart_abandonment_push",
        "browse_abandonment_offer",
        "winback_lapsed_push",
        "onboarding_welcome_push",
        "onboarding_first_order_offer",
    ]
    assert [a.id for a in starter_rules.audiences] == [
        "high_value",
        "lapsed",
        "new_customers",
        "at_risk",
        "likely_to_lapse",
    ]
    assert starter_rules.warnings() == []
    assert starter_rules.source == str(STARTER_RULES)


def test_starter_triggers_are_indexed_by_what_arms_fires_and_cancels_them(starter_rules):
    ids = lambda triggers: sorted(t.id for t in triggers)  # noqa: E731
    assert ids(starter_rules.immediate["Signed Up"]) == ["onboarding_welcome_push"]
    assert ids(starter_rules.arming["Product Added"]) == ["cart_abandonment_push"]
    assert ids(starter_rules.arming["Signed Up"]) == ["onboarding_first_order_offer"]
    assert ids(starter_rules.cancelling["Product Added"]) == ["browse_abandonment_offer"]
    assert ids(starter_rules.cancelling["Order Completed"]) == [
        "browse_abandonment_offer",
        "cart_abandonment_push",
        "onboarding_first_order_offer",
        "winback_lapsed_push",
    ]
    assert "Product Added" not in starter_rules.immediate
    assert sorted(starter_rules.timers) == [
        "browse_abandonment_offer",
        "cart_abandonment_push",
        "onboarding_first_order_offer",
        "winback_lapsed_push",
    ]


def test_describe_says_what_each_rule_listens_to(starter_rules):
    lines = {line.split(":")[0]: line for line in starter_rules.describe()[1:]}
    cart = lines["trigger cart_abandonment_push"]
    assert "timer 30m after Product Added" in cart
    assert "cancelled by Order Completed" in cart
    assert "once per cart" in cart
    assert "reads cart; priority 10" in cart
    assert "on Signed Up" in lines["trigger onboarding_welcome_push"]
    assert "cancelled" not in lines["trigger onboarding_welcome_push"]
    high_value = lines["audience high_value"]
    assert "listens to Order Cancelled, Order Completed, Order Refunded, identify;" in high_value
    assert "reads lifetime_spend, orders, traits" in high_value
    assert "and time" not in high_value
    assert "listens to every event and time" in lines["audience lapsed"]
    assert "listens to Order Cancelled, Order Completed, Order Refunded and time" in lines["audience at_risk"]
    assert starter_rules.describe()[0].startswith("rule set version starter-2026.11")


def test_yaml_1_1_on_key_stays_a_string():
    rules = parse_rules(
        "version: v1\ntriggers:\n  - id: t\n    channel: push\n    on: Signed Up\n    shadow: true\n", FILE
    )
    assert rules.triggers[0].rule.on == ["Signed Up"]
    assert rules.triggers[0].rule.shadow is True
    assert "[shadow]" in rules.describe()[1]


def test_yes_and_no_stay_strings_so_they_are_flagged_as_unknown_events():
    rules = parse_rules("version: v1\ntriggers:\n  - id: t\n    channel: push\n    on: [yes, 'no']\n", FILE)
    assert rules.triggers[0].rule.on == ["yes", "no"]
    assert len(rules.warnings()) == 2


BAD_FILES = {
    "unknown channel": (
        TRIGGER_HEAD + "  - id: second_rule\n    channel: fax\n    on: Product Added\n",
        "second_rule",
        "channel",
        "channel: fax",
        "'push', 'in_app', 'email' or 'sms'",
    ),
    "missing on": (
        TRIGGER_HEAD + "  - id: second_rule\n    channel: push\n    when: orders > 0\n",
        "second_rule",
        "on",
        "id: second_rule",  # the field is missing: the rule is pointed at
        "Field required",
    ),
    "bad duration": (
        TRIGGER_HEAD + SECOND + "    after: half an hour\n",
        "second_rule",
        "after",
        "after: half an hour",
        "'half an hour' is not a duration",
    ),
    "unknown feature": (
        TRIGGER_HEAD + SECOND + "    when: cart.value > 0 and basket > 1\n",
        "second_rule",
        "when",
        "when: cart",
        "unknown name 'basket' (known: at_risk, audiences, cart,",
    ),
    "syntax error in when": (
        TRIGGER_HEAD + SECOND + "    when: cart.value > > 1\n",
        "second_rule",
        "when",
        "when: cart",
        "syntax error",
    ),
    "audience reads event": (
        "version: v1\naudiences:\n  - id: buyers\n    when: orders > 0\n  - id: pos_buyers\n"
        "    description: bought in a store\n    when: event.channel == 'pos'\n",
        "pos_buyers",
        "when",
        "when: event",
        "unknown name 'event'",
    ),
    "extra field": (
        TRIGGER_HEAD + "    colour: red\n",
        "first_rule",
        "colour",
        "colour: red",
        "Extra inputs are not permitted",
    ),
    "constant text too large in when": (
        TRIGGER_HEAD + SECOND + "    when: \"len('x' * 100000000000) > 0\"\n",
        "second_rule",
        "when",
        'when: "len',
        "'*' would build a text of length 100,000,000,000 (limit 100,000) (column 5)",
    ),
    "constant list too large in an audience": (
        "version: v1\naudiences:\n  - id: big\n    when: len([0] * 100000000000) > 0\n",
        "big",
        "when",
        "when: len",
        "'*' would build a list",
    ),
    "600 terms in when": (
        TRIGGER_HEAD + SECOND + "    when: " + "+".join(["1"] * 600) + " > 0\n",
        "second_rule",
        "when",
        "when: 1+1",
        "nested too deeply (limit 50 levels)",
    ),
    "900 nots in an audience": (
        "version: v1\naudiences:\n  - id: deep\n    when: " + "not " * 900 + "orders\n",
        "deep",
        "when",
        "when: not",
        "(limit 2,000)",
    ),
    "content that is not JSON": (
        TRIGGER_HEAD + SECOND + "    content: {tags: !!set {a, b}}\n",
        "second_rule",
        "content",
        "content: {tags",
        "content must be JSON data",
    ),
    "content nested too deeply for JSON": (
        TRIGGER_HEAD + SECOND + "    content: {x: " + "[" * 300 + "]" * 300 + "}\n",
        "second_rule",
        "content",
        "content: {x",
        "content must be JSON data",
    ),
    "content nested too deeply for a decision": (
        TRIGGER_HEAD + SECOND + "    content: {x: " + "[" * 40 + "]" * 40 + "}\n",
        "second_rule",
        "content",
        "content: {x",
        "content nested more than 32 levels deep",
    ),
    "a trigger id used twice": (
        TRIGGER_HEAD + "  - id: first_rule  # again\n    channel: sms\n    on: Product Added\n",
        "first_rule",
        "id",
        "# again",
        "rule id 'first_rule' is used twice",
    ),
    "an audience id used twice": (
        "version: v1\naudiences:\n  - id: big\n    when: orders > 1\n  - id: big  # again\n    when: orders > 2\n",
        "big",
        "id",
        "# again",
        "rule id 'big' is used twice",
    ),
    "an audience with a trigger's id": (
        TRIGGER_HEAD + "audiences:\n  - id: first_rule  # same as the trigger\n    when: orders > 0\n",
        "first_rule",
        "id",
        "# same as the trigger",
        "'first_rule' is also a trigger's id",
    ),
    "bad event name in a block list": (
        TRIGGER_HEAD + "  - id: second_rule\n    channel: push\n    on:\n      - Product Added\n      - ''\n",
        "second_rule",
        "on.1",
        "- ''",
        "at least 1 character",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_errors_name_file_rule_field_and_line(case):
    text, rule, field, needle, words = BAD_FILES[case]
    message = rule_file_problems(text)
    assert message.startswith(f"{FILE}:{line_of(text, needle)}: rule '{rule}' field '{field}': "), message
    assert words in message
    assert len(message.splitlines()) == 1


LAUGHS = """\
version: v1
triggers:
  - id: lol
    channel: push
    on: Signed Up
    content:
      a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]
"""


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (LAUGHS, "a: &a"),
        (TRIGGER_HEAD + "    content: {x: 1}\n" + SECOND + "    content: *c\n", "content: *c"),
        (TRIGGER_HEAD.replace("  - id: first_rule", "  - &base\n    id: first_rule"), "- &base"),
        (TRIGGER_HEAD + "  - <<: *base\n    id: second_rule\n", "<<: *base"),
    ],
    ids=["billion-laughs", "alias", "anchor", "merge-key"],
)
def test_yaml_anchors_and_aliases_are_refused_with_the_line(text, needle):
    message = rule_file_problems(text)
    assert message == (
        f"{FILE}:{line_of(text, needle)}: field '-': "
        "YAML anchors and aliases (&name, *name, <<) are not allowed: write each value out"
    )


def test_yaml_nested_too_deeply_is_refused():
    message = rule_file_problems(TRIGGER_HEAD + "    content: {x: " + "[" * 5000 + "]" * 5000 + "}\n")
    assert message == f"{FILE}: field '-': YAML nested too deeply"


def test_an_offers_file_with_aliases_is_refused_naming_it(tmp_path):
    (tmp_path / "offers.yaml").write_text("offers:\n  - {id: a, channels: [push], content: &c {x: 1}}\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: v1\noffers: offers.yaml\n")
    with pytest.raises(RuleFileError) as info:
        load_rules(rules)
    assert str(info.value).startswith(f"{tmp_path / 'offers.yaml'}:2: field '-': YAML anchors and aliases")


def test_bad_yaml_indentation_names_the_line():
    text = TRIGGER_HEAD + "  - id: second_rule\n    channel: push\n     on: Product Added\n"
    message = rule_file_problems(text)
    assert message.startswith(f"{FILE}:{line_of(text, '     on: Product')}: ")
    assert "not valid YAML" in message


def test_unless_without_after_points_at_unless():
    text = TRIGGER_HEAD + SECOND + "    unless: [Order Completed]\n"
    message = rule_file_problems(text)
    assert message.startswith(f"{FILE}:{line_of(text, 'unless:')}: rule 'second_rule' field 'unless': "), message
    assert "'unless' needs 'after'" in message


def test_every_problem_of_a_file_is_listed():
    text = (
        "version: v1\ntriggers:\n  - id: one\n    channel: fax\n    on: Signed Up\n"
        "  - id: two\n    channel: push\n    on: Signed Up\n    after: soon\n"
    )
    lines = rule_file_problems(text).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{FILE}:4: rule 'one' field 'channel'")
    assert lines[1].startswith(f"{FILE}:9: rule 'two' field 'after'")


def test_every_expression_problem_is_listed():
    text = (
        "version: v1\ntriggers:\n  - id: one\n    channel: push\n    on: Signed Up\n    when: nope > 1\n"
        "audiences:\n  - id: two\n    when: 'orders >'\n"
    )
    lines = rule_file_problems(text).splitlines()
    assert [line.split(":")[1] for line in lines] == ["6", "9"]
    assert "rule 'one' field 'when'" in lines[0] and "rule 'two' field 'when'" in lines[1]


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "valid dictionary"), ("- a\n", "valid dictionary"), ("triggers: []\n", "version")],
)
def test_a_file_that_is_not_a_rule_set(text, words):
    assert words in rule_file_problems(text)


def test_load_rules_on_a_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RuleFileError) as info:
        load_rules(missing)
    assert str(info.value).startswith(f"{missing}: ")
    assert "cannot read" in str(info.value)


def test_load_rules_names_the_file_in_errors(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("version: v1\ntriggers:\n  - id: t\n    channel: fax\n    on: Signed Up\n", encoding="utf-8")
    with pytest.raises(RuleFileError) as info:
        load_rules(path)
    assert str(info.value).startswith(f"{path}:4: rule 't' field 'channel'")
    assert info.value.path == str(path)
    assert [p.field for p in info.value.problems] == ["channel"]


def test_warnings_flag_a_misspelled_event_name():
    rules = parse_rules(
        "version: v1\ntriggers:\n  - id: t\n    channel: push\n    on: Product Aded\n"
        "    after: 30m\n    unless: [Order Completed, Order Complete]\n",
        FILE,
    )
    assert rules.warnings() == [
        "trigger 't': 'Product Aded' is not an event of the contract",
        "trigger 't': 'Order Complete' is not an event of the contract",
    ]


def test_warnings_flag_a_trigger_that_can_never_fire():
    rules = parse_rules("version: v1\ntriggers:\n  - id: bye\n    channel: email\n    on: Erasure Requested\n", FILE)
    assert rules.warnings() == ["trigger 'bye': 'Erasure Requested' deletes the customer, so it never fires"]


def test_audiences_for_only_returns_audiences_listening_to_the_event():
    rules = parse_rules(
        "version: v1\naudiences:\n"
        "  - id: buyers\n    when: orders > 0\n"
        "  - id: carts\n    when: cart.value > 100\n"
        "  - id: berliners\n    when: city == 'Berlin'\n"
        "  - id: subscribers\n    when: consent.push == true\n",
        FILE,
    )
    ids = lambda name: [a.id for a in rules.audiences_for(name)]  # noqa: E731
    assert ids("Order Completed") == ["buyers", "carts", "berliners"]
    assert ids("Product Removed") == ["carts", "berliners"]
    assert ids("Consent Updated") == ["berliners", "subscribers"]
    assert ids("Wishlist Shared") == ["berliners"], "an audience reading a feature any event changes hears all"
    assert ids("Order Completed") == ["buyers", "carts", "berliners"], "cached answer is the same"


def test_starter_audiences_for(starter_rules):
    ids = lambda name: [a.id for a in starter_rules.audiences_for(name)]  # noqa: E731
    assert ids("identify") == ["high_value", "lapsed", "new_customers", "likely_to_lapse"]
    assert ids("Order Refunded") == ["high_value", "lapsed", "new_customers", "at_risk", "likely_to_lapse"]
    assert ids("Product Viewed") == ["lapsed", "new_customers", "likely_to_lapse"]


def test_offer_problems_name_the_line_of_the_rule_and_are_all_reported():
    text = (
        "version: v1\n"
        "offers:\n"
        "  - id: vip\n    channels: [push]\n    audiences: [giants]\n"
        "triggers:\n"
        "  - id: texted\n    channel: sms\n    on: Signed Up\n    offer_id: next_best\n"
    )
    message = rule_file_problems(text)
    assert f"{FILE}:5: rule 'vip' field 'audiences': offer 'vip' names unknown audiences ['giants']" in message
    assert f"{FILE}:10: rule 'texted' field 'offer_id': trigger 'texted' asks for the next best offer" in message
