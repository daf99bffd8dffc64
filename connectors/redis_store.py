"""Redis store: each customer's live profile, last decisions and audience memberships.

:class:`RedisStoreSink` takes the flow's ``(stream, Output)`` items and keeps this layout
(``prefix`` defaults to ``nf``; the customer id is the record's key):

===================================  ====  ===============================================================
Key                                  Type  Content
===================================  ====  ===============================================================
``{prefix}:{<customer>}:profile``    HASH  One field per feature (JSON text), ``audiences`` (JSON list),
                                           ``updated_at`` (ISO time), ``updated_ms`` (epoch ms), and
                                           ``trait.<name>`` (JSON text) only for allowlisted traits.
                                           Replaced whole and atomically by each newer profile.
``{prefix}:{<customer>}:decisions``  LIST  The last ``decisions_kept`` triggers, newest first, each
                                           ``{"id","rule_id","channel","offer_id","time"}`` (JSON).
``{prefix}:audience:{<audience>}``   SET   Ids of the audience's current members.
===================================  ====  ===============================================================

The braces are Redis Cluster hash tags: all keys of one customer live in one slot, and a
whole audience lives in one slot. With ``ttl_seconds`` the customer's profile and decisions
expire that long after their last write; memberships leave a set only by an ``exited``
change. Streams ``profiles``, ``audience_changes`` and ``triggers.*`` are written; shadow
streams, dead letters and stats are ignored. Personal traits stay out unless allowlisted.

Writes are coalesced: the buffer keeps the latest profile per customer, the latest
membership per (audience, customer) and each customer's newest decisions, and is written in
pipelines every ``flush_interval_seconds`` (checked on each batch of any stream, so a quiet
flow writes its last updates with its next batch), when it holds ``max_buffered`` entries,
and at close. Profiles and decisions are written by small Lua scripts, each touching one
customer's slot; every write is idempotent (profiles are replaced, decisions deduplicated),
so a partly written buffer is simply written again. While Redis is unreachable (or loading,
read-only, out of memory) the buffer is kept, one warning is logged per outage, and writes
are retried with exponential backoff; close waits at most ``close_timeout_seconds``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from redis import exceptions as rx
from redis.backoff import NoBackoff
from redis.retry import Retry

from flows.metrics import SINK_ERRORS, SINK_RECORDS, SINK_RETRIES
from operators.engine import Output

log = logging.getLogger(__name__)

SINK = "redis"
PROFILES = "profiles"
AUDIENCE_CHANGES = "audience_changes"
TRIGGERS = "triggers."
IGNORED_TRIGGERS = "triggers.shadow"

TRANSIENT_ERRORS = (rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, rx.OutOfMemoryError, rx.NoScriptError)
"""Errors that mean "Redis is not writable right now" (BusyLoadingError is a ConnectionError): retried."""
BACKOFF_START = 0.1
BACKOFF_FACTOR = 2.0
BACKOFF_CAP = 5.0
PIPELINE_ENTRIES = 1000
"""Buffer entries written per pipeline; each pipeline's entries leave the buffer once written."""

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
            raise ValueError(f"prefix must be non-empty and free of braces, got {self.prefix!r}")
        if self.ttl_seconds is not None and self.ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive or None, got {self.ttl_seconds}")
        if self.decisions_kept < 1 or self.max_buffered < 1:
            raise ValueError("decisions_kept and max_buffered must be at least 1")


def is_decision_stream(stream: str) -> bool:
    """Whether ``stream`` carries deliverable triggers (``triggers.*`` except shadow ones)."""
    return stream.startswith(TRIGGERS) and stream != IGNORED_TRIGGERS


def decision_entry(stream: str, body: bytes) -> bytes:
    """The compact JSON kept in a customer's decisions list for one trigger CloudEvent."""
    event = orjson.loads(body)
    data = event.get("data") or {}
    entry = {
        "id": event.get("id"),
        "rule_id": data.get("rule_id"),
        "channel": data.get("channel") or stream.removeprefix(TRIGGERS),
        "offer_id": data.get("offer_id"),
        "time": event.get("time"),
    }
    return orjson.dumps(entry)


def membership(body: bytes) -> tuple[str, bool]:
    """``(audience id, is member)`` of an audience-change CloudEvent."""
    data = orjson.loads(body)["data"]
    change = data["change"]
    if change not in ("entered", "exited"):
        raise ValueError(f"unknown audience change {change!r}")
    return str(data["audience"]), change == "entered"


