"""Output contracts: CloudEvents 1.0 decision records and dead-letter failure records.

Every record is built from event time and event ids only, so a replay of the same input
gives byte-identical records, and a re-emitted decision keeps its id.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

SPEC_VERSION = "1.0"
SOURCE = "urn:nudgeflow:engine"
TRIGGER_TYPE = "io.nudgeflow.trigger.v1"
AUDIENCE_TYPE = "io.nudgeflow.audience.v1"
SUPPRESSION_TYPE = "io.nudgeflow.suppression.v1"
DEAD_LETTER_TYPE = "io.nudgeflow.dead_letter.v1"
ATTRIBUTION_TYPE = "io.nudgeflow.attribution.v1"
DEAD_LETTER_PAYLOAD_CAP = 16 * 1024
"""Dead letters carry at most this many raw bytes (base64), plus a sha256 of the whole."""

Channel = Literal["push", "in_app", "email", "sms"]


class OfferChoice(BaseModel):
    """What an off-policy evaluation needs: the candidates and the chosen offer's exact probability."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["epsilon_greedy"]
    exploration: float
    candidates: list[str] = Field(description="eligible offers, in the order the policy considered them")
    scores: dict[str, float] = Field(description="the model's expected reward of each candidate (ranks them)")
    probability: float = Field(description="chance that the policy chose this offer, exactly")
    explored: bool
    expected_rate: float | None = Field(
        None, description="the chosen offer's score calibrated on past rewards: its chance of a reward"
    )


class TriggerData(BaseModel):
    """``data`` of a trigger: what a channel service acts on."""

    model_config = ConfigDict(extra="forbid")

    channel: Channel
    rule_id: str
    ruleset_version: str
    reason: str
    cause: str = Field(description="What the trigger fires once for (a cart, a session, an order...)")
    caused_by: list[str] = Field(description="messageIds of the events that caused it")
    content: dict[str, Any] = {}
    offer_id: str | None = None
    offer_choice: OfferChoice | None = Field(None, description="How the next-best-offer policy chose offer_id")
    recommendations: list[str] | None = Field(None, description="recommended product ids, best first")
    score: float | None = None
    expires_at: str
    shadow: bool = False


class AudienceData(BaseModel):
    """``data`` of an audience change: a customer entered or exited an audience."""

    model_config = ConfigDict(extra="forbid")

    audience: str
    change: Literal["entered", "exited"]
    reason: str
    rule_id: str
    ruleset_version: str
    caused_by: list[str]
    shadow: bool = False


class SuppressionData(BaseModel):
    """``data`` of a suppression: a decision the contact policy did not deliver, and why."""

    model_config = ConfigDict(extra="forbid")

    reason: Literal[
        "frequency_cap", "cooldown", "quiet_hours", "no_consent", "holdout", "lower_priority", "budget_spent"
    ]
    detail: str = Field(description="the cap, cooldown, quiet hours or winning rule that stopped it")
    rule_id: str
    channel: Channel
    ruleset_version: str
    decision_id: str = Field(description="the id the trigger would have had")
    decided_at: str = Field(description="when the rule decided (the record's time is when it was suppressed)")
    cause: str
    caused_by: list[str]
    content: dict[str, Any] = {}
    offer_id: str | None = None
    score: float | None = None
    would_have_sent: Literal[True] = True


class AttributionData(BaseModel):
    """``data`` of an attribution: (a share of) an order credited to a delivery before it."""

    model_config = ConfigDict(extra="forbid")

    model: Literal["last_touch", "linear"]
    order_id: str
    order_revenue: float
    credit: float = Field(gt=0, le=1)
    revenue: float
    decision_id: str
    rule_id: str
    channel: Channel
    offer_id: str | None
    delivered_at: str
    ruleset_version: str
    caused_by: list[str] = Field(description="messageId of the order event")


class CloudEvent(BaseModel):
    """The CloudEvents 1.0 envelope (structured JSON) of every decision we emit."""

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str = SOURCE
    type: str
    time: str
    subject: str
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]


class SourcePosition(BaseModel):
    """Where a record was read: a file and line, or (later) a topic, partition and offset."""

    source: str
    line: int | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


class DeadLetter(BaseModel):
    """A failure record: the input we could not use, why, and where it came from."""

    processor: str
    failed_at: str | None = Field(description="Event time of the failure where known; null at parse")
    reason: str
    messages: list[str]
    position: SourcePosition
    payload_base64: str
    payload_size: int
    payload_sha256: str
    payload_truncated: bool


@lru_cache(maxsize=4096)
def _day(day: int) -> str:
    """``YYYY-MM-DDT`` of a day count since 1970-01-01 (proleptic Gregorian, any count: an event at
    ``9999-12-31T23:00-05:00`` falls on a day of year 10000, which ``datetime`` cannot hold)."""
    shifted = day + 719_468  # days since 0000-03-01, so that leap days end a year
    era, day_of_era = divmod(shifted, 146_097)
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153  # March is 0
    day_of_month = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    year = year_of_era + era * 400 + (month <= 2)
    return f"{year:04d}-{month:02d}-{day_of_month:02d}T"


@lru_cache(maxsize=4096)
def _minute(minute: int) -> str:
    """``YYYY-MM-DDTHH:MM:`` of a minute count since 1970-01-01."""
    day, rest = divmod(minute, 1440)
    hours, minutes = divmod(rest, 60)
    return f"{_day(day)}{hours:02d}:{minutes:02d}:"


