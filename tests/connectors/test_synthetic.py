"""Tests of the synthetic persona event stream: determinism, order, the contract, personas, defects."""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from connectors.synthetic import DEFAULT_START, PERSONAS, generate_events, persona_of, write_jsonl
from schemas.events import ContractError, validate_event


def ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


def name(event: dict[str, Any]) -> str:
    return event.get("event") or event["type"]


@pytest.fixture(scope="module")
def clean() -> list[dict[str, Any]]:
    return list(generate_events(200, 4, seed=11))


@pytest.fixture(scope="module")
def defective() -> list[dict[str, Any]]:
    return list(generate_events(200, 4, seed=11, defects=0.1))


def test_same_arguments_give_byte_identical_output() -> None:
    runs = []
    for _ in range(2):
        out = io.BytesIO()
        count = write_jsonl(generate_events(60, 3, seed=5, defects=0.05), out)
        runs.append(out.getvalue())
        assert count == runs[-1].count(b"\n") > 0
    assert runs[0] == runs[1]
    first = orjson.loads(runs[0].splitlines()[0])
    assert list(first) == sorted(first)
    other = io.BytesIO()
    write_jsonl(generate_events(60, 3, seed=6), other)
    assert other.getvalue() != runs[0]


def test_time_ordered_with_unique_message_ids(clean: list[dict[str, Any]]) -> None:
    keys = [(e["timestamp"], e["messageId"]) for e in clean]
    assert keys == sorted(keys)
    assert len({e["messageId"] for e in clean}) == len(clean)
    assert clean[0]["timestamp"] >= DEFAULT_START.isoformat().replace("+00:00", "Z")


def test_every_event_validates(clean: list[dict[str, Any]]) -> None:
    for event in clean:
        validate_event(event)


def test_timestamps_and_received_at(clean: list[dict[str, Any]]) -> None:
    for event in clean[:2000]:
        assert len(event["timestamp"]) == 24 and event["timestamp"].endswith("Z")
        assert 50 <= ms(event["receivedAt"]) - ms(event["timestamp"]) <= 3000


def test_custom_start_moves_the_stream() -> None:
    start = datetime(2026, 7, 1, 12, tzinfo=UTC)
    events = list(generate_events(30, 2, seed=3, start=start))
    assert events
    assert all(start <= datetime.fromisoformat(e["timestamp"]) < start + timedelta(days=2, hours=2) for e in events)


def test_volume_and_event_mix(clean: list[dict[str, Any]]) -> None:
    active = {(e.get("userId") or e["anonymousId"], e["timestamp"][:10]) for e in clean}
    assert 5 <= len(clean) / len(active) <= 40
    names = Counter(name(e) for e in clean)
    for expected in (
        "Application Opened",
        "page",
        "identify",
        "Product Viewed",
        "Product Added",
        "Product Removed",
        "Checkout Started",
        "Order Completed",
        "Promotion Clicked",
        "Push Notification Tapped",
        "Coupon Applied",
        "Consent Updated",
        "Store Visited",
        "Signed Up",
        "alias",
    ):
        assert names[expected] > 0, expected
    assert {e["context"]["channel"] for e in clean} == {"web", "app", "pos"}


def test_persona_mix() -> None:
    assert {persona_of(i, 1) for i in range(200)} == set(PERSONAS)
    mix = Counter(persona_of(i, 1) for i in range(5000))
    for persona, share in zip(PERSONAS, (0.10, 0.20, 0.20, 0.30, 0.20), strict=True):
        assert abs(mix[persona] / 5000 - share) < 0.03
    assert persona_of(42, 9) == persona_of(42, 9)


def test_orders_total_the_lines(clean: list[dict[str, Any]]) -> None:
    orders = [e for e in clean if name(e) == "Order Completed"]
    assert orders
    for order in orders:
        props = order["properties"]
        lines = sum(p["price"] * p["quantity"] for p in props["products"])
        assert props["total"] == pytest.approx(lines, abs=0.01) and props["currency"] == "EUR"


def test_pos_orders_have_a_store(clean: list[dict[str, Any]]) -> None:
    pos = [e for e in clean if e["context"]["channel"] == "pos"]
    assert any(name(e) == "Order Completed" for e in pos)
    for event in pos:
        assert event["context"]["store"]["id"].startswith("store-")
        assert "userId" in event and "anonymousId" not in event
    visits = [e for e in pos if name(e) == "Store Visited"]
    assert visits and all(v["properties"]["store_id"] == v["context"]["store"]["id"] for v in visits)


