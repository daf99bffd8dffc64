"""A shard's large state saved in its store as a base and journals, so that a snapshot carries little.

Some state of a shard is large but changes a little per snapshot: the recommender's links, the
dedupe memory. Pickled whole into every Bytewax snapshot, it would cost megabytes per epoch on
the dataflow's thread. Instead a :class:`Journal` hands the shard's store (:mod:`state.store`,
written by its thread) a *base* (the whole state) now and then, and per snapshot a *journal*
(what changed in it since the last snapshot). A snapshot refers to the newest base the store holds
for sure, and carries only the parts the store may not hold yet. A restore reads that base and tells
it the journals since, in order.

A new base is taken when the journals since the last one outgrow it. Until the store holds it,
snapshots go on referring to the old base and its journals; the very first base travels in the
snapshots until the store holds it. Parts no snapshot a restore can go back to refers to are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from state.store import KEEP, CustomerStore, PartKey

BASE, JOURNAL = "base", "journal"


@dataclass(frozen=True)
class JournalRef:
    """What a snapshot holds of a journalled state: the base it starts from, and the parts (the base
    and journals after it) the store may not hold yet, by ``(kind, snapshot)``."""

    base: int
    unsaved: dict[tuple[str, int], bytes]


class Journal:
    """The bookkeeping of one journalled state of a shard (named ``name`` in its store)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.base: int | None = None  # the snapshot whose base the store holds for sure
        self.newer: int | None = None  # a newer base handed to the store, not yet known written
        self.base_bytes = 0
        self.journal_bytes = 0  # journals since the newest base
        self.unsaved: dict[tuple[str, int], bytes] = {}
        self.refers: dict[int, int] = {}  # snapshot -> the base it refers to (the last KEEP snapshots)

    @classmethod
    def restored(cls, name: str, seq: int, base: int, parts: tuple[bytes, list[bytes]]) -> Journal:
        """The bookkeeping after a restore at snapshot ``seq`` (the store holds every part it refers to)."""
        journal = cls(name)
        journal.base, journal.refers[seq] = base, base
        journal.base_bytes, journal.journal_bytes = len(parts[0]), sum(map(len, parts[1]))
        return journal

    def save(
        self, seq: int, saved: int, journal: bytes | None, whole: Callable[[], bytes]
    ) -> tuple[dict[PartKey, bytes], int, JournalRef]:
        """Snapshot ``seq``, when the store holds snapshot ``saved`` for sure: the parts to write under
        ``seq`` (the journal; a base made by ``whole()`` when one is due), the first snapshot number
        whose parts must be kept, and what the snapshot holds."""
        if self.newer is not None and self.newer <= saved:  # the store holds the newer base: refer to it
            self.base, self.newer = self.newer, None
        parts: dict[tuple[str, int], bytes] = {}
        if journal is not None:
            parts[JOURNAL, seq] = journal
            self.journal_bytes += len(journal)
        if self.newer is None and (self.base is None or self.journal_bytes > self.base_bytes):
            parts[BASE, seq] = blob = whole()
            self.newer, self.base_bytes, self.journal_bytes = seq, len(blob), 0
        self.unsaved.update(parts)
        self.unsaved = {key: blob for key, blob in self.unsaved.items() if key[1] > saved}
        base = self.newer if self.base is None else self.base
        assert base is not None
        self.refers = {at: ref for at, ref in self.refers.items() if at >= seq - KEEP}
        self.refers[seq] = base
        unsaved = {key: blob for key, blob in self.unsaved.items() if key == (BASE, base) or _after(key, base)}
        stored = {(self.name, kind, at): blob for (kind, at), blob in parts.items()}
        return stored, min(self.refers.values()), JournalRef(base, unsaved)


def _after(key: tuple[str, int], base: int) -> bool:
    """A journal after the snapshot of ``base``."""
    kind, at = key
    return kind == JOURNAL and at > base


def load(store: CustomerStore, name: str, ref: JournalRef, saved: int) -> tuple[bytes, list[bytes]]:
    """The base and journals a snapshot refers to (``saved``: the snapshot the store held for sure
    then; the parts after it are those the snapshot carries)."""
    if (BASE, ref.base) in ref.unsaved:
        base, journals = ref.unsaved[BASE, ref.base], []
    else:
        base, journals = store.read_parts(name, ref.base, saved)
    journals += [blob for (kind, at), blob in sorted(ref.unsaved.items()) if kind == JOURNAL and at > ref.base]
    return base, journals
