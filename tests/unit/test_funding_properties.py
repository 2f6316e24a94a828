"""Funding as targets counts it (domain/funding.py) against an independent recount at every tier,
province to community, on generated organizations and projects in any order and batching."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import events as ev
from services.targets.domain import coverage as cov
from services.targets.domain import funding
from tests.support.coverage_facts import COMMUNITIES, day, moved_in_batches, org_facts, project, regions, to_facts

FUNDING = set(funding.FUNDING_COUNTERS)


@st.composite
def funded(draw: st.DrawFn) -> tuple[list[ev.Payload], list[int]]:
    facts: list[ev.Payload] = []
    orgs: list[list[ev.Payload]] = []
    for _ in range(draw(st.integers(1, 5))):
        batch = draw(org_facts())
        orgs.append(batch)
        facts += batch
    for _ in range(draw(st.integers(0, 5))):
        pid = uuid.uuid4()
        awarded = day(draw(st.integers(0, 1200)))
        starts = awarded + timedelta(days=draw(st.integers(0, 60)))
        program = draw(st.sampled_from(list(ev.FundingProgram)))
        amount = draw(st.integers(1, 10**9))
        if draw(st.booleans()):   # directly to an organization, counted at its first community
            recipient = draw(st.sampled_from(orgs))
            org_id = recipient[0].organization_id  # type: ignore[attr-defined]
            region = recipient[0].community_code  # type: ignore[attr-defined]
            facts.append(ev.ProjectFunded(
                project_id=pid, name="p", program=program, funder_region=region[:6], funder_department="民政局",
                recipient_organization_id=org_id, region_code=region, amount_fen=amount,
                awarded_on=awarded, starts_on=starts, ends_on=starts + timedelta(days=365)))
        else:                     # through a hub of a township, for several organizations
            served = draw(st.lists(st.sampled_from(orgs), min_size=1, max_size=3,
                                   unique_by=lambda o: o[0].organization_id))  # type: ignore[attr-defined]
            township = draw(st.sampled_from(sorted({c[:9] for c in COMMUNITIES})))
            facts.append(ev.ProjectFunded(
                project_id=pid, name="p", program=program, funder_region=township[:4], funder_department="民政局",
                recipient_organization_id=uuid.uuid4(), hub_id=uuid.uuid4(),
                beneficiary_organization_ids=[o[0].organization_id for o in served],  # type: ignore[attr-defined]
                region_code=township, amount_fen=amount, awarded_on=awarded, starts_on=starts,
                ends_on=starts + timedelta(days=200)))
        if draw(st.booleans()):
            facts.append(ev.FundedProjectEnded(
                project_id=pid, outcome=draw(st.sampled_from(list(ev.ProjectOutcome))),
                ended_on=awarded + timedelta(days=draw(st.integers(0, 500)))))
    return facts, draw(st.permutations(range(len(facts))))


def community_on(facts: list[ev.Payload], oid: uuid.UUID, on: date) -> str | None:
    """The oracle's own: an organization's community at the end of a day (facts of a day in stream order)."""
    community: str | None = None
    dated = [(p.filed_on if isinstance(p, ev.OrganizationFiled) else p.registered_on
              if isinstance(p, ev.OrganizationRegistered) else p.effective_on, i, p)
             for i, p in enumerate(facts)
             if isinstance(p, ev.OrganizationFiled | ev.OrganizationRegistered | ev.OrganizationUpdated)
             and p.organization_id == oid]
    for when, _, p in sorted(dated, key=lambda t: (t[0], t[1])):
        if when > on:
            continue
        if isinstance(p, ev.OrganizationFiled):
            community = community or p.community_code
        elif isinstance(p, ev.OrganizationRegistered):
            community = p.community_code
        elif community is not None and p.community_code is not None:
            community = p.community_code
    return community


def recount(facts: list[ev.Payload], on: date) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    projects = [p for p in facts if isinstance(p, ev.ProjectFunded)]
    ended: dict[uuid.UUID, date] = {}
    for p in facts:
        if isinstance(p, ev.FundedProjectEnded):
            ended[p.project_id] = min(ended.get(p.project_id, p.ended_on), p.ended_on)
    for p in projects:
        for r in regions(p.region_code):
            if p.awarded_on <= on:
                for name in ("funding_fen", f"funding_fen_{p.program.value}"):
                    out[(r, name)] += p.amount_fen
                for name in ("funded_projects", f"funded_projects_{p.program.value}"):
                    out[(r, name)] += 1
            end = ended.get(p.project_id)
            if p.starts_on <= on and (end is None or on < max(end, p.starts_on)):
                out[(r, "funded_projects_active")] += 1
    starts: dict[uuid.UUID, tuple[date, str]] = {}
    for p in facts:
        if isinstance(p, ev.OrganizationFiled | ev.OrganizationRegistered):
            when = p.filed_on if isinstance(p, ev.OrganizationFiled) else p.registered_on
            starts[p.organization_id] = min(starts.get(p.organization_id, (when, p.community_code)),
                                            (when, p.community_code))
    for start, community in starts.values():
        if start <= on:
            for r in regions(community):
                out[(r, "orgs_new")] += 1
    first_award: dict[uuid.UUID, date] = {}
    for p in projects:
        for oid in (p.beneficiary_organization_ids if p.hub_id else [p.recipient_organization_id]):
            first_award[oid] = min(first_award.get(oid, p.awarded_on), p.awarded_on)
    for oid, awarded in first_award.items():
        if oid not in starts or awarded > on or awarded < starts[oid][0]:
            continue
        community = community_on(facts, oid, awarded)
        assert community is not None
        started = starts[oid][0]
        year_later = date(started.year + 1, started.month, started.day) if (started.month, started.day) != (2, 29) \
            else date(started.year + 1, 3, 1)
        for r in regions(community):
            out[(r, "orgs_supported")] += 1
            if awarded < year_later:
                out[(r, "orgs_new_supported_first_year")] += 1
    return +out


def only_funding(counts: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
    return Counter({k: v for k, v in counts.items() if k[1] in FUNDING and v})


@settings(max_examples=150, deadline=None)
@given(funded(), st.integers(1, 5))
def test_funding_rolls_up_to_a_recount_at_every_tier(stream: tuple[list[ev.Payload], list[int]],
                                                     batches: int) -> None:
    """Amount, projects (per program), running projects, organizations supported, new organizations
    and those funded within their first year: the projection, applied in any order and batching,
    equals a recount from the facts at each of the five tiers, on every day something moved."""
    payloads, order = stream
    facts = to_facts(payloads)
    from_scratch = cov.total(cov.contribution(t) for t in project(facts).values())
    assert moved_in_batches(facts, order, batches, project) == from_scratch
    moved = {d for _, _, d in from_scratch}
    for d in sorted(moved | {d - timedelta(days=1) for d in moved} | {date(2030, 1, 1)}):
        assert only_funding(cov.as_of(from_scratch, d)) == recount(payloads, d), d


def test_a_leap_day_organization_has_its_first_year_until_the_first_of_march() -> None:
    assert funding.anniversary(date(2024, 2, 29)) == date(2025, 3, 1)
    assert funding.anniversary(date(2024, 3, 1)) == date(2025, 3, 1)
