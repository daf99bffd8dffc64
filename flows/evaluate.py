"""``nudgeflow evaluate``: each model against a simple baseline, on the same events.

The engine runs in-process with one shard, so that one replica of each model sees every
decision (the deployed flow has one replica per shard; see docs/models.md). Outcomes are
recorded as the models learn: every outcome is scored before it is learnt (progressive
validation), by the model and by its baseline.

- propensity vs a recency-frequency heuristic and the positive rate (ROC AUC, log loss of the
  calibrated score and of the raw one; the same per rule, i.e. per kind of decision; reliability
  per decile of the prediction; per persona, the mean prediction against the observed rate where
  the generator's truth is known);
- next-best offer vs random and vs the best single offer, in a closed loop: each chosen offer
  is clicked with the truth's probability for the customer's persona (drawn from a hash of the
  decision id), and the click goes back into the stream; values are expected rewards under the
  truth, plus an inverse-propensity estimate of the random policy from the logged choices, and
  the reliability of the click rate the policy states for its choice;
- recommendations vs most popular: hit rate and MRR at 10 on next products (YooChoose sessions,
  or the views of a generated stream);
- audiences on real invoices: how often customers enter each one, and how soon they leave again
  (an audience that flaps, entered and left over and over, is no use to a campaign).
"""

from __future__ import annotations

import ast
import gzip
import heapq
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from flows.basket_evaluation import render_baskets
from operators.engine import EngineConfig
from operators.models import OPEN_DECISION
from operators.models.bandit import uniform
from operators.models.propensity import FEATURES, NO_ORDER_DAYS, Calibration
from operators.models.recommend import CoOccurrence, K
from operators.parse import Rejected, parse
from operators.pipeline import Pipeline
from operators.rules import CompiledRules
from schemas.items import Output, RawEvent
from schemas.records import iso_ms
from schemas.streams import TRIGGERS_PREFIX
from state.btyd import DEFAULT_BTYD, BtydParameters

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
    expected: float | None = None  # the click rate the policy stated for its choice (calibrated)
    raw: float | None = None  # the chosen offer's score before calibration


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
        # every propensity outcome: (calibrated score, raw score, baseline score, outcome), whose it
        # was and the rule that made the decision
        self.records: list[tuple[float, float, float, bool]] = []
        self.record_customers: list[str] = []
        self.record_rules: list[str] = []
        self._open_rules: dict[bytes, list[str]] = {}  # the rules of decisions awaiting outcomes, by decision
        if self.customers.models is not None:
            self.customers.models.on_outcome = self._outcome
            for stage in (self.pipeline.identity[0].engine, self.customers):  # anonymous customers decide there
                stage.models.on_decision = self._decision  # type: ignore[union-attr]
        self.injected: list[tuple[int, int, bytes]] = []  # (timestamp ms, order, event line)
        self.offers: list[OfferLog] = []
        self.position = 0

    def _decision(self, customer_id: str, at_ms: int, x: tuple[float, ...], rule_id: str) -> None:
        self._open_rules.setdefault(OPEN_DECISION.pack(at_ms, *x), []).append(rule_id)

    def _outcome(self, customer_id: str, decided_ms: int, x: tuple[float, ...], raw: float, p: float, y: bool) -> None:
        """An outcome learnt, with the rule of its decision (found by its time and features: the same
        after an anonymous customer's open decisions move to the user they turn out to be)."""
        key = OPEN_DECISION.pack(decided_ms, *x)  # bytes: a NaN input matches itself
        rules = self._open_rules.get(key)
        rule = rules.pop(0) if rules else "unknown"
        if rules == []:
            del self._open_rules[key]
        self.records.append((p, raw, recency_frequency(x), y))
        self.record_customers.append(customer_id)
        self.record_rules.append(rule)

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
        expected, raw = choice.get("expected_rate"), choice["scores"].get(offer)
        log = OfferLog(persona, offer, choice["probability"], choice["candidates"], truth, reward, expected, raw)
        self.offers.append(log)
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


