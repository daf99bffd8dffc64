"""Redis store: each customer's live profile, last decisions and audience memberships.

:class:`RedisStoreSink` takes the flow's ``(customer id, Output)`` items and keeps this layout
(``prefix`` defaults to ``nf``):

===================================  ====  ===============================================================
Key                                  Type  Content
===================================  ====  ===============================================================
``{prefix}:{<customer>}:profile``    HASH  One field per feature (JSON text), ``audiences`` (JSON list),
                                           ``updated_at`` (ISO time), ``updated_ms`` (epoch ms),
                                           ``trait.<name>`` (JSON text) only for allowlisted traits, and
                                           ``match.email_sha256``, ``match.phone_sha256``,
                                           ``match.phone_digits_sha256`` (hex) for the match keys known.
                                           Replaced whole and atomically by each newer profile.
``{prefix}:{<customer>}:decisions``  LIST  The last ``decisions_kept`` triggers, newest first, each
                                           ``{"id","rule_id","channel","offer_id","time"}`` (JSON).
``{prefix}:audience:{<audience>}``   SET   Ids of the audience's current members.
``{prefix}:audience:{<audience>}``   STREAM The audience's change log: one entry per entry or exit, fields
``:changes``                               ``customer``, ``change`` (``entered``/``exited``), ``time_ms``
                                           (the change's event time), ``reason`` (the record's: why, e.g.
                                           an exit held by a minimum dwell), in the order written; trimmed to
                                           about :data:`CHANGES_KEPT` entries (``MAXLEN ~``).
===================================  ====  ===============================================================

The braces are Redis Cluster hash tags: all keys of one customer live in one slot, and a
whole audience (its set and its change log) lives in one slot. With ``ttl_seconds`` the customer's profile and decisions
expire that long after their last write; memberships leave a set only by an ``exited``
change. A change log entry may be written twice (a pipeline written again after a failure): readers
take each customer's last change. Streams ``profiles``, ``audience_changes`` and ``triggers.*`` are written; shadow
streams, dead letters and stats are ignored. Personal traits stay out unless allowlisted.

Writes are coalesced: each partition's buffer keeps the latest profile per customer, the
latest membership per (audience, customer) and each customer's newest decisions. A customer's
updates keep their order: a deletion (an erased or expired customer) drops the profile and
decisions buffered before it, and what follows it (a customer who comes back) is written
after it. Memberships are not dropped: the engine sends a deleted customer's exits. The worker
only buffers; a flusher thread per partition writes the buffer in pipelines every
``flush_interval_seconds``, at once when it holds ``max_buffered`` entries, and at close.
Profiles and decisions are written by small Lua scripts, each touching one customer's slot
(so the store works on Redis Cluster: a pipeline is split by node, nothing spans slots);
every write is idempotent (profiles are replaced, decisions deduplicated), so a partly
written buffer is simply written again. While Redis is unreachable (or loading, read-only,
out of memory) the buffer is kept, one warning is logged when it goes and one when it is
back, and writes are retried with exponential backoff on the flusher's timer, with or
without new output. A recovery snapshot holds what is not written yet, so a restart writes
it. Close waits at most ``close_timeout_seconds``, then logs what was not written and
reports it to :func:`take_unwritten`.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from hashlib import sha1
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from redis import exceptions as rx
from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas.errors import ConfigurationError, RecoveryStoreError, ServiceError
from schemas.items import Output
from schemas.metrics import SINK_ERRORS, SINK_RECORDS, SINK_RETRIES
from schemas.streams import AUDIENCE_CHANGES, PROFILES, TRIGGER_STREAMS, TRIGGERS_PREFIX

log = logging.getLogger(__name__)

SINK = "redis"

TRANSIENT_ERRORS = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.ReadOnlyError,
    rx.OutOfMemoryError,
    rx.NoScriptError,
    rx.ClusterDownError,
    rx.TryAgainError,
)
"""Errors of a write that mean "Redis is not writable right now" (BusyLoadingError is a ConnectionError): retried."""
UNAVAILABLE = (rx.RedisError, rx.RedisClusterException)
"""Errors of a whole pipeline (connecting, authenticating, the cluster's layout): retried."""
BACKOFF_START = 0.1
BACKOFF_FACTOR = 2.0
BACKOFF_CAP = 5.0
PIPELINE_ENTRIES = 1000
"""Buffer entries written per pipeline; each pipeline's entries leave the buffer once written."""
PARTITIONS = 4
"""Store partitions (each a writer with its own connection), spread over the workers."""
SNAPSHOT_FORMAT = 3  # 2: the audiences' change log entries not yet written; 3: with their reasons (2 is read)
"""Version of a partition's recovery snapshot (:data:`StoreSnapshot`)."""
CHANGES_KEPT = 1_000_000
"""Entries kept (about: trimmed with ``MAXLEN ~``) in an audience's change log."""
DESCRIBED_CUSTOMERS = 5
"""Customers named in the account of what was not written."""

REPLACE_PROFILE = """
local fields = cjson.decode(ARGV[2])
redis.call('DEL', KEYS[1])
for i = 1, #fields, 200 do
  redis.call('HSET', KEYS[1], unpack(fields, i, math.min(i + 199, #fields)))
end
if tonumber(ARGV[1]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
return 1
"""
"""KEYS: profile, decisions; ARGV: ttl (0 = none), JSON list ``[field, value, ...]`` of strings.

One JSON argument instead of one argument per field: packing a command costs the client
per argument, and this is the sink's hot path."""

PUSH_DECISIONS = """
for i = 3, #ARGV do
  redis.call('LREM', KEYS[1], 0, ARGV[i])
  redis.call('LPUSH', KEYS[1], ARGV[i])
end
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if tonumber(ARGV[2]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
"""
"""KEYS: decisions, profile; ARGV: entries kept, ttl (0 = none), then entries oldest first."""


@dataclass(frozen=True)
class CustomerKeys:
    """The Redis keys of one customer (one hash tag, hence one cluster slot)."""

    profile: str
    decisions: str


def customer_keys(prefix: str, customer_id: str) -> CustomerKeys:
    """The keys of ``customer_id`` under ``prefix``."""
    base = f"{prefix}:{{{customer_id}}}"
    return CustomerKeys(profile=f"{base}:profile", decisions=f"{base}:decisions")


def audience_key(prefix: str, audience_id: str) -> str:
    """The key of the set of ``audience_id``'s members."""
    return f"{prefix}:audience:{{{audience_id}}}"


def changes_key(prefix: str, audience_id: str) -> str:
    """The key of ``audience_id``'s change log (a stream in the slot of its member set)."""
    return f"{prefix}:audience:{{{audience_id}}}:changes"


def mask_url(url: str) -> str:
    """``url`` with its password (in the user info or the query) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


@dataclass(frozen=True)
class StoreConfig:
    """What the store writes and how often (see :class:`RedisStoreSink`)."""

    prefix: str = "nf"
    ttl_seconds: int | None = None
    traits: frozenset[str] = frozenset()
    decisions_kept: int = 20
    flush_interval_seconds: float = 0.5
    max_buffered: int = 10_000
    close_timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            raise ConfigurationError(f"prefix must be non-empty and free of braces, got {self.prefix!r}")
        if self.ttl_seconds is not None and self.ttl_seconds <= 0:
            raise ConfigurationError(f"ttl_seconds must be positive or None, got {self.ttl_seconds}")
        if self.decisions_kept < 1 or self.max_buffered < 1:
            raise ConfigurationError("decisions_kept and max_buffered must be at least 1")


def is_decision_stream(stream: str) -> bool:
    """Whether ``stream`` carries deliverable triggers (``triggers.*`` except shadow ones)."""
    return stream in TRIGGER_STREAMS


def decision_entry(stream: str, body: bytes) -> bytes:
    """The compact JSON kept in a customer's decisions list for one trigger CloudEvent."""
    event = orjson.loads(body)
    data = event.get("data") or {}
    entry = {
        "id": event.get("id"),
        "rule_id": data.get("rule_id"),
        "channel": data.get("channel") or stream.removeprefix(TRIGGERS_PREFIX),
        "offer_id": data.get("offer_id"),
        "time": event.get("time"),
    }
    return orjson.dumps(entry)


def membership(body: bytes) -> tuple[str, bool, str]:
    """``(audience id, is member, reason)`` of an audience-change CloudEvent."""
    data = orjson.loads(body)["data"]
    change = data["change"]
    if change not in ("entered", "exited"):
        raise ValueError(f"unknown audience change {change!r}")
    return str(data["audience"]), change == "entered", str(data.get("reason", ""))


def is_deletion(body: bytes) -> bool:
    """Whether a profile body is the engine's ``{"customer_id", "deleted": true}`` (erased or expired)."""
    if not (body.endswith(b'"deleted":true}') and body.startswith(b'{"customer_id"')):
        return False  # any other profile, without parsing it
    return bool(orjson.loads(body).get("deleted"))


def profile_fields(body: bytes, traits: frozenset[str]) -> list[str]:
    """Flat ``field, value, ...`` list of the profile hash (allowlisted traits only)."""
    profile = orjson.loads(body)
    fields: list[str] = []
    for name, value in (profile.get("features") or {}).items():
        fields += [name, orjson.dumps(value).decode()]
    for name, value in (profile.get("traits") or {}).items():
        if name in traits:
            fields += [f"trait.{name}", orjson.dumps(value).decode()]
    for name, value in (profile.get("match_keys") or {}).items():
        fields += [f"match.{name}", str(value)]
    fields += ["audiences", orjson.dumps(profile.get("audiences") or []).decode()]
    for name in ("updated_at", "updated_ms"):
        if profile.get(name) is not None:
            fields += [name, str(profile[name])]
    return fields


ProfileWrites = tuple[bytes | None, bytes | None]
"""A customer's buffered ``(deletion, profile)``, written in that order: either may be ``None``."""

AudienceChange = tuple[str, str, str, int, str]
"""``(audience, customer, "entered" or "exited", event time ms, reason)``: an entry of an audience's change log."""

StoreSnapshot = tuple[
    int, tuple[tuple[str, bytes], ...], tuple[tuple[str, tuple[bytes, ...]], ...], tuple[Any, ...],
    tuple[AudienceChange, ...],
]  # fmt: skip
"""``(format, profiles, decisions, memberships, changes)``: the buffer, immutable, for recovery snapshots
(a customer back after a deletion has two profiles: the deletion, then the newer one)."""


@dataclass
class Chunk:
    """Buffer entries taken for one pipeline."""

    profiles: list[tuple[str, ProfileWrites]]
    decisions: list[tuple[str, list[bytes]]]
    members: list[tuple[tuple[str, str], bool]]
    changes: list[AudienceChange] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.profiles) + len(self.decisions) + len(self.members) + len(self.changes)


