"""Coverage as a sum of contributions, one per entity, kept per region, counter and day.

An entity (an organization, a township's hub coverage, a county's divisions, a person in a talent
pool …) has a *timeline*: the states it was in, each from a date on, plus one-off *pulses* (a
filing, a training completion). Its contribution is the telescoped difference of the vectors of
consecutive states, put at the day each state began, plus its pulses; the value of a counter as
of the end of day D is the sum of the deltas of days ≤ D. Deltas are kept per day, not per month,
so that "as of 2022-03-01" leaves out a filing of 03-02 (months are summed from days when asked).

When facts about an entity arrive (in any order, late, twice), its timeline is recomputed from all
its facts, and coverage moves by contribution(new) − contribution(old): O(tiers × counters) rows,
never a recount. Because the timeline depends only on the set of facts, not their arrival order,
the projection does not either.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from contracts.codes import ancestors

# Reference data (communities, townships) counts from here on: before any plan this system serves.
EPOCH = date(2000, 1, 1)

Vector = Counter[tuple[str, str]]            # (region, counter) -> amount
Contribution = Counter[tuple[str, str, date]]  # (region, counter, day) -> delta
State = tuple[Any, ...]


def coverage_regions(code: str) -> list[str]:
    """The regions a fact at `code` counts in: its province, city, county, township and (for a
    fact at a community) community. Five rows per counter: plans' first target is per community."""
    return ancestors(code)


@dataclass(frozen=True)
class Timeline:
    """States (None = not counted) each holding from its date on, sorted; and one-off pulses."""

    kind: str
    segments: tuple[tuple[date, State | None], ...] = ()
    pulses: tuple[tuple[date, State], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind,
                "segments": [[d.isoformat(), list(s) if s is not None else None] for d, s in self.segments],
                "pulses": [[d.isoformat(), list(p)] for d, p in self.pulses]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Timeline:
        return cls(kind=data["kind"],
                   segments=tuple((date.fromisoformat(d), _frozen(s) if s is not None else None)
                                  for d, s in data["segments"]),
                   pulses=tuple((date.fromisoformat(d), _frozen(p)) for d, p in data["pulses"]))


def _frozen(value: list[Any]) -> tuple[Any, ...]:
    """JSON lists back to tuples, nested ones too: a stored state then equals a recomputed one
    (a county's divisions state nests one tuple per township and community)."""
    return tuple(_frozen(v) if isinstance(v, list) else v for v in value)


VectorOf = Callable[[State], Vector]
_VECTORS: dict[str, tuple[VectorOf, VectorOf]] = {}


def vectors(kind: str, state: VectorOf, pulse: VectorOf | None = None) -> None:
    """Register how states and pulses of an entity kind count."""
    _VECTORS[kind] = (state, pulse or (lambda _: Counter()))


def _state_deltas(timeline: Timeline, start: int, out: Contribution, sign: int) -> None:
    """Add sign × the telescoped deltas of the segments from `start` on (the one before `start`, if
    any, is the state they move away from)."""
    state_vector = _VECTORS[timeline.kind][0]
    segments = timeline.segments
    before = segments[start - 1][1] if start > 0 else None
    previous: Vector = state_vector(before) if before is not None else Counter()
    for day, state in segments[start:]:
        current = state_vector(state) if state is not None else Counter()
        for key in previous.keys() | current.keys():
            delta = current.get(key, 0) - previous.get(key, 0)
            if delta:
                out[(key[0], key[1], day)] += sign * delta
        previous = current


def _pulse_deltas(kind: str, pulses: Counter[tuple[date, State]], out: Contribution) -> None:
    pulse_vector = _VECTORS[kind][1]
    for (day, pulse), times in pulses.items():
        if times:
            for (region, counter), amount in pulse_vector(pulse).items():
                out[(region, counter, day)] += times * amount


def contribution(timeline: Timeline | None) -> Contribution:
    out: Contribution = Counter()
    if timeline is None:
        return out
    _state_deltas(timeline, 0, out, 1)
    _pulse_deltas(timeline.kind, Counter(timeline.pulses), out)
    return out


def difference(old: Timeline | None, new: Timeline | None) -> Contribution:
    """contribution(new) − contribution(old), without the parts they share: segments up to the
    first that differs contribute the same deltas to both, and so do pulses in both."""
    if old is None or new is None or old.kind != new.kind:
        delta = contribution(new)
        delta.subtract(contribution(old))
        return Counter({k: v for k, v in delta.items() if v})
    if old == new:
        return Counter()
    shared = 0
    for a, b in zip(old.segments, new.segments, strict=False):
        if a != b:
            break
        shared += 1
    out: Contribution = Counter()
    _state_deltas(new, shared, out, 1)
    _state_deltas(old, shared, out, -1)
    pulses = Counter(new.pulses)
    pulses.subtract(Counter(old.pulses))
    _pulse_deltas(new.kind, pulses, out)
    return Counter({k: v for k, v in out.items() if v})


def total(contributions: Iterable[Contribution]) -> Contribution:
    out: Contribution = Counter()
    for c in contributions:
        out.update(c)
    return Counter({k: v for k, v in out.items() if v})


def as_of(deltas: Mapping[tuple[str, str, date], int], day: date) -> Counter[tuple[str, str]]:
    """Counter values at the end of `day`, from per-day deltas."""
    out: Counter[tuple[str, str]] = Counter()
    for (region, counter, d), delta in deltas.items():
        if d <= day:
            out[(region, counter)] += delta
    return Counter({k: v for k, v in out.items() if v})


def squash(segments: Sequence[tuple[date, State | None]]) -> tuple[tuple[date, State | None], ...]:
    """Drop segments that repeat the state before them (keeps stored timelines small)."""
    out: list[tuple[date, State | None]] = []
    for day, state in sorted(segments, key=lambda s: s[0]):
        if out and out[-1][0] == day:
            out[-1] = (day, state)
        elif not out or out[-1][1] != state:
            out.append((day, state))
    if out and out[0][1] is None:
        out.pop(0)
    return tuple(out)