def propensity_report(records: list[tuple[float, float, float, bool]]) -> dict[str, Any]:
    """The calibrated score, the raw one and the recency-frequency baseline on the same outcomes."""
    model = [p for p, _, _, _ in records]
    raw = [r for _, r, _, _ in records]
    baseline = [b for _, _, b, _ in records]
    labels = [y for _, _, _, y in records]
    quality, raw_quality = counted(model, labels), counted(raw, labels)
    summary = quality.summary()
    return {
        "outcomes": summary["outcomes"],
        "positive_rate": summary["positive_rate"],
        "model_auc": _round(auc(model, labels)),
        "raw_auc": _round(auc(raw, labels)),
        "baseline_auc": _round(auc(baseline, labels)),
        "model_log_loss": summary["log_loss"],
        "raw_log_loss": raw_quality.summary()["log_loss"],
        "constant_log_loss": _constant_log_loss(labels),
        "reliability": quality.reliability(),
        "reliability_raw": raw_quality.reliability(),
    }


def counted(scores: list[float], labels: list[bool]) -> Calibration:
    """Progressive-validation counts of probabilities ``scores`` against ``labels``."""
    quality = Calibration()
    for p, y in zip(scores, labels, strict=True):
        quality.add(p, y)
    return quality


def propensity_by_rule(records: list[tuple[float, float, float, bool]], rules: list[str]) -> dict[str, Any]:
    """Per rule (kind of decision): outcomes, positive rate (the constant's AUC is 0.5), the ROC AUC
    of the calibrated score, the raw one and the recency-frequency baseline, and the calibrated
    score's mean and expected calibration error on the rule's decisions."""
    by_rule: dict[str, list[tuple[float, float, float, bool]]] = defaultdict(list)
    for record, rule in zip(records, rules, strict=True):
        by_rule[rule].append(record)
    out = {}
    for rule, rows in sorted(by_rule.items()):
        labels = [y for _, _, _, y in rows]
        out[rule] = {
            "outcomes": len(rows),
            "positive_rate": round(sum(labels) / len(rows), 4),
            "model_auc": _round(auc([p for p, _, _, _ in rows], labels)),
            "raw_auc": _round(auc([r for _, r, _, _ in rows], labels)),
            "baseline_auc": _round(auc([b for _, _, b, _ in rows], labels)),
            "mean_prediction": round(sum(p for p, _, _, _ in rows) / len(rows), 4),
            "ece": counted([p for p, _, _, _ in rows], labels).reliability()["ece"],
        }
    return out


PROBABILITIES = {"propensity": "an order within the horizon", "lapse_risk": "a lapse", "p_alive": "another order"}
"""Features that are probabilities, and the event each is the chance of."""


def probability_thresholds(rules: CompiledRules) -> list[dict[str, Any]]:
    """Every comparison of a probability feature with a number in an audience's condition, e.g.
    ``lapse_risk >= 0.5`` of ``likely_to_lapse``: audience, feature, operator and threshold."""
    found = []
    for audience in rules.audiences:
        tree = audience.when.tree
        for node in ast.walk(tree) if tree is not None else ():
            if not isinstance(node, ast.Compare) or len(node.ops) != 1:
                continue
            left, right, op = node.left, node.comparators[0], node.ops[0]
            if isinstance(right, ast.Name) and isinstance(left, ast.Constant):  # 0.5 <= lapse_risk
                left, right, op = right, left, _MIRRORED.get(type(op), op)
            if (
                isinstance(left, ast.Name)
                and left.id in PROBABILITIES
                and isinstance(right, ast.Constant)
                and isinstance(right.value, int | float)
                and type(op) in _SYMBOLS
            ):
                found.append(
                    {"audience": audience.id, "feature": left.id, "op": _SYMBOLS[type(op)], "threshold": right.value}
                )
    return found


def rates_by_threshold(scored: Iterable[tuple[float, bool]]) -> dict[str, dict[str, Any]]:
    """For thresholds 0.05 to 0.95 in steps of 0.05: of the scores at or above it (``at_least``) and
    below it (``below``), how many, their mean, and the observed rate of the event: what an audience
    with that threshold would have held (read by ``nudgeflow rules check --evaluation``)."""
    pairs = sorted(scored)
    out = {}
    for step in range(1, 20):
        threshold = step / 20
        cut = next((i for i, (p, _) in enumerate(pairs) if p >= threshold), len(pairs))
        out[f"{threshold:.2f}"] = {"below": _rate(pairs[:cut]), "at_least": _rate(pairs[cut:])}
    return out


