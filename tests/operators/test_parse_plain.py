"""Plain events are decoded straight into their model; every input still parses exactly as the
general way (orjson, dicts, validation) parses it: same envelope, or the same dead letter."""

from __future__ import annotations

import copy
import json
import pickle
from random import Random
from typing import Any

import orjson
import pytest

import operators.parse as parse_module
from connectors.synthetic import generate_events
from operators.parse import _PLAIN, _SCAN, Rejected, _parse_generally, parse, parse_batch
from schemas.envelope import Envelope
from schemas.items import ChunkEnd, EndOfInput, RawEvent
from state._native import OrderLines

ODD_VALUES: list[Any] = [
    "12.5",
    12.5,
    2.0,
    2,
    -3,
    0,
    -0.0,
    True,
    None,
    "",
    [],
    {},
    "x" * 250,
    1e308,
    1e-320,
    0.1 + 0.2,
    10**18,
    10**19,
    10**30,
    -(10**25),
    "2026-01-05T10:00:00Z",
    "caf\u00e9 \U0001f600",
    "tab\there",
    "\u0000",
]
ODD_TIMES: list[Any] = [
    "2026-01-05T10:00:00Z",
    "2026-01-05T10:00:00.1234567+01:00",
    "2026-01-05T10:00:00.5-00:30",
    "2026-01-05 10:00:00Z",
    "2026-01-05t10:00:00z",
    "2026-01-05T10:00Z",
    "2026-01-05T10:00:00",
    "2026-01-05T10:00:00,5Z",
    "2026-01-05T10:00:00+0100",
    "2026-02-30T00:00:00Z",
    "2026-01-05T24:00:00Z",
    "2026-01-05T10:00:00+24:00",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00.000Z",
    "1600-02-29T12:00:00.999Z",
    "9999-12-31T23:59:59.999999Z",
    "2026-01-05",
    "1767607200",
    1767607200,
    "",
]
ODD_KEYS = ["userID", "store_id", "qty", "extra", "region", "integrations", "variant", "type", "event", "product_id"]
LINE_EXTRAS = [
    "currency",
    "sku",
    "brand",
    "variant",
    "url",
    "image_url",
    "qty",
    "Price",
    "k" * 150,
    "\u00e9\U0001f600" * 60,
]
"""Keys real tills and shops send in order lines (some the contract names, some not), and odd ones."""
TIME_FIELDS = [("timestamp",), ("receivedAt",), ("sentAt",), ("traits", "created_at")]


def encode(value: Any, rng: Random, spaced: bool, repeat_in: Any = None) -> str:
    """JSON text of ``value``; ``spaced`` with blanks, the object ``repeat_in`` with a key twice."""
    comma, colon = (" ,\n ", " : ") if spaced else (",", ":")
    if isinstance(value, dict):
        items = [json.dumps(key) + colon + encode(child, rng, spaced, repeat_in) for key, child in value.items()]
        if value is repeat_in and items:
            items.insert(rng.randrange(len(items) + 1), rng.choice(items))
        return "{" + comma.join(items) + "}"
    if isinstance(value, list):
        return "[" + comma.join(encode(child, rng, spaced, repeat_in) for child in value) + "]"
    return json.dumps(value, ensure_ascii=rng.random() < 0.5)


def containers(value: Any) -> list[Any]:
    """Every object and list in ``value``."""
    found, stack = [], [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict | list):
            found.append(node)
            stack.extend(node.values() if isinstance(node, dict) else node)
    return found


def odd_value(rng: Random) -> Any:
    return copy.deepcopy(rng.choice(ODD_VALUES))


