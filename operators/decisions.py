"""The decision writer: trigger and audience-change CloudEvents, dead letters, and their counts.

Every record a stage emits is written here, as an :class:`Output` stamped with the input
position being applied (``seq``, ``arrived``), and counted in the stage's ``stats``; a step
that fails is taken back with :meth:`DecisionWriter.retract`, counts included.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from operators.rules import CompiledAudience
from schemas.envelope import Envelope
from schemas.items import Output
from schemas.records import (
    SUPPRESSION_TYPE,
    AudienceEncoder,
    TriggerEncoder,
    cloud_event,
    dead_letter,
    decision_id,
    iso_ms,
)
from schemas.rules import TriggerRule
from schemas.streams import (
    AUDIENCE_CHANGES,
    DEAD_LETTERS,
    SUPPRESSIONS,
    TRIGGERS_PREFIX,
    audience_stream,
    trigger_stream,
)
from state.customer import Timer

PROCESSING_ERROR = "processing_error"  # the dead-letter reason of an event or timer whose processing raised
MAX_ERROR_CHARS = 500  # of an exception's message, in a dead letter


class RuleFailed(Exception):
    """Raised (from the original exception) when evaluating or emitting a rule raised: names the rule."""

    def __init__(self, rule_id: str) -> None:
        super().__init__(f"rule {rule_id}")
        self.rule_id = rule_id


def bump(counter: dict[str, int], key: str, by: int = 1) -> None:
    counter[key] = counter.get(key, 0) + by


def unbump(counter: dict[str, int], key: str) -> None:
    """Undo one :func:`bump` (a count back at zero disappears, as if never bumped)."""
    if counter[key] == 1:
        del counter[key]
    else:
        counter[key] -= 1


class DecisionWriter:
    """Writes one stage's records into ``out`` lists and counts them in ``stats``."""

    def __init__(self, version: str, stats: dict[str, Any]) -> None:
        self.version = version
        self.stats = stats
        self.seq = 0  # merge key of the input being applied
        self.arrived = 0.0  # its wall-clock arrival (latency metrics only)
        self._triggers: dict[str, _TriggerRecords] = {}  # by rule id
        self._audiences: dict[tuple[str, str], _AudienceRecords] = {}  # by audience id and change
        self.offer_ids: frozenset[str] = frozenset()  # the catalogue's offers: counted as given per offer
        self.uncounters: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {}
        """stream -> what takes back the counts of one of its records (of another stage: experiments...)"""

    def trigger(
        self, rule: TriggerRule, customer_id: str, event_id: str, at_ms: int, timer: bool, out: list[Any], **data: Any
    ) -> None:
        """A trigger's CloudEvent on its channel's stream (``data``: all but the rule's own fields, see
        :meth:`TriggerEncoder.encode`); ``timer``: caused by a timer or a clock move rather than by an event."""
        encoder = self._triggers.get(rule.id)
        if encoder is None or encoder.rule is not rule:
            encoder = self._triggers[rule.id] = _TriggerRecords(rule, self.version)
        body = encoder.encode(event_id=event_id, time_ms=at_ms, subject=customer_id, **data)
        out.append(Output(encoder.stream, customer_id, at_ms, self.seq, body, self.arrived, timer))
        bump(self.stats.setdefault("triggers", {}), rule.id)
        if data.get("offer_id") in self.offer_ids and not rule.shadow:
            bump(self.stats.setdefault("offers", {}).setdefault(data["offer_id"], {}), "given")

    def audience_change(
        self,
        customer_id: str,
        audience: CompiledAudience,
        entered: bool,
        reason: str,
        at_ms: int,
        caused_by: list[str],
        out: list[Any],
    ) -> None:
        change = "entered" if entered else "exited"
        encoder = self._audiences.get((audience.id, change))
        if encoder is None or encoder.audience is not audience:
            encoder = self._audiences[audience.id, change] = _AudienceRecords(audience, change, self.version)
        event_id = decision_id(customer_id, audience.id, change, str(at_ms), *caused_by[-1:])
        body = encoder.encode(event_id=event_id, time_ms=at_ms, subject=customer_id, caused_by=caused_by, reason=reason)
        out.append(Output(encoder.stream, customer_id, at_ms, self.seq, body, self.arrived))
        bump(self.stats.setdefault("audience_changes", {}), encoder.counter)

    def suppression(
        self, rule: TriggerRule, customer_id: str, candidate: Any, reason: str, detail: str, at_ms: int, out: list[Any]
    ) -> None:
        """A decision the contact policy did not deliver (``candidate``: an ``operators.policy.Candidate``),
        on the ``suppressions`` stream with the reason, and counted by reason and rule."""
        trigger_id = decision_id(customer_id, rule.id, candidate.cause)
        data = {
            "reason": reason,
            "detail": detail,
            "rule_id": rule.id,
            "channel": rule.channel,
            "ruleset_version": self.version,
            "decision_id": trigger_id,
            "decided_at": iso_ms(candidate.decided_ms),
            "cause": candidate.cause,
            "caused_by": list(candidate.caused_by),
            "content": rule.content,
            "offer_id": rule.offer_id,
            "score": None if candidate.score is None else round(candidate.score, 4),
            "would_have_sent": True,
        }
        body = cloud_event(
            type_=SUPPRESSION_TYPE,
            event_id=decision_id(trigger_id, "suppressed"),
            time_ms=at_ms,
            subject=customer_id,
            data=data,
        )
        out.append(Output(SUPPRESSIONS, customer_id, at_ms, self.seq, body, self.arrived, candidate.env is None))
        bump(self.stats.setdefault("suppressions", {}).setdefault(reason, {}), rule.id)

    def reject(self, env: Envelope, reason: str, messages: list[str], failed_at_ms: int | None, out: list[Any]) -> None:
        """Dead-letter an event the engine does not apply, and count it under ``reason``."""
        body = dead_letter(
            processor="nudgeflow.state",
            reason=reason,
            messages=messages,
            position=env.position,
            payload=env.raw,
            failed_at_ms=failed_at_ms,
        )
        out.append(Output(DEAD_LETTERS, env.customer_id, 0, env.seq, body))
        bump(self.stats, reason)

    def failed_event(self, env: Envelope, err: Exception, out: list[Any]) -> None:
        """Dead-letter an event whose processing raised ``err``, as a ``processing_error``."""
        self.reject(env, PROCESSING_ERROR, error_messages(err), env.ts_ms, out)

    def failed_timer(self, customer_id: str, timer: Timer, err: Exception, out: list[Any]) -> None:
        """Dead-letter a customer's timer whose firing raised ``err``, as a ``processing_error``."""
        due_ms, rule_id, cause, *caused_by = timer
        due = iso_ms(due_ms)
        record = {"customer_id": customer_id, "timer": rule_id, "due": due, "cause": cause, "caused_by": caused_by}
        body = dead_letter(
            processor="nudgeflow.state",
            reason=PROCESSING_ERROR,
            messages=[f"timer {rule_id} of customer {customer_id}, due {due}", *error_messages(err)],
            position={"source": "timer"},
            payload=orjson.dumps(record),
            failed_at_ms=due_ms,
        )
        out.append(Output(DEAD_LETTERS, customer_id, 0, self.seq, body))
        bump(self.stats, PROCESSING_ERROR)

    def retract(self, out: list[Any], start: int) -> None:
        """Take back what a failed step emitted from ``out[start:]``, and its counts."""
        stats = self.stats
        for item in out[start:]:
            if not isinstance(item, Output):
                continue
            record = orjson.loads(item.body)
            if item.stream == DEAD_LETTERS:
                unbump(stats, record["reason"])
            elif item.stream.startswith(TRIGGERS_PREFIX):
                data = record["data"]
                unbump(stats["triggers"], data["rule_id"])
                if data.get("offer_id") in self.offer_ids and not data["shadow"]:
                    unbump(stats["offers"][data["offer_id"]], "given")
            elif item.stream == SUPPRESSIONS:
                unbump(stats["suppressions"][record["data"]["reason"]], record["data"]["rule_id"])
            elif item.stream.startswith(AUDIENCE_CHANGES):
                unbump(stats["audience_changes"], f"{record['data']['audience']}.{record['data']['change']}")
            elif (uncount := self.uncounters.get(item.stream)) is not None:
                uncount(stats, record)
        del out[start:]


