"""The flow run in-process, as the HTTP API sees it: its outputs kept in memory and appended to files.

:class:`LiveStore` mirrors what the Redis store keeps (see :mod:`connectors.redis_store`): each
customer's latest profile (allowlisted traits only), last decisions newest first, the members of
each audience, and a bounded log of each audience's entries and exits. :class:`LiveOutputSink`
takes the flow's ``(stream, Output)`` items, appends each stream's records to its file in the
output folder as they come (in arrival order, not sorted as a replay's files are) and feeds the
store. :class:`LocalBackend` answers the HTTP API from both, and appends accepted events to the
event journal the flow reads (:mod:`connectors.journal`).
"""

from __future__ import annotations

import asyncio
import bisect
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from bytewax.outputs import StatefulSinkPartition

from connectors.files import ModelsWriter, OutputFolderError, OutputFolderSink, _SummaryPartition
from connectors.http.backend import Change, Page, decode_cursor, encode_cursor
from connectors.journal import EventJournal
from connectors.redis_store import decision_entry, is_decision_stream, is_deletion, membership
from schemas.items import Output
from schemas.metrics import DECISION_LATENCY
from schemas.streams import (
    AUDIENCE_CHANGES,
    DEAD_LETTERS,
    ERASURES,
    EXPERIMENTS,
    MODEL_FILE,
    MODELS,
    OUTPUT_FILES,
    PROFILES,
    STATS,
)

JOURNAL_FILE = "events.jsonl"
"""The event journal's name in a live run's output folder."""
SUMMARY_SECONDS = 5.0
"""``summary.json`` is rewritten at most this often while counters come in (and at the end)."""
KEPT_ON_RESTART = frozenset({OUTPUT_FILES[ERASURES]})
"""Files a restart appends to: the erasure ledger (the flow reads it first)."""


