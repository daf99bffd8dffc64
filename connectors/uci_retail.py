"""Adapter from the UCI "Online Retail" invoice lines to Segment Spec events.

Consecutive CSV rows with the same ``InvoiceNo`` become one ``Order Completed`` (or, for
``C`` invoices, ``Order Refunded``) track event; a customer's first order is preceded by an
``identify``. Rows that cannot be part of a valid event are yielded as :class:`Rejected`, so
every data row ends up in exactly one event's ``products`` or in one ``Rejected``.

Two limits of the event contract shape the output: an order carries at most
:data:`MAX_PRODUCTS` lines (to stay under the event size limit) and a ``total`` of at most
:data:`MAX_TOTAL`, so a bigger invoice is
split into parts (``properties.part``/``parts``, messageIds ``uci-<invoice>-p2``...). An invoice
number seen again after other invoices gets messageIds ``uci-<invoice>-r2``... so ids stay unique.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from schemas.errors import InputError
from schemas.items import EndOfInput, RawEvent

DEFAULT_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "online-retail-uci.csv.gz"

COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
PREFIX = "uci-"
CURRENCY = "GBP"
MAX_PRODUCTS = 150
"""An event carries at most this many lines, so that it stays under the 32 KiB event size limit."""
MAX_QUANTITY = 100_000
MAX_TOTAL = 1e9
"""``Money`` fields are at most this much."""
MAX_ID_LENGTH = 100
"""Longer invoice numbers, stock codes or customer ids would overflow the 200-character ids."""

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2})?")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Rejected:
    """A CSV row left out of every event."""

    line: int
    """1-based line number in the CSV (header = line 1) where the row starts."""
    reason: str
    """``bad_row``, ``missing_invoice_no``, ``id_too_long``, ``adjustment``, ``missing_stock_code``,
    ``bad_quantity``, ``negative_quantity``, ``positive_quantity``, ``bad_price``, ``negative_price``,
    ``zero_price``, ``amount_too_large`` or ``bad_date``."""
    raw: bytes
    """The original CSV row as bytes, without its line ending."""


@dataclass(frozen=True)
class _Line:
    """A good invoice line; ``quantity`` is positive, also on cancellations."""

    stock_code: str
    name: str | None
    quantity: int
    price: float
    timestamp: str


@dataclass
class _Invoice:
    """Good lines of one run of consecutive rows with the same invoice number."""

    number: str
    customer_id: str | None
    country: str
    lines: list[_Line] = field(default_factory=list)


class _LineTap:
    """Feeds decoded lines to ``csv.reader`` and keeps the raw bytes of the current record."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self._lines = iter(stream)
        self.count = 0
        self.taken: list[bytes] = []

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        self.count += 1
        self.taken.append(raw)
        return raw.decode("utf-8", errors="replace")

    def pop_raw(self) -> bytes:
        """The bytes taken since the last call, without the final line ending."""
        raw = b"".join(self.taken)
        self.taken.clear()
        return raw.rstrip(b"\r\n")


def _records(stream: BinaryIO, limit_rows: int | None) -> Iterator[tuple[int, bytes, dict[str, str] | None]]:
    """Yield ``(line, raw, fields)`` per data record; ``fields`` is None for a malformed record."""
    tap = _LineTap(stream)
    reader = csv.reader(tap)
    header = next(reader, None)
    if header is None:
        return
    header = [name.lstrip("\ufeff").strip() for name in header]
    missing = set(COLUMNS) - set(header)
    if missing:
        raise InputError(f"not a UCI Online Retail CSV, missing columns: {sorted(missing)}")
    tap.pop_raw()
    rows = 0
    while limit_rows is None or rows < limit_rows:
        start = tap.count + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error:
            values = None
        rows += 1
        fields = dict(zip(header, values, strict=True)) if values and len(values) == len(header) else None
        yield start, tap.pop_raw(), fields


@lru_cache(maxsize=4096)
def _parse_date(text: str) -> str | None:
    """``2010-12-01 08:26:00`` -> ``2010-12-01T08:26:00Z``, or None when not such a date."""
    if not _DATE.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text).isoformat() + "Z"
    except ValueError:
        return None


