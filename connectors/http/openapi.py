"""The API's OpenAPI 3.1 document, served at ``/openapi.json``.

Written here by hand, checked against the app by a test: every route the app serves is documented
with its methods, every documented route is served, and the app's real answers validate against
their documented schemas. The routes other parts add (audience export, dashboard) are documented
here too and appear in the document of an app that serves them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from schemas.api import SCOPES

API_VERSION = "1"
EXTRA_PATHS = frozenset({"/v1/audiences/{audience_id}/export", "/dashboard", "/dashboard/stream"})
"""Documented routes that :func:`connectors.http.app.make_app` serves only when they are added (``extra``)."""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    words = {
        400: "the request is not valid (the message says why)",
        401: "no key, or an unknown one",
        403: "the key lacks the scope",
        404: "not found",
        413: "the body is over a limit",
        429: "the key's rate limit: wait Retry-After seconds",
        503: "the events stream or the store did not answer: try again after Retry-After seconds",
    }
    return {str(status): _json("Error", words[status]) for status in statuses}


_SEGMENT_KEY = "The key (Segment's write key) as the Basic-auth user name, or as the body's writeKey field."


def _segment_call(call: str) -> dict[str, Any]:
    return {
        "post": {
            "tags": ["segment"],
            "summary": f"Segment's {call} call (Segment's HTTP Tracking API; at most 32 KB); scope ingest",
            "description": _SEGMENT_KEY,
            "operationId": f"segment_{call}",
            "security": _KEY,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SegmentCall")}}},
            "responses": {
                "200": _json("SegmentAnswer", "taken (events the contract refuses are dead-lettered by the stream)"),
                "400": _json("SegmentAnswer", "not JSON, or over 32 KB"),
                **_errors(401, 403, 429),
                "503": _json("SegmentAnswer", "the events stream did not take every event: send again"),
            },
        }
    }


_AUDIENCE_ID = {"name": "audience_id", "in": "path", "required": True, "schema": {"type": "string"}}
_CUSTOMER_ID = {"name": "customer_id", "in": "path", "required": True, "schema": {"type": "string"}}
_KEY = [{"bearer": []}, {"basic": []}]

PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {
        "get": {
            "tags": ["service"],
            "summary": "Liveness: 200 while the service is serving",
            "operationId": "healthz",
            "security": [],
            "responses": {"200": _json("Health", "serving")},
        }
    },
    "/readyz": {
        "get": {
            "tags": ["service"],
            "summary": "Readiness: 200 when every component (Kafka, Redis, the in-process flow) is reachable",
            "operationId": "readyz",
            "security": [],
            "responses": {"200": _json("Ready", "ready"), "503": _json("Ready", "a component is not ready")},
        }
    },
    "/openapi.json": {
        "get": {
            "tags": ["service"],
            "summary": "This document",
            "operationId": "openapi",
            "security": [],
            "responses": {"200": {"description": "the OpenAPI 3.1 document", "content": {"application/json": {}}}},
        }
    },
    "/v1/events": {
        "post": {
            "tags": ["events"],
            "summary": "Send events: one, {\"batch\": [...]} or a JSON array (gzip bodies accepted); scope ingest",
            "description": "Each event is checked by the stream's contract; the valid ones go to the events stream,"
            " keyed by anonymousId, else userId. receivedAt is stamped on events that lack it. A rejected event's"
            " reason and messages are those of the dead letter the stream would write.",
            "operationId": "post_events",
            "security": _KEY,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("EventsRequest")}}},
            "responses": {
                "200": _json("EventsResponse", "every event accepted"),
                "207": _json("EventsResponse", "some events rejected (contract) or failed (not taken by the stream)"),
                **_errors(400, 401, 403, 413, 429),
            },
        }
    },
    "/v1/customers/{customer_id}": {
        "get": {
            "tags": ["customers"],
            "summary": "A customer's profile: features, audiences, traits, match keys, recent decisions; scope read",
            "operationId": "get_customer",
            "security": _KEY,
            "parameters": [_CUSTOMER_ID],
            "responses": {"200": _json("Profile", "the profile"), **_errors(401, 403, 404, 429, 503)},
        },
        "delete": {
            "tags": ["customers"],
            "summary": "Request the customer's erasure (an Erasure Requested event on the events stream); admin scope",
            "operationId": "delete_customer",
            "security": _KEY,
            "parameters": [_CUSTOMER_ID],
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("ErasureRequest")}}},
            "responses": {"202": _json("ErasureAccepted", "requested"), **_errors(400, 401, 403, 413, 429, 503)},
        },
    },
    "/v1/audiences": {
        "get": {
            "tags": ["audiences"],
            "summary": "Every audience with members, and its size; scope read",
            "operationId": "get_audiences",
            "security": _KEY,
            "responses": {"200": _json("Audiences", "the audiences, by id"), **_errors(401, 403, 429, 503)},
        }
    },
    "/v1/audiences/{audience_id}/members": {
        "get": {
            "tags": ["audiences"],
            "summary": "A page of an audience's members; scope read",
            "operationId": "get_members",
            "security": _KEY,
            "parameters": [
                _AUDIENCE_ID,
                {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "from the last page"},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            ],
            "responses": {
                "200": _json("MembersPage", "a page; cursor null on the last"),
                **_errors(400, 401, 403, 429, 503),
            },
        }
    },
    "/v1/audiences/{audience_id}/export": {
        "get": {
            "tags": ["audiences"],
            "summary": "The audience's members' hashed identifiers in an ad platform's upload format; scope read",
            "operationId": "export_audience",
            "security": _KEY,
            "parameters": [
                _AUDIENCE_ID,
                {"name": "format", "in": "query", "schema": {"type": "string"}, "description": "google, meta, ..."},
                {"name": "since", "in": "query", "schema": {"type": "string"}, "description": "changes since then"},
                {
                    "name": "changes",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["added", "removed"]},
                    "description": "with since: the additions (default) or the removals",
                },
            ],
            "responses": {
                "200": {
                    "description": "the upload file",
                    "headers": {
                        "X-Nudgeflow-Rows": {"schema": {"type": "integer"}, "description": "rows in the file"},
                        "X-Nudgeflow-Without-Match-Keys": {
                            "schema": {"type": "integer"},
                            "description": "members left out: no email or phone known",
                        },
                    },
                    "content": {"text/csv": {}, "application/x-ndjson": {}},
                },
                **_errors(400, 401, 403, 429, 503),
            },
        }
    },
    "/dashboard": {
        "get": {
            "tags": ["dashboard"],
            "summary": "The live dashboard (HTML); the key goes in the URL fragment",
            "operationId": "dashboard",
            "security": [],
            "responses": {"200": {"description": "the page", "content": {"text/html": {}}}},
        }
    },
    "/dashboard/stream": {
        "get": {
            "tags": ["dashboard"],
            "summary": "The dashboard's figures, as server-sent events; scope read",
            "operationId": "dashboard_stream",
            "security": _KEY,
            "responses": {"200": {"description": "a frame a second", "content": {"text/event-stream": {}}}},
        }
    },
    "/v1/batch": {
        "post": {
            "tags": ["segment"],
            "summary": "Segment's batch call (Segment's HTTP Tracking API; at most 500 KB); scope ingest",
            "description": _SEGMENT_KEY,
            "operationId": "segment_batch",
            "security": _KEY,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SegmentBatch")}}},
            "responses": {
                "200": _json("SegmentAnswer", "taken (events the contract refuses are dead-lettered by the stream)"),
                "400": _json("SegmentAnswer", "not JSON, not a batch, or over 500 KB"),
                **_errors(401, 403, 429),
                "503": _json("SegmentAnswer", "the events stream did not take every event: send again"),
            },
        }
    },
    **{f"/v1/{call}": _segment_call(call) for call in ("track", "identify", "page", "screen", "alias", "group")},
}

_EVENT = {
    "type": "object",
    "description": "A Segment-shaped event (the contract: docs/events.md)",
    "properties": {
        "type": {"type": "string", "enum": ["track", "identify", "page", "screen", "alias"]},
        "event": {"type": "string"},
        "messageId": {"type": "string"},
        "userId": {"type": "string"},
        "anonymousId": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"},
        "receivedAt": {"type": "string", "format": "date-time"},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "context": {"type": "object"},
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "Event": _EVENT,
    "EventsRequest": {
        "oneOf": [
            _ref("Event"),
            {"type": "object", "required": ["batch"], "properties": {"batch": {"type": "array"}}},
            {"type": "array", "items": _ref("Event"), "maxItems": 1000},
        ]
    },
    "EventResult": {
        "type": "object",
        "required": ["index", "status"],
        "additionalProperties": False,
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "status": {"type": "string", "enum": ["accepted", "rejected", "failed"]},
            "reason": {"type": "string", "description": "the dead letter's reason (schema_invalid, ...), not_sent"},
            "messages": {"type": "array", "items": {"type": "string"}},
        },
    },
    "EventsResponse": {
        "type": "object",
        "required": ["accepted", "rejected", "failed", "results"],
        "additionalProperties": False,
        "properties": {
            "accepted": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 0},
            "failed": {"type": "integer", "minimum": 0},
            "results": {"type": "array", "items": _ref("EventResult")},
        },
    },
    "Decision": {
        "type": "object",
        "required": ["id", "rule_id", "channel", "time"],
        "properties": {
            "id": {"type": "string"},
            "rule_id": {"type": "string"},
            "channel": {"type": "string"},
            "offer_id": {"type": ["string", "null"]},
            "time": {"type": "string"},
        },
    },
    "Profile": {
        "type": "object",
        "required": ["customer_id", "features", "audiences", "decisions"],
        "properties": {
            "customer_id": {"type": "string"},
            "features": {"type": "object"},
            "audiences": {"type": "array", "items": {"type": "string"}},
            "traits": {"type": "object", "description": "the allowlisted traits only"},
            "match_keys": {
                "type": "object",
                "properties": {"email_sha256": {"type": "string"}, "phone_sha256": {"type": "string"}},
            },
            "updated_at": {"type": ["string", "null"]},
            "decisions": {"type": "array", "items": _ref("Decision"), "description": "newest first"},
        },
    },
    "Audiences": {
        "type": "object",
        "required": ["audiences"],
        "properties": {
            "audiences": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "size"],
                    "properties": {"id": {"type": "string"}, "size": {"type": "integer", "minimum": 0}},
                },
            }
        },
    },
    "MembersPage": {
        "type": "object",
        "required": ["audience_id", "members", "cursor"],
        "additionalProperties": False,
        "properties": {
            "audience_id": {"type": "string"},
            "members": {"type": "array", "items": {"type": "string"}},
            "cursor": {"type": ["string", "null"], "description": "pass it to get the next page; null: no more"},
        },
    },
    "ErasureRequest": {
        "type": "object",
        "properties": {
            "request_id": {"type": "string", "description": "default: a new one"},
            "regulation": {"type": "string", "enum": ["gdpr", "ccpa", "other"], "default": "gdpr"},
        },
    },
    "ErasureAccepted": {
        "type": "object",
        "required": ["request_id", "regulation", "status"],
        "additionalProperties": False,
        "properties": {
            "request_id": {"type": "string"},
            "regulation": {"type": "string", "enum": ["gdpr", "ccpa", "other"]},
            "status": {"const": "accepted"},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Ready": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "unavailable"]},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "SegmentCall": {"type": "object", "properties": {**_EVENT["properties"], "writeKey": {"type": "string"}}},
    "SegmentBatch": {
        "type": "object",
        "required": ["batch"],
        "properties": {
            "batch": {"type": "array", "items": _ref("SegmentCall")},
            "sentAt": {"type": "string"},
            "context": {"type": "object"},
            "writeKey": {"type": "string"},
        },
    },
    "SegmentAnswer": {
        "type": "object",
        "required": ["success"],
        "properties": {"success": {"type": "boolean"}, "code": {"type": "string"}, "message": {"type": "string"}},
    },
}


def served_routes(app: web.Application) -> dict[str, set[str]]:
    """Route template -> the methods the app serves there (HEAD, and static files, left out)."""
    routes: dict[str, set[str]] = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is None or isinstance(resource, web.StaticResource) or route.method in ("HEAD", "*"):
            continue
        routes.setdefault(resource.canonical, set()).add(route.method.lower())
    return routes


def openapi_document(app: web.Application | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document: of the routes ``app`` serves (every documented route when None)."""
    served = served_routes(app) if app is not None else None
    paths = {
        path: {method: op for method, op in operations.items() if served is None or method in served[path]}
        for path, operations in PATHS.items()
        if served is None or path in served
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nudgeflow API",
            "version": API_VERSION,
            "description": "Events in (also Segment's HTTP Tracking API), profiles and audiences out. Keys have"
            f" scopes ({', '.join(SCOPES)}; admin implies the others): ingest for events, read for profiles and"
            " audiences, admin for erasure requests.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"basic": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
                "basic": {"type": "http", "scheme": "basic", "description": "the key as user name (Segment SDKs)"},
            },
        },
    }