@dataclass
class StoreBuffer:
    """Coalesced updates not yet written: the latest state per key, in arrival order."""

    decisions_kept: int
    profiles: dict[str, ProfileWrites] = field(default_factory=dict)
    decisions: dict[str, deque[bytes]] = field(default_factory=dict)
    members: dict[tuple[str, str], bool] = field(default_factory=dict)
    changes: deque[AudienceChange] = field(default_factory=deque)  # every change, in order (not coalesced)
    received: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.profiles) + len(self.decisions) + len(self.members) + len(self.changes)

    def add_profile(self, customer: str, body: bytes) -> None:
        """Buffer a profile; a deletion drops the customer's buffered decisions (they are written
        after profiles, so they would come back after it)."""
        earlier = self.profiles.pop(customer, None)  # re-insert: flush order follows the latest update
        if is_deletion(body):
            self.decisions.pop(customer, None)
            self.profiles[customer] = (body, None)
        else:  # after a buffered deletion, that deletion is still written first
            self.profiles[customer] = (earlier[0] if earlier else None, body)

    def add_decision(self, customer: str, entry: bytes) -> None:
        kept = self.decisions.get(customer)
        if kept is None:
            kept = self.decisions[customer] = deque(maxlen=self.decisions_kept)
        kept.append(entry)

    def add_membership(self, audience: str, customer: str, member: bool) -> None:
        self.members.pop((audience, customer), None)
        self.members[(audience, customer)] = member

    def add_change(self, change: AudienceChange) -> None:
        self.changes.append(change)

    def take(self, limit: int) -> Chunk:
        """Up to ``limit`` entries, oldest first; they stay in the buffer until :meth:`forget`."""
        profiles = list(islice(self.profiles.items(), limit))
        limit -= len(profiles)
        decisions = [(c, list(d)) for c, d in islice(self.decisions.items(), limit)]
        limit -= len(decisions)
        members = list(islice(self.members.items(), limit))
        limit -= len(members)
        return Chunk(profiles, decisions, members, list(islice(self.changes, limit)))

    def forget(self, chunk: Chunk) -> None:
        """Drop the entries of a written chunk, except those updated since it was taken."""
        for customer, writes in chunk.profiles:
            current = self.profiles.get(customer)
            if current is writes:
                del self.profiles[customer]
            elif current and writes[0] is not None and current[0] is writes[0]:
                self.profiles[customer] = (None, current[1])  # its deletion is written, not its newer profile
        for customer, entries in chunk.decisions:
            kept = self.decisions.get(customer)
            if kept and kept[-1] is entries[-1]:
                del self.decisions[customer]
        for key, member in chunk.members:
            if self.members.get(key) is member:
                del self.members[key]
        for _ in chunk.changes:  # the oldest: changes are only ever appended
            self.changes.popleft()

    def frozen(self) -> StoreSnapshot:
        """The buffer as an immutable snapshot."""
        profiles = tuple(
            (customer, body) for customer, writes in self.profiles.items() for body in writes if body is not None
        )
        decisions = tuple((customer, tuple(kept)) for customer, kept in self.decisions.items())
        return SNAPSHOT_FORMAT, profiles, decisions, tuple(self.members.items()), tuple(self.changes)

    def thaw(self, snapshot: StoreSnapshot) -> None:
        """Buffer what :meth:`frozen` returned; refuse other formats."""
        version = snapshot[0]
        if version == 2:  # change log entries without their reasons: kept with none
            snapshot = (SNAPSHOT_FORMAT, *snapshot[1:4], tuple((*change, "") for change in snapshot[4]))
        elif version != SNAPSHOT_FORMAT:
            raise RecoveryStoreError(
                f"redis store snapshot format {version} is not supported: this version reads format "
                f"{SNAPSHOT_FORMAT}. Start with a new recovery directory."
            )
        _, profiles, decisions, members, changes = snapshot
        for customer, body in profiles:
            self.add_profile(customer, body)
        for customer, entries in decisions:
            for entry in entries:
                self.add_decision(customer, entry)
        for (audience, customer), member in members:
            self.add_membership(audience, customer, member)
        self.changes.extend(changes)

    def unwritten(self, where: str, refused: int) -> Unwritten:
        """What the buffer holds, as an account of what was not written to ``where``."""
        customers = self.profiles.keys() | self.decisions.keys() | {customer for _, customer in self.members}
        customers |= {change[1] for change in self.changes}
        counts = len(self.profiles), len(self.decisions), len(self.members), len(self.changes)
        return Unwritten(where, customers, *counts, refused)


