"""Facilities as targets counts them (issue 22): each running facility at the tier it opened at
(`<kind>s`, `<kind>s_<tier>`, rolled up), and each division with one running of its own once however
many it has (`<tier-plural>_with_<kind>`: the city plan's "在2个县区、10个街道(乡镇)、20个社区(村)"),
streets/towns and urban/rural communities only (what the denominators count). In any order and
batching, and under a merge of townships (the successor takes the merged one's stations from the
day), the projection equals a recount on every day something moved."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import events as ev
from services.targets.domain import coverage as cov
from services.targets.domain.lineage import Change, Lineage
from services.targets.domain.metrics import FACILITY_COUNTERS, TIER_PLURAL
from tests.support.coverage_facts import COMMUNITIES, TOWNSHIPS, day, moved_in_batches, project, regions, to_facts

TIER = {12: "community", 9: "township", 6: "county", 4: "city"}
KINDS = {k.value: ev.FACILITY_TIERS[k] for k in ev.FacilityKind}
# A township outside the counted kinds: its stations count as stations, not as a covered township.
KINDS_OF = COMMUNITIES | TOWNSHIPS | {"510681102": "other"}
PLACES = sorted(COMMUNITIES) + sorted(TOWNSHIPS) + ["510681102", "510681", "511102", "5106", "5111"]
MERGED, SUCCESSOR = "510681101", "510681001"


@st.composite
def facilities(draw: st.DrawFn) -> tuple[list[ev.Payload], list[int]]:
    facts: list[ev.Payload] = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(sorted(KINDS)))
        place = draw(st.sampled_from([p for p in PLACES if TIER[len(p)] in KINDS[kind]]))
        facility, start = uuid.uuid4(), draw(st.integers(0, 900))
        facts.append(ev.FacilityOpened(facility_id=facility, kind=kind, name="站", region_code=place,
                                       opened_on=day(start)))
        if draw(st.booleans()):
            facts.append(ev.FacilityClosed(facility_id=facility, closed_on=day(start + draw(st.integers(0, 400)))))
    return facts, draw(st.permutations(range(len(facts))))


def recount(facts: list[ev.Payload], on: date, lineage: Lineage) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    closed = {p.facility_id: p.closed_on for p in facts if isinstance(p, ev.FacilityClosed)}
    covered: set[tuple[str, str]] = set()
    for p in facts:
        if not isinstance(p, ev.FacilityOpened):
            continue
        end = closed.get(p.facility_id)
        if not (p.opened_on <= on and (end is None or on < max(end, p.opened_on))):
            continue
        place = lineage.resolve(p.region_code, on)
        for r in regions(place):
            out[(r, f"{p.kind.value}s")] += 1
            out[(r, f"{p.kind.value}s_{TIER[len(place)]}")] += 1
        if len(place) < 9 or KINDS_OF[place] in ("street", "town", "township", "urban", "rural"):
            covered.add((place, p.kind.value))
    for place, kind in covered:
        for r in regions(place):
            out[(r, f"{TIER_PLURAL[TIER[len(place)]]}_with_{kind}")] += 1
    return +out


@settings(max_examples=150, deadline=None)
@given(facilities(), st.integers(1, 4), st.none() | st.integers(0, 1200))
def test_facilities_roll_up_to_a_recount_in_any_order_and_under_a_merge(
        stream: tuple[list[ev.Payload], list[int]], batches: int, merged_on: int | None) -> None:
    payloads, order = stream
    lineage = Lineage([Change(MERGED, day(merged_on), "merged", SUCCESSOR)] if merged_on is not None else [])
    facts = to_facts(payloads)
    from_scratch = cov.total(cov.contribution(t) for t in project(facts, KINDS_OF, lineage).values())
    assert moved_in_batches(facts, order, batches, lambda fs: project(fs, KINDS_OF, lineage)) == from_scratch
    moved = {d for _, _, d in from_scratch} | ({day(merged_on)} if merged_on is not None else set())
    for d in sorted(moved | {d - timedelta(days=1) for d in moved}):
        got = Counter({k: v for k, v in cov.as_of(from_scratch, d).items() if k[1] in FACILITY_COUNTERS})
        want = recount(payloads, d, lineage)
        assert got == want, d
        # A division is covered once however many it has: never more covered than running.
        for (region, counter), n in got.items():
            if "_with_" in counter:
                kind = counter.split("_with_", 1)[1]
                assert n <= got[(region, f"{kind}s")], (region, counter)
