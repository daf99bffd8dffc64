"""The contact policy section of a rule file: frequency caps, quiet hours, consent, arbitration.

The policy stands between the rules and every output: a decision a trigger rule makes is delivered
only if the customer consents to its channel, its rule's cooldown has passed, no frequency cap is
reached, it is not quiet time for the customer, and it wins against the decisions it competes with.
Rules tagged ``transactional`` need only the customer's consent (see :mod:`operators.policy`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from schemas.durations import format_duration, parse_duration
from schemas.streams import CHANNELS, Channel

ANY_CHANNEL = "any"
LOCAL_DAY = "local_day"
TRANSACTIONAL = "transactional"
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
ConsentRule = Literal["granted", "unless_denied"]
"""``granted``: only customers who granted the channel; ``unless_denied``: everyone who has not denied it."""


def _window(value: Any) -> int | str:
    """A cap's window: a duration (rolling) or ``local_day`` (the customer's calendar day)."""
    return LOCAL_DAY if value == LOCAL_DAY else parse_duration(value)


def _minute_of_day(value: Any) -> int:
    """``'21:00'`` -> 1260 (minutes after local midnight)."""
    match = _CLOCK.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{value!r} is not a time of day like '21:00' (24-hour, quoted in YAML)")
    return int(match.group(1)) * 60 + int(match.group(2))


class Cap(BaseModel):
    """At most ``max`` deliveries on ``channel`` (``any``: all channels together) ``per`` window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: Literal["push", "in_app", "email", "sms", "any"]
    max: int = Field(ge=1, le=10_000)
    per: Annotated[int | str, BeforeValidator(_window)] = Field(description="a duration (rolling), or local_day")

    @field_validator("per")
    @classmethod
    def _positive(cls, per: int | str) -> int | str:
        if isinstance(per, int) and per <= 0:
            raise ValueError("a cap's window must be longer than 0")
        return per

    def describe(self) -> str:
        window = "local day" if self.per == LOCAL_DAY else format_duration(self.per)  # type: ignore[arg-type]
        return f"at most {self.max} {self.channel} per {window}"


class QuietHours(BaseModel):
    """No delivery on ``channels`` from ``start`` to ``end`` in the customer's local time (across
    midnight when ``end`` comes first): ``drop`` the decision, or ``defer`` it to the end of the
    quiet hours (``defer_to: end``) or to the customer's preferred hour (``preferred_hour``: the
    next one after the quiet hours; the end when it falls inside them or is not known yet)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    channels: list[Channel] = Field(min_length=1)
    start: Annotated[int, BeforeValidator(_minute_of_day)] = Field(alias="from")
    end: Annotated[int, BeforeValidator(_minute_of_day)] = Field(alias="until")
    action: Literal["drop", "defer"] = "defer"
    defer_to: Literal["end", "preferred_hour"] = "end"

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours need 'from' and 'until' to differ")
        return self

    def quiet(self, minute_of_day: int) -> bool:
        """Whether ``minute_of_day`` (local) falls inside the quiet hours."""
        if self.start < self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end

    def describe(self) -> str:
        span = f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"
        then = "dropped" if self.action == "drop" else f"deferred to the {self.defer_to.replace('_', ' ')}"
        return f"quiet hours {span} local for {', '.join(self.channels)}: {then}"


def _all_channels(rule: ConsentRule) -> dict[str, ConsentRule]:
    return dict.fromkeys(CHANNELS, rule)


class Arbitration(BaseModel):
    """Marketing decisions for one customer made within ``window`` of each other compete: the one
    with the highest expected value (propensity score times offer value) is delivered, then the one
    of highest rule ``priority``; the others are suppressed as ``lower_priority``. ``0s``: only
    decisions made at the same moment (by one event, or one timer) compete, and none waits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Annotated[int, BeforeValidator(lambda v: 0 if v in ("0s", "0m", 0) else parse_duration(v))] = 0


class ContactPolicy(BaseModel):
    """The contact policy of a rule set (``policy:`` in the rule file, or a path to a file with it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = Field("UTC", description="the time zone of customers whose own is not known yet")
    caps: list[Cap] = []
    quiet_hours: list[QuietHours] = []
    consent: dict[Channel, ConsentRule] = Field(default_factory=lambda: _all_channels("unless_denied"))
    arbitration: Arbitration = Arbitration()

    @field_validator("consent", mode="before")
    @classmethod
    def _every_channel(cls, given: Any) -> Any:
        """Channels left out keep ``unless_denied``."""
        return {**_all_channels("unless_denied"), **given} if isinstance(given, dict) else given

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{zone!r} is not an IANA time zone (like 'Europe/Paris' or 'UTC')") from None
        return zone

    @model_validator(mode="after")
    def _one_quiet_hours_per_channel(self) -> ContactPolicy:
        seen: set[str] = set()
        for quiet in self.quiet_hours:
            twice = seen.intersection(quiet.channels)
            if twice:
                raise ValueError(f"quiet hours are given twice for {', '.join(sorted(twice))}")
            seen.update(quiet.channels)
        return self

    def horizon_ms(self, cooldowns: list[int]) -> int:
        """How far back deliveries matter: the longest cap window or cooldown (a local day: two days)."""
        windows = [2 * 86_400_000 if cap.per == LOCAL_DAY else cap.per for cap in self.caps]
        return max([*windows, *cooldowns, self.arbitration.window], default=0)  # type: ignore[type-var]

    def describe(self) -> list[str]:
        lines = [f"policy: {cap.describe()}" for cap in self.caps]
        lines += [f"policy: {quiet.describe()}" for quiet in self.quiet_hours]
        consent = ", ".join(f"{channel} {rule.replace('_', ' ')}" for channel, rule in self.consent.items())
        lines.append(f"policy: consent needed: {consent}")
        window = self.arbitration.window
        lines.append(
            f"policy: arbitration within {window // 1000} s" if window else "policy: arbitration at the same moment"
        )
        lines.append(f"policy: time zone when unknown: {self.timezone}")
        return lines
