"""API keys and what the API logs: scopes, refusals without detail, rate limits, request ids, no secrets."""

from __future__ import annotations

import logging

import orjson
import pytest
from aiohttp import web
from api_client import SECRETS, api, basic, bearer, keyring, run
from conftest import track

from connectors.http.app import make_app
from connectors.http.auth import (
    ApiKey,
    KeyRing,
    RateLimiter,
    RequestIdFilter,
    generated_admin_key,
    load_keyring,
    requires,
)
from connectors.http.backend import MemoryBackend
from flows.api_validation import contract_validator
from flows.cli import main
from schemas.api import key_hash, parse_keys_env, read_keys_file
from schemas.errors import ConfigurationError

VIEW = track("Product Viewed", "u1", props={"product_id": "p1"})
PROFILE = {"customer_id": "cust-42", "features": {}, "audiences": [], "decisions": []}


def statuses(requests: list[tuple[str, str, dict[str, str]]], **app: object) -> list[tuple[int, object]]:
    """(status, JSON answer) of each (method, path, headers)."""

    async def scenario(client):
        answers = []
        for method, path, headers in requests:
            data = orjson.dumps(VIEW) if method == "POST" else None
            response = await client.request(method, path, data=data, headers=headers)
            answers.append((response.status, await response.json()))
        return answers

    return run(api(MemoryBackend(profiles={"cust-42": PROFILE}), **app), scenario)


def test_no_key_or_an_unknown_key_is_401_and_a_missing_scope_403_without_detail():
    answers = statuses([
        ("POST", "/v1/events", {}),
        ("POST", "/v1/events", {"Authorization": "Bearer nf_not-a-key"}),
        ("POST", "/v1/events", {"Authorization": "Token " + SECRETS["ingest"]}),
        ("POST", "/v1/events", basic("nf_not-a-key")),
        ("POST", "/v1/events", bearer("read")),
        ("GET", "/v1/customers/cust-42", bearer("ingest")),
        ("DELETE", "/v1/customers/cust-42", bearer("read")),
        ("GET", "/v1/audiences", {}),
    ])
    assert answers == [(401, {"error": "unauthorized"})] * 4 + [(403, {"error": "forbidden"})] * 3 + [
        (401, {"error": "unauthorized"})
    ]


def test_bearer_and_basic_keys_are_taken_and_admin_has_every_scope():
    answers = statuses([
        ("POST", "/v1/events", bearer("ingest")),
        ("POST", "/v1/events", basic(SECRETS["ingest"])),
        ("GET", "/v1/customers/cust-42", bearer("read")),
        ("GET", "/v1/customers/cust-42", bearer("admin")),
        ("POST", "/v1/events", bearer("admin")),
    ])
    assert [status for status, _ in answers] == [200, 200, 200, 200, 200]


def test_open_routes_need_no_key():
    answers = statuses([("GET", "/healthz", {}), ("GET", "/readyz", {}), ("GET", "/openapi.json", {})])
    assert [status for status, _ in answers] == [200, 200, 200]


def test_a_key_over_its_rate_is_refused_with_429_and_retry_after_in_whole_seconds():
    async def scenario(client):
        answers = []
        for _ in range(4):
            response = await client.get("/v1/customers/cust-42", headers=bearer("read"))
            answers.append((response.status, response.headers.get("Retry-After"), await response.json()))
        other = await client.post("/v1/events", data=orjson.dumps(VIEW), headers=bearer("ingest"))
        return answers, other.status

    answers, other = run(api(MemoryBackend(profiles={"cust-42": PROFILE}), rate=0.2, burst=2), scenario)
    assert [status for status, _, _ in answers] == [200, 200, 429, 429]
    assert answers[2][1:] == ("5", {"error": "rate_limited"})  # one request per 5 s
    assert other == 200  # each key has its own bucket


def test_the_token_bucket_refills_at_the_key_rate():
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    key = ApiKey("pos", frozenset({"ingest"}), rate=10, burst=3)
    assert [limiter.wait(key) for _ in range(3)] == [0, 0, 0]
    assert limiter.wait(key) == pytest.approx(0.1)
    now[0] += 0.25  # 2.5 tokens back
    assert [limiter.wait(key) for _ in range(3)] == [0, 0, pytest.approx(0.05)]