class LiveStore:
    """Profiles, last decisions, audience members and audience changes, in memory; thread-safe.

    ``traits``: the traits kept in profiles (the others stay out). ``decisions_kept`` per customer,
    ``changes_kept`` per audience (the oldest go first).
    """

    def __init__(self, traits: frozenset[str] = frozenset(), decisions_kept: int = 20, changes_kept: int = 100_000):
        self.traits = traits
        self.decisions_kept = decisions_kept
        self.changes_kept = changes_kept
        self._lock = threading.Lock()
        self._profiles: dict[str, bytes] = {}
        self._decisions: dict[str, deque[bytes]] = {}
        self._members: dict[str, set[str]] = {}
        self._sorted: dict[str, list[str]] = {}  # audience -> its members sorted, until it changes
        self._changes: dict[str, deque[Change]] = {}

    def add(self, items: Iterable[tuple[str, Output]]) -> None:
        """Apply the flow's outputs, in order; streams the store does not keep are ignored."""
        with self._lock:
            for stream, output in items:
                if stream == PROFILES:
                    self._profile(output)
                elif stream == AUDIENCE_CHANGES:
                    self._audience_change(output)
                elif is_decision_stream(stream):
                    self._decision(stream, output)

    def _profile(self, output: Output) -> None:
        customer = output.key
        if is_deletion(output.body):  # erased or expired: the engine sends its audience exits too
            self._profiles.pop(customer, None)
            self._decisions.pop(customer, None)
            return
        profile = orjson.loads(output.body)
        traits = profile.get("traits") or {}
        kept = {
            "customer_id": customer,
            "features": profile.get("features") or {},
            "audiences": profile.get("audiences") or [],
            "traits": {name: value for name, value in traits.items() if name in self.traits},
            "match_keys": profile.get("match_keys") or {},
            "updated_at": profile.get("updated_at"),
        }
        self._profiles[customer] = orjson.dumps(kept)

    def _decision(self, stream: str, output: Output) -> None:
        entry = decision_entry(stream, output.body)
        kept = self._decisions.get(output.key)
        if kept is None:
            kept = self._decisions[output.key] = deque(maxlen=self.decisions_kept)
        if entry not in kept:  # a decision sent again is kept once, as the Redis store does
            kept.appendleft(entry)

    def _audience_change(self, output: Output) -> None:
        audience, member, _ = membership(output.body)
        members = self._members.setdefault(audience, set())
        if member:
            members.add(output.key)
        else:
            members.discard(output.key)
        self._sorted.pop(audience, None)
        log = self._changes.get(audience)
        if log is None:
            log = self._changes[audience] = deque(maxlen=self.changes_kept)
        log.append(Change(output.key, "entered" if member else "exited", output.time_ms))

    def profile(self, customer_id: str) -> dict[str, Any] | None:
        """The customer's profile with its last decisions (newest first); ``None`` if unknown.

        A customer the engine sends no profile of (known by an anonymous id only) but who has
        decisions gets an empty one, with the audiences it is a member of."""
        with self._lock:
            body = self._profiles.get(customer_id)
            decisions = list(self._decisions.get(customer_id, ()))
            if body is None:
                if not decisions:
                    return None
                audiences = sorted(a for a, members in self._members.items() if customer_id in members)
        if body is None:
            profile = {"customer_id": customer_id, "features": {}, "audiences": audiences, "traits": {},
                       "match_keys": {}, "updated_at": None}  # fmt: skip
        else:
            profile = orjson.loads(body)
        profile["decisions"] = [orjson.loads(entry) for entry in decisions]
        return profile

    def audiences(self) -> list[dict[str, Any]]:
        """Every audience with members and its size, by id."""
        with self._lock:
            return [{"id": a, "size": len(members)} for a, members in sorted(self._members.items()) if members]

    def members(self, audience_id: str, cursor: str | None, limit: int) -> Page:
        """Up to ``limit`` members after ``cursor``, in id order (``InvalidCursor`` for a bad cursor)."""
        after = None if cursor is None else decode_cursor(cursor)
        with self._lock:
            ordered = self._sorted.get(audience_id)
            if ordered is None:
                ordered = self._sorted[audience_id] = sorted(self._members.get(audience_id, ()))
        start = 0 if after is None else bisect.bisect_right(ordered, after)
        page = ordered[start : start + limit]
        more = start + limit < len(ordered)
        return Page(page, encode_cursor(page[-1]) if more and page else None)

    def match_keys(self, customer_ids: list[str]) -> dict[str, dict[str, str]]:
        """The known hashed identifiers of each customer that has any."""
        found = {}
        with self._lock:
            bodies = {customer: self._profiles.get(customer) for customer in customer_ids}
        for customer, body in bodies.items():
            if body is not None and (keys := {k: v for k, v in orjson.loads(body)["match_keys"].items() if v}):
                found[customer] = keys
        return found

    def changes(self, audience_id: str, since_ms: int) -> list[Change]:
        """The audience's entries and exits from ``since_ms`` on (event time), oldest first."""
        with self._lock:
            log = list(self._changes.get(audience_id, ()))
        return sorted((change for change in log if change.time_ms >= since_ms), key=lambda change: change.time_ms)


class _LiveFile(StatefulSinkPartition[Output, None]):
    """One stream: its records appended to its file (flushed per batch), and fed to the store."""

    def __init__(self, stream: str, path: Path | None, store: LiveStore | None) -> None:
        self._stream = stream
        self._file: BinaryIO | None = path.open("ab") if path is not None else None
        self._store = store

    def write_batch(self, values: list[Output]) -> None:
        if self._file is not None:
            self._file.write(b"".join(value.body + b"\n" for value in values))
            self._file.flush()
            if self._stream != DEAD_LETTERS:
                _observe_latency(values, time.time())
        if self._store is not None:
            self._store.add((self._stream, value) for value in values)

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _observe_latency(values: list[Output], written: float) -> None:
    """A decision's latency ends when its file has it (as on Kafka, when the broker confirmed it)."""
    for value in values:
        if value.arrived:
            origin = "timer" if value.timer else "event"
            DECISION_LATENCY.labels(origin=origin).observe(max(0.0, written - value.arrived))


