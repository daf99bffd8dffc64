"""The erasure ledger's stores: a JSONL file for runs on recordings, a compacted Kafka topic for live runs.

Both hold :func:`schemas.erasures.erasure_record` records. A run reads its ledger before the flow
starts (:func:`read_ledger_file`, :func:`read_ledger_topic`); the erasures it applies go to the
``erasures`` stream: to the topic (keyed by customer, so compaction keeps each customer's latest), or
to the output folder's ``erasures.jsonl``, which :func:`carry_ledger` completes with the ledger read
so that the folder always holds the whole ledger.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Any

from schemas.erasures import Ledger, LedgerError, read_ledger
from schemas.errors import OutputError
from schemas.streams import ERASURES, OUTPUT_FILES

log = logging.getLogger(__name__)

LEDGER_FILE = OUTPUT_FILES[ERASURES]
COMPACTED = {"cleanup.policy": "compact"}
"""The ledger topic's configuration: compaction keeps every customer's latest record for good."""


def ledger_path(explicit: Path | None, out: Path) -> Path:
    """The ledger file a run on recordings reads: ``explicit``, else the output folder's."""
    return explicit if explicit is not None else out / LEDGER_FILE


def read_ledger_file(path: Path) -> tuple[bytes, Ledger]:
    """The ledger file's bytes and what it says (a missing file is an empty ledger)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b"", {}
    except OSError as err:
        raise LedgerError(f"cannot read erasure ledger {path}: {err.strerror or err}") from None
    return data, read_ledger(data.splitlines(), str(path))


def carry_ledger(folder: Path, previous: bytes) -> bytes:
    """Put the ledger read before the run (``previous``) ahead of the erasures the run applied in
    ``folder``'s ledger file; return the run's own records."""
    path = folder / LEDGER_FILE
    added = path.read_bytes() if path.exists() else b""
    if previous:
        path.write_bytes(previous if previous.endswith(b"\n") else previous + b"\n")
        with path.open("ab") as file:
            file.write(added)
    return added


def append_ledger(path: Path, records: bytes) -> None:
    """Add ``records`` (JSONL) to the ledger file at ``path``, on disk before returning."""
    if not records:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as file:
            if file.tell() and not _ends_with_newline(path):
                file.write(b"\n")
            file.write(records)
            file.flush()
            os.fsync(file.fileno())
    except OSError as err:
        raise LedgerError(f"cannot add to erasure ledger {path}: {err.strerror or err}") from None


def append_event(path: Path, line: bytes) -> None:
    """Append one event line to a JSONL recording (plain, or ``.gz`` as one more gzip member)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".gz":
            with gzip.open(path, "ab") as file:
                file.write(line + b"\n")
            return
        with path.open("ab") as file:
            if file.tell() and not _ends_with_newline(path):
                file.write(b"\n")
            file.write(line + b"\n")
    except OSError as err:
        raise OutputError(f"cannot append to {path}: {err.strerror or err}") from None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def read_ledger_topic(bootstrap_servers: str, topic: str, client: dict[str, Any] | None = None) -> Ledger:
    """The ledger in ``topic``, read to its end (an empty ledger when the topic does not exist yet);
    a warning is logged when the topic does not keep its records for good."""
    from connectors.kafka import read_topic, topic_config, topic_exists

    if not topic_exists(bootstrap_servers, topic, client):
        return {}
    policy = topic_config(bootstrap_servers, topic, "cleanup.policy", client)
    if policy is not None and "compact" not in policy:
        log.warning(
            "erasure ledger topic %s has cleanup.policy=%s: erasures older than its retention will be forgotten,"
            " and a replay of older data would bring those customers back; set cleanup.policy=compact",
            topic,
            policy,
        )
    values = (message.value() or b"" for message in read_topic(bootstrap_servers, topic, client=client))
    return read_ledger(values, f"topic {topic}")
