"""A rule set's conditions compiled over the customer's features record (``state._native.RuleProgram``).

Each audience's and trigger's ``when`` that reads only features the record holds is lowered to a
tree of tuples that the native program evaluates with Python's semantics, to the bit; the
audiences one event may change are evaluated in one call that returns only the memberships that
change; a member of an audience with an ``exit_when`` is kept until that holds. A condition
reading anything else (a model's score, the event, the audiences, counts, affinities) is evaluated
in Python, as is one the native program defers while evaluating (integers past 64 bits, text or
lists built by ``+`` and ``*``).
"""

from __future__ import annotations

import ast
from typing import Any

from operators.expressions import Expression, constant_value, is_constant
from operators.rules import CompiledAudience, CompiledRules, CompiledTrigger
from state._native import CustomerStep, Features, RuleProgram, TimerFiring
from state.catalogue import ANY_EVENT, ORDERS
from state.customer import MAX_CAUSED_BY, Lifecycle

Tree = tuple[Any, ...]

# features the record computes natively: name -> the name the program reads
SCALARS = {
    "lifecycle": "lifecycle",
    "at_risk": "at_risk",
    "lapse_risk": "lapse_risk",
    "p_alive": "p_alive",
    "expected_orders": "expected_orders",
    "expected_order_value": "expected_order_value",
    "clv": "clv",
    "orders": "orders",
    "frequency": "orders",
    "refunds": "refunds",
    "lifetime_spend": "lifetime_spend",
    "monetary": "monetary",
    "recency_days": "recency_days",
    "days_since_seen": "days_since_seen",
    "tenure_days": "tenure_days",
    "mean_order_gap_days": "mean_order_gap_days",
    "hour": "hour",
    "preferred_hour": "preferred_hour",
    "last_store": "last_store",
    "city": "city",
    "country": "country",
}
# features read by field: any trait or channel (an unknown one is null), the cart's and session's numbers
FIELDS: dict[str, frozenset[str] | None] = {
    "traits": None,
    "consent": None,
    "cart": frozenset({"value", "items"}),
    "session": frozenset({"pages", "products_viewed"}),
}
_COMPARISONS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_ARITHMETIC = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%"}
_INT64 = range(-(2**63), 2**63)


class _NotNative(Exception):
    """A part of an expression the native program does not evaluate."""


def lower(expression: Expression) -> Tree | None:
    """``expression`` as the native program's tree; ``None`` if it reads what the record does not hold
    (or was not compiled from a syntax tree)."""
    if expression.tree is None:
        return None
    try:
        return _node(expression.tree)
    except _NotNative:
        return None


def _node(node: ast.expr) -> Tree:
    if is_constant(node):
        return ("const", _constant(constant_value(node)))
    if isinstance(node, ast.Name):
        if node.id not in SCALARS:
            raise _NotNative(node.id)
        return ("read", SCALARS[node.id], "")
    if isinstance(node, ast.Attribute):
        return _field(node.value, node.attr)
    if isinstance(node, ast.Subscript) and is_constant(node.slice):
        return _field(node.value, constant_value(node.slice))
    if isinstance(node, ast.BoolOp):
        kind = "and" if isinstance(node.op, ast.And) else "or"
        tree = _node(node.values[0])
        for value in node.values[1:]:  # folded from the left, as the Python closures are
            tree = (kind, tree, _node(value))
        return tree
    if isinstance(node, ast.UnaryOp):
        return ("not" if isinstance(node.op, ast.Not) else "neg", _node(node.operand))
    if isinstance(node, ast.BinOp):
        return ("arith", _ARITHMETIC[type(node.op)], _node(node.left), _node(node.right))
    if isinstance(node, ast.Compare):
        ops = tuple(_COMPARISONS[type(op)] for op in node.ops)
        return ("compare", ops, tuple(_node(part) for part in (node.left, *node.comparators)))
    if isinstance(node, ast.IfExp):
        return ("if", _node(node.test), _node(node.body), _node(node.orelse))
    raise _NotNative(type(node).__name__)  # calls, lists built from features


def _field(container: ast.expr, key: Any) -> Tree:
    """``traits.city``, ``consent['push']``, ``cart.value``: a field of a feature read by field."""
    if not isinstance(container, ast.Name) or container.id not in FIELDS or not isinstance(key, str):
        raise _NotNative("a field")
    keys = FIELDS[container.id]
    if keys is not None and key not in keys:
        raise _NotNative(f"{container.id}.{key}")
    return ("read", container.id, key)


