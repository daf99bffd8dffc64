"""What the known truth says a measurement should find (see :mod:`connectors.responders`).

- :func:`true_lift`: the lift of an experiment's treated arm in the measure ``flows.lift`` estimates
  (the share of exposed customers who order within the conversion window after their first
  exposure), as the mean over the treated customers of the chance they convert as treated less the
  chance they would have as control. Treated, every delivery in the window may be answered;
  as control, the experiment's own deliveries are not made, so they cause nothing and tire
  nobody (the other deliveries' chances are recomputed without them). A customer's own orders
  (those no delivery caused) convert them either way. The deliveries are taken as they were: what
  the answers changed in later decisions is not undone.
- :func:`per_message`: orders caused per message delivered, the truth's count and its expectation;
  :func:`uncapped_rules`, a rule file without its caps and cooldowns, to compare with.
- :func:`exposures` and :func:`measured_arms` read what the engine measured (its ``experiments``
  records, one customer's increments each) to hold against the truth.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from connectors.files import add_counts
from connectors.responders import FATIGUE_DAYS, Responders
from connectors.synthetic import DAY_MS
from flows.audit import Customers
from operators.rules import CompiledRules, parse_rules
from schemas.items import Output
from schemas.streams import EXPERIMENTS
from schemas.timestamps import epoch_ms


@dataclass(frozen=True, slots=True)
class Exposure:
    """A customer's first exposure in an experiment: their arm and when."""

    customer: str
    arm: str
    at_ms: int


HOLDOUT_AND_TEST = """
experiments:
  holdout: {share: 0.5}
  tests:
    - id: browse_offer_test
      rule: browse_abandonment_offer
      arms:
        - {id: control, share: 0.5, send: false}
        - {id: treated, share: 0.5}
"""
"""The experiments the known-truth test and benchmark add to the starter rules: a global holdout of half the
customers, and the browse offer tested against no trigger for half of the rest."""


def true_lift(
    exposures: Iterable[Exposure],
    treated: str,
    deliveries: list[dict[str, Any]],
    customers: Customers,
    window_ms: int,
    in_experiment: Callable[[dict[str, Any]], bool],
) -> float | None:
    """The true lift of arm ``treated`` (see the module's docs); ``None`` without treated customers.

    ``deliveries`` are the truth's, ``customers`` who is who and their own orders; ``in_experiment``
    tells the deliveries the experiment withholds from its control arm.
    """
    by_person = _by_person(deliveries)
    effects = []
    for exposure in exposures:
        if exposure.arm != treated:
            continue
        person = customers.person(exposure.customer)
        start, end = exposure.at_ms, exposure.at_ms + window_ms
        times = customers.orders.get(person, [])
        own = bisect_left(times, start) < len(times) and times[bisect_left(times, start)] <= end
        if own:
            effects.append(0.0)
            continue
        as_treated = as_control = 1.0  # chances of no conversion
        customer_deliveries = by_person.get(person, [])
        for index, delivery in enumerate(customer_deliveries):
            share = _share_inside(delivery, start, end)
            if not share:
                continue
            as_treated *= 1 - delivery["chance"] * share
            if not in_experiment(delivery):
                as_control *= 1 - _control_chance(customer_deliveries, index, in_experiment) * share
        effects.append(as_control - as_treated)
    return sum(effects) / len(effects) if effects else None


def _by_person(deliveries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for delivery in deliveries:
        found[delivery["person"]].append(delivery)
    for customer_deliveries in found.values():
        customer_deliveries.sort(key=lambda d: epoch_ms(d["at"]))
    return found


def _share_inside(delivery: dict[str, Any], start: int, end: int) -> float:
    """The share of the delivery's answer interval (where its order falls, uniformly) inside ``[start, end]``."""
    if not delivery["chance"] or delivery["answer_from"] is None:
        return 0.0
    lo, hi = epoch_ms(delivery["answer_from"]), epoch_ms(delivery["answer_until"])
    inside = min(hi, end) - max(lo, start) + 1
    return max(0, inside) / (hi - lo + 1)


def _control_chance(
    customer_deliveries: list[dict[str, Any]], index: int, in_experiment: Callable[[dict[str, Any]], bool]
) -> float:
    """The chance of delivery ``index`` had the experiment's deliveries before it not been made."""
    delivery = customer_deliveries[index]
    at = epoch_ms(delivery["at"])
    withheld = sum(
        1
        for earlier in customer_deliveries[:index]
        if in_experiment(earlier) and at - FATIGUE_DAYS * DAY_MS <= epoch_ms(earlier["at"]) < at
    )
    if not withheld:
        return delivery["chance"]
    return Responders.chance(delivery["persona"], delivery["channel"], delivery["earlier_messages"] - withheld)


def per_message(deliveries: list[dict[str, Any]]) -> dict[str, Any]:
    """Messages delivered, the orders they caused, and both per message (also the expected count)."""
    messages = len(deliveries)
    caused = sum(d["responded"] for d in deliveries)
    expected = sum(d["chance"] for d in deliveries)
    return {
        "messages": messages,
        "caused_orders": caused,
        "caused_per_message": caused / messages if messages else None,
        "expected_per_message": expected / messages if messages else None,
    }


def exposures(outputs: Iterable[Output]) -> dict[str, list[Exposure]]:
    """Each experiment's first exposures, from the engine's ``experiments`` records (one customer's
    increments each)."""
    found: dict[str, list[Exposure]] = defaultdict(list)
    for output in outputs:
        if output.stream != EXPERIMENTS:
            continue
        for experiments in orjson.loads(output.body).values():
            for experiment, arms in experiments.items():
                for arm, counts in arms.items():
                    if counts.get("exposed"):
                        found[experiment].append(Exposure(output.key, arm, output.time_ms))
    return found


def measured_arms(outputs: Iterable[Output]) -> dict[str, dict[str, dict[str, int]]]:
    """Each experiment's per-arm counts, summed over the engine's ``experiments`` records."""
    totals: dict[str, Any] = {}
    for output in outputs:
        if output.stream == EXPERIMENTS:
            for experiments in orjson.loads(output.body).values():
                add_counts(totals, experiments)
    return totals


def uncapped_rules(path: Path) -> CompiledRules:
    """The rule file at ``path`` with its policy's caps and its rules' cooldowns taken out (its
    consent, quiet hours and arbitration kept)."""
    return parse_rules(uncapped_text(path.read_text(), str(path)), str(path))


def uncapped_text(text: str, source: str = "<rules>") -> str:
    """Rule-file text without its policy's caps (a list of one-line caps) and its rules' cooldowns."""
    free = _CAPS.sub("\n  caps: []\n", _COOLDOWN.sub("", text))
    if "cooldown" in free or "caps: []" not in free:
        raise ValueError(f"{source}: no caps block (a list of one-line caps under 'policy:') to take out")
    return free


_COOLDOWN = re.compile(r"\n\s+cooldown:[^\n]*")
_CAPS = re.compile(r"\n  caps:\n(    - [^\n]*\n)+")
