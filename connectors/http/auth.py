"""Who may call the API: keys and scopes, rate limits, request ids and the access log.

A handler declares the scope it needs with :func:`requires`; handlers without one are open (health,
OpenAPI document, the dashboard page). Keys come as ``Authorization: Bearer <key>``, as the user
name of Basic auth (Segment's SDKs), or, where a handler allows it, as the ``writeKey`` of a
Segment body. Only the SHA-256 of each key is held and compared, in constant time, with every key.

Logs never hold a key, a query string or a path's ids: the access log names the key, the route's
template and the status; every record emitted while a request is handled carries its request id
(:class:`RequestIdFilter`, to add to the log handlers).
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import functools
import hashlib
import hmac
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web

from connectors.http.backend import BackendUnavailable
from schemas.api import ApiKeySpec, new_key, parse_keys_env, read_keys_file
from schemas.errors import ConfigurationError
from schemas.metrics import HTTP_REQUESTS

log = logging.getLogger("nudgeflow.http")
access_log = logging.getLogger("nudgeflow.http.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
UNAVAILABLE_RETRY_SECONDS = 1
"""``Retry-After`` of a 503 answered when the backend's store or stream does not answer."""
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
"""The id of the request being handled (``-`` outside requests)."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
"""A log format with the request id (give the handler a :class:`RequestIdFilter`)."""
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SCOPE_ATTRIBUTE = "required_scope"
_BODY_KEY_ATTRIBUTE = "write_key_in_body"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An authenticated key: its name (for logs), scopes and rate limit; never the key itself."""

    name: str
    scopes: frozenset[str]
    rate: float
    burst: float

    def allows(self, scope: str) -> bool:
        """Whether the key has ``scope`` (``admin`` implies every scope)."""
        return "admin" in self.scopes or scope in self.scopes


API_KEY = web.RequestKey("api_key", ApiKey)
"""Where a request keeps the :class:`ApiKey` it was authenticated with."""


_REQUEST_ID = web.RequestKey("request_id", str)


class KeyRing:
    """The configured keys, by SHA-256."""

    def __init__(self, specs: Iterable[ApiKeySpec]) -> None:
        self._keys = [
            (bytes.fromhex(spec.sha256), ApiKey(spec.name, frozenset(spec.scopes), spec.rate, spec.bucket))
            for spec in specs
        ]

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, secret: str) -> ApiKey | None:
        """The key whose hash is the hash of ``secret``; every key is compared, in constant time."""
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        found = None
        for stored, key in self._keys:
            if hmac.compare_digest(stored, digest):
                found = key
        return found


def load_keyring(keys_file: Path | None = None, keys_env: str | None = None) -> KeyRing:
    """The keys of a keys file and of ``NUDGEFLOW_API_KEYS`` text together (names must differ)."""
    specs = [*(read_keys_file(keys_file) if keys_file else ()), *(parse_keys_env(keys_env) if keys_env else ())]
    names = [spec.name for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigurationError(f"API keys named twice (keys file and NUDGEFLOW_API_KEYS): {', '.join(twice)}")
    return KeyRing(specs)


def generated_admin_key(name: str = "generated-admin") -> tuple[KeyRing, str]:
    """A key ring of one new admin key, and that key (to show once: it is kept nowhere else)."""
    secret = new_key()
    spec = ApiKeySpec(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), scopes=["admin"])
    return KeyRing([spec]), secret


