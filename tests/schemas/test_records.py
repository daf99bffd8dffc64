"""Output records: CloudEvents decisions and dead letters are deterministic and self-describing."""

from __future__ import annotations

import base64
import hashlib

import orjson

from schemas.records import (
    AUDIENCE_TYPE,
    DEAD_LETTER_PAYLOAD_CAP,
    TRIGGER_TYPE,
    AudienceEncoder,
    CloudEvent,
    DeadLetter,
    TriggerEncoder,
    cloud_event,
    dead_letter,
    decision_id,
    iso_ms,
)

T0_MS = 1_767_607_200_000  # 2026-01-05T10:00:00Z


def make_event(**overrides):
    args = {
        "type_": TRIGGER_TYPE,
        "event_id": "abc",
        "time_ms": T0_MS + 7,
        "subject": "u1",
        "data": {"rule_id": "r", "channel": "push", "b": 1, "a": {"z": 1, "y": 2}},
    }
    return cloud_event(**{**args, **overrides})


def test_cloud_event_has_the_required_cloudevents_attributes():
    record = orjson.loads(make_event())
    assert record["specversion"] == "1.0"
    assert record["id"] == "abc"
    assert record["source"].startswith("urn:")
    assert record["type"] == TRIGGER_TYPE
    assert record["subject"] == "u1"
    assert record["datacontenttype"] == "application/json"
    assert record["data"]["rule_id"] == "r"
    CloudEvent.model_validate(record)  # the published envelope model accepts it


def test_cloud_event_time_is_utc_with_milliseconds():
    assert orjson.loads(make_event())["time"] == "2026-01-05T10:00:00.007Z"


def test_cloud_event_keys_are_sorted_at_every_level():
    body = make_event()
    assert body.index(b'"data"') < body.index(b'"datacontenttype"') < body.index(b'"id"') < body.index(b'"type"')
    assert body.index(b'"a"') < body.index(b'"b"') < body.index(b'"channel"')
    assert body.index(b'"y"') < body.index(b'"z"')


def test_cloud_event_is_byte_identical_for_the_same_input():
    assert make_event() == make_event()
    assert make_event() != make_event(time_ms=T0_MS + 8)


TEXTS = ["u1", "", 'q"uote\\back\nline', "é-ü 漢字 \U0001f600", "\x1f\x00", "</script>"]


def test_a_trigger_rules_encoder_gives_the_bytes_of_cloud_event():
    rules = [
        {"channel": "push", "rule_id": "cart_push", "shadow": False, "content": {}, "offer_id": None},
        {
            "channel": "in_app",
            "rule_id": "r2",
            "shadow": True,
            "content": {"z": [1, {"b": 2, "a": None}], "a": "é"},
            "offer_id": "o1",
        },
    ]
    choice = {
        "policy": "epsilon_greedy",
        "scores": {"zz": 0.5, "aa": 0.25},
        "candidates": ["zz", "aa"],
        "explored": False,
    }
    decisions = [
        {
            "cause": "c1",
            "caused_by": ["m1", "m2"],
            "offer_choice": None,
            "reason": "on Product Added",
            "recommendations": None,
            "score": None,
        },
        {
            "cause": TEXTS[2],
            "caused_by": [],
            "offer_choice": choice,
            "reason": TEXTS[3],
            "recommendations": ["p1", TEXTS[4]],
            "score": 0.1234,
        },
        {
            "cause": "none",
            "caused_by": [TEXTS[5]],
            "offer_choice": None,
            "reason": "",
            "recommendations": [],
            "score": 1e-07,
        },
    ]
    for rule in rules:
        encoder = TriggerEncoder(version="v1", **rule)
        for n, decision in enumerate(decisions):
            for subject in TEXTS:
                content, offer_id = (rule["content"], rule["offer_id"]) if n != 1 else ({"y": 1, "x": TEXTS[2]}, "o2")
                time_ms, expires_ms = T0_MS + n, T0_MS + 86_400_000 * (n + 1)
                data = {
                    "channel": rule["channel"],
                    "rule_id": rule["rule_id"],
                    "ruleset_version": "v1",
                    "shadow": rule["shadow"],
                }
                data |= {"content": content, "offer_id": offer_id, "expires_at": iso_ms(expires_ms), **decision}
                expected = cloud_event(type_=TRIGGER_TYPE, event_id="0af3", time_ms=time_ms, subject=subject, data=data)
                fields = {"content": content, "offer_id": offer_id, "expires_at": iso_ms(expires_ms), **decision}
                assert encoder.encode(event_id="0af3", time_ms=time_ms, subject=subject, **fields) == expected


def test_an_audiences_encoder_gives_the_bytes_of_cloud_event():
    for audience, change, shadow in [("vip", "entered", False), ("lapsed_é", "exited", True)]:
        encoder = AudienceEncoder(audience=audience, change=change, version="v 2", shadow=shadow)
        for subject in TEXTS:
            for caused_by, reason in [([], "state expired after 730 days"), (["m1", TEXTS[2]], TEXTS[3])]:
                data = {"audience": audience, "change": change, "reason": reason, "rule_id": audience}
                data |= {"ruleset_version": "v 2", "caused_by": caused_by, "shadow": shadow}
                expected = cloud_event(type_=AUDIENCE_TYPE, event_id="9f", time_ms=T0_MS, subject=subject, data=data)
                body = encoder.encode(event_id="9f", time_ms=T0_MS, subject=subject, caused_by=caused_by, reason=reason)
                assert body == expected


