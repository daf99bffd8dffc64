"""The contact policy stage: between the rules and every output, in event time.

A trigger rule whose condition holds makes a *decision*; the policy decides whether it is delivered.
In order, a decision is:

1. suppressed ``no_consent`` when the customer has not consented to its channel (``policy.consent``:
   ``granted`` needs a grant, ``unless_denied`` only no denial; transactional rules need no denial);
2. for marketing rules (all but those tagged ``transactional``): suppressed ``cooldown`` within its
   rule's ``cooldown`` of the rule's last delivery to the customer, ``frequency_cap`` when a cap of its
   channel (or of ``any`` channel) is reached, rolling or per local calendar day; in quiet hours
   (customer's local time) dropped as ``quiet_hours`` or deferred (held, and checked again then);
3. arbitrated: marketing decisions for one customer made at the same moment (or within the
   arbitration window, then held to its end) compete; the highest expected value wins (propensity
   score times offer value), then rule priority, then rule id; the others are ``lower_priority``.

What is suppressed goes to the ``suppressions`` output with its reason, and is counted. Everything is
kept per customer (deliveries within the longest cap window, held decisions, consent changes) in
``CustomerState.contacts``, so it is snapshotted, replayed and rolled back with the customer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from operators.decisions import DecisionWriter, bump
from operators.rules import CompiledRules, CompiledTrigger
from schemas.envelope import Envelope
from schemas.policy import ANY_CHANNEL, LOCAL_DAY, Cap, QuietHours
from schemas.rules import TriggerRule
from state.customer import HOUR_MS, MINUTE_MS, CustomerState
from state.update import utc_offset_minutes

POLICY_TIMER = "~policy"  # a customer's held decisions: released when it is due
NO_CONTACTS: tuple[Any, ...] = ((), (), ())
"""A customer's record: deliveries ``(at, channel, rule)`` within the policy's horizon, oldest first;
held decisions (see :meth:`PolicyStage._hold`), by release time; the latest consent change per channel."""

FREQUENCY_CAP, COOLDOWN, QUIET_HOURS, NO_CONSENT = "frequency_cap", "cooldown", "quiet_hours", "no_consent"
HOLDOUT, LOWER_PRIORITY, BUDGET_SPENT = "holdout", "lower_priority", "budget_spent"


class Candidate(NamedTuple):
    """A decision waiting for the policy: its rule, what it fires once for, when it was made."""

    trigger: CompiledTrigger
    cause: str
    caused_by: tuple[str, ...]
    decided_ms: int
    score: float | None
    env: Envelope | None  # the event that made it (None: a timer, or a held decision)


Deliver = Callable[[CustomerState, Candidate, int, list[Any]], None]
"""Delivers a decision at a time (the engine builds and writes the trigger)."""
Schedule = Callable[[CustomerState, str, int | None], None]
"""Keeps a customer's timer at a due time (``None``: drops it)."""
Assign = Callable[[CustomerState, TriggerRule, int, list[Any]], Any]
"""The experiments' assignment of a decision about to be delivered (``operators.experiments.Assignment``,
with ``holdout``, ``experiment``, ``arm``; ``None``: in no experiment), the customer's exposure noted."""
OfferValue = Callable[[CustomerState, TriggerRule, int], float]
"""What a decision of a rule is worth to the business at a time (its offer's value; 1 without one)."""


def local_time(zone: str, at_ms: int) -> tuple[int, int]:
    """``(minute of the local day, local day number since 1970-01-01)`` of ``at_ms`` in ``zone``."""
    local_minutes = at_ms // MINUTE_MS + utc_offset_minutes(zone, at_ms // HOUR_MS)
    return local_minutes % 1440, local_minutes // 1440


