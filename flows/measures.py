"""What a run's decisions achieved, read back from its output folder: experiments and attribution.

:func:`finalize_experiments` completes ``experiments.jsonl`` (the per-arm counts by report period,
summed over shards) with each arm's rate and lift against its control; :func:`render_measures`
is ``nudgeflow report``: the experiments as a table, and the revenue attributed to each rule,
channel and offer, with the spend and return on spend when costs are configured.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from flows.lift import experiment_report
from schemas.experiments import CONTROL, HOLDOUT, ExperimentConfig
from schemas.records import iso_ms
from schemas.streams import ATTRIBUTIONS, CHANNELS, EXPERIMENTS, OUTPUT_FILES, STATS, trigger_stream

MODELS = ("last_touch", "linear")


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def finalize_experiments(folder: Path, config: ExperimentConfig) -> None:
    """Rewrite ``experiments.jsonl`` with each arm's figures (see :func:`flows.lift.experiment_report`)
    per report period; the last line is the run's end."""
    path = folder / OUTPUT_FILES[EXPERIMENTS]
    periods = _lines(path)
    if not periods:
        return
    controls = {test.id: test.control for test in config.tests} | {HOLDOUT: CONTROL}
    cuped = config.pre_period is not None
    out = []
    for n, period in enumerate(periods):
        start = period["period_start_ms"]
        experiments = {
            experiment: {
                "control": controls.get(experiment, CONTROL),
                "arms": experiment_report(arms, controls.get(experiment, CONTROL), cuped),
            }
            for experiment, arms in sorted(period["experiments"].items())
        }
        line = {
            "period_start": iso_ms(start),
            "period_end": iso_ms(start + config.report_every),
            "final": n == len(periods) - 1,
            "cuped": config.pre_period,
            "experiments": experiments,
        }
        out.append(orjson.dumps(line, option=orjson.OPT_SORT_KEYS))
    path.write_bytes(b"\n".join(out) + b"\n")


# --- nudgeflow report ----------------------------------------------------------------------------
def render_measures(folder: Path) -> str:
    """``nudgeflow report DIR``: experiments, and attributed revenue per rule, channel and offer."""
    summary_path = folder / OUTPUT_FILES[STATS]
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} does not exist: is {folder} the output folder of a run?")
    costs = orjson.loads(summary_path.read_bytes()).get("costs", {})
    return "\n".join([*_experiment_lines(folder), "", *_revenue_lines(folder, costs)])


def _experiment_lines(folder: Path) -> list[str]:
    periods = _lines(folder / OUTPUT_FILES[EXPERIMENTS])
    if not periods:
        return ["experiments: none (no holdout or test in the rule file, or no decision in them)"]
    last = periods[-1]
    lines = [
        f"experiments up to {last['period_end']} (lift against each test's control; 95% intervals):",
        f"  {'experiment':<20} {'arm':<14} {'exposed':>9} {'conv.':>7} {'rate':>8}  {'lift':<28}  relative lift",
    ]
    for experiment, entry in last["experiments"].items():
        for arm, row in entry["arms"].items():
            rate = "-" if row["rate"] is None else f"{row['rate']:.2%}"
            counts = f"{row['exposed']:>9,} {row['conversions']:>7,} {rate:>8}"
            if arm == entry["control"]:
                lines.append(f"  {experiment:<20} {arm:<14} {counts}  (control)")
                continue
            lines.append(f"  {experiment:<20} {arm:<14} {counts}  {_lifts(row)}")
            if "cuped" in row:
                lines.append(f"  {'':<20} {'':<14} {'CUPED':>26}  {_lifts(row['cuped'])}")
    if last.get("cuped"):
        lines.append(f"  (CUPED: adjusted by each customer's orders in the {last['cuped']} before exposure)")
    return lines


def _lifts(figures: dict[str, Any]) -> str:
    absolute = _interval(figures.get("lift"), figures.get("lift_ci"))
    return f"{absolute:<28}  {_interval(figures.get('relative_lift'), figures.get('relative_lift_ci'))}"


def _interval(value: float | None, ci: list[float] | None) -> str:
    if value is None or ci is None:
        return "-"
    return f"{value:+.2%} [{ci[0]:+.2%}, {ci[1]:+.2%}]"


def _revenue_lines(folder: Path, costs: dict[str, Any]) -> list[str]:
    """Deliveries, attributed revenue (each model), spend and return on spend per rule, channel and offer."""
    deliveries: dict[str, dict[str, int]] = {
        "rule": defaultdict(int),
        "channel": defaultdict(int),
        "offer": defaultdict(int),
    }
    spend: dict[str, dict[str, float]] = {
        "rule": defaultdict(float),
        "channel": defaultdict(float),
        "offer": defaultdict(float),
    }
    per_message, per_offer = costs.get("per_message", {}), costs.get("per_offer", {})
    for channel in CHANNELS:
        for record in _lines(folder / OUTPUT_FILES[trigger_stream(channel)]):
            data = record["data"]
            cost = per_message.get(channel, 0.0) + per_offer.get(data.get("offer_id") or "", 0.0)
            for by, key in (("rule", data["rule_id"]), ("channel", channel), ("offer", data.get("offer_id"))):
                if key is not None:
                    deliveries[by][key] += 1
                    spend[by][key] += cost
    revenue: dict[str, dict[tuple[str, str], float]] = {by: defaultdict(float) for by in deliveries}
    for record in _lines(folder / OUTPUT_FILES[ATTRIBUTIONS]):
        data = record["data"]
        for by, key in (("rule", data["rule_id"]), ("channel", data["channel"]), ("offer", data.get("offer_id"))):
            if key is not None:
                revenue[by][(key, data["model"])] += data["revenue"]
    priced = bool(per_message or per_offer)
    lines = ["attributed revenue (last touch | linear)" + (", spend and return on spend:" if priced else ":")]
    for by in ("rule", "channel", "offer"):
        keys = sorted(deliveries[by].keys() | {key for key, _ in revenue[by]})
        if not keys:
            continue
        head = f"  {'by ' + by:<32} {'sent':>8} {'last touch':>12} {'linear':>12}"
        lines.append(head + (f" {'spend':>10} {'return':>10}" if priced else ""))
        for key in keys:
            last, linear = revenue[by][(key, "last_touch")], revenue[by][(key, "linear")]
            row = f"  {key:<32} {deliveries[by][key]:>8,} {last:>12,.2f} {linear:>12,.2f}"
            if priced:
                cost = spend[by][key]
                ros = f"{last / cost:>9,.1f}x" if cost > 0 else f"{'-':>10}"
                row += f" {cost:>10,.2f} {ros}"
            lines.append(row)
    if len(lines) == 1:
        lines.append("  nothing delivered")
    return lines
