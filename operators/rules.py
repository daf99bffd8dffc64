"""Load, check and index a rule file: errors name the file, the rule, the field and the line."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from operators.audience_bands import overlapping
from operators.expressions import Expression, ExpressionError, compile_expression
from schemas.durations import format_duration
from schemas.errors import ConfigurationError
from schemas.events import KNOWN_TRACK_EVENTS
from schemas.experiments import ExperimentConfig
from schemas.policy import ContactPolicy
from schemas.rules import AudienceRule, NextBestOffer, Offer, RuleSet, TriggerRule
from schemas.yaml_lines import node_line as _line
from state.catalogue import ANY_EVENT, FEATURES

_OFFERS = TypeAdapter(list[Offer])

STARTER_RULES = Path(__file__).resolve().parent.parent / "rules" / "starter.yaml"
CALL_TYPES = frozenset({"identify", "page", "screen", "alias"})
_NOT_FOR_AUDIENCES = frozenset({"event", "audiences"})


class _RefusedYaml(yaml.MarkedYAMLError):
    """YAML that parses but is not allowed in rule and offers files."""


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 booleans: ``on``, ``off``, ``yes``, ``no`` stay strings. Anchors and
    aliases are refused: a few lines of them can expand into gigabytes ("billion laughs")."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _RefusedYaml(
                problem="YAML anchors and aliases (&name, *name, <<) are not allowed: write each value out",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass(frozen=True)
class Problem:
    rule: str | None
    field: str
    line: int | None
    message: str

    def render(self, path: str) -> str:
        where = f"{path}:{self.line}" if self.line else path
        rule = f" rule '{self.rule}'" if self.rule else ""
        return f"{where}:{rule} field '{self.field}': {self.message}"


class RuleFileError(ConfigurationError):
    """A rule file that cannot be used; ``str()`` lists every problem, one per line."""

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(p.render(path) for p in problems))


@dataclass(frozen=True)
class CompiledTrigger:
    rule: TriggerRule
    when: Expression | None

    @property
    def id(self) -> str:
        return self.rule.id


DWELL_TIMER = "~dwell:"  # a member's minimum dwell in an audience: a timer named this and the member key


@dataclass(frozen=True)
class CompiledAudience:
    rule: AudienceRule
    when: Expression
    listens: frozenset[str]
    time_dependent: bool
    exit_when: Expression | None = None

    @property
    def id(self) -> str:
        return self.rule.id

    @property
    def names(self) -> frozenset[str]:
        """The features its conditions read (``when`` and ``exit_when``)."""
        return self.when.names if self.exit_when is None else self.when.names | self.exit_when.names

    def inside(self, view: Any, member: bool) -> bool:
        """Whether the customer is in the audience now, having been (``member``) or not: a member
        leaves when ``exit_when`` holds (without one, when ``when`` fails), others enter on ``when``."""
        if member and self.exit_when is not None:
            return not self.exit_when.evaluate(view)
        return bool(self.when.evaluate(view))

    @cached_property
    def dwell_timer(self) -> str | None:
        """The timer holding a new member for ``min_dwell`` (``None``: no minimum dwell)."""
        return None if self.rule.min_dwell is None else f"{DWELL_TIMER}{self.member_key}"

    @cached_property
    def member_key(self) -> str:
        """How membership is kept in the customer's state: shadow audiences apart from live ones."""
        return f"shadow:{self.rule.id}" if self.rule.shadow else self.rule.id


