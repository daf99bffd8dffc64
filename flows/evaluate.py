"""``nudgeflow evaluate``: each model against a simple baseline, on the same events.

The engine runs in-process with one shard, so that one replica of each model sees every
decision (the deployed flow has one replica per shard; see docs/models.md). Outcomes are
recorded as the models learn: every outcome is scored before it is learnt (progressive
validation), by the model and by its baseline.

- propensity vs a recency-frequency heuristic (ROC AUC, log loss of the model; per persona,
  the mean prediction against the observed rate where the generator's truth is known);
- next-best offer vs random and vs the best single offer, in a closed loop: each chosen offer
  is clicked with the truth's probability for the customer's persona (drawn from a hash of the
  decision id), and the click goes back into the stream; values are expected rewards under the
  truth, plus an inverse-propensity estimate of the random policy from the logged choices;
- recommendations vs most popular: hit rate and MRR at 10 on next products (YooChoose sessions,
  or the views of a generated stream).
"""

from __future__ import annotations

import gzip
import heapq
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from flows.basket_evaluation import render_baskets
from operators.engine import EngineConfig
from operators.models.bandit import uniform
from operators.models.propensity import FEATURES, NO_ORDER_DAYS, Calibration
from operators.models.recommend import CoOccurrence, K
from operators.parse import Rejected, parse
from operators.pipeline import Pipeline
from operators.rules import CompiledRules
from schemas.items import Output, RawEvent
from schemas.records import iso_ms
from schemas.streams import TRIGGERS_PREFIX

TICK_EVERY = 200
CLICK_DELAY_MS = 30 * 60_000


def recency_frequency(x: tuple[float, ...]) -> float:
    """The baseline: frequent buyers who bought recently are likelier to buy again."""
    recency = x[FEATURES.index("recency_days")]
    orders = x[FEATURES.index("orders")]  # log1p(orders)
    return orders - (recency if recency < NO_ORDER_DAYS else 2 * NO_ORDER_DAYS) / 30


@dataclass
class OfferLog:
    """One next-best-offer decision with what the truth says of it."""

    persona: str
    chosen: str
    probability: float
    candidates: list[str]
    truth: dict[str, float]
    reward: bool


@dataclass
class Run:
    """A single-shard engine fed from raw lines, with clicks fed back for chosen offers."""

    rules: CompiledRules
    config: EngineConfig
    personas: dict[str, str] = field(default_factory=dict)
    offer_response: dict[str, dict[str, float]] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        self.pipeline = Pipeline(self.rules, self.config)
        self.customers = self.pipeline.customers[0].engine
        # every propensity outcome: (model score, baseline score, outcome), and whose it was
        self.records: list[tuple[float, float, bool]] = []
        self.record_customers: list[str] = []
        if self.customers.models is not None:
            self.customers.models.on_outcome = self._outcome
        self.injected: list[tuple[int, int, bytes]] = []  # (timestamp ms, order, event line)
        self.offers: list[OfferLog] = []
        self.position = 0

    def _outcome(self, customer_id: str, x: tuple[float, ...], p: float, y: bool) -> None:
        self.records.append((p, recency_frequency(x), y))
        self.record_customers.append(customer_id)

    def feed(self, lines: Iterable[bytes]) -> None:
        """Apply ``lines`` in order, ``TICK_EVERY`` to a batch, the clicks drawn for chosen offers merged
        in at their time; lines that do not parse are left out."""
        self.batch: list[RawEvent] = []
        for line in lines:
            raw, ts_ms = self._record(line)
            if raw is None:
                continue
            while self.injected and self.injected[0][0] <= ts_ms:
                self._add(self._record(heapq.heappop(self.injected)[2])[0])
            self._add(raw)
        while self.injected:
            self._add(self._record(heapq.heappop(self.injected)[2])[0])
        self._read(self.pipeline.feed(self.batch))
        self._read(self.pipeline.finish())

    def _record(self, line: bytes) -> tuple[RawEvent | None, int]:
        """The line as a record, and its event time (``None``, 0 when it does not parse)."""
        self.position += 1
        raw = RawEvent(self.position, {"line": self.position}, line)
        result = parse(raw)
        return (None, 0) if isinstance(result, Rejected) else (raw, result.ts_ms)

    def _add(self, raw: RawEvent | None) -> None:
        if raw is None:
            return
        self.batch.append(raw)
        if len(self.batch) >= TICK_EVERY:
            batch, self.batch = self.batch, []
            self._read(self.pipeline.feed(batch))

    def _read(self, outputs: list[Any]) -> None:
        for output in outputs:
            if isinstance(output, Output) and output.stream.startswith(TRIGGERS_PREFIX):
                self._offer(output)

    def _offer(self, output: Output) -> None:
        persona = self.personas.get(output.key)
        if persona is None or persona not in self.offer_response:
            return
        decision = orjson.loads(output.body)
        data = decision["data"]
        choice = data.get("offer_choice")
        if not choice:
            return
        truth = self.offer_response[persona]
        offer = data["offer_id"]
        reward = uniform(decision["id"], self.seed, "click") < truth.get(offer, 0.0)
        self.offers.append(OfferLog(persona, offer, choice["probability"], choice["candidates"], truth, reward))
        if reward:
            at = output.time_ms + CLICK_DELAY_MS
            click = {
                "type": "track",
                "event": "Promotion Clicked",
                "messageId": f"click-{decision['id']}",
                "userId": output.key,
                "timestamp": iso_ms(at),
                "properties": {"promotion_id": offer},
            }
            heapq.heappush(self.injected, (at, len(self.injected), orjson.dumps(click)))