@dataclass
class Unwritten:
    """What a store could not write: its customers, counts by kind, and writes Redis refused."""

    where: str
    customers: set[str]
    profiles: int
    decisions: int
    members: int
    changes: int
    refused: int

    def add(self, other: Unwritten) -> None:
        self.customers |= other.customers
        self.profiles += other.profiles
        self.decisions += other.decisions
        self.members += other.members
        self.changes += other.changes
        self.refused += other.refused

    def __str__(self) -> str:
        names = sorted(self.customers)
        shown = ", ".join(names[:DESCRIBED_CUSTOMERS]) + (", ..." if len(names) > DESCRIBED_CUSTOMERS else "")
        text = (
            f"redis store {self.where}: {len(names)} customers' updates ({shown}: {self.profiles} profiles, "
            f"{self.decisions} decision lists, {self.members} audience memberships"
            + (f", {self.changes} audience change log entries" if self.changes else "")
            + ") not written"
        )
        return text + (f"; {self.refused} writes refused" if self.refused else "")


class StoreNotWritten(ServiceError):
    """Updates were still not written to Redis when the store closed."""


_unwritten: dict[str, Unwritten] = {}
_unwritten_lock = threading.Lock()


def take_unwritten() -> str | None:
    """What the stores that closed in this process could not write, in one line, and forget it."""
    with _unwritten_lock:
        taken = "; ".join(str(account) for account in _unwritten.values()) or None
        _unwritten.clear()
    return taken


