"""The content of rules and offers: JSON data copied into decisions."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import AfterValidator

MAX_CONTENT_DEPTH = 32  # levels of maps and lists in a rule's content (a decision nests it further)


def _json_data(value: dict[str, Any]) -> dict[str, Any]:
    """Content is copied into decisions as JSON: refuse what JSON cannot hold (sets, non-text keys, deep nesting)."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as err:
        raise ValueError(f"content must be JSON data: {err}") from None
    if _depth(value) > MAX_CONTENT_DEPTH:
        raise ValueError(f"content nested more than {MAX_CONTENT_DEPTH} levels deep")
    return value


def _depth(value: Any) -> int:
    """Levels of maps and lists in JSON data (which orjson bounds to 255)."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


Content = Annotated[dict[str, Any], AfterValidator(_json_data)]
