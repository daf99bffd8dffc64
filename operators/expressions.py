"""A small, safe expression language for rule conditions, compiled to Python closures.

Expressions use Python-like syntax (``cart.value > 50 and traits.city in ['Berlin', 'Paris']``)
but are never ``eval``-ed: the source is parsed with :mod:`ast`, every node is checked
against an allowlist and turned into a closure. Only names from the feature catalogue can
be read, only the functions in :data:`FUNCTIONS` can be called, attributes are data
lookups (dict keys or public fields), and a missing value is ``null``: comparisons with
``null`` are false instead of raising, arithmetic with it gives ``null``.

What an expression may cost is bounded: its length, nesting and size are checked when it is
compiled, parts made only of constants are computed then (so ``'x' * 10**11`` is refused
before any event), and ``*``, ``+`` and list literals refuse at run time to build text or a list
whose size (see :func:`_size`: nested lists and text count in full) exceeds
:data:`MAX_BUILT_LENGTH` by raising :class:`ExpressionLimitError`. So no value an expression
builds is larger than that, and no function or comparison can spend longer than on such a value.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

Env = Mapping[str, Any]
Fn = Callable[[Env], Any]

MAX_SOURCE_LENGTH = 2000  # characters in an expression
MAX_DEPTH = 50  # levels of nesting: evaluation recurses once per level
MAX_NODES = 500  # names, literals, operators and calls in an expression
MAX_BUILT_LENGTH = 100_000  # size of the text or list that '*', '+' and list literals may build


class ExpressionError(ValueError):
    """An expression that does not parse or uses something not allowed; ``column`` is 1-based."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


class ExpressionLimitError(Exception):
    """An expression that would build a value larger than :data:`MAX_BUILT_LENGTH` while evaluated."""


_SEQUENCES = (str, list, tuple)


def _size(value: str | list | tuple) -> int:
    """The characters of text; the items of a list plus the size of each item that is text or a list."""
    if isinstance(value, str):
        return len(value)
    size = 0
    pending = [value]  # without recursion: a feature's list may nest deeply
    while pending:
        items = pending.pop()
        size += len(items)
        for item in items:
            if isinstance(item, _SEQUENCES):  # one check for the usual item, a number
                if isinstance(item, str):
                    size += len(item)
                else:
                    pending.append(item)
    return size


def _built(size: int, what: str, value: Any) -> None:
    if size > MAX_BUILT_LENGTH:
        measure = "text of length" if isinstance(value, str) else "list of size"
        raise ExpressionLimitError(f"{what} would build a {measure} {size:,} (limit {MAX_BUILT_LENGTH:,})")


def _repeat(a: Any, b: Any) -> Any:
    """``a * b``, refusing to repeat text or a list past :data:`MAX_BUILT_LENGTH`."""
    if isinstance(a, _SEQUENCES) and isinstance(b, int):
        _built(_size(a) * b, "'*'", a)
    elif isinstance(b, _SEQUENCES) and isinstance(a, int):
        _built(_size(b) * a, "'*'", b)
    return a * b


def _concat(a: Any, b: Any) -> Any:
    """``a + b``, refusing to join text or lists past :data:`MAX_BUILT_LENGTH`."""
    if isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES):
        _built(_size(a) + _size(b), "'+'", a)
    return a + b


def _sequence(items: list[Any]) -> list[Any]:
    """A list literal's value, refused past :data:`MAX_BUILT_LENGTH` (``[big, big, ...]`` holds every ``big``)."""
    _built(_size(items), "a list literal", items)
    return items


def _modulo(a: Any, b: Any) -> Any:
    """``a % b`` on numbers only: ``%`` on text (formatting, which can build any length) is null."""
    if isinstance(a, str):
        raise TypeError("'%' is not text formatting in rule expressions")
    return a % b


def _round(value: Any, ndigits: Any = None) -> Any:
    """``round``, without Python's cost of ``10 ** -ndigits`` for an integer and a large negative ``ndigits``."""
    if isinstance(value, int) and isinstance(ndigits, int) and -ndigits > value.bit_length() // 3 + 1:
        return 0  # |value| < 10 ** -ndigits / 2
    return round(value, ndigits)


