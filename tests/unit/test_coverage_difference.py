"""coverage.difference skips what the old and new timelines share; it must equal the plain
contribution(new) − contribution(old) for any pair of timelines."""

from __future__ import annotations

from collections import Counter
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from services.targets.domain import coverage as cov

cov.vectors("test-kind", lambda s: Counter({(s[0], "active"): s[1], (s[0][:2], "active"): s[1]}),
            lambda p: Counter({(p[0], "pulse"): 1}))

days = st.dates(min_value=date(2020, 1, 1), max_value=date(2026, 12, 31))
states = st.one_of(st.none(), st.tuples(st.sampled_from(["510681", "511102", "511111"]), st.integers(0, 3)))
segments = st.lists(st.tuples(days, states), max_size=6).map(cov.squash)
pulses = st.lists(st.tuples(days, st.tuples(st.sampled_from(["510681", "511102"]))), max_size=4).map(
    lambda p: tuple(sorted(p)))
timelines = st.builds(cov.Timeline, kind=st.just("test-kind"), segments=segments, pulses=pulses)


@st.composite
def related(draw: st.DrawFn) -> tuple[cov.Timeline | None, cov.Timeline | None]:
    """Two timelines that often share a prefix of segments and some pulses (as an entity's
    timeline does before and after one more fact), or one of them absent."""
    old = draw(st.one_of(st.none(), timelines))
    if old is None or draw(st.booleans()):
        return old, draw(st.one_of(st.none(), timelines))
    keep = draw(st.integers(0, len(old.segments)))
    extra = draw(segments)
    new_pulses = old.pulses[: draw(st.integers(0, len(old.pulses)))] + draw(pulses)
    return old, cov.Timeline("test-kind", cov.squash(list(old.segments[:keep]) + list(extra)),
                             tuple(sorted(new_pulses)))


def plain(old: cov.Timeline | None, new: cov.Timeline | None) -> Counter[tuple[str, str, date]]:
    delta = cov.contribution(new)
    delta.subtract(cov.contribution(old))
    return Counter({k: v for k, v in delta.items() if v})


@settings(max_examples=400, deadline=None)
@given(related())
def test_difference_equals_new_minus_old(pair: tuple[cov.Timeline | None, cov.Timeline | None]) -> None:
    old, new = pair
    assert cov.difference(old, new) == plain(old, new)
    assert cov.difference(new, old) == plain(new, old)
