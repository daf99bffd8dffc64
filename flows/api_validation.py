"""The HTTP API's event check: the stream's own parser, so a refused event gets the dead letter's reason."""

from __future__ import annotations

import orjson

from connectors.http.ingest import Checked, Validator
from connectors.kafka import event_key
from operators.engine import EngineConfig
from operators.parse import Rejected, parse
from schemas.items import DEFAULT_MAX_EVENT_BYTES, RawEvent

HTTP_POSITION = {"source": "http"}
DEFAULT_MAX_SKEW_MS = EngineConfig.max_skew_ms


def contract_validator(max_bytes: int = DEFAULT_MAX_EVENT_BYTES, max_skew_ms: int = DEFAULT_MAX_SKEW_MS) -> Validator:
    """A :data:`connectors.http.ingest.Validator` from :func:`operators.parse.parse`: the reasons and
    messages are the dead letters'; an event dated more than ``max_skew_ms`` after its ``receivedAt``
    is ``future_dated``, as the engine says. Accepted events are keyed like ``nudgeflow produce``."""

    def check(line: bytes, received_ms: int) -> Checked:
        parsed = parse(RawEvent(0, HTTP_POSITION, line, arrived=received_ms / 1000), max_bytes)
        if isinstance(parsed, Rejected):
            return Checked(None, None, parsed.reason, orjson.loads(parsed.body)["messages"])
        if parsed.received_ms is not None and parsed.ts_ms - parsed.received_ms > max_skew_ms:
            skew_s = (parsed.ts_ms - parsed.received_ms) / 1000
            message = f"timestamp is {skew_s:.0f} s after receivedAt (max {max_skew_ms // 1000} s)"
            return Checked(None, None, "future_dated", [message])
        return Checked(line, event_key(line), None, [])

    return check