def _coalesce(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _null_safe(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        if any(a is None for a in args):
            return None
        try:
            return fn(*args)
        except (TypeError, ValueError, ArithmeticError):
            return None

    return call


# lower, upper, startswith and endswith take text only: the str() of a list could be any length
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": _null_safe(abs),
    "coalesce": _coalesce,
    "contains": _null_safe(lambda container, item: item in container),
    "endswith": _null_safe(lambda s, suffix: s.endswith(suffix) if isinstance(s, str) else None),
    "len": _null_safe(len),
    "lower": _null_safe(lambda s: s.lower() if isinstance(s, str) else None),
    "max": _null_safe(max),
    "min": _null_safe(min),
    "round": _null_safe(_round),
    "startswith": _null_safe(lambda s, prefix: s.startswith(prefix) if isinstance(s, str) else None),
    "upper": _null_safe(lambda s: s.upper() if isinstance(s, str) else None),
}
CONSTANTS: dict[str, Any] = {"true": True, "false": False, "null": None}

_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: b is not None and a in b,
    ast.NotIn: lambda a, b: b is not None and a not in b,
}
_ARITH: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: _concat,
    ast.Sub: operator.sub,
    ast.Mult: _repeat,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: _modulo,
}


@dataclass(frozen=True)
class Expression:
    """A compiled expression: ``source``, the top-level ``names`` it reads, and ``evaluate``; ``tree``
    is the syntax tree ``fn`` was compiled from (for compiling it natively: see ``operators/rule_program.py``)."""

    source: str
    names: frozenset[str]
    fn: Fn
    tree: ast.expr | None = field(default=None, compare=False, repr=False)

    def evaluate(self, env: Env) -> Any:
        """The value for ``env``; raise :class:`ExpressionLimitError` (naming the source) on a value too large."""
        try:
            return self.fn(env)
        except ExpressionLimitError as err:
            raise ExpressionLimitError(f"{err}: {self.source}") from None


def compile_expression(source: str, allowed_names: Collection[str]) -> Expression:
    """Parse and compile ``source``; raise :class:`ExpressionError` naming the column at fault."""
    source = source.strip()
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExpressionError(f"expression of {len(source):,} characters (limit {MAX_SOURCE_LENGTH:,})", 1)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"syntax error: {err.msg}", err.offset or len(source) + 1) from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"nested too deeply (limit {MAX_DEPTH} levels)", 1) from None
    _check_shape(tree.body)
    names: set[str] = set()
    fn = _Compiler(frozenset(allowed_names), names).build(tree.body)
    return Expression(source, frozenset(names), fn, tree.body)


