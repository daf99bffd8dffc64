"""Decision reasons: why a trigger fired or an audience changed, as the records say it.

A trigger's reason says what it fired on (``30m after Product Added with no Order Completed``)
and its condition; an audience change's, the condition and which way it turned. Both end with
the values of the features the condition read that are scalars (`` (orders=0)``). What is each
rule's own (the text, and which of the features it reads can be scalars at all) is worked out
once per rule set: a reason reads features only when its condition reads such a feature.
"""

from __future__ import annotations

from typing import Any

from operators.expressions import Expression
from operators.rules import CompiledRules, CompiledTrigger, format_duration
from state.catalogue import FEATURES, FeatureView

Reason = tuple[str, tuple[str, ...]]
"""A rule's reason before the values, and the features (sorted) whose values may follow it."""


class Reasons:
    """The reasons of one rule set's decisions: per trigger (by id) and per audience (by position)."""

    def __init__(self, rules: CompiledRules) -> None:
        self._triggers = {trigger.id: _trigger_reason(trigger) for trigger in rules.triggers}
        self._audiences = [(audience.when.source, _shown(audience.when)) for audience in rules.audiences]

    def trigger(self, trigger: CompiledTrigger) -> Reason:
        return self._triggers[trigger.id]

    def audience(self, position: int) -> Reason:
        """The audience's condition, and the features whose values may follow ``became true``/``false``."""
        return self._audiences[position]


def values(names: tuple[str, ...], view: FeatureView) -> str:
    """`` (name=value, ...)`` for those of the features ``names`` whose value is a scalar now."""
    parts = [f"{name}={text}" for name in names if (text := _scalar(view[name])) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def _trigger_reason(trigger: CompiledTrigger) -> Reason:
    rule = trigger.rule
    if rule.after is not None:
        text = f"{format_duration(rule.after)} after {' or '.join(rule.on)}"
        if rule.unless:
            text += f" with no {' or '.join(rule.unless)}"
    else:
        text = f"on {' or '.join(rule.on)}"
    if trigger.when is None:
        return text, ()
    return f"{text}; {trigger.when.source}", _shown(trigger.when)


def _shown(expression: Expression) -> tuple[str, ...]:
    """The features ``expression`` reads that can be scalars (a name the catalogue lacks is kept: reading
    it fails as evaluating the condition would), sorted."""
    feature = FEATURES.get
    return tuple(sorted(name for name in expression.names if not getattr(feature(name), "composite", False)))


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int | float | str):
        return str(value)
    return None
