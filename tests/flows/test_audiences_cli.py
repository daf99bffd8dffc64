"""``nudgeflow audiences export`` on the output folder of a small replay and the recording it read, and
against a real Redis filled by a run: the same file either way, and removals from the Redis change log."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import redis
from conftest import added, call, order, track

from flows.cli import main


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def recording(folder: Path) -> Path:
    """ann (email, German phone), bob (email, linked from his anonymous id), cid (a phone that is no
    number), dan (nothing); all new customers; dan is erased 3 days later. eve (email) comes a day later
    and is erased a day after."""
    events = [
        call("identify", "ann", 0, traits={"email": " Ann@Example.com", "phone": "030 1234567", "country": "DE"}),
        call("identify", None, 1, anon="a-bob", traits={"email": "BOB@example.com"}),
        track("Page Viewed", "bob", 2, anon="a-bob"),
        call("identify", "cid", 3, traits={"phone": "12"}),
        added("dan", 4),
        order("ann", 5),
        call("identify", "eve", 60 * 24, traits={"email": "eve@example.com"}),
        added("eve", 60 * 24 + 1),
        track("Erasure Requested", "eve", 60 * 24 * 2, props={"request_id": "r-2"}),
        track("Erasure Requested", "dan", 60 * 24 * 3, props={"request_id": "r-1"}),
    ]
    path = folder / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))
    return path


def test_export_from_an_output_folder_and_its_recording(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NUDGEFLOW_REDIS_URL", raising=False)
    events = recording(tmp_path)
    assert main(["replay", str(events), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out = tmp_path / "vip.csv"
    args = ["audiences", "export", "new_customers", "--from", str(tmp_path / "out"), "--events", str(events)]
    capsys.readouterr()
    assert main([*args, "--format", "google", "--out", str(out)]) == 0
    ann, bob = f"{sha('ann@example.com')},{sha('+49301234567')}", f"{sha('bob@example.com')},"
    assert out.read_text() == f"Email,Phone\n{ann}\n{bob}\n"
    err = capsys.readouterr().err
    assert err == (
        "nudgeflow: audience new_customers: 2 members exported (google); 1 without a match key not exported\n"
    ), "cid's phone is no number: counted; dan was erased: no longer a member"

    assert main([*args, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        f"ann,{sha('ann@example.com')},{sha('+49301234567')}",
        f"bob,{sha('bob@example.com')},",
    ]

    assert main([*args, "--format", "meta", "--since", "2026-01-05T10:05:00Z", "--changes", "removed"]) == 0
    removed = capsys.readouterr()
    assert removed.out == "", "dan left (erased) but has no match key: no payload; eve entered and left since"
    assert "0 members removed since 2026-01-05T10:05:00Z exported (meta); 1 without a match key" in removed.err


def test_refusals_say_what_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NUDGEFLOW_REDIS_URL", raising=False)
    assert main(["audiences", "export", "vip", "--format", "csv"]) == 2
    assert "no Redis store set (NUDGEFLOW_REDIS_URL): read a run with --from DIR" in capsys.readouterr().err
    assert main(["audiences", "export", "vip", "--format", "csv", "--from", str(tmp_path)]) == 2
    assert "--from needs --events" in capsys.readouterr().err
    events = recording(tmp_path)
    from_folder = ["--from", str(tmp_path), "--events", str(events)]
    assert main(["audiences", "export", "vip", "--format", "csv", *from_folder]) == 2
    assert "holds no audience_changes.jsonl" in capsys.readouterr().err


def test_export_from_redis_matches_the_output_folder(redis_service, tmp_path, monkeypatch, capsys):
    prefix = f"t{tmp_path.name[-12:]}"
    events = recording(tmp_path)
    monkeypatch.setenv("NUDGEFLOW_REDIS_PREFIX", prefix)
    run = ["run", str(events), "--out", str(tmp_path / "out"), "--redis-url", redis_service["REDIS_URL"], "--quiet"]
    assert main(run) == 0
    from_folder = ["--from", str(tmp_path / "out"), "--events", str(events)]
    client = redis.Redis.from_url(redis_service["REDIS_URL"])
    try:
        for fmt in ("google", "meta", "tiktok", "csv"):
            monkeypatch.delenv("NUDGEFLOW_REDIS_URL", raising=False)
            assert main(["audiences", "export", "new_customers", "--format", fmt, *from_folder]) == 0
            expected = capsys.readouterr()
            monkeypatch.setenv("NUDGEFLOW_REDIS_URL", redis_service["REDIS_URL"])
            assert main(["audiences", "export", "new_customers", "--format", fmt]) == 0
            got = capsys.readouterr()
            assert (got.out, got.err) == (expected.out, expected.err), fmt
            assert "2 members exported" in got.err
        since = ["--since", "2026-01-06T00:00:00Z", "--changes", "removed"]
        assert main(["audiences", "export", "new_customers", "--format", "csv", *since]) == 0
        removed = capsys.readouterr()
        assert removed.out == "customer_id,email_sha256,phone_sha256\n", "eve entered and left after the time"
        assert "1 without a match key" in removed.err, "dan, erased after the time: his keys went with him"
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()