class _LiveSummary(_SummaryPartition):
    """The counters, summed; ``summary.json`` rewritten every :data:`SUMMARY_SECONDS` and at close."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, None)
        self._written_at = time.monotonic()

    def write_batch(self, values: list[Output]) -> None:
        super().write_batch(values)
        if time.monotonic() - self._written_at >= SUMMARY_SECONDS:
            self._written_at = time.monotonic()
            self._write()


STORE_FED = frozenset({PROFILES, AUDIENCE_CHANGES})
"""Streams fed to the store besides the triggers."""


class LiveOutputSink(OutputFolderSink):
    """The flow's outputs as they come: each stream's records appended to its file in ``out`` (see
    :data:`schemas.streams.OUTPUT_FILES`), profiles, triggers and audience changes fed to ``store``,
    the counters summed into ``summary.json``; the experiments' counts and the merged model
    parameters (by ``write_models``; none without it) written at the end, as
    :class:`connectors.files.OutputFolderSink` writes them. Items are ``(stream, Output)``."""

    def __init__(self, out: Path, store: LiveStore, write_models: ModelsWriter | None = None) -> None:
        super().__init__(out, write_models=write_models)
        self.store = store
        self.streams = sorted([*self.streams, PROFILES])
        self._index = {stream: n for n, stream in enumerate(self.streams)}

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> StatefulSinkPartition[Output, None]:
        if for_part == STATS:
            return _LiveSummary(self.folder / OUTPUT_FILES[STATS])
        if for_part in (MODELS, EXPERIMENTS):
            return super().build_part(step_id, for_part, resume_state)
        fed = for_part in STORE_FED or is_decision_stream(for_part)
        path = self.folder / OUTPUT_FILES[for_part] if for_part in OUTPUT_FILES else None
        return _LiveFile(for_part, path, self.store if fed else None)


def prepare_live_folder(out: Path, journal: Path, replace: bool = False) -> None:
    """Make ``out`` ready for a live run that reads ``journal`` from its start: empty output files
    (the run writes them again from the journal), the erasure ledger kept.

    A non-empty ``out`` is taken only when it holds ``journal`` (an earlier live run's folder), or
    with ``replace`` (then it is emptied, the journal, if inside, kept)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"output folder {out} is not a folder")
    entries = list(out.iterdir()) if out.exists() else []
    inside = journal.parent.resolve() == out.resolve()
    if entries and not (inside and journal.exists()):
        if not replace:
            raise OutputFolderError(f"output folder {out} is not empty (use --force to replace it)")
        for entry in entries:
            if entry.resolve() != journal.resolve():
                _remove(entry)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES.values():
        path = out / name
        if name not in KEPT_ON_RESTART or not path.exists():
            path.write_bytes(b"")
    (out / MODEL_FILE).unlink(missing_ok=True)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


class LocalBackend:
    """The HTTP API's backend when the flow runs in-process: events go to the journal the flow
    reads, answers come from the live store. ``ready`` tells whether the flow runs (and has read
    the journal's earlier events); ``problem``, when given, why it does not."""

    name = "local"

    def __init__(
        self,
        journal: EventJournal,
        store: LiveStore,
        ready: Callable[[], bool],
        problem: Callable[[], str | None] | None = None,
    ) -> None:
        self.journal = journal
        self.store = store
        self.ready = ready
        self.problem = problem

    async def send(self, events: list[tuple[bytes | None, bytes]]) -> list[str | None]:
        results: list[str | None] = [None] * len(events)
        taken: list[int] = []
        for n, (_, line) in enumerate(events):
            if b"\n" in line or b"\r" in line:
                results[n] = "the event holds a line break"
            else:
                taken.append(n)
        try:
            await asyncio.to_thread(self.journal.append, [events[n][1] for n in taken])
        except (OSError, ValueError) as err:
            error = f"the event journal cannot be written: {getattr(err, 'strerror', None) or err}"
            for n in taken:
                results[n] = error
        return results

    async def profile(self, customer_id: str) -> dict[str, Any] | None:
        return self.store.profile(customer_id)

    async def audiences(self) -> list[dict[str, Any]]:
        return self.store.audiences()

    async def members(self, audience_id: str, cursor: str | None, limit: int) -> Page:
        return self.store.members(audience_id, cursor, limit)

    async def match_keys(self, customer_ids: list[str]) -> dict[str, dict[str, str]]:
        return self.store.match_keys(customer_ids)

    async def changes(self, audience_id: str, since_ms: int) -> list[Change]:
        return self.store.changes(audience_id, since_ms)

    async def checks(self) -> dict[str, str]:
        if self.ready():
            return {"engine": "ok"}
        return {"engine": (self.problem() if self.problem is not None else None) or "not running"}

    async def close(self) -> None:
        """Nothing to release: the engine that made this backend closes the journal when it stops."""
