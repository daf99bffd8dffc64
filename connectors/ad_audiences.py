"""Ad-audience export: an audience's members as the customer-list uploads of ad platforms take them.

Each member is exported by its match keys (SHA-256 of the normalised email and phone, see
:mod:`schemas.match_keys`), never by raw values. Formats:

- ``google``: Google Ads Customer Match CSV, headers ``Email,Phone`` (hashes of the email and of the
  E.164 phone).
- ``meta``: Meta Marketing API ``/{audience_id}/users`` payloads, multi-key schema ``["EMAIL", "PHONE"]``
  with hashed values (Meta hashes phones as digits without the ``+``), one JSON payload per line, at most
  :data:`META_MAX_ROWS` rows each (the edge's limit per request).
- ``tiktok``: TikTok customer file CSV, headers ``Email_SHA256,Phone_SHA256``.
- ``csv``: ``customer_id,email_sha256,phone_sha256``.

A member without any key the format takes is not exported: it is counted (:class:`Exported`). The
whole list, or with ``since`` the additions or removals since then, from the audience's change records:
a customer out before ``since`` and in now is added, in before and out now removed; one who entered and
left in between is neither.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from connectors.http.app import BACKEND
from connectors.http.auth import requires
from connectors.http.backend import Change, Page
from schemas.errors import ConfigurationError
from schemas.match_keys import EMAIL, PHONE, PHONE_DIGITS
from schemas.timestamps import epoch_ms

PAGE = 1000  # members read (and match keys looked up) at a time
META_MAX_ROWS = 10_000
CHANGES = ("added", "removed")
WITHOUT_KEYS_HEADER = "X-Nudgeflow-Without-Match-Keys"
ROWS_HEADER = "X-Nudgeflow-Rows"
SPOOL_BYTES = 1 << 20  # an HTTP export is held in memory up to this size, then in a temporary file
SEND_BYTES = 1 << 16


class AudienceSource(Protocol):
    """What an export reads (the HTTP API's backends have these methods)."""

    async def members(self, audience_id: str, cursor: str | None, limit: int) -> Page: ...

    async def match_keys(self, customer_ids: list[str]) -> dict[str, dict[str, str]]: ...

    async def changes(self, audience_id: str, since_ms: int) -> list[Change]: ...


class ExportFormat:
    """One upload format: a head, a row per member with keys it takes, a tail."""

    name = ""
    media_type = "text/csv; charset=utf-8"
    suffix = "csv"
    columns: tuple[str, ...] = ()  # header names, in order
    keys: tuple[str, ...] = ()  # the match key (or "customer_id") in each column

    def head(self) -> bytes:
        return _csv_line(self.columns)

    def row(self, customer_id: str, keys: dict[str, str]) -> bytes | None:
        """The member's row; ``None`` when it has none of the keys this format takes."""
        values = [customer_id if name == "customer_id" else keys.get(name, "") for name in self.keys]
        if not any(keys.get(name) for name in self.keys if name != "customer_id"):
            return None
        return _csv_line(values)

    def tail(self) -> bytes:
        return b""


class GoogleFormat(ExportFormat):
    name = "google"
    columns = ("Email", "Phone")
    keys = (EMAIL, PHONE)


class TiktokFormat(ExportFormat):
    name = "tiktok"
    columns = ("Email_SHA256", "Phone_SHA256")
    keys = (EMAIL, PHONE)


class CsvFormat(ExportFormat):
    name = "csv"
    columns = ("customer_id", "email_sha256", "phone_sha256")
    keys = ("customer_id", EMAIL, PHONE)


class MetaFormat(ExportFormat):
    """Payloads for ``POST`` (additions) or ``DELETE`` (removals) on a custom audience's ``users`` edge."""

    name = "meta"
    media_type = "application/x-ndjson"
    suffix = "jsonl"
    schema = ("EMAIL", "PHONE")
    keys = (EMAIL, PHONE_DIGITS)

    def __init__(self) -> None:
        self._rows: list[list[str]] = []

    def head(self) -> bytes:
        return b""

    def row(self, customer_id: str, keys: dict[str, str]) -> bytes | None:
        values = [keys.get(name, "") for name in self.keys]
        if not any(values):
            return None
        self._rows.append(values)
        return self._payload() if len(self._rows) == META_MAX_ROWS else b""

    def tail(self) -> bytes:
        return self._payload() if self._rows else b""

    def _payload(self) -> bytes:
        line = orjson.dumps({"payload": {"schema": list(self.schema), "data": self._rows}}) + b"\n"
        self._rows = []
        return line


FORMATS: dict[str, type[ExportFormat]] = {f.name: f for f in (GoogleFormat, MetaFormat, TiktokFormat, CsvFormat)}


def export_format(name: str) -> ExportFormat:
    """A fresh writer of format ``name``; :class:`ConfigurationError` for an unknown one."""
    if name not in FORMATS:
        raise ConfigurationError(f"unknown export format {name!r}: one of {', '.join(FORMATS)}")
    return FORMATS[name]()


def since_ms(text: str) -> int:
    """A ``since`` time: ISO 8601 with a time zone, or epoch milliseconds."""
    if text.isdigit():
        return int(text)
    try:
        return epoch_ms(text)
    except ValueError:
        raise ConfigurationError(f"since {text!r} is not an ISO 8601 time with a time zone nor epoch ms") from None


def checked_changes(changes: str) -> str:
    """``changes`` if it is ``added`` or ``removed``; :class:`ConfigurationError` otherwise."""
    if changes not in CHANGES:
        raise ConfigurationError(f"changes must be one of {', '.join(CHANGES)}, got {changes!r}")
    return changes


def delta(changes: Iterable[Change]) -> tuple[list[str], list[str]]:
    """``(added, removed)`` customers, sorted, from an audience's changes since a time (oldest first):
    added = out before the first change and in after the last; removed = the reverse."""
    first: dict[str, str] = {}
    last: dict[str, str] = {}
    for change in changes:
        first.setdefault(change.customer_id, change.change)
        last[change.customer_id] = change.change
    added = sorted(c for c, change in last.items() if change == "entered" and first[c] == "entered")
    removed = sorted(c for c, change in last.items() if change == "exited" and first[c] == "exited")
    return added, removed


@dataclass
class Exported:
    """What an export wrote: ``rows`` members, and ``without_keys`` members left out (no usable key)."""

    rows: int = 0
    without_keys: int = 0


async def export(
    source: AudienceSource,
    audience_id: str,
    fmt: ExportFormat,
    write: Callable[[bytes], Any],
    since: int | None = None,
    changes: str = "added",
) -> Exported:
    """Write ``audience_id``'s members (or, with ``since``, its ``changes``: added or removed since then)
    in ``fmt`` through ``write``, a page at a time."""
    checked_changes(changes)
    done = Exported()
    write(fmt.head())
    if since is None:
        cursor: str | None = None
        while True:
            page = await source.members(audience_id, cursor, PAGE)
            await _write_rows(source, page.members, fmt, write, done)
            cursor = page.cursor
            if cursor is None:
                break
    else:
        added, removed = delta(await source.changes(audience_id, since))
        chosen = added if changes == "added" else removed
        for at in range(0, len(chosen), PAGE):
            await _write_rows(source, chosen[at : at + PAGE], fmt, write, done)
    write(fmt.tail())
    return done


async def _write_rows(
    source: AudienceSource, customers: list[str], fmt: ExportFormat, write: Callable[[bytes], Any], done: Exported
) -> None:
    if not customers:
        return
    keys = await source.match_keys(customers)
    for customer in customers:
        row = fmt.row(customer, keys.get(customer) or {})
        if row is None:
            done.without_keys += 1
            continue
        done.rows += 1
        if row:
            write(row)


def _csv_line(values: Iterable[str]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(values)
    return text.getvalue().encode()


@requires("read")
async def export_handler(request: web.Request) -> web.StreamResponse:
    """``GET /v1/audiences/{audience_id}/export?format=google|meta|tiktok|csv[&since=T&changes=added|removed]``
    (scope ``read``; added to the app by :func:`add_export`).

    The body is written to a spooled temporary file (memory up to :data:`SPOOL_BYTES`, then disk), so the
    count of members without match keys can go in a header (:data:`WITHOUT_KEYS_HEADER`), then streamed.
    """
    audience_id = request.match_info["audience_id"]
    query = request.query
    try:
        fmt = export_format(query.get("format", "csv"))
        since = since_ms(query["since"]) if "since" in query else None
        changes = checked_changes(query.get("changes", "added"))
    except ConfigurationError as err:
        return web.json_response({"error": "invalid_request", "message": str(err)}, status=400)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        done = await export(request.app[BACKEND], audience_id, fmt, spool.write, since, changes)
        what = audience_id if since is None else f"{audience_id}.{changes}"
        response = web.StreamResponse(
            headers={
                "Content-Type": fmt.media_type,
                "Content-Disposition": f'attachment; filename="{_file_name(what)}.{fmt.name}.{fmt.suffix}"',
                ROWS_HEADER: str(done.rows),
                WITHOUT_KEYS_HEADER: str(done.without_keys),
            }
        )
        await response.prepare(request)
        spool.seek(0)
        while chunk := spool.read(SEND_BYTES):
            await response.write(chunk)
    await response.write_eof()
    return response


def add_export(app: web.Application) -> None:
    """Add ``GET /v1/audiences/{audience_id}/export`` to the API (an ``extra`` of ``make_app``)."""
    app.router.add_get("/v1/audiences/{audience_id}/export", export_handler)


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:100] or "audience"
