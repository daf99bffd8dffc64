"""Rule files: trigger rules and audience definitions, validated by pydantic.

A trigger either fires on an event (``on``) or, with ``after``, arms a timer on ``on``
events that fires ``after`` later unless one of the ``unless`` events came first
("30 minutes after Product Added with no Order Completed"). ``once_per`` names what the
trigger fires at most once for. ``when`` and audience conditions are expressions over
the feature catalogue (see :mod:`operators.expressions`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from schemas.content import Content
from schemas.durations import format_duration, parse_duration
from schemas.experiments import ExperimentConfig, rule_problems
from schemas.offers import Offer
from schemas.policy import ContactPolicy
from schemas.streams import Channel

RULE_ID = r"^[a-z][a-z0-9_.-]{0,63}$"


DurationMs = Annotated[int, BeforeValidator(parse_duration), Field(gt=0)]
EventNames = Annotated[
    list[Annotated[str, Field(min_length=1)]], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)
]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=RULE_ID)]
    description: str = ""
    shadow: bool = Field(False, description="Evaluate and record, never deliver")


class Recommend(BaseModel):
    """A trigger's carousel: ``recommend: 4``, or ``recommend: {k: 10, include_bought: true}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(ge=0, le=20, description="products to recommend in the trigger (a carousel)")
    include_bought: bool = Field(
        False,
        description="the customer's own products first (their favourites, then their last order), then"
        " recommendations; by default what they bought last and their cart are left out",
    )

    def __bool__(self) -> bool:
        return self.k > 0

    def __str__(self) -> str:
        """As a rule file writes it."""
        return f"{{k: {self.k}, include_bought: true}}" if self.include_bought else str(self.k)


def _recommend_count(value: Any) -> Any:
    """``recommend: N`` is ``recommend: {k: N}`` (an int, not a bool)."""
    return {"k": value} if isinstance(value, int) and not isinstance(value, bool) else value


class TriggerRule(_Rule):
    channel: Channel
    on: EventNames = Field(min_length=1)
    after: DurationMs | None = None
    unless: EventNames = []
    once_per: Literal["event", "session", "cart", "order", "day", "customer"] = "event"
    when: str | None = None
    content: Content = {}
    offer_id: str | None = None
    recommend: Annotated[Recommend, BeforeValidator(_recommend_count)] = Recommend(k=0)
    expires_in: DurationMs = 24 * 3_600_000
    priority: int = Field(0, ge=-1000, le=1000, description="wins arbitration between equal expected values")
    cooldown: DurationMs | None = Field(None, description="no delivery of this rule to a customer within this")
    tags: list[Annotated[str, Field(pattern=RULE_ID)]] = Field(
        [], description="'transactional': exempt from caps, cooldowns, quiet hours, arbitration and holdouts"
    )

    @property
    def transactional(self) -> bool:
        return "transactional" in self.tags

    @field_validator("unless")
    @classmethod
    def _unless_needs_timer(cls, unless: list[str], info: ValidationInfo) -> list[str]:
        if unless and info.data.get("after") is None:
            raise ValueError("'unless' needs 'after': only a timer can be cancelled by later events")
        return unless


MAX_DWELL_MS = 365 * 86_400_000


class AudienceRule(_Rule):
    """An audience: a customer enters when ``when`` holds and, with ``exit_when``, leaves only when that
    holds (hysteresis: between the two, nothing changes); ``min_dwell`` keeps a member at least that long."""

    when: str
    exit_when: str | None = Field(None, description="a member leaves when this holds (default: when 'when' fails)")
    min_dwell: DurationMs | None = Field(None, description="a member stays at least this long after entering")

    @field_validator("min_dwell")
    @classmethod
    def _dwell_bounded(cls, dwell: int | None) -> int | None:
        if dwell is not None and dwell > MAX_DWELL_MS:
            raise ValueError(f"{format_duration(dwell)} is too long: at most {format_duration(MAX_DWELL_MS)}")
        return dwell


NEXT_BEST = "next_best"  # the offer_id of a trigger whose offer the next-best-offer policy picks


class NextBestOffer(BaseModel):
    """The policy that picks among eligible offers, and what counts as a reward."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exploration: float = Field(0.1, ge=0, le=1, description="share of decisions that pick an offer at random")
    seed: int = 0
    reward_window: DurationMs = 3 * 86_400_000
    reward: Literal["conversion", "net_value"] = Field(
        "conversion", description="a conversion is worth 1, or its value net of the discount's cost"
    )


class RuleSet(BaseModel):
    """One rule file: its version (named in every decision), triggers and audiences."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[str, Field(min_length=1, max_length=64)]
    triggers: list[TriggerRule] = []
    audiences: list[AudienceRule] = []
    offers: list[Offer] = []
    next_best_offer: NextBestOffer = NextBestOffer()
    policy: ContactPolicy = ContactPolicy()
    experiments: ExperimentConfig = ExperimentConfig()

    @model_validator(mode="after")
    def _offers_exist(self) -> RuleSet:
        audiences = {a.id for a in self.audiences}
        problems = [
            (("offers", i, "audiences"), f"offer '{offer.id}' names unknown audiences {unknown}", offer.audiences)
            for i, offer in enumerate(self.offers)
            if (unknown := [a for a in offer.audiences if a not in audiences])
        ]
        problems += [
            (
                ("triggers", i, "offer_id"),
                f"trigger '{t.id}' asks for the next best offer, but no offer has its channel",
                t.offer_id,
            )
            for i, t in enumerate(self.triggers)
            if t.offer_id == NEXT_BEST and not any(t.channel in o.channels for o in self.offers)
        ]
        by_id = {offer.id: offer for offer in self.offers}
        problems += [
            (("triggers", i, "offer_id"), f"offer '{t.offer_id}' is not for channel {t.channel}", t.offer_id)
            for i, t in enumerate(self.triggers)
            if t.offer_id in by_id and t.channel not in by_id[t.offer_id].channels
        ]
        _refuse(problems)
        return self

    @model_validator(mode="after")
    def _experiments_know_their_rules(self) -> RuleSet:
        _refuse(rule_problems(self.experiments, self.triggers))
        return self

    @model_validator(mode="after")
    def _one_rule_per_id(self) -> RuleSet:
        triggers = {t.id for t in self.triggers}
        taken = [(i, a.id) for i, a in enumerate(self.audiences) if a.id in triggers]
        _refuse_ids("audiences", taken, "'{rule_id}' is also a trigger's id: give each rule its own")
        return self

    @field_validator("triggers", "audiences", "offers")
    @classmethod
    def _unique_ids(cls, rules: list[_Rule]) -> list[_Rule]:
        seen: set[str] = set()
        twice = []
        for index, rule in enumerate(rules):
            if rule.id in seen:
                twice.append((index, rule.id))
            seen.add(rule.id)
        _refuse_ids(None, twice, "rule id '{rule_id}' is used twice")
        return rules


def _refuse_ids(section: str | None, found: list[tuple[int, str]], message: str) -> None:
    """Refuse the ids of ``found`` (index, id), each error located at its rule's ``id``."""
    prefix = (section,) if section else ()
    _refuse([((*prefix, index, "id"), message.format(rule_id=rule_id), rule_id) for index, rule_id in found])


def _refuse(problems: list[tuple[tuple[str | int, ...], str, Any]]) -> None:
    """Raise one validation error per ``(location, message, value)``, so each names its line."""
    if problems:
        errors = [
            InitErrorDetails(type=PydanticCustomError("rule", message), loc=loc, input=value)
            for loc, message, value in problems
        ]
        raise ValidationError.from_exception_data("RuleSet", errors)
