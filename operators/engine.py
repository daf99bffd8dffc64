"""The per-shard engine: the customer stage and the identity stage in front of it.

Customers are spread over a fixed number of shards (by a stable hash of their id), so
results do not depend on the number of workers. Each shard keeps its own event-time
clock: the largest event time it has seen minus the allowed lateness. A timer fires when
the clock passes its due time (also for customers who send nothing more), and before any
later event of its own customer is applied. The engine is plain Python: the Bytewax
operator in :mod:`operators.customer_state` (and :class:`operators.pipeline.Pipeline`
in-process) only feeds it batches.

:class:`CustomerStage` keeps customers (features, timers, rules, decisions, written by
:class:`operators.decisions.DecisionWriter`); :class:`IdentityStage` is a customer stage for
anonymous customers with identity resolution in front. Every event enters the identity stage, keyed by its
``anonymousId`` (else its ``userId``): it drops duplicates, dead-letters future-dated
events, keeps anonymous customers, links an anonymous id to a ``userId`` when an event
carries both, and forwards every identified event to the ``customer`` stage, keyed by the
customer, handing over the anonymous state on linking; later events with either id reach
the same customer.

Order. Both stages apply events in merge-key order (:func:`operators.parse.order_key`:
event time reached by the event's source partition, partition, offset), whatever the
number of workers or how the input was batched (:mod:`operators.ordering`). Each source
partition sends every identity shard a :class:`Tick` after each batch (its mark and last
key); an identity shard applies held-back events up to the smallest key all partitions have
passed, then passes its own tick on to every customer shard, which does the same over the
identity shards. A partition with
nothing to read (end of a recording, or a live topic partition that is idle) holds back
nothing. Clocks follow the partitions' marks, so a shard whose customers are quiet still
sees the clock move, and "late" means late for the input, not for one shard. Once every
partition is idle, a shard hears the ticks only when it has events, or timers (or its daily
sweep) the clock passes, and catches up before its next events (:class:`operators.pipeline.TickFanout`).
"""

from __future__ import annotations

import pickle
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

import orjson

from operators.attribution import Attributor
from operators.decisions import DecisionWriter, RuleFailed, bump
from operators.experiments import ORDER, Assignment, Experiments, Measurement, deciding
from operators.models import FEATURES_KEY, ModelMode, ModelsSnapshot, ShardModels, merge_open
from operators.models.bandit import segment
from operators.models.propensity import decision_features as view_inputs
from operators.offers import REDEMPTION_FIELDS, OfferCatalogue, merge_redemptions, refusal_detail
from operators.ordering import CatchUp, OrderedRelease, Tick, shard_of
from operators.parse import count_notes
from operators.policy import BUDGET_SPENT, POLICY_TIMER, Candidate, PolicyStage
from operators.reasons import Reasons, held_by_dwell
from operators.rule_program import NativeRules
from operators.rules import CompiledAudience, CompiledRules, CompiledTrigger
from operators.timers import TimerQueue
from schemas import match_keys
from schemas.envelope import Envelope
from schemas.erasures import Ledger, add_erasure, erasure_record
from schemas.errors import RecoveryStoreError
from schemas.items import Output, fields_getter
from schemas.offers import Offer
from schemas.records import decision_id, iso_ms
from schemas.rules import NEXT_BEST, TriggerRule
from schemas.streams import ERASURES, MODELS, PROFILES
from state import codec
from state._native import (
    CustomerStep,
    Dedupe,
    IdentityPass,
    Links,
    anonymous_hash,
    decision_features,
    unlink_customer,
)
from state.affinity import DAY_MS
from state.catalogue import ORDERS, FeatureView, profile
from state.customer import Checkpoint, CustomerState, Lifecycle, shared_audiences
from state.journal import Journal, JournalRef
from state.journal import load as load_journal
from state.reference import Reference
from state.store import CustomerStore
from state.update import apply_event, event_zone, feature_update, known_zone, product_details

# 7: both stages' shards under one Bytewax key per shard number; the changes the shard's store may not
# hold yet travel in the snapshot. 8: a customer's features are the compiled record's bytes; its timers,
# decisions fired, open decisions and offers flat tuples and packed bytes; identity links by the hash of
# the anonymous id; with a customer store, the recommender and the dedupe memory are kept there as base
# and journals (state.journal), and the snapshot refers to them. 9: a customer's timers, decisions fired,
# open decisions and offers are the bytes of its compiled bookkeeping record. 10: the open decisions'
# features in that record hold whole numbers as varints. 11: a customer's time zone, contact policy record,
# offers redeemed, experiment exposures and deliveries kept for attribution. 12: a customer's hashed email
# and phone (match keys)
SNAPSHOT_FORMAT = 12
MAX_UNSAVED = 3  # snapshots (and pre-saves) whose changes may wait for the customer store before the next waits
RECHECK = "~recheck"
OUTCOME = "~outcome"  # the open decisions' horizon: their outcome is "no order" when it passes
REWARD = "~reward"  # the open offer choices' reward window: no reward when it passes
PRODUCT_TOUCHES = frozenset({"Product Viewed", "Product Added"})
REWARD_EVENTS = {"Promotion Clicked": "promotion_id", **REDEMPTION_FIELDS}  # event -> offer id field
CONVERSIONS = frozenset(REDEMPTION_FIELDS)  # the events that reward a choice under the `net_value` reward
RESOLVING = frozenset({"Order Completed", *REWARD_EVENTS})  # events that can resolve open decisions or offers
ERASURE = "Erasure Requested"
CONSENT = "Consent Updated"
IDENTIFY = "identify"
MAX_UNKNOWN_NAMES = 50

Role = Literal["identity", "customer"]


@dataclass(frozen=True)
class EngineConfig:
    """Event-time semantics and bounds of the per-shard engine."""

    lateness_ms: int = 5 * 60_000
    max_skew_ms: int = 3_600_000
    max_age_ms: int = 365 * DAY_MS  # events older than the event time reached by this much are dead-lettered
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    state_ttl_ms: int = 730 * DAY_MS
    dedupe_per_shard: int = 20_000
    links_per_shard: int = 50_000
    source_partitions: int = 1
    snapshots: bool = False
    state_store: Path | None = None  # with snapshots: customers kept here, written incrementally (state.store)
    profile_ms: int | None = None  # send changed customers' profiles (for the live store) this often
    models: ModelMode = "learn"
    propensity_horizon_ms: int = 7 * DAY_MS
    initial_models: dict[str, Any] | None = None  # parameters to start from (a model file's content)
    reference: Reference | None = None  # stores and products, enriching events and offers
    erased: Ledger = field(default_factory=dict)  # the erasure ledger read before the run (shared, never changed)
    phone_region: str = "US"  # region of a national phone number of a customer with no known country


@dataclass(slots=True)
class Forward:
    """An event handed from the identity stage to a customer other than its ``userId``'s, or with the
    anonymous state it links (``carried``). Any other event is handed on as the envelope itself,
    for its ``userId``."""

    env: Envelope
    customer_id: str
    carried: CustomerState | None = None

    @property
    def seq(self) -> int:
        return self.env.seq

    def __reduce__(self) -> tuple[type[Forward], tuple[Any, ...]]:
        return Forward, _FORWARD_FIELDS(self)


_FORWARD_FIELDS = fields_getter(Forward)


