"""Raw bytes to envelopes, or to dead letters that say why and where."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from conftest import T0, at, call, raw_records, track

import schemas.events
from connectors.files import add_counts
from operators.parse import MAX_UNKNOWN_FIELDS, OTHER_PATHS, Rejected, count_notes, parse, readable_firsts
from schemas.envelope import Envelope
from schemas.events import ProductEvent
from schemas.items import DEFAULT_MAX_EVENT_BYTES, RawEvent

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
        (track("Order Completed", props={"products": [{"product_id": "a"}]}), "properties.order_id"),
    ],
    ids=["no-message-id", "price-abc", "price-negative", "naive-time", "user-id-int", "unknown-type", "no-order-id"],
)
def test_schema_invalid_names_the_field(event, field):
    record = rejected(parse(raw(event)))
    assert record["reason"] == "schema_invalid"
    assert any(m.startswith(f"{field}: ") for m in record["messages"]), record["messages"]
    assert not any(m.startswith("Product Viewed") for m in record["messages"]), "the union tag is left out"


def test_schema_invalid_names_every_problem_in_the_order_of_the_contract():
    event = {**VIEWED, "properties": {"quantity": 0, "price": -1, "product_id": "p1"}, "userId": 7}
    record = rejected(parse(raw(event)))
    assert record["messages"] == [
        "userId: Input should be a valid string",
        "properties.price: Input should be greater than or equal to 0",
        "properties.quantity: Input should be greater than or equal to 1",
    ]
    lines = [{"product_id": "a", "price": "1"}, {"quantity": 2}]
    order = track("Order Completed", props={"products": lines, "total": -1}, timestamp="2026-01-05T10:00:00")
    assert rejected(parse(raw(order)))["messages"] == [
        "timestamp: Input should have timezone info",
        "properties.products.0.price: Input should be a valid number",
        "properties.products.1.product_id: Field required",
        "properties.order_id: Field required",
        "properties.total: Input should be greater than or equal to 0",
    ], "bad lines are named too when the order is refused for something else"


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


def test_one_bad_line_of_a_long_order_does_not_check_every_good_line_field_by_field(monkeypatch):
    """A till that sends a weighed item as ``quantity: 0.5`` on every order: the good lines are each
    checked whole, once; only the bad one is looked at field by field to say what is wrong."""
    lines = [{"product_id": f"p{n}", "name": "n", "price": 2.0, "quantity": 1, "currency": "EUR"} for n in range(50)]
    lines[7]["quantity"] = 0.5
    order = track("Order Completed", props={"order_id": "o1", "total": 100.0, "products": lines})
    convert, calls = schemas.events.msgspec.convert, []
    monkeypatch.setattr(schemas.events.msgspec, "convert", lambda *args: calls.append(args) or convert(*args))
    env = parse(raw(order))
    assert isinstance(env, Envelope)
    assert env.notes[0] == ("order_lines_dropped", "bad_quantity", 1)
    assert len(env.event.properties.products) == 49
    assert len(calls) <= 50 + 10, len(calls)


def test_an_order_keeps_its_good_lines_and_notes_each_dropped_one():
    lines = [{"product_id": "a", "quantity": "two"}, {"product_id": "b", "quantity": 0}, {"price": 2.0}]
    env = parse(raw(track("Order Completed", props={"order_id": "o1", "products": lines})))
    assert isinstance(env, Envelope)
    assert [p.product_id for p in env.event.properties.products] == ["b"]
    assert env.notes == (("order_lines_dropped", "bad_quantity", 1), ("order_lines_dropped", "missing_product_id", 1))
    assert parse(raw(VIEWED)).notes == ()


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (
            b'{"type":"alias","type":"track","event":"Signed Up","messageId":"m","userId":"u",'
            b'"timestamp":"2026-01-05T10:00:00Z"}',
            "type",
        ),
        (
            b'{"type": "track", "event": "Signed Up", "messageId": "m", "userId" : "u", "userId" : "v",'
            b' "timestamp": "2026-01-05T10:00:00Z"}',
            "userId",
        ),
        (
            b'{"type":"track","event":"Order Completed","messageId":"m","userId":"u",'
            b'"timestamp":"2026-01-05T10:00:00Z","properties":{"order_id":"o",'
            b'"products":[{"product_id":"a"},{"product_id":"b","quantity":1,"quantity":2}]}}',
            "properties.products.1.quantity",
        ),
        (
            b'{"type":"page","messageId":"m","userId":"u","timestamp":"2026-01-05T10:00:00Z",'
            b'"name":"a:b:c","name":"x"}',
            "name",
        ),
        (
            b'{"type":"page","messageId":"m","userId":"u","userId":"v","timestamp":"2026-01-05T10:00:00Z",'
            b'"name":"\\u003a"}',
            "userId",
        ),
    ],
    ids=["top-level", "spaced", "nested-line", "colons-in-the-lost-value", "an-escaped-colon-elsewhere"],
)
def test_a_repeated_key_is_a_dead_letter_naming_its_path(payload, path):
    record = rejected(parse(raw(payload)))
    assert record["reason"] == "duplicate_key"
    assert record["messages"] == [f"{path}: duplicate key"]


def test_colons_in_values_spacing_and_escapes_are_not_taken_for_repeated_keys():
    event = call("page", name="a:b", context={"page": {"url": "https://x.example/a:b?c=d:e"}})
    spaced = orjson.dumps(event, option=orjson.OPT_INDENT_2).replace(b'": ', b'" : ')
    escaped = orjson.dumps(event).replace(b"a:b", b"a\\u003ab", 1)
    for payload in (orjson.dumps(event), spaced, escaped):
        assert isinstance(parse(raw(payload)), Envelope), payload


def unknown_paths(event: dict[str, Any]) -> list[str]:
    env = parse(raw(event))
    assert isinstance(env, Envelope), env
    return [path for kind, path, times in env.notes if kind == "unknown_fields" for _ in range(times)]


def test_unknown_fields_of_closed_containers_are_noted_by_path():
    pos = {"channel": "pos", "store_id": "st-1", "store": {"id": "st-1", "code": "B1"}, "location": {"town": "X"}}
    line = {"product_id": "a", "qty": 2, "variant": "red", "url": "https://x.example/a"}
    event = track("Order Completed", props={"order_id": "o", "products": [line, line]}, context=pos, user_id="u")
    assert unknown_paths(event) == [
        "user_id",
        "context.store_id",
        "context.store.code",
        "context.location.town",
        "properties.products[].qty",
        "properties.products[].qty",
    ]
    consent = track("Consent Updated", props={"channel": "push", "granted": True, "granted_at": "2026-01-05"})
    assert unknown_paths(consent) == ["properties.granted_at"]
    assert unknown_paths(track("Store Visited", props={"store_id": "s", "dwell": 5})) == ["properties.dwell"]
    assert unknown_paths(track("Erasure Requested", props={"request_id": "r", "reason": "x"})) == ["properties.reason"]


def test_segment_fields_and_open_containers_are_not_noted():
    context = {
        "ip": "8.8.8.8",
        "userAgent": "Mozilla/5.0",
        "library": {"name": "analytics.js", "version": "2.11.1"},
        "app": {"name": "shop"},
        "device": {"id": "d"},
        "os": {"name": "iOS"},
        "page": {"path": "/"},
        "screen": {"width": 320},
        "network": {"wifi": True},
        "campaign": {"name": "spring"},
        "referrer": {"type": "web"},
        "traits": {"email": "a@b.c"},
        "groupId": "g1",
        "locale": "de-DE",
        "location": {"city": "Berlin", "region": "BE", "speed": 0},
    }
    top = {"integrations": {"All": True}, "originalTimestamp": at(0), "sentAt": at(0), "version": 2, "channel": "web"}
    assert (
        unknown_paths(track("Product Viewed", props={"product_id": "p", "colour": "red"}, context=context, **top)) == []
    )
    assert unknown_paths(track("Wishlist Shared", props={"anything": 1}, context=context)) == []
    assert unknown_paths(call("identify", traits={"email": "a@b.c", "plan": "pro"})) == []
    assert unknown_paths(call("page", name="Home", category="Docs", properties={"path": "/"})) == []


def test_unknown_paths_counted_per_shard_are_bounded_and_keep_their_first_sighting():
    stats: dict[str, Any] = {}
    events = [call("page", context={f"k{n}": 1, "store_id": "s"}) for n in range(MAX_UNKNOWN_FIELDS + 10)]
    for n, event in enumerate(events):
        count_notes(stats, parse(RawEvent(n, {"line": n}, orjson.dumps(event))))
    fields = stats["unknown_fields"]
    assert len(fields) == MAX_UNKNOWN_FIELDS + 1
    assert fields["context.store_id"]["count"] == MAX_UNKNOWN_FIELDS + 10
    assert fields["context.store_id"]["first"][1:] == [events[0]["messageId"], {"line": 0}]
    assert fields[OTHER_PATHS]["count"] == 11, "the paths after the first 50 (one of them shares its event)"
    assert fields["context.k0"]["first"][1:] == [events[0]["messageId"], {"line": 0}]


def test_a_field_on_every_line_counts_once_per_line_also_beyond_the_bound():
    stats: dict[str, Any] = {}
    lines = [{"product_id": "a", "qty": 2}, {"qty": 1}, {"product_id": "b", "qty": 1}, {"price": 1}]
    order = track("Order Completed", props={"order_id": "o", "products": lines})
    count_notes(stats, parse(RawEvent(0, {"line": 0}, orjson.dumps(order))))
    assert stats["unknown_fields"]["properties.products[].qty"]["count"] == 3
    assert stats["order_lines_dropped"] == {"missing_product_id": 2}
    for n in range(MAX_UNKNOWN_FIELDS):
        count_notes(stats, parse(RawEvent(n + 1, {"line": n + 1}, orjson.dumps(call("page", context={f"k{n}": 1})))))
    count_notes(stats, parse(RawEvent(99, {"line": 99}, orjson.dumps({**order, "colour": "red", "messageId": "m"}))))
    fields = stats["unknown_fields"]
    assert fields["properties.products[].qty"]["count"] == 6
    assert fields[OTHER_PATHS]["count"] == 2, "the paths after the first 50: k49 and colour"
    assert stats["order_lines_dropped"] == {"missing_product_id": 4}


def test_shards_first_sightings_merge_to_the_earliest():
    early = {"unknown_fields": {"context.x": {"count": 1, "first": [f"{5:032x}", "m5", {"line": 5}]}}}
    late = {"unknown_fields": {"context.x": {"count": 2, "first": [f"{70:032x}", "m70", {"line": 70}]}}}
    for parts in ((early, late), (late, early)):
        total: dict[str, Any] = {}
        for part in parts:
            add_counts(total, part)
        assert total["unknown_fields"]["context.x"] == {
            "count": 3,
            "first": early["unknown_fields"]["context.x"]["first"],
        }
    readable_firsts(total)
    assert total["unknown_fields"]["context.x"] == {"count": 3, "first_message_id": "m5", "first_position": {"line": 5}}


@pytest.mark.parametrize("depth", [100, 300, 1000])
def test_deeply_nested_properties_are_parsed_never_raise(depth):
    """orjson reads 1,024 levels but writes only 254: a deep document must not stop the flow."""
    event = call("page", properties={"deep": []})
    payload = orjson.dumps(event).replace(b'"deep":[]', b'"deep":' + b"[" * depth + b"]" * depth)
    assert isinstance(parse(raw(payload)), Envelope)


def test_an_error_inside_parsing_is_a_dead_letter_not_an_exception(monkeypatch):
    import operators.parse as parse_module

    def broken(*args: Any) -> None:
        raise RuntimeError("validator blew up")

    monkeypatch.setattr(parse_module, "decode_plain", broken)
    monkeypatch.setattr(parse_module, "validate_event", broken)
    for event in (call("page"), call("page", userID="u")):  # a plain event, and one with an unknown field
        record = rejected(parse(raw(event)))
        assert (record["reason"], record["messages"]) == ("processing_error", ["RuntimeError: validator blew up"])
