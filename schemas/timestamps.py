"""ISO 8601 date-time text to epoch milliseconds, without building datetime objects.

The contract's forms: ``YYYY-MM-DD``, then ``T`` (or ``t``, a space, ``_``), ``HH:MM``, optional ``:SS``
with an optional fraction (``.`` or ``,``, any number of digits, read to the microsecond), then a time
zone: ``Z`` (or ``z``), ``+HH:MM`` or ``+HHMM`` (under 24 hours). Years 0001 to 9999; no leap seconds.
Text without a time zone is refused. The common form ``2026-01-05T10:00:00.123Z`` takes a fast path.

The value is the one ``int(datetime.timestamp() * 1000)`` gives for the same instant: the float
rounding of that formula is kept, so every accepted form maps to the same milliseconds as before.
"""

from __future__ import annotations

import re

NOT_ISO = "Input should be an ISO 8601 date-time with a time zone, e.g. 2026-01-05T10:00:00Z"
NO_ZONE = "Input should have timezone info"
INVALID = "Input should be a valid datetime or date, "

_ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[Tt _]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]+))?)?"
    r"(?:([Zz])|([+-])([0-9]{2}):?([0-9]{2}))?)?",
    re.ASCII,
)
_DAYS_BEFORE_MONTH = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
_UNIX_EPOCH_ORDINAL = 719_163  # days from 0001-01-01 to 1970-01-01

# the fast path: "YYYY-MM-DDTHH:MM:" (a minute seen before) -> seconds, "SS" -> seconds, "fff" -> milliseconds
_MINUTES: dict[str, int] = {}
_MAX_MINUTES_KEPT = 100_000
_SECONDS = {f"{s:02}": s for s in range(60)}
_MILLIS = {f"{ms:03}": ms for ms in range(1000)}


def epoch_ms(text: str) -> int:
    """Milliseconds since the Unix epoch of ISO 8601 date-time text; ValueError if it is not one."""
    if len(text) == 24 and text[23] == "Z" and text[19] == ".":
        minute = _MINUTES.get(text[:17])
        second = _SECONDS.get(text[17:19])
        milli = _MILLIS.get(text[20:23])
        if minute is not None and second is not None and milli is not None:
            return int(((minute + second) * 1000 + milli) / 1000 * 1000)  # see _as_timestamp_ms
    return _parse(text)


def _parse(text: str) -> int:
    """The general form (see the module docstring)."""
    if type(text) is not str or text[4:5] != "-":
        raise ValueError(NOT_ISO)
    match = _ISO.fullmatch(text)
    if match is None:
        raise ValueError(INVALID + "invalid character or unexpected end of input")
    year, month, day, hour, minute, second, fraction, zulu, sign, zone_hour, zone_minute = match.groups()
    day_seconds = _day_seconds(int(year), int(month), int(day))
    hours, minutes, seconds = int(hour or 0), int(minute or 0), int(second or 0)
    if hours > 23 or minutes > 59 or seconds > 59 or int(zone_hour or 0) > 23 or int(zone_minute or 0) > 59:
        raise ValueError(INVALID + "unexpected extra characters at the end of the input")
    if hour is None or (zulu is None and sign is None):
        raise ValueError(NO_ZONE)
    offset = 0
    if sign is not None:
        offset = (int(zone_hour) * 3600 + int(zone_minute) * 60) * (-1 if sign == "-" else 1)
    minute = day_seconds + hours * 3600 + minutes * 60 - offset
    if len(text) == 24 and zulu == "Z" and fraction is not None and len(fraction) == 3:  # the fast path's form
        if len(_MINUTES) >= _MAX_MINUTES_KEPT:
            _MINUTES.clear()
        _MINUTES[text[:17]] = minute
    micros = int(fraction[:6].ljust(6, "0")) if fraction else 0
    return _as_timestamp_ms((minute + seconds) * 1_000_000 + micros)


def _day_seconds(year: int, month: int, day: int) -> int:
    """Seconds since the epoch at the date's midnight UTC."""
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days_in_month = (0, 31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    if year < 1:
        raise ValueError("Input should be a valid datetime, year 0 is out of range")
    if not 1 <= month <= 12:
        raise ValueError(INVALID + "month value is outside expected range of 1-12")
    if not 1 <= day <= days_in_month[month]:
        raise ValueError(INVALID + "day value is outside expected range")
    before = year - 1
    ordinal = before * 365 + before // 4 - before // 100 + before // 400 + _DAYS_BEFORE_MONTH[month] + day
    ordinal += 1 if leap and month > 2 else 0
    return (ordinal - _UNIX_EPOCH_ORDINAL) * 86_400


def _as_timestamp_ms(micros: int) -> int:
    """``int(datetime.timestamp() * 1000)`` for the instant ``micros`` after the epoch: the
    timestamp is the correctly rounded float of micros / 10**6, and the product is truncated."""
    return int(micros / 1_000_000 * 1000)
