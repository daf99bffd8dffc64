"""The engine's compiled parts (Rust, PyO3; crate in ``state/native/``), built by ``pip install``."""

from collections.abc import Callable

class Dedupe:
    """Dedupe memory: the last ``capacity`` message ids (as 128-bit hashes), forgetting the oldest first."""

    def __init__(self, capacity: int) -> None: ...
    @property
    def capacity(self) -> int: ...
    def seen_or_add(self, message_id: str) -> bool:
        """Whether ``message_id`` is remembered; remembers it if not."""
    def __len__(self) -> int: ...
    def to_bytes(self) -> bytes:
        """The memory as bytes (a format byte, then the hashes oldest first), for snapshots."""
    @staticmethod
    def from_bytes(capacity: int, data: bytes) -> Dedupe:
        """A memory of ``capacity`` holding what :meth:`to_bytes` wrote (the newest ``capacity`` ids);
        ``ValueError`` for bytes it cannot read."""

class EventScan:
    """A quick pass over an input event's JSON bytes: which model it is for, if it is plain enough to
    be decoded straight into it (see ``state/native/src/event_scan.rs``)."""

    def __init__(
        self,
        calls: list[tuple[str, int]],
        tracks: list[tuple[str, int]],
        unknown_track: int,
        closed: list[list[tuple[tuple[str | None, ...], list[str]]]],
        key_chars: int,
    ) -> None:
        """``calls`` (``type`` values) and ``tracks`` (track ``event`` names) name models by index
        into ``closed``: per model, its closed containers, each a path (``None`` for any element of
        a list) and the keys allowed there; an unknown key is named by its first ``key_chars`` characters."""
    def model_of(self, json: bytes) -> int:
        """The index of the model ``json`` is for if it is plain, else -1."""
    def scan(self, json: bytes) -> tuple[int, int | None, int | None, list[tuple[str, int]] | None]:
        """``(model, timestamp_ms, received_ms, unknown)``: :meth:`model_of`, the ``timestamp`` and
        ``receivedAt`` of a plain event in epoch milliseconds where they are in the common form (else
        None), and the paths of the keys of its closed containers its model does not allow, each with
        how many times it came (None if none): by container as the model lists them (``closed``), then
        in the order they first came."""

class EpochMs:
    """``general(text)``, computed natively for date-times in the common form (``2026-01-05T10:00:00.123Z``,
    ``...+01:00``): epoch milliseconds of ISO 8601 text, as ``schemas.timestamps.epoch_ms`` reads them."""

    def __init__(self, general: Callable[[str], int]) -> None: ...
    def __call__(self, text: str) -> int: ...