# --- reports -------------------------------------------------------------------------------
def auc(scores: list[float], labels: list[bool]) -> float | None:
    """ROC AUC by ranks (ties get their mean rank)."""
    pos = sum(labels)
    neg = len(labels) - pos
    if not pos or not neg:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def propensity_report(records: list[tuple[float, float, bool]]) -> dict[str, Any]:
    model = [p for p, _, _ in records]
    baseline = [b for _, b, _ in records]
    labels = [y for _, _, y in records]
    quality = Calibration()
    for p, y in zip(model, labels, strict=True):
        quality.add(p, y)
    summary = quality.summary()
    return {
        "outcomes": summary["outcomes"],
        "positive_rate": summary["positive_rate"],
        "model_auc": _round(auc(model, labels)),
        "baseline_auc": _round(auc(baseline, labels)),
        "model_log_loss": summary["log_loss"],
        "constant_log_loss": _constant_log_loss(labels),
    }


def offers_report(logs: list[OfferLog]) -> dict[str, Any]:
    """Expected reward per decision under the truth: the policy, random, the best single offer."""
    if not logs:
        return {"decisions": 0}
    n = len(logs)
    policy = sum(log.truth.get(log.chosen, 0.0) for log in logs) / n
    random = sum(sum(log.truth.get(c, 0.0) for c in log.candidates) / len(log.candidates) for log in logs) / n
    offers = sorted({c for log in logs for c in log.candidates})
    single = {o: sum(log.truth.get(o, 0.0) if o in log.candidates else 0.0 for log in logs) / n for o in offers}
    best_offer = max(single, key=lambda o: (single[o], o))
    oracle = sum(max(log.truth.get(c, 0.0) for c in log.candidates) for log in logs) / n
    ips_random = sum(log.reward * (1 / len(log.candidates)) / log.probability for log in logs) / n
    first, last = logs[: n // 2], logs[n // 2 :]
    return {
        "decisions": n,
        "clicks": sum(log.reward for log in logs),
        "policy": round(policy, 4),
        "policy_first_half": round(sum(log.truth.get(log.chosen, 0.0) for log in first) / max(1, len(first)), 4),
        "policy_second_half": round(sum(log.truth.get(log.chosen, 0.0) for log in last) / max(1, len(last)), 4),
        "random": round(random, 4),
        "best_single_offer": best_offer,
        "best_single": round(single[best_offer], 4),
        "oracle": round(oracle, 4),
        "regret_vs_oracle": round(oracle - policy, 4),
        "ips_estimate_of_random": round(ips_random, 4),
    }


def session_report(sessions: Iterable[list[str]], train: Iterable[list[str]] = ()) -> dict[str, Any]:
    """Next-item prediction: learn the training sessions, then predict each next item of the
    evaluation sessions from the items before it (learning as it goes)."""
    model = CoOccurrence()
    for session in train:
        for i, item in enumerate(session):
            model.learn(session[:i], item)
    counts = {"model": [0, 0.0], "most_popular": [0, 0.0]}
    predictions = 0
    for session in sessions:
        for i, item in enumerate(session):
            if i:
                predictions += 1
                for name, ranked in (
                    ("model", model.recommend(session[:i], K)),
                    ("most_popular", model.most_popular(session[:i], K)),
                ):
                    if item in ranked:
                        counts[name][0] += 1
                        counts[name][1] += 1 / (ranked.index(item) + 1)
            model.learn(session[:i], item)
    return {
        "predictions": predictions,
        **{f"{name}_hit_rate@{K}": round(hits / predictions, 4) for name, (hits, _) in counts.items() if predictions},
        **{f"{name}_mrr@{K}": round(rr / predictions, 4) for name, (_, rr) in counts.items() if predictions},
    }


def yoochoose_sessions(path: Path) -> list[list[str]]:
    """Sessions of a YooChoose file (``SessionId ItemId Time``), each in time order, by start time."""
    clicks: dict[str, list[tuple[float, str]]] = defaultdict(list)
    with gzip.open(path, "rt") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or not parts[2].replace(".", "", 1).isdigit():
                continue  # the header
            clicks[parts[0]].append((float(parts[2]), parts[1]))
    sessions = sorted(clicks.values(), key=lambda c: min(c))
    return [[item for _, item in sorted(c)] for c in sessions]


def _constant_log_loss(labels: list[bool]) -> float | None:
    if not labels:
        return None
    rate = min(max(sum(labels) / len(labels), 1e-6), 1 - 1e-6)
    return round(-(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)), 4)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --- the three evaluations ------------------------------------------------------------------