def _constant(value: Any) -> Any:
    """``value`` if the native program holds it as it is (null, bool, 64-bit int, float, text, tuple of those)."""
    if value is None or isinstance(value, bool | float | str):
        return value
    if isinstance(value, int) and value in _INT64:
        return value
    if isinstance(value, tuple):
        return tuple(_constant(item) for item in value)
    raise _NotNative(type(value).__name__)


class NativeRules:
    """The native program of a rule set: its audiences, grouped by the event kinds that can change
    them, and its triggers' conditions."""

    def __init__(self, rules: CompiledRules, lifecycle: Lifecycle) -> None:
        audiences = rules.audiences
        position = {a.member_key: index for index, a in enumerate(audiences)}

        def group(members: list[CompiledAudience]) -> list[int]:
            return [position[a.member_key] for a in members]

        names = sorted(set().union(*(a.listens for a in audiences)) - ANY_EVENT)
        every_event = [a for a in audiences if "*" in a.listens]
        groups = [list(range(len(audiences))), group(rules.time_audiences), group(every_event)]
        groups += [group(rules.audiences_for(name)) for name in names]
        dwelling = [a for a in audiences if a.dwell_timer is not None]
        # one group per audience with a minimum dwell: looked at alone when a member's dwell ends
        self._dwell_group = {a.member_key: len(groups) + index for index, a in enumerate(dwelling)}
        groups += [group([a]) for a in dwelling]
        empty = {index for index, members in enumerate(groups) if not members}
        # the groups of every audience, of the timed ones, of an event no audience names (None: empty)
        self.every, self.timed, self._other = (None if index in empty else index for index in (0, 1, 2))
        self._by_name = {name: None if index in empty else index for index, name in enumerate(names, start=3)}
        self._trigger = {t.id: len(audiences) + index for index, t in enumerate(rules.triggers)}
        trees = [lower(a.when) for a in audiences] + [t.when and lower(t.when) for t in rules.triggers]
        exits: list[int | None] = []
        for audience in audiences:  # exit conditions after the triggers' (hysteresis: members leave on them)
            exits.append(None if audience.exit_when is None else len(trees))
            if audience.exit_when is not None:
                trees.append(lower(audience.exit_when))
        self.program = RuleProgram(
            trees,
            [a.member_key for a in audiences],
            groups,
            lifecycle.new_days,
            lifecycle.lapse_days,
            lifecycle.at_risk_gap_factor,
            lifecycle.session_timeout_ms,
            lifecycle.population,
            exits,
        )
        self.audience_changes = self.program.audience_changes  # once per event: no call in between
        self.lifecycle = lifecycle

    def customer_step(self, rules: CompiledRules, recheck: str) -> CustomerStep:
        """The native step of an event's rules (timers cancelled and armed, the audience recheck
        named ``recheck`` kept, audiences evaluated), with a plan per event name the rules know."""
        names = {*rules.cancelling, *rules.arming, *rules.immediate, *self._by_name, *ORDERS}
        plans = [
            (
                name,
                [t.id for t in rules.cancelling.get(name, ())],
                [(t.id, t.rule.after, t.rule.once_per) for t in rules.arming.get(name, ())],
                self.group_for(name),
                name in rules.immediate,
                name in ORDERS,
            )
            for name in sorted(names)
        ]
        lc = self.lifecycle
        return CustomerStep(
            self.program,
            plans,
            self._other,
            self.every,
            recheck if rules.time_audiences else None,
            rules.reads_lapse_risk,
            lc.new_days,
            lc.lapse_days,
            lc.at_risk_gap_factor,
            MAX_CAUSED_BY,
            lc.population,
            rules.reads_p_alive,
        )

    def timer_firing(self, rules: CompiledRules) -> TimerFiring:
        """The native firing of the rule set's timed triggers, up to their decision."""
        timed = [
            (t.id, t.rule.once_per, None if t.when is None else self._trigger[t.id]) for t in rules.timers.values()
        ]
        return TimerFiring(self.program, timed)

    def dwell_group(self, audience: CompiledAudience) -> int:
        """The group of ``audience`` alone (it has a minimum dwell)."""
        return self._dwell_group[audience.member_key]

    def group_for(self, name: str) -> int | None:
        """The group of audiences an event called ``name`` can change; ``None``: none."""
        return self._by_name.get(name, self._other)

    def holds(self, trigger: CompiledTrigger, features: Features, now_ms: int) -> bool | None:
        """Whether the trigger's condition holds natively; ``None``: evaluate it in Python."""
        return self.program.holds(features, now_ms, self._trigger[trigger.id])
