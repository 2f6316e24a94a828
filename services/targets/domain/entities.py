"""Timelines of the things coverage counts, folded from their facts (pure, order-independent).

Facts are sorted by (the date they take effect, when they occurred, event id) before folding, so
the same set of facts gives the same timeline whatever order they arrived in. A fact that cannot
take effect yet (a deregistration whose filing has not arrived) simply leaves the entity uncounted
until the missing fact arrives; nothing is lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

from contracts import events as ev
from contracts.codes import tier_of

from . import funding
from .coverage import EPOCH, State, Timeline, Vector, coverage_regions, squash, vectors
from .lineage import Lineage
from .metrics import TIER_PLURAL

NO_LINEAGE = Lineage()


@dataclass(frozen=True)
class Fact:
    occurred_at: datetime
    event_id: UUID
    payload: ev.Payload

    @property
    def effective(self) -> date:
        return effective_date(self.payload)

    @property
    def order(self) -> tuple[date, datetime, str]:
        return (self.effective, self.occurred_at, str(self.event_id))


def effective_date(p: ev.Payload) -> date:
    match p:
        case ev.OrganizationFiled():
            return p.filed_on
        case ev.OrganizationRegistered():
            return p.registered_on
        case ev.OrganizationUpdated():
            return p.effective_on
        case ev.OrganizationDeregistered():
            return p.ended_on
        case ev.HubEstablished():
            return p.established_on
        case ev.HubDissolved():
            return p.dissolved_on
        case ev.IncubationBaseOpened():
            return p.opened_on
        case ev.IncubationBaseClosed():
            return p.closed_on
        case ev.PartyOrganizationFormed():
            return p.formed_on
        case ev.PartyOrganizationDissolved():
            return p.dissolved_on
        case ev.TalentPoolMemberAdded():
            return p.added_on
        case ev.TalentPoolMemberRemoved():
            return p.removed_on
        case ev.TrainingCompleted():
            return p.completed_on
        case ev.QualificationExamRecorded():
            return date(p.year, 1, 1)
        case ev.OutstandingOrganizationSelected():
            return date(p.year, 1, 1)
        case ev.DivisionChanged():
            return p.effective_on
        case ev.ProjectFunded():
            return p.awarded_on
        case ev.FundedProjectEnded():
            return p.ended_on
        case ev.FacilityOpened():
            return p.opened_on
        case ev.FacilityClosed():
            return p.closed_on
        case _:
            return EPOCH


def entity_key(p: ev.Payload) -> str | None:
    """The entity a fact is about (None: targets does not count it)."""
    match p:
        case (ev.OrganizationFiled() | ev.OrganizationRegistered() | ev.OrganizationUpdated()
              | ev.OrganizationDeregistered()):
            return f"org:{p.organization_id}"
        case ev.HubEstablished() | ev.HubDissolved():
            return f"hub:{p.hub_id}"
        case ev.IncubationBaseOpened() | ev.IncubationBaseClosed():
            return f"base:{p.base_id}"
        case ev.PartyOrganizationFormed() | ev.PartyOrganizationDissolved():
            return f"party:{p.party_organization_id}"
        case ev.ProjectFunded() | ev.FundedProjectEnded():
            return f"fund:{p.project_id}"
        case ev.FacilityOpened() | ev.FacilityClosed():
            return f"facility:{p.facility_id}"
        case ev.DivisionsImported():
            return f"div:{p.county.code}"
        case ev.DivisionChanged() if len(p.code) >= 6:
            # A change of a county, township or community is a fact of its county's divisions:
            # applying it recomputes what counts in the county (organizations, hubs and bases
            # follow), and a county's own end (recoded, merged) ends what its divisions count.
            return f"div:{p.code[:6]}"
        case ev.OutstandingOrganizationSelected():
            return f"outstanding:{p.county_code}:{p.year}:{p.organization_id}"
        case (ev.TalentPoolMemberAdded() | ev.TalentPoolMemberRemoved() | ev.TrainingCompleted()
              | ev.QualificationExamRecorded()):
            return f"person:{p.person_id}"
        case _:
            return None


def _sorted(facts: Sequence[Fact]) -> list[Fact]:
    return sorted(facts, key=lambda f: f.order)


# --- intervals: hubs, bases, party organizations ----------------------------------------------

@dataclass(frozen=True)
class Interval:
    region: str
    start: date
    end: date | None
    members: tuple[str, ...] = ()   # covered townships (base), organization ids (party), kind (facility)

    def active_on(self, day: date) -> bool:
        return self.start <= day and (self.end is None or day < self.end)


def interval(facts: Sequence[Fact]) -> Interval | None:
    """A hub, base or party organization from its facts; None until its opening fact is known."""
    opened: Interval | None = None
    end: date | None = None
    for f in _sorted(facts):
        p = f.payload
        match p:
            case ev.HubEstablished():
                opened = Interval(p.region_code, p.established_on, None)
            case ev.IncubationBaseOpened():
                opened = Interval(p.region_code, p.opened_on, None, tuple(sorted(p.covered_townships)))
            case ev.PartyOrganizationFormed():
                opened = Interval("", p.formed_on, None,
                                  tuple(sorted(str(o) for o in p.organization_ids)))
            case ev.FacilityOpened():
                opened = Interval(p.region_code, p.opened_on, None, (p.kind.value,))
            case (ev.HubDissolved() | ev.IncubationBaseClosed() | ev.PartyOrganizationDissolved()
                  | ev.FacilityClosed()):
                day = effective_date(p)
                end = day if end is None else min(end, day)
    if opened is None:
        return None
    if end is not None and end < opened.start:
        end = opened.start
    return Interval(opened.region, opened.start, end, opened.members)


def interval_timeline(kind: str, iv: Interval | None, lineage: Lineage = NO_LINEAGE) -> Timeline:
    """Counted at its region while open; where that region is merged or recoded, at the successor
    from the change's day. A facility's state carries its kind too."""
    if iv is None:
        return Timeline(kind)
    extra = iv.members if kind == "facility" else ()
    segments: list[tuple[date, State | None]] = [(iv.start, (lineage.resolve(iv.region, iv.start), *extra))]
    for day in lineage.days(iv.region):
        if day > iv.start and (iv.end is None or day < iv.end):
            segments.append((day, (lineage.resolve(iv.region, day), *extra)))
    if iv.end is not None:
        segments.append((iv.end, None))
    return Timeline(kind, squash(segments))


def _count_at(region: str, counter: str) -> Vector:
    return Counter({(r, counter): 1 for r in coverage_regions(region)})


vectors("hub", lambda s: _count_at(s[0], "hubs"))
def _base_vector(state: State) -> Vector:
    """A base counts in `bases` and, by the tier it opened at, in `bases_<tier>` (Guanghan's 三级 and
    Leshan's 五级 incubation systems count each tier's bases)."""
    out = _count_at(state[0], "bases")
    out.update(_count_at(state[0], f"bases_{tier_of(state[0])}"))
    return out


vectors("base", _base_vector)


# --- facilities: innovation bases, demonstration parks, social-work stations and rooms -----------


def _facility_vector(state: State) -> Vector:
    """A running facility counts in `<kind>s` and, by the tier it opened at, `<kind>s_<tier>`."""
    region, kind = state[0], state[1]
    out = _count_at(region, f"{kind}s")
    out.update(_count_at(region, f"{kind}s_{tier_of(region)}"))
    return out


vectors("facility", _facility_vector)

# A township counts when it is a street, town or township, a community when urban or rural: what
# the denominators (streets, towns, communities_<kind>) count, so a share stays within 1.
_COUNTED_KINDS = {"township": ("street", "town", "township"), "community": ("urban", "rural")}


def facility_covered_timeline(member: str, region_kind: str | None, intervals: Sequence[Interval],
                              ended_on: date | None = None) -> Timeline:
    """A division (`member` is "<kind>:<code>") has a facility of that kind while at least one of
    `intervals` (the facilities opened there, and at its predecessors from the day it took them
    over) runs, until the day its code ends (merged, recoded, abolished)."""
    kind, code = member.split(":", 1)
    counted = _COUNTED_KINDS.get(tier_of(code))
    if counted is not None and region_kind not in counted:
        return Timeline("faccov")
    days = sorted({iv.start for iv in intervals} | {iv.end for iv in intervals if iv.end}
                  | ({ended_on} if ended_on else set()))
    segments = [(d, (code, kind) if (ended_on is None or d < ended_on)
                 and any(iv.active_on(d) for iv in intervals) else None) for d in days]
    return Timeline("faccov", squash(segments))


vectors("faccov", lambda s: _count_at(s[0], f"{TIER_PLURAL[tier_of(s[0])]}_with_{s[1]}"))


def facility_coverage_members(members: Iterable[str], lineage: Lineage) -> set[str]:
    """The divisions whose facility coverage a facility's place touches ("<kind>:<code>"): its own
    and each code that comes to stand for it (a merged township's successor takes its stations)."""
    out = set()
    for member in members:
        kind, code = member.split(":", 1)
        out.add(member)
        out.update(f"{kind}:{lineage.resolve(code, day)}" for day in lineage.days(code))
    return out


# --- a township's hub or base coverage ---------------------------------------------------------

def covered_timeline(kind: str, township: str, township_kind: str | None,
                     intervals: Sequence[Interval], ended_on: date | None = None) -> Timeline:
    """A township is covered while at least one of `intervals` is active (union of intervals),
    until the day it ends (merged, recoded or abolished: it no longer counts from then)."""
    if township_kind not in ("street", "town", "township") and not (
            kind == "basecov" and len(township) == 12 and township_kind in ("urban", "rural")):
        return Timeline(kind)
    days = sorted({iv.start for iv in intervals} | {iv.end for iv in intervals if iv.end}
                  | ({ended_on} if ended_on else set()))
    segments = [(d, (township, township_kind) if (ended_on is None or d < ended_on)
                 and any(iv.active_on(d) for iv in intervals) else None) for d in days]
    return Timeline(kind, squash(segments))


def _inherited(intervals: Sequence[Interval], since: date) -> list[Interval]:
    """A predecessor's intervals as its successor's from the day it took over."""
    out = []
    for iv in intervals:
        start = max(iv.start, since)
        if iv.end is None or start < iv.end:
            out.append(Interval(iv.region, start, iv.end, iv.members))
    return out


def _coverage_vector(suffix: str) -> Any:
    def vector(state: State) -> Vector:
        township, kind = state
        if kind in ("urban", "rural"):   # a community with an incubation point of its own
            out = _count_at(township, f"communities_with_{suffix}")
            out.update(_count_at(township, f"communities_{kind}_with_{suffix}"))
            return out
        return _count_at(township, f"{'streets' if kind == 'street' else 'towns'}_with_{suffix}")
    return vector


vectors("hubcov", _coverage_vector("hub"))
vectors("basecov", _coverage_vector("base"))


# --- divisions: communities and townships ------------------------------------------------------

def divisions_timeline(facts: Sequence[Fact], began: date | None = None, ended: date | None = None) -> Timeline:
    """A county's townships and communities as counted, edition by edition: the oldest edition
    from the beginning, each later one from the day it took effect (its import's `occurred_at`,
    which the importer sets to the day of its changes); within an edition the newest import wins.
    A county that came into being as another's new code on `began` (县改区: domain/lineage.py)
    counts from that day, not from the beginning; one recoded, merged or abolished on `ended`
    counts until that day (its townships count under their new codes, in their new county)."""
    by_edition: dict[str, list[tuple[Fact, ev.DivisionsImported]]] = {}
    for f in facts:
        if isinstance(f.payload, ev.DivisionsImported):
            by_edition.setdefault(f.payload.edition, []).append((f, f.payload))
    if not by_edition:
        return Timeline("div")
    segments: list[tuple[date, State | None]] = []
    since = EPOCH
    for n, edition in enumerate(sorted(by_edition)):
        chosen = by_edition[edition]
        latest = max(chosen, key=lambda fp: (fp[0].occurred_at, str(fp[0].event_id)))[1]
        if n:
            since = max(since, min(f.occurred_at.astimezone(ev.CHINA).date() for f, _ in chosen))
        segments.append((since, _county_state(latest)))
    if began is not None:
        # Nothing before the day the county began (squash keeps the last state of a day).
        segments = [(max(day, began), state) for day, state in segments]
    if ended is not None:
        segments = [s for s in segments if s[0] < ended] + [(ended, None)]
    return Timeline("div", squash(segments))


def _county_state(latest: ev.DivisionsImported) -> State:
    urban: Counter[str] = Counter()
    rural: Counter[str] = Counter()
    for c in latest.communities:
        if c.kind is ev.CommunityKind.URBAN:
            urban[c.code[:9]] += 1
        elif c.kind is ev.CommunityKind.RURAL:
            rural[c.code[:9]] += 1
    townships = tuple((t.code, t.kind.value, urban[t.code], rural[t.code]) for t in latest.townships)
    communities = tuple((c.code, c.kind.value) for c in sorted(latest.communities, key=lambda c: c.code)
                        if c.kind is not ev.CommunityKind.OTHER)
    return townships + communities


def _divisions_vector(state: State) -> Vector:
    """A county's state: (township, kind, urban communities, rural communities) per township,
    counted from the province down to the township; then (community, kind) per urban or rural
    community, counted at the community itself (its own communities_<kind> is 1, so a community's
    figures read as a township's do). A state stored before communities counted has township
    entries only, and counts as it did."""
    out: Vector = Counter()
    for entry in state:
        if len(entry) == 2:
            community, kind = entry
            out[(community, f"communities_{kind}")] += 1
            continue
        township, kind, urban, rural = entry
        for r in coverage_regions(township):
            if kind == "street":
                out[(r, "streets")] += 1
            elif kind in ("town", "township"):
                out[(r, "towns")] += 1
            if urban:
                out[(r, "communities_urban")] += urban
            if rural:
                out[(r, "communities_rural")] += rural
    return out


vectors("div", _divisions_vector)


# --- organizations -----------------------------------------------------------------------------

def organization_timeline(facts: Sequence[Fact], parties: Sequence[Interval],
                          community_kinds: Mapping[str, str], lineage: Lineage = NO_LINEAGE) -> Timeline:
    """An organization's counted states: where it is, its tier, category and class, the kind of
    its community, whether a party organization covers it, brand and demonstration flags. Where
    its community is recoded (a merge or split of townships), it follows to the new code from the
    change's day."""
    ordered = _sorted(facts)
    starts = [f for f in ordered if isinstance(f.payload, ev.OrganizationFiled | ev.OrganizationRegistered)]
    if not starts:
        return Timeline("org")
    places = {getattr(f.payload, "community_code", None) for f in ordered} - {None}
    days = sorted({f.effective for f in ordered} | {p.start for p in parties}
                  | {p.end for p in parties if p.end}
                  | {d for c in places for d in lineage.days(str(c))})
    segments: list[tuple[date, State | None]] = []
    for day in days:
        attrs: dict[str, Any] = {}
        ended = False
        for f in ordered:
            if f.effective > day:
                break
            p = f.payload
            match p:
                case ev.OrganizationFiled():
                    attrs.setdefault("tier", p.tier.value)
                    attrs.setdefault("community", p.community_code)
                    attrs.setdefault("category", p.category.value)
                case ev.OrganizationRegistered():
                    attrs.update(tier="registered", community=p.community_code,
                                 category=p.category.value)
                case ev.OrganizationUpdated():
                    attrs.update({k: v for k, v in (
                        ("community", p.community_code), ("category", p.category and p.category.value),
                        ("brand", p.brand), ("brand_projects", p.brand_projects),
                        ("demo", p.hub_demonstration), ("rating", p.rating)) if v is not None})
                case ev.OrganizationDeregistered():
                    ended = True
        if ended or "tier" not in attrs:
            segments.append((day, None))
            continue
        community = lineage.resolve(attrs["community"], day)
        party = any(pi.active_on(day) for pi in parties)
        segments.append((day, (community, attrs["tier"], attrs["category"],
                               community_kinds.get(community, "other"), party,
                               bool(attrs.get("brand")), int(attrs.get("brand_projects") or 0),
                               bool(attrs.get("demo")), attrs.get("rating"))))
    # A filing counts once, in the year it happened, whatever became of the organization later.
    filings = [f.payload for f in starts if isinstance(f.payload, ev.OrganizationFiled)]
    pulses: list[tuple[date, State]] = [
        (p.filed_on, (lineage.resolve(p.community_code, p.filed_on), ev.CLASS_OF_CATEGORY[p.category].value))
        for p in filings[:1] if p.tier is ev.ManagementTier.FILED]
    # So does a registration (登记): plans that count "新增登记和备案" add both (issue 21).
    registrations = [f.payload for f in starts if isinstance(f.payload, ev.OrganizationRegistered)]
    pulses += [(p.registered_on, (lineage.resolve(p.community_code, p.registered_on),
                                  ev.CLASS_OF_CATEGORY[p.category].value, "registered"))
               for p in registrations[:1]]
    # Every organization is new once, on the day it started, whichever way (the denominator of the
    # share of new organizations funded in their first year: domain/funding.py).
    start = funding.organization_start([f.payload for f in starts])
    if start is not None:
        pulses.append((start[0], (start[1], NEW)))
    return Timeline("org", squash(segments), tuple(pulses))


# 等级评估 grades that plans count as well rated: 3A and above.
WELL_RATED = ("3A", "4A", "5A")


def _organization_vector(state: State) -> Vector:
    # A state stored before ratings counted has eight entries, and counts as it did.
    community, tier, category, community_kind, party, brand, projects, demo, *rest = state
    rating = rest[0] if rest else None
    out: Vector = Counter()
    counters = ["orgs", f"orgs_{tier}", f"orgs_cat_{category}",
                f"orgs_{ev.CLASS_OF_CATEGORY[ev.Category(category)].value}"]
    if community_kind in ("urban", "rural"):
        counters += [f"orgs_{community_kind}", f"orgs_{community_kind}_{tier}"]
    else:   # so that orgs_<tier> is the sum of three kinds' (metrics.DERIVED)
        counters.append(f"orgs_other_{tier}")
    if party:
        counters.append("orgs_party_covered")
    if brand:
        counters.append("brand_orgs")
    if demo:
        counters.append("hub_demo_orgs")
    # Only a registered organization (a legal person) is rated (社会组织等级评估); a grade kept
    # through a downgrade to filed does not count.
    if rating and tier == "registered":
        counters.append("orgs_rated")
        if rating in WELL_RATED:
            counters.append("orgs_rated_3a_plus")
    for r in coverage_regions(community):
        for c in counters:
            out[(r, c)] += 1
        if projects:
            out[(r, "brand_projects")] += projects
    return out


NEW = "new"


def _new_organization_vector(pulse: State) -> Vector:
    """A filing pulse is (community, class); a registration pulse adds "registered"; the start of
    an organization, filed or registered, is (community, "new")."""
    if pulse[1] == NEW:
        return _count_at(pulse[0], "orgs_new")
    event = "registrations" if len(pulse) > 2 else "filings"
    return _count_at(pulse[0], f"{event}_{pulse[1]}")


vectors("org", _organization_vector, _new_organization_vector)


# --- outstanding organizations -----------------------------------------------------------------

def outstanding_timeline(facts: Sequence[Fact]) -> Timeline:
    """One selection of an organization by a county for a year: a pulse on the first day of that
    year, once however often it is announced (a yearly figure counts the year's selections)."""
    chosen = [f.payload for f in _sorted(facts) if isinstance(f.payload, ev.OutstandingOrganizationSelected)]
    return Timeline("outstanding", (), tuple((date(p.year, 1, 1), (p.county_code,)) for p in chosen[:1]))


vectors("outstanding", lambda _: Counter(), lambda pulse: _count_at(pulse[0], "outstanding_orgs"))


# --- people in talent pools --------------------------------------------------------------------

def person_timeline(facts: Sequence[Fact], lineage: Lineage = NO_LINEAGE) -> Timeline:
    """In the pool (of a county) between additions and removals; trained from the first completion;
    each completion a person-time at the organizer's region. A pool's county recoded (县改区) on D
    is the new county's pool from D (`lineage`); what happened before D stays where it was."""
    ordered = _sorted(facts)
    completions: dict[UUID, ev.TrainingCompleted] = {}
    for f in ordered:
        if isinstance(f.payload, ev.TrainingCompleted):
            completions.setdefault(f.payload.completion_id, f.payload)
    first_trained = min((c.completed_on for c in completions.values()), default=None)
    counties = {f.payload.county_code for f in ordered if isinstance(f.payload, ev.TalentPoolMemberAdded)}
    days = sorted({f.effective for f in ordered} | {d for c in counties for d in lineage.days(c)})
    segments: list[tuple[date, State | None]] = []
    for day in days:
        county: str | None = None
        for f in ordered:
            if f.effective > day:
                break
            if isinstance(f.payload, ev.TalentPoolMemberAdded):
                county = f.payload.county_code
            elif isinstance(f.payload, ev.TalentPoolMemberRemoved):
                county = None
        trained = first_trained is not None and first_trained <= day
        segments.append((day, (lineage.resolve(county, day), trained) if county else None))
    # Every completion is a person-time; the pool-only figure counts those by pool members. An event
    # of before contracts 1.2.0 says nothing (None): only pool members could complete a session then.
    pulses = tuple((c.completed_on, (c.organizer_region, POOL if c.pool_member is not False else OUTSIDE))
                   for c in sorted(completions.values(), key=lambda c: str(c.completion_id)))
    # One exam per person, year and level: the latest record (a correction) decides.
    exams: dict[tuple[int, str], ev.QualificationExamRecorded] = {}
    for f in sorted(ordered, key=lambda f: (f.occurred_at, str(f.event_id))):
        if isinstance(f.payload, ev.QualificationExamRecorded):
            exams[(f.payload.year, f.payload.level)] = f.payload
    passes = tuple((date(year, 1, 1), ("exam", e.county_code)) for (year, _), e in sorted(exams.items()) if e.passed)
    return Timeline("person", squash(segments), pulses + passes)


def _person_vector(state: State) -> Vector:
    county, trained = state
    out = _count_at(county, "pool_members")
    if trained:
        out.update(_count_at(county, "pool_members_trained"))
    return out


POOL, OUTSIDE = "pool", "outside"   # a completion's pulse: by a pool member, or by another trainee


def _person_pulse(pulse: State) -> Vector:
    if pulse[0] == "exam":
        return _count_at(pulse[1], "exam_passes")
    out = _count_at(pulse[0], "training_person_times")
    if pulse[1:] != (OUTSIDE,):     # (region,): a timeline kept before the pool-only counter
        out.update(_count_at(pulse[0], "pool_training_person_times"))
    return out


vectors("person", _person_vector, _person_pulse)


def region_of_timeline(timeline: Timeline) -> str | None:
    """Where an entity currently counts (for finding the entities of a county)."""
    for _, state in reversed(timeline.segments):
        if state is not None:
            first = state[0]
            if isinstance(first, str) and first.isdigit():
                tier_of(first)
                return first
    return None


# --- every affected entity at once -------------------------------------------------------------

Links = Sequence[tuple[str, str]]   # (owner key, member): party→"org:<id>", hub/base→township


def memberships(key: str, p: ev.Payload) -> list[tuple[str, str]]:
    """The links a fact establishes: whom a party organization covers, where a hub or base serves."""
    match p:
        case ev.PartyOrganizationFormed():
            return [(key, f"org:{o}") for o in p.organization_ids]
        case ev.HubEstablished() if len(p.region_code) == 9:
            return [(key, p.region_code)]
        case ev.IncubationBaseOpened():
            # A base at a community covers that community (its basecov entity), no township.
            own = [(key, p.region_code)] if len(p.region_code) == 12 else []
            return [(key, t) for t in p.covered_townships] + own
        case ev.ProjectFunded():
            return [(key, f"supported:{o}") for o in p.supported()]
        case ev.FacilityOpened():
            return [(key, f"{p.kind.value}:{p.region_code}")]
        case _:
            return []


def timelines_for(keys: Iterable[str], facts: Mapping[str, Sequence[Fact]], links: Links,
                  kinds: Mapping[str, str], lineage: Lineage = NO_LINEAGE) -> dict[str, Timeline]:
    """The timeline of each entity in `keys`, given the facts of those entities and of the party
    organizations, hubs and bases linked to them, the kinds of communities and townships, and the
    division changes of their places (`lineage`: links to a township's predecessors serve it too,
    from the day it took them over)."""
    owners = {o for o, _ in links} | {k for k in keys if k.split(":", 1)[0] in ("hub", "base", "facility")}
    intervals = {o: interval(facts.get(o, ())) for o in owners}
    by_member: dict[str, dict[str, list[Interval]]] = {}
    for owner, member in links:
        iv = intervals.get(owner)
        if iv is not None:
            by_member.setdefault(owner.split(":", 1)[0], {}).setdefault(member, []).append(iv)
    awards: dict[str, list[ev.ProjectFunded]] = {}
    for owner, member in links:
        if owner.startswith("fund:"):
            awards.setdefault(member, []).extend(
                f.payload for f in facts.get(owner, ()) if isinstance(f.payload, ev.ProjectFunded))
    out: dict[str, Timeline] = {}
    for key in keys:
        kind, ident = key.split(":", 1)
        if kind == "org":
            out[key] = organization_timeline(facts.get(key, ()), by_member.get("party", {}).get(key, []),
                                             kinds, lineage)
        elif kind in ("hub", "base", "facility"):
            out[key] = interval_timeline(kind, intervals.get(key), lineage)
        elif kind == "faccov":
            running = by_member.get("facility", {})
            place, code = ident.split(":", 1)
            served = list(running.get(ident, []))
            for before, since in lineage.predecessors(code):
                served += _inherited(running.get(f"{place}:{before}", []), since)
            out[key] = facility_covered_timeline(ident, kinds.get(code), served, lineage.ended_on(code))
        elif kind in ("hubcov", "basecov"):
            members = by_member.get(kind[:-3], {})
            served = list(members.get(ident, []))
            for before, since in lineage.predecessors(ident):
                served += _inherited(members.get(before, []), since)
            out[key] = covered_timeline(kind, ident, kinds.get(ident), served, lineage.ended_on(ident))
        elif kind == "div":
            out[key] = divisions_timeline(facts.get(key, ()), lineage.began_on(ident), lineage.ended_on(ident))
        elif kind == "person":
            out[key] = person_timeline(facts.get(key, ()), lineage)
        elif kind == "outstanding":
            out[key] = outstanding_timeline(facts.get(key, ()))
        elif kind == "fund":
            out[key] = funding.project_timeline([(f.payload, f.order) for f in facts.get(key, ())], lineage)
        elif kind == "supported":
            out[key] = funding.supported_timeline(
                [(f.payload, f.order) for f in facts.get(f"org:{ident}", ())], awards.get(key, []), lineage)
    return out
