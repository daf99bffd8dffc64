"""Decision reasons: why a trigger fired or an audience changed, as the records say it.

A trigger's reason says what it fired on (``30m after Product Added with no Order Completed``)
and its condition; an audience change's, the condition and which way it turned. Both end with
the values of the features the condition read that are scalars (`` (orders=0)``). What is each
rule's own (the text, and which of the features it reads can be scalars at all) is worked out
once per rule set. The values are read from the features record in one native call
(``state._native.ReasonValues``) when the native rule program reads them all, else from a
:class:`FeatureView`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from operators.expressions import Expression
from operators.rule_program import SCALARS
from operators.rules import CompiledRules, CompiledTrigger, format_duration
from schemas.records import iso_ms
from state._native import Features, ReasonValues
from state.catalogue import FEATURES, FeatureView
from state.customer import Lifecycle

# features read natively only for whether they are there (a view, else null): (feature, field)
PRESENCE = {"session": ("session", "pages")}


@dataclass(frozen=True, slots=True)
class Reason:
    """A rule's reason before the values, the features (sorted) whose values may follow it, and their
    reads' number in the native :class:`ReasonValues` (``None``: read from a feature view)."""

    text: str
    shown: tuple[str, ...]
    native: int | None


class Reasons:
    """The reasons of one rule set's decisions: per trigger (by id) and per audience (by position)."""

    def __init__(self, rules: CompiledRules, lifecycle: Lifecycle) -> None:
        reads: list[list[tuple[str, str, bool]]] = []
        self._triggers = {t.id: _reason(*_trigger_text(t), reads) for t in rules.triggers}
        self._audiences = [_reason(a.when.source, _shown(a.when), reads) for a in rules.audiences]
        self._exits = {
            position: _reason(a.exit_when.source, _shown(a.exit_when), reads)
            for position, a in enumerate(rules.audiences)
            if a.exit_when is not None
        }
        self._values = ReasonValues(
            reads,
            lifecycle.new_days,
            lifecycle.lapse_days,
            lifecycle.at_risk_gap_factor,
            lifecycle.session_timeout_ms,
            lifecycle.population,
        )

    def trigger(self, trigger: CompiledTrigger) -> Reason:
        return self._triggers[trigger.id]

    def audience(self, position: int) -> Reason:
        """The audience's condition (``became true``/``false`` follows it), and its values."""
        return self._audiences[position]

    def audience_exit(self, position: int) -> Reason | None:
        """The audience's exit condition (``became true`` follows it), if it has one."""
        return self._exits.get(position)

    def values(self, reason: Reason, features: Features, now_ms: int, view: Callable[[], FeatureView]) -> str:
        """`` (name=value, ...)`` for those of the reason's features whose value is a scalar now."""
        if reason.native is not None:
            found = self._values.values(features, now_ms, reason.native)
        else:
            read = view()
            found = tuple(read[name] for name in reason.shown)
        parts = [
            f"{name}={text}"
            for name, value in zip(reason.shown, found, strict=True)
            if (text := _scalar(value)) is not None
        ]
        return f" ({', '.join(parts)})" if parts else ""


def held_by_dwell(min_dwell_ms: int, ended_ms: int) -> str:
    """What the reason of an exit held until a minimum dwell ended at ``ended_ms`` says of it."""
    return f", held by min_dwell {format_duration(min_dwell_ms)} since the entry at {iso_ms(ended_ms - min_dwell_ms)}"


def _reason(text: str, shown: tuple[str, ...], reads: list[list[tuple[str, str, bool]]]) -> Reason:
    """The reason, its native reads appended to ``reads`` when the rule program reads every value."""
    if not shown or not all(name in SCALARS or name in PRESENCE for name in shown):
        return Reason(text, shown, None)
    reads.append([(*PRESENCE[name], True) if name in PRESENCE else (SCALARS[name], "", False) for name in shown])
    return Reason(text, shown, len(reads) - 1)


def _trigger_text(trigger: CompiledTrigger) -> tuple[str, tuple[str, ...]]:
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
