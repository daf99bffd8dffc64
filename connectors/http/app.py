"""The HTTP API: events in, profiles and audiences out, erasure requests, health, the OpenAPI document.

:func:`make_app` builds the aiohttp application over a :class:`~connectors.http.backend.Backend`;
``nudgeflow serve`` runs it with :func:`app_runner` (aiohttp's own access log is off: it would log
paths with their ids and query strings; :mod:`connectors.http.auth` logs each request instead).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from connectors.http.auth import KeyRing, echo_request_id, error, middlewares, requires
from connectors.http.backend import Backend
from connectors.http.ingest import (
    BodyError,
    BodyTooLarge,
    Outcome,
    Validator,
    events_of,
    field,
    now_ms,
    read_body,
    read_json,
    take_events,
)
from connectors.http.openapi import openapi_document
from schemas.erasures import erasure_event
from schemas.errors import ConfigurationError
from schemas.items import DEFAULT_MAX_EVENT_BYTES

log = logging.getLogger("nudgeflow.http")

MEMBERS_PAGE = 100
MEMBERS_PAGE_MAX = 1000
READY_TIMEOUT_S = 5.0
REGULATIONS = ("gdpr", "ccpa", "other")


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """What one request may carry."""

    max_body_bytes: int = 1 << 20  # after inflating a gzip body
    max_events: int = 1000  # per request
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES  # for the validator: larger events are rejected (too_large)


BACKEND = web.AppKey("backend", Backend)
KEYRING = web.AppKey("keyring", KeyRing)
LIMITS = web.AppKey("limits", ApiLimits)
VALIDATOR = web.AppKey("validator", Validator)
OPENAPI = web.AppKey("openapi", dict)


def make_app(
    backend: Backend,
    validator: Validator,
    keys: KeyRing,
    limits: ApiLimits = ApiLimits(),
    extra: Sequence[Callable[[web.Application], None]] = (),
) -> web.Application:
    """The API over ``backend``; ``extra`` add more routes (the dashboard, audience export)."""
    from connectors.http.segment import SEGMENT_LIMIT_BYTES, add_segment_routes  # it reads this module's keys

    app = web.Application(
        middlewares=middlewares(keys), client_max_size=max(limits.max_body_bytes, SEGMENT_LIMIT_BYTES) + 1
    )
    app.on_response_prepare.append(echo_request_id)
    app[BACKEND] = backend
    app[KEYRING] = keys
    app[LIMITS] = limits
    app[VALIDATOR] = validator
    app[OPENAPI] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/customers/{customer_id}", get_customer)
    app.router.add_delete("/v1/customers/{customer_id}", delete_customer)
    app.router.add_get("/v1/audiences", get_audiences)
    app.router.add_get("/v1/audiences/{audience_id}/members", get_members)
    add_segment_routes(app)
    for add in extra:
        add(app)
    return app


def app_runner(app: web.Application, **options: Any) -> web.AppRunner:
    """A runner for the app without aiohttp's access log (it logs paths with ids and query strings)."""
    return web.AppRunner(app, access_log=None, **options)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer (orjson)."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """200 while the service is serving."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when every component the backend depends on is reachable, else 503 with their states."""
    backend = request.app[BACKEND]
    try:
        checks = await asyncio.wait_for(backend.checks(), READY_TIMEOUT_S)
    except TimeoutError:
        checks = {backend.name: f"no answer within {READY_TIMEOUT_S:g} s"}
    except Exception as err:
        log.warning("readiness check failed: %s", type(err).__name__)
        checks = {backend.name: f"check failed ({type(err).__name__})"}
    ready = bool(checks) and all(state == "ok" for state in checks.values())
    return json_response({"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503)


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of the routes this app serves."""
    cache = request.app[OPENAPI]
    if "document" not in cache:
        cache["document"] = orjson.dumps(openapi_document(request.app))
    return web.Response(body=cache["document"], content_type="application/json")


@requires("ingest")
async def post_events(request: web.Request) -> web.Response:
    """One event, ``{"batch": [...]}`` or a JSON array: each checked; the valid ones sent to the events stream.

    200 when every event was accepted, 207 when some were rejected or failed (per-event results),
    400 when the body is not JSON, 413 over the body or event-count limit."""
    limits = request.app[LIMITS]
    try:
        events = events_of(read_json(await read_body(request, limits.max_body_bytes)))
    except BodyTooLarge as err:
        return json_response({"error": "too_large", "message": str(err)}, 413)
    except BodyError as err:
        return json_response({"error": "invalid_body", "message": str(err)}, 400)
    if len(events) > limits.max_events:
        message = f"{len(events)} events in one request, the limit is {limits.max_events}"
        return json_response({"error": "too_many_events", "message": message}, 413)
    outcomes = await take_events(request.app[BACKEND], request.app[VALIDATOR], events, now_ms(), forward=False)
    counts = {status: sum(outcome.status == status for outcome in outcomes) for status in Outcome.STATUSES}
    results = [outcome.result(index) for index, outcome in enumerate(outcomes)]
    status = 200 if counts["accepted"] == len(outcomes) else 207
    return json_response({**counts, "results": results}, status)


@requires("read")
async def get_customer(request: web.Request) -> web.Response:
    """A customer's profile: features, audiences, allowlisted traits, match keys, recent decisions (404 if unknown)."""
    profile = await request.app[BACKEND].profile(request.match_info["customer_id"])
    if profile is None:
        return error(404, "not_found")
    return json_response(profile)


@requires("admin")
async def delete_customer(request: web.Request) -> web.Response:
    """An erasure request: an ``Erasure Requested`` event for the customer, sent to the events stream (202).

    Body (optional): ``{"request_id": "...", "regulation": "gdpr" | "ccpa" | "other"}``."""
    customer_id = request.match_info["customer_id"]
    try:
        body = await read_body(request, request.app[LIMITS].max_body_bytes)
        options = read_json(body) if body.strip() else {}
    except BodyTooLarge as err:
        return json_response({"error": "too_large", "message": str(err)}, 413)
    except BodyError as err:
        return json_response({"error": "invalid_body", "message": str(err)}, 400)
    if not isinstance(options, dict):
        return json_response({"error": "invalid_body", "message": "the body must be a JSON object"}, 400)
    request_id = field(options, "request_id") or f"erasure-{uuid.uuid4().hex[:16]}"
    regulation = field(options, "regulation") or "gdpr"
    if not isinstance(request_id, str) or regulation not in REGULATIONS:
        message = f"request_id must be a string and regulation one of {', '.join(REGULATIONS)}"
        return json_response({"error": "invalid_body", "message": message}, 400)
    try:
        line = erasure_event(customer_id, request_id, regulation, now_ms())
    except ConfigurationError as err:
        return json_response({"error": "invalid_request", "message": str(err)}, 400)
    [failure] = await request.app[BACKEND].send([(customer_id.encode(), line)])
    if failure is not None:
        return json_response({"error": "unavailable", "message": failure}, 503)
    return json_response({"request_id": request_id, "regulation": regulation, "status": "accepted"}, 202)


@requires("read")
async def get_audiences(request: web.Request) -> web.Response:
    """Every audience with members, and its size."""
    return json_response({"audiences": await request.app[BACKEND].audiences()})


@requires("read")
async def get_members(request: web.Request) -> web.Response:
    """A page of an audience's members; ``cursor`` from the previous page (none: the first page)."""
    limit_text = request.query.get("limit", str(MEMBERS_PAGE))
    limit = int(limit_text) if limit_text.isdigit() else 0
    if not 1 <= limit <= MEMBERS_PAGE_MAX:
        message = f"limit must be a whole number from 1 to {MEMBERS_PAGE_MAX}"
        return json_response({"error": "invalid_limit", "message": message}, 400)
    audience_id = request.match_info["audience_id"]
    try:
        page = await request.app[BACKEND].members(audience_id, request.query.get("cursor") or None, limit)
    except ValueError:
        return json_response({"error": "invalid_cursor", "message": "the cursor is not one this API gave"}, 400)
    return json_response({"audience_id": audience_id, "members": page.members, "cursor": page.cursor})
