"""Experiments and the global holdout: who is in which arm, and what each arm's customers did.

A customer's arm is drawn by hashing (customer id, experiment id, salt), so it is the same in every
run, shard and replay. The contact policy's last gate before a marketing trigger is delivered asks
for the decision's assignment (:meth:`Experiments.assign`): a held-out customer gets a ``holdout``
suppression instead ("would have sent"). :class:`Measurement` counts, per experiment and arm, the
customers exposed (a decision was made for them, delivered or held out), those who ordered within
the conversion window after their first exposure, and the revenue of those orders; each count goes
out as an ``experiments`` record of increments by report period (event time), which the output
folder sums over shards (:mod:`connectors.files`) and the run's end turns into lifts (:mod:`flows.lift`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from operators.decisions import DecisionWriter, bump
from schemas.experiments import CONTROL, HOLDOUT, TREATED, ExperimentConfig, Test
from schemas.items import Output
from schemas.rules import TriggerRule
from schemas.streams import EXPERIMENTS
from state.customer import EXPOSURE_FIELDS

_SCALE = float(1 << 64)
ORDER = "Order Completed"


@dataclass(frozen=True, slots=True)
class Assignment:
    """A customer's arm in one experiment for one decision: ``holdout``: not delivered (recorded
    as would have sent); ``content``: sent instead of the rule's own (``None``: the rule's)."""

    experiment: str
    arm: str
    holdout: bool
    content: dict[str, Any] | None = None


def draw(customer_id: str, experiment_id: str, salt: str) -> float:
    """The customer's uniform draw in ``[0, 1)`` for an experiment: the same in every run."""
    key = f"{experiment_id}\x1f{salt}\x1f{customer_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / _SCALE


def pick_arm(test: Test, u: float) -> int:
    """The index of the arm whose share covers ``u`` (the arms' shares laid end to end)."""
    upto = 0.0
    for index, arm in enumerate(test.arms):
        upto += arm.share
        if u < upto:
            return index
    return len(test.arms) - 1  # shares that add up to a hair under 1


def deciding(found: tuple[Assignment, ...]) -> Assignment | None:
    """Of a decision's assignments, the one that decides its delivery: one that holds it out, else the
    last (a test's arm, whose content it may carry); ``None``: there are none."""
    if not found:
        return None
    return next((a for a in found if a.holdout), found[-1])


