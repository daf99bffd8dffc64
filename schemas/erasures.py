"""The erasure ledger's record: one erasure the engine applied (a customer, when, which request, which law).

The ledger is kept as a compacted Kafka topic (keyed by customer) and as a JSONL file for replays;
both hold these records, one per line or message. Read back, a ledger is a map customer id ->
erasure time (the latest, when a customer was erased more than once): events of that customer up to
that time are dropped, so a replay of data recorded before an erasure never brings the customer back.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from schemas.errors import ConfigurationError
from schemas.events import ContractError, validate_event
from schemas.records import decision_id, iso_ms
from schemas.timestamps import epoch_ms

Ledger = dict[str, int]
"""Customer id -> the event time (epoch ms) of its latest erasure."""

FIELDS = ("customer_id", "erased_at", "request_id", "regulation")


class LedgerError(ConfigurationError):
    """An erasure ledger that cannot be read: the run stops rather than forget an erasure."""


def erasure_event(customer_id: str, request_id: str, regulation: str, at_ms: int) -> bytes:
    """An ``Erasure Requested`` event (JSON) for ``customer_id`` at ``at_ms``, checked against the
    contract; its ``messageId`` follows from the request, so a request sent twice is applied once."""
    event = {
        "type": "track",
        "event": "Erasure Requested",
        "userId": customer_id,
        "messageId": f"erasure-{decision_id(customer_id, request_id)}",
        "timestamp": iso_ms(at_ms),
        "context": {"channel": "server"},
        "properties": {"request_id": request_id, "regulation": regulation},
    }
    try:
        validate_event(event)
    except ContractError as err:
        raise ConfigurationError(f"not a valid erasure request: {err}") from None
    return orjson.dumps(event)


def erasure_record(customer_id: str, erased_at_ms: int, request_id: str, regulation: str) -> bytes:
    """One ledger record, as JSON (keys sorted, so replays give the same bytes)."""
    record = {
        "customer_id": customer_id,
        "erased_at": iso_ms(erased_at_ms),
        "regulation": regulation,
        "request_id": request_id,
    }
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def read_record(value: bytes) -> tuple[str, int]:
    """``(customer id, erasure time)`` of one ledger record; ValueError naming what is wrong."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    customer_id, erased_at = record.get("customer_id"), record.get("erased_at")
    if not isinstance(customer_id, str) or not customer_id:
        raise ValueError("customer_id must be a non-empty string")
    if not isinstance(erased_at, str):
        raise ValueError("erased_at must be an ISO 8601 time")
    return customer_id, epoch_ms(erased_at)


def add_erasure(ledger: Ledger, customer_id: str, erased_at_ms: int) -> None:
    """Note an erasure: a customer erased twice keeps the later time."""
    if erased_at_ms > ledger.get(customer_id, erased_at_ms - 1):
        ledger[customer_id] = erased_at_ms


def read_ledger(records: Iterable[bytes], where: str) -> Ledger:
    """The ledger of ``records`` (blank ones skipped); a bad record stops with its place in ``where``."""
    ledger: Ledger = {}
    for number, value in enumerate(records, start=1):
        if not value.strip():
            continue
        try:
            customer_id, erased_at = read_record(value)
        except ValueError as err:
            raise LedgerError(f"erasure ledger {where}, record {number}: {err}") from None
        add_erasure(ledger, customer_id, erased_at)
    return ledger