_SECONDS = [f"{n:02d}." for n in range(60)]
_MILLIS = [f"{n:03d}Z" for n in range(1000)]


def iso_ms(epoch_ms: int) -> str:
    """RFC 3339 UTC time with milliseconds, e.g. ``2026-01-05T10:00:00.000Z`` (the minute's text is
    cached: decisions of one stretch of event time share it)."""
    minute, rest = divmod(epoch_ms, 60_000)
    seconds, millis = divmod(rest, 1000)
    return _minute(minute) + _SECONDS[seconds] + _MILLIS[millis]


def decision_id(*parts: str) -> str:
    """A deterministic CloudEvents id from the decision's identity (customer, rule, cause...)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return digest[:32]


def cloud_event(*, type_: str, event_id: str, time_ms: int, subject: str, data: dict[str, Any]) -> bytes:
    """Encode one structured-mode CloudEvent as a JSON line body (sorted keys)."""
    envelope = {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "source": SOURCE,
        "type": type_,
        "time": iso_ms(time_ms),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    }
    return orjson.dumps(envelope, option=orjson.OPT_SORT_KEYS)


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


_DATA_END = b'},"datacontenttype":"application/json","id":"'
_SUBJECT = b'","source":"' + SOURCE.encode() + b'","specversion":"' + SPEC_VERSION.encode() + b'","subject":'


class TriggerEncoder:
    """A trigger rule's CloudEvents, encoded as :func:`cloud_event` encodes them (the same bytes),
    with what is the rule's own (channel, ids, version, fixed content and offer) encoded once."""

    def __init__(self, *, channel: str, rule_id: str, version: str, shadow: bool, content: Any, offer_id: Any) -> None:
        self._content, self._content_json = content, _json(content)
        self._offer_id, self._offer_id_json = offer_id, _json(offer_id)
        self._channel = b',"channel":' + _json(channel) + b',"content":'
        self._rule = b',"rule_id":' + _json(rule_id) + b',"ruleset_version":' + _json(version) + b',"score":'
        self._shadow = b',"shadow":' + _json(shadow) + _DATA_END
        self._end = b'","type":' + _json(TRIGGER_TYPE) + b"}"

    def encode(
        self,
        *,
        event_id: str,
        time_ms: int,
        subject: str,
        cause: str,
        caused_by: list[str],
        content: Any,
        expires_at: str,
        offer_choice: Any,
        offer_id: Any,
        reason: str,
        recommendations: Any,
        score: float | None,
    ) -> bytes:
        """One decision's record (``event_id``, ``expires_at``: plain ASCII, as :func:`decision_id`
        and :func:`iso_ms` give them)."""
        return b"".join(
            (
                b'{"data":{"cause":',
                _json(cause),
                b',"caused_by":',
                _json(caused_by),
                self._channel,
                self._content_json if content is self._content else _json(content),
                b',"expires_at":"',
                expires_at.encode(),
                b'","offer_choice":',
                _json(offer_choice),
                b',"offer_id":',
                self._offer_id_json if offer_id is self._offer_id else _json(offer_id),
                b',"reason":',
                _json(reason),
                b',"recommendations":',
                _json(recommendations),
                self._rule,
                _json(score),
                self._shadow,
                event_id.encode(),
                _SUBJECT,
                _json(subject),
                b',"time":"',
                iso_ms(time_ms).encode(),
                self._end,
            )
        )


class AudienceEncoder:
    """An audience's change records (one encoder per audience and direction), encoded as
    :func:`cloud_event` encodes them, with what is the audience's own encoded once."""

    def __init__(self, *, audience: str, change: str, version: str, shadow: bool) -> None:
        self._head = b'{"data":{"audience":' + _json(audience) + b',"caused_by":'
        self._change = b',"change":' + _json(change) + b',"reason":'
        self._rule = b',"rule_id":' + _json(audience) + b',"ruleset_version":' + _json(version)
        self._rule += b',"shadow":' + _json(shadow) + _DATA_END
        self._end = b'","type":' + _json(AUDIENCE_TYPE) + b"}"

    def encode(self, *, event_id: str, time_ms: int, subject: str, caused_by: list[str], reason: str) -> bytes:
        """One change's record (``event_id``: plain ASCII, as :func:`decision_id` gives it)."""
        return b"".join(
            (
                self._head,
                _json(caused_by),
                self._change,
                _json(reason),
                self._rule,
                event_id.encode(),
                _SUBJECT,
                _json(subject),
                b',"time":"',
                iso_ms(time_ms).encode(),
                self._end,
            )
        )


def dead_letter(
    *,
    processor: str,
    reason: str,
    messages: list[str],
    position: dict[str, Any],
    payload: bytes,
    failed_at_ms: int | None = None,
    whole: tuple[int, str] | None = None,
) -> bytes:
    """Encode a dead-letter record: capped base64 payload with the sha256 of all of it.

    ``whole`` is the size and sha256 of the whole input when ``payload`` holds only its start.
    """
    size, sha256 = whole or (len(payload), hashlib.sha256(payload).hexdigest())
    record = {
        "processor": processor,
        "failed_at": None if failed_at_ms is None else iso_ms(failed_at_ms),
        "reason": reason,
        "messages": messages,
        "position": position,
        "payload_base64": base64.b64encode(payload[:DEAD_LETTER_PAYLOAD_CAP]).decode(),
        "payload_size": size,
        "payload_sha256": sha256,
        "payload_truncated": size > DEAD_LETTER_PAYLOAD_CAP,
    }
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