def is_constant(node: ast.AST) -> bool:
    """Whether a part of an expression is computed when it is compiled: it reads no feature."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id in CONSTANTS
    parts = node.args if isinstance(node, ast.Call) else ast.iter_child_nodes(node)
    return all(is_constant(part) for part in parts if isinstance(part, ast.expr))


def constant_value(node: ast.expr) -> Any:
    """The value compiling gives a part for which :func:`is_constant` holds (a list becomes a tuple)."""
    return _Compiler(frozenset(), set()).build(node)({})


def _check_shape(root: ast.expr) -> None:
    """Refuse an expression nested deeper than :data:`MAX_DEPTH` or with more than :data:`MAX_NODES` parts
    (walked without recursion, so that neither this check nor compiling can exhaust the stack)."""
    count = 0
    stack: list[tuple[ast.expr, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise ExpressionError(f"nested too deeply (limit {MAX_DEPTH} levels)", node.col_offset + 1)
        if count > MAX_NODES:
            raise ExpressionError(f"too many parts (limit {MAX_NODES} names, literals and operators)", 1)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr))


def _lookup(container: Any, key: Any) -> Any:
    if container is None:
        return None
    if isinstance(container, Mapping):
        try:
            return container.get(key)
        except TypeError:  # an unhashable key
            return None
    if isinstance(container, list | tuple | str):
        try:
            return container[key]
        except (IndexError, TypeError):
            return None
    if isinstance(key, str) and not key.startswith("_"):
        return getattr(container, key, None)
    return None


def _and(left: Fn, right: Fn) -> Fn:
    return lambda env: bool(left(env)) and bool(right(env))


def _or(left: Fn, right: Fn) -> Fn:
    return lambda env: bool(left(env)) or bool(right(env))


def _safe_compare(op: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    if op not in (operator.eq, operator.ne) and (a is None or b is None):
        return False
    try:
        return bool(op(a, b))
    except TypeError:
        return False


class _Compiler:
    def __init__(self, allowed: frozenset[str], names: set[str]) -> None:
        self.allowed = allowed
        self.names = names
        self.constants: set[ast.AST] = set()  # the nodes whose value does not depend on the features

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        return ExpressionError(message, getattr(node, "col_offset", -1) + 1)

    def build(self, node: ast.AST) -> Fn:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.fail(node, f"'{type(node).__name__}' is not allowed in a rule expression")
        fn = method(node)
        if not self._is_constant(node):
            return fn
        self.constants.add(node)
        if isinstance(node, ast.Constant | ast.Name):
            return fn  # already a constant
        try:  # computed once, now: a part too large is refused at check time
            value = fn({})
        except ExpressionLimitError as err:
            raise self.fail(node, str(err)) from None
        if isinstance(value, list):
            value = tuple(value)  # shared by every evaluation, so never changed by one
        return lambda env: value

    def _is_constant(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.Name):
            return node.id in CONSTANTS
        parts = node.args if isinstance(node, ast.Call) else ast.iter_child_nodes(node)
        return all(part in self.constants for part in parts if isinstance(part, ast.expr))

    def _Constant(self, node: ast.Constant) -> Fn:
        value = node.value
        if not isinstance(value, str | int | float | bool | type(None)):
            raise self.fail(node, f"literal {value!r} is not allowed")
        return lambda env: value

    def _Name(self, node: ast.Name) -> Fn:
        name = node.id
        if name in CONSTANTS:
            value = CONSTANTS[name]
            return lambda env: value
        if name not in self.allowed:
            known = ", ".join(sorted(self.allowed))
            raise self.fail(node, f"unknown name '{name}' (known: {known})")
        self.names.add(name)
        return lambda env: env[name]

    def _Attribute(self, node: ast.Attribute) -> Fn:
        if node.attr.startswith("_"):
            raise self.fail(node, f"attribute '{node.attr}' is not allowed")
        inner, attr = self.build(node.value), node.attr
        return lambda env: _lookup(inner(env), attr)

    def _Subscript(self, node: ast.Subscript) -> Fn:
        inner, index = self.build(node.value), self.build(node.slice)
        return lambda env: _lookup(inner(env), index(env))

    def _seq(self, node: ast.List | ast.Tuple | ast.Set) -> Fn:
        items = [self.build(elt) for elt in node.elts]
        return lambda env: _sequence([item(env) for item in items])

    _List = _Tuple = _Set = _seq

    def _BoolOp(self, node: ast.BoolOp) -> Fn:
        parts = [self.build(value) for value in node.values]
        both = _and if isinstance(node.op, ast.And) else _or
        fn = parts[0]
        for part in parts[1:]:
            fn = both(fn, part)
        return fn

    def _UnaryOp(self, node: ast.UnaryOp) -> Fn:
        operand = self.build(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda env: not operand(env)
        if isinstance(node.op, ast.USub):
            negate = _null_safe(operator.neg)
            return lambda env: negate(operand(env))
        raise self.fail(node, "only 'not' and '-' are allowed as unary operators")

    def _BinOp(self, node: ast.BinOp) -> Fn:
        op = _ARITH.get(type(node.op))
        if op is None:
            raise self.fail(node, f"operator '{type(node.op).__name__}' is not allowed")
        if op is _modulo and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            raise self.fail(node, "'%' is for numbers: text formatting is not allowed")
        left, right, safe = self.build(node.left), self.build(node.right), _null_safe(op)
        return lambda env: safe(left(env), right(env))

    def _Compare(self, node: ast.Compare) -> Fn:
        operands = [self.build(node.left)] + [self.build(c) for c in node.comparators]
        ops = []
        for op_node in node.ops:
            op = _COMPARE.get(type(op_node))
            if op is None:
                raise self.fail(node, f"comparison '{type(op_node).__name__}' is not allowed")
            ops.append(op)

        if len(ops) == 1:  # the common case, without the loop
            op, left_fn, right_fn = ops[0], operands[0], operands[1]
            if op is operator.eq:
                return lambda env: left_fn(env) == right_fn(env)
            if op is operator.ne:
                return lambda env: left_fn(env) != right_fn(env)
            return lambda env: _safe_compare(op, left_fn(env), right_fn(env))

        def compare(env: Env) -> bool:
            left = operands[0](env)
            for op, operand in zip(ops, operands[1:], strict=True):
                right = operand(env)
                if not _safe_compare(op, left, right):
                    return False
                left = right
            return True

        return compare

    def _IfExp(self, node: ast.IfExp) -> Fn:
        test, body, orelse = self.build(node.test), self.build(node.body), self.build(node.orelse)
        return lambda env: body(env) if test(env) else orelse(env)

    def _Call(self, node: ast.Call) -> Fn:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise self.fail(node, f"only these functions can be called: {allowed}")
        if node.keywords:
            raise self.fail(node, "keyword arguments are not allowed")
        fn = FUNCTIONS[node.func.id]
        args = [self.build(arg) for arg in node.args]
        return lambda env: fn(*(arg(env) for arg in args))