REPEAT_PURCHASE_RULES = """
version: evaluate-repeat-purchase
triggers:
  - id: after_order
    description: Every order is a decision point; the outcome is another order within the horizon.
    channel: push
    on: Order Completed
    once_per: order
"""


def evaluate_generated(customers: int, days: int, seed: int, rules: CompiledRules) -> dict[str, Any]:
    """Propensity, offers (closed loop) and recommendations on a generated stream with its truth."""
    from connectors.synthetic import generate_events, ground_truth

    truth = ground_truth(customers, seed)
    lines = [orjson.dumps(event) for event in generate_events(customers, days, seed)]
    run = Run(rules, EngineConfig(), truth["personas"], truth["offer_response"], seed)
    run.feed(lines)
    reco = run.customers.models.recommender.stats()  # type: ignore[union-attr]
    checked = reco["checked"] or 1
    by_persona: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for (p, _, y), customer in zip(run.records, run.record_customers, strict=True):
        by_persona[truth["personas"].get(customer, "anonymous")].append((p, y))
    calibration = {
        persona: {
            "outcomes": len(rows),
            "mean_prediction": round(sum(p for p, _ in rows) / len(rows), 4),
            "observed_rate": round(sum(y for _, y in rows) / len(rows), 4),
            "truth_order_chance_with_cart": truth["order_chance_with_cart"].get(persona),
        }
        for persona, rows in sorted(by_persona.items())
    }
    return {
        "stream": {"customers": customers, "days": days, "seed": seed, "events": len(lines)},
        "propensity": propensity_report(run.records),
        "propensity_by_persona": calibration,
        "next_best_offer": offers_report(run.offers),
        "recommendations": {
            "checked_views": reco["checked"],
            f"model_hit_rate@{K}": round(reco["hits"] / checked, 4),
            f"model_mrr@{K}": round(reco["reciprocal_rank_micro"] / 1_000_000 / checked, 4),
            f"most_popular_hit_rate@{K}": round(reco["most_popular_hits"] / checked, 4),
        },
    }


