"""Real POS invoices (UCI Online Retail) through the whole flow."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import orjson
import pytest

from connectors.uci_retail import DEFAULT_PATH, Rejected, UciRetailSource, read_invoices
from flows.personalization import build_flow
from flows.report import finalize_summary
from flows.settings import Settings

ROWS = 200_000  # Dec 2010 to mid-2011: long enough for 60-day purchase gaps
DAY_MS = 86_400_000

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not DEFAULT_PATH.exists(), reason=f"real data not found at {DEFAULT_PATH}"),
]


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    from bytewax.testing import run_main

    out = tmp_path_factory.mktemp("uci")
    settings = Settings(out=out, replace_output=True)
    run_main(build_flow(settings, source=UciRetailSource(DEFAULT_PATH, limit_rows=ROWS)))
    summary = finalize_summary(out)
    files = {
        name: [orjson.loads(line) for line in (out / name).read_bytes().splitlines()]
        for name in ("audience_changes.jsonl", "dead_letters.jsonl", "triggers.push.jsonl")
    }
    return summary, files


def test_bad_rows_are_dead_letters_with_reasons(replayed):
    summary, files = replayed
    expected = defaultdict(int)
    for item in read_invoices(DEFAULT_PATH, limit_rows=ROWS):
        if isinstance(item, Rejected):
            expected[item.reason] += 1
    dead = files["dead_letters.jsonl"]
    assert dict(summary["dead_letters"]) == dict(expected)
    assert {d["processor"] for d in dead} == {"nudgeflow.uci_retail"}
    assert all(d["position"]["line"] > 1 and d["payload_base64"] for d in dead)


def test_every_invoice_is_accepted(replayed):
    summary, _ = replayed
    invoices = sum(1 for item in read_invoices(DEFAULT_PATH, limit_rows=ROWS) if not isinstance(item, Rejected))
    accepted = sum(summary["events"].values())
    assert accepted + summary.get("duplicates", 0) == invoices


def test_lapsed_customers_appear_after_their_purchase_gaps(replayed):
    _, files = replayed
    orders: dict[str, list[int]] = defaultdict(list)
    seen: dict[str, list[int]] = defaultdict(list)
    for item in read_invoices(DEFAULT_PATH, limit_rows=ROWS):
        if isinstance(item, dict) and item["type"] == "track":
            customer = item.get("userId") or item["anonymousId"]
            seen[customer].append(_ms(item["timestamp"]))
            if item["event"] == "Order Completed":
                orders[customer].append(_ms(item["timestamp"]))
    lapsed = [d for d in files["audience_changes.jsonl"] if d["data"]["audience"] == "lapsed"]
    entered = [d for d in lapsed if d["data"]["change"] == "entered"]
    assert len(entered) > 50
    for record in entered:
        at, customer = _ms(record["time"]), record["subject"]
        # buyers lapse 60 days after their last order; others (refunds only) after their last activity
        history = [t for t in orders[customer] if t <= at] or [t for t in seen[customer] if t <= at]
        assert history, record
        assert at - max(history) >= 60 * DAY_MS, "entered lapsed only after 60 days without an order"
        assert record["data"]["caused_by"] and all(record["data"]["caused_by"])
    returned = [d for d in lapsed if d["data"]["change"] == "exited"]
    assert returned, "some lapsed customers come back and leave the audience"


def test_win_back_pushes_follow_lapses(replayed):
    _, files = replayed
    winbacks = [d for d in files["triggers.push.jsonl"] if d["data"]["rule_id"] == "winback_lapsed_push"]
    assert winbacks
    assert len({d["id"] for d in winbacks}) == len(winbacks)