def profile_fields(body: bytes, traits: frozenset[str]) -> list[str]:
    """Flat ``field, value, ...`` list of the profile hash (allowlisted traits only)."""
    profile = orjson.loads(body)
    fields: list[str] = []
    for name, value in (profile.get("features") or {}).items():
        fields += [name, orjson.dumps(value).decode()]
    for name, value in (profile.get("traits") or {}).items():
        if name in traits:
            fields += [f"trait.{name}", orjson.dumps(value).decode()]
    fields += ["audiences", orjson.dumps(profile.get("audiences") or []).decode()]
    for name in ("updated_at", "updated_ms"):
        if profile.get(name) is not None:
            fields += [name, str(profile[name])]
    return fields


@dataclass
class Chunk:
    """Buffer entries taken for one pipeline."""

    profiles: list[tuple[str, bytes]]
    decisions: list[tuple[str, list[bytes]]]
    members: list[tuple[tuple[str, str], bool]]


@dataclass
class StoreBuffer:
    """Coalesced updates not yet written: the latest state per key, in arrival order."""

    decisions_kept: int
    profiles: dict[str, bytes] = field(default_factory=dict)
    decisions: dict[str, deque[bytes]] = field(default_factory=dict)
    members: dict[tuple[str, str], bool] = field(default_factory=dict)
    received: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.profiles) + len(self.decisions) + len(self.members)

    def customers(self) -> int:
        """Distinct customers with updates in the buffer."""
        return len(self.profiles.keys() | self.decisions.keys() | {customer for _, customer in self.members})

    def add_profile(self, customer: str, body: bytes) -> None:
        self.profiles.pop(customer, None)  # re-insert: flush order follows the latest update
        self.profiles[customer] = body

    def add_decision(self, customer: str, entry: bytes) -> None:
        kept = self.decisions.get(customer)
        if kept is None:
            kept = self.decisions[customer] = deque(maxlen=self.decisions_kept)
        kept.append(entry)

    def add_membership(self, audience: str, customer: str, member: bool) -> None:
        self.members.pop((audience, customer), None)
        self.members[(audience, customer)] = member

    def take(self, limit: int) -> Chunk:
        """Up to ``limit`` entries, oldest first; they stay in the buffer until :meth:`forget`."""
        profiles = list(islice(self.profiles.items(), limit))
        limit -= len(profiles)
        decisions = [(c, list(d)) for c, d in islice(self.decisions.items(), limit)]
        limit -= len(decisions)
        return Chunk(profiles, decisions, list(islice(self.members.items(), limit)))

    def forget(self, chunk: Chunk) -> None:
        """Drop the entries of a written chunk."""
        for customer, _ in chunk.profiles:
            del self.profiles[customer]
        for customer, _ in chunk.decisions:
            del self.decisions[customer]
        for key, _ in chunk.members:
            del self.members[key]