@dataclass
class CompiledRules:
    """A validated rule set, indexed by the event names each rule listens to."""

    version: str
    source: str
    triggers: list[CompiledTrigger]
    audiences: list[CompiledAudience]
    offers: list[Offer] = field(default_factory=list)
    next_best_offer: NextBestOffer = field(default_factory=NextBestOffer)
    policy: ContactPolicy = field(default_factory=ContactPolicy)
    experiments: ExperimentConfig = field(default_factory=ExperimentConfig)
    immediate: dict[str, list[CompiledTrigger]] = field(default_factory=dict)
    arming: dict[str, list[CompiledTrigger]] = field(default_factory=dict)
    cancelling: dict[str, list[CompiledTrigger]] = field(default_factory=dict)
    timers: dict[str, CompiledTrigger] = field(default_factory=dict)
    time_audiences: list[CompiledAudience] = field(init=False)
    reads_lapse_risk: bool = field(init=False)
    reads_p_alive: bool = field(init=False)
    audience_by_member: dict[str, CompiledAudience] = field(init=False)
    dwell_timers: dict[str, CompiledAudience] = field(init=False)  # by timer name
    _audiences_for: dict[str, list[CompiledAudience]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        immediate, arming, cancelling = defaultdict(list), defaultdict(list), defaultdict(list)
        for trigger in self.triggers:
            target = arming if trigger.rule.after is not None else immediate
            for name in trigger.rule.on:
                target[name].append(trigger)
            for name in trigger.rule.unless:
                cancelling[name].append(trigger)
            if trigger.rule.after is not None:
                self.timers[trigger.id] = trigger
        self.immediate, self.arming, self.cancelling = dict(immediate), dict(arming), dict(cancelling)
        self.time_audiences = [a for a in self.audiences if a.time_dependent]
        # audiences on lapse_risk are rechecked as the risk passes each tenth
        self.reads_lapse_risk = any("lapse_risk" in a.names for a in self.time_audiences)
        # and those on p_alive as it falls below each tenth
        self.reads_p_alive = any("p_alive" in a.names for a in self.time_audiences)
        self.audience_by_member = {a.member_key: a for a in self.audiences}
        self.dwell_timers = {a.dwell_timer: a for a in self.audiences if a.dwell_timer is not None}

    def eligible_offers(self, channel: str, audiences: tuple[str, ...]) -> list[Offer]:
        """Offers for ``channel`` that a member of ``audiences`` may get, in catalogue order."""
        return [
            offer
            for offer in self.offers
            if channel in offer.channels and (not offer.audiences or any(a in audiences for a in offer.audiences))
        ]

    def audiences_for(self, name: str) -> list[CompiledAudience]:
        """The audiences an event called ``name`` can change (cached per name)."""
        found = self._audiences_for.get(name)
        if found is None:
            found = [a for a in self.audiences if "*" in a.listens or name in a.listens]
            self._audiences_for[name] = found
        return found

    def describe(self) -> list[str]:
        """One line per rule: what it listens to and which features it reads."""
        lines = [f"rule set version {self.version} ({self.source})"]
        for t in self.triggers:
            rule = t.rule
            kind = f"timer {format_duration(rule.after)} after" if rule.after else "on"
            unless = f", cancelled by {', '.join(rule.unless)}" if rule.unless else ""
            reads = ", ".join(sorted(t.when.names)) if t.when else "-"
            shadow = " [shadow]" if rule.shadow else ""
            extra = "".join(
                (
                    " [transactional]" if rule.transactional else "",
                    f"; cooldown {format_duration(rule.cooldown)}" if rule.cooldown else "",
                    f"; priority {rule.priority}" if rule.priority else "",
                )
            )
            lines.append(
                f"trigger {rule.id}{shadow}: {rule.channel}, {kind} {', '.join(rule.on)}{unless};"
                f" once per {rule.once_per}; reads {reads}{extra}"
            )
        for a in self.audiences:
            events = "every event" if "*" in a.listens else ", ".join(sorted(a.listens)) or "no event"
            timed = " and time (lifecycle boundaries)" if a.time_dependent else ""
            shadow = " [shadow]" if a.rule.shadow else ""
            held = "".join(
                (
                    f"; exits when {a.exit_when.source.strip()}" if a.exit_when is not None else "",
                    f"; stays at least {format_duration(a.rule.min_dwell)}" if a.rule.min_dwell else "",
                )
            )
            lines.append(
                f"audience {a.id}{shadow}: listens to {events}{timed}; reads {', '.join(sorted(a.names))}{held}"
            )
        lines += [offer.describe() for offer in self.offers]
        lines += self.policy.describe()
        lines += self.experiments.describe()
        if self.offers:
            policy = self.next_best_offer
            lines.append(
                f"next best offer: epsilon-greedy, exploration {policy.exploration}, seed {policy.seed},"
                f" reward window {format_duration(policy.reward_window)}, reward {policy.reward}"
            )
        return lines

    def warnings(self) -> list[str]:
        """Event names no known event has: probably typos (custom events are still allowed)."""
        known = KNOWN_TRACK_EVENTS | CALL_TYPES
        out = []
        for t in self.triggers:
            for name in (*t.rule.on, *t.rule.unless):
                if name not in known:
                    out.append(f"trigger '{t.id}': '{name}' is not an event of the contract")
            if "Erasure Requested" in t.rule.on:
                out.append(f"trigger '{t.id}': 'Erasure Requested' deletes the customer, so it never fires")
        return out


def load_rules(path: str | Path = STARTER_RULES) -> CompiledRules:
    """Read, validate and compile a YAML rule file; raise :class:`RuleFileError` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RuleFileError(str(path), [Problem(None, "-", None, f"cannot read: {err}")]) from None
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "<rules>") -> CompiledRules:
    """Validate and compile rule-file text; ``source`` names it in errors."""
    root, data = _read_yaml(text, source)
    if isinstance(data, dict) and isinstance(data.get("offers"), str):
        data = {**data, "offers": _offers_file(Path(source).parent / data["offers"])}
    if isinstance(data, dict) and isinstance(data.get("policy"), str):
        data = {**data, "policy": _policy_file(Path(source).parent / data["policy"])}
    try:
        ruleset = RuleSet.model_validate(data)
    except ValidationError as err:
        problems = [_problem(data, root, e["loc"], e["msg"]) for e in err.errors()]
        raise RuleFileError(source, problems) from None
    return _compile(ruleset, root, source)


def _read_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the data of YAML ``text``; :class:`RuleFileError` naming the line."""
    try:
        return yaml.compose(text, Loader=_Loader), yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        message = err.problem if isinstance(err, _RefusedYaml) else f"not valid YAML: {err}"
        raise RuleFileError(source, [Problem(None, "-", mark.line + 1 if mark else None, str(message))]) from None
    except RecursionError:
        raise RuleFileError(source, [Problem(None, "-", None, "YAML nested too deeply")]) from None


def _offers_file(path: Path) -> list[dict[str, Any]]:
    """The offers of an offers file (``offers: offers.yaml`` in a rule file), validated, with
    errors naming that file, its line and the offer."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RuleFileError(str(path), [Problem(None, "-", None, f"cannot read the offers file: {err}")]) from None
    root, data = _read_yaml(text, str(path))
    offers = data.get("offers") if isinstance(data, dict) else data
    try:
        return [offer.model_dump() for offer in _OFFERS.validate_python(offers)]
    except ValidationError as err:
        lines = _wrap(root) if isinstance(data, list) else root  # a bare list: lines from the list itself
        problems = [_problem({"offers": offers}, lines, ("offers", *e["loc"]), e["msg"]) for e in err.errors()]
        raise RuleFileError(str(path), problems) from None


def _policy_file(path: Path) -> ContactPolicy:
    """The policy of a policy file (``policy: policy.yaml`` in a rule file), validated, with errors
    naming that file, its line and the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RuleFileError(str(path), [Problem(None, "-", None, f"cannot read the policy file: {err}")]) from None
    root, data = _read_yaml(text, str(path))
    policy = data.get("policy", data) if isinstance(data, dict) else data
    try:
        return ContactPolicy.model_validate(policy)
    except ValidationError as err:
        lines = root if isinstance(data, dict) and "policy" in data else _wrap(root, "policy")
        problems = [_problem({"policy": policy}, lines, ("policy", *e["loc"]), e["msg"]) for e in err.errors()]
        raise RuleFileError(str(path), problems) from None


def _wrap(node: yaml.Node | None, name: str = "offers") -> yaml.Node | None:
    """A bare node seen as the value of a ``name`` key (for line lookups)."""
    if node is None:
        return None
    key = yaml.ScalarNode("tag:yaml.org,2002:str", name, node.start_mark, node.end_mark)
    return yaml.MappingNode("tag:yaml.org,2002:map", [(key, node)], node.start_mark, node.end_mark)


def _compile(ruleset: RuleSet, root: yaml.Node | None, source: str) -> CompiledRules:
    problems: list[Problem] = []
    names = FEATURES.keys()

    def compile_when(
        section: str, index: int, rule_id: str, text: str, allowed: Any, name: str = "when"
    ) -> Expression | None:
        try:
            return compile_expression(text, allowed)
        except ExpressionError as err:
            line = _line(root, (section, index, name))
            column = f" (column {err.column})" if err.column else ""
            problems.append(Problem(rule_id, name, line, f"{err.message}{column}: {_excerpt(text.strip())}"))
            return None

    triggers = []
    for i, rule in enumerate(ruleset.triggers):
        when = compile_when("triggers", i, rule.id, rule.when, names) if rule.when else None
        triggers.append(CompiledTrigger(rule, when))
    audiences = []
    for i, rule in enumerate(ruleset.audiences):
        allowed = names - _NOT_FOR_AUDIENCES
        when = compile_when("audiences", i, rule.id, rule.when, allowed)
        exit_when = None
        if rule.exit_when is not None:
            exit_when = compile_when("audiences", i, rule.id, rule.exit_when, allowed, "exit_when")
            if exit_when is None:
                continue
            if when is not None and (overlap := overlapping(when, exit_when)) is not None:
                line = _line(root, ("audiences", i, "exit_when"))
                message = f"{overlap}: a customer would enter and leave at once (make the two exclusive)"
                problems.append(Problem(rule.id, "exit_when", line, message))
        if when is None:
            continue
        features = [FEATURES[n] for n in (when.names | exit_when.names if exit_when else when.names)]
        listens = frozenset().union(*(f.changed_by for f in features)) if features else frozenset()
        if listens >= ANY_EVENT:
            listens = ANY_EVENT
        audiences.append(CompiledAudience(rule, when, listens, any(f.time_dependent for f in features), exit_when))
    if problems:
        raise RuleFileError(source, problems)
    return CompiledRules(
        ruleset.version,
        source,
        triggers,
        audiences,
        ruleset.offers,
        ruleset.next_best_offer,
        ruleset.policy,
        ruleset.experiments,
    )


def _excerpt(text: str, limit: int = 120) -> str:
    """``text``, cut to ``limit`` characters (an expression quoted in an error)."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _problem(data: Any, root: yaml.Node | None, loc: tuple[Any, ...], message: str) -> Problem:
    rule_id = None
    if len(loc) >= 2 and isinstance(data, dict):
        try:
            rule_id = data[loc[0]][loc[1]].get("id")
        except (KeyError, IndexError, TypeError, AttributeError):
            rule_id = None
    named = loc if loc[:1] in (("policy",), ("experiments",)) else loc[2:]  # one mapping each, not a list of rules
    fields = [str(part) for part in named if not str(part).startswith("function-")] if len(loc) > 2 else []
    field_name = ".".join(fields) or ".".join(str(p) for p in loc) or "-"
    return Problem(rule_id, field_name, _line(root, loc), message)
