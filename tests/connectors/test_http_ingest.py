"""Request bodies read into events as they were sent: repeated keys and order kept."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.http.ingest import BodyError, Pairs, encode, events_of, read_json, stamped

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_what_is_read_is_written_back_as_the_same_json(value):
    body = json.dumps(value, indent=1).encode()  # not compact: spaces and new lines
    assert json.loads(encode(read_json(body))) == value


def test_a_repeated_key_is_kept_where_it_was_sent():
    body = b'[{"type": "track", "userId": "a", "userId": "b"}, {"type": "identify"}]'
    first, second = events_of(read_json(body))
    assert isinstance(first, Pairs)
    assert encode(first) == b'{"type":"track","userId":"a","userId":"b"}'
    assert encode(stamped(second, 0)) == b'{"type":"identify","receivedAt":"1970-01-01T00:00:00.000Z"}'


def test_received_at_is_stamped_only_where_missing():
    assert stamped({"receivedAt": "2026-01-05T10:00:00Z"}, 0) == {"receivedAt": "2026-01-05T10:00:00Z"}
    assert stamped({"receivedAt": None}, 1000)["receivedAt"] == "1970-01-01T00:00:01.000Z"
    assert stamped([1], 0) == [1]


@pytest.mark.parametrize("body", [b"", b"{", b"NaN", b'{"a": Infinity}', b"\xff", b'"text"', b'{"batch": 1}'])
def test_bodies_that_hold_no_events_are_refused(body):
    with pytest.raises(BodyError):
        events_of(read_json(body))