def _quantity_problem(text: str, refund: bool) -> tuple[int, str | None]:
    """The signed quantity and what is wrong with it, if anything."""
    try:
        quantity = int(text)
    except ValueError:
        return 0, "bad_quantity"
    if quantity == 0 or abs(quantity) > MAX_QUANTITY:
        return quantity, "bad_quantity"
    if refund and quantity > 0:
        return quantity, "positive_quantity"
    if not refund and quantity < 0:
        return quantity, "negative_quantity"
    return quantity, None


def _price_problem(text: str, quantity: int, refund: bool) -> tuple[float, str | None]:
    """The unit price and what is wrong with it, if anything; refunded lines may be free."""
    try:
        price = float(text)
    except ValueError:
        return 0.0, "bad_price"
    if not math.isfinite(price):
        return price, "bad_price"
    if price < 0:
        return price, "negative_price"
    if price == 0 and not refund:
        return price, "zero_price"
    if price * abs(quantity) > MAX_TOTAL:
        return price, "amount_too_large"
    return price, None


def _parse_line(fields: dict[str, str]) -> _Line | str:
    """A good line, or the reason the row is rejected."""
    number, stock_code = fields["InvoiceNo"].strip(), fields["StockCode"].strip()
    if not number:
        return "missing_invoice_no"
    if max(len(number), len(stock_code), len(fields["CustomerID"].strip())) > MAX_ID_LENGTH:
        return "id_too_long"
    if number.startswith("A"):
        return "adjustment"
    if not stock_code:
        return "missing_stock_code"
    refund = number.startswith("C")
    quantity, problem = _quantity_problem(fields["Quantity"].strip(), refund)
    if problem:
        return problem
    price, problem = _price_problem(fields["UnitPrice"].strip(), quantity, refund)
    if problem:
        return problem
    timestamp = _parse_date(fields["InvoiceDate"].strip())
    if timestamp is None:
        return "bad_date"
    return _Line(stock_code, fields["Description"].strip() or None, abs(quantity), price, timestamp)


def _customer_id(text: str) -> str | None:
    """``17850.0`` -> ``17850``; None for a guest."""
    return text.strip().removesuffix(".0") or None


def _slug(text: str) -> str:
    return _NOT_SLUG.sub("-", text.lower()).strip("-") or "unknown"


def _context(country: str) -> dict[str, Any]:
    """A fresh context (never shared between events): a point-of-sale line in a per-country store."""
    return {"channel": "pos", "store": {"id": PREFIX + _slug(country), "country": country}}


def _parts(lines: list[_Line]) -> list[list[_Line]]:
    """Split lines so each part fits one order event (line count and total)."""
    parts: list[list[_Line]] = [[]]
    total = 0.0
    for line in lines:
        amount = line.price * line.quantity
        if len(parts[-1]) == MAX_PRODUCTS or total + amount > MAX_TOTAL:
            parts.append([])
            total = 0.0
        parts[-1].append(line)
        total += amount
    return parts


class _EventBuilder:
    """Turns invoices into event dicts; remembers customers and invoice numbers already seen."""

    def __init__(self) -> None:
        self._customers: set[str] = set()
        self._runs: Counter[str] = Counter()

    def events(self, invoice: _Invoice) -> Iterator[dict[str, Any]]:
        timestamp = max(line.timestamp for line in invoice.lines)
        customer = invoice.customer_id
        if customer is not None and customer not in self._customers:
            self._customers.add(customer)
            yield self._identify(customer, invoice.country, timestamp)
        self._runs[invoice.number] += 1
        run = self._runs[invoice.number]
        base = PREFIX + invoice.number + (f"-r{run}" if run > 1 else "")
        parts = _parts(invoice.lines)
        for index, lines in enumerate(parts, 1):
            event = _order(invoice, lines, timestamp)
            event["messageId"] = base + (f"-p{index}" if index > 1 else "")
            if len(parts) > 1:
                event["properties"] |= {"part": index, "parts": len(parts)}
            yield event

    @staticmethod
    def _identify(customer: str, country: str, timestamp: str) -> dict[str, Any]:
        return {
            "type": "identify",
            "messageId": f"{PREFIX}id-{customer}",
            "userId": PREFIX + customer,
            "timestamp": timestamp,
            "receivedAt": timestamp,
            "context": _context(country),
            "traits": {"country": country},
        }


