"""Whether an audience's ``exit_when`` can hold together with its ``when`` (checked when rules load).

A customer for whom both hold enters and leaves again at the next evaluation: the flapping that an
exit condition is there to stop. The check is cheap and partial: it reads the comparisons of one
feature with a constant (``lapse_risk >= 0.6``, ``lifecycle == 'active'``, a bare ``at_risk``) that
``when`` requires (its ``and`` parts) and those any one of which is enough for ``exit_when`` (its
``or`` parts), and reports a feature whose values allowed by both overlap. Other conditions are
not judged.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any

from operators.expressions import Expression, constant_value, is_constant

_FLIP = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Eq: ast.Eq, ast.NotEq: ast.NotEq}
_ALIASES = {"frequency": "orders"}


@dataclass(frozen=True)
class _Band:
    """The numbers a comparison allows: from ``low`` to ``high``, each bound included or not."""

    low: float = -math.inf
    low_in: bool = False
    high: float = math.inf
    high_in: bool = False

    def __and__(self, other: _Band) -> _Band:
        low, low_in = max((self.low, not self.low_in), (other.low, not other.low_in))
        high, high_in = min((self.high, self.high_in), (other.high, other.high_in))
        return _Band(low, not low_in, high, high_in)

    @property
    def empty(self) -> bool:
        return self.low > self.high or (self.low == self.high and not (self.low_in and self.high_in))


@dataclass(frozen=True)
class _Values:
    """The values (text, ``true``/``false``) a comparison allows: exactly ``only``, or any but ``not_in``."""

    only: frozenset[Any] | None = None
    not_in: frozenset[Any] = frozenset()

    def __and__(self, other: _Values) -> _Values:
        only = self.only if other.only is None else other.only if self.only is None else self.only & other.only
        return _Values(only, self.not_in | other.not_in)

    @property
    def empty(self) -> bool:
        return self.only is not None and not (self.only - self.not_in)


Allowed = _Band | _Values


def overlapping(when: Expression, exit_when: Expression) -> str | None:
    """What in ``exit_when`` can hold while ``when`` does, as the error says it (``None``: nothing found)."""
    if when.tree is None or exit_when.tree is None:
        return None
    if ast.dump(when.tree) == ast.dump(exit_when.tree):
        return "it is the same condition as 'when'"
    required: dict[str, Allowed] = {}
    for part in _parts(when.tree, ast.And):
        found = _constraint(part)
        if found is not None:
            name, allowed = found
            required[name] = required[name] & allowed if name in required else allowed  # type: ignore[operator]
    for part in _parts(exit_when.tree, ast.Or):
        found = _constraint(part)
        if found is None or found[0] not in required:
            continue
        name, allowed = found
        both = required[name]
        if type(both) is type(allowed) and not (both & allowed).empty:  # type: ignore[operator]
            return f"'{ast.unparse(part)}' can hold while 'when' does"
    return None


def _parts(node: ast.expr, kind: type[ast.boolop]) -> list[ast.expr]:
    """The operands of ``node`` joined by ``kind`` (``and``/``or``), flattened."""
    if isinstance(node, ast.BoolOp) and isinstance(node.op, kind):
        return [part for value in node.values for part in _parts(value, kind)]
    return [node]


def _constraint(node: ast.expr) -> tuple[str, Allowed] | None:
    """``(feature, values allowed)`` of one comparison of a feature with a constant, else ``None``."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) and _feature(node.operand):
        return _feature(node.operand), _Values(frozenset({False, None}))  # type: ignore[return-value]
    if _feature(node):
        return _feature(node), _Values(not_in=frozenset({False, None}))  # type: ignore[return-value]
    if not isinstance(node, ast.Compare) or len(node.ops) != 1 or type(node.ops[0]) not in _FLIP:
        return None
    left, right, op = node.left, node.comparators[0], type(node.ops[0])
    if is_constant(left) and _feature(right):
        left, right, op = right, left, _FLIP[op]
    name = _feature(left)
    if name is None or not is_constant(right):
        return None
    value = constant_value(right)
    if isinstance(value, bool) or not isinstance(value, int | float):
        if op is ast.Eq:
            return name, _Values(frozenset({value}))
        return (name, _Values(not_in=frozenset({value}))) if op is ast.NotEq else None
    if op is ast.NotEq:
        return None
    bounds = {
        ast.Eq: _Band(value, True, value, True),
        ast.Lt: _Band(high=value),
        ast.LtE: _Band(high=value, high_in=True),
        ast.Gt: _Band(low=value),
        ast.GtE: _Band(low=value, low_in=True),
    }
    return name, bounds[op]


def _feature(node: ast.expr) -> str | None:
    """The feature (``lapse_risk``, ``traits.city``) that ``node`` reads, if it is just a read."""
    if isinstance(node, ast.Name):
        return None if is_constant(node) else _ALIASES.get(node.id, node.id)
    if isinstance(node, ast.Attribute) and _feature(node.value):
        return f"{_feature(node.value)}.{node.attr}"
    if isinstance(node, ast.Subscript) and _feature(node.value) and is_constant(node.slice):
        key = constant_value(node.slice)
        return f"{_feature(node.value)}.{key}" if isinstance(key, str) else None
    return None
