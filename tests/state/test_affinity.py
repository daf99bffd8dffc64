"""Decayed top-k affinities: half-life decay, bounded size, deterministic order, late updates, merge.

Of the plain-Python affinities the compiled features record follows score for score
(``tests/state/test_features_native.py`` holds it to them, extreme times included)."""

from __future__ import annotations

import pytest
from features_reference import DAY_MS, DecayedTopK

HALF_LIFE = 7 * DAY_MS
T = 1_767_607_200_000


def test_a_score_halves_after_one_half_life():
    a = DecayedTopK()
    a.add("shoes", 4.0, T, HALF_LIFE, 8)
    assert a.as_of(T, HALF_LIFE) == {"shoes": 4.0}
    assert a.as_of(T + HALF_LIFE, HALF_LIFE) == {"shoes": 2.0}
    assert a.as_of(T + 2 * HALF_LIFE, HALF_LIFE) == {"shoes": 1.0}
    assert a.as_of(T - DAY_MS, HALF_LIFE) == {"shoes": 4.0}, "reading before the last update does not grow scores"


def test_a_later_update_decays_what_was_there():
    a = DecayedTopK()
    a.add("shoes", 4.0, T, HALF_LIFE, 8)
    a.add("bags", 1.0, T + HALF_LIFE, HALF_LIFE, 8)
    assert a.as_of(T + HALF_LIFE, HALF_LIFE) == pytest.approx({"shoes": 2.0, "bags": 1.0})
    a.add("shoes", 1.0, T + HALF_LIFE, HALF_LIFE, 8)
    assert a.as_of(T + HALF_LIFE, HALF_LIFE)["shoes"] == pytest.approx(3.0)


def test_a_late_update_counts_decayed():
    a = DecayedTopK()
    a.add("shoes", 1.0, T + HALF_LIFE, HALF_LIFE, 8)
    a.add("bags", 1.0, T, HALF_LIFE, 8)  # one half-life older than what is held
    assert a.ref_ms == T + HALF_LIFE, "a late update does not move the reference back"
    assert a.scores == pytest.approx({"shoes": 1.0, "bags": 0.5})
    assert a.top() == ["shoes", "bags"]


def test_recent_interest_overtakes_old_interest():
    a = DecayedTopK()
    a.add("shoes", 3.0, T, HALF_LIFE, 8)
    a.add("bags", 2.0, T + HALF_LIFE, HALF_LIFE, 8)
    assert a.top(1) == ["bags"]


def test_only_the_k_strongest_are_kept():
    a = DecayedTopK()
    for i, item in enumerate(["a", "b", "c", "d", "e"]):
        a.add(item, float(i + 1), T, HALF_LIFE, 3)
    assert len(a.scores) == 3
    assert a.top() == ["e", "d", "c"]
    a.add("weak", 0.5, T, HALF_LIFE, 3)
    assert "weak" not in a.scores, "a newcomer weaker than all held items is dropped"
    a.add("c", 10.0, T, HALF_LIFE, 3)
    assert a.top() == ["c", "e", "d"]


def test_ties_are_ordered_by_name():
    a = DecayedTopK()
    for item in ["pears", "apples", "figs"]:
        a.add(item, 1.0, T, HALF_LIFE, 8)
    assert a.top() == ["apples", "figs", "pears"]
    assert a.top(2) == ["apples", "figs"]
    assert list(a.as_of(T, HALF_LIFE)) == ["apples", "figs", "pears"]


def test_eviction_agrees_with_the_ranking_on_ties():
    bounded, unbounded = DecayedTopK(), DecayedTopK()
    for item in ["a", "b", "c"]:  # e.g. three categories of one order, same time, same weight
        bounded.add(item, 5.0, T, HALF_LIFE, 2)
        unbounded.add(item, 5.0, T, HALF_LIFE, 8)
    assert bounded.top() == unbounded.top(2)


def test_merge_folds_scores_at_their_own_time():
    mine, other = DecayedTopK(), DecayedTopK()
    mine.add("shoes", 2.0, T + HALF_LIFE, HALF_LIFE, 8)
    other.add("shoes", 2.0, T, HALF_LIFE, 8)
    other.add("hats", 4.0, T, HALF_LIFE, 8)
    mine.merge(other, HALF_LIFE, 8)
    assert mine.ref_ms == T + HALF_LIFE
    assert mine.as_of(T + HALF_LIFE, HALF_LIFE) == {"hats": 2.0, "shoes": 3.0}
    assert other.scores == {"shoes": 2.0, "hats": 4.0}, "the merged-in side is left as it was"


def test_merge_of_newer_scores_decays_the_older_side_and_keeps_k():
    mine, other = DecayedTopK(), DecayedTopK()
    for item in ["a", "b", "c"]:
        mine.add(item, 1.0, T, HALF_LIFE, 3)
    other.add("z", 1.0, T + 3 * HALF_LIFE, HALF_LIFE, 3)
    mine.merge(other, HALF_LIFE, 3)
    assert len(mine.scores) == 3
    assert mine.top(1) == ["z"]
    assert mine.as_of(T + 3 * HALF_LIFE, HALF_LIFE)["z"] == 1.0


YEAR_1 = -62_135_596_800_000  # 0001-01-01T00:00:00Z
YEAR_9999 = 253_402_300_799_000  # 9999-12-31T23:59:59Z
EXTREMES = [YEAR_1, 0, T - 9 * 365 * DAY_MS, T, T + 1, YEAR_9999]


@pytest.mark.parametrize("first", EXTREMES)
@pytest.mark.parametrize("second", EXTREMES)
def test_any_two_timestamps_in_any_order_give_finite_scores(first, second):
    a = DecayedTopK()
    a.add("first", 1.0, first, 3 * DAY_MS, 5)
    a.add("second", 1.0, second, 3 * DAY_MS, 5)
    later = max(first, second)
    scores = a.as_of(later, 3 * DAY_MS)
    assert all(0.0 <= score <= 2.0 for score in scores.values()), scores
    assert scores["second" if second > first else "first"] == 1.0, "the latest update counts in full"


def test_an_unset_device_clock_before_a_normal_update_does_not_overflow():
    """An event stamped 1970 (a device without a clock), then today's event: the old one has decayed away."""
    a = DecayedTopK()
    a.add("old", 1.0, 0, 3 * DAY_MS, 5)
    a.add("new", 1.0, T, 3 * DAY_MS, 5)
    assert a.as_of(T, 3 * DAY_MS) == {"new": 1.0, "old": 0.0}
    assert a.top() == ["new", "old"]


def test_a_merge_across_centuries_keeps_the_newer_scores():
    mine, other = DecayedTopK(), DecayedTopK()
    mine.add("old", 5.0, YEAR_1, HALF_LIFE, 3)
    other.add("new", 1.0, YEAR_9999, HALF_LIFE, 3)
    mine.merge(other, HALF_LIFE, 3)
    assert mine.as_of(YEAR_9999, HALF_LIFE) == {"new": 1.0, "old": 0.0}
