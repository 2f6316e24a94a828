"""Funding follows division changes (domain/funding.py with domain/lineage.py): a project at a code
recoded or merged counts at its successor from the change's day, so the projection equals, on
every day, a recount of the projects at the code standing for their region that day."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import events as ev
from services.targets.domain import coverage as cov
from services.targets.domain import funding
from services.targets.domain.lineage import Change, Lineage
from tests.support.coverage_facts import day, regions

# Communities of two townships of one county, and the codes a change may give them.
CODES = ["510681001011", "510681001014", "510681101201", "510681101202", "510681102001"]


@st.composite
def changed_projects(draw: st.DrawFn) -> tuple[list[ev.ProjectFunded], dict[uuid.UUID, date], Lineage]:
    changes = []
    for code in draw(st.lists(st.sampled_from(CODES), unique=True, max_size=3)):
        successor = draw(st.sampled_from([c for c in CODES if c > code] or ["510681103001"]))
        changes.append(Change(code, day(draw(st.integers(0, 900))), draw(st.sampled_from(["merged", "recoded"])),
                              successor))
    projects, ended = [], {}
    for _ in range(draw(st.integers(1, 5))):
        awarded = day(draw(st.integers(0, 900)))
        starts = awarded + timedelta(days=draw(st.integers(0, 60)))
        p = ev.ProjectFunded(
            name="p", program=draw(st.sampled_from(list(ev.FundingProgram))), funder_region="5106",
            funder_department="民政局", recipient_organization_id=uuid.uuid4(),
            region_code=draw(st.sampled_from(CODES)), amount_fen=draw(st.integers(1, 10**9)),
            awarded_on=awarded, starts_on=starts, ends_on=starts + timedelta(days=365))
        projects.append(p)
        if draw(st.booleans()):
            ended[p.project_id] = awarded + timedelta(days=draw(st.integers(0, 500)))
    return projects, ended, Lineage(changes)


@settings(max_examples=200, deadline=None)
@given(changed_projects())
def test_funding_after_a_change_equals_a_recount_at_that_days_codes(
        drawn: tuple[list[ev.ProjectFunded], dict[uuid.UUID, date], Lineage]) -> None:
    projects, ended, lineage = drawn
    deltas = cov.total(cov.contribution(funding.project_timeline(
        [(p, (0,))] + ([(ev.FundedProjectEnded(project_id=p.project_id, outcome="completed",
                                               ended_on=ended[p.project_id]), (1,))]
                       if p.project_id in ended else []), lineage)) for p in projects)
    ends = {str(k): v for k, v in ended.items()}
    days = {d for _, _, d in deltas} | {d for p in projects for d in lineage.days(p.region_code)}
    for d in sorted(days | {x - timedelta(days=1) for x in days} | {date(2030, 1, 1)}):
        counted = cov.as_of(deltas, d)
        places = {r for p in projects for r in regions(lineage.resolve(p.region_code, d))} | \
                 {r for p in projects for r in regions(p.region_code)}
        for region in places:
            mine = Counter({k: v for (r, k), v in counted.items() if r == region and v})
            assert mine == Counter({k: v for k, v in funding.recount(projects, ends, region, d, lineage).items()
                                    if v}), (region, d)
