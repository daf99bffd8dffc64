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


def _read() -> tuple[float, str]:
    """How much was read so far, and what: lines from recordings, else events."""
    lines = _total("nudgeflow_input_lines")
    return (lines, "lines read") if lines else (_total("nudgeflow_events"), "events")


def status_text(rate: float | None = None) -> str:
    """Lines read (from recordings) and their rate, else events and theirs; decisions, dead
    letters and lag so far, in one line."""
    read, what = _read()
    parts = [f"{read:,.0f} {what}"]
    if rate is not None:
        parts.append(f"{rate:,.0f}/s")
    if what != "events":
        parts.append(f"{_total('nudgeflow_events'):,.0f} events")
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
        last_read = 0.0
        while not self._stop.wait(self.every):
            now, read = time.monotonic(), _read()[0]
            rate = (read - last_read) / (now - last_time)
            last_time, last_read = now, read
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