def test_anonymous_browsing_then_login(clean: list[dict[str, Any]]) -> None:
    anon_first: dict[str, int] = {}
    anon_carts: dict[str, str] = {}  # cart_id -> anonymousId
    logins: dict[str, str] = {}  # anonymousId -> userId, from identify
    for n, event in enumerate(clean):
        anon = event.get("anonymousId")
        if anon and "userId" not in event:
            anon_first.setdefault(anon, n)
            if name(event) == "Product Added":
                anon_carts[event["properties"]["cart_id"]] = anon
        if name(event) == "identify" and anon and anon in anon_first:
            logins[anon] = event["userId"]
    assert logins, "no anonymous visitor ever identified"
    assert any(e["previousId"] in logins for e in clean if name(e) == "alias")
    late_orders = [
        e
        for e in clean
        if name(e) == "Order Completed"
        and e["properties"].get("cart_id") in anon_carts
        and logins.get(anon_carts[e["properties"]["cart_id"]]) == e["userId"]
    ]
    assert late_orders, "no cart started anonymously and ordered after login"


def test_identified_customers_identify_early(clean: list[dict[str, Any]]) -> None:
    first_seen: dict[str, str] = {}
    identifies: dict[str, dict[str, Any]] = {}
    for event in clean:
        if user := event.get("userId"):
            first_seen.setdefault(user, event["timestamp"])
            if event["type"] == "identify":
                identifies.setdefault(user, event)
    assert set(identifies) == set(first_seen)
    for user, identify in identifies.items():
        assert ms(identify["timestamp"]) - ms(first_seen[user]) < 30 * 60_000
        traits = identify["traits"]
        assert {"age_band", "city", "country", "urban"} <= set(traits)
        if persona_of(int(user[2:]), 11) == "high_value":
            assert traits["age_band"] in ("18-24", "25-34") and traits["urban"] is True


def test_lapsed_customers_buy_early_then_go_quiet() -> None:
    events = list(generate_events(150, 7, seed=4))
    days: dict[str, set[int]] = defaultdict(set)
    buyers = set()
    for event in events:
        user = event.get("userId")
        if user and persona_of(int(user[2:]), 4) == "lapsed":
            day = (datetime.fromisoformat(event["timestamp"]) - DEFAULT_START).days
            days[user].add(day)
            if name(event) == "Order Completed" and day < 3:
                buyers.add(user)
    assert buyers
    quiet = [u for u in buyers if max(days[u]) < 4]
    assert quiet, "every lapsed buyer came back"


def test_rare_erasure_requests() -> None:
    erasures = [e for e in generate_events(2000, 1, seed=1) if name(e) == "Erasure Requested"]
    assert erasures and all(e["properties"]["request_id"] for e in erasures)


def test_defects_add_duplicates_late_future_and_idless_lines(
    clean: list[dict[str, Any]], defective: list[dict[str, Any]]
) -> None:
    assert 0.05 < len(defective) / len(clean) - 1 < 0.15
    ids = Counter(e["messageId"] for e in defective)
    duplicates = [m for m, n in ids.items() if n > 1]
    assert duplicates
    copies = [e for e in defective if e["messageId"] == duplicates[0]]
    assert copies[0] == copies[1]
    late, future, idless, latest = 0, 0, 0, 0
    for event in defective:
        at = ms(event["timestamp"])
        late += at < latest - 10 * 60_000
        latest = max(latest, at)
        future += at >= ms(event["receivedAt"]) + 2 * 3_600_000
        if "userId" not in event and "anonymousId" not in event:
            idless += 1
            with pytest.raises(ContractError, match="userId or anonymousId"):
                validate_event(event)
    assert late and future and idless


def test_defects_leave_the_clean_events_alone(clean: list[dict[str, Any]], defective: list[dict[str, Any]]) -> None:
    remaining = iter(defective)
    assert all(any(event == other for other in remaining) for event in clean)  # a subsequence


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate_events(10, 1, seed=1, defects=1.5)
    with pytest.raises(ValueError):
        generate_events(10, 1, seed=1, start=datetime(2026, 1, 5))
    assert list(generate_events(0, 3, seed=1)) == list(generate_events(10, 0, seed=1)) == []


def test_write_jsonl_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.BytesIO()
    assert write_jsonl(generate_events(5, 1, seed=2), out, progress=True, total=None) > 0
    assert "ev" in capsys.readouterr().err