def _report_unwritten(account: Unwritten) -> None:
    with _unwritten_lock:
        if account.where in _unwritten:
            _unwritten[account.where].add(account)
        else:
            _unwritten[account.where] = account


class RedisStoreWriter:
    """Buffers the sink's items, writes them in pipelines and rides out Redis outages.

    :meth:`write` only buffers (it never waits for Redis); :meth:`flush` writes, from one thread
    at a time, and may run while :meth:`write` and :meth:`snapshot` are called from another.
    """

    def __init__(
        self, connect: Callable[[], Any], config: StoreConfig, where: str = "redis", outages: OutageLog | None = None
    ) -> None:
        self._connect = connect  # a client is made at the first write (a cluster client asks for the layout)
        self._client: Any = None
        self._config = config
        self._where = where  # the server, for logs (never with its password)
        self._outage_log = outages or OutageLog(where)
        self._buffer = StoreBuffer(config.decisions_kept)
        self._lock = threading.Lock()  # guards the buffer
        self._scripts = {script: sha1(script.encode()).hexdigest() for script in (REPLACE_PROFILE, PUSH_DECISIONS)}
        self._outage_since: float | None = None
        self._backoff = 0.0
        self._next_attempt = 0.0
        self.outages = 0
        self.refused = 0

    @property
    def pending(self) -> int:
        """Buffered entries not yet written."""
        return len(self._buffer)

    @property
    def close_timeout(self) -> float:
        return self._config.close_timeout_seconds

    def write(self, items: Iterable[tuple[str, Output]]) -> bool:
        """Buffer ``items``; ``True`` when the buffer is full (a flush is due now)."""
        with self._lock:
            for stream, output in items:
                self._add(stream, output)
            return len(self._buffer) >= self._config.max_buffered

    def seconds_to_next_flush(self) -> float:
        """How long a flusher waits before the next :meth:`flush`: the interval, or the backoff."""
        if self._outage_since is None:
            return self._config.flush_interval_seconds
        return max(0.0, self._next_attempt - time.monotonic())

    def flush(self) -> bool:
        """Write the buffer unless backing off; ``True`` once everything buffered before the call is written."""
        if not self._buffer:
            return True
        if time.monotonic() < self._next_attempt:
            return False
        return self._attempt()

    def snapshot(self) -> StoreSnapshot:
        """What is buffered and not known to be written (a recovery snapshot writes it after a restart)."""
        with self._lock:
            return self._buffer.frozen()

    def restore(self, snapshot: StoreSnapshot) -> None:
        """Buffer again what a snapshot held; refuse other formats."""
        with self._lock:
            self._buffer.thaw(snapshot)

    def close(self, deadline: float | None = None) -> Unwritten | None:
        """Flush, waiting for Redis until ``deadline`` (monotonic; default ``close_timeout_seconds``
        from now), then release the client; what was not written, if anything (also logged)."""
        if deadline is None:
            deadline = time.monotonic() + self._config.close_timeout_seconds
        while self._buffer and (now := time.monotonic()) < deadline:
            time.sleep(max(0.0, min(self._next_attempt, deadline) - now))
            if time.monotonic() >= self._next_attempt:
                self._attempt()
        if self._client is not None:
            self._client.close()
        if not self._buffer and not self.refused:
            return None
        account = self._buffer.unwritten(self._where, self.refused)
        log.error("%s", account)
        return account

    def _add(self, stream: str, output: Output) -> None:
        try:
            added = self._apply(stream, output)
        except (ValueError, KeyError, TypeError) as err:
            self._skip(stream, output.key, err)
            return
        if added:
            self._buffer.received[stream] += 1

    def _apply(self, stream: str, output: Output) -> bool:
        """Buffer one item; ``False`` for streams the store ignores."""
        if stream != PROFILES and stream != AUDIENCE_CHANGES and not is_decision_stream(stream):
            return False
        if not output.key:
            raise ValueError("no customer id")
        if stream == PROFILES:
            self._buffer.add_profile(output.key, output.body)
        elif stream == AUDIENCE_CHANGES:
            audience, member, reason = membership(output.body)
            self._buffer.add_membership(audience, output.key, member)
            change = "entered" if member else "exited"
            self._buffer.add_change((audience, output.key, change, output.time_ms, reason))
        else:
            self._buffer.add_decision(output.key, decision_entry(stream, output.body))
        return True

    def _skip(self, stream: str, customer: str, err: Exception) -> None:
        """Count and log a record that cannot be read (it is not written)."""
        SINK_ERRORS.labels(sink=SINK, reason="invalid_record").inc()
        log.warning("redis store: skipped unreadable %s record of %r: %s", stream, customer, err)

    def _attempt(self) -> bool:
        if self._outage_since is not None:
            SINK_RETRIES.labels(sink=SINK).inc()
        with self._lock:
            received, self._buffer.received = self._buffer.received, Counter()
            entries = len(self._buffer)
        try:
            self._drain(entries)
        except UNAVAILABLE as err:
            with self._lock:
                self._buffer.received.update(received)
            self._failed(err)
            return False
        for stream, count in received.items():
            SINK_RECORDS.labels(sink=SINK, stream=stream).inc(count)
        self._recovered(entries)
        return True

    def _drain(self, entries: int) -> None:
        """Write ``entries`` buffer entries, oldest first; entries updated meanwhile stay buffered."""
        while entries > 0:
            with self._lock:
                chunk = self._buffer.take(min(entries, PIPELINE_ENTRIES))
            if not chunk.size:
                return
            try:
                self._write(chunk)
            except rx.NoScriptError:  # a restarted or new server: load the scripts and write again
                for script in self._scripts:
                    self._client.script_load(script)
                self._write(chunk)
            with self._lock:
                self._buffer.forget(chunk)
            entries -= chunk.size

    def _write(self, chunk: Chunk) -> None:
        if self._client is None:
            self._client = self._connect()
        with self._client.pipeline(transaction=False) as pipe:
            self._queue(pipe, chunk)
            self._check(pipe.execute(raise_on_error=False))

    def _check(self, results: list[Any]) -> None:
        """Raise the first transient error of a pipeline; count and log (then drop) the other failed writes."""
        errors = [result for result in results if isinstance(result, Exception)]
        for error in errors:
            if isinstance(error, TRANSIENT_ERRORS):
                raise error
        for error in errors:
            SINK_ERRORS.labels(sink=SINK, reason=type(error).__name__).inc()
        if errors:
            self.refused += len(errors)
            log.error("redis store %s: %d writes refused, first: %s", self._where, len(errors), errors[0])

    def _eval(self, pipe: Any, script: str, keys: list[str], args: list[Any]) -> None:
        pipe.execute_command("EVALSHA", self._scripts[script], len(keys), *keys, *args)

    def _queue(self, pipe: Any, chunk: Chunk) -> None:
        prefix, ttl = self._config.prefix, self._config.ttl_seconds or 0
        for customer, writes in chunk.profiles:
            deletion, body = writes
            keys = customer_keys(prefix, customer)
            if deletion is not None:
                pipe.delete(keys.profile, keys.decisions)  # erased or expired in the engine
            if body is None:
                continue
            try:
                fields = profile_fields(body, self._config.traits)
            except (ValueError, TypeError, AttributeError) as err:
                self._skip(PROFILES, customer, err)
                continue
            self._eval(pipe, REPLACE_PROFILE, [keys.profile, keys.decisions], [ttl, orjson.dumps(fields)])
        for customer, entries in chunk.decisions:
            keys = customer_keys(prefix, customer)
            self._eval(
                pipe, PUSH_DECISIONS, [keys.decisions, keys.profile], [self._config.decisions_kept, ttl, *entries]
            )
        for (audience, customer), member in chunk.members:
            if member:
                pipe.sadd(audience_key(prefix, audience), customer)
            else:
                pipe.srem(audience_key(prefix, audience), customer)
        for audience, customer, change, time_ms, reason in chunk.changes:
            entry = {"customer": customer, "change": change, "time_ms": time_ms, "reason": reason}
            pipe.xadd(changes_key(prefix, audience), entry, maxlen=CHANGES_KEPT, approximate=True)

    def _failed(self, err: Exception) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            self._backoff = BACKOFF_START
            self.outages += 1
            SINK_ERRORS.labels(sink=SINK, reason=type(err).__name__).inc()
            self._outage_log.failed(self, err)
        else:
            self._backoff = min(self._backoff * BACKOFF_FACTOR, BACKOFF_CAP)
        self._next_attempt = now + self._backoff

    def _recovered(self, entries: int) -> None:
        if self._outage_since is not None:
            self._outage_log.recovered(self, entries)
        self._outage_since = None
        self._backoff = 0.0
        self._next_attempt = 0.0


