"""Which communities and townships are behind a target: the units under its threshold, worst first.

A target on a figure whose denominator counts divisions (`metrics.Figure.unit`) promises something
of each of them: "每个城市社区平均不少于12个" of every urban community, "街道枢纽全覆盖" of every
street. A unit's own figure comes from its own counters (a community's communities_urban is 1 when
it is urban), so a community with 3 organizations is 9 short of 12, and a street without a hub is
1 hub short of full coverage. A township is also listed under a per-community target when its
communities' average is under the threshold: how many organizations it lacks in all.

How far a unit is from the threshold is counted in the numerator's own units (organizations,
townships with a hub), the smallest number that would make `catalogue.satisfies` true, so a unit is
behind exactly when target evaluation would call its figure unmet. Pure code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from contracts.codes import Tier

from .catalogue import Comparison, satisfies
from .metrics import FIGURES
from .metrics import numerator as numerator_of

# The tiers listed for a figure's unit: a per-community figure is also averaged per township.
TIERS_OF_UNIT: dict[str, tuple[Tier, ...]] = {"community": ("township", "community"), "township": ("township",)}


@dataclass(frozen=True)
class Unit:
    """A community or township under a target's threshold: its figure, the counters behind it,
    and `short`, how many more of the numerator (fewer, for a "<=" target) would meet it."""

    code: str
    name: str
    value: float
    numerator: int
    denominator: int
    short: int


def tiers(figure: str) -> tuple[Tier, ...]:
    """The tiers whose divisions a target on `figure` can be behind at (none: not per unit)."""
    unit = FIGURES[figure].unit
    return TIERS_OF_UNIT[unit] if unit else ()


def short_of(threshold: float, comparison: Comparison, numerator: int, denominator: int) -> int:
    """The least k ≥ 0 such that (numerator + k) / denominator satisfies the threshold (for ">="),
    or (numerator − k) / denominator does (for "<="). denominator > 0."""
    if comparison == ">=":
        k = max(0, math.ceil(threshold * denominator) - numerator)
        # ceil of a product of floats may be one off either way: settle it with satisfies itself.
        while k > 0 and satisfies((numerator + k - 1) / denominator, threshold, comparison):
            k -= 1
        while not satisfies((numerator + k) / denominator, threshold, comparison):
            k += 1
        return k
    k = max(0, numerator - math.floor(threshold * denominator))
    while k > 0 and satisfies((numerator - k + 1) / denominator, threshold, comparison):
        k -= 1
    while k < numerator and not satisfies((numerator - k) / denominator, threshold, comparison):
        k += 1
    return k


def behind(figure: str, threshold: float, comparison: Comparison,
           units: Mapping[str, tuple[str, Mapping[str, int]]],
           counts: tuple[str, ...] | None = None) -> tuple[int, list[Unit]]:
    """(how many of `units` the figure applies to, those under the threshold worst first).

    `units`: code -> (name, counters). A unit whose denominator is 0 (a rural community for an
    urban figure, a town for a streets figure) is not counted. Worst first: the largest shortfall,
    then the farthest value from the threshold, then by code. `counts`: the tiers of organizations
    the target counts (None: every tier).
    """
    spec = FIGURES[figure]
    top = numerator_of(figure, None, counts)
    counted = 0
    out: list[Unit] = []
    for code, (name, counters) in units.items():
        numerator = sum(counters.get(c, 0) for c in top)
        denominator = sum(counters.get(c, 0) for c in spec.denominator)
        if denominator <= 0:
            continue
        counted += 1
        value = numerator / denominator
        if satisfies(value, threshold, comparison):
            continue
        out.append(Unit(code, name, value, numerator, denominator,
                        short_of(threshold, comparison, numerator, denominator)))
    sign = 1 if comparison == ">=" else -1
    out.sort(key=lambda u: (-u.short, sign * u.value, u.code))
    return counted, out
