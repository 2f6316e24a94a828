"""Target status: met, on_track, at_risk, missed, on hand-computed cases and as properties."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import TargetStatus
from services.targets.domain.catalogue import Comparison, TargetInstance, TargetSpec, expand
from services.targets.domain.status import definition_on, evaluate, inputs, progress

MET, ON_TRACK, AT_RISK, MISSED = (
    TargetStatus.MET, TargetStatus.ON_TRACK, TargetStatus.AT_RISK, TargetStatus.MISSED
)
START = date(2021, 1, 1)
DEADLINE = START + timedelta(days=100)          # 2021-04-11
DAY_25 = START + timedelta(days=25)             # a quarter of the way


def _instance(threshold: float = 100.0, comparison: Comparison = ">=",
              start: date = START, deadline: date = DEADLINE) -> TargetInstance:
    return TargetInstance(
        instance_id="t@5111", spec_id="t", region="5111", figure="orgs", threshold=threshold,
        comparison=comparison, start=start, deadline=deadline, year=None, source="plan",
        title="标题",
    )


# --- hand-computed cases, ">=" -----------------------------------------------------------------


def test_line_is_a_straight_line_from_zero() -> None:
    t = _instance()
    assert progress(t, START - timedelta(days=1), None) == 0.0
    assert progress(t, START, None) == 0.0
    assert progress(t, DAY_25, None) == 25.0
    assert progress(t, START + timedelta(days=50), None) == 50.0
    assert progress(t, DEADLINE, None) == 100.0
    assert progress(t, DEADLINE + timedelta(days=9), None) == 100.0


def test_line_starts_at_the_start_value() -> None:
    t = _instance()
    assert progress(t, START, 20.0) == 20.0
    assert progress(t, DAY_25, 20.0) == 40.0        # 20 + (100 - 20) / 4


@pytest.mark.parametrize(("value_now", "value_at_start", "expected"), [
    (100.0, None, MET),             # exactly the threshold
    (130.0, 10.0, MET),
    (25.0, None, ON_TRACK),         # exactly on the line (0 -> 100, a quarter of the way)
    (60.0, None, ON_TRACK),
    (24.9, None, AT_RISK),          # just below the line
    (40.0, 20.0, ON_TRACK),         # on the line 20 -> 100
    (39.9, 20.0, AT_RISK),
    (0.0, None, AT_RISK),
    (99.0, 120.0, AT_RISK),         # fell below the threshold from above it
])
def test_before_the_deadline(value_now: float, value_at_start: float | None,
                             expected: TargetStatus) -> None:
    assert evaluate(_instance(), DAY_25, value_now, value_at_start, None) == expected


def test_the_value_at_deadline_is_ignored_before_the_deadline() -> None:
    assert evaluate(_instance(), DAY_25, 10.0, None, 500.0) == AT_RISK
    assert evaluate(_instance(), DAY_25, 30.0, None, 0.0) == ON_TRACK


def test_on_the_deadline_day() -> None:
    t = _instance()
    assert evaluate(t, DEADLINE, 100.0, None, None) == MET
    assert evaluate(t, DEADLINE, 99.99, None, None) == AT_RISK   # the line is the threshold


def test_met_at_the_deadline_stays_met_after_it() -> None:
    after = DEADLINE + timedelta(days=1)
    assert evaluate(_instance(), after, 40.0, 0.0, 100.0) == MET
    assert evaluate(_instance(), date(2030, 1, 1), None, None, 101.0) == MET


def test_missed_after_the_deadline_even_if_met_later() -> None:
    after = DEADLINE + timedelta(days=1)
    assert evaluate(_instance(), after, 150.0, 0.0, 99.0) == MISSED
    assert evaluate(_instance(), after, 150.0, 0.0, None) == MISSED


def test_before_the_start() -> None:
    before = START - timedelta(days=10)
    assert evaluate(_instance(), before, 0.0, None, None) == ON_TRACK
    assert evaluate(_instance(), before, 100.0, None, None) == MET
    assert evaluate(_instance(), before, None, None, None) == ON_TRACK


def test_no_value_now() -> None:
    t = _instance()
    assert evaluate(t, START - timedelta(days=1), None, None, None) == ON_TRACK
    assert evaluate(t, START, None, None, None) == ON_TRACK
    assert evaluate(t, START + timedelta(days=1), None, 0.0, None) == AT_RISK
    assert evaluate(t, DEADLINE, None, 0.0, None) == AT_RISK


def test_on_the_start_day_the_line_is_the_baseline() -> None:
    assert evaluate(_instance(), START, 0.0, None, None) == ON_TRACK
    assert evaluate(_instance(), START, 10.0, 10.0, None) == ON_TRACK
    assert evaluate(_instance(), START, 9.0, 10.0, None) == AT_RISK


def test_a_one_day_target() -> None:
    t = _instance(start=START, deadline=START)
    assert evaluate(t, START, 99.0, None, None) == AT_RISK
    assert evaluate(t, START, 100.0, None, None) == MET
    assert evaluate(t, START + timedelta(days=1), 100.0, None, 99.0) == MISSED


def test_a_share_on_a_long_line() -> None:
    # 1000 days; after 750 (three quarters) the line 0 -> 0.8 is at 0.6, up to float rounding
    t = _instance(threshold=0.8, start=START, deadline=START + timedelta(days=1000))
    today = START + timedelta(days=750)
    assert progress(t, today, None) == pytest.approx(0.6, abs=1e-12)
    assert evaluate(t, today, 6 / 10, None, None) == ON_TRACK
    assert evaluate(t, today, 0.59, None, None) == AT_RISK
    assert evaluate(t, today, 4 / 5, None, None) == MET


def test_rounding_in_the_line_does_not_put_a_target_at_risk() -> None:
    # 0.3 over 10 days: on day 7 the line is 0.21, computed as 0.21000000000000002; a figure of
    # exactly 21 of 100 townships (0.21) is on the line
    t = _instance(threshold=0.3, start=START, deadline=START + timedelta(days=10))
    today = START + timedelta(days=7)
    assert progress(t, today, None) > 21 / 100
    assert evaluate(t, today, 21 / 100, None, None) == ON_TRACK
    assert evaluate(t, today, 0.2099, None, None) == AT_RISK


def test_a_yearly_instance() -> None:
    spec = TargetSpec(id="f", title="新增", figure="new_filings_functional", scope_region="5111",
                      threshold=100.0, start=date(2021, 1, 1), deadline=date(2025, 12, 31),
                      yearly_from=2021, yearly_until=2025, source="plan")
    year_2022 = next(i for i in expand(spec, lambda r, t: []) if i.year == 2022)
    mid = date(2022, 7, 2)                          # day 182 of 364
    assert progress(year_2022, mid, 0.0) == 50.0
    assert evaluate(year_2022, mid, 50.0, 0.0, None) == ON_TRACK
    assert evaluate(year_2022, mid, 49.0, 0.0, None) == AT_RISK
    assert evaluate(year_2022, date(2023, 1, 1), 0.0, 0.0, 100.0) == MET
    assert evaluate(year_2022, date(2023, 1, 1), 120.0, 0.0, 99.0) == MISSED


# --- "<=" targets: the mirror image -------------------------------------------------------------


def test_line_going_down() -> None:
    t = _instance(threshold=10.0, comparison="<=")
    assert progress(t, DAY_25, 50.0) == 40.0        # 50 - (50 - 10) / 4


@pytest.mark.parametrize(("value_now", "value_at_start", "expected"), [
    (10.0, 50.0, MET),
    (3.0, 50.0, MET),
    (40.0, 50.0, ON_TRACK),         # exactly on the line 50 -> 10
    (30.0, 50.0, ON_TRACK),
    (40.1, 50.0, AT_RISK),          # just above the line
    (20.0, None, AT_RISK),          # unknown start value: the line starts at 0
])
def test_less_or_equal_before_the_deadline(value_now: float, value_at_start: float | None,
                                           expected: TargetStatus) -> None:
    t = _instance(threshold=10.0, comparison="<=")
    assert evaluate(t, DAY_25, value_now, value_at_start, None) == expected


def test_less_or_equal_after_the_deadline() -> None:
    t = _instance(threshold=10.0, comparison="<=")
    after = DEADLINE + timedelta(days=1)
    assert evaluate(t, after, 50.0, 50.0, 10.0) == MET
    assert evaluate(t, after, 0.0, 50.0, 10.5) == MISSED
    assert evaluate(t, after, 0.0, 50.0, None) == MISSED
    assert evaluate(t, DEADLINE, 10.5, 50.0, None) == AT_RISK
    assert evaluate(t, START - timedelta(days=1), 50.0, None, None) == ON_TRACK


# --- properties ---------------------------------------------------------------------------------

values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
optional_values = st.none() | values


@st.composite
def instances(draw: st.DrawFn) -> TargetInstance:
    start = draw(st.dates(min_value=date(2015, 1, 1), max_value=date(2030, 1, 1)))
    length = draw(st.integers(min_value=0, max_value=2000))
    threshold = draw(st.floats(min_value=0, max_value=1e5, allow_nan=False))
    comparison: Comparison = draw(st.sampled_from([">=", "<="]))
    return _instance(threshold, comparison, start, start + timedelta(days=length))


@st.composite
def days(draw: st.DrawFn, t: TargetInstance) -> date:
    return draw(st.dates(min_value=t.start - timedelta(days=400),
                         max_value=t.deadline + timedelta(days=400)))


GOOD = {MET, ON_TRACK}


@settings(max_examples=500)
@given(data=st.data(), t=instances(), a=values, b=values, at_start=optional_values,
       at_deadline=optional_values)
def test_better_value_now_never_worsens_the_status(
    data: st.DataObject, t: TargetInstance, a: float, b: float, at_start: float | None,
    at_deadline: float | None,
) -> None:
    today = data.draw(days(t))
    worse, better = sorted((a, b)) if t.comparison == ">=" else sorted((a, b), reverse=True)
    low = evaluate(t, today, worse, at_start, at_deadline)
    high = evaluate(t, today, better, at_start, at_deadline)
    if low in GOOD:
        assert high in GOOD
    if low == MET:
        assert high == MET


@settings(max_examples=500)
@given(data=st.data(), t=instances(), now=st.lists(optional_values, min_size=2, max_size=2),
       starts=st.lists(optional_values, min_size=2, max_size=2), at_deadline=optional_values)
def test_after_the_deadline_only_the_deadline_value_counts(
    data: st.DataObject, t: TargetInstance, now: list[float | None],
    starts: list[float | None], at_deadline: float | None,
) -> None:
    today = data.draw(st.dates(min_value=t.deadline + timedelta(days=1),
                               max_value=t.deadline + timedelta(days=4000)))
    results = {evaluate(t, today, n, s, at_deadline) for n, s in zip(now, starts, strict=True)}
    if at_deadline is None:
        assert results == {MISSED}
    else:
        met = at_deadline >= t.threshold if t.comparison == ">=" else at_deadline <= t.threshold
        assert results == {MET if met else MISSED}


@settings(max_examples=500)
@given(data=st.data(), t=instances(), now=optional_values, at_start=optional_values,
       at_deadline=optional_values)
def test_missed_only_after_the_deadline(
    data: st.DataObject, t: TargetInstance, now: float | None, at_start: float | None,
    at_deadline: float | None,
) -> None:
    today = data.draw(days(t))
    status = evaluate(t, today, now, at_start, at_deadline)
    if today > t.deadline:
        assert status in {MET, MISSED}
    else:
        assert status != MISSED
        if now is not None:
            met = now >= t.threshold if t.comparison == ">=" else now <= t.threshold
            assert (status == MET) == met


@settings(max_examples=300)
@given(t=instances(), at_start=optional_values, data=st.data())
def test_a_value_on_the_line_is_on_track_or_met(
    t: TargetInstance, at_start: float | None, data: st.DataObject
) -> None:
    today = data.draw(st.dates(min_value=t.start, max_value=t.deadline))
    status = evaluate(t, today, progress(t, today, at_start), at_start, None)
    assert status in GOOD


# --- as of a past day: the days whose figures count, the definition in force ------------------


def test_inputs_name_the_days_whose_figures_count() -> None:
    t = _instance(start=date(2025, 1, 1), deadline=date(2025, 12, 31))
    on = inputs(t, date(2025, 6, 29), yearly=False)
    assert (on.start, on.deadline, on.year_start) == (date(2024, 12, 31), None, None)
    assert on.days() == [date(2025, 6, 29), date(2024, 12, 31)]
    # Past the deadline only the deadline day counts (a target met later is still missed).
    past = inputs(t, date(2026, 1, 2), yearly=False)
    assert past.days() == [date(2025, 12, 31)]
    # A figure counted per calendar year starts at 0 from the 31 December before its year.
    yearly = inputs(dataclasses.replace(t, year=2025), date(2025, 3, 1), yearly=True)
    assert (yearly.start, yearly.year_start) == (None, date(2024, 12, 31))
    assert yearly.days() == [date(2025, 3, 1), date(2024, 12, 31)]


def test_definition_in_force_on_a_day() -> None:
    first, raised = _instance(threshold=3), _instance(threshold=4)
    versions = [(date(2025, 7, 15), first), (date(2025, 8, 1), raised), (date(2025, 9, 1), None)]
    assert definition_on(versions, date(2021, 1, 1)) is first      # before it was entered
    assert definition_on(versions, date(2025, 7, 31)) is first
    assert definition_on(versions, date(2025, 8, 1)) is raised     # from its day on
    assert definition_on(versions, date(2025, 8, 31)) is raised
    assert definition_on(versions, date(2025, 9, 1)) is None       # retired
    assert definition_on([], date(2025, 9, 1)) is None
    # Two on one day: the one recorded later.
    assert definition_on([(date(2025, 8, 1), first), (date(2025, 8, 1), raised)], date(2025, 8, 1)) is raised


def test_status_of_a_past_day_inside_a_month() -> None:
    """The figure of the day counts, not its month's end: a deregistration of 06-30 lowers the
    value from 06-30 on, so 06-29 is met and 06-30 at risk (a flat line from a baseline of 3)."""
    t = _instance(threshold=3, start=date(2025, 1, 1), deadline=date(2025, 12, 31))
    figures = {date(2024, 12, 31): 3.0, date(2025, 6, 29): 3.0, date(2025, 6, 30): 2.0}

    def status_on(day: date) -> TargetStatus:
        need = inputs(t, day, yearly=False)
        assert need.start is not None
        return evaluate(t, day, figures[day], figures[need.start], None)

    assert status_on(date(2025, 6, 29)) is MET
    assert status_on(date(2025, 6, 30)) is AT_RISK