def mutated(event: dict[str, Any], rng: Random) -> dict[str, Any]:
    """A copy of ``event`` with one thing changed: a value of another type, a field gone, an unknown
    key, an odd date-time, a deep nesting, an odd ``type`` or ``event``."""
    event = orjson.loads(orjson.dumps(event))
    kind = rng.randrange(8)
    nodes = containers(event)
    objects = [node for node in nodes if isinstance(node, dict) and node]
    if kind == 0:
        target = rng.choice(nodes)
        if isinstance(target, dict) and target:
            target[rng.choice(list(target))] = odd_value(rng)
        elif isinstance(target, list) and target:
            target[rng.randrange(len(target))] = odd_value(rng)
    elif kind == 1:
        target = rng.choice(objects)
        del target[rng.choice(list(target))]
    elif kind == 2:
        rng.choice(objects)[rng.choice(ODD_KEYS)] = odd_value(rng)
    elif kind == 3:
        path = rng.choice(TIME_FIELDS)
        holder = event.setdefault("traits", {}) if len(path) == 2 else event
        if isinstance(holder, dict):
            holder[path[-1]] = rng.choice(ODD_TIMES)
    elif kind == 4:
        depth = rng.choice([10, 62, 63, 64, 65, 300])
        nested: Any = 1
        for _ in range(depth):
            nested = [nested] if rng.random() < 0.5 else {"d": nested}
        rng.choice(objects)["deep"] = nested
    elif kind == 5:
        event["type"] = rng.choice(["track", "identify", "page", "screen", "alias", "Track", "group", 7, None])
    elif kind == 6:
        event["event"] = rng.choice(["Product Viewed", "Order Completed", "Wished", "identify", "", 7, None])
    else:
        for _ in range(rng.randrange(1, 6)):
            rng.choice(objects)[rng.choice(ODD_KEYS + LINE_EXTRAS)] = odd_value(rng)
        with_extras(event, rng)
    return event


def with_extras(event: dict[str, Any], rng: Random) -> None:
    """Give the lines of ``event`` (if it has lines) keys as tills send them, in any order."""
    properties = event.get("properties")
    lines = properties.get("products") if isinstance(properties, dict) else None
    for line in lines if isinstance(lines, list) else ():
        if isinstance(line, dict):
            extras = {key: rng.choice(["EUR", 1, None]) for key in rng.sample(LINE_EXTRAS, rng.randrange(4))}
            items = [*line.items(), *extras.items()]
            rng.shuffle(items)
            line.clear()
            line.update(items)


LINE_EDGES: list[tuple[str, Any]] = [
    ("product_id", "p" * 200),
    ("product_id", "\u00e9" * 200),
    ("product_id", "p" * 201),
    ("product_id", "\u00e9" * 201),
    ("product_id", ""),
    ("product_id", 'p"1'),
    ("product_id", "p\u00e9"),
    ("category", 'a"b'),
    ("category", ""),
    ("category", None),
    ("category", 3),
    ("name", 'Kestrel "12\\" tops'),
    ("name", False),
    ("sku", None),
    ("brand", []),
    ("price", 1e9),
    ("price", 1000000000),
    ("price", 1000000000.0000001),
    ("price", 1000000000.001),
    ("price", -0.0),
    ("price", -0.001),
    ("price", 0),
    ("price", 0.1 + 0.2),
    ("price", "1.5"),
    ("quantity", 100_000),
    ("quantity", 100_001),
    ("quantity", -100_000),
    ("quantity", -100_001),
    ("quantity", 0),
    ("quantity", 3.0),
    ("quantity", 2.5),
    ("quantity", None),
    ("quantity", True),
]
"""A value at each edge of what an order line accepts, and just past it."""


