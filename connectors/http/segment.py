"""Segment's HTTP Tracking API: ``POST /v1/batch``, ``/v1/track``, ``/v1/identify``, ``/v1/page``,
``/v1/screen``, ``/v1/alias`` and ``/v1/group``, so that apps instrumented with Segment's SDKs switch
to nudgeflow by changing their host.

As Segment does: the write key is the Basic-auth user name (or the body's ``writeKey``); a call is at
most 32 KB and a batch at most 500 KB (400 beyond, as for a body that is not JSON); every other call
is answered 200 ``{"success": true}``. ``receivedAt`` is the server's time; when ``sentAt`` is given
(on the event or the batch) the device's clock is corrected: ``timestamp = receivedAt - (sentAt -
timestamp)``, the device's time kept as ``originalTimestamp``; an event without ``timestamp`` takes
``receivedAt``, one without ``messageId`` gets a new one. The ``writeKey`` never reaches the stream.

Events the contract refuses are sent to the events stream all the same: the engine dead-letters
them there with the same reason, so every call is accounted for (and counted as ``rejected`` in
``nudgeflow_http_events_total``). When the stream does not take every event the answer is 503, which
Segment's SDKs retry (the engine drops the repeats by ``messageId``).
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from connectors.http.app import BACKEND, VALIDATOR, json_response
from connectors.http.auth import requires
from connectors.http.ingest import (
    BodyError,
    BodyTooLarge,
    Pairs,
    field,
    now_ms,
    read_body,
    read_json,
    take_events,
    with_fields,
    without,
)
from schemas.records import iso_ms
from schemas.timestamps import epoch_ms

CALL_LIMIT_BYTES = 32 * 1024
SEGMENT_LIMIT_BYTES = 500 * 1024
"""The largest batch body Segment takes (and so the largest Segment body of all)."""
CALL_TYPES = ("track", "identify", "page", "screen", "alias", "group")
WRITE_KEY = "writeKey"


def add_segment_routes(app: web.Application) -> None:
    """Segment's endpoints on ``app`` (made by :func:`connectors.http.app.make_app`)."""
    app.router.add_post("/v1/batch", post_batch)
    for call_type in CALL_TYPES:
        app.router.add_post(f"/v1/{call_type}", _single(call_type))


def segment_answer(status: int = 200, code: str | None = None, message: str | None = None) -> web.Response:
    """Segment's answer: ``{"success": true}``, or ``{"success": false, "code", "message"}`` (what its SDKs read)."""
    if code is None:
        return json_response({"success": True}, status)
    return json_response({"success": False, "code": code, "message": message}, status)


@requires("ingest", write_key_in_body=True)
async def post_batch(request: web.Request) -> web.Response:
    """``{"batch": [...], "sentAt"?, "context"?, "integrations"?}``: each event corrected, checked and sent."""
    document = await _read(request, SEGMENT_LIMIT_BYTES, "batch")
    if isinstance(document, web.Response):
        return document
    batch = field(document, "batch")
    if not isinstance(document, dict | Pairs) or not isinstance(batch, list) or isinstance(batch, Pairs):
        return segment_answer(400, "invalid_batch", "the body must be an object with a batch array")
    shared = {name: field(document, name) for name in ("sentAt", "context", "integrations")}
    received_ms = now_ms()
    return await _take(request, [_corrected(event, received_ms, shared, None) for event in batch], received_ms)


def _single(call_type: str) -> Any:
    @requires("ingest", write_key_in_body=True)
    async def post_call(request: web.Request) -> web.Response:
        event = await _read(request, CALL_LIMIT_BYTES, "call")
        if isinstance(event, web.Response):
            return event
        if not isinstance(event, dict | Pairs):
            return segment_answer(400, "invalid_json", "a call is a JSON object")
        received_ms = now_ms()
        return await _take(request, [_corrected(event, received_ms, {}, call_type)], received_ms)

    post_call.__name__ = post_call.__qualname__ = f"post_{call_type}"
    post_call.__doc__ = f"Segment's ``{call_type}`` call, corrected, checked and sent."
    return post_call


async def _read(request: web.Request, limit: int, what: str) -> Any:
    """The JSON document of the body, or Segment's 400 answer for a body over ``limit`` or not JSON."""
    try:
        return read_json(await read_body(request, limit))
    except BodyTooLarge:
        return segment_answer(400, "too_large", f"a {what} is at most {limit // 1024} KB")
    except BodyError as err:
        return segment_answer(400, "invalid_json", str(err))


async def _take(request: web.Request, events: list[Any], received_ms: int) -> web.Response:
    outcomes = await take_events(request.app[BACKEND], request.app[VALIDATOR], events, received_ms, forward=True)
    if any(outcome.status == "failed" for outcome in outcomes):
        return segment_answer(503, "unavailable", "the events stream did not take every event; send them again")
    return segment_answer()


def _corrected(event: Any, received: int, shared: dict[str, Any], call_type: str | None) -> Any:
    """A Segment event received at ``received`` (epoch ms) as the stream takes it: see the module's docstring."""
    if not isinstance(event, dict | Pairs):
        return event  # the contract refuses it, with the stream's words
    values: dict[str, Any] = {"receivedAt": iso_ms(received)}
    if call_type is not None:
        values["type"] = call_type
    for name in ("context", "integrations"):
        if field(event, name) is None and shared.get(name) is not None:
            values[name] = shared[name]
    if field(event, "messageId") is None:
        values["messageId"] = f"api-{uuid.uuid4()}"
    timestamp, sent_at = field(event, "timestamp"), field(event, "sentAt") or shared.get("sentAt")
    if timestamp is None:
        values["timestamp"] = iso_ms(received)
    elif sent_at is not None:
        corrected = _clock_corrected(timestamp, sent_at, received)
        if corrected is not None:
            values["timestamp"] = corrected
            if field(event, "originalTimestamp") is None:
                values["originalTimestamp"] = timestamp
    return with_fields(without(event, WRITE_KEY), **values)


def _clock_corrected(timestamp: Any, sent_at: Any, received_ms: int) -> str | None:
    """``receivedAt - (sentAt - timestamp)``; None when either time is not an ISO 8601 date-time
    (the contract then says what is wrong with it)."""
    try:
        return iso_ms(received_ms - (epoch_ms(sent_at) - epoch_ms(timestamp)))
    except (ValueError, TypeError, OverflowError):
        return None
