"""The OpenAPI document matches the app: every route documented, every documented route served, the
document valid OpenAPI 3.1, and the app's real answers valid against their documented schemas."""

from __future__ import annotations

import orjson
from aiohttp import web
from api_client import SECRETS, api, basic, bearer, keyring, run
from conftest import track
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from connectors.http.app import make_app
from connectors.http.auth import requires
from connectors.http.backend import MemoryBackend
from connectors.http.openapi import EXTRA_PATHS, PATHS, openapi_document, served_routes
from flows.api_validation import contract_validator

VIEW = track("Product Viewed", "u1", props={"product_id": "p1"})
PROFILE = {
    "customer_id": "u1",
    "features": {"orders_30d": 1},
    "audiences": ["vip"],
    "traits": {"country": "FR"},
    "match_keys": {"email_sha256": "ab" * 32},
    "updated_at": "2026-01-05T10:00:00.000Z",
    "decisions": [{"id": "d1", "rule_id": "r1", "channel": "push", "offer_id": None, "time": "2026-01-05T10:00:00Z"}],
}


def test_the_document_is_valid_openapi_3_1():
    validate(openapi_document())
    validate(openapi_document(api()))


def test_every_route_is_documented_with_its_methods_and_every_documented_route_is_served():
    served = served_routes(api())
    documented = {path: set(operations) for path, operations in PATHS.items() if path not in EXTRA_PATHS}
    assert served == documented
    assert set(openapi_document(api())["paths"]) == set(served)


def test_a_route_added_by_another_part_appears_once_it_is_served():
    @requires("read")
    async def export(request: web.Request) -> web.Response:
        return web.Response(text="")

    def add_export(app: web.Application) -> None:
        app.router.add_get("/v1/audiences/{audience_id}/export", export)

    app = make_app(MemoryBackend(), contract_validator(), keyring(), extra=[add_export])
    assert "/v1/audiences/{audience_id}/export" in openapi_document(app)["paths"]
    assert "/dashboard" not in openapi_document(app)["paths"]


def test_real_answers_validate_against_their_documented_schemas():
    backend = MemoryBackend(profiles={"u1": PROFILE}, audience_members={"vip": {"u1", "u2", "u3"}},
                            states={"kafka": "ok", "redis": "connection refused"})
    document = openapi_document(api(backend))
    requests = [
        ("GET", "/healthz", "/healthz", {}, None),
        ("GET", "/readyz", "/readyz", {}, None),
        ("POST", "/v1/events", "/v1/events", bearer("ingest"), [VIEW]),
        ("POST", "/v1/events", "/v1/events", bearer("ingest"), [VIEW, {"type": "track"}]),
        ("POST", "/v1/events", "/v1/events", bearer("ingest"), b"{not json"),
        ("POST", "/v1/events", "/v1/events", {}, [VIEW]),
        ("POST", "/v1/events", "/v1/events", bearer("read"), [VIEW]),
        ("GET", "/v1/customers/u1", "/v1/customers/{customer_id}", bearer("read"), None),
        ("GET", "/v1/customers/nobody", "/v1/customers/{customer_id}", bearer("read"), None),
        ("DELETE", "/v1/customers/u1", "/v1/customers/{customer_id}", bearer("admin"), {"request_id": "t1"}),
        ("GET", "/v1/audiences", "/v1/audiences", bearer("read"), None),
        ("GET", "/v1/audiences/vip/members?limit=2", "/v1/audiences/{audience_id}/members", bearer("read"), None),
        ("GET", "/v1/audiences/vip/members?limit=0", "/v1/audiences/{audience_id}/members", bearer("read"), None),
        ("POST", "/v1/batch", "/v1/batch", basic(SECRETS["ingest"]), {"batch": [VIEW]}),
        ("POST", "/v1/track", "/v1/track", basic(SECRETS["ingest"]), b"{not json"),
        ("POST", "/v1/identify", "/v1/identify", basic("nf_unknown"), VIEW),
    ]

    async def scenario(client):
        answers = []
        for method, url, _, headers, body in requests:
            data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
            response = await client.request(method, url, data=data, headers=headers)
            answers.append((response.status, response.content_type, await response.read()))
        return answers

    answers = run(api(backend), scenario)
    statuses = set()
    for (method, url, path, _, _), (status, content_type, body) in zip(requests, answers, strict=True):
        documented = document["paths"][path][method.lower()]["responses"]
        assert str(status) in documented, (method, url, status)
        schema = documented[str(status)]["content"][content_type]["schema"]
        validator = Draft202012Validator({**schema, "components": document["components"]})
        problems = [error.message for error in validator.iter_errors(orjson.loads(body))]
        assert problems == [], (method, url, status, problems)
        statuses.add(status)
    assert statuses == {200, 202, 207, 400, 401, 403, 404, 503}


def test_the_served_document_is_the_document_of_the_app():
    async def scenario(client):
        response = await client.get("/openapi.json")
        return response.status, await response.json()

    status, served = run(api(), scenario)
    assert status == 200
    assert served == orjson.loads(orjson.dumps(openapi_document(api())))
