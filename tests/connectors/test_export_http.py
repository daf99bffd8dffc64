"""``GET /v1/audiences/{id}/export`` on the real app (aiohttp's test server and client): the upload file,
its headers (rows, members without match keys), the read scope, and clear refusals of bad queries."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from connectors.ad_audiences import ROWS_HEADER, WITHOUT_KEYS_HEADER, add_export
from connectors.http.app import make_app
from connectors.http.auth import KeyRing
from connectors.http.backend import Change, MemoryBackend
from schemas.api import ApiKeySpec

READER, WRITER = "nf_reader-key", "nf_ingest-key"
ANN_EMAIL = hashlib.sha256(b"ann@example.com").hexdigest()
BOB_PHONE = hashlib.sha256(b"+14155552671").hexdigest()


def spec(name: str, secret: str, scopes: list[str]) -> ApiKeySpec:
    return ApiKeySpec(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), scopes=scopes)


def no_ingest(line: bytes, received_ms: int) -> Any:
    raise AssertionError("the export takes no events")


def backend() -> MemoryBackend:
    source = MemoryBackend()
    source.audience_members["vip"] = {"ann", "bob", "cat"}
    source.keys = {"ann": {"email_sha256": ANN_EMAIL}, "bob": {"phone_sha256": BOB_PHONE}}
    source.audience_changes["vip"] = [Change("ann", "entered", 1_000), Change("zed", "exited", 2_000)]
    return source


def get(path: str, key: str | None = READER) -> tuple[int, dict[str, str], bytes]:
    async def call() -> tuple[int, dict[str, str], bytes]:
        keys = KeyRing([spec("reader", READER, ["read"]), spec("tills", WRITER, ["ingest"])])
        app = make_app(backend(), no_ingest, keys, extra=[add_export])
        async with TestClient(TestServer(app)) as client:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = await client.get(path, headers=headers)
            return response.status, dict(response.headers), await response.read()

    return asyncio.run(call())


def test_the_whole_audience_in_google_s_format_with_its_counts():
    status, headers, body = get("/v1/audiences/vip/export?format=google")
    assert status == 200
    assert body == f"Email,Phone\n{ANN_EMAIL},\n,{BOB_PHONE}\n".encode()
    assert headers["Content-Type"] == "text/csv; charset=utf-8"
    assert headers[ROWS_HEADER] == "2" and headers[WITHOUT_KEYS_HEADER] == "1", "cat has no match key"
    assert headers["Content-Disposition"] == 'attachment; filename="vip.google.csv"'


def test_additions_and_removals_since_a_time():
    status, headers, body = get("/v1/audiences/vip/export?format=csv&since=1970-01-01T00:00:00.500Z")
    assert (status, body) == (200, f"customer_id,email_sha256,phone_sha256\nann,{ANN_EMAIL},\n".encode())
    status, headers, body = get("/v1/audiences/vip/export?format=meta&since=1500&changes=removed")
    assert (status, body, headers[WITHOUT_KEYS_HEADER]) == (200, b"", "1"), "zed left, with no key to remove"
    assert headers["Content-Type"].startswith("application/x-ndjson")


def test_the_read_scope_is_needed():
    assert get("/v1/audiences/vip/export?format=csv", key=None)[::2] == (401, b'{"error":"unauthorized"}')
    assert get("/v1/audiences/vip/export?format=csv", key=WRITER)[::2] == (403, b'{"error":"forbidden"}')


def test_bad_queries_are_refused_with_the_reason():
    status, _, body = get("/v1/audiences/vip/export?format=linkedin")
    assert status == 400 and b"unknown export format 'linkedin'" in body
    status, _, body = get("/v1/audiences/vip/export?format=csv&since=yesterday")
    assert status == 400 and b"not an ISO 8601 time" in body
    status, _, body = get("/v1/audiences/vip/export?format=csv&since=0&changes=both")
    assert status == 400 and b"changes must be one of added, removed" in body
