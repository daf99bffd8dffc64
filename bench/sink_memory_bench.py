"""Benchmark of the output-folder sink's memory: peak RSS of a whole replay, per customer.

    python bench/sink_memory_bench.py                        # 20k customers, one day
    python bench/sink_memory_bench.py --customers 50000 --rounds 2

Each ``nudgeflow replay`` runs in its own process; its peak RSS and CPU time (user+sys) come from
``os.wait4``. A generated day (see ``bench/flow_bench.py``, cached in ``bench/.cache/``) is
replayed against one event per customer (each customer's first event) for the same customers:
the difference, per customer, is what the day's events and outputs cost on top of the customers.
Both sinks run in the same rounds: records held until the end of input (unlimited runs, as before
run files) and bounded runs (the default, or ``--run-records``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
UNLIMITED = sys.maxsize


def first_event_of_each_customer(day: Path) -> Path:
    """A stream of each customer's first event in ``day`` (made once, then cached beside it)."""
    path = day.with_name(day.stem + "-first.jsonl")
    if path.exists():
        return path
    seen: set[str] = set()
    tmp = path.with_suffix(".part")
    with day.open("rb") as lines, tmp.open("wb") as out:
        for line in lines:
            event = orjson.loads(line)
            customer = event.get("userId") or event.get("anonymousId")
            if customer and customer not in seen:
                seen.add(customer)
                out.write(line)
    tmp.rename(path)
    return path


def replay_in_child(run_records: int, cli_args: list[str]) -> None:
    """``nudgeflow replay`` with a sink that holds ``run_records`` records per stream (this is the child)."""
    from connectors import files

    sink = files.OutputFolderSink

    class Sized(sink):  # type: ignore[valid-type, misc]
        def __init__(self, folder: str | Path, errors: files.WriteErrors | None = None, **options: Any) -> None:
            run_bytes = files.RUN_BYTES if run_records != UNLIMITED else UNLIMITED
            super().__init__(folder, errors, run_records, run_bytes, **options)

    files.OutputFolderSink = Sized  # type: ignore[misc]
    from flows.cli import main  # imports the sink by name: after the swap

    sys.exit(main(cli_args))


def measure(stream: Path, out: Path, run_records: int) -> tuple[float, float]:
    """Peak RSS (MB) and CPU seconds of one replay of ``stream`` in a new process."""
    cmd = [sys.executable, __file__, "--child", str(run_records), "replay", str(stream)]
    cmd += ["--out", str(out), "--force", "--quiet"]
    shutil.rmtree(out, ignore_errors=True)  # no erasure ledger of a run before
    child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"replay failed ({child.returncode}): {' '.join(cmd)}")
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="alternated rounds; the lowest figures are kept")
    parser.add_argument("--run-records", type=int, help="records per run of the bounded sink (default: its own)")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        replay_in_child(int(args.child[0]), args.child[1:])
    sys.path.insert(0, str(REPO / "bench"))
    from flow_bench import machine, stream

    from connectors.files import RUN_RECORDS

    day = stream(args.customers, args.days)
    first = first_event_of_each_customer(day)
    sinks = {
        "unlimited (held to the end)": UNLIMITED,
        f"bounded ({args.run_records or RUN_RECORDS:,} a run)": args.run_records or RUN_RECORDS,
    }
    streams = {"day": day, "one event each": first}
    best: dict[tuple[str, str], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for sink, run_records in sinks.items():
                for name, path in streams.items():
                    mb, cpu = measure(path, Path(tmp) / "out", run_records)
                    old = best.get((sink, name), (mb, cpu))
                    best[sink, name] = (min(mb, old[0]), min(cpu, old[1]))
    lines = {name: sum(1 for _ in path.open("rb")) for name, path in streams.items()}
    print(f"{machine()}; {args.customers:,} customers, {args.days} day(s): {lines['day']:,} events in the day,")
    print(f"{lines['one event each']:,} in the replay of one event each; best of {args.rounds} round(s)")
    print(
        "| sink | peak RSS, day (MB) | peak RSS, one event each (MB) | KB per customer above one event each |"
        " CPU s, day | CPU s, one event each |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for sink in sinks:
        (day_mb, day_cpu), (one_mb, one_cpu) = best[sink, "day"], best[sink, "one event each"]
        per_customer = (day_mb - one_mb) * 1024 / args.customers
        print(f"| {sink} | {day_mb:,.0f} | {one_mb:,.0f} | {per_customer:.1f} | {day_cpu:.1f} | {one_cpu:.1f} |")


if __name__ == "__main__":
    main()
