"""A target instance's status on a given day: met, on_track, at_risk or missed. Pure code."""

from __future__ import annotations

from datetime import date

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


__all__ = ["evaluate", "progress"]