class CustomerStage:
    """The customer stage of one shard: its customers' features, timers, rules and decisions, and the
    shard's event-time clock. Forwarded events are applied in merge-key order (see
    :mod:`operators.ordering`); a timer fires when the clock passes its due time, and before any
    later event of its own customer is applied."""

    role: Role = "customer"
    population = "customers"  # the name of its customer count in the stage's counters
    sends_profiles = True  # changed customers' profiles go to the live store from this stage

    def __init__(self, rules: CompiledRules, config: EngineConfig, upstreams: int = 1) -> None:
        self.rules = rules
        self.config = config
        self.native = NativeRules(rules, config.lifecycle)
        self.step: CustomerStep | None = self.native.customer_step(rules, RECHECK)  # None: the Python path
        self.firing = self.native.timer_firing(rules)  # timed triggers' timers, with the step
        self.reasons = Reasons(rules, config.lifecycle)
        self.ordered = OrderedRelease(upstreams, self._merge_key)
        self.customers: dict[str, CustomerState] = {}
        self.timers = TimerQueue(self.customers)
        self.clock: int | None = None
        self.swept_day: int | None = None
        self.stats: dict[str, Any] = {}
        self.writer = DecisionWriter(rules.version, self.stats)
        self.catalogue = OfferCatalogue(rules.offers, config.reference, rules.policy.timezone) if rules.offers else None
        self.writer.offer_ids = frozenset(offer.id for offer in rules.offers)
        self.offers_by_id = {offer.id: offer for offer in rules.offers}
        self.experiments = Experiments(rules.experiments)
        self.measurement = Measurement(rules.experiments, self.writer) if rules.experiments.active else None
        self.attribution = Attributor(rules.experiments.attribution, self.writer)
        self.policy = PolicyStage(rules, self.writer, self._deliver, self._await, self._offer_value, self._expose)
        self.dirty: set[str] = set()
        self.changed: set[str] = set()  # customers whose profile changed since the last profiles
        self.models = self._models_for_mode(None)
        self.scorers = self.models.scorers if self.models is not None else None
        self.encoded: dict[str, bytes] = {}  # customers' snapshot encodings, when kept in the snapshot itself
        self.snapshot_seq = 0  # snapshots taken (and restored), when customers are kept in a store
        self.store: CustomerStore | None = None
        self.unsaved: dict[int, dict[str, bytes | None]] = {}  # snapshot -> changes the store may not hold yet
        self.journals: dict[str, Journal] = {}  # the large states kept in the store, by name (see _journalled)

    _merge_key = staticmethod(attrgetter("seq"))  # what waits: an envelope or a Forward

    # --- entry point -------------------------------------------------------------------
    def process(self, item: Any, out: list[Any]) -> None:
        """Take one item; append outputs (and, from the identity stage, forwards and ticks) to ``out``."""
        self.process_batch((item,), out)

    def process_batch(self, items: Iterable[Any], out: list[Any]) -> None:
        """Take a batch of items; append what they cause to ``out``.

        Events and forwards wait in the ordered release until every upstream has passed them;
        outputs (dead letters) pass straight through. The batch's ticks are noted first and
        acted on once: anything that arrives after an upstream's tick lies beyond it, so one
        release gives what a release per tick would. A :class:`CatchUp` (the progress missed while
        there was nothing to do) is acted on at once, before the items after it.
        """
        last_tick = None
        ticks, pending = self.ordered.ticks, self.ordered.pending
        for item in items:
            kind = type(item)
            if kind is Envelope:
                pending.append(item)
            elif kind is tuple:  # the ticks of several upstreams, gathered on the way
                for tick in item:
                    ticks[tick.origin] = last_tick = tick
            elif kind is Tick:
                ticks[item.origin] = last_tick = item
            elif kind is CatchUp:
                for tick in item.ticks:
                    ticks[tick.origin] = tick
                self._progress(item.ticks[-1], out)
                last_tick = None
            elif kind is Output:
                out.append(item)
            else:  # a Forward, or a chunk mark
                pending.append(item)
        if last_tick is not None:
            self._progress(last_tick, out)

    def _progress(self, tick: Tick, out: list[Any]) -> tuple[int | None, int | None, bool] | None:
        """Apply what every upstream has passed and move the clock (``tick`` is the latest one);
        return the upstreams' progress (see :meth:`OrderedRelease.progress`)."""
        self.writer.arrived = time.time()
        progress = self.ordered.progress()
        if progress is None:
            return None
        upto, reached, _ = progress
        self._apply_released(self.ordered.release(upto), out)
        if reached is not None:
            self._advance(reached, out)
        return progress

    def _apply_released(self, released: list[Any], out: list[Any]) -> None:
        writer, lateness = self.writer, self.config.lateness_ms
        for item in released:
            if type(item) is Forward:
                env, customer_id, carried = item.env, item.customer_id, item.carried
            else:
                env, customer_id, carried = item, item.user_id, None
            writer.seq, writer.arrived = env.seq, env.arrived
            if self.clock is None or env.mark_ms - lateness > self.clock:
                self._advance(env.mark_ms, out)
            self._customer_event(env, customer_id, out, carried)

    def finish(self, out: list[Any]) -> dict[str, Any]:
        """At the end of bounded input: apply what is still held back; return this shard's counters."""
        self._apply_released(self.ordered.release(None), out)
        stats = dict(self.stats)
        if self.models is not None:
            stats["models"] = self.models.stats()
            if self.sends_profiles:  # the customer stage's replicas: merged into the run's model file
                out.append(Output(MODELS, self.rules.version, 0, 0, orjson.dumps(self.models.export())))
        stats[self.population] = len(self.customers)
        return stats

    # --- customer state ----------------------------------------------------------------
    def _customer_event(
        self, env: Envelope, customer_id: str, out: list[Any], carried: CustomerState | None = None
    ) -> None:
        """Apply one event to its customer, and count it.

        Should that raise (a rule, a model, a feature), the event becomes a ``processing_error``
        dead letter instead: what it emitted is taken back and the customer is put back as it was
        before it (an expiry or the adoption of a linked anonymous state, done first, stand). Its
        checkpoint is the bookkeeping fields; the features record puts itself back (see :meth:`_apply`),
        or, on the Python path, one native copy of it is kept too (``bench/undo_bench.py``).
        """
        start, before, applying, late = len(out), None, False, False
        try:
            if env.name == ERASURE:
                self._erase(customer_id, env, out)
            else:
                known = customer_id in self.customers
                if not known:  # its marks before this event, in case it must leave no trace
                    marks = (customer_id in self.changed, customer_id in self.dirty)
                state, new = self._adopt(env, customer_id, carried, out)
                whole = self.step is None  # the Python path: the features are copied too
                start, before, applying = len(out), None if new else state.checkpoint(whole), True
                late = self.clock is not None and env.ts_ms < self.clock
                if self._settle(state, env, late, out):  # what it settled stands, whatever follows
                    start, before = len(out), state.checkpoint(whole)
                self._apply(state, env, new or carried is not None, late, out)
                self.policy.flush(out)
        except Exception as err:
            self.policy.discard()
            self.writer.retract(out, start)
            if applying:
                self._restore(state, before)
                if before is None and not known:  # new to this shard: there is no profile to delete
                    self._unmark(customer_id, *marks)
            self.writer.failed_event(env, err, out)
            return
        self._count(env)
        if late:
            bump(self.stats, "late")

    def _adopt(
        self, env: Envelope, customer_id: str, carried: CustomerState | None, out: list[Any]
    ) -> tuple[CustomerState, bool]:
        """The customer's state for ``env`` (expired first if idle too long, merged with ``carried``),
        and whether it is new (nothing known before, nothing carried)."""
        state = self.customers.get(customer_id)
        if state is not None and state.features.last_seen_ms + self.config.state_ttl_ms <= env.ts_ms:
            self._expire(state, state.features.last_seen_ms + self.config.state_ttl_ms, out)
            state = None
        new = state is None and carried is None
        if state is None:
            state = self.customers[customer_id] = CustomerState(customer_id, env.ts_ms)
        if carried is not None:
            state.merge(carried, env.ts_ms)
            merge_open(state, carried)
            merge_redemptions(state, carried)
            self.timers.schedule(state)  # an adopted timer may be due first
        self._mark(customer_id)
        return state, new

    def _settle(self, state: CustomerState, env: Envelope, late: bool, out: list[Any]) -> bool:
        """Before ``env`` is applied: fire the customer's timers due by its time (each on its own
        guard) and learn the outcomes it resolves (an order, a click). Return whether anything was
        done: those stand even if applying ``env`` fails, since the models cannot unlearn.

        The customer's heap entry is never later than its first timer (:class:`TimerQueue`), so a
        customer whose entry is later than ``env`` has no timer due; only the events that can
        resolve an outcome are shown to the models.
        """
        scheduled = state.scheduled_ms
        due = not late and scheduled is not None and scheduled <= env.ts_ms
        fired = self._fire_due(state, env.ts_ms, out) if due else 0
        redeemed = self.catalogue is not None and env.name in REDEMPTION_FIELDS and self._redeem(state, env)
        resolved = self.models is not None and env.name in RESOLVING and self._learn_from(state, env)
        converted = env.name == ORDER and (state.touches or state.exposures) and self._converted(state, env, out)
        return bool(fired or redeemed or resolved or converted)

    def _converted(self, state: CustomerState, env: Envelope, out: list[Any]) -> bool:
        """An order of a customer with deliveries or exposures before it: credited to the deliveries
        (attribution), and a conversion in the experiments it was exposed in."""
        props = env.event.properties
        amount = max(props.amount(), 0.0)  # lines of returned items may sum below zero
        self.attribution.ordered(state, env.ts_ms, str(props.order_id), amount, env.message_id, out)
        if self.measurement is not None and state.exposures:
            self.measurement.ordered(state, env.ts_ms, amount, out)
        return True

    def _apply(self, state: CustomerState, env: Envelope, fresh: bool, late: bool, out: list[Any]) -> None:
        """Apply ``env`` to features, timers, rules and audiences (all of them when ``fresh``).

        One native call (:class:`state._native.CustomerStep`) applies the features and does what
        the Python path of :meth:`_apply_rules` does, and hands back only what Python must act on
        (an event that fires triggers at once takes the Python path past the features). Should
        anything raise, the features record is put back as it was before ``env``, in place: the
        native call does so itself, and hands over the record as it was for the Python code after it.
        """
        reference = self.config.reference
        zone = event_zone(env, reference)  # a till's event without one: its store's
        if zone is not None and zone != state.timezone and known_zone(zone) is not None:
            state.timezone = sys.intern(zone)  # local time (quiet hours, days); one string per zone, shared
        if env.name == CONSENT:
            self.policy.consent_changed(state, env)
        elif env.name == IDENTIFY:
            traits = env.event.traits
            if traits.email is not None or traits.phone is not None:
                self._keep_match_keys(state, traits)
        if self.models is not None and env.name in PRODUCT_TOUCHES:
            props = env.event.properties
            if props.product_id:
                viewed, category = env.name == "Product Viewed", props.category
                if category is None and reference is not None:
                    category, _ = product_details(reference, props.product_id, None, props.price)
                self.models.product_touched(state, props.product_id, category, env.message_id, viewed, env.ts_ms)
        elif self.models is not None and env.name == ORDER:
            self.models.order_completed(env.event.properties.products)
        if self.step is None:
            apply_event(state, env, self.config.lifecycle, reference)
            self._apply_rules(state, env, fresh, late, out)
            return
        update, args = feature_update(env, self.config.lifecycle, reference, zone)
        done = self.step.run(state, env, late, self.clock, fresh, update, args)
        if done is None:
            return
        changes, reschedule, before = done
        if reschedule:
            self.timers.schedule(state)
        if changes is None:
            return
        try:
            if changes is False:
                self._apply_rules(state, env, fresh, late, out)
            else:
                now = max(env.ts_ms, self.clock or env.ts_ms)
                self._change_audiences(state, changes, env, now, [env.message_id], out)
        except Exception:
            CustomerStep.put_back(state.features, before)
            raise

    def _keep_match_keys(self, state: CustomerState, traits: Any) -> None:
        """Keep the hashes of an identify event's ``email`` and ``phone`` (a national number read in the
        customer's country, else ``phone_region``); count the values that do not normalise."""
        country = traits.country if traits.country is not None else state.features.traits.get("country")
        region = match_keys.phone_region(country, self.config.phone_region)
        email, phone, digits, invalid = match_keys.digests(traits.email, traits.phone, region)
        state.match_keys = match_keys.pack(state.match_keys, email, phone, digits)
        counts = self.stats.setdefault("match_keys", {})
        for name, kept in (("email", email), ("phone", phone)):
            if kept is not None:
                bump(counts, f"{name}_kept")
        for name in invalid:
            bump(counts, f"{name}_invalid")

    def _apply_rules(self, state: CustomerState, env: Envelope, fresh: bool, late: bool, out: list[Any]) -> None:
        """The Python path of :meth:`_apply` past the features: timers, triggers, audiences."""
        now = max(env.ts_ms, self.clock or env.ts_ms)
        rules = self.rules
        for trigger in rules.cancelling.get(env.name, ()):
            state.drop_timer(trigger.id)
        for trigger in rules.arming.get(env.name, ()):
            self._arm(state, trigger, env, late)
        if not late:
            for trigger in rules.immediate.get(env.name, ()):
                self._trigger(state, trigger, env, now, self._cause(trigger, state, env), [env.message_id], out)
        group = self.native.every if fresh else self.native.group_for(env.name)  # fresh: every audience looks
        self._audiences(state, group, env, now, [env.message_id], out)
        self._keep_alive(state, now, moved_earlier=late or env.name in ORDERS)

    def _arm(self, state: CustomerState, trigger: CompiledTrigger, env: Envelope, late: bool) -> None:
        rule = trigger.rule
        assert rule.after is not None
        cause = self._cause(trigger, state, env)
        if state.fired_cause(rule.id) == cause:
            return
        due = env.ts_ms + rule.after
        if late and due <= self.clock:  # type: ignore[operator]
            return
        state.arm_timer(due, rule.id, cause, env.message_id)  # the same cause: later, caused by this event too
        self.timers.schedule(state)

    def _cause(self, trigger: CompiledTrigger, state: CustomerState, env: Envelope | None) -> str:
        """What ``trigger`` fires at most once for, as a string."""
        once_per = trigger.rule.once_per
        if once_per == "cart":
            return "none" if (cart := state.features.cart_id) is None else cart
        if once_per == "session":
            return "none" if (session := state.features.session_id) is None else session
        if once_per == "order":
            return state.features.last_order_id or "none"
        if once_per == "customer":
            return "customer"
        if env is None:
            return "none"
        if once_per == "day":
            return datetime.fromtimestamp(env.ts_ms / 1000, tz=UTC).date().isoformat()
        return env.message_id

    # --- timers ------------------------------------------------------------------------
    def _advance(self, ts_ms: int, out: list[Any]) -> None:
        """Move the shard clock to ``ts_ms`` minus the allowed lateness and fire what is due."""
        candidate = ts_ms - self.config.lateness_ms
        if self.clock is not None and candidate <= self.clock:
            return
        self.clock = candidate
        if self.timers.any_due(candidate):
            for state, rule_id in self.timers.due(candidate):
                self._fire(state, rule_id, out)
        day = candidate // DAY_MS
        if day != self.swept_day:
            self.swept_day = day
            self._sweep(candidate, out)

    def _fire_due(self, state: CustomerState, upto_ms: int, out: list[Any]) -> int:
        """Fire this customer's timers due by ``upto_ms`` (before its next event is applied); return
        how many were due."""
        due = state.due_rules(upto_ms)
        for rule_id in due:
            if state.timer_due(rule_id) is not None and state.id in self.customers:
                self._fire(state, rule_id, out)
        return len(due)

    def _fire(self, state: CustomerState, rule_id: str, out: list[Any]) -> None:
        """Fire one timer. Should that raise, the timer is dropped as a ``processing_error`` dead
        letter, what it emitted is taken back and the customer is put back as it was (a timer
        changes none of the customer's features)."""
        start, before = len(out), state.checkpoint(features=False)
        try:
            self._fire_timer(state, rule_id, out)
            self.policy.flush(out)
        except Exception as err:
            self.policy.discard()
            self.writer.retract(out, start)
            self._restore(state, before)
            self.writer.failed_timer(state.id, state.drop_timer(rule_id), err, out)  # type: ignore[arg-type]

    def _fire_timer(self, state: CustomerState, rule_id: str, out: list[Any]) -> None:
        """Take the timer and do what it is for: a timed trigger's decision, an audience recheck, the
        expiry of the models' open items. With the native step, a timed trigger's timer is taken and
        checked (fired for its cause already, stale, a native condition) in one call."""
        self._mark(state.id)
        trigger = self.rules.timers.get(rule_id)
        if trigger is not None and self.step is not None:
            taken = self.firing.fire(state, rule_id)
            if taken is not None:
                due, cause, caused_by, verdict = taken
                self._trigger(state, trigger, None, due, cause, caused_by, out, verdict, checked=True)
            return
        due, _, cause, *caused_by = state.drop_timer(rule_id)  # type: ignore[misc]
        dwelling = self.rules.dwell_timers.get(rule_id)
        if dwelling is not None:  # a member's minimum dwell is over: it leaves now if its exit condition holds
            changes = self.native.audience_changes(
                state.features, due, state.audiences, self.native.dwell_group(dwelling)
            )
            if changes is not None:
                self._change_audiences(state, changes, None, due, [state.last_event_id], out, dwell_over=True)
            return
        if rule_id == RECHECK:
            self._audiences(state, self.native.timed, None, due, caused_by, out)
            self._keep_alive(state, due)
            return
        if rule_id == OUTCOME:
            if self.models is not None:
                self._await(state, OUTCOME, self.models.expire(state, due))
            return
        if rule_id == POLICY_TIMER:  # held decisions: released on minute boundaries, often many at once
            writer = self.writer
            seq, writer.seq = writer.seq, 0  # so their records sort by time and customer, whatever the batches
            try:
                self.policy.release(state, due, out)
            finally:
                writer.seq = seq
            return
        if rule_id == REWARD:
            if self.models is not None:
                self._await(state, REWARD, self.models.expire_offers(state, due))
            return
        if trigger is None or state.fired_cause(rule_id) == cause:
            return
        if trigger.rule.once_per in ("cart", "session", "order") and self._cause(trigger, state, None) != cause:
            return  # the cart was ordered, the session or the last order changed: stale
        self._trigger(state, trigger, None, due, cause, caused_by, out)

    def _await(self, state: CustomerState, timer_id: str, due_ms: int | None) -> None:
        """Keep a model's timer (``OUTCOME``, ``REWARD``) at the expiry of its oldest open item."""
        if due_ms is None:
            state.drop_timer(timer_id)
            return
        if state.timer_due(timer_id) == due_ms:
            return
        state.set_timer(due_ms, timer_id, timer_id)
        self.timers.schedule(state)  # a later due time is rescheduled lazily when the heap reaches it

    def _learn_from(self, state: CustomerState, env: Envelope) -> bool:
        """Outcomes an event resolves: an order for open decisions, a click or redemption for offers.
        Return whether there were any to look at."""
        models = self.models
        assert models is not None
        resolved = False
        if env.name == "Order Completed" and state.outcomes:
            self._await(state, OUTCOME, models.ordered(state, env.ts_ms))
            resolved = True
        field = REWARD_EVENTS.get(env.name)
        if field is not None and state.offers_open:
            offer_id = getattr(env.event.properties, field, None)
            reward = None if offer_id is None else self._reward(str(offer_id), env)
            if reward is not None:
                self._await(state, REWARD, models.rewarded(state, str(offer_id), env.ts_ms, reward))
                resolved = True
        return resolved

    def _reward(self, offer_id: str, env: Envelope) -> float | None:
        """What ``env`` rewards a choice of ``offer_id`` with: 1 (``conversion``), or the redemption's
        value net of the discount (``net_value``; a click is no conversion: ``None``)."""
        if self.rules.next_best_offer.reward == "conversion":
            return 1.0
        if env.name not in CONVERSIONS or self.catalogue is None or offer_id not in self.catalogue:
            return None
        return self.catalogue.net_value(offer_id, env)

    def _redeem(self, state: CustomerState, env: Envelope) -> bool:
        """Count a redemption of a catalogue offer (per offer for the shard, and for the customer)."""
        return self.catalogue.redeem(state, env, self.stats) is not None  # type: ignore[union-attr]

    def _keep_alive(self, state: CustomerState, now_ms: int, moved_earlier: bool = True) -> None:
        """Schedule the next audience recheck (the next lifecycle boundary in event time).

        Activity only moves boundaries later, and a pending recheck that comes too early just
        re-evaluates and reschedules itself; only orders (a new purchase rhythm) and late
        events (an earlier first sighting) can move a boundary earlier.
        """
        if not self.rules.time_audiences:
            return
        pending = state.timer_due(RECHECK)
        if pending is None or moved_earlier:
            rules = self.rules
            boundary = state.next_boundary(now_ms, self.config.lifecycle, rules.reads_lapse_risk, rules.reads_p_alive)
            if boundary is not None and (pending is None or boundary < pending):
                state.set_timer(boundary, RECHECK, "recheck", (state.last_event_id,))
                self.timers.schedule(state)

    def _sweep(self, now_ms: int, out: list[Any]) -> None:
        """Drop the state of customers inactive for ``state_ttl`` (once per day of event time)."""
        ttl = self.config.state_ttl_ms
        expired = [state for state in self.customers.values() if state.last_seen_ms + ttl <= now_ms]
        for state in sorted(expired, key=lambda s: (s.last_seen_ms, s.id)):
            self._expire(state, state.last_seen_ms + ttl, out)

    # --- decisions ---------------------------------------------------------------------
    def _trigger(
        self,
        state: CustomerState,
        trigger: CompiledTrigger,
        env: Envelope | None,
        at_ms: int,
        cause: str,
        caused_by: list[str],
        out: list[Any],
        verdict: bool | None = None,
        checked: bool = False,
    ) -> None:
        """Fire ``trigger`` for ``cause`` unless it fired for it already, if its condition holds.
        ``checked``: the timer firing checked the cause, and the condition natively (``verdict``:
        ``True`` it holds, ``None`` evaluate it in Python)."""
        try:
            if not checked:
                if state.fired_cause(trigger.id) == cause:
                    return
                verdict = trigger.when is None or self.native.holds(trigger, state.features, at_ms)
            self._decide(state, trigger, env, at_ms, cause, caused_by, verdict, out)
        except Exception as err:
            raise RuleFailed(trigger.id) from err

    def _decide(
        self,
        state: CustomerState,
        trigger: CompiledTrigger,
        env: Envelope | None,
        at_ms: int,
        cause: str,
        caused_by: list[str],
        verdict: bool | None,
        out: list[Any],
    ) -> None:
        """Fire ``trigger`` for ``cause`` if its condition holds (``verdict``, the native program's;
        ``None``: evaluated here). A condition the native program evaluates, the models' inputs and the
        bandit's segment are read from the features record; a :class:`FeatureView` is built only for
        what only Python reads (a condition, a reason's value)."""
        rule = trigger.rule
        views, view, passed = self._views(state, env, at_ms), None, verdict
        if passed is None:  # a condition the native program leaves to Python
            view = views()
            passed = bool(trigger.when.evaluate(view))  # type: ignore[union-attr]
        models, score = self.models, None
        if models is not None and (passed or (view is not None and view.has_read("propensity"))):
            score, x = self._score(state, at_ms, view)  # what the model said at this decision point
            self._await(state, OUTCOME, models.decided(state, at_ms, x, rule.id))
        if not passed:
            return
        state.set_fired(rule.id, cause)
        candidate = Candidate(trigger, cause, tuple(caused_by), at_ms, score, env)
        refused = self._offer_refusal(state, rule, at_ms)
        if refused is not None:  # before the policy: a decision without an offer to give competes with none
            self.writer.suppression(rule, state.id, candidate, BUDGET_SPENT, refused, at_ms, out)
            return
        if rule.shadow:  # recorded as decided, never delivered: the policy does not look
            self._deliver(state, candidate, at_ms, out)
        else:
            self.policy.submit(state, candidate, out)

    def _deliver(self, state: CustomerState, candidate: Candidate, at_ms: int, out: list[Any]) -> None:
        """Write the trigger of a decision the policy lets through, at ``at_ms`` (its decision time, or
        the end of the wait it was held for): the offer, recommendations and reason as of then."""
        trigger, env, models = candidate.trigger, candidate.env, self.models
        rule, cause, score = trigger.rule, candidate.cause, candidate.score
        views = self._views(state, env, at_ms)
        event_id = decision_id(state.id, rule.id, cause)
        refused = self._offer_refusal(state, rule, at_ms) if at_ms != candidate.decided_ms else None
        if refused is not None:  # held until now, and its offer may no longer be given
            self.writer.suppression(rule, state.id, candidate, BUDGET_SPENT, refused, at_ms, out)
            return
        offer_id, content, offer_choice = rule.offer_id, rule.content, None
        if offer_id == NEXT_BEST:
            offer_id, content, offer_choice = self._next_best_offer(state, at_ms, rule, event_id)
        if self.measurement is not None:
            content = self._arm_content(state, rule, offer_id, content)
        reason = self.reasons.trigger(trigger)
        text = reason.text
        if reason.shown:
            text += self.reasons.values(reason, state.features, at_ms, views)
        self.policy.delivered(state, rule, at_ms)
        self.writer.trigger(
            rule,
            state.id,
            event_id,
            at_ms,
            env is None,
            out,
            reason=text,
            cause=cause,
            caused_by=list(candidate.caused_by),
            content=content,
            offer_id=offer_id,
            offer_choice=offer_choice,
            recommendations=models.recommend(state, rule.recommend.k, at_ms, rule.recommend.include_bought)
            if models is not None and rule.recommend
            else None,
            score=None if score is None else round(score, 4),
            expires_at=iso_ms(at_ms + rule.expires_in),
        )
        if not rule.shadow:
            self.attribution.delivered(state, at_ms, event_id, rule.id, rule.channel, offer_id)

    def _arm_content(
        self, state: CustomerState, rule: TriggerRule, offer_id: str | None, content: dict[str, Any]
    ) -> dict[str, Any]:
        """The content of the customer's arm of ``rule``'s test instead of the rule's (with a ``next_best``
        offer's content over it); ``content`` when the arm keeps the rule's."""
        arm = self.experiments.content(state.id, rule, state.exposures)
        if arm is None:
            return content
        if rule.offer_id != NEXT_BEST:
            return arm
        offer = next((offer for offer in self.rules.offers if offer.id == offer_id), None)
        return arm if offer is None else {**arm, **offer.content}

    def _expose(self, state: CustomerState, rule: TriggerRule, at_ms: int, out: list[Any]) -> Assignment | None:
        """The contact policy's last gate: the customer's assignment for a decision of ``rule`` about to
        be delivered (``None``: in no experiment), its exposures noted."""
        if self.measurement is None:
            return None
        found = self.experiments.assignments(state.id, rule, state.exposures)
        if not found:
            return None
        self.measurement.expose(state, found, at_ms, out)
        return deciding(found)

    def _views(self, state: CustomerState, env: Envelope | None, now_ms: int) -> Callable[[], FeatureView]:
        """A function giving one :class:`FeatureView` of the customer at ``now_ms``, built on its first
        call (if a condition or a reason's value is read in Python)."""
        made: list[FeatureView] = []

        def view() -> FeatureView:
            if not made:
                made.append(FeatureView(state, env, now_ms, self.config.lifecycle, self.scorers))
            return made[0]

        return view

    def _score(self, state: CustomerState, at_ms: int, view: FeatureView | None) -> tuple[float, tuple[float, ...]]:
        """The propensity score at a decision point and the model's inputs, read from the features
        record (or from ``view``, where a condition may have read them already)."""
        if view is not None:
            return view["propensity"], view.memo(FEATURES_KEY, view_inputs)
        x = decision_features(state.features, at_ms, self.config.lifecycle.session_timeout_ms)
        return self.models.propensity.score(x), x  # type: ignore[union-attr]

    def _next_best_offer(
        self, state: CustomerState, at_ms: int, rule: TriggerRule, event_id: str
    ) -> tuple[str | None, dict[str, Any], dict[str, Any] | None]:
        """The offer for a ``next_best`` trigger: its id, the content, and how it was chosen."""
        eligible, _ = self._eligible_offers(state, rule, at_ms)
        if not eligible:
            return None, rule.content, None
        by_id = {offer.id: offer for offer in eligible}
        models = self.models
        if models is None:  # no policy: the first eligible offer of the catalogue
            return eligible[0].id, {**rule.content, **eligible[0].content}, None
        features, lifecycle = state.features, self.config.lifecycle
        stage = features.lifecycle(at_ms, lifecycle.new_days, lifecycle.lapse_days)
        choice, reward_due = models.choose_offer(
            state, segment(stage, features.orders, state.audiences), at_ms, event_id, list(by_id)
        )
        self._await(state, REWARD, reward_due)
        logged = {
            "policy": "epsilon_greedy",
            "exploration": models.bandit.exploration,
            "candidates": list(choice.candidates),
            "scores": choice.scores,
            "probability": choice.probability,
            "explored": choice.explored,
            "expected_rate": choice.expected_rate,
        }
        return choice.offer, {**rule.content, **by_id[choice.offer].content}, logged

    def _eligible_offers(
        self, state: CustomerState, rule: TriggerRule, at_ms: int
    ) -> tuple[list[Offer], list[tuple[str, str]]]:
        """The offers for ``rule``'s channel and the customer's audiences that may be given at ``at_ms``
        (catalogue order), and why each of the others may not."""
        offers = self.rules.eligible_offers(rule.channel, state.audiences)
        why_not, shard, shards, counts = self.catalogue.why_not, *self._budget_of(state)  # type: ignore[union-attr]
        refused = [
            (offer.id, why)
            for offer in offers
            if (why := why_not(offer.id, state, at_ms, shard, shards, counts)) is not None
        ]
        if not refused:
            return offers, refused
        out = {offer_id for offer_id, _ in refused}
        return [offer for offer in offers if offer.id not in out], refused

    def _offer_refusal(self, state: CustomerState, rule: TriggerRule, at_ms: int) -> str | None:
        """Why a decision of ``rule`` may not be delivered at ``at_ms`` for want of an offer (``None``: it
        may): the catalogue offer it names may not be given, or none of those a ``next_best`` one could
        take may (see :mod:`operators.offers`). Its suppression's reason is ``budget_spent``."""
        offer_id, catalogue = rule.offer_id, self.catalogue
        if offer_id is None or catalogue is None:
            return None
        if offer_id == NEXT_BEST:
            eligible, refused = self._eligible_offers(state, rule, at_ms)
            return refusal_detail(refused) if refused and not eligible else None
        why = catalogue.why_not(offer_id, state, at_ms, *self._budget_of(state)) if offer_id in catalogue else None
        return refusal_detail([(offer_id, why)]) if why is not None else None

    def _offer_value(self, state: CustomerState, rule: TriggerRule, at_ms: int) -> float:
        """What a decision of ``rule`` is worth when decisions compete (see :mod:`operators.policy`): its
        catalogue offer's ``value``; for ``next_best``, the best of the offers the customer may be given
        at ``at_ms``; 1 without an offer."""
        if rule.offer_id == NEXT_BEST:
            if self.catalogue is None:
                offers = self.rules.eligible_offers(rule.channel, state.audiences)
            else:
                offers = self._eligible_offers(state, rule, at_ms)[0]
            return max((offer.value for offer in offers), default=1.0)
        offer = self.offers_by_id.get(rule.offer_id) if rule.offer_id is not None else None
        return 1.0 if offer is None else offer.value

    def _budget_of(self, state: CustomerState) -> tuple[int | None, int, dict[str, dict[str, int]]]:
        """The customer's shard, the number of shards, and the shard's counts per offer: what the
        catalogue's budgets are checked against (an anonymous customer's shard owns no budget: ``None``)."""
        shards = self.ordered.upstreams
        shard = shard_of(state.id, shards) if self.role == "customer" else None
        return shard, shards, self.stats.get("offers", {})

    def _audiences(
        self,
        state: CustomerState,
        group: int | None,
        env: Envelope | None,
        now_ms: int,
        caused_by: list[str],
        out: list[Any],
    ) -> None:
        """Join and leave the audiences of ``group`` (see :class:`NativeRules`) whose condition changed.

        The native program evaluates them all in one call and names those whose membership changes,
        or which it leaves to Python; the features are read in Python only then, for the reason.
        """
        if group is None:
            return
        changes = self.native.audience_changes(state.features, now_ms, state.audiences, group)
        if changes is not None:
            self._change_audiences(state, changes, env, now_ms, caused_by, out)

    def _change_audiences(
        self,
        state: CustomerState,
        changes: list[tuple[int, bool | None]],
        env: Envelope | None,
        now_ms: int,
        caused_by: list[str],
        out: list[Any],
        dwell_over: bool = False,
    ) -> None:
        """Join and leave the audiences of ``changes`` (as the native program names them). A member
        whose minimum dwell is not over stays; ``dwell_over``: these changes come at the end of one."""
        view = self._views(state, env, now_ms)
        audience = self.rules.audiences[changes[0][0]]
        try:
            for position, native in changes:
                audience = self.rules.audiences[position]
                member = audience.member_key
                was = member in state.audiences
                inside = audience.inside(view(), was) if native is None else native
                if inside == was:
                    continue
                dwell = audience.dwell_timer
                if dwell is not None and not self._dwell(state, audience, inside, now_ms, caused_by):
                    continue
                if inside:
                    state.audiences = shared_audiences(tuple(sorted((*state.audiences, member))))
                else:
                    state.audiences = shared_audiences(tuple(a for a in state.audiences if a != member))
                exit_reason = None if inside else self.reasons.audience_exit(position)
                reason = exit_reason or self.reasons.audience(position)
                text = f"{reason.text} became {'true' if inside or exit_reason else 'false'}"
                if dwell_over and not inside:
                    text += held_by_dwell(audience.rule.min_dwell, now_ms)  # type: ignore[arg-type]
                if reason.shown:
                    text += self.reasons.values(reason, state.features, now_ms, view)
                self.writer.audience_change(state.id, audience, inside, text, now_ms, caused_by, out)
        except Exception as err:
            raise RuleFailed(audience.id) from err

    def _dwell(
        self, state: CustomerState, audience: CompiledAudience, inside: bool, now_ms: int, caused_by: list[str]
    ) -> bool:
        """Keep ``audience``'s minimum dwell for a customer entering (``inside``) or leaving it: an entry
        starts its timer; an exit before the timer is due is held (return ``False``), one after drops it."""
        timer = audience.dwell_timer
        assert timer is not None and audience.rule.min_dwell is not None
        if inside:
            state.set_timer(now_ms + audience.rule.min_dwell, timer, "dwell", caused_by[-1:])
            self.timers.schedule(state)
            return True
        held = state.timer_due(timer)
        if held is not None and held > now_ms:
            return False
        if held is not None:
            state.drop_timer(timer)
        return True

    def _leave_all(self, state: CustomerState, reason: str, at_ms: int, caused_by: list[str], out: list[Any]) -> None:
        """The customer leaves every audience, minimum dwell or not (linked, erased, expired)."""
        for member in state.audiences:
            audience = self.rules.audience_by_member.get(member)
            if audience is not None:
                self.writer.audience_change(state.id, audience, False, reason, at_ms, caused_by, out)
                if audience.dwell_timer is not None:
                    state.drop_timer(audience.dwell_timer)
        state.audiences = ()

    def _erase(self, customer_id: str, env: Envelope, out: list[Any]) -> None:
        """Apply an erasure: the customer leaves its audiences and is dropped (its live profile is
        deleted, held or not), and the erasure is recorded in the ledger (``erasures``)."""
        properties = env.event.properties
        state = self.customers.get(customer_id)
        if state is not None:
            self._leave_all(state, f"erasure requested ({properties.request_id})", env.ts_ms, [env.message_id], out)
            bump(self.stats, "erased")
        self._drop_customer(customer_id)
        if self.config.erased.get(customer_id, env.ts_ms - 1) < env.ts_ms:  # not in the ledger read already
            record = erasure_record(customer_id, env.ts_ms, properties.request_id, properties.regulation)
            out.append(Output(ERASURES, customer_id, env.ts_ms, env.seq, record))

    def _expire(self, state: CustomerState, at_ms: int, out: list[Any]) -> None:
        days = self.config.state_ttl_ms // DAY_MS
        self._leave_all(state, f"state expired after {days} days without activity", at_ms, [], out)
        self._drop_customer(state.id)
        bump(self.stats, "expired")

    def _drop_customer(self, customer_id: str) -> CustomerState | None:
        self._mark(customer_id)
        return self.customers.pop(customer_id, None)

    # --- input bookkeeping ---------------------------------------------------------------
    def _count(self, env: Envelope) -> None:
        if env.notes:
            count_notes(self.stats, env)
        if env.known:
            events = self.stats.get("events")
            if events is None:
                events = self.stats["events"] = {}
            events[env.name] = events.get(env.name, 0) + 1
            return
        unknown = self.stats.setdefault("unknown_events", {})
        if env.name in unknown or len(unknown) < MAX_UNKNOWN_NAMES:
            bump(unknown, env.name)
        else:
            bump(unknown, "(other names)")

    def _restore(self, state: CustomerState, before: Checkpoint | None) -> None:
        """Put a customer back as it was (``before``: its checkpoint, ``None``: it did not exist)."""
        self._mark(state.id)
        if before is None:
            self.customers.pop(state.id, None)
        else:
            state.rollback(before)  # in place: callers hold on to the object
            self.customers[state.id] = state

    # --- snapshots -----------------------------------------------------------------------
    def _unmark(self, customer_id: str, changed: bool, dirty: bool) -> None:
        """Take back :meth:`_mark` for a customer that was not marked before (as ``changed``, ``dirty``)."""
        if not changed:
            self.changed.discard(customer_id)
        if not dirty:
            self.dirty.discard(customer_id)

    def _mark(self, customer_id: str) -> None:
        if self.config.snapshots:
            self.dirty.add(customer_id)
        if self.config.profile_ms is not None and self.sends_profiles:
            self.changed.add(customer_id)

    def profiles(self, out: list[Any]) -> None:
        """Send the profiles of customers changed since the last call (a dropped one as deleted)."""
        for customer_id in sorted(self.changed):
            state = self.customers.get(customer_id)
            if state is None:
                body = orjson.dumps({"customer_id": customer_id, "deleted": True})
            else:
                now = max(state.last_seen_ms, self.clock or 0)
                document = profile(state, now, self.config.lifecycle)
                document["updated_at"] = iso_ms(now)
                body = orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
            out.append(Output(PROFILES, customer_id, 0, self.writer.seq, body))
        self.changed.clear()

    def snapshot(self) -> tuple[int, dict[str, Any]] | None:
        """A versioned, immutable snapshot; only customers changed since the last one are encoded.

        With a state store (``config.state_store``) they are handed to the store's thread under the
        snapshot's number (see :meth:`_save`); without, the snapshot holds every customer's encoding.
        """
        if not self.config.snapshots:
            return None
        changed = self._take_changed()
        customers, store, unsaved, refs = None, None, None, {}
        if self.config.state_store is None:
            for customer_id, blob in changed.items():
                if blob is None:
                    self.encoded.pop(customer_id, None)
                else:
                    self.encoded[customer_id] = blob
            customers = dict(self.encoded)
        else:
            store, unsaved, refs = self._save(changed)
        shard = {
            "customers": customers,
            "store": store,  # (store name or None before any customer, the snapshot it holds for sure); None: inline
            "unsaved": unsaved,  # with a store: the changes it may not hold yet, by customer
            "seq": self.snapshot_seq,
            "clock": self.clock,
            "swept_day": self.swept_day,
            "stats": pickle.dumps(self.stats),
            # items held back until every upstream has passed them; after a restart every
            # upstream reports its progress afresh, so their last ticks are not kept
            "pending": pickle.dumps(self.ordered.state()),
            "changed": sorted(self.changed),
            "models": self._models_snapshot(refs),
            "journals": refs,  # with a store: the large states kept there (see _journalled)
        }
        return SNAPSHOT_FORMAT, shard

    def presave(self) -> None:
        """Hand the customers changed so far and the journals to the store's thread ahead of the next
        snapshot, under a snapshot number of their own (no restore stops there), so that the snapshot,
        which pauses every shard at once, encodes and carries only what changes after (and what the
        store has not written by then). The engine's state stays as it is. Without a store: nothing."""
        if not self.config.snapshots or self.config.state_store is None:
            return
        changed = self._take_changed()
        if self._store_of(changed) is not None:
            self._save(changed)

    def _take_changed(self) -> dict[str, bytes | None]:
        """The encodings of the customers changed since the last snapshot or pre-save (``None``: gone)."""
        customers = self.customers
        changed = {cid: None if (s := customers.get(cid)) is None else codec.encode(s) for cid in self.dirty}
        self.dirty.clear()
        return changed

    def _models_snapshot(self, refs: dict[str, JournalRef]) -> ModelsSnapshot | None:
        """The models, pickled; the recommender only if it is not kept in the store."""
        if self.models is None:
            return None
        if "models" in refs:
            return self.models.rest(), b"", ()
        return self.models.snapshot()  # what changed, mostly

    def _journalled(self) -> dict[str, tuple[Callable[[], bytes | None], Callable[[], bytes]]]:
        """The shard's large states kept in its store as base and journals (see :mod:`state.journal`):
        name -> (what changed since the last call, pickled or ``None``; the whole state, pickled)."""
        if self.models is None:
            return {}
        return {"models": (self.models.take_journal, self.models.recommender_base)}

    def _save(
        self, changed: dict[str, bytes | None]
    ) -> tuple[tuple[str | None, int], dict[str, bytes | None], dict[str, JournalRef]]:
        """Number this snapshot and hand its changed customers and journals to the store's thread, so
        the snapshot does not wait for the disk. Return what the store holds for sure (its name and
        snapshot number), the changes it may not hold yet (those go in the snapshot too, so a restore
        misses none) and what the snapshot holds of each journalled state. At most
        :data:`MAX_UNSAVED` snapshots wait for the store."""
        self.snapshot_seq += 1
        store = self._store_of(changed)
        if store is None:  # nothing in this shard yet: its models are in the snapshot, as without a store
            return (None, self.snapshot_seq), {}, {}
        store.check()
        if len(self.unsaved) >= MAX_UNSAVED:
            store.wait_saved(min(self.unsaved))
        saved = store.saved  # the store thread may move it on: read it once
        self.unsaved = {seq: blobs for seq, blobs in self.unsaved.items() if seq > saved}
        parts, keep, refs = {}, {}, {}
        for name, (journal, whole) in self._journalled().items():
            book = self.journals.setdefault(name, Journal(name))
            written, keep[name], refs[name] = book.save(self.snapshot_seq, saved, journal(), whole)
            parts.update(written)
        if changed or parts:
            store.write_later(self.snapshot_seq, changed, parts, keep)
            self.unsaved[self.snapshot_seq] = changed
        unsaved: dict[str, bytes | None] = {}
        for blobs in self.unsaved.values():  # in snapshot order: the latest version wins
            unsaved.update(blobs)
        return (store.path.stem, saved), unsaved, refs

    def _store_of(self, changed: dict[str, bytes | None]) -> CustomerStore | None:
        """This shard's store, opened with its first changed customer."""
        if self.store is None and changed:
            self._store(next(iter(changed)))
        return self.store

    def _store(self, customer_id: str) -> CustomerStore:
        """This shard's customer store (named after the stage and the shard of ``customer_id``), opened
        empty: the shard had none when it started or at the snapshot it resumed from, so whatever the
        file holds was written after that snapshot by a run that stopped before its next one."""
        if self.store is None:
            store = self._open_store(f"{self.role}-{self._shard_index(customer_id):04d}")
            if store.path.exists():
                store.clear()
        return self.store  # type: ignore[return-value]

    def _open_store(self, name: str) -> CustomerStore:
        assert self.config.state_store is not None, "customers were snapshotted to a store: it must be configured"
        self.store = CustomerStore(self.config.state_store, name)
        return self.store

    def _load(
        self, store: tuple[str | None, int], seq: int, unsaved: dict[str, bytes | None], refs: dict[str, JournalRef]
    ) -> tuple[dict[str, bytes], dict[str, tuple[bytes, list[bytes]]]]:
        """The customers of snapshot ``seq``: the store's as of the snapshot it held for sure, with the
        changes it may not have had, and each journalled state's base and journals. What the store
        may not have had is written to it again (customers under ``seq``) before going on."""
        name, saved = store
        self.snapshot_seq = seq
        self.journals = {}
        if name is None:
            return {}, {}
        customer_store = self._open_store(name)
        blobs = customer_store.read(saved)
        for customer_id, blob in unsaved.items():
            if blob is None:
                blobs.pop(customer_id, None)
            else:
                blobs[customer_id] = blob
        states = {part: load_journal(customer_store, part, ref, saved) for part, ref in refs.items()}
        carried = {(part, kind, at): blob for part, ref in refs.items() for (kind, at), blob in ref.unsaved.items()}
        if unsaved or carried:
            customer_store.write(seq, unsaved, carried)
        self.journals = {part: Journal.restored(part, seq, refs[part].base, states[part]) for part in refs}
        return blobs, states

    def _shard_index(self, customer_id: str) -> int:
        return shard_of(customer_id, self.ordered.upstreams)

    def _restore_journalled(self, shard: dict[str, Any], states: dict[str, tuple[bytes, list[bytes]]]) -> None:
        """The states of :meth:`_journalled`, from the snapshot or from the base and journals read."""
        models = shard["models"]
        if "models" in states:
            models = (models[0], states["models"][0], tuple(states["models"][1]))
        self.models = self._models_for_mode(models and ShardModels.from_snapshot(models))

    def _models_for_mode(self, restored: ShardModels | None) -> ShardModels | None:
        """Restored models, switched to this run's mode (a fresh set if the snapshot had none)."""
        mode = self.config.models
        if mode == "off":
            return None
        models = restored
        if models is None:
            models = ShardModels(
                mode,
                self.config.propensity_horizon_ms,
                self.rules.next_best_offer,
                self.config.lifecycle.session_timeout_ms,
            )
            if self.config.initial_models is not None:
                models.load(self.config.initial_models)
        elif self.config.initial_models is not None:  # restored: a refreshed fit in the model file is adopted
            models.adopt_fitted(self.config.initial_models)
        models.set_mode(mode)
        return models

    def restore(self, snapshot: tuple[int, dict[str, Any]]) -> None:
        """Load a snapshot written by :meth:`snapshot`; refuse other formats."""
        version, shard = snapshot
        if version != SNAPSHOT_FORMAT:
            raise RecoveryStoreError(
                f"recovery snapshot format {version} is not supported: this version reads format {SNAPSHOT_FORMAT}. "
                "Start with a new recovery directory (and warm-start from recorded history if needed)."
            )
        states: dict[str, tuple[bytes, list[bytes]]] = {}
        if shard["store"] is None:
            self.encoded = blobs = dict(shard["customers"])
        else:
            blobs, states = self._load(shard["store"], shard["seq"], shard["unsaved"], shard["journals"])
        self.customers = {cid: codec.decode(blob) for cid, blob in sorted(blobs.items())}
        self.clock, self.swept_day = shard["clock"], shard["swept_day"]
        self.stats = self.writer.stats = pickle.loads(shard["stats"])
        self.ordered.restore(pickle.loads(shard["pending"]))
        self.changed = set(shard["changed"])
        self._restore_journalled(shard, states)
        self.scorers = self.models.scorers if self.models is not None else None
        self._forget_erased()
        self.timers = TimerQueue(self.customers)
        self.timers.schedule_all()

    def _forget_erased(self) -> None:
        """Drop restored customers the ledger says were erased after they were last seen (a snapshot
        from before an erasure applied by the run that stopped): what they had was sent before."""
        ledger, customers = self.config.erased, self.customers
        for customer_id in sorted(ledger.keys() & customers.keys()):
            if customers[customer_id].last_seen_ms <= ledger[customer_id]:
                self._drop_customer(customer_id)


