"""The compiled module ``state._native``: it is the Rust build of the current sources, its dedupe
memory and identity links behave as the identity stage's ordered dicts did, and its date-times read
as ``schemas.timestamps.epoch_ms`` reads them."""

from __future__ import annotations

import importlib.machinery
import pickle
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import state._native as native
from schemas.timestamps import epoch_ms
from state._native import Dedupe, EpochMs, Links

CRATE = Path(__file__).resolve().parents[2] / "state" / "native"


def test_the_module_is_the_compiled_extension():
    assert isinstance(native.__spec__.loader, importlib.machinery.ExtensionFileLoader), native.__file__
    assert native.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_the_compiled_module_is_newer_than_its_rust_sources():
    built = Path(native.__file__).stat().st_mtime
    sources = [CRATE / "Cargo.toml", CRATE / "Cargo.lock", *sorted((CRATE / "src").rglob("*.rs"))]
    stale = [str(path.relative_to(CRATE)) for path in sources if path.stat().st_mtime > built]
    assert not stale, f"{native.__file__} is older than {stale}: rebuild it with `make venv`"


def ordered_dict_dedupe(capacity: int, message_ids: list[str]) -> list[bool]:
    """What the identity stage did before: an ordered dict of ids, the oldest popped past ``capacity``."""
    seen: OrderedDict[str, None] = OrderedDict()
    answers = []
    for message_id in message_ids:
        answers.append(message_id in seen)
        if not answers[-1]:
            seen[message_id] = None
            if len(seen) > capacity:
                seen.popitem(last=False)
    return answers


@given(st.integers(1, 8), st.lists(st.sampled_from([f"m{i}" for i in range(12)] + ["", "é", "m0 "]), max_size=200))
def test_dedupe_answers_as_the_ordered_dict_did(capacity, message_ids):
    memory = Dedupe(capacity)
    assert [memory.seen_or_add(message_id) for message_id in message_ids] == ordered_dict_dedupe(capacity, message_ids)
    assert len(memory) == min(capacity, len(set(message_ids)))


def test_dedupe_is_bounded_and_forgets_the_oldest_first():
    memory = Dedupe(100)
    assert not any(memory.seen_or_add(f"m{i}") for i in range(500))
    assert len(memory) == 100 and memory.capacity == 100
    assert all(memory.seen_or_add(f"m{i}") for i in range(400, 500))
    assert not memory.seen_or_add("m399")


def filled(capacity: int, count: int) -> Dedupe:
    memory = Dedupe(capacity)
    for i in range(count):
        memory.seen_or_add(f"m{i}")
    return memory


def test_bytes_round_trip_keeps_the_ids_and_their_order():
    restored = Dedupe.from_bytes(4, filled(4, 6).to_bytes())
    assert len(restored) == 4
    assert restored.seen_or_add("m5") and restored.seen_or_add("m2")
    assert not restored.seen_or_add("m6")
    assert not restored.seen_or_add("m2"), "m2 was the oldest: forgotten first"


def test_restoring_into_a_smaller_memory_keeps_the_newest_ids():
    restored = Dedupe.from_bytes(2, filled(10, 10).to_bytes())
    assert len(restored) == 2 and restored.capacity == 2
    assert restored.seen_or_add("m9") and restored.seen_or_add("m8")
    assert not restored.seen_or_add("m7")


def test_pickle_round_trip():
    memory = filled(3, 5)
    restored = pickle.loads(pickle.dumps(memory))
    assert restored.capacity == 3 and restored.to_bytes() == memory.to_bytes()
    assert [restored.seen_or_add(f"m{i}") for i in (2, 3, 4, 1)] == [True, True, True, False]


def test_ids_are_remembered_by_a_hash_stable_across_runs_and_machines():
    """SipHash-1-3 (128-bit) under the dedupe key, little-endian: a snapshot restores anywhere."""
    memory = Dedupe(2)
    memory.seen_or_add("abc")
    assert memory.to_bytes().hex() == "01" + bytes.fromhex("c0b381e8cbc058c27774630fa24619ee")[::-1].hex()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "dedupe snapshot is empty"),
        (b"\x02" + bytes(16), "dedupe snapshot format 2 is not supported"),
        (b"\x01" + bytes(20), "dedupe snapshot is cut: 20 bytes"),
        (b"\x01" + bytes(32), "dedupe snapshot holds hash 1 twice"),
    ],
)
def test_unreadable_bytes_are_refused_clearly(data, message):
    with pytest.raises(ValueError, match=message):
        Dedupe.from_bytes(4, data)


