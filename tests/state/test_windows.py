"""Windowed event counts: right per window at bucket resolution, bounded, mergeable.

Of the plain-Python counts the compiled features record follows bucket for bucket
(``tests/state/test_features_native.py`` holds it to them)."""

from __future__ import annotations

import pytest
from features_reference import _COMPACT_EVERY, COUNTED_KINDS, MINUTE_MS, WINDOWS_MIN, WindowedCounts

HOUR = 60 * MINUTE_MS
DAY = 24 * HOUR
NOW = 29_459_520 * MINUTE_MS  # 2026-01-05T00:00Z, a whole UTC day, so bucket edges are easy to reason about
ONE_KIND_BOUND = 3 * (12 + 24 + 30)


def feed(events: list[tuple[str, int]]) -> WindowedCounts:
    w = WindowedCounts()
    latest = 0
    for kind, at in events:
        latest = max(latest, at)
        w.add(kind, at, latest)
    return w


def test_counts_per_window():
    now = NOW + 12 * HOUR
    ages = {"10m": 10 * MINUTE_MS, "3h": 3 * HOUR, "2d": 2 * DAY, "20d": 20 * DAY, "31d": 31 * DAY}
    w = feed([("product_viewed", now - age) for age in sorted(ages.values(), reverse=True)])
    views = {window: w.counts(window, now)["product_viewed"] for window in WINDOWS_MIN}
    assert views == {"1h": 1, "24h": 2, "7d": 3, "30d": 4}


def test_counts_are_per_kind_and_unknown_kinds_are_other():
    now = NOW + HOUR
    w = feed([("product_viewed", now), ("order_completed", now), ("product_viewed", now), ("Wishlist", now)])
    counts = w.counts("1h", now)
    assert set(counts) == set(COUNTED_KINDS)
    assert counts["product_viewed"] == 2
    assert counts["order_completed"] == 1
    assert counts["other"] == 1
    assert sum(counts.values()) == 4


def test_older_buckets_leave_each_window_as_time_passes():
    w = feed([("page", NOW)])
    assert w.counts("1h", NOW + 30 * MINUTE_MS)["page"] == 1
    assert w.counts("1h", NOW + 61 * MINUTE_MS)["page"] == 0
    assert w.counts("24h", NOW + 23 * HOUR)["page"] == 1
    assert w.counts("24h", NOW + 25 * HOUR)["page"] == 0
    assert w.counts("7d", NOW + 6 * DAY)["page"] == 1
    assert w.counts("7d", NOW + 8 * DAY)["page"] == 0
    assert w.counts("30d", NOW + 29 * DAY)["page"] == 1
    assert w.counts("30d", NOW + 30 * DAY)["page"] == 0


def test_events_older_than_30_days_are_not_kept():
    w = WindowedCounts()
    w.add("page", NOW - 30 * DAY, NOW)
    w.add("page", NOW - 45 * DAY, NOW)
    assert len(w.buckets) == 0
    w.add("page", NOW - 29 * DAY, NOW)
    assert w.counts("30d", NOW)["page"] == 1


def test_compaction_drops_buckets_older_than_30_days_and_keeps_totals():
    w = feed([("page", NOW + i * HOUR) for i in range(10)] + [("order_completed", NOW + 9 * HOUR)])
    later = NOW + 40 * DAY
    w.compact(NOW + 9 * HOUR + 3 * DAY)
    assert w.counts("7d", NOW + 9 * HOUR + 3 * DAY)["page"] == 10
    assert len(w.buckets) == 3 * 2, "ten hours in one day bucket, the order in another kind"
    w.compact(later)
    assert len(w.buckets) == 0


def test_late_events_are_counted():
    w = feed([("page", NOW + 50 * MINUTE_MS), ("page", NOW + 10 * MINUTE_MS), ("product_viewed", NOW + 55 * MINUTE_MS)])
    w.add("page", NOW + 20 * MINUTE_MS, NOW + 55 * MINUTE_MS)
    w.add("page", NOW + 50 * MINUTE_MS, NOW + 55 * MINUTE_MS)
    counts = w.counts("1h", NOW + 55 * MINUTE_MS)
    assert counts["page"] == 4 and counts["product_viewed"] == 1


def five_minutely(days: int) -> tuple[WindowedCounts, list[int], int]:
    """One page event every 5 minutes for ``days``; also the longest the bucket array got."""
    w = WindowedCounts()
    times = [NOW + i * 5 * MINUTE_MS for i in range(days * 24 * 12)]
    longest = 0
    for at in times:
        w.add("page", at, at)
        longest = max(longest, len(w.buckets))
    return w, times, longest


@pytest.fixture(scope="module")
def forty_days():
    return five_minutely(40)


def test_compaction_bounds_the_buckets_and_keeps_counts_right_at_bucket_resolution(forty_days):
    w, times, longest = forty_days
    now = times[-1]
    assert longest <= 3 * 73, "compaction runs once the array passes 72 triples"
    # at bucket resolution: a window may miss at most the events of the one bucket straddling its start
    straddling = {"1h": 1, "24h": 12, "7d": 288, "30d": 288}
    for window, minutes in WINDOWS_MIN.items():
        exact = sum(1 for at in times if now - at < minutes * MINUTE_MS)
        got = w.counts(window, now)["page"]
        assert exact - straddling[window] <= got <= exact, window
    w.compact(now)
    assert len(w.buckets) <= ONE_KIND_BOUND
    assert w.counts("1h", now)["page"] == 12


def test_the_documented_bound_holds_after_every_add(forty_days):
    _, _, longest = forty_days
    assert longest <= ONE_KIND_BOUND + 3 * _COMPACT_EVERY


def test_compaction_does_not_run_on_every_add(monkeypatch):
    runs = []
    compact = WindowedCounts.compact
    monkeypatch.setattr(WindowedCounts, "compact", lambda self, now: (runs.append(now), compact(self, now)))
    w = WindowedCounts()
    kinds = COUNTED_KINDS[:6]
    adds = 0
    for i in range(24 * 12):  # six kinds, every 5 minutes, for a day
        at = NOW + i * 5 * MINUTE_MS
        for kind in kinds:
            w.add(kind, at, at)
            adds += 1
    assert len(runs) <= adds // 10, f"{len(runs)} compactions for {adds} adds"


def test_merge_adds_counts_and_compacts():
    now = NOW + 2 * HOUR
    a = feed([("page", now - 10 * MINUTE_MS), ("order_completed", now - 3 * HOUR)])
    b = feed([("page", now - 20 * MINUTE_MS), ("page", now - 2 * DAY), ("page", now - 40 * DAY)])
    a.merge(b, now)
    assert a.counts("1h", now)["page"] == 2
    assert a.counts("24h", now)["order_completed"] == 1
    assert a.counts("7d", now)["page"] == 3
    starts = a.buckets[0::3]
    assert list(starts) == sorted(starts), "merged buckets are kept in time order"
    assert b.counts("7d", now)["page"] == 2, "the merged-in side is left as it was"
