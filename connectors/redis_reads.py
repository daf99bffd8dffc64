"""Reads of the Redis store that :mod:`connectors.redis_store` writes: a customer's profile and last
decisions, the audiences and their members, the members' match keys and each audience's change log.

:class:`RedisReads` serves the HTTP API's Kafka + Redis backend and ``nudgeflow audiences export``, with
``redis.asyncio`` (a Redis Cluster too). A read Redis does not answer raises :class:`StoreUnavailable`,
whose text says why, never where.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import orjson
import redis.asyncio as aredis
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from connectors.http.backend import BackendUnavailable, Change, InvalidCursor, Page
from connectors.redis_store import audience_key, customer_keys
from schemas.errors import NudgeflowError

SCAN_COUNT = 1000
CHANGES_PER_READ = 1000
MATCH_KEYS_PER_PIPELINE = 1000
MAX_SCAN_CURSOR = 2**64 - 1
CHECK_TIMEOUT_SECONDS = 3.0
P = ParamSpec("P")
T = TypeVar("T")
MATCH_FIELDS = ("match.email_sha256", "match.phone_sha256", "match.phone_digits_sha256")
"""The profile hash's match keys (SHA-256 hex): email, E.164 phone, and the phone's digits (Meta)."""
PROFILE_META = frozenset({"audiences", "updated_at", "updated_ms"})


class StoreUnavailable(NudgeflowError, BackendUnavailable):
    """The Redis store did not answer a read (or refused it); the text says why, never where."""


def _store_errors(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """A read of the store whose Redis errors are raised as :class:`StoreUnavailable`."""

    @functools.wraps(method)
    async def read(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (rx.RedisError, rx.RedisClusterException, OSError) as err:
            raise StoreUnavailable(f"redis: {_redis_text(err)}") from None

    return read



class RedisReads:
    """The store at ``url`` (keys under ``prefix``; ``cluster``: the URL names a node of a Redis Cluster).
    ``timeout``: seconds a connection or a reply may take."""

    def __init__(
        self, url: str, prefix: str = "nf", cluster: bool = False, timeout: float = 2.0, client_name: str = "nudgeflow"
    ) -> None:
        self.prefix = prefix
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "client_name": client_name,
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),  # a stale pooled connection, not an outage
        }
        self._client: Any = (aredis.RedisCluster if cluster else aredis.Redis).from_url(url, **options)

    @_store_errors
    async def profile(self, customer_id: str) -> dict[str, Any] | None:
        keys = customer_keys(self.prefix, customer_id)
        fields, entries = await asyncio.gather(
            self._client.hgetall(keys.profile), self._client.lrange(keys.decisions, 0, -1)
        )
        if not fields and not entries:
            return None
        return profile_document(customer_id, _text_fields(fields), [orjson.loads(e) for e in entries])

    @_store_errors
    async def audiences(self) -> list[dict[str, Any]]:
        found: dict[str, str] = {}
        async for key in self._client.scan_iter(match=f"{self.prefix}:audience:*", count=SCAN_COUNT, _type="set"):
            name = key.decode() if isinstance(key, bytes) else key
            if (audience := audience_of(self.prefix, name)) is not None:
                found[audience] = name
        ids = sorted(found)
        sizes = await asyncio.gather(*(self._client.scard(found[audience]) for audience in ids))
        return [{"id": a, "size": size} for a, size in zip(ids, sizes, strict=True) if size]

    @_store_errors
    async def members(self, audience_id: str, cursor: str | None, limit: int) -> Page:
        """Members in SSCAN's order. A cursor is SSCAN's cursor of the batch being read and the last member
        handed out of it (a batch is read sorted), so a page holds at most ``limit`` whatever SSCAN returns."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        key = audience_key(self.prefix, audience_id)
        scan, after = (0, None) if cursor is None else decode_members_cursor(cursor)
        page: list[str] = []
        while True:
            following, batch = await self._client.sscan(key, scan, count=max(limit, 10))
            remaining = sorted({m.decode() if isinstance(m, bytes) else m for m in batch})
            if after is not None:
                remaining = [m for m in remaining if m > after]
            room = limit - len(page)
            page += remaining[:room]
            if len(remaining) > room:
                return Page(page, encode_members_cursor(scan, page[-1]))
            if following == 0:
                return Page(page, None)
            scan, after = following, None
            if len(page) == limit:
                return Page(page, encode_members_cursor(scan, None))

    @_store_errors
    async def match_keys(self, customer_ids: list[str]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for start in range(0, len(customer_ids), MATCH_KEYS_PER_PIPELINE):
            batch = customer_ids[start : start + MATCH_KEYS_PER_PIPELINE]
            async with self._client.pipeline(transaction=False) as pipe:
                for customer in batch:
                    pipe.hmget(customer_keys(self.prefix, customer).profile, MATCH_FIELDS)
                replies = await pipe.execute()
            for customer, values in zip(batch, replies, strict=True):
                known = {f.removeprefix("match."): _plain(v) for f, v in zip(MATCH_FIELDS, values, strict=True) if v}
                if known:
                    found[customer] = known
        return found

    @_store_errors
    async def changes(self, audience_id: str, since_ms: int) -> list[Change]:
        """The change log's entries from ``since_ms`` on, oldest first. The store writes the log at least
        once (a retried write appends again): an entry repeating the customer's previous one is dropped."""
        stream = f"{audience_key(self.prefix, audience_id)}:changes"
        found: list[Change] = []
        last: dict[str, Change] = {}
        start = "-"
        while True:
            entries = await self._client.xrange(stream, min=start, max="+", count=CHANGES_PER_READ)
            for _, fields in entries:
                change = _change(fields)
                if change is None or last.get(change.customer_id) == change:
                    continue
                last[change.customer_id] = change
                if change.time_ms >= since_ms:
                    found.append(change)
            if len(entries) < CHANGES_PER_READ:
                return sorted(found, key=lambda c: c.time_ms)
            last_id = entries[-1][0]
            start = "(" + (last_id.decode() if isinstance(last_id, bytes) else last_id)

    async def check(self) -> str:
        try:
            await asyncio.wait_for(self._client.ping(), CHECK_TIMEOUT_SECONDS)
        except TimeoutError:
            return "no answer"
        except (rx.RedisError, rx.RedisClusterException, OSError) as err:
            return _redis_text(err)
        return "ok"

    async def close(self) -> None:
        await self._client.aclose()


def _redis_text(err: BaseException) -> str:
    """A short account of a Redis error: the system's words for a failed connection ("connection
    refused"), else the error's own text (a cluster's wrapped cause); never the URL."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno).lower()
        seen = seen.__cause__ or seen.__context__
    cause = err.__cause__ if isinstance(err, rx.RedisClusterException) and err.__cause__ else err
    text = str(cause) or type(cause).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def profile_document(customer_id: str, fields: dict[str, str], decisions: list[Any]) -> dict[str, Any]:
    """The API's profile of a customer from the fields of their profile hash (JSON texts) and their
    decisions list (newest first)."""
    features: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    match: dict[str, str] = {}
    for name, value in fields.items():
        if name.startswith("trait."):
            traits[name.removeprefix("trait.")] = orjson.loads(value)
        elif name.startswith("match."):
            match[name.removeprefix("match.")] = _plain(value)
        elif name not in PROFILE_META:
            features[name] = orjson.loads(value)
    return {
        "customer_id": customer_id,
        "features": dict(sorted(features.items())),
        "audiences": orjson.loads(fields["audiences"]) if "audiences" in fields else [],
        "traits": dict(sorted(traits.items())),
        "match_keys": dict(sorted(match.items())),
        "updated_at": fields.get("updated_at"),
        "decisions": decisions,
    }


def audience_of(prefix: str, key: str) -> str | None:
    """The audience id of a member-set key ``{prefix}:audience:{<id>}`` (None for any other key)."""
    head = f"{prefix}:audience:{{"
    if key.startswith(head) and key.endswith("}"):
        return key[len(head) : -1]
    return None


def encode_members_cursor(scan: int, after: str | None) -> str:
    """An opaque members cursor: SSCAN's cursor and the last member handed out of its batch."""
    return base64.urlsafe_b64encode(orjson.dumps([scan, after])).decode().rstrip("=")


def decode_members_cursor(cursor: str) -> tuple[int, str | None]:
    """What :func:`encode_members_cursor` encoded; :class:`InvalidCursor` for anything else."""
    try:
        scan, after = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, TypeError):
        raise InvalidCursor("invalid cursor") from None
    if not isinstance(scan, int) or not 0 <= scan <= MAX_SCAN_CURSOR or not (after is None or isinstance(after, str)):
        raise InvalidCursor("invalid cursor")
    return scan, after


def _text_fields(fields: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _plain(value: bytes | str) -> str:
    """A match key as stored: a hex string, plain or as JSON text."""
    text = _text(value)
    return orjson.loads(text) if text.startswith('"') else text


def _change(fields: dict[Any, Any]) -> Change | None:
    """A change-log entry (fields customer, change, time_ms); None for one that is not."""
    values = _text_fields(fields)
    try:
        change = Change(values["customer"], values["change"], int(values["time_ms"]))
    except (KeyError, ValueError):
        return None
    return change if change.change in ("entered", "exited") else None
