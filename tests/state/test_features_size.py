"""Memory held by the compiled features record: what a typical customer costs."""

from __future__ import annotations

import sys

from state._native import Features

HOUR_MS = 3_600_000
TIMEOUT_MS = 30 * 60_000
VIEWED, ADDED = 0, 1
PRODUCT_VIEWED, PAGE = 0, 7


def browsing_customer() -> Features:
    """A day of a typical customer with no order: views over a few hours, one cart line, a page."""
    features = Features(0)
    for n in range(12):
        at_ms = n * HOUR_MS // 3
        product, category = f"p{n % 5}", f"c{n % 4}"
        features.apply_product(
            at_ms, f"m-{n:010d}", PRODUCT_VIEWED, n % 24, TIMEOUT_MS, None, "Lyon", "FR",
            VIEWED, product, category, None, 1, 9.5,
        )  # fmt: skip
    features.apply_product(
        4 * HOUR_MS, "m-add", 1, 4, TIMEOUT_MS, None, "Lyon", "FR", ADDED, "p1", "c1", "cart-1", 1, 9.5
    )
    features.apply(4 * HOUR_MS + 1, "m-page", PAGE, 4, TIMEOUT_MS, None, None, None)
    return features


def test_a_typical_customer_holds_a_compact_record() -> None:
    features = browsing_customer()
    assert len(features.buckets) // 3 >= 5 and len(features.product_scores) == 5

    # 1,048 bytes before the record was packed; 626 in 11 allocations before its ids, affinities,
    # session and traits were held inside it (now 3: the counts and the cart's two)
    assert sys.getsizeof(features) <= 680


def test_a_customer_with_no_order_holds_nothing_for_orders() -> None:
    features = browsing_customer()
    before = sys.getsizeof(features)
    features.apply_order(5 * HOUR_MS, "m-refund", 5, 5, TIMEOUT_MS, None, None, None, False, "o1", 3.0, [])

    assert features.refunds == 1
    assert sys.getsizeof(features) > before


def test_a_count_bucket_costs_about_two_bytes() -> None:
    features = Features(0)
    features.apply(0, "m-0", PAGE, 0, TIMEOUT_MS, None, None, None)
    one = sys.getsizeof(features)
    for n in range(1, 60):  # a page every 15 minutes: a bucket each
        features.apply(n * 15 * 60_000, f"m-{n}", PAGE, 0, TIMEOUT_MS, None, None, None)

    assert len(features.buckets) // 3 == 60 and features.counts("24h", 59 * 15 * 60_000)["page"] == 60
    assert (sys.getsizeof(features) - one) / 59 <= 2.5, "9 bytes a bucket before they were packed"


def test_the_record_s_fixed_part_holds_six_traits_in_5_bytes_each() -> None:
    features = Features(0)
    features.apply_identify(0, "m-0", None, None, None, "35-44", "Lyon", "FR", True, "f", "gold", None)

    assert features.traits == {
        "age_band": "35-44", "city": "Lyon", "country": "FR", "urban": True, "gender": "f", "loyalty_tier": "gold"
    }  # fmt: skip
    assert sys.getsizeof(features) <= 416, "464 when a trait took 12 bytes"