class OutageLog:
    """Logs when Redis goes away and when it is back: once for all partitions of a sink in a
    process (the first that fails, the last that writes again)."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._lock = threading.Lock()
        self._down: set[int] = set()
        self._since = 0.0
        self._written = 0

    def failed(self, writer: object, err: Exception) -> None:
        with self._lock:
            if not self._down:
                self._since = time.monotonic()
                log.warning(
                    "redis store %s unavailable (%s: %s); holding updates and retrying",
                    self._where,
                    type(err).__name__,
                    err,
                )
            self._down.add(id(writer))

    def recovered(self, writer: object, written: int) -> None:
        with self._lock:
            self._down.discard(id(writer))
            self._written += written
            if not self._down:
                seconds = time.monotonic() - self._since
                log.warning("redis store %s available again after %.1f s; %d held updates written",
                            self._where, seconds, self._written)  # fmt: skip
                self._written = 0


class CloseDeadline:
    """One deadline for all partitions of a sink that close together (so a dead Redis delays the
    end of a run by ``close_timeout_seconds`` once, not once per partition)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._lock = threading.Lock()
        self._open = 0
        self._at: float | None = None

    def opened(self) -> None:
        with self._lock:
            self._open += 1

    def closing(self) -> float:
        """The deadline, set by the first partition that closes."""
        with self._lock:
            if self._at is None:
                self._at = time.monotonic() + self._seconds
            return self._at

    def closed(self) -> None:
        with self._lock:
            self._open -= 1
            if self._open == 0:
                self._at = None  # a later run of the same flow starts afresh


