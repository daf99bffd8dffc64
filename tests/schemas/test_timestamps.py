"""Timestamps to epoch milliseconds: the same value for every form the contract accepts, straight from the text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from schemas.timestamps import epoch_ms

_AWARE = TypeAdapter(AwareDatetime)


def reference_ms(text: str) -> int | None:
    """What a datetime parser makes of ``text``: ``int(timestamp() * 1000)``, or None when it refuses it
    (text not starting like a date is refused first, as the contract refuses epoch numbers as text)."""
    if text[4:5] != "-":
        return None
    try:
        return int(_AWARE.validate_python(text).timestamp() * 1000)
    except ValidationError:
        return None


def ours(text: str) -> int | None:
    """``epoch_ms(text)``, or None when it refuses it; asked twice, so that the fast path answers too."""
    try:
        first = epoch_ms(text)
    except ValueError:
        return None
    assert epoch_ms(text) == first, text
    return first


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-05T10:00:00Z", datetime(2026, 1, 5, 10, tzinfo=UTC)),
        ("2026-01-05T10:00:00.123Z", datetime(2026, 1, 5, 10, 0, 0, 123_000, tzinfo=UTC)),
        ("2026-01-05T11:00:00+01:00", datetime(2026, 1, 5, 10, tzinfo=UTC)),
        ("2026-01-05T04:30:00-05:30", datetime(2026, 1, 5, 10, tzinfo=UTC)),
        ("2026-01-05T10:00:00+0000", datetime(2026, 1, 5, 10, tzinfo=UTC)),
        ("2026-01-05 10:00:00z", datetime(2026, 1, 5, 10, tzinfo=UTC)),
        ("2026-01-05T10:00Z", datetime(2026, 1, 5, 10, tzinfo=UTC)),
        ("2026-01-05T10:00:00.5Z", datetime(2026, 1, 5, 10, 0, 0, 500_000, tzinfo=UTC)),
        ("2026-01-05T10:00:00,25Z", datetime(2026, 1, 5, 10, 0, 0, 250_000, tzinfo=UTC)),
        ("2026-01-05T10:00:00.123456789Z", datetime(2026, 1, 5, 10, 0, 0, 123_456, tzinfo=UTC)),
        ("2024-02-29T12:00:00Z", datetime(2024, 2, 29, 12, tzinfo=UTC)),
        ("2000-02-29T00:00:00Z", datetime(2000, 2, 29, tzinfo=UTC)),
        ("1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC)),
        ("1970-01-01T00:00:00.001Z", datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)),
        ("1969-12-31T23:59:59.999Z", datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)),
        ("1969-12-31T23:59:59.9995Z", datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC)),
        ("1900-03-01T00:00:00.250Z", datetime(1900, 3, 1, 0, 0, 0, 250_000, tzinfo=UTC)),
        ("0001-01-01T00:00:00+01:00", datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))),
        ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        (
            "2999-07-04T12:34:56.789+14:00",
            datetime(2999, 7, 4, 12, 34, 56, 789_000, tzinfo=timezone(timedelta(hours=14))),
        ),
    ],
)
def test_each_accepted_form_is_the_instant_it_names(text, expected):
    assert epoch_ms(text) == int(expected.timestamp() * 1000)
    assert epoch_ms(text) == reference_ms(text)


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-05T10:00:00",
        "2026-01-05",
        "2026-01-05T10:00:00.123",
        "2026-01-05T10Z",
        "2026-01-05T10:00:00+01",
        "2026-01-05T10:00:00+24:00",
        "2026-01-05T10:00:00+01:60",
        "2026-01-05T24:00:00Z",
        "2026-01-05T10:60:00Z",
        "2026-01-05T10:00:60Z",
        "2026-01-05T10:00:00.Z",
        "2025-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-01-00T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "2026-1-5T10:00:00Z",
        "20260105T100000Z",
        "1767607200",
        " 2026-01-05T10:00:00Z",
        "2026-01-05T10:00:00Z ",
        "2026-01-05T10:00:00 Z",
        "2026-01-05T10:00:00UTC",
        "2026-01-05T10:00:00+01:00:00",
        "2026-01-05X10:00:00Z",
        "２０２６-01-05T10:00:00Z",
        "2026-01-05T10:00:00.１２３Z",
        "2026-01-05T10:00:0１.123Z",
        "",
    ],
)
def test_what_is_not_an_aware_iso_date_time_is_refused(text):
    with pytest.raises(ValueError):
        epoch_ms(text)
    assert reference_ms(text) is None


def test_a_missing_time_zone_says_so():
    for text in ("2026-01-05T10:00:00", "2026-01-05"):
        with pytest.raises(ValueError, match="timezone"):
            epoch_ms(text)


def test_the_fast_path_gives_what_the_general_form_gives():
    """The first sighting of a minute takes the general path; later ones the fast path."""
    text = "2031-08-17T21:09:33.707Z"
    assert epoch_ms(text) == epoch_ms(text) == reference_ms(text)
    assert epoch_ms("2031-08-17T21:09:59.001Z") == reference_ms("2031-08-17T21:09:59.001Z")
    for wrong in (
        "2031-08-17T21:09:60.707Z",
        "2031-08-17T21:09:3x.707Z",
        "2031-08-17T21:09:33.7x7Z",
        "2031-08-17T21:09:33.707+",
    ):
        with pytest.raises(ValueError):
            epoch_ms(wrong)


def two_digits(draw: st.DrawFn, low: int, high: int, off_low: int, off_high: int) -> str:
    """Mostly in ``low..high``, sometimes in the wider ``off_low..off_high`` or not two digits."""
    chance = draw(st.integers(0, 19))
    if chance == 0:
        return draw(st.text("0123456789", max_size=3))
    return f"{draw(st.integers(off_low, off_high) if chance == 1 else st.integers(low, high)):02}"


@st.composite
def near_iso(draw: st.DrawFn) -> str:
    """ISO-like text, mostly valid, sometimes just off (ranges, separators, zones, fractions)."""
    year = draw(
        st.one_of(st.integers(0, 9999).map(lambda y: f"{y:04}"), st.sampled_from(["1970", "1969", "2026", "2024"]))
    )
    text = f"{year}-{two_digits(draw, 1, 12, 0, 13)}-{two_digits(draw, 1, 28, 0, 32)}"
    if draw(st.integers(0, 9)) == 0:
        return text + draw(st.sampled_from(["", "Z", "T", "T10"]))
    text += draw(st.sampled_from("TTTTTTTTt _X"))
    text += f"{two_digits(draw, 0, 23, 0, 25)}:{two_digits(draw, 0, 59, 0, 61)}"
    if draw(st.integers(0, 5)):
        text += f":{two_digits(draw, 0, 59, 0, 61)}"
        if draw(st.booleans()):
            text += draw(st.sampled_from("..,")) + draw(st.text("0123456789", max_size=12))
    zone = draw(
        st.sampled_from(
            ["Z", "Z", "Z", "z", "", "+", "HH:MM", "HH:MM", "HH:MM", "HH:MM", "HHMM", "HH", "HH:MM:SS", " Z"]
        )
    )
    sign, hours, minutes = draw(st.sampled_from("+-")), two_digits(draw, 0, 23, 0, 25), two_digits(draw, 0, 59, 0, 61)
    zone = {
        "HH:MM": f"{sign}{hours}:{minutes}",
        "HHMM": f"{sign}{hours}{minutes}",
        "HH": f"{sign}{hours}",
        "HH:MM:SS": f"{sign}{hours}:{minutes}:00",
    }.get(zone, zone)
    return text + zone


@settings(max_examples=1500, deadline=None)
@given(near_iso())
@example("1969-12-31T23:59:59.9995Z")
@example("9999-12-31T23:59:59.999999-23:59")
@example("0001-01-01T00:00:00.000001+23:59")
def test_the_same_milliseconds_as_a_datetime_parser_for_any_text(text):
    assert ours(text) == reference_ms(text), text


@settings(max_examples=500, deadline=None)
@given(st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999))
def test_every_microsecond_of_the_calendar_round_trips(micros):
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    for text in (
        moment.isoformat(),
        moment.isoformat().replace("+00:00", "Z"),
        moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    ):
        assert ours(text) == reference_ms(text), text