def _rate(pairs: list[tuple[float, bool]]) -> dict[str, Any]:
    n = len(pairs)
    return {
        "scores": n,
        "mean_score": round(sum(p for p, _ in pairs) / n, 4) if n else None,
        "observed_rate": round(sum(y for _, y in pairs) / n, 4) if n else None,
    }


EVALUATED = {"propensity": ("generated", "propensity_by_threshold"), "lapse_risk": ("uci_lapse", "by_threshold")}
"""Where an evaluation's JSON keeps the rates by threshold of each probability feature."""


def threshold_meanings(rules: CompiledRules, evaluation: dict[str, Any]) -> list[str]:
    """For each audience threshold on a probability in ``rules``: what it claims, and what the scores
    that passed it (at the nearest threshold measured) turned out to be in ``evaluation``."""
    lines = []
    for t in probability_thresholds(rules):
        claim = "at least" if t["op"] in (">=", ">") else "less than"
        line = (
            f"audience {t['audience']}: {t['feature']} {t['op']} {t['threshold']} claims {claim}"
            f" a {t['threshold']} chance of {PROBABILITIES[t['feature']]}"
        )
        part, key = EVALUATED.get(t["feature"], ("", ""))
        table = evaluation.get(part, {}).get(key)
        if not table:
            lines.append(f"{line}; not measured in this evaluation")
            continue
        nearest = min(table, key=lambda k: (abs(float(k) - t["threshold"]), k))
        measured = table[nearest]["at_least" if claim == "at least" else "below"]
        at = "" if float(nearest) == t["threshold"] else f" (at {nearest}, the nearest threshold measured)"
        lines.append(
            f"{line}; observed{at}: {measured['observed_rate']} of {measured['scores']:,} scores"
            f" (mean score {measured['mean_score']})"
        )
    return lines


_SYMBOLS = {ast.GtE: ">=", ast.Gt: ">", ast.LtE: "<=", ast.Lt: "<"}
_MIRRORED = {ast.GtE: ast.LtE(), ast.Gt: ast.Lt(), ast.LtE: ast.GtE(), ast.Lt: ast.Gt()}
_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


def thresholds_report(
    thresholds: list[dict[str, Any]], feature: str, scored: Iterable[tuple[float, bool]]
) -> list[dict[str, Any]]:
    """For each threshold on ``feature``: of the scores that pass it, how many, their mean, and the
    observed rate of the event the probability is the chance of (what the threshold claims)."""
    rows = [t for t in thresholds if t["feature"] == feature]
    if not rows:
        return []
    pairs = list(scored)
    out = []
    for row in rows:
        passing = [(p, y) for p, y in pairs if _OPS[row["op"]](p, row["threshold"])]
        out.append({**row, "event": PROBABILITIES[feature], **_rate(passing)})
    return out


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
        **_offer_reliability(logs),
    }


def _offer_reliability(logs: list[OfferLog]) -> dict[str, Any]:
    """The stated click rate of each choice (and the score it was calibrated from) against its reward."""
    stated = [log for log in logs if log.expected is not None and log.raw is not None]
    if not stated:
        return {}
    labels = [log.reward for log in stated]
    expected, raw = [log.expected for log in stated], [log.raw for log in stated]
    return {
        "reliability": counted(expected, labels).reliability(),  # type: ignore[arg-type]
        "reliability_raw": counted(raw, labels).reliability(),  # type: ignore[arg-type]
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
    for (p, _, _, y), customer in zip(run.records, run.record_customers, strict=True):
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
        "propensity_by_rule": propensity_by_rule(run.records, run.record_rules),
        "propensity_thresholds": thresholds_report(
            probability_thresholds(rules), "propensity", ((p, y) for p, _, _, y in run.records)
        ),
        "propensity_by_threshold": rates_by_threshold((p, y) for p, _, _, y in run.records),
        "propensity_by_persona": calibration,
        "next_best_offer": {
            **offers_report(run.offers),
            # against the policy's own reward: any click of the offer within the reward window
            "reliability_progressive": run.customers.models.bandit.quality.reliability(),  # type: ignore[union-attr]
        },
        "recommendations": {
            "checked_views": reco["checked"],
            f"model_hit_rate@{K}": round(reco["hits"] / checked, 4),
            f"model_mrr@{K}": round(reco["reciprocal_rank_micro"] / 1_000_000 / checked, 4),
            f"most_popular_hit_rate@{K}": round(reco["most_popular_hits"] / checked, 4),
        },
    }


