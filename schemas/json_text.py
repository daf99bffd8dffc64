"""Facts about JSON text that a decoder does not keep."""

from __future__ import annotations

from typing import Any

import orjson


def lost_a_key(payload: bytes, data: Any) -> bool:
    """Whether decoding ``payload`` into ``data`` dropped a repeated key (orjson keeps the last one silently).

    Outside strings a colon follows every key and nothing else, and re-encoding writes every
    colon inside a string as a colon (also one escaped as ``\\u003a``), so the payload's colons
    and escaped colons outnumber its re-encoding's exactly when a key was dropped. Compact JSON
    as orjson or ``JSON.stringify`` writes it is its own re-encoding: then nothing is counted.
    A document too deeply nested to re-encode is checked the slow way.
    """
    try:
        encoded = orjson.dumps(data)
    except orjson.JSONEncodeError:
        return True
    if encoded == payload:
        return False
    escaped = payload.count(b"\\u003a") + payload.count(b"\\u003A")
    return payload.count(b":") + escaped > encoded.count(b":")