class Experiments:
    """Assigns customers to the rule file's holdout and tests.

    ``known``, where given, is the customer's ``exposures``: an experiment it was exposed in keeps the
    arm it had then, without drawing it again (and whatever the configuration says since).
    """

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.holdout = config.holdout
        self.tests = {test.rule: test for test in config.tests}
        self._arms: dict[tuple[str, str], Assignment] = {
            (HOLDOUT, CONTROL): Assignment(HOLDOUT, CONTROL, True),
            (HOLDOUT, TREATED): Assignment(HOLDOUT, TREATED, False),
        }
        for test in config.tests:
            for arm in test.arms:
                self._arms[test.id, arm.id] = Assignment(test.id, arm.id, not arm.send, arm.content)

    def assign(self, customer_id: str, rule: TriggerRule, known: tuple[Any, ...] = ()) -> Assignment | None:
        """The assignment that decides how ``rule``'s decision for the customer is delivered: held out
        by the global holdout or a test's arm, else the test's arm (its content), else treated by the
        holdout; ``None``: the rule is in no experiment (or transactional, or in shadow mode)."""
        return deciding(self.assignments(customer_id, rule, known))

    def content(self, customer_id: str, rule: TriggerRule, known: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        """What the customer's arm of ``rule``'s test sends instead of the rule's content (``None``: the rule's)."""
        test = self.tests.get(rule.id)
        return None if test is None else self._test_arm(customer_id, test, known).content

    def assignments(self, customer_id: str, rule: TriggerRule, known: tuple[Any, ...] = ()) -> tuple[Assignment, ...]:
        """Every experiment ``rule``'s decision for the customer is measured in: the holdout's arm, and
        unless held out by it, the arm of the rule's test."""
        if rule.shadow or rule.transactional:
            return ()
        found: tuple[Assignment, ...] = ()
        holdout = self.holdout
        if holdout is not None:
            arm = _known_arm(known, HOLDOUT)
            if arm is None:
                arm = CONTROL if draw(customer_id, HOLDOUT, holdout.salt) < holdout.share else TREATED
            found = (self._arms[HOLDOUT, arm],)
            if arm == CONTROL:
                return found
        test = self.tests.get(rule.id)
        if test is not None:
            found += (self._test_arm(customer_id, test, known),)
        return found

    def _test_arm(self, customer_id: str, test: Test, known: tuple[Any, ...]) -> Assignment:
        arm = self._arms.get((test.id, _known_arm(known, test.id) or ""))
        if arm is None:
            arm_id = test.arms[pick_arm(test, draw(customer_id, test.id, test.salt or test.id))].id
            arm = self._arms[test.id, arm_id]
        return arm


def _known_arm(exposures: tuple[Any, ...], experiment: str) -> str | None:
    """The arm of ``experiment`` among a customer's exposures (``None``: not exposed in it)."""
    for at in range(0, len(exposures), EXPOSURE_FIELDS):
        if exposures[at] == experiment:
            return exposures[at + 1]
    return None


class Measurement:
    """Counts exposures, conversions and revenue per experiment and arm, as ``experiments`` records of
    increments (summed over shards by the output folder), and in the shard's ``stats``."""

    def __init__(self, config: ExperimentConfig, writer: DecisionWriter) -> None:
        self.writer = writer
        writer.uncounters[EXPERIMENTS] = retract_measures
        self.period_ms = config.report_every
        self.pre_period = config.pre_period
        self.windows = {test.id: test.conversion_window for test in config.tests}
        if config.holdout is not None:
            self.windows[HOLDOUT] = config.holdout.conversion_window

    def expose(self, state: Any, assignments: tuple[Assignment, ...], at_ms: int, out: list[Any]) -> None:
        """Note the customer's first exposure in each experiment of ``assignments``."""
        exposures = state.exposures
        known = exposures[::EXPOSURE_FIELDS]
        pre = None
        for assignment in assignments:
            if assignment.experiment in known:
                continue
            if pre is None:
                pre = self._pre_period_orders(state, at_ms)
            exposures += (assignment.experiment, assignment.arm, at_ms, 0, pre)
            counts = {"exposed": 1, "pre": pre, "pre_squares": pre * pre}
            self._emit(state.id, assignment.experiment, assignment.arm, counts, at_ms, out)
        state.exposures = exposures

    def ordered(self, state: Any, at_ms: int, amount: float, out: list[Any]) -> None:
        """An order of an exposed customer: a conversion (the first within the window) and its revenue
        for every experiment whose conversion window after the first exposure holds ``at_ms``."""
        exposures = list(state.exposures)
        cents = round(amount * 100)
        for at in range(0, len(exposures), EXPOSURE_FIELDS):
            experiment, arm, first_ms, converted, pre = exposures[at : at + EXPOSURE_FIELDS]
            if not first_ms <= at_ms <= first_ms + self.windows.get(experiment, 0):
                continue
            counts = {"orders": 1, "revenue_cents": cents}
            if not converted:
                exposures[at + 3] = 1
                counts.update(conversions=1, conversions_pre=pre)
            self._emit(state.id, experiment, arm, counts, at_ms, out)
        state.exposures = tuple(exposures)

    def _pre_period_orders(self, state: Any, at_ms: int) -> int:
        if self.pre_period is None:
            return 0
        return state.features.counts(self.pre_period, at_ms).get("order_completed", 0)

    def _emit(
        self, customer_id: str, experiment: str, arm: str, counts: dict[str, int], at_ms: int, out: list[Any]
    ) -> None:
        period = at_ms - at_ms % self.period_ms
        body = orjson.dumps({str(period): {experiment: {arm: counts}}}, option=orjson.OPT_SORT_KEYS)
        out.append(Output(EXPERIMENTS, customer_id, at_ms, self.writer.seq, body))
        count_measures(self.writer.stats, experiment, arm, counts, 1)


SUMMARY_COUNTS = ("exposed", "conversions", "revenue_cents")
"""The counts of an arm kept in the run's summary (and metrics)."""


def count_measures(stats: dict[str, Any], experiment: str, arm: str, counts: dict[str, int], sign: int) -> None:
    """Add (``sign`` 1) or take back (-1) an ``experiments`` record's counts in ``stats``."""
    totals = stats.setdefault("experiments", {}).setdefault(experiment, {}).setdefault(arm, {})
    for name in SUMMARY_COUNTS:
        if name in counts:
            bump(totals, name, sign * counts[name])


def retract_measures(stats: dict[str, Any], body: dict[str, Any]) -> None:
    """Take back the counts of an ``experiments`` record (of a step that failed)."""
    for experiments in body.values():
        for experiment, arms in experiments.items():
            for arm, counts in arms.items():
                count_measures(stats, experiment, arm, counts, -1)
