"""The customers of one shard, snapshotted incrementally: each snapshot writes only who changed.

A Bytewax snapshot holds the whole state of a shard, so putting every customer in it would
re-write all of them at every epoch: seconds and hundreds of megabytes per snapshot at a
million customers. Instead each shard numbers its snapshots and writes the customers changed
since the last one, under that number, into its own SQLite file in the recovery folder; the
Bytewax snapshot keeps the number. A restore at snapshot ``n`` reads each customer's latest
version up to ``n`` and forgets versions after it (written by snapshots whose epoch Bytewax
never committed).

Versions older than :data:`KEEP` snapshot numbers are pruned, keeping each customer's newest one
before them: a restore can go back up to :data:`KEEP` numbers of its shard; one further back is
refused (``pruned_below`` says where the history stops). A shard also writes its changes shortly
before each snapshot (a pre-save, under a number of its own that no restore stops at), so that
the snapshot is left what changed after.

The store also holds a shard's large state that changes a little per snapshot (the recommender,
the dedupe memory) as *parts*: a base now and then and a journal per snapshot, by name and
snapshot number (see :mod:`state.journal`).

Writing waits for the disk (a durable commit per store), so a snapshot only hands its changes
to :meth:`CustomerStore.write_later`: one thread per process writes them in order, and
:attr:`CustomerStore.saved` tells which snapshot the store holds for sure. Until then the
changes travel in the shard's Bytewax snapshot as well (see :mod:`operators.engine`).
"""

from __future__ import annotations

import atexit
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from schemas.errors import RecoveryStoreError

log = logging.getLogger(__name__)

