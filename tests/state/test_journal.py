"""The bookkeeping of a state kept as base and journals: what a snapshot refers to and carries."""

from __future__ import annotations

from state.journal import BASE, JOURNAL, Journal


def test_a_snapshot_carries_only_what_the_store_may_not_hold_and_switches_base_once_it_holds_the_new_one():
    journal = Journal("models")
    parts, _, ref = journal.save(1, 0, b"j1", lambda: b"B" * 10)
    assert ref.base == 1 and set(ref.unsaved) == {(BASE, 1)}, "the first base travels until written"
    assert set(parts) == {("models", BASE, 1), ("models", JOURNAL, 1)}
    parts, _, ref = journal.save(2, 1, b"j" * 20, lambda: b"N" * 30)  # the journals outgrow the base: a new one
    assert ("models", BASE, 2) in parts
    assert ref.base == 1 and set(ref.unsaved) == {(JOURNAL, 2)}, "the old base, until the store holds the new one"
    _, keep, ref = journal.save(3, 2, b"j3", lambda: b"unused")
    assert ref.base == 2 and set(ref.unsaved) == {(JOURNAL, 3)}
    assert keep == 1, "snapshot 2 may still be restored: it refers to base 1"
