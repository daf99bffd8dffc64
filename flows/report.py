"""Run summaries and rule-set diffs, read back from an output folder."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from flows.measures import finalize_experiments
from flows.settings import Settings
from operators.models.propensity import Calibration
from operators.parse import readable_firsts
from schemas.experiments import ExperimentConfig
from schemas.streams import (
    AUDIENCE_CHANGES,
    CHANNELS,
    DEAD_LETTERS,
    DECISION_STREAMS,
    OUTPUT_FILES,
    SHADOW_AUDIENCE_CHANGES,
    SHADOW_TRIGGERS,
    STATS,
    SUPPRESSIONS,
    trigger_stream,
)

SUMMARY = OUTPUT_FILES[STATS]
TIMER = "timer"
"""The ``position.source`` of a dead letter from a timer, not from an input line."""
COMPARED_FIELDS = ("time", "channel", "content", "offer_id", "expires_at", "shadow", "change", "stream", "suppressed")


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def finalize_summary(
    folder: Path, lines: dict[str, dict[str, int]] | None = None, experiments: ExperimentConfig | None = None
) -> dict[str, Any]:
    """Add output line counts and dead letters by reason to ``summary.json``, and the account of
    the input ``lines`` read per file when given (see :func:`line_account`); with the rule file's
    ``experiments`` section, each arm's lift to ``experiments.jsonl`` and the costs to the summary;
    return the summary."""
    path = folder / SUMMARY
    summary = orjson.loads(path.read_bytes()) if path.exists() else {}
    if experiments is not None:
        finalize_experiments(folder, experiments)
        if experiments.costs.per_message or experiments.costs.per_offer:
            summary["costs"] = experiments.costs.model_dump()
    outputs = {}
    for stream, name in sorted(OUTPUT_FILES.items()):
        if stream not in (STATS, DEAD_LETTERS):
            file = folder / name
            outputs[name] = file.read_bytes().count(b"\n") if file.exists() else 0
    dead = _lines(folder / OUTPUT_FILES[DEAD_LETTERS])
    outputs[OUTPUT_FILES[DEAD_LETTERS]] = len(dead)
    summary["outputs"] = dict(sorted(outputs.items()))
    for model in summary.get("models", {}).values():
        if "progressive" in model:
            model["quality"] = Calibration.from_counts(model["progressive"]).summary()
            model["reliability"] = Calibration.from_counts(model["progressive"]).reliability()
        if "progressive_raw" in model:
            model["reliability_raw"] = Calibration.from_counts(model["progressive_raw"]).reliability()
    summary["dead_letters"] = dict(sorted(Counter(record["reason"] for record in dead).items()))
    if timer_errors := sum(1 for record in dead if record.get("position", {}).get("source") == TIMER):
        summary["timer_errors"] = timer_errors
    readable_firsts(summary)
    if lines is not None:
        summary["lines"] = line_account(summary, lines)
    path.write_bytes(orjson.dumps(summary, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
    return summary


def line_account(summary: dict[str, Any], files: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Every input line accounted for: ``read`` = ``accepted`` + ``dead_letters`` + ``duplicates``
    + ``erased_events`` + ``blank``, and ``unaccounted`` is the difference (0). Failed timers are no
    input line."""
    account = {
        "read": sum(counts["read"] for counts in files.values()),
        "blank": sum(counts["blank"] for counts in files.values()),
        "accepted": _accepted(summary),
        "dead_letters": _input_dead_letters(summary),
        "duplicates": summary.get("duplicates", 0),
        "erased_events": summary.get("erased_events", 0),
    }
    parts = ("blank", "accepted", "dead_letters", "duplicates", "erased_events")
    account["unaccounted"] = account["read"] - sum(account[part] for part in parts)
    return {**account, "files": dict(sorted(files.items()))}


def _accepted(summary: dict[str, Any]) -> int:
    return sum(summary.get("events", {}).values()) + sum(summary.get("unknown_events", {}).values())


def _input_dead_letters(summary: dict[str, Any]) -> int:
    """Dead letters of input lines: all but those of timers whose processing failed."""
    return sum(summary.get("dead_letters", {}).values()) - summary.get("timer_errors", 0)


