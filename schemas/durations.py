"""Durations as rule files write them: ``'30m'``, ``'2h'``, ``'7d'``, ``'90s'``, ``'500ms'``."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(value: Any) -> int:
    """``'30m'``, ``'2h'``, ``'7d'``, ``'90s'``, ``'500ms'`` -> milliseconds (a bare number has no unit: refused)."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{value!r} is not a duration like '30m', '2h' or '7d' (a number needs a unit)")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


def format_duration(ms: int) -> str:
    """``1800000`` -> ``'30m'``: the largest unit that divides the duration exactly."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
