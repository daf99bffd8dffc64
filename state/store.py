"""The customers of one shard, snapshotted incrementally: each snapshot writes only who changed.

A Bytewax snapshot holds the whole state of a shard, so putting every customer in it would
re-write all of them at every epoch: seconds and hundreds of megabytes per snapshot at a
million customers. Instead each shard numbers its snapshots and writes the customers changed
since the last one, under that number, into its own SQLite file in the recovery folder; the
Bytewax snapshot keeps the number. A restore at snapshot ``n`` reads each customer's latest
version up to ``n`` and forgets versions after it (written by snapshots whose epoch Bytewax
never committed).

Versions older than :data:`KEEP` snapshots are pruned, keeping each customer's newest one
before them: a restore can go back up to :data:`KEEP` snapshots of its shard; one further back
is refused (``pruned_below`` says where the history stops).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

from schemas.errors import RecoveryStoreError

KEEP = 10  # snapshots a restore can go back (Bytewax resumes from its last committed epoch)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (id TEXT NOT NULL, seq INTEGER NOT NULL, blob BLOB,
                                      PRIMARY KEY (id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class CustomerStore:
    """The versioned customer states of one shard, in ``folder/<name>.sqlite3``."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = folder / f"{name}.sqlite3"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.path.chmod(0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # durable before Bytewax commits the epoch
        self.db.executescript(_SCHEMA)

    def write(self, seq: int, changed: Mapping[str, bytes | None]) -> None:
        """Snapshot ``seq``: the customers changed since the last one (``None``: no longer held)."""
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO customers (id, seq, blob) VALUES (?, ?, ?)",
                [(customer_id, seq, blob) for customer_id, blob in changed.items()],
            )
            if seq > KEEP:
                self._prune(seq - KEEP, changed)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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
        pruned = self.db.execute("SELECT value FROM meta WHERE key = 'pruned_below'").fetchone()
        if pruned is not None and seq < pruned[0]:
            raise RecoveryStoreError(
                f"customer store {self.path} keeps history back to snapshot {pruned[0]}, but the recovery store "
                f"resumes at snapshot {seq}: start with a new recovery directory"
            )
        self.db.execute("DELETE FROM customers WHERE seq > ?", (seq,))
        rows = self.db.execute(
            "SELECT id, blob FROM customers AS c WHERE seq = (SELECT MAX(seq) FROM customers WHERE id = c.id)"
        )
        return {customer_id: blob for customer_id, blob in rows if blob is not None}

    def close(self) -> None:
        self.db.close()