def evaluate_uci(path: Path, rows: int | None, horizon_days: float) -> dict[str, Any]:
    """Repeat-purchase propensity on real invoices: every order is a decision point."""
    from connectors.uci_retail import Rejected as RejectedRow
    from connectors.uci_retail import read_invoices
    from operators.rules import parse_rules
    from state.affinity import DAY_MS

    lines = [orjson.dumps(item) for item in read_invoices(path, rows) if not isinstance(item, RejectedRow)]
    config = EngineConfig(propensity_horizon_ms=int(horizon_days * DAY_MS))
    run = Run(parse_rules(REPEAT_PURCHASE_RULES, "repeat-purchase"), config)
    run.feed(lines)
    return {"events": len(lines), "horizon_days": horizon_days, **propensity_report(run.records)}


def evaluate_yoochoose(folder: Path) -> dict[str, Any]:
    train = yoochoose_sessions(next(folder.glob("*train*")))
    test = yoochoose_sessions(next(folder.glob("*test*")))
    return {"train_sessions": len(train), "test_sessions": len(test), **session_report(test, train)}


def render(results: dict[str, Any]) -> str:
    """Markdown tables of an evaluation."""
    lines: list[str] = []
    generated = results.get("generated")
    if generated:
        stream = generated["stream"]
        lines += [
            f"Generated stream: {stream['customers']:,} customers, {stream['days']} days, seed {stream['seed']}"
            f" ({stream['events']:,} events); one shard.",
            "",
            "| propensity (P(order within 7 days) at a decision) | ROC AUC | log loss | outcomes | positive rate |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        p = generated["propensity"]
        lines += [
            f"| River StandardScaler + LogisticRegression | {p['model_auc']} | {p['model_log_loss']} |"
            f" {p['outcomes']:,} | {p['positive_rate']} |",
            f"| recency-frequency heuristic | {p['baseline_auc']} | | | |",
            f"| constant (the positive rate) | 0.5 | {p['constant_log_loss']} | | |",
            "",
            "| persona (the generator's truth) | outcomes | mean prediction | observed rate |"
            " truth: P(order) of a session with a cart |",
            "| --- | ---: | ---: | ---: | ---: |",
            *(
                f"| {persona} | {c['outcomes']:,} | {c['mean_prediction']} | {c['observed_rate']} |"
                f" {c['truth_order_chance_with_cart']} |"
                for persona, c in generated["propensity_by_persona"].items()
            ),
            "",
            "| next-best offer (closed loop, expected clicks per decision under the truth) | value |",
            "| --- | ---: |",
        ]
        o = generated["next_best_offer"]
        lines += [
            f"| epsilon-greedy policy ({o['decisions']:,} decisions, {o['clicks']:,} clicks) | {o['policy']} |",
            f"| ... first half / second half of the decisions | {o['policy_first_half']} / {o['policy_second_half']} |",
            f"| random among eligible offers | {o['random']} |",
            f"| best single offer in hindsight ({o['best_single_offer']}) | {o['best_single']} |",
            f"| oracle (best offer for each decision) | {o['oracle']} |",
            f"| regret of the policy against the oracle | {o['regret_vs_oracle']} |",
            f"| inverse-propensity estimate of random, from the logged choices | {o['ips_estimate_of_random']} |",
            "",
        ]
        r = generated["recommendations"]
        lines += [
            f"| recommendations (next viewed product, {r['checked_views']:,} sampled views) | hit rate@10 | MRR@10 |",
            "| --- | ---: | ---: |",
            f"| co-occurrence + category popularity | {r['model_hit_rate@10']} | {r['model_mrr@10']} |",
            f"| most popular | {r['most_popular_hit_rate@10']} | |",
            "",
        ]
    yoo = results.get("yoochoose")
    if yoo:
        lines += [
            f"YooChoose clicks: {yoo['train_sessions']:,} training sessions, {yoo['test_sessions']:,} test sessions,"
            f" {yoo['predictions']:,} next-item predictions (learning as it goes).",
            "",
            "| next item | hit rate@10 | MRR@10 |",
            "| --- | ---: | ---: |",
            f"| co-occurrence | {yoo['model_hit_rate@10']} | {yoo['model_mrr@10']} |",
            f"| most popular | {yoo['most_popular_hit_rate@10']} | {yoo['most_popular_mrr@10']} |",
            "",
        ]
    uci = results.get("uci_retail")
    if uci:
        lines += [
            f"UCI Online Retail: {uci['events']:,} events; every order is a decision point, the outcome another"
            f" order within {uci['horizon_days']:g} days.",
            "",
            "| repeat purchase | ROC AUC | log loss | outcomes | positive rate |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| River StandardScaler + LogisticRegression | {uci['model_auc']} | {uci['model_log_loss']} |"
            f" {uci['outcomes']:,} | {uci['positive_rate']} |",
            f"| recency-frequency heuristic | {uci['baseline_auc']} | | | |",
            f"| constant | 0.5 | {uci['constant_log_loss']} | | |",
            "",
        ]
    lines += render_baskets(results.get("uci_baskets"))
    lapse = results.get("uci_lapse")
    if lapse:
        lines += [
            f"UCI Online Retail, lapse: every {lapse['checkpoints_every_days']} days each buyer not yet lapsed is"
            f" scored ({lapse['scored']:,} scores); the outcome is reaching 60 days without an order"
            f" (rate {lapse['lapse_rate']}).",
            "",
            "| lapse | ROC AUC |",
            "| --- | ---: |",
            f"| lapse_risk (rhythm model) | {lapse['model_auc']} |",
            f"| days since the last order | {lapse['baseline_auc']} |",
            "",
        ]
    return "\n".join(lines)


def evaluate_lapse(path: Path, rows: int | None, every_days: int = 30) -> dict[str, Any]:
    """Lapse risk on real invoices: every ``every_days`` of event time, each buyer not yet lapsed
    is scored; the outcome is whether they then reach ``lapse_days`` without ordering.
    Baseline: days since the last order."""
    from bisect import bisect_right

    from connectors.uci_retail import Rejected as RejectedRow
    from connectors.uci_retail import read_invoices
    from state.affinity import DAY_MS
    from state.customer import CustomerState, Lifecycle
    from state.update import apply_event

    lifecycle = Lifecycle()
    envelopes = []
    for n, item in enumerate(read_invoices(path, rows)):
        if isinstance(item, RejectedRow):
            continue
        env = parse(RawEvent(n, {}, orjson.dumps(item)))
        if not isinstance(env, Rejected) and env.name == "Order Completed":
            envelopes.append(env)
    orders: dict[str, list[int]] = defaultdict(list)
    for env in envelopes:
        orders[env.customer_id].append(env.ts_ms)
    end = max(env.ts_ms for env in envelopes)
    states: dict[str, CustomerState] = {}
    checkpoint = envelopes[0].ts_ms + every_days * DAY_MS
    scored: list[tuple[float, float, bool]] = []
    for env in [*envelopes, None]:
        while (env is None and checkpoint <= end) or (env is not None and env.ts_ms >= checkpoint):
            for customer, state in states.items():
                deadline = state.last_order_ms + lifecycle.lapse_days * DAY_MS  # type: ignore[operator]
                if deadline <= checkpoint or deadline > end:
                    continue  # lapsed already, or the outcome lies beyond the data
                times = orders[customer]
                after = bisect_right(times, checkpoint)
                lapsed = after == len(times) or times[after] > deadline
                risk = state.lapse_risk(checkpoint, lifecycle)
                recency = (checkpoint - state.last_order_ms) / DAY_MS  # type: ignore[operator]
                scored.append((risk or 0.0, recency, lapsed))
            checkpoint += every_days * DAY_MS
        if env is None:
            break
        state = states.get(env.customer_id)
        if state is None:
            state = states[env.customer_id] = CustomerState(env.customer_id, env.ts_ms)
        apply_event(state, env, lifecycle)
    labels = [y for _, _, y in scored]
    return {
        "checkpoints_every_days": every_days,
        "scored": len(scored),
        "lapse_rate": round(sum(labels) / len(labels), 4) if labels else None,
        "model_auc": _round(auc([r for r, _, _ in scored], labels)),
        "baseline_auc": _round(auc([d for _, d, _ in scored], labels)),
    }
