"""Tests of the UCI Online Retail adapter: a hand-written CSV, then the real file when present."""

from __future__ import annotations

import gzip
import io
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.uci_retail import DEFAULT_PATH, MAX_PRODUCTS, Rejected, read_invoices, write_jsonl
from schemas.events import validate_event

HEADER = b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
TINY = [  # line numbers: header = 1, so TINY[i] is line i + 2
    b"536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n",  # 2
    b'536365,71053,"LANTERN, METAL",2,2010-12-01 08:26:00,3.39,17850.0,United Kingdom\n',
    b"536365,22139,FREEBIE,1,2010-12-01 08:26:00,0.0,17850.0,United Kingdom\n",  # 4 zero_price
    b"536366,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,,United Kingdom\n",  # 5 guest
    b"536366,,NO CODE,1,2010-12-01 08:28:00,1.0,,United Kingdom\n",  # 6 missing_stock_code
    b"536367,84879,BIRD,0,2010-12-01 08:34:00,1.69,13047.0,France\n",  # 7 bad_quantity
    b"536368,84879,BIRD,lots,2010-12-01 08:35:00,1.69,13047.0,France\n",  # 8 bad_quantity
    b"536369,21777,damaged,-10,2010-12-01 08:40:00,0.0,,United Kingdom\n",  # 9 negative_quantity
    b"536370,22728,CLOCK,24,2010-12-01 08:45:00,-3.75,12583.0,France\n",  # 10 negative_price
    b"536370,22727,CLOCK RED,24,01/12/2010 08:45,3.75,12583.0,France\n",  # 11 bad_date
    b"536370,22726,CLOCK GREEN,24,2010-12-01 08:45:00,3.75,12583.0,France\n",  # 12
    b"C536371,22728,CLOCK,-2,2010-12-01 09:00:00,3.75,17850.0,United Kingdom\n",  # 13 refund
    b"C536371,22727,CLOCK RED,-1,2010-12-01 09:01:00,3.75,17850.0,United Kingdom\n",
    b"C536371,POST,POSTAGE,-1,2010-12-01 09:01:00,0.0,17850.0,United Kingdom\n",  # 15 free refund line
    b"C536372,22726,CLOCK GREEN,3,2010-12-01 09:02:00,3.75,,United Kingdom\n",  # 16 positive_quantity
    b"A563185,B,Adjust bad debt,1,2010-12-01 09:03:00,11062.06,,United Kingdom\n",  # 17 adjustment
    b"536373,85123A,CAF\xe9 MUG,1,2010-12-01 09:05:00,nan,,EIRE\n",  # 18 bad_price (latin-1 byte)
    b"536373,85123A,CAF\xe9 MUG,1,2010-12-01 09:05:00,2.5,,EIRE\n",  # 19
    b"only,three,fields\n",  # 20 bad_row
    b"536365,85123A,WHITE HANGING HEART,1,2010-12-01 09:10:00,2.55,17850.0,United Kingdom\n",  # 21 rerun
    b"536374," + b"X" * 101 + b",LONG CODE,1,2010-12-01 09:11:00,1.0,,United Kingdom\n",  # 22 id_too_long
    b"536374,22423,CAKESTAND,2,2010-12-01 09:11:00,600000000,,United Kingdom\n",  # 23 amount_too_large
]
EXPECTED = [
    ("rejected", 4, "zero_price"),
    "uci-id-17850",
    "uci-536365",
    ("rejected", 6, "missing_stock_code"),
    "uci-536366",
    ("rejected", 7, "bad_quantity"),
    ("rejected", 8, "bad_quantity"),
    ("rejected", 9, "negative_quantity"),
    ("rejected", 10, "negative_price"),
    ("rejected", 11, "bad_date"),
    "uci-id-12583",
    "uci-536370",
    "uci-C536371",
    ("rejected", 16, "positive_quantity"),
    ("rejected", 17, "adjustment"),
    ("rejected", 18, "bad_price"),
    ("rejected", 20, "bad_row"),
    "uci-536373",
    "uci-536365-r2",
    ("rejected", 22, "id_too_long"),
    ("rejected", 23, "amount_too_large"),
]


def _write(path: Path, lines: list[bytes], bom: bool = True) -> Path:
    path.write_bytes(gzip.compress((b"\xef\xbb\xbf" if bom else b"") + HEADER + b"".join(lines)))
    return path


