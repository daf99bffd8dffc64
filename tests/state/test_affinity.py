"""Decayed top-k affinities: half-life decay, bounded size, deterministic order, late updates, merge."""

from __future__ import annotations

import pytest

from state.affinity import DAY_MS, DecayedTopK

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