def test_decision_id_is_deterministic_and_depends_on_every_part():
    first = decision_id("u1", "cart_abandonment_push", "cart-1")
    assert first == decision_id("u1", "cart_abandonment_push", "cart-1")
    assert len(first) == 32 and int(first, 16) >= 0
    others = {
        decision_id("u2", "cart_abandonment_push", "cart-1"),
        decision_id("u1", "browse_abandonment_offer", "cart-1"),
        decision_id("u1", "cart_abandonment_push", "cart-2"),
        decision_id("u1", "cart_abandonment_push"),
        decision_id("u1c", "art_abandonment_push", "cart-1"),
    }
    assert first not in others and len(others) == 5


def test_dead_letter_keeps_a_small_payload_whole():
    payload = b'{"type": "track", "oops"'
    record = orjson.loads(
        dead_letter(
            processor="nudgeflow.parse",
            reason="invalid_json",
            messages=["unexpected end"],
            position={"source": "f.jsonl", "line": 3},
            payload=payload,
        )
    )
    DeadLetter.model_validate(record)
    assert record["reason"] == "invalid_json"
    assert record["messages"] == ["unexpected end"]
    assert record["position"] == {"source": "f.jsonl", "line": 3}
    assert record["failed_at"] is None
    assert base64.b64decode(record["payload_base64"]) == payload
    assert record["payload_size"] == len(payload)
    assert record["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert record["payload_truncated"] is False


def test_dead_letter_caps_a_large_payload_and_hashes_all_of_it():
    payload = bytes(range(256)) * (DEAD_LETTER_PAYLOAD_CAP // 256 + 3)
    record = orjson.loads(
        dead_letter(processor="p", reason="too_large", messages=[], position={}, payload=payload, failed_at_ms=T0_MS)
    )
    assert base64.b64decode(record["payload_base64"]) == payload[:DEAD_LETTER_PAYLOAD_CAP]
    assert record["payload_size"] == len(payload)
    assert record["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert record["payload_truncated"] is True
    assert record["failed_at"] == "2026-01-05T10:00:00.000Z"


def test_dead_letter_at_exactly_the_cap_is_not_truncated():
    payload = b"x" * DEAD_LETTER_PAYLOAD_CAP
    record = orjson.loads(dead_letter(processor="p", reason="r", messages=[], position={}, payload=payload))
    assert record["payload_truncated"] is False
    assert len(base64.b64decode(record["payload_base64"])) == DEAD_LETTER_PAYLOAD_CAP
    over = orjson.loads(dead_letter(processor="p", reason="r", messages=[], position={}, payload=payload + b"y"))
    assert over["payload_truncated"] is True
    assert base64.b64decode(over["payload_base64"]) == payload


def test_iso_ms_formats_utc_with_three_digit_milliseconds():
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(T0_MS) == "2026-01-05T10:00:00.000Z"
    assert iso_ms(T0_MS + 5) == "2026-01-05T10:00:00.005Z"
    assert iso_ms(T0_MS + 59_999) == "2026-01-05T10:00:59.999Z"
    assert iso_ms(-1) == "1969-12-31T23:59:59.999Z"


def test_iso_ms_formats_every_time_an_event_can_carry():
    """Timestamps of years 1 to 9999 with any offset: four-digit years, and no error past either end."""
    from datetime import UTC, datetime, timedelta

    assert iso_ms(-62_135_596_800_000) == "0001-01-01T00:00:00.000Z"
    assert iso_ms(253_402_300_799_999) == "9999-12-31T23:59:59.999Z"
    assert iso_ms(-62_135_596_800_000 - 5 * 3_600_000) == "0000-12-31T19:00:00.000Z"  # 0001-01-01T00:00+05:00
    assert iso_ms(253_402_318_799_000) == "10000-01-01T04:59:59.000Z"  # 9999-12-31T23:59:59-05:00
    for days in range(-719_162, 2_932_897, 9_973):  # day counts across years 1 to 9999
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=days, milliseconds=1)
        assert iso_ms(days * 86_400_000 + 1) == moment.strftime("%Y-%m-%dT%H:%M:%S.001Z").rjust(24, "0")


def test_iso_ms_gives_every_millisecond_and_minute_as_datetime_does():
    """Times of day down to the millisecond, in minutes met before and for the first time."""
    import random
    from datetime import UTC, datetime, timedelta

    rng = random.Random(5)
    start = datetime(1970, 1, 1, tzinfo=UTC)
    times = [T0_MS + n * 997 for n in range(5_000)] + [rng.randrange(-(10**12), 4 * 10**12) for _ in range(5_000)]
    for epoch_ms in times:
        moment = start + timedelta(milliseconds=epoch_ms)
        assert iso_ms(epoch_ms) == moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z", epoch_ms