def _label(item: dict[str, Any] | Rejected) -> str | tuple[str, int, str]:
    return ("rejected", item.line, item.reason) if isinstance(item, Rejected) else item["messageId"]


def _split(items: list[dict[str, Any] | Rejected]) -> tuple[list[dict[str, Any]], list[Rejected]]:
    rejected = [item for item in items if isinstance(item, Rejected)]
    return [item for item in items if not isinstance(item, Rejected)], rejected


def _product_lines(events: list[dict[str, Any]]) -> int:
    return sum(len(event["properties"]["products"]) for event in events if event["type"] == "track")


@pytest.fixture
def tiny(tmp_path: Path) -> list[dict[str, Any] | Rejected]:
    return list(read_invoices(_write(tmp_path / "tiny.csv.gz", TINY)))


def test_tiny_yields_events_and_rejects_in_file_order(tiny: list[dict[str, Any] | Rejected]) -> None:
    assert [_label(item) for item in tiny] == EXPECTED
    events, rejected = _split(tiny)
    for event in events:
        validate_event(event)
    assert _product_lines(events) + len(rejected) == len(TINY)


def test_tiny_rejects_keep_the_original_bytes(tiny: list[dict[str, Any] | Rejected]) -> None:
    _, rejected = _split(tiny)
    assert [r.raw for r in rejected] == [TINY[r.line - 2].rstrip(b"\n") for r in rejected]
    assert b"CAF\xe9 MUG" in next(r.raw for r in rejected if r.reason == "bad_price")


def test_tiny_order_completed(tiny: list[dict[str, Any] | Rejected]) -> None:
    events = {item["messageId"]: item for item in tiny if isinstance(item, dict)}
    identify, order = events["uci-id-17850"], events["uci-536365"]
    assert identify["type"] == "identify" and identify["userId"] == "uci-17850"
    assert identify["traits"] == {"country": "United Kingdom"}
    assert order["event"] == "Order Completed" and order["userId"] == "uci-17850"
    assert "anonymousId" not in order
    assert order["timestamp"] == order["receivedAt"] == "2010-12-01T08:26:00Z"
    assert order["context"] == {
        "channel": "pos",
        "store": {"id": "uci-united-kingdom", "country": "United Kingdom"},
    }
    props = order["properties"]
    assert props["order_id"] == "536365" and props["currency"] == "GBP"
    assert props["products"] == [
        {"product_id": "85123A", "name": "WHITE HANGING HEART", "price": 2.55, "quantity": 6},
        {"product_id": "71053", "name": "LANTERN, METAL", "price": 3.39, "quantity": 2},
    ]
    assert props["total"] == 22.08
    assert events["uci-536373"]["properties"]["products"][0]["name"] == "CAF\ufffd MUG"
    assert events["uci-536373"]["context"]["store"]["id"] == "uci-eire"


def test_tiny_guest_and_refund(tiny: list[dict[str, Any] | Rejected]) -> None:
    events = {item["messageId"]: item for item in tiny if isinstance(item, dict)}
    guest = events["uci-536366"]
    assert guest["anonymousId"] == "uci-guest-536366" and "userId" not in guest
    refund = events["uci-C536371"]
    assert refund["event"] == "Order Refunded" and refund["userId"] == "uci-17850"
    assert refund["timestamp"] == "2010-12-01T09:01:00Z"  # the invoice's latest line
    assert refund["properties"]["order_id"] == "C536371"
    assert [p["quantity"] for p in refund["properties"]["products"]] == [2, 1, 1]
    assert refund["properties"]["total"] == 11.25
    assert sum(1 for e in events.values() if e["type"] == "identify") == 2  # once per customer


def test_limit_rows(tmp_path: Path) -> None:
    items = list(read_invoices(_write(tmp_path / "tiny.csv.gz", TINY, bom=False), limit_rows=3))
    assert [_label(item) for item in items] == EXPECTED[:3]
    assert len(items[2]["properties"]["products"]) == 2