def measured(summary: dict[str, Any]) -> str:
    """Orders credited to deliveries (last touch) and the experiments' exposures, in a few words."""
    credited = {k: v for k, v in summary.get("attributed_revenue_cents", {}).items() if k.startswith("last_touch.")}
    orders = sum(n for k, n in summary.get("attributions", {}).items() if k.startswith("last_touch."))
    exposed = {
        experiment: sum(arm.get("exposed", 0) for arm in arms.values())
        for experiment, arms in summary.get("experiments", {}).items()
    }
    return (
        f"orders credited to deliveries {orders:,} (revenue {sum(credited.values()) / 100:,.2f});"
        f" exposed per experiment: {_join(exposed)}"
    )


def _by_reason(suppressions: dict[str, dict[str, int]]) -> dict[str, int]:
    return {reason: sum(rules.values()) for reason, rules in suppressions.items()}


def _join(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in sorted(counts.items())) or "none"


def render_summary(summary: dict[str, Any], settings: Settings, seconds: float) -> str:
    """A few human lines about a run, for stderr."""
    events = _accepted(summary)
    dead = sum(summary.get("dead_letters", {}).values())
    read = events + _input_dead_letters(summary) + summary.get("duplicates", 0) + summary.get("erased_events", 0)
    blank = summary.get("lines", {}).get("blank", 0)
    rate = read / seconds if seconds > 0 else 0.0
    outputs = summary.get("outputs", {})
    by_channel = {channel: outputs.get(OUTPUT_FILES[trigger_stream(channel)], 0) for channel in CHANNELS}
    triggers = {channel: n for channel, n in by_channel.items() if n}
    unknown = summary.get("unknown_events", {})
    lines = [
        f"nudgeflow: {read:,} records from {', '.join(p.name for p in settings.input)} in {seconds:.1f} s"
        f" ({rate:,.0f}/s), rules {settings.rules.name}",
        f"  accepted {events:,} events; dead letters {dead:,} ({_join(summary.get('dead_letters', {}))});"
        f" duplicates {summary.get('duplicates', 0):,}; late {summary.get('late', 0):,};"
        f" unknown event names {len(unknown)}; blank lines {blank:,}"
        + (f"; timer errors {summary['timer_errors']:,}" if "timer_errors" in summary else ""),
        f"  customers {summary.get('customers', 0):,} (+{summary.get('anonymous_customers', 0):,} anonymous);"
        f" identities linked {summary.get('identities_linked', 0):,}"
        + (f"; events of erased customers dropped {summary['erased_events']:,}" if "erased_events" in summary else ""),
        f"  triggers by channel: {_join(triggers)}; shadow {outputs.get(OUTPUT_FILES[SHADOW_TRIGGERS], 0):,}",
        f"  triggers by rule: {_join(summary.get('triggers', {}))}",
        f"  audience changes: {_join(summary.get('audience_changes', {}))}",
        f"  suppressed by the contact policy: {_join(_by_reason(summary.get('suppressions', {})))};"
        f" deferred for quiet hours {sum(summary.get('deferred', {}).values()):,}",
    ]
    unaccounted = summary.get("lines", {}).get("unaccounted", 0)
    if unaccounted:
        lines.append(f"  warning: {unaccounted:,} input lines are not accounted for (see lines in summary.json)")
    models = summary.get("models", {})
    if "propensity" in models:
        model, quality = models["propensity"], models["propensity"].get("quality", {})
        lines.append(
            f"  propensity model ({settings.models}): {quality.get('outcomes', 0):,} outcomes,"
            f" positive rate {quality.get('positive_rate')}, progressive ROC AUC {quality.get('roc_auc')},"
            f" log loss {quality.get('log_loss')}, calibration error {model.get('reliability', {}).get('ece')},"
            f" drifts {model.get('drifts', 0)}"
        )
    if "next_best_offer" in models:
        offers = models["next_best_offer"]
        lines.append(
            f"  offers chosen: {_join(offers.get('pulls', {}))}; rewarded: {_join(offers.get('rewards', {}))};"
            f" calibration error of the stated rate {offers.get('reliability', {}).get('ece')}"
        )
    if catalogue := summary.get("offers"):
        given = {offer: counts.get("given", 0) for offer, counts in catalogue.items()}
        redeemed = {offer: counts["redeemed"] for offer, counts in catalogue.items() if counts.get("redeemed")}
        lines.append(f"  offers given: {_join(given)}; redeemed: {_join(redeemed)}")
    if "recommendations" in models:
        reco = models["recommendations"]
        lines.append(
            f"  recommender: {reco.get('products', 0):,} products; sampled checks {reco.get('checked', 0):,},"
            f" hits {reco.get('hits', 0):,} (most popular: {reco.get('most_popular_hits', 0):,})"
        )
    dropped, unknown = summary.get("order_lines_dropped", {}), summary.get("unknown_fields", {})
    if dropped or unknown:
        counts = {path: entry["count"] for path, entry in unknown.items()}
        lines.append(f"  order lines dropped: {_join(dropped)}; unknown fields: {_join(counts)} (see summary.json)")
    if summary.get("attributions") or summary.get("experiments"):
        lines.append(f"  {measured(summary)} (nudgeflow report {settings.out})")
    lines.append(f"  outputs in {settings.out}/")
    return "\n".join(lines)


