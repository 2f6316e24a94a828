"""What a community task's target counts, and how it stands. Pure code.

Figures are kept for provinces through townships (the target catalogue), but a community's
counters are kept too, read on demand. A community task's target ("孵化培育公益慈善类社区社会组织3个",
"常态化志愿服务活动开展不少于10次") counts at its community, live, in one of two ways:

- a figure: a count figure of `metrics.FIGURES` (or the active organizations of one category,
  ``orgs_<category>``), as the growth of its counters since the plan's start: organizations new
  at the community since then, fed by registry's events;
- ``evidence_count``: the numbers the task's evidence files carry (activities held), summed over
  those an accepter confirmed. An unconfirmed number does not count.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from contracts.events import Category

from ...domain.metrics import FIGURES

EVIDENCE_METRIC = "evidence_count"

# metric -> (counters summed, divided by): counts only (a share or an average of one community
# is no promise a plan makes), cumulative ones only (a yearly figure restarts each year).
COMMUNITY_COUNTERS: dict[str, tuple[tuple[str, ...], int]] = {
    **{name: (f.numerator, f.per) for name, f in FIGURES.items()
       if f.kind == "count" and not f.yearly and not f.denominator},
    **{f"orgs_{c.value}": ((f"orgs_cat_{c.value}",), 1) for c in Category},
}
COMMUNITY_METRICS: tuple[str, ...] = (*COMMUNITY_COUNTERS, EVIDENCE_METRIC)


def grown(metric: str, now: Mapping[str, int], at_start: Mapping[str, int]) -> float:
    """A figure metric's growth at a community since the plan's start: its counters now less
    their values the day before the plan starts."""
    counters, per = COMMUNITY_COUNTERS[metric]
    return sum(now.get(c, 0) - at_start.get(c, 0) for c in counters) / per


def confirmed_total(numbers: list[tuple[int | None, bool]]) -> float:
    """Evidence numbers (count, confirmed) summed over the confirmed ones."""
    return float(sum(n for n, confirmed in numbers if confirmed and n is not None))


def community_status(value: float, threshold: float, comparison: str, deadline: date, today: date) -> str:
    """met once the value reaches the threshold; missed after the deadline without it; pending
    until then (a community's figure has no trend to call on or off track)."""
    met = value >= threshold if comparison == ">=" else value <= threshold
    if met:
        return "met"
    return "missed" if today > deadline else "pending"