KEEP = 20  # snapshot numbers a restore can go back: 10 snapshots, each with its pre-save (see operators.engine)
DRAIN_SECONDS = 30.0  # at exit, how long writes still queued may take

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (id TEXT NOT NULL, seq INTEGER NOT NULL, blob BLOB,
                                      PRIMARY KEY (id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS parts (name TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL, blob BLOB NOT NULL,
                                  PRIMARY KEY (name, kind, seq)) WITHOUT ROWID;
"""
PartKey = tuple[str, str, int]  # (name, "base" or "journal", snapshot number)
Parts = Mapping[PartKey, bytes]
_NONE: Mapping[Any, Any] = MappingProxyType({})


class CustomerStore:
    """The versioned customer states of one shard, in ``folder/<name>.sqlite3`` (opened on first use)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / f"{name}.sqlite3"
        self.saved = 0  # the latest snapshot written for sure (by write, or by write_later's thread)
        self.failure: BaseException | None = None  # why a write of write_later's thread failed
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.path.chmod(0o600)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # durable when saved says so
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def write_later(
        self, seq: int, changed: Mapping[str, bytes | None], parts: Parts = _NONE, keep: Mapping[str, int] = _NONE
    ) -> None:
        """:meth:`write` on the process's store thread; :attr:`saved` becomes ``seq`` once done."""
        _writer.submit(self, seq, changed, parts, keep)

    def check(self) -> None:
        """Raise if a write of the store thread failed (the snapshot that asked for it cannot be kept)."""
        if self.failure is not None:
            raise RecoveryStoreError(f"customer store {self.path} could not be written: {self.failure}")

    def wait_saved(self, seq: int) -> None:
        """Wait until :attr:`saved` reaches ``seq`` (or a write failed)."""
        _writer.wait(lambda: self.saved >= seq or self.failure is not None)
        self.check()

    def write(
        self, seq: int, changed: Mapping[str, bytes | None], parts: Parts = _NONE, keep: Mapping[str, int] = _NONE
    ) -> None:
        """Snapshot ``seq``: the customers changed since the last one (``None``: no longer held), and
        ``parts``; the parts of each name in ``keep`` before the snapshot number it gives are dropped."""
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO customers (id, seq, blob) VALUES (?, ?, ?)",
                [(customer_id, seq, blob) for customer_id, blob in changed.items()],
            )
            db.executemany(
                "INSERT OR REPLACE INTO parts (name, kind, seq, blob) VALUES (?, ?, ?, ?)",
                [(*key, blob) for key, blob in parts.items()],
            )
            db.executemany("DELETE FROM parts WHERE name = ? AND seq < ?", keep.items())
            if seq > KEEP:
                self._prune(seq - KEEP, changed)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.saved = seq

    def _prune(self, below: int, changed: Mapping[str, bytes | None]) -> None:
        """Drop the changed customers' versions before ``below`` but their newest one before it."""
        self.db.executemany(
            "DELETE FROM customers WHERE id = ?1 AND seq < (SELECT MAX(seq) FROM customers WHERE id = ?1 AND seq < ?2)",
            [(customer_id, below) for customer_id in changed],
        )
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned_below', ?)", (below,))

    def read(self, seq: int) -> dict[str, bytes]:
        """The customers held at snapshot ``seq`` (each one's latest version up to it); versions after
        ``seq`` are removed."""
        _writer.wait(_writer.idle)  # nothing of this process is still on its way to the store
        pruned = self.db.execute("SELECT value FROM meta WHERE key = 'pruned_below'").fetchone()
        if pruned is not None and seq < pruned[0]:
            raise RecoveryStoreError(
                f"customer store {self.path} keeps history back to snapshot {pruned[0]}, but the recovery store "
                f"resumes at snapshot {seq}: start with a new recovery directory"
            )
        self.db.execute("DELETE FROM customers WHERE seq > ?", (seq,))
        self.db.execute("DELETE FROM parts WHERE seq > ?", (seq,))
        rows = self.db.execute(
            "SELECT id, blob FROM customers AS c WHERE seq = (SELECT MAX(seq) FROM customers WHERE id = c.id)"
        )
        return {customer_id: blob for customer_id, blob in rows if blob is not None}

    def clear(self) -> None:
        """Forget every version and part held."""
        self.db.executescript("BEGIN; DELETE FROM customers; DELETE FROM parts; DELETE FROM meta; COMMIT;")

    def read_parts(self, name: str, base: int, upto: int) -> tuple[bytes, list[bytes]]:
        """The base of ``name`` written at snapshot ``base`` and its journals after it up to ``upto``, in order."""
        found = self.db.execute(
            "SELECT blob FROM parts WHERE name = ? AND kind = 'base' AND seq = ?", (name, base)
        ).fetchone()
        if found is None:
            raise RecoveryStoreError(f"customer store {self.path} lacks the {name} of snapshot {base}")
        journals = self.db.execute(
            "SELECT blob FROM parts WHERE name = ? AND kind = 'journal' AND seq > ? AND seq <= ? ORDER BY seq",
            (name, base, upto),
        )
        return found[0], [blob for (blob,) in journals]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


class _StoreWriter:
    """The process's store thread: writes what :meth:`CustomerStore.write_later` asked, in order."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[tuple[CustomerStore, int, Mapping[str, bytes | None], Parts, Mapping[str, int]]] = (
            queue.Queue()
        )
        self.done = threading.Condition()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def submit(
        self, store: CustomerStore, seq: int, changed: Mapping[str, bytes | None], parts: Parts, keep: Mapping[str, int]
    ) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="customer-stores", daemon=True)
                self.thread.start()
        self.jobs.put((store, seq, changed, parts, keep))

    def idle(self) -> bool:
        return self.jobs.unfinished_tasks == 0

    def wait(self, ready: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``ready()`` (checked after every write), at most ``timeout`` seconds."""
        with self.done:
            return self.done.wait_for(ready, timeout)

    def _run(self) -> None:
        while True:
            store, seq, changed, parts, keep = self.jobs.get()
            try:
                if store.failure is None:  # after a failure, later snapshots of that store cannot be kept either
                    store.write(seq, changed, parts, keep)
            except BaseException as err:  # reported by the shard's next snapshot
                store.failure = err
            finally:
                with self.done:
                    self.jobs.task_done()
                    self.done.notify_all()

    def drain(self) -> None:
        """At exit: let queued writes finish (they are in Bytewax's snapshots too, so none is lost)."""
        if not self.wait(self.idle, DRAIN_SECONDS):
            log.warning("customer stores: %d writes still queued at exit", self.jobs.unfinished_tasks)


_writer = _StoreWriter()
atexit.register(_writer.drain)


def wait_for_writes() -> None:
    """Wait until every write this process's store thread was asked for is done (or failed)."""
    _writer.wait(_writer.idle)
