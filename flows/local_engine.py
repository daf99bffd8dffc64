"""The engine run in-process for ``nudgeflow serve`` without Kafka or Redis.

:func:`start_local_engine` runs the flow in a background thread: its source tails the event
journal the HTTP API appends accepted events to, its sink appends decisions to the output
folder's files and keeps profiles and audiences in memory for the API (see
:mod:`connectors.live`). The journal lives in the output folder (``events.jsonl``) and is kept
across restarts: each start reads it from the beginning, which rebuilds the engine's state and
the output files (decisions carry the same ids as before), then follows it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from connectors.erasures import ledger_path, read_ledger_file
from connectors.journal import EventJournal, JournalSource
from connectors.live import JOURNAL_FILE, LiveOutputSink, LiveStore, LocalBackend, prepare_live_folder
from flows.cli import run_dataflow
from flows.personalization import build_flow
from flows.report import finalize_summary
from flows.settings import Settings
from operators.models import files as model_files
from operators.rules import load_rules
from schemas.erasures import Ledger, add_erasure
from schemas.errors import NudgeflowError
from schemas.experiments import ExperimentConfig

log = logging.getLogger(__name__)

STOP_SECONDS = 60.0
"""How long :meth:`LocalEngine.stop` waits for the flow to finish what the journal holds."""


class EngineFailed(NudgeflowError, RuntimeError):
    """The in-process flow stopped with an error."""


@dataclass
class LocalEngine:
    """A flow running in a background thread, fed by :attr:`journal`, answering through :attr:`backend`."""

    journal: EventJournal
    store: LiveStore
    source: JournalSource
    out: Path
    experiments: ExperimentConfig | None = None
    thread: threading.Thread = field(init=False)
    error: BaseException | None = field(default=None, init=False)
    backend: LocalBackend = field(init=False)

    def __post_init__(self) -> None:
        self.backend = LocalBackend(self.journal, self.store, self.ready, self.problem)

    def ready(self) -> bool:
        """Whether the flow runs and has read the events the journal held at start."""
        return self.thread.is_alive() and self.error is None and self.source.caught_up.is_set()

    def problem(self) -> str | None:
        """Why the engine is not ready, in a few words (``None`` when it is)."""
        if self.error is not None:
            return f"stopped: {type(self.error).__name__}: {self.error}"[:200]
        if not self.thread.is_alive():
            return "stopped"
        if not self.source.caught_up.is_set():
            return "reading the journal"
        return None

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Let the flow read what the journal holds, end it and wait for it (at most ``timeout``
        seconds), then complete ``summary.json`` and ``experiments.jsonl`` as a replay does; raise
        :class:`EngineFailed` if it failed, ``TimeoutError`` if it is still running."""
        self.source.stop.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the engine did not stop within {timeout:.0f} s")
        self.journal.close()
        if self.error is not None:
            raise EngineFailed(f"the engine stopped with an error: {self.error}") from self.error
        finalize_summary(self.out, self.source.tally.lines, self.experiments)


def start_local_engine(
    settings: Settings, out: Path, workers: int = 1, journal: Path | None = None, fsync: bool = False
) -> LocalEngine:
    """Start the flow of ``settings`` in a background thread on the event journal (``journal``,
    default ``out/events.jsonl``), its outputs in ``out`` (see the module doc; a non-empty ``out``
    that is not an earlier live run's is refused unless ``settings.replace_output``)."""
    out = Path(out)
    journal_path = Path(journal) if journal is not None else out / JOURNAL_FILE
    # the flow's state lives in memory only, rebuilt from the journal: no Redis, no recovery store
    settings = settings.model_copy(update={"out": out, "source": "files", "redis_url": None, "recovery_dir": None})
    rules = load_rules(settings.rules)
    prepare_live_folder(out, journal_path, settings.replace_output)
    ledger = _ledger(settings.erasure_ledger, out)
    event_journal = EventJournal(journal_path, fsync)
    # Idle marks between batches let several workers' shards decide otherwise than a replay of the
    # journal (not so with one worker): with several, the source marks only its end.
    source = JournalSource(
        journal_path, settings.batch_size, threading.Event(), settings.max_event_bytes, mark_idle=workers == 1
    )
    store = LiveStore(frozenset(settings.redis_traits))
    sink = LiveOutputSink(out, store, write_models=model_files.write_merged)
    flow = build_flow(settings, rules, source=source, sink=sink, ledger=ledger, profiles=True)
    engine = LocalEngine(event_journal, store, source, out, rules.experiments)

    def run() -> None:
        try:
            run_dataflow(flow, settings, workers)
        except BaseException as err:  # surfaced by stop() and the readiness check
            engine.error = err
            log.error("the engine stopped with an error", exc_info=err)

    engine.thread = threading.Thread(target=run, name="nudgeflow-engine", daemon=True)
    engine.thread.start()
    return engine


def _ledger(given: Path | None, out: Path) -> Ledger:
    """The erasures known at start: the ledger file given, and those earlier live runs applied (in
    the output folder's ledger, which a live run adds to)."""
    ledger = read_ledger_file(ledger_path(given, out))[1]
    if given is not None:
        for customer_id, erased_at_ms in read_ledger_file(ledger_path(None, out))[1].items():
            add_erasure(ledger, customer_id, erased_at_ms)
    return ledger