def test_a_memory_of_no_ids_is_refused():
    with pytest.raises(ValueError, match="at least one id"):
        Dedupe(0)


def read_both(text: str) -> tuple[object, object]:
    """What ``EpochMs(epoch_ms)`` and ``epoch_ms`` make of ``text``: milliseconds, or the error."""
    answers: list[object] = []
    for read in (EpochMs(epoch_ms), epoch_ms):
        try:
            answers.append(read(text))
        except (TypeError, ValueError) as err:
            answers.append(f"{type(err).__name__}: {err}")
    return answers[0], answers[1]


@st.composite
def common_date_times(draw: st.DrawFn) -> str:
    """Date-times mostly in the common form (``2026-01-05T10:00:00.123Z``, ``+01:00``), some just off it."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=draw(st.integers(-(2**55), 2**55)))
    offset = timedelta(minutes=draw(st.integers(-24 * 60 + 1, 24 * 60 - 1)))
    text = moment.astimezone(timezone(offset)).isoformat(timespec=draw(st.sampled_from(["seconds", "milliseconds"])))
    if offset == timedelta(0) and draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    if draw(st.integers(0, 3)) == 0:  # a character changed: digits out of range, other separators, no zone
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.sampled_from("0123456789Zz+-:. T_,x")) + text[at + 1 :]
    return text


@settings(max_examples=1500, deadline=None)
@given(common_date_times())
@example("9999-12-31T23:59:59.999999Z")
@example("1685-01-01T00:00:00.001Z")
@example("2026-01-05T10:00:00.1234567+01:00")
@example("0000-01-01T00:00:00Z")
def test_native_date_times_read_as_epoch_ms_reads_them(text):
    native, general = read_both(text)
    assert native == general, text


def test_native_date_times_hand_other_values_to_the_general_way():
    for value in (None, 1767607200, b"2026-01-05T10:00:00Z", "\ud800"):
        native, general = read_both(value)  # type: ignore[arg-type]
        assert native == general, value


class OrderedDictLinks:
    """What the identity stage did before: an ordered dict of anonymous id -> user id in use order."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.links = capacity, OrderedDict[str, str]()

    def get(self, anonymous_id: str) -> str | None:
        linked = self.links.get(anonymous_id)
        if linked is not None:
            self.links.move_to_end(anonymous_id)
        return linked

    def link(self, anonymous_id: str, user_id: str) -> str | None:
        before = self.links.get(anonymous_id)
        self.links[anonymous_id] = user_id
        self.links.move_to_end(anonymous_id)
        if len(self.links) > self.capacity:
            self.links.popitem(last=False)
        return before

    def unlink(self, anonymous_id: str) -> bool:
        return self.links.pop(anonymous_id, None) is not None


ANONYMOUS_IDS = ["a0", "a1", "a2", "a3", "é", ""]
CALLS = st.sampled_from(["get", "link", "unlink"])
LINK_CALLS = st.tuples(CALLS, st.sampled_from(ANONYMOUS_IDS), st.sampled_from("uvw"))


@given(st.integers(1, 4), st.lists(LINK_CALLS, max_size=100))
def test_links_answer_as_the_ordered_dict_did_and_forget_the_least_recently_used(capacity, calls):
    links, expected = Links(capacity), OrderedDictLinks(capacity)
    for name, anonymous_id, user_id in calls:
        args = (anonymous_id, user_id) if name == "link" else (anonymous_id,)
        assert getattr(links, name)(*args) == getattr(expected, name)(*args), (name, args)
    assert len(links) == len(expected.links)
    restored = Links.from_entries(capacity, links.entries())
    assert [user for _, user in restored.entries()] == list(expected.links.values()), "in use order"
    assert all(restored.get(anonymous_id) == user for anonymous_id, user in expected.links.items())


def test_links_keep_anonymous_ids_by_a_hash_stable_across_runs_and_machines():
    links = Links(2)
    links.link("abc", "u1")
    assert links.entries() == [(0xC0B381E8CBC058C27774630FA24619EE, "u1")], "the dedupe memory's SipHash-1-3"
    assert Links.from_entries(1, [(1, "old"), (2, "new")]).entries() == [(2, "new")], "the most recent kept"
