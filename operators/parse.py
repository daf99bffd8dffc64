"""Parse and validate raw event bytes: valid events become envelopes, the rest dead letters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from schemas.envelope import KNOWN_NAMES, Envelope, envelope_of
from schemas.events import (
    CALL_MODELS,
    EVENT_MODELS,
    MAX_PATH_KEY,
    TRACK_MODELS,
    AliasEvent,
    ContractError,
    IdentifyEvent,
    UnknownTrack,
    closed_containers,
    contract_notes,
    decode_line,
    decode_plain,
    is_track,
    plain_decoder,
    unknown_field_notes,
    validate_event,
)
from schemas.items import DEFAULT_MAX_EVENT_BYTES, ChunkEnd, EndOfInput, RawEvent
from schemas.json_text import lost_a_key
from schemas.records import dead_letter
from schemas.timestamps import epoch_ms
from state._native import EnvelopeMaker, EpochMs, EventScan

MAX_UNKNOWN_FIELDS = 50
"""Distinct unknown field paths a shard counts by name; the rest count as ``(other paths)``."""


# merge keys: (event time reached, partition, offset) packed into one int
_TIME_BIAS = 1 << 45  # keeps pre-1970 timestamps positive
_PARTITION_BITS = 16
_OFFSET_BITS = 44


def order_key(reached_ms: int, partition: int, offset: int) -> int:
    """The key that orders events of all source partitions the same way in every run.

    Events sort by the event time their partition had reached when they were read, then by
    partition, then by offset; within one partition that is simply offset order.
    """
    return (((reached_ms + _TIME_BIAS) << _PARTITION_BITS | partition) << _OFFSET_BITS) | offset


def offset_of(key: int) -> int:
    """The offset a merge key was made of (see :func:`order_key`)."""
    return key & ((1 << _OFFSET_BITS) - 1)


class InputMarks:
    """The event time each source partition has reached, and the merge keys it implies.

    Future-dated events (``timestamp`` more than ``max_skew_ms`` after ``receivedAt``) do not
    move the mark: they are dead-lettered later.
    """

    def __init__(self, max_skew_ms: int) -> None:
        self.max_skew_ms = max_skew_ms
        self.reached: dict[int, int] = {}

    def stamp(self, env: Envelope, partition: int) -> None:
        """Set the envelope's mark (event time reached, itself included) and merge key."""
        ts_ms, received_ms = env.ts_ms, env.received_ms
        reached = self.reached.get(partition)
        future = received_ms is not None and ts_ms - received_ms > self.max_skew_ms
        if not future and (reached is None or ts_ms > reached):
            reached = self.reached[partition] = ts_ms
        mark = env.mark_ms = ts_ms if reached is None else reached
        env.seq = (((mark + _TIME_BIAS) << _PARTITION_BITS | partition) << _OFFSET_BITS) | env.seq  # order_key

    def key(self, partition: int, offset: int) -> int:
        """The merge key of a record at ``offset`` that did not parse."""
        return order_key(self.reached.get(partition, 0), partition, offset)


@dataclass(slots=True)
class Rejected:
    """A raw event that failed parsing or validation, as a dead-letter record body.

    ``key`` (its input position) is the record's key on the dead-letter output.
    """

    key: str
    body: bytes
    reason: str


_SCAN = EventScan(
    [(kind, EVENT_MODELS.index(model)) for kind, model in CALL_MODELS.items()],
    [(name, EVENT_MODELS.index(model)) for name, model in TRACK_MODELS.items()],
    EVENT_MODELS.index(UnknownTrack),
    [[(path, sorted(keys)) for path, keys in closed_containers(model)] for model in EVENT_MODELS],
    MAX_PATH_KEY,
    decode_line,
)
"""Which of :data:`schemas.events.EVENT_MODELS` an event is for, when it is plain: one JSON object with
no repeated key (``state/native/src/event_scan.rs``); with its ``timestamp`` and ``receivedAt`` read on
the way, the unknown fields :func:`schemas.events.contract_notes` would count, in its order, and the
lines of an order or checkout (``state._native.OrderLines``) when each is one the contract takes as it is."""
_EPOCH_MS = EpochMs(epoch_ms)
""":func:`schemas.timestamps.epoch_ms`, the common forms read natively: for the date-times the scan leaves."""
_PLAIN = EnvelopeMaker(
    _SCAN,
    RawEvent,
    Envelope,
    [plain_decoder(model) for model in EVENT_MODELS],
    [is_track(model) for model in EVENT_MODELS],
    EVENT_MODELS.index(IdentifyEvent),
    EVENT_MODELS.index(AliasEvent),
    frozenset(KNOWN_NAMES),
    unknown_field_notes,
    msgspec.structs.force_setattr,
)
"""The plain events of a batch made into envelopes in one native call (``state/native/src/envelopes.rs``):
what :func:`parse` gives them, made the same way without a Python step per event."""


