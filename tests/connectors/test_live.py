"""The live store, the live output sink's folder and the local backend (unit tests: outputs made here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from connectors.files import OutputFolderError
from connectors.http.backend import InvalidCursor
from connectors.journal import EventJournal
from connectors.live import LiveStore, LocalBackend, prepare_live_folder
from schemas.items import Output
from schemas.records import AudienceEncoder, TriggerEncoder, decision_id, iso_ms
from schemas.streams import AUDIENCE_CHANGES, OUTPUT_FILES, PROFILES, SHADOW_TRIGGERS

T = 1_767_607_200_000  # 2026-01-05T10:00:00Z


def profile(customer: str, orders: int, audiences: list[str] = (), **extra: object) -> tuple[str, Output]:
    body = {
        "customer_id": customer,
        "features": {"orders": orders},
        "audiences": list(audiences),
        "traits": {"email": f"{customer}@example.com", "country": "ES"},
        "updated_at": iso_ms(T + orders),
        "updated_ms": T + orders,
        **extra,
    }
    return PROFILES, Output(PROFILES, customer, 0, 0, orjson.dumps(body))


def deletion(customer: str) -> tuple[str, Output]:
    return PROFILES, Output(PROFILES, customer, 0, 0, orjson.dumps({"customer_id": customer, "deleted": True}))


def trigger(customer: str, n: int, channel: str = "push", rule: str = "cart_push") -> tuple[str, Output]:
    encoder = TriggerEncoder(channel=channel, rule_id=rule, version="v1", shadow=False, content=None, offer_id="o1")
    body = encoder.encode(
        event_id=decision_id(customer, rule, str(n)), time_ms=T + n, subject=customer, cause=f"m{n}",
        caused_by=[f"m{n}"], content=None, expires_at=iso_ms(T + n + 1000), offer_choice=None, offer_id="o1",
        reason="test", recommendations=None, score=None,
    )  # fmt: skip
    stream = f"triggers.{channel}"
    return stream, Output(stream, customer, T + n, n, body)


def change(customer: str, audience: str, entered: bool, at: int) -> tuple[str, Output]:
    kind = "entered" if entered else "exited"
    encoder = AudienceEncoder(audience=audience, change=kind, version="v1", shadow=False)
    body = encoder.encode(
        event_id=decision_id(customer, audience, kind, str(at)), time_ms=at, subject=customer, caused_by=[], reason="t"
    )
    return AUDIENCE_CHANGES, Output(AUDIENCE_CHANGES, customer, at, 0, body)


def test_a_newer_profile_replaces_the_older_and_keeps_only_allowlisted_traits():
    store = LiveStore(traits=frozenset({"country"}))
    store.add([profile("u1", 1, ["vip"]), profile("u1", 2, [], match_keys={"email_sha256": "ab" * 32})])
    got = store.profile("u1")
    assert got == {
        "customer_id": "u1",
        "features": {"orders": 2},
        "audiences": [],
        "traits": {"country": "ES"},
        "match_keys": {"email_sha256": "ab" * 32},
        "updated_at": iso_ms(T + 2),
        "decisions": [],
    }
    assert store.profile("nobody") is None


def test_decisions_are_kept_newest_first_capped_and_once_each():
    store = LiveStore(decisions_kept=3)
    store.add([profile("u1", 1), *(trigger("u1", n) for n in range(5)), trigger("u1", 4)])
    store.add([trigger("u1", 5, channel="in_app", rule="browse")])
    decisions = store.profile("u1")["decisions"]
    assert [d["id"] for d in decisions] == [decision_id("u1", r, str(n)) for r, n in
                                           [("browse", 5), ("cart_push", 4), ("cart_push", 3)]]  # fmt: skip
    assert decisions[0] == {
        "id": decision_id("u1", "browse", "5"),
        "rule_id": "browse",
        "channel": "in_app",
        "offer_id": "o1",
        "time": iso_ms(T + 5),
    }


def test_shadow_triggers_are_not_decisions():
    store = LiveStore()
    _, output = trigger("u1", 1)
    store.add([profile("u1", 1), (SHADOW_TRIGGERS, output)])
    assert store.profile("u1")["decisions"] == []


def test_an_erased_customer_loses_profile_and_decisions_and_leaves_audiences_by_its_exits():
    store = LiveStore()
    store.add([profile("u1", 1, ["vip"]), trigger("u1", 1), change("u1", "vip", True, T), profile("u2", 1)])
    store.add([change("u1", "vip", False, T + 5), deletion("u1")])
    assert store.profile("u1") is None
    assert store.profile("u2") is not None
    assert store.audiences() == []
    store.add([profile("u1", 7)])  # a customer who comes back starts afresh
    assert store.profile("u1")["decisions"] == []


def test_audience_sizes_follow_entries_and_exits_and_empty_audiences_are_not_listed():
    store = LiveStore()
    store.add([change(f"u{n}", "vip", True, T + n) for n in range(5)])
    store.add([change("u9", "lapsed", True, T), change("u9", "lapsed", False, T + 1)])
    store.add([change("u1", "vip", False, T + 9)])
    store.add([change("u2", "vip", True, T + 10)])  # entering twice counts once
    assert store.audiences() == [{"id": "vip", "size": 4}]


def test_members_are_paged_in_id_order_with_a_cursor():
    store = LiveStore()
    store.add([change(f"u{n:02}", "vip", True, T + n) for n in range(25)])
    seen, cursor, pages = [], None, 0
    while True:
        page = store.members("vip", cursor, 10)
        seen += page.members
        pages += 1
        if page.cursor is None:
            break
        cursor = page.cursor
        store.add([change("u00", "vip", False, T + 100)])  # a change between pages moves nothing
    assert pages == 3
    assert seen == [f"u{n:02}" for n in range(25)]
    assert store.members("vip", None, 100).members == [f"u{n:02}" for n in range(1, 25)]
    assert store.members("nothing", None, 10).members == []
    with pytest.raises(InvalidCursor):
        store.members("vip", "_w", 10)  # not a member id


def test_the_change_log_is_bounded_per_audience_and_read_from_a_time_oldest_first():
    store = LiveStore(changes_kept=4)
    store.add([change(f"u{n}", "vip", True, T + 10 * n) for n in range(6)])
    store.add([change("u9", "lapsed", True, T + 1), change("u0", "vip", False, T + 5)])
    vip = store.changes("vip", 0)
    assert [(c.customer_id, c.change, c.time_ms) for c in vip] == [
        ("u0", "exited", T + 5),
        ("u3", "entered", T + 30),
        ("u4", "entered", T + 40),
        ("u5", "entered", T + 50),
    ], "the oldest records went first; what is kept comes oldest first"
    assert [c.customer_id for c in store.changes("vip", T + 40)] == ["u4", "u5"]
    assert [c.customer_id for c in store.changes("lapsed", 0)] == ["u9"]


def test_match_keys_come_from_the_profiles_and_only_the_known_ones():
    store = LiveStore()
    store.add([
        profile("u1", 1, match_keys={"email_sha256": "aa" * 32, "phone_sha256": None}),
        profile("u2", 1),
        profile("u3", 1, match_keys={"email_sha256": "bb" * 32, "phone_sha256": "cc" * 32}),
    ])  # fmt: skip
    assert store.match_keys(["u1", "u2", "u3", "u4"]) == {
        "u1": {"email_sha256": "aa" * 32},
        "u3": {"email_sha256": "bb" * 32, "phone_sha256": "cc" * 32},
    }


def test_a_live_folder_is_new_or_an_earlier_live_runs_and_keeps_the_journal_and_the_ledger(tmp_path):
    out = tmp_path / "out"
    journal = out / "events.jsonl"
    prepare_live_folder(out, journal)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES.values())
    journal.write_bytes(b'{"type":"track"}\n')
    (out / "erasures.jsonl").write_bytes(b'{"customer_id":"u1"}\n')
    (out / "triggers.push.jsonl").write_bytes(b"{}\n")
    prepare_live_folder(out, journal)  # a restart
    assert journal.read_bytes() == b'{"type":"track"}\n'
    assert (out / "erasures.jsonl").read_bytes() == b'{"customer_id":"u1"}\n'
    assert (out / "triggers.push.jsonl").read_bytes() == b"", "written again from the journal"

    other = tmp_path / "replay"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="not empty"):
        prepare_live_folder(other, other / "events.jsonl")
    assert (other / "keep.txt").exists()
    prepare_live_folder(other, other / "events.jsonl", replace=True)
    assert not (other / "keep.txt").exists()


def test_the_local_backend_appends_events_to_the_journal_and_refuses_a_line_break(tmp_path):
    journal = EventJournal(tmp_path / "events.jsonl")
    running = {"ready": False}
    backend = LocalBackend(journal, LiveStore(), lambda: running["ready"], lambda: "reading the journal")

    async def scenario() -> tuple:
        results = await backend.send([(b"a", b'{"n":1}'), (None, b'{"n":\n2}'), (b"b", b'{"n":3}')])
        before = await backend.checks()
        running["ready"] = True
        return results, before, await backend.checks()

    results, before, after = asyncio.run(scenario())
    assert results == [None, "the event holds a line break", None]
    assert (tmp_path / "events.jsonl").read_bytes() == b'{"n":1}\n{"n":3}\n'
    assert before == {"engine": "reading the journal"}
    assert after == {"engine": "ok"}
    assert backend.name == "local"


def test_a_customer_known_only_by_decisions_gets_an_empty_profile_with_its_audiences():
    store = LiveStore()
    store.add([trigger("a-1", 1), change("a-1", "browsers", True, T)])
    got = store.profile("a-1")
    assert [d["id"] for d in got.pop("decisions")] == [decision_id("a-1", "cart_push", "1")]
    assert got == {
        "customer_id": "a-1",
        "features": {},
        "audiences": ["browsers"],
        "traits": {},
        "match_keys": {},
        "updated_at": None,
    }


def test_events_the_journal_cannot_take_are_answered_with_the_reason():
    backend = LocalBackend(EventJournal(Path("/dev/full")), LiveStore(), lambda: True)
    results = asyncio.run(backend.send([(None, b'{"n":1}'), (None, b'{"n":2}')]))
    assert results == ["the event journal cannot be written: No space left on device"] * 2