def evaluate_uci(
    path: Path, rows: int | None, horizon_days: float, rules: CompiledRules | None = None
) -> dict[str, Any]:
    """Repeat-purchase propensity on real invoices: every order is a decision point; and, with
    ``rules`` (e.g. the starter set), propensity on the decisions those rules make on the invoices
    (win-back, mostly: the invoices hold orders only), per rule."""
    from connectors.uci_retail import Rejected as RejectedRow
    from connectors.uci_retail import read_invoices
    from operators.rules import parse_rules
    from state.affinity import DAY_MS

    lines = [orjson.dumps(item) for item in read_invoices(path, rows) if not isinstance(item, RejectedRow)]
    config = EngineConfig(propensity_horizon_ms=int(horizon_days * DAY_MS))
    run = Run(parse_rules(REPEAT_PURCHASE_RULES, "repeat-purchase"), config)
    run.feed(lines)
    result = {"events": len(lines), "horizon_days": horizon_days, **propensity_report(run.records)}
    if rules is not None:
        ruled = Run(rules, config)
        ruled.feed(lines)
        result["rules_version"] = rules.version
        result["by_rule"] = propensity_by_rule(ruled.records, ruled.record_rules)
    return result


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
        lines += _reliability_lines(
            "propensity, calibrated and raw", {"raw": p["reliability_raw"], "calibrated": p["reliability"]}
        )
        lines += _by_rule_lines(generated["propensity_by_rule"])
        lines += _threshold_lines(generated.get("propensity_thresholds", []))
        if "reliability" in o:
            lines += _reliability_lines(
                "next-best offer: the click rate stated for the choice (clicks within the reward window)",
                {"raw (shrunk mean)": o["reliability_raw"], "calibrated (expected_rate)": o["reliability"]},
            )
            lines += _reliability_lines(
                "the offer policy's calibrated rate against its own rewards (any click of the offer in its"
                " reward window), progressive",
                {"calibrated": o["reliability_progressive"]},
            )
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
            f"| the same model, uncalibrated | {uci['raw_auc']} | {uci['raw_log_loss']} | | |",
            "",
        ]
        lines += _reliability_lines(
            "repeat purchase, calibrated and raw", {"raw": uci["reliability_raw"], "calibrated": uci["reliability"]}
        )
        if "by_rule" in uci:
            lines += [f"The rules {uci['rules_version']} on the same invoices:", ""]
            lines += _by_rule_lines(uci["by_rule"])
    audiences = results.get("uci_audiences")
    if audiences:
        lines += [
            f"UCI Online Retail, audiences of rule set {audiences['rules']}: {audiences['customers']:,} identified"
            f" customers over {audiences['months']} months (guests' one-off ids left out).",
            "",
            "| audience | entries | entries per customer per month | customers entering |"
            f" entries per customer entering: median / max | exited within {QUICK_EXIT_DAYS} days |"
            f" entries within {QUICK_EXIT_DAYS} days of an exit |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *(
                f"| {name} | {a['entries']:,} | {a['entries_per_customer_month']} | {a['customers_entering']:,} |"
                f" {a['median_entries']} / {a['max_entries']} | {a[f'exited_within_{QUICK_EXIT_DAYS}d']} |"
                f" {a[f'back_within_{QUICK_EXIT_DAYS}d']} |"
                for name, a in audiences["audiences"].items()
            ),
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
            "| lapse | ROC AUC | mean predicted |",
            "| --- | ---: | ---: |",
            f"| lapse_risk (BG/NBD) | {lapse['model_auc']} | {lapse['mean_risk']} |",
            f"| days since the last order | {lapse['baseline_auc']} | |",
            "",
        ]
        lines += _reliability_lines("lapse_risk as the chance of a lapse", {"lapse_risk": lapse["reliability"]})
        lines += _threshold_lines(lapse.get("thresholds", []))
    return "\n".join(lines)


