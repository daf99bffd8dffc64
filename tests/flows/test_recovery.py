"""Bytewax recovery: a flow aborted mid-stream resumes from its snapshots with the same decisions."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from conftest import source_records
from test_flow import mixed_stream

from connectors.files import add_counts
from flows.cli import main
from flows.personalization import build_flow
from flows.runtime import recovery_config
from flows.settings import SAMPLE_STREAM, Settings
from schemas.errors import RecoveryStoreError


def run(items, tmp_path, recovery: RecoveryConfig | None, recovery_dir: Path | None = None) -> tuple[list, dict]:
    """Decisions of one execution, and the final counters of the engine (summed over shards); with
    ``recovery_dir`` (the recovery store's folder) the shards keep their customers in stores there."""
    captured: list = []
    settings = Settings(out=tmp_path / "unused", shards=4, recovery_dir=recovery_dir)
    flow = build_flow(settings, snapshots=True, source=TestingSource(items, batch_size=5), sink=TestingSink(captured))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
    stats: dict = {}
    for _, output in captured:
        if output.stream == "stats":
            add_counts(stats, orjson.loads(output.body))
    return [output for _, output in captured if output.stream != "stats"], stats


@pytest.mark.parametrize("stores", [False, True], ids=["customers in snapshots", "customers in shard stores"])
def test_resume_after_abort_gives_every_decision_with_the_same_ids(tmp_path, stores):
    """Customers are kept in Bytewax's snapshots, or each shard writes only its changed customers to
    its own store (with a recovery directory); either way a resume reads them back."""
    records = source_records(mixed_stream())
    whole, whole_stats = run(records, tmp_path / "whole", None)
    expected = {o.body for o in whole}

    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    recovery = RecoveryConfig(str(db))
    middle = len(records) // 2
    items = [*records[:middle], TestingSource.ABORT(), *records[middle:]]
    folder = db if stores else None
    first, _ = run(items, tmp_path / "first", recovery, folder)
    second, resumed_stats = run(items, tmp_path / "second", recovery, folder)

    assert first, "the first run decided something before it was aborted"
    assert len(first) < len(expected)
    resumed = {o.body for o in first} | {o.body for o in second}
    assert resumed == expected, "nothing lost, nothing new: re-emitted decisions carry the same ids"
    assert resumed_stats == whole_stats, "state continued from the snapshot: every event counted exactly once"
    shard_stores = sorted(path.name for path in (db / "customers").glob("*.sqlite3"))
    assert bool(shard_stores) == stores
    if stores:
        assert any(name.startswith("customer-") for name in shard_stores)
        assert any(name.startswith("identity-") for name in shard_stores), "anonymous customers too"
    shards = _engine_snapshots(db)
    assert shards, "the stages were snapshotted"
    for shard in shards:
        assert (shard["customers"] is None) == stores, "customers are in the stores or in the snapshot, not both"


def _engine_snapshots(db: Path) -> list[dict]:
    """The engine's shard snapshots in Bytewax's recovery store (pickles: this test wrote them)."""
    import pickle
    import sqlite3

    shards = []
    for part in db.glob("part-*.sqlite3"):
        with sqlite3.connect(part) as conn:
            for (blob,) in conn.execute("SELECT ser_change FROM snaps WHERE ser_change IS NOT NULL"):
                value = pickle.loads(blob)
                if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict) and "store" in value[1]:
                    shards.append(value[1])
    return shards


def test_a_new_recovery_store_is_private_to_the_engine_user(tmp_path):
    folder = tmp_path / "recovery"
    assert recovery_config(Settings(recovery_dir=folder)) is not None
    assert folder.stat().st_mode & 0o077 == 0, "created readable and writable by its owner only"


def test_a_recovery_store_others_can_write_is_refused_at_start_up(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "recovery"
    folder.mkdir()
    init_db_dir(folder, 1)
    folder.chmod(0o777)  # anyone could plant a snapshot, and snapshots are unpickled
    monkeypatch.setenv("NUDGEFLOW_RECOVERY_DIR", str(folder))

    code = main(["run", str(SAMPLE_STREAM), "--out", str(tmp_path / "out")])

    assert code == 2
    error = capsys.readouterr().err
    assert f"recovery store {folder} is writable by other users" in error and "chmod go-w" in error
    assert "Traceback" not in error
    folder.chmod(0o700)
    part = next(folder.glob("part-*.sqlite3"))
    part.chmod(0o666)
    assert main(["run", str(SAMPLE_STREAM), "--out", str(tmp_path / "out2")]) == 2
    assert f"recovery store {part} is writable by other users" in capsys.readouterr().err


def test_a_recovery_store_another_user_owns_is_refused(tmp_path):
    folder = tmp_path / "recovery"
    recovery_config(Settings(recovery_dir=folder))
    part = next(folder.glob("part-*.sqlite3"))
    os.chown(part, 65534, -1)  # a file someone else could rewrite, though its mode is private
    with pytest.raises(ValueError, match=f"recovery store {part} belongs to another user \\(uid 65534\\)"):
        recovery_config(Settings(recovery_dir=folder))


def test_a_customer_store_others_can_write_is_refused_at_start_up(tmp_path):
    folder = tmp_path / "recovery"
    assert recovery_config(Settings(recovery_dir=folder)) is not None
    store = folder / "customers" / "customer-0000.sqlite3"
    store.parent.mkdir(mode=0o700)
    store.write_bytes(b"")
    store.chmod(0o666)  # its customers are unpickled when a shard resumes
    with pytest.raises(RecoveryStoreError, match=f"recovery store {store} is writable by other users"):
        recovery_config(Settings(recovery_dir=folder))


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["bytewax.run", "flows.personalization:get_flow()", "-r", "/var/rec"], {}, "/var/rec"),
        (["bytewax.run", "flows.personalization:get_flow()", "--recovery-directory=/var/rec"], {}, "/var/rec"),
        (["bytewax.run", "flows.personalization:get_flow()"], {"BYTEWAX_RECOVERY_DIRECTORY": "/var/env"}, "/var/env"),
        (["bytewax.run", "flows.personalization:get_flow()"], {}, None),
    ],
)
def test_the_runners_recovery_directory_holds_the_customer_stores(monkeypatch, argv, env, expected):
    from flows.personalization import _recovery_dir

    monkeypatch.setattr("sys.argv", argv)
    monkeypatch.delenv("BYTEWAX_RECOVERY_DIRECTORY", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(recovery_dir=None)
    assert _recovery_dir(settings) == (None if expected is None else Path(expected))
    assert _recovery_dir(Settings(recovery_dir=Path("/own"))) == Path("/own"), "NUDGEFLOW_RECOVERY_DIR first"
    if expected is not None:
        config = settings.model_copy(update={"recovery_dir": Path(expected)}).engine_config(snapshots=True)
        assert config.state_store == Path(expected) / "customers"