def with_line(order: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``order`` with ``key`` of its second line (of at least two) set to ``value``."""
    order = orjson.loads(orjson.dumps(order))
    lines = order["properties"]["products"]
    lines += lines[:1] * (2 - len(lines))
    lines[1][key] = value
    return order


def with_lines(order: dict[str, Any], count: int) -> dict[str, Any]:
    """``order`` with ``count`` short lines, some returned (a negative quantity)."""
    order = orjson.loads(orjson.dumps(order))
    order["properties"]["products"] = [{"product_id": f"p{n}", "quantity": 1 - n % 3} for n in range(count)]
    return order


def corpus() -> list[bytes]:
    """The generated stream as sent, in other layouts, mutated, and a few hand-made oddities."""
    rng = Random(20261130)
    events = list(generate_events(40, 3, seed=5, defects=0.05))
    payloads = [orjson.dumps(event) for event in events]
    for event in events:
        spaced = rng.random() < 0.2
        payloads.append(encode(event, rng, spaced).encode())
        odd = mutated(event, rng)
        repeated = rng.choice(containers(odd)) if rng.random() < 0.2 else None
        payloads.append(encode(odd, rng, spaced, repeated).encode())
    for event in events:
        if event.get("event") == "Order Completed":
            extra = orjson.loads(orjson.dumps(event))
            with_extras(extra, rng)
            payloads.append(orjson.dumps(extra))
    order = next(event for event in events if event.get("event") == "Order Completed")
    payloads += [orjson.dumps(with_line(order, key, value)) for key, value in LINE_EDGES]
    payloads += [json.dumps(with_line(order, key, value)).encode() for key, value in LINE_EDGES]  # ASCII escapes
    payloads += [orjson.dumps(with_lines(order, count)) for count in (0, 1, 20, 21, 499, 500, 501)]
    viewed = payloads[0]
    payloads += [
        viewed[:-1] + b',"properties":{"a":1e2}}',
        viewed[:-1] + b',"x":1E400}',
        viewed[:-1] + b',"x":"\\ud800"}',
        viewed[:-1] + b',"x":"\\ud83d\\ude00"}',
        viewed[:-1] + b',"x":"\xff"}',
        viewed[:-1] + b',"x":"a\tb"}',
        viewed[:-1] + b',"x":NaN}',
        viewed[:-1] + b',"x":012}',
        viewed[:-1] + b',"x\\u0041":1}',
        viewed[:-1] + b',"x":-}',
        viewed.replace(b'"timestamp":"2', b'"timestamp":"\\u0032'),
        viewed.replace(b'"type":"track"', b'"type":"tr\\u0061ck"'),
        viewed.replace(b'"type":"track"', b'"\\u0074ype":"track"'),
        viewed + b" x",
        viewed + b"\n",
        b"\xef\xbb\xbf" + viewed,
        viewed[:-1],
        b"[" + viewed + b"]",
        b'"just text"',
        b"",
    ]
    return payloads


def outcome(result: Envelope | Rejected) -> tuple[Any, ...]:
    """Everything a result holds, values told apart by type and sign (``2`` from ``2.0``, ``-0.0`` from ``0.0``)."""
    if isinstance(result, Rejected):
        return ("rejected", result.key, result.body, result.reason)
    event = result.validated
    fields = tuple(repr(getattr(result, name)) for name in result.__slots__ if name != "validated")
    dropped = getattr(getattr(event, "properties", None), "dropped_lines", ())
    return ("envelope", type(event), repr(event), dropped, fields)


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return corpus()


def test_every_input_parses_as_the_general_way_parses_it(payloads):
    differ = []
    for line, payload in enumerate(payloads):
        raw = RawEvent(line, {"source": "corpus", "line": line}, payload)
        if outcome(parse(raw)) != outcome(_parse_generally(raw)):
            differ.append(payload)
    assert not differ, differ[:3]


def test_the_corpus_takes_both_ways_and_all_outcomes(payloads):
    """So that the comparison above means something: most generated events are plain, and the
    mutations give plain and general ones, accepted and rejected, with notes and without."""
    results = [parse(RawEvent(n, {}, payload)) for n, payload in enumerate(payloads)]
    plain = sum(_SCAN.model_of(payload) >= 0 for payload in payloads)
    assert len(payloads) * 0.4 < plain < len(payloads) * 0.9
    reasons = {result.reason for result in results if isinstance(result, Rejected)}
    assert {"schema_invalid", "duplicate_key", "invalid_json", "not_utf8"} <= reasons
    notes = {kind for result in results if isinstance(result, Envelope) for kind, _, _ in result.notes}
    assert notes == {"unknown_fields", "order_lines_dropped"}
    scans = [_SCAN.scan(payload) for payload in payloads]
    plain_unknown = [paths for model, _, _, paths, _ in scans if model >= 0 and paths]
    assert any(path.startswith("properties.products[].") for paths in plain_unknown for path, _ in paths)
    with_lines = [payload for payload in payloads if b'"products":[' in payload.replace(b" ", b"")]
    taken = [lines is not None for model, *_, lines in map(_SCAN.scan, with_lines) if model >= 0]
    assert any(taken) and not all(taken), "plain orders with lines the scan took over, and ones it left"
    lines = [
        getattr(getattr(r.event, "properties", None), "products", None) for r in results if isinstance(r, Envelope)
    ]
    assert {type(products) for products in lines if products} == {list, OrderLines}


def test_a_batch_parses_as_each_of_its_events_parses_alone(payloads):
    """The envelopes made natively a batch at a time are the ones :func:`parse` makes (the same
    event, ids, times, notes and order lines); markers stay markers."""
    raws: list[Any] = [RawEvent(n, {"source": "corpus", "line": n}, p, arrived=n / 8) for n, p in enumerate(payloads)]
    raws.insert(5, EndOfInput(5))
    raws.insert(9, ChunkEnd(9, 20))
    results = parse_batch(raws)
    assert results[5] is None and results[9] is None
    differ = [
        raw.payload
        for raw, result in zip(raws, results, strict=True)
        if type(raw) is RawEvent and outcome(result) != outcome(parse(raw))  # type: ignore[arg-type]
    ]
    assert not differ, differ[:3]


def test_the_native_way_makes_the_plain_events_and_leaves_the_rest(payloads):
    """So that the comparison above means something: most plain events, orders with their lines and
    events with unknown fields among them, are made natively; no event that is refused is, nor a
    record rejected at its source or too large."""
    raws = [RawEvent(n, {}, payload) for n, payload in enumerate(payloads)]
    made, rest = _PLAIN.make(raws, 32 * 1024)
    natively = [envelope for envelope in made if envelope is not None]
    assert len(natively) > 0.8 * sum(_SCAN.model_of(payload) >= 0 for payload in payloads)
    assert any(type(env.event.properties.products) is OrderLines for env in natively if env.name == "Order Completed")
    assert any(envelope.notes for envelope in natively)
    assert all(at in rest for at, raw in enumerate(raws) if isinstance(parse(raw), Rejected))
    rejected = RawEvent(0, {}, payloads[0], rejected=("adapter", "schema_invalid", "bad row"))
    assert _PLAIN.make([rejected, raws[0]], len(payloads[0]) - 1) == ([None, None], [0, 1])


def test_a_plain_event_is_not_validated_the_general_way(monkeypatch, payloads):
    """The cheap way is the one taken: no dicts, no general validation for a plain event."""

    def general(*args: Any) -> None:
        raise AssertionError("validated the general way")

    monkeypatch.setattr(parse_module, "validate_event", general)
    monkeypatch.setattr(parse_module.orjson, "loads", general)
    assert isinstance(parse(RawEvent(0, {}, payloads[0])), Envelope)


def test_order_lines_with_keys_the_contract_does_not_name_are_decoded_the_cheap_way(monkeypatch):
    """A till's lines carry ``currency``, ``brand``, ``url``...: the order stays plain, and the keys
    the contract does not name are counted as the general way counts them (each line that has one)."""
    line = {"product_id": "p-1", "price": 9.5, "quantity": 2, "currency": "EUR", "brand": "Acme", "url": "u"}
    order = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-1",
        "userId": "u-1",
        "timestamp": "2026-01-05T10:00:00Z",
        "properties": {"order_id": "o-1", "products": [line, {**line, "product_id": "p-2", "colour": "red"}]},
        "context": {"channel": "pos", "till": "t-4", "store": {"id": "s-1", "aisle": 3}},
        "store_id": "s-1",
    }
    raw = RawEvent(0, {"source": "till", "line": 1}, orjson.dumps(order))
    general = _parse_generally(raw)
    monkeypatch.setattr(parse_module, "validate_event", lambda *args: pytest.fail("validated the general way"))
    plain = parse(raw)
    assert isinstance(plain, Envelope)
    assert plain.notes == (
        ("unknown_fields", "store_id", 1),
        ("unknown_fields", "context.till", 1),
        ("unknown_fields", "context.store.aisle", 1),
        ("unknown_fields", "properties.products[].currency", 2),
        ("unknown_fields", "properties.products[].colour", 1),
    )
    assert outcome(plain) == outcome(general)


def test_the_lines_of_a_plain_order_read_as_the_list_of_its_lines(monkeypatch):
    """The scan's lines are the general way's list in all a reader sees: length, items, slices,
    equality, repr, pickling; and rules read ``event.properties`` with a list of lines."""
    lines = [{"product_id": "p-1", "category": "tops", "price": 9.5}, {"product_id": "p-2", "quantity": -1}]
    order = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "m-1",
        "userId": "u-1",
        "timestamp": "2026-01-05T10:00:00Z",
        "properties": {"order_id": "o-1", "products": lines, "note": "gift"},
    }
    raw = RawEvent(0, {}, orjson.dumps(order))
    general = _parse_generally(raw)
    monkeypatch.setattr(parse_module, "validate_event", lambda *args: pytest.fail("validated the general way"))
    plain = parse(raw)
    assert isinstance(plain, Envelope) and isinstance(general, Envelope)
    scanned, listed = plain.event.properties.products, general.event.properties.products
    assert type(scanned) is OrderLines and type(listed) is list
    assert len(scanned) == 2 and scanned[0] == listed[0] and scanned[-1] == listed[1]
    assert scanned[::-1] == listed[::-1] and list(scanned) == listed
    assert scanned == listed and listed == scanned and scanned != listed[:1] and scanned != "p-1"
    assert repr(scanned) == repr(listed) and plain.event == general.event
    assert pickle.loads(pickle.dumps(scanned)) == listed
    with pytest.raises(IndexError):
        scanned[2]
    assert plain.properties_as_sent() == general.properties_as_sent()
    assert type(plain.properties_as_sent()["products"]) is list


@pytest.mark.parametrize("seed", range(3))
def test_an_order_without_total_is_worth_what_its_lines_say_either_way(seed):
    """Without ``total`` or ``revenue`` an order is worth the sum of its lines: the same float, to
    the bit, whether the scan read the lines or the general way did (the integer 0 for no lines)."""
    rng = Random(seed)
    prices = [None, 0, -0.0, 0.0, 0.1, 0.2, 9.99, 1e9, 123456.789, 1 / 3, 5]
    for n in range(60):
        lines = [
            {"product_id": f"p{i}", "quantity": rng.choice([1, 2, 0, -1, -3, 7, 100_000])}
            | ({} if (price := rng.choice(prices)) is None and rng.random() < 0.5 else {"price": price})
            for i in range(rng.choice([0, 1, 2, 5, 30]))
        ]
        order = {
            "type": "track",
            "event": "Order Completed",
            "messageId": f"m-{n}",
            "userId": "u-1",
            "timestamp": "2026-01-05T10:00:00Z",
            "properties": {"order_id": "o-1", "products": lines},
        }
        raw = RawEvent(n, {}, orjson.dumps(order))
        plain, general = parse(raw), _parse_generally(raw)
        assert isinstance(plain, Envelope) and isinstance(general, Envelope)
        assert type(plain.event.properties.products) is OrderLines
        worth, expected = plain.event.properties.amount(), general.event.properties.amount()
        assert (type(worth), repr(worth)) == (type(expected), repr(expected)), lines
