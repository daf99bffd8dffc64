"""The rule file's ``experiments`` section: the global holdout, per-rule tests, attribution and costs.

A customer's arm is drawn by hashing (customer id, experiment id, salt) into ``[0, 1)`` and reading
it off the arms' cumulative shares (:mod:`operators.experiments`), so it never changes while the
salt does not. The global holdout (experiment ``holdout``: arms ``control`` and ``treated``) gets
no marketing trigger; rules tagged ``transactional`` are left out of every experiment.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from schemas.content import Content
from schemas.durations import parse_duration
from schemas.streams import Channel

HOLDOUT = "holdout"
"""The global holdout's experiment id; its arms are :data:`CONTROL` (held out) and :data:`TREATED`."""
CONTROL = "control"
TREATED = "treated"
DAY_MS = 86_400_000
PRE_PERIODS = ("7d", "30d")
"""Pre-periods CUPED can read (windows of the customer's order counts)."""
SHARE_TOLERANCE = 1e-9


# schemas.rules holds RuleSet, which holds this section: its id check is looked up when used
def _id(value: str) -> str:
    from schemas.rules import RULE_ID

    if not re.match(RULE_ID, value):
        raise ValueError(f"{value!r} is no id: lower-case letters, digits, '_', '.', '-', starting with a letter")
    return value


DurationMs = Annotated[int, BeforeValidator(parse_duration), Field(gt=0)]
Id = Annotated[str, AfterValidator(_id)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Holdout(_Section):
    """The global control group: this share of customers gets no marketing trigger."""

    share: float = Field(gt=0, lt=1, description="share of customers held out")
    salt: str = Field(HOLDOUT, min_length=1, description="change it to draw a new group")
    conversion_window: DurationMs = 7 * DAY_MS


class Arm(_Section):
    """One arm of a test: the rule's own content, other ``content``, or no trigger (``send: false``)."""

    id: Id
    share: float = Field(ge=0, le=1)
    content: Content | None = Field(None, description="sent instead of the rule's content")
    send: bool = Field(True, description="false: no trigger, recorded as would have sent (a control arm)")


class Test(_Section):
    """A per-rule experiment: the decisions of ``rule`` split among ``arms`` by customer."""

    id: Id
    rule: str
    salt: str = Field("", description="change it to draw new arms (default: the test id)")
    arms: list[Arm] = Field(min_length=2)
    control: str = Field(CONTROL, description="the arm every other arm's lift is measured against")
    conversion_window: DurationMs = 7 * DAY_MS

    @field_validator("id")
    @classmethod
    def _not_holdout(cls, value: str) -> str:
        if value == HOLDOUT:
            raise ValueError(f"'{HOLDOUT}' is the global holdout's id: give the test another")
        return value

    @model_validator(mode="after")
    def _arms_add_up(self) -> Test:
        ids = [arm.id for arm in self.arms]
        if len(set(ids)) != len(ids):
            raise ValueError(f"test '{self.id}' names an arm twice: {ids}")
        total = sum(arm.share for arm in self.arms)
        if abs(total - 1) > SHARE_TOLERANCE:
            raise ValueError(f"the shares of test '{self.id}' add up to {total:g}, not 1")
        if self.control not in ids:
            raise ValueError(f"test '{self.id}' has no arm '{self.control}' to measure lift against")
        return self


def _default_windows() -> dict[str, int]:
    return {"push": 24 * 3_600_000, "in_app": 3_600_000, "email": 7 * DAY_MS, "sms": 24 * 3_600_000}


class Attribution(_Section):
    """How far back an order looks for the deliveries it is credited to, per channel."""

    windows: dict[Channel, DurationMs] = Field(default_factory=_default_windows)

    @field_validator("windows", mode="before")
    @classmethod
    def _over_defaults(cls, windows: Any) -> Any:
        return {**_default_windows(), **windows} if isinstance(windows, dict) else windows


class Costs(_Section):
    """What a delivery costs, for return on spend in ``nudgeflow report`` (currency units)."""

    per_message: dict[Channel, Annotated[float, Field(ge=0)]] = {}
    per_offer: dict[str, Annotated[float, Field(ge=0)]] = {}


class ExperimentConfig(_Section):
    """The rule file's ``experiments`` section (everything off by default)."""

    holdout: Holdout | None = None
    tests: list[Test] = []
    pre_period: str | None = Field(None, description="CUPED covariate: orders in this window before exposure")
    report_every: DurationMs = DAY_MS
    attribution: Attribution = Attribution()
    costs: Costs = Costs()

    @field_validator("pre_period")
    @classmethod
    def _known_window(cls, value: str | None) -> str | None:
        if value is not None and value not in PRE_PERIODS:
            raise ValueError(f"pre_period must be one of {', '.join(PRE_PERIODS)}, not {value!r}")
        return value

    @field_validator("tests")
    @classmethod
    def _one_test_per_rule(cls, tests: list[Test]) -> list[Test]:
        ids = [test.id for test in tests]
        if len(set(ids)) != len(ids):
            raise ValueError(f"test ids must be unique: {ids}")
        return tests

    def describe(self) -> list[str]:
        """One line for the holdout and each test (for ``rules check``); none when there are none."""
        lines = []
        if self.holdout is not None:
            lines.append(f"holdout: {self.holdout.share:.0%} of customers get no marketing trigger")
        for test in self.tests:
            arms = ", ".join(f"{arm.id} {arm.share:.0%}" + ("" if arm.send else " (no trigger)") for arm in test.arms)
            lines.append(f"test {test.id} of {test.rule}: {arms}; lift against {test.control}")
        return lines

    @property
    def active(self) -> bool:
        """Whether anything is assigned (a holdout or a test)."""
        return self.holdout is not None or bool(self.tests)


def rule_problems(experiments: ExperimentConfig, triggers: list[Any]) -> list[tuple[tuple[str | int, ...], str, Any]]:
    """What the section says of trigger rules that is wrong, as ``(location, message, value)``: a test
    of an unknown rule, of a rule another test has, of a transactional or shadow rule."""
    by_id = {trigger.id: trigger for trigger in triggers}
    problems: list[tuple[tuple[str | int, ...], str, Any]] = []
    taken: set[str] = set()
    for index, test in enumerate(experiments.tests):
        where = ("experiments", "tests", index, "rule")
        rule = by_id.get(test.rule)
        if rule is None:
            problems.append((where, f"test '{test.id}' names unknown trigger rule '{test.rule}'", test.rule))
        elif test.rule in taken:
            problems.append((where, f"rule '{test.rule}' is in two tests: a customer gets one arm", test.rule))
        elif rule.transactional:
            problems.append((where, f"rule '{test.rule}' is transactional: it takes part in no test", test.rule))
        elif rule.shadow:
            problems.append((where, f"rule '{test.rule}' is in shadow mode: nothing of it is delivered", test.rule))
        taken.add(test.rule)
    return problems