class PolicyStage:
    """One shard's contact policy (see the module's docstring)."""

    def __init__(
        self,
        rules: CompiledRules,
        writer: DecisionWriter,
        deliver: Deliver,
        schedule: Schedule,
        offer_value: OfferValue,
        assign: Assign | None = None,
    ) -> None:
        policy = rules.policy
        self.rules, self.policy, self.writer = rules, policy, writer
        self.deliver, self.schedule, self.assign, self.offer_value = deliver, schedule, assign, offer_value
        self.caps: dict[str, list[Cap]] = {}
        for cap in policy.caps:
            self.caps.setdefault(cap.channel, []).append(cap)
        self.quiet: dict[str, QuietHours] = {c: q for q in policy.quiet_hours for c in q.channels}
        cooldowns = [t.rule.cooldown for t in rules.triggers if t.rule.cooldown]
        self.horizon_ms = policy.horizon_ms(cooldowns)
        self.zone = policy.timezone
        self.window = policy.arbitration.window
        self.triggers = {trigger.id: trigger for trigger in rules.triggers}
        self.pool: list[tuple[CustomerState, Candidate]] = []  # decisions of this step, arbitrated at its end

    # --- entry points ------------------------------------------------------------------------
    def submit(self, state: CustomerState, candidate: Candidate, out: list[Any]) -> None:
        """Take a decision whose condition held: deliver, suppress, hold or pool it."""
        rule = candidate.trigger.rule
        blocked = self._gate(state, rule, candidate.decided_ms)
        if blocked is not None:
            reason, detail, release_ms = blocked
            if release_ms is None:
                self._suppress(state, candidate, reason, detail, candidate.decided_ms, out)
            else:
                self._hold(state, candidate, release_ms, deferred=True)
        elif rule.transactional:
            self.deliver(state, candidate, candidate.decided_ms, out)
        elif self.window:
            self._hold(state, candidate, candidate.decided_ms + self.window, deferred=False)
        else:
            self.pool.append((state, candidate))

    def flush(self, out: list[Any]) -> None:
        """Arbitrate the decisions pooled during this step: per customer, the best is delivered."""
        if not self.pool:
            return
        pool, self.pool = self.pool, []
        by_customer: dict[str, list[tuple[CustomerState, Candidate]]] = {}
        for state, candidate in pool:
            by_customer.setdefault(state.id, []).append((state, candidate))
        for entries in by_customer.values():
            state = entries[-1][0]
            self._arbitrate(state, [candidate for _, candidate in entries], entries[0][1].decided_ms, out)

    def discard(self) -> None:
        """Forget the pooled decisions of a step that failed (its outputs are taken back)."""
        self.pool.clear()

    def release(self, state: CustomerState, now_ms: int, out: list[Any]) -> None:
        """The customer's policy timer: its held decisions due by ``now_ms`` compete (with every
        decision still held for arbitration), and are delivered or suppressed."""
        deliveries, held, consents = state.contacts or NO_CONTACTS
        due = [entry for entry in held if entry[0] <= now_ms or not entry[-1]]
        left = tuple(entry for entry in held if entry not in due)
        state.contacts = (deliveries, left, consents)
        self._next_release(state)
        candidates = []
        for release_ms, rule_id, cause, caused_by, decided_ms, score, _ in due:
            trigger = self._trigger(rule_id)
            if trigger is None:  # its rule is gone from the rule set since
                bump(self.writer.stats, "held_dropped")
                continue
            candidate = Candidate(trigger, cause, caused_by, decided_ms, score, None)
            if now_ms >= decided_ms + trigger.rule.expires_in:
                detail = f"expired while held until {release_ms}"
                self._suppress(state, candidate, QUIET_HOURS, detail, now_ms, out)
                continue
            candidates.append(candidate)
        if candidates:
            self._arbitrate(state, candidates, now_ms, out)

    # --- the gates -------------------------------------------------------------------------
    def _gate(self, state: CustomerState, rule: TriggerRule, at_ms: int) -> tuple[str, str, int | None] | None:
        """Why ``rule`` may not reach the customer at ``at_ms``: ``(reason, detail, None)``; or
        ``(quiet_hours, detail, release)`` to hold it until then; ``None``: it may."""
        channel = rule.channel
        needs = "unless_denied" if rule.transactional else self.policy.consent[channel]
        granted = state.features.consent.get(channel)
        if granted is False or (needs == "granted" and granted is not True):
            detail = f"{channel} consent {'denied' if granted is False else 'not granted'}"
            return NO_CONSENT, detail, None
        if rule.transactional:
            return None
        deliveries = (state.contacts or NO_CONTACTS)[0]
        if rule.cooldown is not None:
            last = _last_delivery(deliveries, rule.id)
            if last is not None and at_ms - last < rule.cooldown:
                return COOLDOWN, f"{rule.id} delivered {(at_ms - last) // MINUTE_MS} min before", None
        zone = state.timezone or self.zone
        for cap in (*self.caps.get(channel, ()), *self.caps.get(ANY_CHANNEL, ())):
            if _count(deliveries, cap, at_ms, zone) >= cap.max:
                return FREQUENCY_CAP, cap.describe(), None
        quiet = self.quiet.get(channel)
        if quiet is not None:
            minute, _ = local_time(zone, at_ms)
            if quiet.quiet(minute):
                if quiet.action == "drop":
                    return QUIET_HOURS, f"{quiet.describe()} ({zone})", None
                return QUIET_HOURS, quiet.describe(), self._quiet_end(state, quiet, at_ms, minute)
        return None

    def _quiet_end(self, state: CustomerState, quiet: QuietHours, at_ms: int, minute: int) -> int:
        """When a decision deferred at ``at_ms`` (local ``minute``) is released: the end of the quiet
        hours, or the customer's next preferred hour after it when asked for and not quiet itself."""
        start_of_minute = at_ms - at_ms % MINUTE_MS
        release = start_of_minute + ((quiet.end - minute) % 1440) * MINUTE_MS
        if quiet.defer_to == "preferred_hour":
            hour = state.features.preferred_hour()
            if hour is not None and not quiet.quiet(hour * 60):
                release += ((hour * 60 - quiet.end) % 1440) * MINUTE_MS
        return release

    # --- arbitration and outcomes ----------------------------------------------------------
    def _arbitrate(self, state: CustomerState, candidates: list[Candidate], now_ms: int, out: list[Any]) -> None:
        """Deliver the best of ``candidates`` that passes the gates at ``now_ms``; suppress the rest."""
        ranked = sorted(candidates, key=lambda c: self._rank(state, c, now_ms)) if len(candidates) > 1 else candidates
        winner = None
        for candidate in ranked:
            if winner is not None:
                detail = f"{winner.trigger.id} won (expected value, then priority)"
                self._suppress(state, candidate, LOWER_PRIORITY, detail, now_ms, out)
                continue
            blocked = self._gate(state, candidate.trigger.rule, now_ms) if now_ms != candidate.decided_ms else None
            if blocked is None:
                winner = candidate
                self._deliver_unless_held_out(state, candidate, now_ms, out)
            elif blocked[2] is not None:
                self._hold(state, candidate, blocked[2], deferred=True)
            else:
                self._suppress(state, candidate, blocked[0], blocked[1], now_ms, out)

    def _deliver_unless_held_out(self, state: CustomerState, candidate: Candidate, now_ms: int, out: list[Any]) -> None:
        """The last gate of a marketing decision: a customer held out by an experiment gets a ``holdout``
        suppression instead ("would have sent"), which counts in their caps as a delivery would, so
        that every arm sees the same policy."""
        rule = candidate.trigger.rule
        assignment = None if self.assign is None else self.assign(state, rule, now_ms, out)
        if assignment is None or not assignment.holdout:
            self.deliver(state, candidate, now_ms, out)
            return
        self.delivered(state, rule, now_ms)
        detail = f"experiment {assignment.experiment}, arm {assignment.arm}"
        self._suppress(state, candidate, HOLDOUT, detail, now_ms, out)

    def _rank(self, state: CustomerState, candidate: Candidate, now_ms: int) -> tuple[float, int, str]:
        rule = candidate.trigger.rule
        return -self.expected_value(state, candidate, now_ms), -rule.priority, rule.id

    def expected_value(self, state: CustomerState, candidate: Candidate, now_ms: int) -> float:
        """The propensity score (1 without models) times the offer's value (1 without an offer; for a
        ``next_best`` rule, the best value among the offers the customer may be given now)."""
        rule = candidate.trigger.rule
        score = 1.0 if candidate.score is None else candidate.score
        return score * self.offer_value(state, rule, now_ms)

    def delivered(self, state: CustomerState, rule: TriggerRule, at_ms: int) -> None:
        """Note a marketing delivery in the customer's contact history (for caps and cooldowns)."""
        if rule.transactional or rule.shadow:
            return
        deliveries, held, consents = state.contacts or NO_CONTACTS
        horizon = at_ms - self.horizon_ms
        kept = tuple(entry for entry in deliveries if entry[0] > horizon)
        state.contacts = ((*kept, (at_ms, rule.channel, rule.id)), held, consents)

    def _hold(self, state: CustomerState, candidate: Candidate, release_ms: int, deferred: bool) -> None:
        deliveries, held, consents = state.contacts or NO_CONTACTS
        entry = (
            release_ms,
            candidate.trigger.id,
            candidate.cause,
            tuple(candidate.caused_by),
            candidate.decided_ms,
            candidate.score,
            deferred,
        )
        state.contacts = (deliveries, tuple(sorted((*held, entry), key=_held_order)), consents)
        if deferred:
            bump(self.writer.stats.setdefault("deferred", {}), candidate.trigger.id)
        self._next_release(state)

    def _next_release(self, state: CustomerState) -> None:
        held = (state.contacts or NO_CONTACTS)[1]
        self.schedule(state, POLICY_TIMER, min((entry[0] for entry in held), default=None))

    def _suppress(
        self, state: CustomerState, candidate: Candidate, reason: str, detail: str, at_ms: int, out: list[Any]
    ) -> None:
        self.writer.suppression(candidate.trigger.rule, state.id, candidate, reason, detail, at_ms, out)

    def _trigger(self, rule_id: str) -> CompiledTrigger | None:
        return self.triggers.get(rule_id)

    # --- consent ---------------------------------------------------------------------------
    @staticmethod
    def consent_changed(state: CustomerState, env: Envelope) -> None:
        """Keep the latest consent change per channel with its source and time (for the profile)."""
        props = env.event.properties
        deliveries, held, consents = state.contacts or NO_CONTACTS
        change = (props.channel, bool(props.granted), getattr(props, "source", None), env.ts_ms)
        kept = tuple(c for c in consents if c[0] != props.channel and props.channel != "all")
        state.contacts = (deliveries, held, tuple(sorted((*kept, change))))


def _held_order(entry: tuple[Any, ...]) -> tuple[int, str]:
    return entry[0], entry[1]


def _last_delivery(deliveries: tuple[Any, ...], rule_id: str) -> int | None:
    for at, _, rule in reversed(deliveries):
        if rule == rule_id:
            return at
    return None


def _count(deliveries: tuple[Any, ...], cap: Cap, at_ms: int, zone: str) -> int:
    """Deliveries that count towards ``cap`` at ``at_ms``: in its rolling window, or on the same local day."""
    channel = cap.channel
    entries = [e for e in deliveries if channel == ANY_CHANNEL or e[1] == channel]
    if cap.per == LOCAL_DAY:
        today = local_time(zone, at_ms)[1]
        return sum(1 for at, _, _ in entries if at <= at_ms and local_time(zone, at)[1] == today)
    start = at_ms - cap.per  # type: ignore[operator]
    return sum(1 for at, _, _ in entries if start < at <= at_ms)
