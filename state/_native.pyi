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

class Links:
    """Identity links: anonymous id -> user id (anonymous ids kept as 128-bit hashes), the least
    recently used forgotten first beyond ``capacity``."""

    def __init__(self, capacity: int) -> None: ...
    @property
    def capacity(self) -> int: ...
    def get(self, anonymous_id: str) -> str | None:
        """The user id ``anonymous_id`` is linked to (``None``: none), made the most recently used."""
    def link(self, anonymous_id: str, user_id: str) -> str | None:
        """Link ``anonymous_id`` to ``user_id``, the most recently used link; return the user id it was
        linked to before (``None``: none)."""
    def unlink(self, anonymous_id: str) -> bool:
        """Forget the link of ``anonymous_id``; whether there was one."""
    def __len__(self) -> int: ...
    def entries(self) -> list[tuple[int, str]]:
        """The links as ``(hash of the anonymous id, user id)``, least recently used first, for snapshots."""
    @staticmethod
    def from_entries(capacity: int, entries: list[tuple[int, str]]) -> Links:
        """Links of ``capacity`` holding what :meth:`entries` gave (the most recently used ``capacity``)."""

class EventScan:
    """A quick pass over an input event's JSON bytes: which model it is for, if it is plain enough to
    be decoded straight into it (see ``state/native/src/event_scan.rs``)."""

    def __init__(
        self,
        calls: list[tuple[str, int]],
        tracks: list[tuple[str, int]],
        unknown_track: int,
        closed: list[list[tuple[tuple[str | None, ...], list[str]]]],
    ) -> None:
        """``calls`` (``type`` values) and ``tracks`` (track ``event`` names) name models by index
        into ``closed``: per model, its closed containers, each a path (``None`` for any element of
        a list) and the keys allowed there."""
    def model_of(self, json: bytes) -> int:
        """The index of the model ``json`` is for if it is plain, else -1."""
    def scan(self, json: bytes) -> tuple[int, int | None, int | None]:
        """``(model, timestamp_ms, received_ms)``: :meth:`model_of`, and the ``timestamp`` and ``receivedAt``
        of a plain event in epoch milliseconds where they are in the common form (else None)."""

class EpochMs:
    """``general(text)``, computed natively for date-times in the common form (``2026-01-05T10:00:00.123Z``,
    ``...+01:00``): epoch milliseconds of ISO 8601 text, as ``schemas.timestamps.epoch_ms`` reads them."""

    def __init__(self, general: Callable[[str], int]) -> None: ...
    def __call__(self, text: str) -> int: ...