MONTH_DAYS = 365.25 / 12
QUICK_EXIT_DAYS = 30


def evaluate_audiences(path: Path, rows: int | None, rules: CompiledRules) -> dict[str, Any]:
    """How often customers enter each audience of ``rules`` on real invoices (identified customers; the
    guests' one-off ids are left out): entries per customer per month (entries / (customers seen x months
    of data)), the median and largest number of entries of a customer who entered, the share of entries
    left again within :data:`QUICK_EXIT_DAYS` days, and the share that came within as long of leaving. An
    audience that flaps shows high figures on all of them."""
    from connectors.uci_retail import Rejected as RejectedRow
    from connectors.uci_retail import read_invoices
    from state.affinity import DAY_MS

    pipeline = Pipeline(rules, EngineConfig(models="off"))
    customers: set[str] = set()
    first: int | None = None
    last: int | None = None
    changes: list[tuple[str, str, bool, int]] = []  # audience, customer, entered, time

    def read(outputs: list[Any]) -> None:
        for output in outputs:
            if isinstance(output, Output) and output.stream == "audience_changes" and output.key in customers:
                data = orjson.loads(output.body)["data"]
                changes.append((data["audience"], output.key, data["change"] == "entered", output.time_ms))

    batch: list[RawEvent] = []
    for n, item in enumerate(read_invoices(path, rows)):
        if isinstance(item, RejectedRow):
            continue
        if item.get("userId") is not None:
            customers.add(item["userId"])
        ts_ms = int(datetime.fromisoformat(item["timestamp"]).timestamp() * 1000)
        first, last = min(first or ts_ms, ts_ms), max(last or ts_ms, ts_ms)
        batch.append(RawEvent(n, {"line": n}, orjson.dumps(item)))
        if len(batch) >= TICK_EVERY:
            read(pipeline.feed(batch))
            batch = []
    read(pipeline.feed(batch))
    read(pipeline.finish())
    stats = pipeline.customers[0].engine.stats
    months = max((last or 0) - (first or 0), 1) / (MONTH_DAYS * DAY_MS)
    audiences = {
        audience.id: _audience_figures(
            [c[1:] for c in changes if c[0] == audience.id], len(customers), months, QUICK_EXIT_DAYS * DAY_MS
        )
        for audience in rules.audiences
        if not audience.rule.shadow
    }
    return {
        "rules": rules.version,
        "customers": len(customers),
        "months": round(months, 2),
        "events": sum(stats.get("events", {}).values()),
        "audiences": audiences,
    }


