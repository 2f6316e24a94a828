"""The relay's rule for how far it may go (cso/outbox.py `publishable`): the rows that follow its
position without a hole, and past holes only up to what a probe settled."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cso.outbox import publishable


def test_it_stops_at_a_hole() -> None:
    assert publishable(5, [6, 7, 9], settled=5) == (2, 7)
    assert publishable(5, [7, 8], settled=5) == (0, 5)


def test_a_settled_hole_is_passed_and_the_rows_after_it_follow() -> None:
    assert publishable(5, [7, 8, 11], settled=7) == (2, 8)
    assert publishable(5, [6, 12], settled=10) == (1, 10)
    assert publishable(5, [6, 11, 12, 14], settled=10) == (3, 12)
    assert publishable(5, [], settled=9) == (0, 9)


@given(st.integers(0, 50), st.sets(st.integers(1, 120)), st.integers(0, 120))
def test_the_position_never_passes_a_row_not_taken(position: int, seen: set[int], settled: int) -> None:
    seqs = sorted(s for s in seen if s > position)
    settled = max(settled, position)
    taken, after = publishable(position, seqs, settled)
    assert seqs[:taken] == [s for s in seqs if s <= after]   # taken: exactly the rows up to it
    assert after >= position
    # Every seq passed is a row taken, or a hole that is settled.
    assert all(s in seqs[:taken] or s <= settled for s in range(position + 1, after + 1))
