"""Raw bytes to envelopes, or to dead letters that say why and where."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from conftest import T0, call, raw_records, track

from operators.parse import DEFAULT_MAX_EVENT_BYTES, RawEvent, Rejected, parse
from schemas.envelope import Envelope
from schemas.events import ProductEvent

T0_MS = int(T0.timestamp() * 1000)
POSITION = {"source": "events.jsonl", "line": 42}
VIEWED = track("Product Viewed", props={"product_id": "p1", "price": 9.5}, message_id="mv1")


def raw(payload: bytes | dict[str, Any], **kw: Any) -> RawEvent:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return RawEvent(42, POSITION, body, **kw)


def rejected(result: Envelope | Rejected) -> dict[str, Any]:
    assert isinstance(result, Rejected), result
    return orjson.loads(result.body)


def test_a_valid_event_becomes_an_envelope():
    env = parse(raw(VIEWED))
    assert isinstance(env, Envelope)
    assert isinstance(env.event, ProductEvent)
    assert env.name == "Product Viewed"
    assert env.message_id == "mv1"
    assert env.customer_id == "u1" and env.user_id == "u1" and env.anonymous_id is None
    assert env.ts_ms == T0_MS
    assert env.received_ms is None
    assert env.known is True
    assert env.seq == 42 and env.position == POSITION
    assert env.raw == orjson.dumps(VIEWED)


def test_received_at_and_anonymous_id_are_carried():
    env = parse(raw(track("Page Shared", user=None, anon="a1", receivedAt="2026-01-05T10:00:01.250Z")))
    assert env.customer_id == "a1" and env.user_id is None and env.anonymous_id == "a1"
    assert env.received_ms == T0_MS + 1250


def test_alias_previous_id_becomes_the_anonymous_id():
    env = parse(raw(call("alias", user="u7", previousId="anon-7")))
    assert env.name == "alias"
    assert env.user_id == "u7" and env.anonymous_id == "anon-7"
    assert env.customer_id == "u7"


def test_unknown_event_names_are_accepted_but_not_known():
    env = parse(raw(track("Wishlist Shared")))
    assert env.name == "Wishlist Shared"
    assert env.known is False
    assert parse(raw(call("screen"))).known is True


def test_too_large_is_checked_before_parsing():
    payload = orjson.dumps(VIEWED)
    record = rejected(parse(raw(payload), max_bytes=len(payload) - 1))
    assert record["reason"] == "too_large"
    assert str(len(payload)) in record["messages"][0]
    assert isinstance(parse(raw(payload), max_bytes=len(payload)), Envelope)
    padded = {**VIEWED, "properties": {"product_id": "p1", "blob": "x" * DEFAULT_MAX_EVENT_BYTES}}
    assert rejected(parse(raw(padded)))["reason"] == "too_large"


def test_not_utf8():
    payload = b'{"type": "page", "name": "\xff\xfe"}'
    record = rejected(parse(raw(payload)))
    assert record["reason"] == "not_utf8"
    assert record["messages"] == ["invalid UTF-8 at byte 26"]
    assert base64.b64decode(record["payload_base64"]) == payload


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type": "track", "event": "Product Viewed"',
        b'{"type": "page", "n": NaN}',
        b'{"type": "page", "n": Infinity}',
        b'{"type": "page", "n": 1e999}',
        b"",
        b"{'type': 'page'}",
    ],
    ids=["truncated", "nan", "infinity", "overflow", "empty", "single-quotes"],
)
def test_invalid_json(payload):
    record = rejected(parse(raw(payload)))
    assert record["reason"] == "invalid_json"
    assert record["messages"] and record["messages"][0]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"[1, 2]", "an event is a JSON object, not list"),
        (b'"page"', "an event is a JSON object, not str"),
        (b"null", "an event is a JSON object, not NoneType"),
    ],
)
def test_json_that_is_not_an_object_is_schema_invalid(payload, message):
    record = rejected(parse(raw(payload)))
    assert record["reason"] == "schema_invalid"
    assert record["messages"] == [message]


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({k: v for k, v in VIEWED.items() if k != "messageId"}, "messageId"),
        ({**VIEWED, "properties": {"product_id": "p1", "price": "abc"}}, "properties.price"),
        ({**VIEWED, "properties": {"product_id": "p1", "price": -3}}, "properties.price"),
        ({**VIEWED, "timestamp": "2026-01-05T10:00:00"}, "timestamp"),
        ({**VIEWED, "userId": 7}, "userId"),
        ({**VIEWED, "type": "group"}, "type"),
        (
            track("Order Completed", props={"order_id": "o1", "products": [{"product_id": "a", "quantity": "two"}]}),
            "properties.products.0.quantity",
        ),
    ],
    ids=["no-message-id", "price-abc", "price-negative", "naive-time", "user-id-int", "unknown-type", "line-qty"],
)
def test_schema_invalid_names_the_field(event, field):
    record = rejected(parse(raw(event)))
    assert record["reason"] == "schema_invalid"
    assert any(m.startswith(f"{field}: ") for m in record["messages"]), record["messages"]
    assert not any(m.startswith("Product Viewed") for m in record["messages"]), "the union tag is left out"


def test_schema_invalid_without_ids_says_so():
    record = rejected(parse(raw(track("Product Viewed", user=None, props={"product_id": "p1"}))))
    assert record["reason"] == "schema_invalid"
    assert record["messages"] == ["Value error, userId or anonymousId is required"]


def test_dead_letter_keeps_position_processor_and_the_payload():
    payload = b'{"type": "page", "oops'
    result = parse(raw(payload))
    record = rejected(result)
    assert result.key == "42"
    assert record["processor"] == "nudgeflow.parse"
    assert record["position"] == POSITION
    assert record["failed_at"] is None
    assert base64.b64decode(record["payload_base64"]) == payload
    assert record["payload_size"] == len(payload)


def test_a_source_rejected_record_becomes_a_dead_letter_as_is():
    valid = orjson.dumps(VIEWED)
    result = parse(raw(valid, rejected=("connectors.uci_retail", "bad_row", "Quantity is not a number")))
    record = rejected(result)
    assert record["processor"] == "connectors.uci_retail"
    assert record["reason"] == "bad_row"
    assert record["messages"] == ["Quantity is not a number"]
    assert base64.b64decode(record["payload_base64"]) == valid
    assert record["position"] == POSITION


def test_raw_records_positions_survive_parsing():
    results = [parse(r) for r in raw_records([VIEWED, b"{", call("page")])]
    assert [type(r).__name__ for r in results] == ["Envelope", "Rejected", "Envelope"]
    assert results[0].position == {"source": "test.jsonl", "line": 1}
    assert rejected(results[1])["position"] == {"source": "test.jsonl", "line": 2}
    assert results[2].seq == 3
