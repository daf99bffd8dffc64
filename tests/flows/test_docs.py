"""The docs say what the code does: the contract's examples and events, the starter rules, the rule fields,
the feature catalogue and the `rules check` examples are checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import orjson
from bytewax.testing import TestingSink, TestingSource, run_main
from conftest import source_records

from flows.personalization import build_flow
from flows.settings import Settings
from schemas.records import CloudEvent
from schemas.streams import OUTPUT_FILES, STREAMS

REPO = Path(__file__).resolve().parents[2]
CONTRACT = (REPO / "docs" / "contract.md").read_text()
README = (REPO / "README.md").read_text()


def test_decision_examples_are_real_outputs_of_the_input_examples(tmp_path):
    inputs, outputs = CONTRACT.split("## 2. Output", 1)
    events = sorted(
        (orjson.loads(b) for b in re.findall(r"```json\n(.*?)\n```", inputs, re.S)), key=lambda e: e["timestamp"]
    )
    captured: list = []
    run_main(
        build_flow(Settings(out=tmp_path), source=TestingSource(source_records(events)), sink=TestingSink(captured))
    )
    real = {orjson.loads(o.body)["id"]: orjson.loads(o.body) for s, o in captured if s.startswith(("trig", "aud"))}
    examples = [orjson.loads(b) for b in re.findall(r"```json\n(.*?)\n```", outputs, re.S)]
    decisions = [e for e in examples if e.get("specversion")]
    assert len(decisions) >= 3
    for example in decisions:
        CloudEvent.model_validate(example)
        if example["id"] in real:
            assert example == real[example["id"]], f"docs/contract.md example {example['id']} is stale"
    assert sum(e["id"] in real for e in decisions) >= 2


RULES_DOC = (REPO / "docs" / "rules.md").read_text()
CALL_TYPES = ("identify", "page", "screen", "alias")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    ends = [m.start() for m in re.finditer(rf"\n#{{1,{len(level)}}} ", text[start:])]
    return text[start : start + ends[0]] if ends else text[start:]


def table(text: str, after: str = "") -> list[dict[str, str]]:
    """The rows of the first Markdown table in ``text`` after ``after``, as {column: cell}."""
    lines = text[text.index(after) :].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, body = rows[0], rows[2:]
    assert body, f"no rows in the table after {after!r}"
    return [dict(zip(header, row, strict=True)) for row in body]


def code(cell: str) -> list[str]:
    """The `quoted` parts of a table cell."""
    return re.findall(r"`([^`]*)`", cell)


def test_the_starter_trigger_table_is_the_starter_file():
    from operators.rules import load_rules
    from schemas.rules import parse_duration

    starter = section(RULES_DOC, "## The starter rules")
    rows = {code(row["Trigger"])[0]: row for row in table(starter, "**Triggers**")}
    rules = {t.id: t.rule for t in load_rules().triggers}
    assert list(rows) == list(rules), "docs/rules.md lists other starter triggers than rules/starter.yaml"
    for rule_id, rule in rules.items():
        row = rows[rule_id]
        assert row["Channel"] == rule.channel, rule_id
        assert code(row["On"]) == rule.on, rule_id
        assert (parse_duration(row["After"]) if rule.after else row["After"]) == (rule.after or "–"), rule_id
        assert code(row["Unless"]) == rule.unless, rule_id
        assert row["Once per"] == rule.once_per, rule_id
        assert code(row["When"]) == ([" ".join(rule.when.split())] if rule.when else []), rule_id
        assert code(row["Offer"]) == ([rule.offer_id] if rule.offer_id else []), rule_id
        assert parse_duration(row["Expires in"]) == rule.expires_in, rule_id


def test_the_starter_policy_enforces_consent_as_documented():
    from operators.rules import load_rules

    starter = section(RULES_DOC, "## The starter rules")
    assert "the starter policy enforces it for every rule (push and in-app unless revoked" in starter
    consent = load_rules().policy.consent
    assert consent == {"push": "unless_denied", "in_app": "unless_denied", "email": "granted", "sms": "granted"}


def test_the_starter_audience_table_is_the_starter_file():
    from operators.rules import load_rules

    starter = section(RULES_DOC, "## The starter rules")
    rows = {code(row["Audience"])[0]: row for row in table(starter, "**Audiences**")}
    audiences = {a.id: a for a in load_rules().audiences}
    assert list(rows) == list(audiences), "docs/rules.md lists other starter audiences than rules/starter.yaml"
    for audience_id, audience in audiences.items():
        row = rows[audience_id]
        assert row["Description"] == audience.rule.description, audience_id
        assert code(row["When"]) == [" ".join(audience.rule.when.split())], audience_id
        when = row["Re-evaluated"]
        listens = {"*"} if "every event" in when else set(code(when))
        assert listens == set(audience.listens), audience_id
        assert ("lifecycle boundaries" in when) == audience.time_dependent, audience_id


def test_the_notes_on_starter_rules_name_starter_rules_and_their_fields_as_they_are():
    from operators.rules import load_rules

    rules = {t.id: t.rule for t in load_rules().triggers} | {a.id: a.rule for a in load_rules().audiences}
    notes = re.findall(r"^- `([a-z_]+)`: (.*(?:\n  .*)*)", section(RULES_DOC, "## The starter rules"), re.M)
    assert notes
    for rule_id, note in notes:
        assert rule_id in rules, f"docs/rules.md has a note on {rule_id}, which is not a starter rule"
        rule = rules[rule_id]
        for field, value in re.findall(r"`(\w+): ([^`]+)`", note):
            if field in type(rule).model_fields:
                assert str(getattr(rule, field)) == value, f"{rule_id}: {field}"


def test_the_field_tables_list_every_rule_field():
    from schemas.rules import AudienceRule, TriggerRule

    for heading, model in (("### Trigger fields", TriggerRule), ("### Audience fields", AudienceRule)):
        rows = table(section(RULES_DOC, heading))
        documented = [code(row["Field"])[0] for row in rows]
        assert sorted(documented) == sorted(model.model_fields), heading
        for row in rows:
            required = model.model_fields[code(row["Field"])[0]].is_required()
            assert row["Required"] == ("yes" if required else "no"), row["Field"]


def test_the_top_level_keys_of_a_rule_file_are_documented():
    from schemas.rules import RuleSet

    intro = section(RULES_DOC, "## File format").split("```")[0]
    assert set(code(intro)) >= set(RuleSet.model_fields)


def test_the_feature_catalogue_table_is_the_catalogue():
    from state.catalogue import ANY_EVENT, FEATURES

    rows = {code(row["Feature"])[0]: row for row in table(section(RULES_DOC, "## Feature catalogue"))}
    assert sorted(rows) == sorted(FEATURES), "docs/rules.md catalogue has other features than state/catalogue.py"
    for name, feature in FEATURES.items():
        events = rows[name]["Events that change it"]
        if feature.changed_by == ANY_EVENT:
            assert events == "any event", name
        else:
            assert set(code(events)) == set(feature.changed_by) and (events == "none") == (not feature.changed_by)
        assert rows[name]["Time-dependent"] == ("yes" if feature.time_dependent else "no"), name


def test_the_rules_check_examples_are_real_output(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    examples = re.findall(r"```yaml\n([^`]*)```\n\n```text\n\$ nudgeflow rules check (\S+)\n([^`]*)```", RULES_DOC)
    starter = re.search(r"```text\n\$ nudgeflow rules check (rules/starter\.yaml)\n(.*?)```", RULES_DOC, re.S)
    assert len(examples) >= 2 and starter
    monkeypatch.chdir(REPO)
    assert main(["rules", "check", starter.group(1)]) == 0
    assert capsys.readouterr().out.splitlines() == starter.group(2).splitlines()
    monkeypatch.chdir(tmp_path)
    for text, name, documented in examples:
        (tmp_path / name).write_text(text)
        assert main(["rules", "check", name]) == 2
        assert capsys.readouterr().err.splitlines() == documented.splitlines(), name


def test_the_contract_lists_every_known_event_with_its_required_properties():
    from schemas.events import KNOWN_TRACK_EVENTS, TRACK_MODELS

    rows = table(CONTRACT, "### Known events")
    documented = {name: code(row["Required properties"]) for row in rows for name in code(row["Event"])}
    assert set(documented) == KNOWN_TRACK_EVENTS | set(CALL_TYPES), "docs/contract.md lists other events"
    for name, model in TRACK_MODELS.items():
        properties = next(info.type for info in msgspec.structs.fields(model) if info.name == "properties")
        free = not (isinstance(properties, type) and issubclass(properties, msgspec.Struct))  # a dict: as sent
        required = [] if free else [info.name for info in msgspec.structs.fields(properties) if info.required]
        assert sorted(documented[name]) == sorted(required), name


def test_the_output_file_tables_list_every_stream_file():
    section = CONTRACT[CONTRACT.index("| File | Contents |") :].split("\n\n")[0]
    assert set(re.findall(r"^\| `([^`]+)` \|", section, re.M)) == set(OUTPUT_FILES.values())
    outputs = README[README.index("## Outputs") :].split("\n\n")[1]
    files = {stream.file for stream in STREAMS.values() if stream.file is not None}
    assert {name for name in files if f"`{name}`" not in outputs} == set()
