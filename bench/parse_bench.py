"""CPU cost of parsing: bytes to validated envelopes (and its parts), against the general way every
event took before plain ones were decoded straight into their model, and an envelope's event after
crossing processes.

    python bench/parse_bench.py                    # the 10k-customer stream, 200,000 events
    python bench/parse_bench.py --events 50000

Figures are CPU time (user + system) per event, best of ``--repeat`` runs, the two ways of parsing
alternated within each run. "crossing" compares
the two ways an envelope's event can reach another worker: pickled with it, or decoded again from
its raw bytes where it is read (what :class:`schemas.envelope.Envelope` does).
"""

from __future__ import annotations

import argparse
import pickle
import resource
from collections import deque
from collections.abc import Callable
from typing import Any

from flow_bench import records, stream

from flows.runtime import tune_gc
from operators.parse import _EPOCH_MS, _SCAN, Rejected, _parse_generally, parse
from schemas.envelope import Envelope, envelope_of
from schemas.events import _DECODERS, EVENT_MODELS, _times

GENERAL = "before: every event the general way (JSON to dicts, validated, notes taken)"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_us_per_item(work: Callable[[], Any], items: int, repeat: int) -> float:
    """The least CPU time of ``repeat`` runs of ``work``, in microseconds per item."""
    return alternated({"": (work, items)}, repeat)[""]


def alternated(works: dict[str, tuple[Callable[[], Any], int]], repeat: int) -> dict[str, float]:
    """The least CPU time of each work (a function, and the items it handles) over ``repeat``
    rounds, each round running them all in turn, in microseconds per item: a machine busier in one
    round weighs on all of them alike."""
    best = dict.fromkeys(works, float("inf"))
    for _ in range(repeat):
        for name, (work, _) in works.items():
            started = cpu_seconds()
            work()
            best[name] = min(best[name], cpu_seconds() - started)
    return {name: best[name] / items * 1e6 for name, (_, items) in works.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tune_gc()
    path = stream(args.customers, 1)
    raws = records(path, args.events)
    n = len(raws)
    envs = [env for env in map(parse, raws) if not isinstance(env, Rejected)]
    events = [env.event for env in envs]
    sent_bare = [pickle.dumps(env) for env in envs]
    sent_with_event = [pickle.dumps(event) for event in events]

    def read_after_crossing() -> None:
        for body in sent_bare:
            envelope: Envelope = pickle.loads(body)
            assert envelope.event is not None

    def unpickle_events() -> None:
        for body in sent_with_event:
            pickle.loads(body)

    payloads = [raw.payload for raw in raws]
    scanned = [(payload, *_SCAN.scan(payload)[:3]) for payload in payloads]
    plain = [(payload, EVENT_MODELS[model], ts, received) for payload, model, ts, received in scanned if model >= 0]
    decoded = [(_DECODERS[model].decode(payload), ts, received) for payload, model, ts, received in plain]
    timed = [(event, *_times(event)) for event, _, _ in decoded]
    parsing = alternated(
        {
            "parse + validate (bytes to envelope)": (lambda: deque(map(parse, raws), 0), n),
            "of which: the scan (plain? which model? timestamp and receivedAt; state._native.EventScan)": (
                lambda: deque(map(_SCAN.scan, payloads), 0),
                n,
            ),
            "of which: JSON straight into Structs (msgspec)": (
                lambda: deque((_DECODERS[model].decode(payload) for payload, model, _, _ in plain), 0),
                len(plain),
            ),
            "of which: the other date-times read (state._native.EpochMs)": (
                lambda: deque((_times(event, _EPOCH_MS, ts, received) for event, ts, received in decoded), 0),
                len(plain),
            ),
            "of which: the envelope": (
                lambda: deque(
                    (envelope_of(e, raw, 0, {}, ts, rcv) for (e, ts, rcv), (raw, *_) in zip(timed, plain, strict=True)),
                    0,
                ),
                len(plain),
            ),
            GENERAL: (lambda: deque(map(_parse_generally, raws), 0), n),
        },
        args.repeat,
    )
    rows = {
        **parsing,
        "crossing: pickle the envelope, without its event": cpu_us_per_item(
            lambda: [pickle.dumps(env) for env in envs], len(envs), args.repeat
        ),
        "crossing: unpickle it and decode its event again": cpu_us_per_item(
            read_after_crossing, len(envs), args.repeat
        ),
        "instead: pickle the event's Structs too": cpu_us_per_item(
            lambda: [pickle.dumps(event) for event in events], len(envs), args.repeat
        ),
        "instead: unpickle the event's Structs": cpu_us_per_item(unpickle_events, len(envs), args.repeat),
    }
    print(f"stream: {path.name}, {n:,} events ({len(envs):,} accepted, {len(plain):,} plain)")
    print("| step | CPU us per event |\n| --- | ---: |")
    for step, us in rows.items():
        print(f"| {step} | {us:.2f} |")
    cheaper = parsing[GENERAL] / parsing["parse + validate (bytes to envelope)"]
    print(f"\nparsing is {cheaper:.2f}x cheaper than the general way")
    bare = sum(map(len, sent_bare)) / len(envs)
    whole = bare + sum(map(len, sent_with_event)) / len(envs)
    print(f"\nbytes sent per envelope: {bare:.0f} without its event, {whole:.0f} with it")


if __name__ == "__main__":
    main()