def requires(scope: str, *, write_key_in_body: bool = False) -> Callable[[Handler], Handler]:
    """Declare the scope a handler needs (``ingest``, ``read`` or ``admin``).

    :func:`middlewares` authenticate the request before the handler runs; the handler also refuses
    to run for a request that was not authenticated (an app built without the middlewares).
    ``write_key_in_body``: the key may come as a Segment body's ``writeKey``."""
    if scope not in ("ingest", "read", "admin"):
        raise ValueError(f"unknown scope {scope!r}")

    def declare(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            key = request.get(API_KEY)
            if not isinstance(key, ApiKey):
                return error(401, "unauthorized")
            if not key.allows(scope):
                return error(403, "forbidden")
            return await handler(request)

        setattr(checked, _SCOPE_ATTRIBUTE, scope)
        setattr(checked, _BODY_KEY_ATTRIBUTE, write_key_in_body)
        return checked

    return declare


def error(status: int, code: str, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error answer: ``{"error": code}`` and nothing more."""
    return web.json_response({"error": code}, status=status, headers=headers, dumps=_dumps)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second, up to ``burst`` at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key name -> (tokens, when)

    def wait(self, key: ApiKey) -> float:
        """0 when the key may make a request now (one token taken), else the seconds until it may."""
        now = self.clock()
        tokens, then = self._buckets.get(key.name, (key.burst, now))
        tokens = min(key.burst, tokens + (now - then) * key.rate)
        if tokens >= 1:
            self._buckets[key.name] = (tokens - 1, now)
            return 0.0
        self._buckets[key.name] = (tokens, now)
        return (1 - tokens) / key.rate


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the request being handled, else ``-``) to every record; add it to a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def request_id_of(request: web.Request) -> str:
    """The caller's ``X-Request-Id`` when it is a sane one (letters, digits, ``._:-``, up to 128), else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def route_of(request: web.Request) -> str:
    """The matched route's template (``/v1/customers/{customer_id}``): never the ids of a path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Put the request's id in its response's headers (an ``on_response_prepare`` signal: streamed
    responses too)."""
    request_id = request.get(_REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


def middlewares(keys: KeyRing, limiter: RateLimiter | None = None) -> list[Middleware]:
    """The request-id/access-log middleware and the authentication middleware, in that order (the
    app also needs :func:`echo_request_id` among its ``on_response_prepare`` signals)."""
    limiter = limiter or RateLimiter()

    @web.middleware
    async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[_REQUEST_ID] = request_id = request_id_of(request)
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        try:
            try:
                response = await handler(request)
            except web.HTTPException as err:
                if err.status < 400:
                    raise
                response = _as_json(err)
            except BackendUnavailable as err:
                log.warning("%s %s: %s", request.method, route_of(request), err)
                response = error(503, "unavailable", {"Retry-After": str(UNAVAILABLE_RETRY_SECONDS)})
            except Exception:
                log.exception("request failed: %s %s", request.method, route_of(request))
                response = error(500, "internal")
            status = response.status
            return response
        finally:
            route = route_of(request)
            HTTP_REQUESTS.labels(route, str(status)).inc()
            key = request.get(API_KEY)
            key_name = key.name if isinstance(key, ApiKey) else "-"
            duration_ms = (time.perf_counter() - started) * 1000
            access_log.info(
                "%s %s %d %.1fms key=%s",
                request.method,
                route,
                status,
                duration_ms,
                key_name,
                extra={"method": request.method, "route": route, "status": status, "key_name": key_name},
            )
            REQUEST_ID.reset(token)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        route_handler = request.match_info.handler
        scope = getattr(route_handler, _SCOPE_ATTRIBUTE, None)
        if scope is None:
            return await handler(request)
        secret = _header_key(request)
        if secret is None and getattr(route_handler, _BODY_KEY_ATTRIBUTE, False):
            secret = await _body_key(request)
        key = keys.authenticate(secret) if secret else None
        if key is None:
            return error(401, "unauthorized")
        request[API_KEY] = key
        if not key.allows(scope):
            return error(403, "forbidden")
        wait = limiter.wait(key)
        if wait > 0:
            return error(429, "rate_limited", {"Retry-After": str(max(1, math.ceil(wait)))})
        return await handler(request)

    return [request_ids, authenticate]


def _header_key(request: web.Request) -> str | None:
    """The key of a Bearer or Basic (key as user name) ``Authorization`` header."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            user, _, _ = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return None


async def _body_key(request: web.Request) -> str | None:
    """A Segment body's ``writeKey`` (the body is read once; the handler reads it again from aiohttp's copy)."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    write_key = document.get("writeKey") if isinstance(document, dict) else None
    return write_key if isinstance(write_key, str) else None


_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


def _as_json(err: web.HTTPException) -> web.Response:
    """An HTTP error raised by aiohttp or a handler, as a JSON error answer."""
    code = _ERROR_CODES.get(err.status, "error" if err.status < 500 else "internal")
    headers = {name: value for name, value in err.headers.items() if name.lower() in ("allow", "retry-after")}
    return error(err.status, code, headers)
