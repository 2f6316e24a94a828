"""A target instance's status on a given day: met, on_track, at_risk or missed. Pure code.

Any day, not only today (see `evaluate`, `inputs` and `definition_on`): the status of a target as of
a day D is `evaluate(definition_on(versions, D), D, …)` with the figures that `inputs` names, each
counted at the end of its day from the facts dated up to it (coverage is kept per day).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from contracts.events import TargetStatus

from .catalogue import TargetInstance, satisfies

# Slack for comparing a value with the (interpolated, hence rounded) trajectory line.
_LINE_SLACK = 1e-9


def progress(instance: TargetInstance, today: date, value_at_start: float | None) -> float:
    """Where the straight line from (start, value_at_start or 0) to (deadline, threshold) is on
    `today`: the threshold from the deadline on, else the baseline up to the start."""
    baseline = value_at_start if value_at_start is not None else 0.0
    if today >= instance.deadline:
        return instance.threshold
    if today <= instance.start:
        return baseline
    elapsed = (today - instance.start).days
    total = (instance.deadline - instance.start).days
    return baseline + (instance.threshold - baseline) * elapsed / total


def evaluate(
    instance: TargetInstance,
    today: date,
    value_now: float | None,
    value_at_start: float | None,
    value_at_deadline: float | None,
) -> TargetStatus:
    """The status of a target instance on `today`.

    Values are the instance's figure on `today`, on its start and on its deadline (None when
    unknown, or a share of nothing). "Satisfies" means value >= threshold for a ">=" target and
    value <= threshold for a "<=" target.

    - After the deadline (today > deadline): MET if `value_at_deadline` satisfies the threshold,
      else MISSED (also when it is None). Nothing else matters then: a target met only after
      its deadline is still missed.
    - Up to and on the deadline:
      - `value_now` satisfies the threshold: MET;
      - `value_now` is None: AT_RISK once past the start (today > start), else ON_TRACK;
      - before the start (today < start): ON_TRACK (the plan has not started counting);
      - otherwise compare with the straight line from (start, value_at_start, or 0 when unknown)
        to (deadline, threshold), see `progress`: ON_TRACK if `value_now` is at or beyond the
        line today (>= it for a ">=" target, <= it for a "<=" target; a relative slack of 1e-9
        absorbs rounding), else AT_RISK. On the start day the line is at its baseline; on the
        deadline it is the threshold itself, so an unmet target is AT_RISK that day.

    A "<=" target with an unknown start value has its line start at 0, so above the threshold
    it is AT_RISK. Raising `value_now` (lowering, for "<=") never turns MET or ON_TRACK into
    AT_RISK.

    As of a past day D (`today` = D): `value_now` is the figure at the end of D, counting only
    facts dated D or before (a filing of the next day does not count; a deregistration of the
    next day has not yet removed anything); `value_at_start` the figure at the end of the day
    before the start; `value_at_deadline` the figure at the end of the deadline day. `inputs`
    names these days. The instance is the definition in force on D (`definition_on`): a
    threshold or deadline changed later does not change the status of D. Evaluated on the day
    itself, the live evaluation agrees with it, except that it counts facts already known that
    are dated after the day (a filing dated tomorrow).
    """
    if today > instance.deadline:
        if value_at_deadline is not None and satisfies(
            value_at_deadline, instance.threshold, instance.comparison
        ):
            return TargetStatus.MET
        return TargetStatus.MISSED
    if value_now is None:
        return TargetStatus.AT_RISK if today > instance.start else TargetStatus.ON_TRACK
    if satisfies(value_now, instance.threshold, instance.comparison):
        return TargetStatus.MET
    if today < instance.start:
        return TargetStatus.ON_TRACK
    expected = progress(instance, today, value_at_start)
    slack = _LINE_SLACK * max(1.0, abs(expected), abs(instance.threshold))
    if instance.comparison == ">=":
        ahead = value_now >= expected - slack
    else:
        ahead = value_now <= expected + slack
    return TargetStatus.ON_TRACK if ahead else TargetStatus.AT_RISK


@dataclass(frozen=True)
class Inputs:
    """The days whose figures (each at the end of its day) evaluate an instance on `day`.

    `start` is the day before the start (the baseline), None for a figure counted per calendar
    year (its baseline is 0); `deadline` is the deadline once it has passed (then nothing else
    counts), else None; `year_start` is 31 December before the instance's year, for a figure
    counted per calendar year (the year's count is the difference from it), else None."""

    day: date
    start: date | None
    deadline: date | None
    year_start: date | None

    def days(self) -> list[date]:
        """The days whose counters are needed: `day` itself only before the deadline."""
        own = [self.deadline] if self.deadline else [self.day] + ([self.start] if self.start else [])
        return own + ([self.year_start] if self.year_start else [])


def inputs(instance: TargetInstance, day: date, yearly: bool) -> Inputs:
    year_start = date((instance.year or instance.start.year) - 1, 12, 31) if yearly else None
    if day > instance.deadline:
        return Inputs(day, None, instance.deadline, year_start)
    return Inputs(day, None if yearly else instance.start - timedelta(days=1), None, year_start)


Version = tuple[date, TargetInstance | None]


def definition_on(versions: Sequence[Version], day: date) -> TargetInstance | None:
    """The definition of an instance in force on `day`, from its versions: (from_day, definition)
    in the order they were recorded, None for a retirement from that day on.

    - The last version recorded from `day` or before wins (two on one day: the later one).
    - Before the first version, the first one holds: a catalogue entered in 2026 for a plan of
      2021 describes 2021 too. An instance first seen retired (no definition) has none.
    - None: the instance was retired on `day` (or there are no versions).
    """
    chosen: TargetInstance | None = None
    found = False
    for from_day, definition in versions:
        if from_day <= day:
            chosen, found = definition, True
    if not found and versions:
        chosen = versions[0][1]
    return chosen


__all__ = ["Inputs", "Version", "definition_on", "evaluate", "inputs", "progress"]