def test_big_invoice_is_split_into_parts(tmp_path: Path) -> None:
    line = b"536400,%d,THING,1,2010-12-01 10:00:00,1.5,,United Kingdom\n"
    items = list(read_invoices(_write(tmp_path / "big.csv.gz", [line % i for i in range(2 * MAX_PRODUCTS + 1)])))
    assert [item["messageId"] for item in items] == ["uci-536400", "uci-536400-p2", "uci-536400-p3"]
    assert [len(item["properties"]["products"]) for item in items] == [MAX_PRODUCTS, MAX_PRODUCTS, 1]
    assert [(item["properties"]["part"], item["properties"]["parts"]) for item in items] == [
        (1, 3),
        (2, 3),
        (3, 3),
    ]
    assert {item["properties"]["order_id"] for item in items} == {"536400"}
    for item in items:
        validate_event(item)


def test_not_a_retail_csv(tmp_path: Path) -> None:
    path = tmp_path / "other.csv.gz"
    path.write_bytes(gzip.compress(b"a,b,c\n1,2,3\n"))
    with pytest.raises(ValueError, match="missing columns"):
        list(read_invoices(path))


def test_write_jsonl(tmp_path: Path) -> None:
    out = io.BytesIO()
    written, rejected = write_jsonl(read_invoices(_write(tmp_path / "tiny.csv.gz", TINY)), out)
    assert (written, rejected) == (
        sum(isinstance(x, str) for x in EXPECTED),
        sum(isinstance(x, tuple) for x in EXPECTED),
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == written
    for line in lines:
        validate_event(orjson.loads(line))


# --- the real file (../shared/data), first REAL_ROWS data rows ---------------------------------------------

REAL_ROWS = 20_000
needs_data = pytest.mark.skipif(
    not DEFAULT_PATH.exists(),
    reason=f"real data absent: {DEFAULT_PATH} (only in the team workspace, see shared/data/README.md)",
)


@pytest.fixture(scope="module")
def real() -> list[dict[str, Any] | Rejected]:
    return list(read_invoices(DEFAULT_PATH, limit_rows=REAL_ROWS))


@pytest.fixture(scope="module")
def real_lines() -> list[bytes]:
    with gzip.open(DEFAULT_PATH, "rb") as stream:
        return [stream.readline() for _ in range(REAL_ROWS + 1)]


@pytest.mark.realdata
@needs_data
def test_real_events_validate_in_time_order(real: list[dict[str, Any] | Rejected]) -> None:
    events, _ = _split(real)
    for event in events:
        validate_event(event)
    timestamps = [event["timestamp"] for event in events]
    assert timestamps == sorted(timestamps)
    ids = [event["messageId"] for event in events]
    assert len(ids) == len(set(ids))


@pytest.mark.realdata
@needs_data
def test_real_every_row_is_accounted_for(real: list[dict[str, Any] | Rejected]) -> None:
    events, rejected = _split(real)
    assert _product_lines(events) + len(rejected) == REAL_ROWS
    lines = [r.line for r in rejected]
    assert lines == sorted(lines) and len(lines) == len(set(lines))


@pytest.mark.realdata
@needs_data
def test_real_rejects_have_reasons_and_raw_bytes(
    real: list[dict[str, Any] | Rejected], real_lines: list[bytes]
) -> None:
    _, rejected = _split(real)
    reasons = Counter(r.reason for r in rejected)
    assert reasons["zero_price"] > 0 and reasons["negative_quantity"] > 0
    for r in rejected:
        assert r.reason and r.raw == real_lines[r.line - 1].rstrip(b"\r\n")


@pytest.mark.realdata
@needs_data
def test_real_guests_refunds_and_identifies(real: list[dict[str, Any] | Rejected]) -> None:
    events, _ = _split(real)
    orders = [event for event in events if event["type"] == "track"]
    guests = [order for order in orders if "anonymousId" in order]
    assert guests and all("userId" not in order for order in guests)
    assert all(order["anonymousId"] == "uci-guest-" + order["properties"]["order_id"] for order in guests)
    refunds = [order for order in orders if order["properties"]["order_id"].startswith("C")]
    assert refunds and all(order["event"] == "Order Refunded" for order in refunds)
    assert all(p["quantity"] > 0 for order in refunds for p in order["properties"]["products"])
    assert all(order["event"] == "Order Completed" for order in orders if order not in refunds)
    identified: set[str] = set()
    for event in events:
        if event["type"] == "identify":
            assert event["userId"] not in identified
            identified.add(event["userId"])
        elif "userId" in event:
            assert event["userId"] in identified
