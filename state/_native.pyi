"""The engine's compiled parts (Rust, PyO3; crate in ``state/native/``), built by ``pip install``."""

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
