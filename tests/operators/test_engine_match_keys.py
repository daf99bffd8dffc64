"""The engine keeps each customer's hashed email and phone from identify traits (never the raw values),
shows them in the profile, carries them through snapshots and linking, and drops them on erasure."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from conftest import EngineHarness, added, call, track

from operators.engine import ERASURE, EngineConfig
from schemas.streams import PROFILES
from state import codec


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def identify(user: str | None, minutes: float, anon: str | None = None, **traits: Any) -> dict[str, Any]:
    return call("identify", user, minutes, anon=anon, traits=traits)


def profiles(outputs: list[Any], customer: str) -> list[dict[str, Any]]:
    return [orjson.loads(o.body) for o in outputs if o.stream == PROFILES and o.key == customer]


def counted(outputs: list[Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for o in outputs:
        if o.stream == "stats":
            for name, count in orjson.loads(o.body).get("match_keys", {}).items():
                total[name] = total.get(name, 0) + count
    return total


def test_identify_traits_are_kept_as_hashes_of_the_normalised_values(starter_rules):
    h = EngineHarness(starter_rules, EngineConfig(profile_ms=1))
    h.feed([identify("u1", 0, email=" Ann@Example.com ", phone="030 1234567", country="DE"), added("u1", 1)])
    out = h.finish()
    state = h.customers.customers["u1"]
    assert profiles(h.outputs, "u1")[-1]["match_keys"] == {
        "email_sha256": sha("ann@example.com"),
        "phone_sha256": sha("+49301234567"),
        "phone_digits_sha256": sha("49301234567"),
    }, "the phone read in the customer's country (DE), given in the same identify"
    assert b"Example" not in codec.encode(state) and b"1234567" not in codec.encode(state), "no raw value kept"
    assert counted(out) == {"email_kept": 1, "phone_kept": 1}


def test_a_national_phone_is_read_in_the_known_country_else_the_setting(starter_rules):
    h = EngineHarness(starter_rules, EngineConfig(profile_ms=1, phone_region="GB"))
    h.feed([
        identify("de", 0, country="DE"), identify("de", 1, phone="030 1234567"),
        identify("gb", 2, phone="07911 123456"),
    ])  # fmt: skip
    h.finish()
    assert profiles(h.outputs, "de")[-1]["match_keys"]["phone_sha256"] == sha("+49301234567")
    assert profiles(h.outputs, "gb")[-1]["match_keys"]["phone_sha256"] == sha("+447911123456")


def test_values_that_do_not_normalise_are_counted_and_keep_the_known_key(starter_rules):
    h = EngineHarness(starter_rules, EngineConfig(profile_ms=1))
    h.feed([identify("u1", 0, email="a@example.com"), identify("u1", 1, email="not an email", phone="12")])
    out = h.finish()
    assert profiles(h.outputs, "u1")[-1]["match_keys"] == {"email_sha256": sha("a@example.com")}
    assert counted(out) == {"email_kept": 1, "email_invalid": 1, "phone_invalid": 1}


def test_a_customer_without_match_keys_has_none_in_its_profile_and_costs_one_empty_slot(starter_rules):
    h = EngineHarness(starter_rules, EngineConfig(profile_ms=1))
    h.feed([identify("u1", 0, city="Berlin"), added("u1", 1)])
    h.finish()
    assert "match_keys" not in profiles(h.outputs, "u1")[-1]
    assert h.customers.customers["u1"].match_keys is None


def test_keys_survive_a_snapshot_and_travel_with_a_linked_anonymous_id(starter_rules):
    h = EngineHarness(starter_rules, EngineConfig(profile_ms=1))
    h.feed([identify(None, 0, anon="a1", email="x@example.com"), track("Page Viewed", "u1", 1, anon="a1")])
    state = h.customers.customers["u1"]
    assert state.match_keys is not None
    assert codec.decode(codec.encode(state)).match_keys == state.match_keys
    h.finish()
    assert profiles(h.outputs, "u1")[-1]["match_keys"] == {"email_sha256": sha("x@example.com")}


def test_erasure_removes_the_keys(starter_rules):
    h = EngineHarness(starter_rules, EngineConfig(profile_ms=1))
    h.feed([identify("u1", 0, email="a@example.com")])
    h.feed([track(ERASURE, "u1", 5, props={"request_id": "r-1", "regulation": "gdpr"})])
    h.finish()
    assert "u1" not in h.customers.customers
    assert profiles(h.outputs, "u1")[-1] == {"customer_id": "u1", "deleted": True}, "the live profile is deleted"