def _audience_figures(changes: list[tuple[str, bool, int]], customers: int, months: float, quick_ms: int) -> dict:
    """Entries of one audience: per customer per month, per customer who entered, how many were left soon and
    how many came soon after an exit."""
    entries: dict[str, int] = defaultdict(int)
    entered_at: dict[str, int] = {}
    exited_at: dict[str, int] = {}
    quick = back = total = 0
    for customer, entered, time_ms in sorted(changes, key=lambda c: c[2]):
        if entered:
            entries[customer] += 1
            entered_at[customer] = time_ms
            total += 1
            back += customer in exited_at and time_ms - exited_at.pop(customer) < quick_ms
        else:
            exited_at[customer] = time_ms
            quick += customer in entered_at and time_ms - entered_at.pop(customer) < quick_ms
    counts = sorted(entries.values())
    return {
        "entries": total,
        "customers_entering": len(counts),
        "entries_per_customer_month": round(total / (customers * months), 4) if customers else None,
        "median_entries": counts[len(counts) // 2] if counts else 0,
        "max_entries": counts[-1] if counts else 0,
        f"exited_within_{QUICK_EXIT_DAYS}d": round(quick / total, 4) if total else None,
        f"back_within_{QUICK_EXIT_DAYS}d": round(back / total, 4) if total else None,
    }


def evaluate_lapse(
    path: Path,
    rows: int | None,
    every_days: int = 30,
    rules: CompiledRules | None = None,
    btyd: BtydParameters = DEFAULT_BTYD,
) -> dict[str, Any]:
    """Lapse risk on real invoices: every ``every_days`` of event time, each buyer not yet lapsed
    is scored; the outcome is whether they then reach ``lapse_days`` without ordering.
    Baseline: days since the last order. ``btyd``: the BG/NBD parameters behind ``lapse_risk``.
    Reliability of the risk as a probability, and, for each threshold on it in ``rules``' audiences,
    the observed lapse rate of the scores that pass it."""
    from bisect import bisect_right

    from connectors.uci_retail import Rejected as RejectedRow
    from connectors.uci_retail import read_invoices
    from state.affinity import DAY_MS
    from state.customer import CustomerState, Lifecycle
    from state.update import apply_event

    lifecycle = Lifecycle(btyd=btyd)
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
        "mean_risk": round(sum(r for r, _, _ in scored) / len(scored), 4) if scored else None,
        "model_auc": _round(auc([r for r, _, _ in scored], labels)),
        "baseline_auc": _round(auc([d for _, d, _ in scored], labels)),
        "reliability": counted([min(max(r, 0.0), 1.0) for r, _, _ in scored], labels).reliability(),
        "thresholds": thresholds_report(
            probability_thresholds(rules) if rules is not None else [], "lapse_risk", ((r, y) for r, _, y in scored)
        ),
        "by_threshold": rates_by_threshold((r, y) for r, _, y in scored),
    }


def _reliability_lines(title: str, tables: dict[str, dict[str, Any]]) -> list[str]:
    """A reliability table: per decile of the prediction, outcomes, mean prediction and observed rate
    of each of ``tables``, side by side; the expected calibration error last."""
    names = list(tables)
    head = " | ".join(f"{name}: outcomes | predicted | observed" for name in names)
    lines = [
        f"| reliability of {title}, by decile of the prediction | {head} |",
        "| --- |" + " ---: | ---: | ---: |" * len(names),
    ]
    rows = {name: {row["decile"]: row for row in table["deciles"]} for name, table in tables.items()}
    for decile in range(10):
        if not any(decile in rows[name] for name in names):
            continue
        cells = []
        for name in names:
            row = rows[name].get(decile)
            cells.append(f"{row['outcomes']:,} | {row['predicted']} | {row['observed']}" if row else " | | ")
        lines.append(f"| {decile / 10:.1f}-{(decile + 1) / 10:.1f} | " + " | ".join(cells) + " |")
    ece = " | ".join(f"| | {tables[name]['ece']}" for name in names)
    lines += [f"| expected calibration error {ece} |", ""]
    return lines


def _by_rule_lines(by_rule: dict[str, dict[str, Any]]) -> list[str]:
    """Propensity per rule (kind of decision) against the positive rate and the recency-frequency heuristic."""
    lines = [
        "| propensity by rule | outcomes | positive rate | mean prediction | calibration error | ROC AUC"
        " | uncalibrated | recency-frequency |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rule, r in by_rule.items():
        lines.append(
            f"| {rule} | {r['outcomes']:,} | {r['positive_rate']} | {r['mean_prediction']} | {r['ece']} |"
            f" {r['model_auc']} | {r['raw_auc']} | {r['baseline_auc']} |"
        )
    return [*lines, ""]


def _threshold_lines(thresholds: list[dict[str, Any]]) -> list[str]:
    """What each audience's threshold on a probability meant here: the observed rate of what it claims."""
    if not thresholds:
        return []
    lines = [
        "| audience threshold | scores passing | mean score | observed rate of the event |",
        "| --- | ---: | ---: | ---: |",
    ]
    for t in thresholds:
        lines.append(
            f"| {t['audience']}: {t['feature']} {t['op']} {t['threshold']} ({t['event']}) | {t['scores']:,} |"
            f" {t['mean_score']} | {t['observed_rate']} |"
        )
    return [*lines, ""]