class _TriggerRecords(TriggerEncoder):
    """The encoder of one trigger rule's records, and their stream."""

    def __init__(self, rule: TriggerRule, version: str) -> None:
        super().__init__(
            channel=rule.channel,
            rule_id=rule.id,
            version=version,
            shadow=rule.shadow,
            content=rule.content,
            offer_id=rule.offer_id,
        )
        self.rule = rule
        self.stream = trigger_stream(rule.channel, rule.shadow)


class _AudienceRecords(AudienceEncoder):
    """The encoder of one audience's changes one way, their stream and counter."""

    def __init__(self, audience: CompiledAudience, change: str, version: str) -> None:
        super().__init__(audience=audience.id, change=change, version=version, shadow=audience.rule.shadow)
        self.audience = audience
        self.stream = audience_stream(audience.rule.shadow)
        self.counter = f"{audience.id}.{change}"


def error_messages(err: Exception) -> list[str]:
    """What a dead letter says about an exception: the rule involved, the type and message, where."""
    messages = []
    if isinstance(err, RuleFailed) and isinstance(err.__cause__, Exception):
        messages.append(f"rule {err.rule_id}")
        err = err.__cause__
    messages.append(f"{type(err).__name__}: {str(err)[:MAX_ERROR_CHARS]}")
    frames = traceback.extract_tb(err.__traceback__)
    if frames:
        last = frames[-1]
        messages.append(f"in {last.name} ({Path(last.filename).parent.name}/{Path(last.filename).name}:{last.lineno})")
    return messages