class IdentityStage(CustomerStage):
    """The identity stage of one shard: every event enters here, keyed by its ``anonymousId`` (else
    its ``userId``). It drops duplicates, dead-letters future-dated and too old events, keeps
    anonymous customers (as a customer stage does), links an anonymous id to a ``userId`` when an
    event carries both, and forwards every identified event to the customer stage, keyed by the
    customer, handing over the anonymous state on linking; later events with either id reach the
    same customer. After each release it passes its own tick on to every customer shard."""

    role: Role = "identity"
    population = "anonymous_customers"
    sends_profiles = False

    def __init__(self, rules: CompiledRules, config: EngineConfig, shards: int = 1) -> None:
        super().__init__(rules, config, config.source_partitions)
        self.index = 0  # this identity shard's number, learned from the source's ticks
        self.shards = shards  # identity shards in all: an erasure reaches every one (see _erasure_copy)
        self.ledger = config.erased  # erasures known before the run, customer -> time (shared: never changed)
        self.erased: Ledger = {}  # erasures this shard has seen in this run, customer -> time
        self.erased_anonymous: dict[int, int] = {}  # hash of an erased customer's anonymous id -> erasure time
        self.seen = Dedupe(config.dedupe_per_shard)
        self.added: list[str] | None = [] if config.state_store is not None else None  # ids seen since a snapshot
        self.links = Links(config.links_per_shard)
        self.passing = IdentityPass(config.lateness_ms, config.max_skew_ms, config.max_age_ms, DAY_MS, ERASURE)

    _merge_key = staticmethod(attrgetter("seq"))  # what waits: an event

    def _shard_index(self, customer_id: str) -> int:
        return self.index

    def _progress(self, tick: Tick, out: list[Any]) -> tuple[int | None, int | None, bool] | None:
        self.index = tick.shard
        progress = super()._progress(tick, out)
        if progress is not None:
            upto, reached, idle = progress
            out.append(Tick(reached, self.writer.seq if upto is None else upto, self.index, idle))
        return progress

    def _apply_released(self, released: list[Any], out: list[Any]) -> None:
        """Check, dedupe and route each released event (in key order). Most are identified events
        with no anonymous state to hand over: runs of those (linked on the way when both ids come)
        pass straight on in one native call (``state/native/src/identity_pass.rs``); each other event takes
        :meth:`_released_event`."""
        at, end, stats, timers = 0, len(released), self.stats, self.timers
        while at < end:
            at, self.clock, duplicates, linked = self.passing.run(
                released, at, self.seen, self.links, self.customers, self.added,
                self.clock, timers.first_due(), self.swept_day, out, self.ledger or None, self.erased or None,
            )  # fmt: skip
            if duplicates:
                bump(stats, "duplicates", duplicates)
            if linked:
                bump(stats, "identities_linked", linked)
            if at < end:
                self._released_event(released[at], out)
                at += 1
        if released:
            self.writer.seq, self.writer.arrived = released[-1].seq, released[-1].arrived

    def _released_event(self, env: Envelope, out: list[Any]) -> None:
        """Check, dedupe and route one released event the whole way."""
        writer, config = self.writer, self.config
        writer.seq, writer.arrived = env.seq, env.arrived
        ts_ms, mark_ms, received_ms = env.ts_ms, env.mark_ms, env.received_ms
        if env.name == ERASURE and self._erasure_copy(env):
            return
        if received_ms is not None and ts_ms - received_ms > config.max_skew_ms:
            self._future(env, out)  # before dedupe: a corrected resend with the same id is accepted
            return
        if mark_ms - ts_ms > config.max_age_ms:
            self._too_old(env, out)  # likewise
            return
        message_id = env.message_id
        if self.seen.seen_or_add(message_id):
            bump(self.stats, "duplicates")
            return
        if self.added is not None:  # the dedupe memory's journal since the last snapshot
            self.added.append(message_id)
        if self.clock is None or mark_ms - config.lateness_ms > self.clock:
            self._advance(mark_ms, out)
        if env.name == ERASURE:  # applied again if known: a resumed run may hold the customer from before it
            customer_id = self._note_erasure(env)
            if env.user_id is None and customer_id != env.anonymous_id:  # a linked anonymous id names it
                out.append(Forward(env, customer_id))
                return
        elif (self.ledger or self.erased) and self._erased_event(env, out):
            return
        anonymous_id, user_id = env.anonymous_id, env.user_id
        if anonymous_id is None:
            out.append(env)
        elif user_id is not None and anonymous_id not in self.customers and env.name != ERASURE:
            self._link(anonymous_id, user_id)  # no anonymous state to hand over
            out.append(env)
        else:
            start = len(out)
            try:
                self._identity_event(env, out)
            except Exception as err:  # in linking (an anonymous customer's events are guarded in _customer_event)
                writer.retract(out, start)
                writer.failed_event(env, err, out)

    # --- identity stage ----------------------------------------------------------------
    def _identity_event(self, env: Envelope, out: list[Any]) -> None:
        """Apply an anonymous customer's event here, or hand an event with an anonymous id on: as the
        envelope itself to its ``userId``, as a :class:`Forward` to the customer an anonymous id is
        linked to or with the anonymous state a link hands over."""
        anonymous_id, user_id = env.anonymous_id, env.user_id
        links = self.links
        if user_id is None:
            linked = links.get(anonymous_id)
            if linked is None:
                self._customer_event(env, anonymous_id, out)
            else:
                out.append(Forward(env, linked))
            return
        carried = self.customers.get(anonymous_id)
        if env.name == ERASURE:  # the anonymous state goes with the customer
            if carried is not None:
                self._forget_anonymous(carried, f"erasure requested ({env.event.properties.request_id})", env, out)
            links.unlink(anonymous_id)
            out.append(env)
            return
        if carried is not None and carried.audiences:  # first: nothing has changed if this raises
            self._leave_all(carried, f"identity linked to {user_id}", env.ts_ms, [env.message_id], out)
        self._link(anonymous_id, user_id)
        if carried is not None:
            self._drop_customer(anonymous_id)
        out.append(env if carried is None else Forward(env, user_id, carried))

    # --- erasure -------------------------------------------------------------------------
    def _erasure_copy(self, env: Envelope) -> bool:
        """Whether ``env`` is a copy of an erasure sent to this shard for its links only (the router
        sends every identity shard one; see :meth:`operators.pipeline.Router.parse`): noted, unless
        its home shard dead-letters it, and not passed on."""
        if shard_of(env.anonymous_id or env.user_id, self.shards) == self.index:  # type: ignore[arg-type]
            return False
        future = env.received_ms is not None and env.ts_ms - env.received_ms > self.config.max_skew_ms
        if not future and env.mark_ms - env.ts_ms <= self.config.max_age_ms:
            self._note_erasure(env)
        return True

    def _note_erasure(self, env: Envelope) -> str:
        """Remember an erasure on this shard: the customer's events up to its time are dropped from
        now on, and every anonymous id this shard links to it is forgotten (its later events are an
        anonymous customer's; those up to the erasure are dropped). Return whose erasure it is: an
        erasure that names no ``userId`` is known to its own shard only."""
        customer_id = env.user_id
        if customer_id is None:  # only its own shard (this one) knows whose it is
            customer_id = self.links.get(env.anonymous_id) or env.anonymous_id  # type: ignore[arg-type]
        add_erasure(self.erased, customer_id, max(env.ts_ms, self.ledger.get(customer_id, env.ts_ms)))
        erased_at = self.erased[customer_id]
        for key in unlink_customer(self.links, customer_id):
            self.erased_anonymous[key] = erased_at
        if env.anonymous_id is not None:
            self.erased_anonymous[anonymous_hash(env.anonymous_id)] = erased_at
        return customer_id

    def _erased_event(self, env: Envelope, out: list[Any]) -> bool:
        """Drop ``env`` if it is an erased customer's, from up to its erasure (counted as
        ``erased_events``, with no dead letter: it would carry the customer's data). An erased
        customer's event that links an anonymous id takes that id with it: its anonymous state
        here, and its events up to the erasure."""
        anonymous_id, user_id = env.anonymous_id, env.user_id
        customer_id = user_id or self.links.get(anonymous_id) or anonymous_id  # type: ignore[arg-type]
        erased_at = self.erased.get(customer_id, self.ledger.get(customer_id))
        if erased_at is None and user_id is None and self.erased_anonymous:
            erased_at = self.erased_anonymous.get(anonymous_hash(anonymous_id))  # type: ignore[arg-type]
        if erased_at is None or env.ts_ms > erased_at:
            return False
        if user_id is not None and anonymous_id is not None:
            self.erased_anonymous[anonymous_hash(anonymous_id)] = erased_at
            self.links.unlink(anonymous_id)
            anonymous = self.customers.get(anonymous_id)
            if anonymous is not None:
                self._forget_anonymous(anonymous, "erasure requested", env, out)
        bump(self.stats, "erased_events")
        return True

    def _forget_anonymous(self, state: CustomerState, reason: str, env: Envelope, out: list[Any]) -> None:
        """Drop an anonymous customer's state and link (it leaves its audiences, for ``reason``)."""
        self._leave_all(state, reason, env.ts_ms, [env.message_id], out)
        self._drop_customer(state.id)
        self.links.unlink(state.id)

    def _link(self, anonymous_id: str, user_id: str) -> None:
        """Link ``anonymous_id`` to ``user_id``, counting a new or changed link."""
        if self.links.link(anonymous_id, user_id) != user_id:
            bump(self.stats, "identities_linked")

    def _future(self, env: Envelope, out: list[Any]) -> None:
        skew_s = (env.ts_ms - (env.received_ms or 0)) / 1000
        limit_s = self.config.max_skew_ms // 1000
        message = f"timestamp is {skew_s:.0f} s after receivedAt (max {limit_s} s)"
        self.writer.reject(env, "future_dated", [message], env.received_ms, out)

    def _too_old(self, env: Envelope, out: list[Any]) -> None:
        age_days = (env.mark_ms - env.ts_ms) / DAY_MS
        limit_days = self.config.max_age_ms / DAY_MS
        message = (
            f"timestamp is {age_days:.0f} days before the event time already reached"
            f" ({iso_ms(env.mark_ms)}; max {limit_days:g} days)"
        )
        self.writer.reject(env, "too_old", [message], env.mark_ms, out)

    def _journalled(self) -> dict[str, tuple[Callable[[], bytes | None], Callable[[], bytes]]]:
        return {**super()._journalled(), "seen": (self._take_added, self.seen.to_bytes)}

    def _take_added(self) -> bytes | None:
        """The message ids remembered since the last call (in order), pickled; ``None``: none."""
        added, self.added = self.added, []
        return pickle.dumps(added, protocol=pickle.HIGHEST_PROTOCOL) if added else None

    def _store_of(self, changed: dict[str, bytes | None]) -> CustomerStore | None:
        """Opened with the first event: its dedupe memory is kept there, anonymous customers or not."""
        if self.store is None and (changed or self.added):
            self._store("")  # named after this shard's number, whatever the customer
        return self.store

    def snapshot(self) -> tuple[int, dict[str, Any]] | None:
        snapshot = super().snapshot()
        if snapshot is not None:
            shard = snapshot[1]
            shard["seen"] = None if "seen" in shard["journals"] else self.seen.to_bytes()
            shard["links"] = pickle.dumps(self.links.entries())
            shard["erased"] = pickle.dumps((self.erased, self.erased_anonymous))
        return snapshot

    def restore(self, snapshot: tuple[int, dict[str, Any]]) -> None:
        super().restore(snapshot)
        shard = snapshot[1]
        self.links = Links.from_entries(self.config.links_per_shard, pickle.loads(shard["links"]))
        self.erased, self.erased_anonymous = pickle.loads(shard["erased"]) if "erased" in shard else ({}, {})

    def _restore_journalled(self, shard: dict[str, Any], states: dict[str, tuple[bytes, list[bytes]]]) -> None:
        super()._restore_journalled(shard, states)
        base, journals = states.get("seen", (shard["seen"], []))
        self.seen = Dedupe.from_bytes(self.config.dedupe_per_shard, base)
        for journal in journals:  # remembered in the same order again: the same memory
            for message_id in pickle.loads(journal):
                self.seen.seen_or_add(message_id)


def shard_engine(rules: CompiledRules, config: EngineConfig, role: Role, upstream_shards: int = 1) -> CustomerStage:
    """One shard's engine for a stage: ``identity`` (fed by the source partitions; one of
    ``upstream_shards``) or ``customer`` (fed by ``upstream_shards`` identity shards)."""
    if role == "identity":
        return IdentityStage(rules, config, upstream_shards)
    return CustomerStage(rules, config, upstream_shards)
