"""Incubation bases at every tier the plans name (issue 22: Guanghan's "市、镇(街道)、村(社区)三级社会组织
孵化体系", Leshan's "省—市—县—乡镇—村(社区)五级联动"): a base at a community is accepted, counted at its own
tier (bases_<tier>) and rolled up; a community with one is covered (communities_with_base) however many
it has; equal to a recount at every tier, in any order."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts import events as ev
from services.targets.domain import coverage as cov
from tests.support.coverage_facts import COMMUNITIES, TOWNSHIPS, day, moved_in_batches, project, regions, to_facts

PLACES = sorted(COMMUNITIES) + sorted(TOWNSHIPS) + ["510681", "5106"]
COUNTERS = {"bases", "bases_city", "bases_county", "bases_township", "bases_community",
            "communities_with_base", "communities_urban_with_base", "communities_rural_with_base"}
TIER = {12: "community", 9: "township", 6: "county", 4: "city"}


def opened(base: uuid.UUID, place: str, on: date) -> ev.IncubationBaseOpened:
    townships = [] if len(place) == 12 else [t for t in sorted(TOWNSHIPS) if t.startswith(place)][:1]
    return ev.IncubationBaseOpened(base_id=base, name="孵化点", region_code=place, covered_townships=townships,
                                   opened_on=on)


@st.composite
def bases(draw: st.DrawFn) -> tuple[list[ev.Payload], list[int]]:
    facts: list[ev.Payload] = []
    for _ in range(draw(st.integers(1, 8))):
        base = uuid.uuid4()
        start = draw(st.integers(0, 900))
        place = draw(st.sampled_from([p for p in PLACES if len(p) != 9 or any(t == p for t in TOWNSHIPS)]))
        facts.append(opened(base, place, day(start)))
        if draw(st.booleans()):
            facts.append(ev.IncubationBaseClosed(base_id=base, closed_on=day(start + draw(st.integers(0, 400)))))
    return facts, draw(st.permutations(range(len(facts))))


def recount(facts: list[ev.Payload], on: date) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    closed = {p.base_id: p.closed_on for p in facts if isinstance(p, ev.IncubationBaseClosed)}
    covered: set[str] = set()
    for p in facts:
        if not isinstance(p, ev.IncubationBaseOpened):
            continue
        end = closed.get(p.base_id)
        if not (p.opened_on <= on and (end is None or on < max(end, p.opened_on))):
            continue
        for r in regions(p.region_code):
            out[(r, "bases")] += 1
            out[(r, f"bases_{TIER[len(p.region_code)]}")] += 1
        if len(p.region_code) == 12:
            covered.add(p.region_code)
    for community in covered:
        if COMMUNITIES[community] == "other":   # a community of neither kind is no plan's unit
            continue
        for r in regions(community):
            out[(r, "communities_with_base")] += 1
            out[(r, f"communities_{COMMUNITIES[community]}_with_base")] += 1
    return +out


@settings(max_examples=150, deadline=None)
@given(bases(), st.integers(1, 4))
def test_bases_at_every_tier_roll_up_to_a_recount(stream: tuple[list[ev.Payload], list[int]], batches: int) -> None:
    payloads, order = stream
    facts = to_facts(payloads)
    from_scratch = cov.total(cov.contribution(t) for t in project(facts).values())
    assert moved_in_batches(facts, order, batches, project) == from_scratch
    moved = {d for _, _, d in from_scratch}
    for d in sorted(moved | {d - timedelta(days=1) for d in moved}):
        got = Counter({k: v for k, v in cov.as_of(from_scratch, d).items() if k[1] in COUNTERS})
        assert got == recount(payloads, d), d


def test_a_base_opens_at_a_community_and_covers_no_township() -> None:
    """"村(社区)" is a tier of the incubation system: refused before issue 22 ("a base opens at a
    township, county or city"); a community base lists no township, a township base at least one."""
    opened(uuid.uuid4(), "510681001014", date(2023, 1, 1))
    with pytest.raises(ValidationError, match="covers its own community"):
        ev.IncubationBaseOpened(name="b", region_code="510681001014", covered_townships=["510681001"],
                                opened_on=date(2023, 1, 1))
    with pytest.raises(ValidationError, match="at least one"):
        ev.IncubationBaseOpened(name="b", region_code="510681001", opened_on=date(2023, 1, 1))
