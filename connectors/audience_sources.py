"""Where ``nudgeflow audiences export`` reads an audience without the Redis store (which
:class:`connectors.redis_reads.RedisReads` reads): a run's output folder and the recordings it was run
on (see :mod:`connectors.ad_audiences` for the formats)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from connectors.files import read_lines
from connectors.http.backend import Change, Page, decode_cursor, encode_cursor
from schemas import match_keys
from schemas.errors import InputError
from schemas.timestamps import epoch_ms


class FolderAudiences:
    """Audiences as a run left them in its output folder (``audience_changes.jsonl``), with the match keys
    of the recordings it read (identify traits, normalised and hashed here as the engine does)."""

    def __init__(self, folder: Path, recordings: Sequence[Path], phone_region: str = "US") -> None:
        path = folder / "audience_changes.jsonl"
        if not path.is_file():
            raise InputError(f"{folder} holds no audience_changes.jsonl: is it the output folder of a run?")
        self._changes_file = path
        self._keys = recorded_match_keys(recordings, phone_region)
        self._logs: dict[str, list[Change]] = {}

    async def members(self, audience_id: str, cursor: str | None, limit: int) -> Page:
        members = sorted(_current(self._log(audience_id)))
        start = 0 if cursor is None else bisect.bisect_right(members, decode_cursor(cursor))
        page = members[start : start + limit]
        more = start + limit < len(members)
        return Page(page, encode_cursor(page[-1]) if more and page else None)

    async def match_keys(self, customer_ids: list[str]) -> dict[str, dict[str, str]]:
        return {c: match_keys.to_hex(self._keys[c]) for c in customer_ids if self._keys.get(c) is not None}

    async def changes(self, audience_id: str, since_ms: int) -> list[Change]:
        return [change for change in self._log(audience_id) if change.time_ms >= since_ms]

    async def close(self) -> None:
        return None

    def _log(self, audience_id: str) -> list[Change]:
        if audience_id not in self._logs:
            self._logs[audience_id] = list(_read_changes(self._changes_file, audience_id))
        return self._logs[audience_id]


def _read_changes(path: Path, audience_id: str) -> Iterable[Change]:
    """The audience's changes in the file, in its order (time order, as runs write it)."""
    for number, line in enumerate(read_lines(path), start=1):
        try:
            record = orjson.loads(line)
            data = record["data"]
            if data["audience"] == audience_id:
                yield Change(record["subject"], data["change"], epoch_ms(record["time"]))
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path}, line {number}: not an audience change record ({err})") from None


def _current(changes: Iterable[Change]) -> set[str]:
    members: set[str] = set()
    for change in changes:
        if change.change == "entered":
            members.add(change.customer_id)
        else:
            members.discard(change.customer_id)
    return members


def recorded_match_keys(recordings: Sequence[Path], phone_region: str) -> dict[str, bytes | None]:
    """Each customer's packed match keys from the identify events of ``recordings``, in their order: keyed by
    ``userId`` (else ``anonymousId``), a national phone read in the customer's last known country (else
    ``phone_region``); an anonymous id's keys are added to the customer it is linked to (its own win)."""
    keys: dict[str, bytes | None] = {}
    countries: dict[str, str] = {}
    links: dict[str, str] = {}
    for path in recordings:
        for line in read_lines(path):
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # the engine dead-letters it
            if type(event) is not dict:
                continue
            user, anonymous = event.get("userId"), event.get("anonymousId")
            if isinstance(user, str) and isinstance(anonymous, str) and user and anonymous:
                links.setdefault(anonymous, user)
            traits = event.get("traits")
            customer = user or anonymous
            if event.get("type") != "identify" or type(traits) is not dict or not isinstance(customer, str):
                continue
            if isinstance(traits.get("country"), str):
                countries[customer] = traits["country"]
            if traits.get("email") is None and traits.get("phone") is None:
                continue
            region = match_keys.phone_region(countries.get(customer), phone_region)
            email, phone, digits, _ = match_keys.digests(traits.get("email"), traits.get("phone"), region)
            keys[customer] = match_keys.pack(keys.get(customer), email, phone, digits)
    for anonymous, user in links.items():
        if anonymous in keys:
            keys[user] = match_keys.merged(keys.get(user), keys.pop(anonymous))
    return keys
