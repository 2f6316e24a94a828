"""Funding as targets counts it (pure): funded projects and the organizations they support.

Registry records the projects (ProjectFunded, FundedProjectEnded); targets turns them into
counters per region and day beside coverage, so a region's funding answers as of any day and rolls
up from community to province the way organizations do:

- a project (entity `fund:<project>`) is a pulse on its award day at the region it counts in
  (the recipient's community, or the township or county of the hub acting for organizations
  without legal personality): `funding_fen` (its amount, in whole fen) and `funded_projects`, each
  also per program; while it runs (from its start to the day it ended) it counts in
  `funded_projects_active`;
- an organization a project supports (entity `supported:<organization>`, whose inputs are the
  organization's own facts and every project that supports it) is a pulse on the day of its first
  award at its community then: `orgs_supported`; and `orgs_new_supported_first_year` when that
  day lies within its first year (before the anniversary of its filing or registration). The
  denominator, `orgs_new`, is the organization's own pulse on the day it started (entities.py).

Both pulses fall on the day of the award, never earlier, so a figure as of a past day counts only
what was known to have happened by then.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date

from contracts import events as ev

from .coverage import State, Timeline, Vector, coverage_regions, squash, vectors

PROGRAMS = tuple(p.value for p in ev.FundingProgram)
FUNDING_COUNTERS: tuple[str, ...] = (
    "funding_fen", *(f"funding_fen_{p}" for p in PROGRAMS),
    "funded_projects", *(f"funded_projects_{p}" for p in PROGRAMS),
    "funded_projects_active",
    "orgs_supported", "orgs_new", "orgs_new_supported_first_year",
)


def anniversary(day: date) -> date:
    """The same day a year later (29 February: 1 March): the end of an organization's first year."""
    try:
        return day.replace(year=day.year + 1)
    except ValueError:
        return date(day.year + 1, 3, 1)


def project_timeline(facts: Sequence[tuple[ev.Payload, tuple[object, ...]]]) -> Timeline:
    """A project from its facts (payload, sort key): nothing until its award is known; ended by the
    earliest end recorded (registry records one, a redelivery repeats it)."""
    awarded = next((p for p, _ in sorted(facts, key=lambda f: f[1]) if isinstance(p, ev.ProjectFunded)), None)
    if awarded is None:
        return Timeline("fund")
    ends = [p.ended_on for p, _ in facts if isinstance(p, ev.FundedProjectEnded)]
    end = max(min(ends), awarded.starts_on) if ends else None
    segments: list[tuple[date, State | None]] = [(awarded.starts_on, (awarded.region_code, awarded.program.value))]
    if end is not None:
        segments.append((end, None))
    pulse = (awarded.region_code, awarded.program.value, awarded.amount_fen)
    return Timeline("fund", squash(segments), ((awarded.awarded_on, pulse),))


def _project_state(state: State) -> Vector:
    region, _ = state
    return Counter({(r, "funded_projects_active"): 1 for r in coverage_regions(region)})


def _project_pulse(pulse: State) -> Vector:
    region, program, amount = pulse
    out: Vector = Counter()
    for r in coverage_regions(region):
        out[(r, "funding_fen")] += amount
        out[(r, f"funding_fen_{program}")] += amount
        out[(r, "funded_projects")] += 1
        out[(r, f"funded_projects_{program}")] += 1
    return out


vectors("fund", _project_state, _project_pulse)


def organization_start(facts: Sequence[ev.Payload]) -> tuple[date, str] | None:
    """When and where an organization started: its first filing or registration."""
    starts = [(p.filed_on, p.community_code) for p in facts if isinstance(p, ev.OrganizationFiled)]
    starts += [(p.registered_on, p.community_code) for p in facts if isinstance(p, ev.OrganizationRegistered)]
    return min(starts) if starts else None


def community_on(facts: Sequence[tuple[ev.Payload, tuple[object, ...]]], day: date) -> str | None:
    """An organization's community at the end of `day`, from its facts in order."""
    community: str | None = None
    for p, _ in sorted(facts, key=lambda f: f[1]):
        if isinstance(p, ev.OrganizationFiled):
            if community is None and p.filed_on <= day:
                community = p.community_code
        elif isinstance(p, ev.OrganizationRegistered):
            if p.registered_on <= day:
                community = p.community_code
        elif isinstance(p, ev.OrganizationUpdated):
            if p.community_code is not None and p.effective_on <= day and community is not None:
                community = p.community_code
    return community


def supported_timeline(org_facts: Sequence[tuple[ev.Payload, tuple[object, ...]]],
                       awards: Sequence[ev.ProjectFunded]) -> Timeline:
    """An organization supported by projects: a pulse on its first award at its community then (and,
    within its first year, the first-year pulse). Nothing until the organization's start is known,
    or when the first award falls before it (registry refuses that; a late filing may correct it)."""
    start = organization_start([p for p, _ in org_facts])
    if start is None or not awards:
        return Timeline("supported")
    first = min(a.awarded_on for a in awards)
    community = community_on(org_facts, first)
    if first < start[0] or community is None:
        return Timeline("supported")
    first_year = first < anniversary(start[0])
    return Timeline("supported", (), ((first, (community, first_year)),))


def _supported_pulse(pulse: State) -> Vector:
    community, first_year = pulse
    out: Vector = Counter()
    for r in coverage_regions(community):
        out[(r, "orgs_supported")] += 1
        if first_year:
            out[(r, "orgs_new_supported_first_year")] += 1
    return out


vectors("supported", lambda _: Counter(), _supported_pulse)


def recount(projects: Sequence[ev.ProjectFunded], ended: dict[str, date], region: str, day: date
            ) -> dict[str, int]:
    """A region's project counters as of the end of `day`, counted from the projects themselves (the
    oracle the projection is tested against): fen and projects awarded by then, projects running."""
    out: Counter[str] = Counter()
    for p in projects:
        if not p.region_code.startswith(region):
            continue
        if p.awarded_on <= day:
            out["funding_fen"] += p.amount_fen
            out[f"funding_fen_{p.program.value}"] += p.amount_fen
            out["funded_projects"] += 1
            out[f"funded_projects_{p.program.value}"] += 1
        end = ended.get(str(p.project_id))
        if p.starts_on <= day and (end is None or day < max(end, p.starts_on)):
            out["funded_projects_active"] += 1
    return dict(out)
