"""The shards' incremental customer stores: versions by snapshot number, restores at any of the last ones."""

from __future__ import annotations

import stat

import pytest

from schemas.errors import RecoveryStoreError
from state.store import KEEP, CustomerStore


def test_a_restore_reads_each_customers_latest_version_up_to_its_snapshot(tmp_path):
    store = CustomerStore(tmp_path, "customer-0003")
    store.write(1, {"u1": b"u1@1", "u2": b"u2@1"})
    store.write(2, {"u1": b"u1@2", "u3": b"u3@2"})
    store.write(3, {"u2": None, "u1": b"u1@3"})  # u2 erased or expired
    assert store.read(3) == {"u1": b"u1@3", "u3": b"u3@2"}
    assert CustomerStore(tmp_path, "customer-0003").read(3) == {"u1": b"u1@3", "u3": b"u3@2"}, "kept on disk"


def test_versions_written_after_the_snapshot_resumed_from_are_forgotten(tmp_path):
    store = CustomerStore(tmp_path, "identity-0000")
    store.write(1, {"a1": b"a1@1"})
    store.write(2, {"a1": b"a1@2", "a2": b"a2@2"})  # its epoch never committed
    assert store.read(1) == {"a1": b"a1@1"}
    store.write(2, {"a1": b"a1@2 again"})  # the resumed run writes snapshot 2 afresh
    assert store.read(2) == {"a1": b"a1@2 again"}, "nothing of the first snapshot 2 is left"


def test_old_versions_are_pruned_and_a_restore_beyond_the_kept_history_is_refused(tmp_path):
    store = CustomerStore(tmp_path, "customer-0001")
    store.write(1, {"quiet": b"quiet@1"})
    for seq in range(1, 3 * KEEP):
        store.write(seq, {"busy": f"busy@{seq}".encode()})
    rows = store.db.execute("SELECT COUNT(*) FROM customers WHERE id = 'busy'").fetchone()[0]
    assert rows == KEEP + 2, "a busy customer keeps its versions of the last KEEP snapshots and one before"
    assert store.read(3 * KEEP - 1 - KEEP) == {"quiet": b"quiet@1", "busy": f"busy@{2 * KEEP - 1}".encode()}
    with pytest.raises(RecoveryStoreError, match="keeps history back to snapshot"):
        store.read(2)


def test_a_store_is_readable_and_writable_by_its_owner_only(tmp_path):
    store = CustomerStore(tmp_path / "customers", "customer-0000")
    store.write(1, {"u1": b"x"})
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700


def test_writes_handed_to_the_store_thread_are_kept_in_order_and_saved_says_when(tmp_path):
    store = CustomerStore(tmp_path, "customer-0002")
    for seq in range(1, 6):
        store.write_later(seq, {"u1": f"u1@{seq}".encode(), f"u{seq + 1}": b"x"})
    store.wait_saved(5)
    assert store.saved == 5
    assert store.read(5)["u1"] == b"u1@5"
    assert store.read(2) == {"u1": b"u1@2", "u2": b"x", "u3": b"x"}