class RedisStorePartition(StatefulSinkPartition[Output, StoreSnapshot]):
    """One partition's writer, and the thread that flushes it on a timer (so updates held during
    an outage are written when Redis returns, even if no new output arrives)."""

    def __init__(self, writer: RedisStoreWriter, name: str, deadline: CloseDeadline | None = None) -> None:
        self._writer = writer
        self._deadline = deadline or CloseDeadline(writer.close_timeout)
        self._deadline.opened()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._flusher = threading.Thread(target=self._flush_on_timer, name=name, daemon=True)
        self._flusher.start()

    def write_batch(self, values: list[Output]) -> None:
        if self._writer.write((output.stream, output) for output in values):
            self._wake.set()

    def snapshot(self) -> StoreSnapshot:
        return self._writer.snapshot()

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._flusher.join()
        account = self._writer.close(self._deadline.closing())
        self._deadline.closed()
        if account is not None:
            _report_unwritten(account)

    def _flush_on_timer(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(self._writer.seconds_to_next_flush())
            self._wake.clear()
            if self._closing.is_set():
                return
            try:
                self._writer.flush()
            except Exception:  # a bug must not stop the flushing: close writes what is left
                log.exception("redis store: flush failed")


class RedisStoreSink(FixedPartitionedSink[Output, StoreSnapshot]):
    """Keep each customer's live profile, last decisions and audience memberships in Redis (see the module doc).

    Items are ``(customer id, Output)``; each partition keeps a customer's updates in order, and
    its recovery snapshot is what it has not written yet.
    """

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        prefix: str = "nf",
        ttl_seconds: int | None = None,
        traits: Sequence[str] = (),
        decisions_kept: int = 20,
        flush_interval_seconds: float = 0.5,
        max_buffered: int = 10_000,
        close_timeout_seconds: float = 10,
        partitions: int = PARTITIONS,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.partitions = partitions
        self.config = StoreConfig(
            prefix=prefix,
            ttl_seconds=ttl_seconds,
            traits=frozenset(traits),
            decisions_kept=decisions_kept,
            flush_interval_seconds=flush_interval_seconds,
            max_buffered=max_buffered,
            close_timeout_seconds=close_timeout_seconds,
        )
        self._deadline = CloseDeadline(close_timeout_seconds)  # shared by this process's partitions
        self._outages = OutageLog(mask_url(url))

    def __repr__(self) -> str:
        return f"RedisStoreSink({mask_url(self.url)!r}, prefix={self.config.prefix!r})"

    def list_parts(self) -> list[str]:
        return [f"store-{n}" for n in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: StoreSnapshot | None) -> RedisStorePartition:
        client = partial(connect, self.url, self.cluster)
        writer = RedisStoreWriter(client, self.config, mask_url(self.url), self._outages)
        if resume_state is not None:
            writer.restore(resume_state)
        return RedisStorePartition(writer, f"redis-{step_id}-{for_part}", self._deadline)


def connect(url: str, cluster: bool = False) -> Any:
    """A client that fails fast: the writer, not the client, decides when to retry."""
    options: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2, "client_name": "nudgeflow-store"}
    if cluster:
        return redis.RedisCluster.from_url(url, retry=Retry(NoBackoff(), 0), **options)
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)


def check_store(url: str, cluster: bool = False) -> None:
    """Refuse a store that rejects this client (password, user rights, database number) before
    anything runs; an unreachable one is only logged: its updates are held until it answers."""
    where = mask_url(url)
    try:
        client = connect(url, cluster)
        try:
            client.ping()
        finally:
            client.close()
    except UNAVAILABLE as err:
        cause = err.__cause__ if isinstance(err, rx.RedisClusterException) else err  # a cluster wraps the reason
        if isinstance(cause, rx.AuthenticationError | rx.AuthorizationError | rx.ResponseError):
            raise ServiceError(f"redis store {where} refused the connection: {cause}") from None
        log.warning("redis store %s not reachable at start (%s); holding updates until it answers", where, err)
    except ValueError as err:  # a URL redis cannot parse
        raise ConfigurationError(f"redis store {where}: {err}") from None