# --- diff of two runs ---------------------------------------------------------------------
def _decisions(folder: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Decisions of a run keyed by (rule id, customer, cause)."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for stream, name in OUTPUT_FILES.items():
        if stream not in DECISION_STREAMS:
            continue
        for record in _lines(folder / name):
            data = record["data"]
            rule = data["rule_id"]
            audience = stream in (AUDIENCE_CHANGES, SHADOW_AUDIENCE_CHANGES)
            cause = f"{data['change']}@{record['time']}" if audience else data["cause"]
            decision = {"time": record["time"], "stream": stream, **data}
            if stream == SUPPRESSIONS:  # why the policy stopped it (a trigger's own reason is text for people)
                decision["suppressed"] = data["reason"]
            out[(rule, record["subject"], cause)] = decision
    return out


@dataclass
class Diff:
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0

    def to_json(self) -> bytes:
        doc = {"added": self.added, "removed": self.removed, "changed": self.changed, "unchanged": self.unchanged}
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


def diff_decisions(folder_a: Path, folder_b: Path) -> Diff:
    """What run B decided instead of run A: matched by rule id, customer and cause."""
    a, b = _decisions(folder_a), _decisions(folder_b)
    diff = Diff()
    for key in sorted(a.keys() | b.keys()):
        rule, customer, cause = key
        ident = {"rule_id": rule, "customer": customer, "cause": cause}
        if key not in a:
            diff.added.append({**ident, "decision": b[key]})
        elif key not in b:
            diff.removed.append({**ident, "decision": a[key]})
        else:
            fields = {f: [a[key].get(f), b[key].get(f)] for f in COMPARED_FIELDS if a[key].get(f) != b[key].get(f)}
            if fields:
                diff.changed.append({**ident, "fields": fields})
            else:
                diff.unchanged += 1
    return diff


def _policy_changes(changed: list[dict[str, Any]]) -> Counter[str]:
    """Decisions one run delivered and the other suppressed: what B did instead."""
    counts: Counter[str] = Counter()
    for item in changed:
        streams = item["fields"].get("stream")
        if streams is None or SUPPRESSIONS not in streams:
            continue
        if streams[1] == SUPPRESSIONS:
            counts[f"suppressed ({item['fields']['suppressed'][1]})"] += 1
        else:
            counts["delivered, not suppressed"] += 1
    return counts


def render_diff(diff: Diff, rules_a: Path, rules_b: Path) -> str:
    """A human summary of a diff, counted per rule, with a few examples."""

    def per_rule(items: list[dict[str, Any]]) -> str:
        return _join(Counter(item["rule_id"] for item in items))

    lines = [
        f"rules B ({rules_b}) instead of A ({rules_a}):",
        f"  added   {len(diff.added):,}: {per_rule(diff.added)}",
        f"  removed {len(diff.removed):,}: {per_rule(diff.removed)}",
        f"  changed {len(diff.changed):,}: {per_rule(diff.changed)}",
        f"  unchanged {diff.unchanged:,}",
    ]
    policy = _policy_changes(diff.changed)
    if policy:
        lines.append(f"  of the changed, by the contact policy: {_join(policy)}")
    for label, items in (("added", diff.added), ("removed", diff.removed), ("changed", diff.changed)):
        for item in items[:3]:
            lines.append(f"  e.g. {label}: {item['rule_id']} for {item['customer']} ({item['cause']})")
    return "\n".join(lines)
