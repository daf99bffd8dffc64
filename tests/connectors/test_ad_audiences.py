"""Ad-audience export: each format's exact bytes for a small audience, Meta's chunking, the delta since a
time (a customer who entered and left in the period is neither added nor removed), and the members
without match keys counted."""

from __future__ import annotations

import asyncio
import hashlib

import orjson
import pytest

from connectors.ad_audiences import META_MAX_ROWS, delta, export, export_format, since_ms
from connectors.http.backend import Change, MemoryBackend
from schemas.errors import ConfigurationError

ANN_EMAIL = hashlib.sha256(b"ann@example.com").hexdigest()
ANN_PHONE = hashlib.sha256(b"+14155552671").hexdigest()
ANN_DIGITS = hashlib.sha256(b"14155552671").hexdigest()
BOB_EMAIL = hashlib.sha256(b"bob@example.com").hexdigest()
CID_PHONE = hashlib.sha256(b"+49301234567").hexdigest()
CID_DIGITS = hashlib.sha256(b"49301234567").hexdigest()


def backend() -> MemoryBackend:
    """vip: ann (email, phone), bob (email), cid (phone), dan (no key at all)."""
    source = MemoryBackend()
    source.audience_members["vip"] = {"ann", "bob", "cid", "dan"}
    source.keys = {
        "ann": {"email_sha256": ANN_EMAIL, "phone_sha256": ANN_PHONE, "phone_digits_sha256": ANN_DIGITS},
        "bob": {"email_sha256": BOB_EMAIL},
        "cid": {"phone_sha256": CID_PHONE, "phone_digits_sha256": CID_DIGITS},
    }
    return source


def exported(source: MemoryBackend, name: str, **options) -> tuple[bytes, int, int]:
    out: list[bytes] = []
    done = asyncio.run(export(source, "vip", export_format(name), out.append, **options))
    return b"".join(out), done.rows, done.without_keys


def test_google_customer_match_csv():
    body, rows, without = exported(backend(), "google")
    assert body == (
        f"Email,Phone\n{ANN_EMAIL},{ANN_PHONE}\n{BOB_EMAIL},\n,{CID_PHONE}\n".encode()
    ), "hashes of the email and of the E.164 phone (with +), empty where unknown"
    assert (rows, without) == (3, 1), "dan has no key: counted, not exported"


def test_tiktok_csv():
    body, _, _ = exported(backend(), "tiktok")
    assert body == f"Email_SHA256,Phone_SHA256\n{ANN_EMAIL},{ANN_PHONE}\n{BOB_EMAIL},\n,{CID_PHONE}\n".encode()


def test_plain_csv_names_the_customer():
    body, _, _ = exported(backend(), "csv")
    assert body == (
        "customer_id,email_sha256,phone_sha256\n"
        f"ann,{ANN_EMAIL},{ANN_PHONE}\nbob,{BOB_EMAIL},\ncid,,{CID_PHONE}\n"
    ).encode()


def test_meta_users_payload_hashes_phone_digits():
    body, rows, without = exported(backend(), "meta")
    data = [[ANN_EMAIL, ANN_DIGITS], [BOB_EMAIL, ""], ["", CID_DIGITS]]
    assert body == orjson.dumps({"payload": {"schema": ["EMAIL", "PHONE"], "data": data}}) + b"\n", (
        "Meta normalises phones to digits without the +"
    )
    assert (rows, without) == (3, 1)


def test_meta_payloads_hold_at_most_ten_thousand_rows():
    source = MemoryBackend()
    members = [f"c{n:05}" for n in range(META_MAX_ROWS + 5)]
    source.audience_members["vip"] = set(members)
    source.keys = {c: {"email_sha256": hashlib.sha256(c.encode()).hexdigest()} for c in members}
    body, rows, _ = exported(source, "meta")
    payloads = [orjson.loads(line)["payload"] for line in body.splitlines()]
    assert [len(p["data"]) for p in payloads] == [META_MAX_ROWS, 5] and rows == META_MAX_ROWS + 5
    assert payloads[1]["data"][-1] == [hashlib.sha256(members[-1].encode()).hexdigest(), ""]


def test_an_empty_audience_gives_a_header_only_or_no_payload():
    assert exported(MemoryBackend(), "google")[0] == b"Email,Phone\n"
    assert exported(MemoryBackend(), "meta")[0] == b""


def test_delta_since_a_time_from_the_change_records():
    changes = [
        Change("new", "entered", 10),  # out before, in now: added
        Change("gone", "exited", 11),  # in before, out now: removed
        Change("brief", "entered", 12), Change("brief", "exited", 13),  # entered and left: neither
        Change("back", "exited", 14), Change("back", "entered", 15),  # left and came back: neither
        Change("twice", "entered", 16), Change("twice", "entered", 16),  # a repeated log entry
    ]  # fmt: skip
    assert delta(changes) == (["new", "twice"], ["gone"])


def test_export_since_writes_the_added_or_the_removed():
    source = backend()
    source.audience_changes["vip"] = [
        Change("bob", "entered", 5), Change("ann", "entered", 100), Change("cid", "exited", 110),
        Change("dan", "entered", 120),
    ]  # fmt: skip
    added, rows, without = exported(source, "csv", since=100)
    assert added == f"customer_id,email_sha256,phone_sha256\nann,{ANN_EMAIL},{ANN_PHONE}\n".encode()
    assert (rows, without) == (1, 1), "bob changed before the time; dan has no key"
    removed, _, _ = exported(source, "google", since=100, changes="removed")
    assert removed == f"Email,Phone\n,{CID_PHONE}\n".encode()


def test_bad_options_are_refused_with_a_clear_error():
    with pytest.raises(ConfigurationError, match="unknown export format 'linkedin': one of google, meta"):
        export_format("linkedin")
    with pytest.raises(ConfigurationError, match="not an ISO 8601 time"):
        since_ms("yesterday")
    assert since_ms("2026-01-05T10:00:00Z") == 1_767_607_200_000 == since_ms("1767607200000")
    with pytest.raises(ConfigurationError, match="changes must be one of added, removed"):
        exported(backend(), "csv", since=0, changes="both")
