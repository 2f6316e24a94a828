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

Division changes (domain/lineage.py): a project or a supported organization at a community (or
township) recoded or merged counts at the successor from the change's day: the running project's
state moves then, and what it was awarded moves with a pair of pulses on that day (taken off the
old code, added at the new one), so a region's figures after the change equal a recount of the
projects at their codes of that day, and the figures as of a day before are unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date

from contracts import events as ev

from .coverage import State, Timeline, Vector, coverage_regions, squash, vectors
from .lineage import Lineage

NO_LINEAGE = Lineage()

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


def _moves(region: str, since: date, lineage: Lineage) -> list[tuple[date, str, str]]:
    """(day, old, new) for each change after `since` of the code standing for `region`."""
    out: list[tuple[date, str, str]] = []
    where = lineage.resolve(region, since)
    # In day order: a chain's later link may have taken effect first (days() follows the chain).
    for day in sorted(set(lineage.days(region))):
        now = lineage.resolve(region, day)
        if day > since and now != where:
            out.append((day, where, now))
            where = now
    return out


def project_timeline(facts: Sequence[tuple[ev.Payload, tuple[object, ...]]],
                     lineage: Lineage = NO_LINEAGE) -> Timeline:
    """A project from its facts (payload, sort key): nothing until its award is known; ended by the
    earliest end recorded (registry records one, a redelivery repeats it)."""
    awarded = next((p for p, _ in sorted(facts, key=lambda f: f[1]) if isinstance(p, ev.ProjectFunded)), None)
    if awarded is None:
        return Timeline("fund")
    ends = [p.ended_on for p, _ in facts if isinstance(p, ev.FundedProjectEnded)]
    end = max(min(ends), awarded.starts_on) if ends else None
    region, program = awarded.region_code, awarded.program.value
    segments: list[tuple[date, State | None]] = [(awarded.starts_on, (lineage.resolve(region, awarded.starts_on),
                                                                       program))]
    segments += [(day, (new, program)) for day, _, new in _moves(region, awarded.starts_on, lineage)
                 if end is None or day < end]
    if end is not None:
        segments.append((end, None))
    pulses: list[tuple[date, State]] = [
        (awarded.awarded_on, (lineage.resolve(region, awarded.awarded_on), program, awarded.amount_fen))]
    for day, old, new in _moves(region, awarded.awarded_on, lineage):
        pulses += [(day, (old, program, -awarded.amount_fen, -1)), (day, (new, program, awarded.amount_fen))]
    return Timeline("fund", squash(segments), tuple(pulses))


def _project_state(state: State) -> Vector:
    region, _ = state
    return Counter({(r, "funded_projects_active"): 1 for r in coverage_regions(region)})


def _project_pulse(pulse: State) -> Vector:
    # (region, program, amount), or with -1 when a division change takes it off its old code.
    region, program, amount = pulse[:3]
    n = pulse[3] if len(pulse) > 3 else 1
    out: Vector = Counter()
    for r in coverage_regions(region):
        out[(r, "funding_fen")] += amount
        out[(r, f"funding_fen_{program}")] += amount
        out[(r, "funded_projects")] += n
        out[(r, f"funded_projects_{program}")] += n
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
                       awards: Sequence[ev.ProjectFunded], lineage: Lineage = NO_LINEAGE) -> Timeline:
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
    pulses: list[tuple[date, State]] = [(first, (lineage.resolve(community, first), first_year))]
    for day, old, new in _moves(community, first, lineage):
        pulses += [(day, (old, first_year, -1)), (day, (new, first_year))]
    return Timeline("supported", (), tuple(pulses))


def _supported_pulse(pulse: State) -> Vector:
    # (community, first year), or with -1 when a division change takes it off its old code.
    community, first_year = pulse[:2]
    n = pulse[2] if len(pulse) > 2 else 1
    out: Vector = Counter()
    for r in coverage_regions(community):
        out[(r, "orgs_supported")] += n
        if first_year:
            out[(r, "orgs_new_supported_first_year")] += n
    return out


vectors("supported", lambda _: Counter(), _supported_pulse)


def recount(projects: Sequence[ev.ProjectFunded], ended: dict[str, date], region: str, day: date,
            lineage: Lineage = NO_LINEAGE) -> dict[str, int]:
    """A region's project counters as of the end of `day`, counted from the projects themselves (the
    oracle the projection is tested against): fen and projects awarded by then, projects running,
    each project at the code standing for its region on `day`."""
    out: Counter[str] = Counter()
    for p in projects:
        if not lineage.resolve(p.region_code, day).startswith(region):
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
