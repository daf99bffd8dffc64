"""Process-wide settings for running the engine."""

from __future__ import annotations

import ctypes
import gc
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from bytewax.recovery import RecoveryConfig, init_db_dir

from schemas.errors import RecoveryStoreError

if TYPE_CHECKING:
    from flows.settings import Settings

STATE_STORE = "customers"  # the folder of the shards' customer stores, inside the recovery directory

GC_THRESHOLDS = (100_000, 1_000, 1_000_000)


def tune_gc() -> None:
    """Make full garbage collections rare.

    The engine holds millions of long-lived, acyclic objects (customer state); Python's
    default thresholds re-scan all of them every few thousand allocations, which halves
    throughput. Young objects are still collected; cycles in old ones are collected rarely.
    """
    gc.set_threshold(*GC_THRESHOLDS)


PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30  # Linux prctl(2)


@contextmanager
def timer_slack(ms: float) -> Iterator[None]:
    """Let the kernel defer this thread's timed wake-ups (and those of the threads it starts meanwhile)
    by up to ``ms``, to serve several with one (Linux; elsewhere nothing changes); then restore its own.

    A Bytewax worker with nothing to do wakes every millisecond to look again, and with several
    workers so does the thread that waits for them: an idle process spends CPU on waking. Wake-ups
    for work (data from another worker, a source's ``next_awake``) are not deferred by more than ``ms``.
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None)
    before = libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
    libc.prctl(PR_SET_TIMERSLACK, int(ms * 1_000_000), 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_TIMERSLACK, before, 0, 0, 0)


def recovery_config(settings: Settings) -> RecoveryConfig | None:
    """Bytewax recovery from ``settings.recovery_dir`` (its partitions created when it is new)."""
    folder = settings.recovery_dir
    if folder is None:
        return None
    if not folder.exists() or not any(folder.glob("part-*.sqlite3")):
        new_recovery_store(folder, settings.recovery_partitions)
    check_trusted(folder)
    return RecoveryConfig(str(folder), backup_interval=timedelta(seconds=settings.backup_seconds))


def new_recovery_store(folder: Path, partitions: int) -> None:
    """Create a recovery store readable and writable by this user only (whatever the umask)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    init_db_dir(folder, partitions)
    for part in folder.glob("part-*.sqlite3"):
        part.chmod(0o600)


def check_trusted(folder: Path) -> None:
    """Refuse a recovery store that another user owns or can write to.

    Snapshots are pickles (Bytewax's recovery store pickles every state), and unpickling runs
    code: whoever can write a snapshot can run code in the engine. So the folder and its files
    (partitions and their journals, and the shards' customer stores) must belong to this user and
    be writable by it only.
    """
    me = os.geteuid()
    stores = folder / STATE_STORE
    customer_stores = (stores, *sorted(stores.iterdir())) if stores.is_dir() else ()
    for path in (folder, *sorted(folder.glob("part-*")), *customer_stores):
        status = path.stat()
        if status.st_uid != me:
            raise RecoveryStoreError(
                f"recovery store {path} belongs to another user (uid {status.st_uid}): snapshots are unpickled at "
                f"start-up, so only the engine's user may own and write them (chown {me} {path})"
            )
        if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise RecoveryStoreError(
                f"recovery store {path} is writable by other users (mode {stat.filemode(status.st_mode)}): snapshots "
                f"are unpickled at start-up, so only the engine's user may write there (chmod go-w {path})"
            )
