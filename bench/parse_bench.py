"""CPU cost of parsing: bytes to validated envelopes (and its parts), and an envelope's event after
crossing processes.

    python bench/parse_bench.py                    # the 10k-customer stream, 200,000 events
    python bench/parse_bench.py --events 50000

Figures are CPU time (user + system) per event, best of ``--repeat`` runs. "crossing" compares
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

import orjson
from flow_bench import records, stream

from flows.runtime import tune_gc
from operators.parse import Rejected, parse
from schemas.envelope import Envelope, envelope_of
from schemas.events import contract_notes, validate_event


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_us_per_item(work: Callable[[], Any], items: int, repeat: int) -> float:
    """The least CPU time of ``repeat`` runs of ``work``, in microseconds per item."""
    best = float("inf")
    for _ in range(repeat):
        started = cpu_seconds()
        work()
        best = min(best, cpu_seconds() - started)
    return best / items * 1e6


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
    objects = list(map(orjson.loads, payloads))
    validated = list(map(validate_event, objects))
    rows = {
        "parse + validate (bytes to envelope)": cpu_us_per_item(lambda: deque(map(parse, raws), 0), n, args.repeat),
        "of which: JSON to dicts (orjson)": cpu_us_per_item(
            lambda: deque(map(orjson.loads, payloads), 0), n, args.repeat
        ),
        "of which: validation into Structs, timestamps read": cpu_us_per_item(
            lambda: deque(map(validate_event, objects), 0), n, args.repeat
        ),
        "of which: unknown-field notes": cpu_us_per_item(
            lambda: deque(
                (contract_notes(event, data) for (event, _, _), data in zip(validated, objects, strict=True)), 0
            ),
            n,
            args.repeat,
        ),
        "of which: the envelope": cpu_us_per_item(
            lambda: deque(
                (envelope_of(e, raw, 0, {}, ts, rcv) for (e, ts, rcv), raw in zip(validated, payloads, strict=True)), 0
            ),
            n,
            args.repeat,
        ),
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
    print(f"stream: {path.name}, {n:,} events ({len(envs):,} accepted)")
    print("| step | CPU us per event |\n| --- | ---: |")
    for step, us in rows.items():
        print(f"| {step} | {us:.2f} |")
    bare = sum(map(len, sent_bare)) / len(envs)
    whole = bare + sum(map(len, sent_with_event)) / len(envs)
    print(f"\nbytes sent per envelope: {bare:.0f} without its event, {whole:.0f} with it")


if __name__ == "__main__":
    main()
