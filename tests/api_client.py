"""The HTTP API in tests: the real app over a MemoryBackend, with the real contract check, served by
aiohttp's test server on 127.0.0.1 (without aiohttp's access log, as ``serve`` runs it) and called
with aiohttp's client."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connectors.http.app import ApiLimits, make_app
from connectors.http.auth import KeyRing
from connectors.http.backend import MemoryBackend
from flows.api_validation import contract_validator
from schemas.api import ApiKeySpec, key_hash

SECRETS = {
    "ingest": "nf_test-ingest-key-0123456789abcdef",
    "read": "nf_test-read-key-0123456789abcdef",
    "admin": "nf_test-admin-key-0123456789abcdef",
}
"""One key per scope, named after it (the key ``ingest`` has the ingest scope only, and so on)."""


def keyring(**limits: Any) -> KeyRing:
    """Keys named ingest, read and admin with those scopes; ``limits`` (rate, burst) for each."""
    return KeyRing(
        ApiKeySpec(name=scope, sha256=key_hash(secret), scopes=[scope], **limits)  # type: ignore[list-item]
        for scope, secret in SECRETS.items()
    )


def bearer(scope: str) -> dict[str, str]:
    """The Authorization header of the key with ``scope``."""
    return {"Authorization": f"Bearer {SECRETS[scope]}"}


def basic(secret: str) -> dict[str, str]:
    """Basic auth with ``secret`` as user name and no password, as Segment's SDKs send a write key."""
    return {"Authorization": "Basic " + base64.b64encode(f"{secret}:".encode()).decode()}


def api(backend: MemoryBackend | None = None, limits: ApiLimits | None = None, **key_limits: Any) -> web.Application:
    """The app over ``backend`` (a new MemoryBackend) with the real contract check."""
    limits = limits or ApiLimits()
    validator = contract_validator(limits.max_event_bytes)
    return make_app(backend or MemoryBackend(), validator, keyring(**key_limits), limits)


def run(app: web.Application, scenario: Callable[[TestClient], Awaitable[Any]]) -> Any:
    """Serve ``app`` on 127.0.0.1 and run ``scenario`` with a client of it; its result."""

    async def main() -> Any:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(access_log=None)  # as app_runner does
        async with TestClient(server) as client:
            return await asyncio.wait_for(scenario(client), 30)

    return asyncio.run(main())