def test_a_handler_that_requires_a_scope_refuses_when_the_app_has_no_authentication():
    @requires("read")
    async def secret(request: web.Request) -> web.Response:
        return web.json_response({"data": "secret"})

    app = web.Application()
    app.router.add_get("/secret", secret)

    async def scenario(client):
        response = await client.get("/secret", headers=bearer("admin"))
        return response.status, await response.json()

    assert run(app, scenario) == (401, {"error": "unauthorized"})


def test_request_ids_are_echoed_or_made_and_every_log_record_carries_one(caplog):
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO)
    backend = MemoryBackend(profiles={"cust-42": PROFILE})

    async def profile(customer_id: str) -> dict | None:
        logging.getLogger("nudgeflow.http.test").info("looking a profile up")
        return PROFILE

    backend.profile = profile  # type: ignore[method-assign]

    async def scenario(client):
        given = await client.get("/v1/customers/cust-42", headers={**bearer("read"), "X-Request-Id": "req-123"})
        insane = await client.get("/v1/customers/cust-42", headers={**bearer("read"), "X-Request-Id": "a b\tc"})
        return given.headers["X-Request-Id"], insane.headers["X-Request-Id"]

    given, made = run(api(backend), scenario)
    assert given == "req-123"
    assert made != "a b\tc" and len(made) == 32
    inside = [r for r in caplog.records if r.name == "nudgeflow.http.test"]
    assert [r.request_id for r in inside] == ["req-123", made]
    access = [r for r in caplog.records if r.name == "nudgeflow.http.access"]
    assert [(r.request_id, r.route, r.status, r.key_name) for r in access] == [
        ("req-123", "/v1/customers/{customer_id}", 200, "read"),
        (made, "/v1/customers/{customer_id}", 200, "read"),
    ]


def test_no_log_record_holds_a_key_a_path_id_or_a_query(caplog):
    caplog.set_level(logging.DEBUG)
    backend = MemoryBackend(profiles={"cust-42": PROFILE}, audience_members={"vip": {"cust-42"}})

    async def scenario(client):
        await client.get("/v1/customers/cust-42", headers=bearer("read"))
        await client.get("/v1/customers/cust-42", headers=bearer("ingest"))
        await client.get("/v1/customers/cust-42", headers={"Authorization": "Bearer nf_wrong-secret-key"})
        await client.get("/v1/audiences/vip/members", params={"cursor": "Y3VzdC00Mg", "limit": "5"},
                         headers=basic(SECRETS["read"]))
        await client.post("/v1/events", data=orjson.dumps(VIEW), headers=bearer("ingest"))
        await client.post("/v1/batch", data=orjson.dumps({"batch": [VIEW], "writeKey": SECRETS["ingest"]}))

    run(api(backend), scenario)
    assert len([r for r in caplog.records if r.name == "nudgeflow.http.access"]) == 6
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (*SECRETS.values(), "nf_wrong-secret-key", "cust-42", "Y3VzdC00Mg", "limit=5", "u1"):
        assert secret not in text


def test_a_keys_file_is_read_and_its_keys_authenticate(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        f"  - name: pos-tills\n    sha256: {key_hash('nf_pos').upper()}\n    scopes: [ingest]\n    rate: 200\n"
        f"  - name: support\n    sha256: {key_hash('nf_support')}\n    scopes: [read, admin]\n"
    )
    ring = load_keyring(path, f"crm:read:{key_hash('nf_crm')}")
    assert len(ring) == 3
    pos = ring.authenticate("nf_pos")
    assert (pos.name, pos.scopes, pos.rate, pos.burst) == ("pos-tills", frozenset({"ingest"}), 200, 400)
    assert ring.authenticate("nf_support").allows("ingest")
    assert ring.authenticate("nf_crm").name == "crm"
    assert ring.authenticate("nf_unknown") is None and ring.authenticate("") is None