def _order(invoice: _Invoice, lines: list[_Line], timestamp: str) -> dict[str, Any]:
    """An order event without its messageId."""
    products = [
        {"product_id": line.stock_code, "name": line.name, "price": line.price, "quantity": line.quantity}
        for line in lines
    ]
    event: dict[str, Any] = {
        "type": "track",
        "event": "Order Refunded" if invoice.number.startswith("C") else "Order Completed",
        "timestamp": timestamp,
        "receivedAt": timestamp,
        "context": _context(invoice.country),
        "properties": {
            "order_id": invoice.number,
            "products": products,
            "total": round(sum(line.price * line.quantity for line in lines), 2),
            "currency": CURRENCY,
        },
    }
    if invoice.customer_id is None:
        event["anonymousId"] = f"{PREFIX}guest-{invoice.number}"
    else:
        event["userId"] = PREFIX + invoice.customer_id
    return event


def read_invoices(path: Path = DEFAULT_PATH, limit_rows: int | None = None) -> Iterator[dict | Rejected]:
    """Yield, in file order, one Segment event dict per invoice (grouped consecutive lines)
    or a Rejected per bad row.

    ``limit_rows`` caps the number of CSV data rows read. A row is rejected as soon as it is
    read, so before the event of the invoice it belongs to.
    """
    builder = _EventBuilder()
    current: _Invoice | None = None
    with gzip.open(path, "rb") as stream:
        for line_no, raw, fields in _records(stream, limit_rows):
            number = fields["InvoiceNo"].strip() if fields else ""
            if current is not None and number and number != current.number:
                yield from builder.events(current)
                current = None
            parsed = _parse_line(fields) if fields else "bad_row"
            if isinstance(parsed, str):
                yield Rejected(line_no, parsed, raw)
                continue
            if current is None:
                current = _Invoice(number, _customer_id(fields["CustomerID"]), fields["Country"].strip())
            current.lines.append(parsed)
    if current is not None:
        yield from builder.events(current)


def write_jsonl(items: Iterable[dict | Rejected], out: BinaryIO) -> tuple[int, int]:
    """Write the events as JSON lines to ``out``; return ``(events written, rejected rows skipped)``."""
    events = rejected = 0
    for item in items:
        if isinstance(item, Rejected):
            rejected += 1
            continue
        out.write(orjson.dumps(item) + b"\n")
        events += 1
    return events, rejected


class _UciPartition(StatefulSourcePartition[RawEvent | EndOfInput, int]):
    def __init__(self, path: Path, limit_rows: int | None, batch_size: int, resume: int | None) -> None:
        self._items = enumerate(read_invoices(path, limit_rows), start=1)
        self._name = path.name
        self._batch_size = batch_size
        self._done = resume or 0
        self._ended = False
        for _ in range(self._done):
            next(self._items, None)

    def next_batch(self) -> list[RawEvent | EndOfInput]:
        batch: list[RawEvent | EndOfInput] = [
            self._raw(n, item) for n, item in itertools.islice(self._items, self._batch_size)
        ]
        self._done += len(batch)
        if len(batch) < self._batch_size:
            if self._ended:
                raise StopIteration
            self._ended = True
            batch.append(EndOfInput(self._done))
        return batch

    def _raw(self, n: int, item: dict | Rejected) -> RawEvent:
        if isinstance(item, Rejected):
            position = {"source": self._name, "line": item.line}
            message = f"CSV row rejected by the UCI Online Retail adapter: {item.reason}"
            return RawEvent(n, position, item.raw, ("nudgeflow.uci_retail", item.reason, message))
        return RawEvent(n, {"source": self._name, "item": n}, orjson.dumps(item))

    def snapshot(self) -> int:
        return self._done


class UciRetailSource(FixedPartitionedSource[RawEvent | EndOfInput, int]):
    """The UCI Online Retail invoices as a flow source; rejected rows arrive pre-rejected (dead letters)."""

    def __init__(self, path: Path = DEFAULT_PATH, limit_rows: int | None = None, batch_size: int = 1000) -> None:
        self.path = Path(path)
        self.limit_rows = limit_rows
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [self.path.name]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _UciPartition:
        return _UciPartition(self.path, self.limit_rows, self.batch_size, resume_state)