class RedisStoreWriter:
    """Buffers the sink's items, writes them in pipelines and rides out Redis outages."""

    def __init__(self, client: redis.Redis, config: StoreConfig, where: str = "redis") -> None:
        self._client = client
        self._config = config
        self._where = where  # the server, for logs (never with its password)
        self._buffer = StoreBuffer(config.decisions_kept)
        self._replace_profile = client.register_script(REPLACE_PROFILE)
        self._push_decisions = client.register_script(PUSH_DECISIONS)
        self._last_flush = time.monotonic()
        self._outage_since: float | None = None
        self._backoff = 0.0
        self._next_attempt = 0.0
        self.outages = 0

    @property
    def pending(self) -> int:
        """Buffered entries not yet written."""
        return len(self._buffer)

    def write(self, items: Iterable[tuple[str, Output]]) -> None:
        """Buffer ``items``, then flush if the interval passed or the buffer is full."""
        for stream, output in items:
            self._add(stream, output)
        now = time.monotonic()
        full = len(self._buffer) >= self._config.max_buffered
        if full or now - self._last_flush >= self._config.flush_interval_seconds:
            self.flush()

    def flush(self) -> bool:
        """Write the buffer unless backing off; ``True`` once it is empty."""
        if not self._buffer:
            self._last_flush = time.monotonic()
            return True
        if time.monotonic() < self._next_attempt:
            return False
        return self._attempt()

    def close(self) -> None:
        """Flush, waiting at most ``close_timeout_seconds`` for Redis, then release the client."""
        deadline = time.monotonic() + self._config.close_timeout_seconds
        while self._buffer and (now := time.monotonic()) < deadline:
            time.sleep(max(0.0, min(self._next_attempt, deadline) - now))
            if time.monotonic() >= self._next_attempt:
                self._attempt()
        if self._buffer:
            log.error(
                "redis store %s: closing with %d customers' updates not written (%d entries)",
                self._where,
                self._buffer.customers(),
                len(self._buffer),
            )
        self._client.close()

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
            audience, member = membership(output.body)
            self._buffer.add_membership(audience, output.key, member)
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
        try:
            self._drain()
        except TRANSIENT_ERRORS as err:
            self._failed(err)
            return False
        self._recovered()
        return True

    def _drain(self) -> None:
        while self._buffer:
            chunk = self._buffer.take(PIPELINE_ENTRIES)
            with self._client.pipeline(transaction=False) as pipe:
                self._queue(pipe, chunk)
                self._check(pipe.execute(raise_on_error=False))
            self._buffer.forget(chunk)
        for stream, count in self._buffer.received.items():
            SINK_RECORDS.labels(sink=SINK, stream=stream).inc(count)
        self._buffer.received.clear()

    def _check(self, results: list[Any]) -> None:
        """Raise the first transient error of a pipeline; count and log (then drop) the other failed writes."""
        errors = [result for result in results if isinstance(result, Exception)]
        for error in errors:
            if isinstance(error, TRANSIENT_ERRORS):
                raise error
        for error in errors:
            SINK_ERRORS.labels(sink=SINK, reason=type(error).__name__).inc()
        if errors:
            log.error("redis store %s: %d writes refused, first: %s", self._where, len(errors), errors[0])

    def _queue(self, pipe: Any, chunk: Chunk) -> None:
        prefix, ttl = self._config.prefix, self._config.ttl_seconds or 0
        for customer, body in chunk.profiles:
            if body.startswith(b'{"customer_id"') and orjson.loads(body).get("deleted"):
                keys = customer_keys(prefix, customer)
                pipe.delete(keys.profile, keys.decisions)  # erased or expired in the engine
                continue
            try:
                fields = profile_fields(body, self._config.traits)
            except (ValueError, TypeError, AttributeError) as err:
                self._skip(PROFILES, customer, err)
                continue
            keys = customer_keys(prefix, customer)
            self._replace_profile(keys=[keys.profile, keys.decisions], args=[ttl, orjson.dumps(fields)], client=pipe)
        for customer, entries in chunk.decisions:
            keys = customer_keys(prefix, customer)
            args = [self._config.decisions_kept, ttl, *entries]
            self._push_decisions(keys=[keys.decisions, keys.profile], args=args, client=pipe)
        for (audience, customer), member in chunk.members:
            if member:
                pipe.sadd(audience_key(prefix, audience), customer)
            else:
                pipe.srem(audience_key(prefix, audience), customer)

    def _failed(self, err: Exception) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            self._backoff = BACKOFF_START
            self.outages += 1
            SINK_ERRORS.labels(sink=SINK, reason=type(err).__name__).inc()
            log.warning(
                "redis store %s unavailable (%s: %s); holding %d customers' updates and retrying",
                self._where,
                type(err).__name__,
                err,
                self._buffer.customers(),
            )
        else:
            self._backoff = min(self._backoff * BACKOFF_FACTOR, BACKOFF_CAP)
        self._next_attempt = now + self._backoff

    def _recovered(self) -> None:
        now = time.monotonic()
        if self._outage_since is not None:
            log.info(
                "redis store %s available again after %.1f s; buffer written", self._where, now - self._outage_since
            )
        self._outage_since = None
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._last_flush = now


class RedisStorePartition(StatelessSinkPartition[tuple[str, Output]]):
    """One worker's writer; it owns the live Redis client."""

    def __init__(self, writer: RedisStoreWriter) -> None:
        self._writer = writer

    def write_batch(self, items: list[tuple[str, Output]]) -> None:
        self._writer.write(items)

    def close(self) -> None:
        self._writer.close()


class RedisStoreSink(DynamicSink[tuple[str, Output]]):
    """Keep each customer's live profile, last decisions and audience memberships in Redis (see the module doc)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "nf",
        ttl_seconds: int | None = None,
        traits: Sequence[str] = (),
        decisions_kept: int = 20,
        flush_interval_seconds: float = 0.5,
        max_buffered: int = 10_000,
        close_timeout_seconds: float = 10,
    ) -> None:
        self.url = url
        self.config = StoreConfig(
            prefix=prefix,
            ttl_seconds=ttl_seconds,
            traits=frozenset(traits),
            decisions_kept=decisions_kept,
            flush_interval_seconds=flush_interval_seconds,
            max_buffered=max_buffered,
            close_timeout_seconds=close_timeout_seconds,
        )

    def __repr__(self) -> str:
        return f"RedisStoreSink({mask_url(self.url)!r}, prefix={self.config.prefix!r})"

    def build(self, step_id: str, worker_index: int, worker_count: int) -> RedisStorePartition:
        client = connect(self.url)
        return RedisStorePartition(RedisStoreWriter(client, self.config, mask_url(self.url)))


def connect(url: str) -> redis.Redis:
    """A client that fails fast: the writer, not the client, decides when to retry."""
    return redis.Redis.from_url(
        url,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
        client_name="nudgeflow-store",
    )