def parse_batch(
    batch: list[RawEvent | EndOfInput | ChunkEnd], max_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> list[Envelope | Rejected | None]:
    """:func:`parse` of each raw event of ``batch`` (None for the markers), the plain ones made natively."""
    made, rest = _PLAIN.make(batch, max_bytes)
    for at in rest:
        made[at] = parse(batch[at], max_bytes)  # type: ignore[arg-type]
    return made


def parse(raw: RawEvent, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Envelope | Rejected:
    """Decode, validate (msgspec Structs) and wrap one event.

    A plain event (see :data:`_SCAN`) is decoded straight into its model
    (:func:`schemas.events.decode_plain`); any other, or one that does not decode so, takes the
    general way (orjson, :func:`schemas.events.validate_event`), which gives the same envelope or
    says what is wrong. Whatever the bytes, this returns: an input that makes parsing itself raise
    is a ``processing_error`` dead letter, never an exception that would stop the flow.
    """
    try:
        return _parse(raw, max_bytes)
    except Exception as err:
        return _reject(raw, "processing_error", [f"{type(err).__name__}: {str(err)[:500]}"])


def _parse(raw: RawEvent, max_bytes: int) -> Envelope | Rejected:
    payload = raw.payload
    if raw.rejected is not None:
        processor, reason, message = raw.rejected
        return _reject(raw, reason, [message], processor)
    if len(payload) > max_bytes:
        return _reject(raw, "too_large", [f"event is {len(payload)} bytes, the limit is {max_bytes}"])
    model, ts_ms, received_ms, unknown, lines = _SCAN.scan(payload)
    if model >= 0:
        decoded = decode_plain(payload, EVENT_MODELS[model], _EPOCH_MS, ts_ms, received_ms, lines)
        if decoded is not None:
            event, ts_ms, received_ms = decoded
            notes = () if unknown is None else unknown_field_notes(unknown)
            return envelope_of(event, payload, raw.seq, raw.position, ts_ms, received_ms, raw.arrived, notes)
    return _parse_generally(raw)


def _parse_generally(raw: RawEvent) -> Envelope | Rejected:
    """Any event, the general way: JSON to dicts, checked, validated, its notes taken."""
    payload = raw.payload
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as bad:
            return _reject(raw, "not_utf8", [f"invalid UTF-8 at byte {bad.start}"])
        return _reject(raw, "invalid_json", [str(err)])
    if not isinstance(data, dict):
        return _reject(raw, "schema_invalid", [f"an event is a JSON object, not {type(data).__name__}"])
    if lost_a_key(payload, data):
        duplicate = _duplicate_key(payload)
        if duplicate is not None:
            return _reject(raw, "duplicate_key", [f"{duplicate}: duplicate key"])
    try:
        event, ts_ms, received_ms = validate_event(data)
    except ContractError as err:
        return _reject(raw, "schema_invalid", err.messages)
    notes = contract_notes(event, data)
    return envelope_of(event, payload, raw.seq, raw.position, ts_ms, received_ms, raw.arrived, notes)


class _Pairs(dict[str, Any]):
    """A decoded JSON object that remembers its first repeated key."""

    duplicate: str | None = None


def _pairs(items: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs()
    for key, value in items:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def _duplicate_key(payload: bytes) -> str | None:
    """The path of the first repeated key of an object, or None (slow: only after a key was lost,
    :func:`schemas.json_text.lost_a_key`)."""
    try:
        root = json.loads(payload, object_pairs_hook=_pairs)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _Pairs):
            if node.duplicate is not None:
                return path + node.duplicate
            stack.extend((f"{path}{key}.", child) for key, child in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((f"{path}{n}.", child) for n, child in reversed(list(enumerate(node))))
    return None


OTHER_PATHS = "(other paths)"


def count_notes(stats: dict[str, Any], env: Envelope) -> None:
    """Count an accepted event's notes into a shard's counters: ``order_lines_dropped`` by reason,
    and ``unknown_fields`` by path, each with the event that showed it first.

    The first sighting is kept as ``[merge key, messageId, position]``, the key as fixed-width
    hex (it is wider than JSON integers), so that the earliest of all shards can be told
    (``connectors.files.add_counts`` keeps the smallest).
    """
    for kind, detail, times in env.notes:
        counts = stats.setdefault(kind, {})
        if kind == "order_lines_dropped":
            counts[detail] = counts.get(detail, 0) + times
            continue
        if detail not in counts and len(counts) >= MAX_UNKNOWN_FIELDS:
            detail = OTHER_PATHS
        entry = counts.get(detail)
        if entry is None:
            entry = counts[detail] = {"count": 0, "first": [f"{env.seq:032x}", env.message_id, env.position]}
        entry["count"] += times


def readable_firsts(summary: dict[str, Any]) -> None:
    """In a merged summary, each unknown field's first sighting as its messageId and position."""
    for entry in summary.get("unknown_fields", {}).values():
        _, entry["first_message_id"], entry["first_position"] = entry.pop("first")


def _reject(raw: RawEvent, reason: str, messages: list[str], processor: str = "nudgeflow.parse") -> Rejected:
    body = dead_letter(
        processor=processor,
        reason=reason,
        messages=messages,
        position=raw.position,
        payload=raw.payload,
        whole=raw.whole,
    )
    return Rejected(str(raw.seq), body, reason)