def test_keys_file_errors_name_the_file_line_and_field_and_never_echo_a_key(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        f"  - name: ok\n    sha256: {key_hash('a')}\n    scopes: [ingest]\n"
        "  - name: pasted\n    sha256: nf_the-real-secret-key\n    scopes: [ingest]\n"
        f"  - name: wrong-scope\n    sha256: {key_hash('b')}\n    scopes: [root]\n"
    )
    with pytest.raises(ConfigurationError) as refused:
        read_keys_file(path)
    message = str(refused.value)
    assert f"keys file {path}, line 6, keys.1.sha256: must be the SHA-256 hex" in message
    assert f"keys file {path}, line 10, keys.2.scopes.0:" in message
    assert "nf_the-real-secret-key" not in message
    path.write_text(f"keys:\n  - name: twin\n    sha256: {key_hash('a')}\n    scopes: [read]\n" * 1
                    + f"  - name: twin\n    sha256: {key_hash('b')}\n    scopes: [read]\n")
    with pytest.raises(ConfigurationError, match="two keys are named 'twin'"):
        read_keys_file(path)
    path.write_text("keys: [\n")
    with pytest.raises(ConfigurationError, match=r"keys\.yaml, line \d+: not valid YAML"):
        read_keys_file(path)


def test_keys_from_the_environment_and_their_errors():
    [spec] = parse_keys_env(f" kiosk:ingest+read:{key_hash('k')} ")
    assert (spec.name, spec.scopes) == ("kiosk", ["ingest", "read"])
    with pytest.raises(ConfigurationError, match="NUDGEFLOW_API_KEYS, entry 2: expected name:scope"):
        parse_keys_env(f"a:read:{key_hash('a')},b-without-scopes")
    with pytest.raises(ConfigurationError, match="NUDGEFLOW_API_KEYS, entry 1, sha256") as refused:
        parse_keys_env("a:read:nf_secret")
    assert "nf_secret" not in str(refused.value)


def test_keys_new_prints_a_key_once_and_an_entry_holding_only_its_hash(tmp_path, capsys):
    assert main(["keys", "new", "--name", "pos-tills", "--scopes", "ingest,read"]) == 0
    out = capsys.readouterr().out
    secret = next(line for line in out.splitlines() if line.startswith("nf_"))
    assert len(secret) == 3 + 43  # nf_ and 32 bytes, URL-safe base64
    entry = out[out.index("keys:"):]
    assert secret not in entry
    path = tmp_path / "keys.yaml"
    path.write_text(entry)
    key = KeyRing(read_keys_file(path)).authenticate(secret)
    assert (key.name, key.scopes) == ("pos-tills", frozenset({"ingest", "read"}))
    assert main(["keys", "new", "--name", "x", "--scopes", "root"]) == 2
    assert "--scopes" in capsys.readouterr().err


def test_a_failing_handler_answers_500_without_detail_and_logs_with_the_request_id(caplog):
    caplog.handler.addFilter(RequestIdFilter())
    backend = MemoryBackend()

    async def broken(customer_id: str) -> dict | None:
        raise RuntimeError("redis exploded")

    backend.profile = broken  # type: ignore[method-assign]

    async def scenario(client):
        response = await client.get("/v1/customers/c1", headers={**bearer("read"), "X-Request-Id": "req-500"})
        return response.status, await response.json(), response.headers["X-Request-Id"]

    assert run(api(backend), scenario) == (500, {"error": "internal"}, "req-500")
    [failure] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failure.request_id == "req-500" and failure.exc_info
    outside = logging.LogRecord("x", logging.INFO, __file__, 1, "outside", None, None)
    RequestIdFilter().filter(outside)
    assert outside.request_id == "-"


def test_a_streamed_answer_added_by_another_part_is_authenticated_and_carries_the_request_id():
    @requires("read")
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\n\n")
        return response

    app = make_app(MemoryBackend(), contract_validator(), keyring(),
                   extra=[lambda app: app.router.add_get("/stream", stream)])

    async def scenario(client):
        refused = await client.get("/stream", headers={"X-Request-Id": "s-1"})
        served = await client.get("/stream", headers={**bearer("read"), "X-Request-Id": "s-2"})
        return (refused.status, refused.headers["X-Request-Id"]), (served.status, served.headers["X-Request-Id"],
                                                                   await served.read())

    assert run(app, scenario) == ((401, "s-1"), (200, "s-2", b"data: {}\n\n"))


def test_a_generated_admin_key_is_new_each_time_and_has_every_scope():
    ring, secret = generated_admin_key()
    other_ring, other = generated_admin_key()
    assert secret.startswith("nf_") and secret != other
    key = ring.authenticate(secret)
    assert key.allows("ingest") and key.allows("read") and key.allows("admin")
    assert ring.authenticate(other) is None and other_ring.authenticate(secret) is None
