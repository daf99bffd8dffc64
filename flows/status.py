"""A live one-line throughput summary, read from this process's metrics: rewritten in place on a
terminal, a new line at a steady interval elsewhere (CI, ``nohup``, a pipe)."""

from __future__ import annotations

import sys
import threading
import time

from prometheus_client import REGISTRY


def _total(metric: str) -> float:
    """The sum of a metric's samples over all labels in this process."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == metric
        for sample in family.samples
        if sample.name in (metric, metric + "_total")
    )


def status_text(rate: float | None = None) -> str:
    """Events, rate, decisions, dead letters and lag so far, in one line."""
    events = _total("nudgeflow_events")
    parts = [f"{events:,.0f} events"]
    if rate is not None:
        parts.append(f"{rate:,.0f}/s")
    parts += [
        f"{_total('nudgeflow_decisions'):,.0f} triggers",
        f"{_total('nudgeflow_audience_changes'):,.0f} audience changes",
        f"{_total('nudgeflow_invalid_events'):,.0f} dead letters",
        f"lag {_total('nudgeflow_kafka_lag_messages'):,.0f}",
    ]
    return ", ".join(parts)


class StatusLine:
    """Writes the status on stderr every ``every`` seconds until stopped: one line rewritten in
    place (``rewrite``, for a terminal), or one new line each time."""

    def __init__(self, every: float = 1.0, rewrite: bool = True) -> None:
        self.every = every
        self.rewrite = rewrite
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nudgeflow-status", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = last_time = time.monotonic()
        last_events = 0.0
        while not self._stop.wait(self.every):
            now, events = time.monotonic(), _total("nudgeflow_events")
            rate = (events - last_events) / (now - last_time)
            last_time, last_events = now, events
            if self.rewrite:
                sys.stderr.write(f"\r\x1b[K{now - started:7.0f} s  {status_text(rate)}")
            else:
                sys.stderr.write(f"nudgeflow: {now - started:.0f} s: {status_text(rate)}\n")
            sys.stderr.flush()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if self.rewrite:
            sys.stderr.write("\n")
