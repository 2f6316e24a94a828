"""The coverage engine against an independent recount, on generated fact streams in any order."""

from __future__ import annotations

import calendar
import uuid
from collections import Counter, defaultdict
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import events as ev
from services.targets.domain import coverage as cov
from services.targets.domain import entities as ent
from services.targets.domain.metrics import DERIVED, history_counters, with_derived
from tests.support.coverage_facts import (
    COMMUNITIES,
    TOWNSHIPS,
    day,
    moved_in_batches,
    org_facts,
    project,
    regions,
    to_facts,
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[ev.Payload], list[int]]:
    facts: list[ev.Payload] = []
    orgs: list[uuid.UUID] = []
    for _ in range(draw(st.integers(1, 6))):
        batch = draw(org_facts())
        orgs.append(batch[0].organization_id)  # type: ignore[attr-defined]
        facts += batch
    for _ in range(draw(st.integers(0, 3))):
        hub = uuid.uuid4()
        start = draw(st.integers(0, 900))
        facts.append(ev.HubEstablished(hub_id=hub, organization_id=orgs[0],
                                       region_code=draw(st.sampled_from(sorted(TOWNSHIPS))),
                                       established_on=day(start)))
        if draw(st.booleans()):
            facts.append(ev.HubDissolved(hub_id=hub, dissolved_on=day(start + draw(st.integers(0, 400)))))
    for _ in range(draw(st.integers(0, 2))):
        base = uuid.uuid4()
        start = draw(st.integers(0, 900))
        facts.append(ev.IncubationBaseOpened.model_construct(base_id=base, name="b", region_code="51",
                                             covered_townships=draw(st.lists(
                                                 st.sampled_from(sorted(TOWNSHIPS)), min_size=1,
                                                 unique=True)), opened_on=day(start)))
        if draw(st.booleans()):
            facts.append(ev.IncubationBaseClosed(base_id=base, closed_on=day(start + draw(st.integers(0, 400)))))
    for _ in range(draw(st.integers(0, 2))):
        party = uuid.uuid4()
        start = draw(st.integers(0, 900))
        facts.append(ev.PartyOrganizationFormed(
            party_organization_id=party, kind="joint_branch",
            organization_ids=draw(st.lists(st.sampled_from(orgs), min_size=1, unique=True)),
            formed_on=day(start)))
        if draw(st.booleans()):
            facts.append(ev.PartyOrganizationDissolved(party_organization_id=party,
                                                       dissolved_on=day(start + draw(st.integers(0, 400)))))
    order = draw(st.permutations(range(len(facts))))
    return facts, order


def month_end(m: date) -> date:
    return m.replace(day=calendar.monthrange(m.year, m.month)[1])


def recount(payloads: list[ev.Payload], on: date) -> Counter[tuple[str, str]]:
    """Independent oracle: the state of every organization and township on one day, counted."""
    out: Counter[tuple[str, str]] = Counter()
    orgs: dict[uuid.UUID, list[ev.Payload]] = defaultdict(list)
    for p in payloads:
        if hasattr(p, "organization_id") and not isinstance(p, ev.HubEstablished):
            orgs[p.organization_id].append(p)  # type: ignore[attr-defined]
    parties = {p.party_organization_id: p for p in payloads if isinstance(p, ev.PartyOrganizationFormed)}
    party_end = {p.party_organization_id: p.dissolved_on for p in payloads
                 if isinstance(p, ev.PartyOrganizationDissolved)}
    for oid, ps in orgs.items():
        filed = next((p for p in ps if isinstance(p, ev.OrganizationFiled)), None)
        reg = next((p for p in ps if isinstance(p, ev.OrganizationRegistered)), None)
        end = next((p.ended_on for p in ps if isinstance(p, ev.OrganizationDeregistered)), None)
        start = min(d for d in (filed and filed.filed_on, reg and reg.registered_on) if d)
        if filed and filed.tier is ev.ManagementTier.FILED and filed.filed_on <= on:
            for r in regions(filed.community_code):
                out[(r, f"filings_{ev.CLASS_OF_CATEGORY[filed.category].value}")] += 1
        # So does its first registration (登记), for plans that count "新增登记和备案".
        first_reg = min((p for p in ps if isinstance(p, ev.OrganizationRegistered)),
                        key=lambda p: p.registered_on, default=None)
        if first_reg is not None and first_reg.registered_on <= on:
            for r in regions(first_reg.community_code):
                out[(r, f"registrations_{ev.CLASS_OF_CATEGORY[first_reg.category].value}")] += 1
        # Every organization is new once, on its first filing or registration, where it was then.
        first = min((p.filed_on if isinstance(p, ev.OrganizationFiled) else p.registered_on, p.community_code)
                    for p in ps if isinstance(p, ev.OrganizationFiled | ev.OrganizationRegistered))
        if first[0] <= on:
            for r in regions(first[1]):
                out[(r, "orgs_new")] += 1
        if not (start <= on and (end is None or on < end)):
            continue
        # Facts of the same day apply in the order they occurred (their index in the stream).
        dated = sorted(((p.registered_on if isinstance(p, ev.OrganizationRegistered) else
                         p.filed_on if isinstance(p, ev.OrganizationFiled) else
                         p.effective_on if isinstance(p, ev.OrganizationUpdated) else None, i, p)
                        for i, p in enumerate(payloads) if p in ps), key=lambda t: (t[0] or on, t[1]))
        tier, community, category, brand, projects = "", "", ev.Category.CHARITY, False, 0
        for when, _, p in dated:
            if when is None or when > on:
                continue
            if isinstance(p, ev.OrganizationFiled) and not tier:
                tier, community, category = p.tier.value, p.community_code, p.category
            elif isinstance(p, ev.OrganizationRegistered):
                tier, community, category = "registered", p.community_code, p.category
            elif isinstance(p, ev.OrganizationUpdated):
                community = p.community_code or community
                category = p.category or category
                brand = p.brand if p.brand is not None else brand
                projects = p.brand_projects if p.brand_projects is not None else projects
        covered = any(oid in p.organization_ids and p.formed_on <= on
                      and (party_end.get(pid) is None or on < max(party_end[pid], p.formed_on))
                      for pid, p in parties.items())
        kind = COMMUNITIES[community]
        names = ["orgs", f"orgs_{tier}", f"orgs_cat_{category.value}",
                 f"orgs_{ev.CLASS_OF_CATEGORY[category].value}", f"orgs_{kind}_{tier}"]
        names += [f"orgs_{kind}"] * (kind != "other")
        names += ["orgs_party_covered"] * covered + ["brand_orgs"] * brand
        for r in regions(community):
            for n in names:
                out[(r, n)] += 1
            if projects:
                out[(r, "brand_projects")] += projects
    hubs = {p.hub_id: p for p in payloads if isinstance(p, ev.HubEstablished)}
    hub_end = {p.hub_id: p.dissolved_on for p in payloads if isinstance(p, ev.HubDissolved)}
    bases = {p.base_id: p for p in payloads if isinstance(p, ev.IncubationBaseOpened)}
    base_end = {p.base_id: p.closed_on for p in payloads if isinstance(p, ev.IncubationBaseClosed)}

    def alive(start: date, end: date | None) -> bool:
        return start <= on and (end is None or on < max(end, start))

    for hid, h in hubs.items():
        if alive(h.established_on, hub_end.get(hid)):
            for r in regions(h.region_code):
                out[(r, "hubs")] += 1
    for bid, b in bases.items():
        if alive(b.opened_on, base_end.get(bid)):
            tier = {2: "province", 4: "city", 6: "county", 9: "township", 12: "community"}[len(b.region_code)]
            for r in regions(b.region_code):
                out[(r, "bases")] += 1
                out[(r, f"bases_{tier}")] += 1    # and at the tier it opened at (issue 22)
    for township, kind in TOWNSHIPS.items():
        plural = "streets" if kind == "street" else "towns"
        if any(h.region_code == township and alive(h.established_on, hub_end.get(hid)) for hid, h in hubs.items()):
            for r in regions(township):
                out[(r, f"{plural}_with_hub")] += 1
        if any(township in b.covered_townships and alive(b.opened_on, base_end.get(bid))
               for bid, b in bases.items()):
            for r in regions(township):
                out[(r, f"{plural}_with_base")] += 1
    return Counter({k: v for k, v in out.items() if v})


@settings(max_examples=150, deadline=None)
@given(streams(), st.integers(1, 5))
def test_any_order_and_batching_equals_recount(stream: tuple[list[ev.Payload], list[int]],
                                               batches: int) -> None:
    payloads, order = stream
    facts = to_facts(payloads)
    # Incremental: apply in shuffled batches, moving coverage by new − old contribution each time.
    from_scratch = cov.total(cov.contribution(t) for t in project(facts).values())
    assert moved_in_batches(facts, order, batches, project) == from_scratch
    # Day-exact: on every day something moved, the day before it and a few month ends, the sum
    # of deltas equals the recount on that very day (not the end of its month).
    moved = {d for _, _, d in from_scratch}
    days = sorted(moved | {d - timedelta(days=1) for d in moved}
                  | {date(2021, 1, 1), month_end(date(2023, 6, 1)), date(2024, 12, 31)})
    for d in days:
        assert cov.as_of(from_scratch, d) == recount(payloads, d), d


@st.composite
def county_divisions(draw: st.DrawFn) -> ev.DivisionsImported:
    townships = [ev.TownshipDivision(code=f"510681{i:03d}", name=f"t{i}",
                                     kind=draw(st.sampled_from(list(ev.TownshipKind))))
                 for i in range(1, draw(st.integers(1, 4)) + 1)]
    communities = [ev.CommunityDivision(code=f"{t.code}{j:03d}", name=f"c{j}",
                                        kind=draw(st.sampled_from(list(ev.CommunityKind))))
                   for t in townships for j in range(1, draw(st.integers(0, 4)) + 1)]
    return ev.DivisionsImported(edition=str(draw(st.integers(2020, 2024))),
                                province=ev.DivisionRef(code="51", name="p"),
                                city=ev.DivisionRef(code="5106", name="c"),
                                county=ev.DivisionRef(code="510681", name="k"),
                                townships=townships, communities=communities)


def recount_divisions(d: ev.DivisionsImported) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for t in d.townships:
        if t.kind is not ev.TownshipKind.SPECIAL:
            for r in regions(t.code):
                out[(r, "streets" if t.kind is ev.TownshipKind.STREET else "towns")] += 1
    for c in d.communities:
        if c.kind is not ev.CommunityKind.OTHER:
            for r in regions(c.code):
                out[(r, f"communities_{c.kind.value}")] += 1
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(county_divisions(), min_size=1, max_size=3))
def test_divisions_count_down_to_the_community(imports: list[ev.DivisionsImported]) -> None:
    """Each urban or rural community counts as one of its kind in itself and every ancestor; the
    newest edition of a county wins, whichever order its imports came in; stored timelines equal
    recomputed ones (nested states survive JSON)."""
    facts = to_facts(list(imports))
    newest = max(zip(imports, facts, strict=True), key=lambda pf: (pf[0].edition, pf[1].occurred_at,
                                                                   str(pf[1].event_id)))[0]
    timeline = ent.divisions_timeline(facts)
    assert cov.Timeline.from_json(timeline.to_json()) == timeline
    assert ent.divisions_timeline(list(reversed(facts))) == timeline
    assert cov.as_of(cov.contribution(timeline), date(2030, 1, 1)) == +recount_divisions(newest)


def test_a_divisions_state_stored_before_communities_counted_still_counts() -> None:
    """A county's state kept by an older targets (township entries only) counts at the four upper
    tiers as it did, so moving away from it (the next import) takes off exactly what it added."""
    legacy = cov.Timeline("div", ((cov.EPOCH, (("510681001", "street", 2, 1),)),))
    assert cov.as_of(cov.contribution(legacy), date(2030, 1, 1)) == Counter(
        {(r, c): n for r in ("51", "5106", "510681", "510681001")
         for c, n in (("streets", 1), ("communities_urban", 2), ("communities_rural", 1))})


@settings(max_examples=150, deadline=None)
@given(streams())
def test_the_history_without_derived_counters_reads_the_same(stream: tuple[list[ev.Payload], list[int]]) -> None:
    """targets.coverage keeps no derived counter (metrics.DERIVED); a read sums its parts. On every
    day something moved, and in every region, what the kept counters read with the derived ones
    summed equals every counter the engine counts: no derived counter is ever more or less than its
    parts (a tier, a class or a community kind left out of DERIVED would fail here)."""
    payloads, _ = stream
    full = cov.total(cov.contribution(t) for t in project(to_facts(payloads)).values())
    kept = Counter({k: v for k, v in full.items() if k[1] not in DERIVED})
    for d in sorted({d for _, _, d in full}):
        read, counted = cov.as_of(kept, d), cov.as_of(full, d)
        for region in {r for r, _ in counted} | {r for r, _ in read}:
            assert with_derived({c: v for (r, c), v in read.items() if r == region}) == \
                {c: v for (r, c), v in counted.items() if r == region}, (region, d)
    # A read of a derived counter asks the history for its parts, and only them.
    assert history_counters(["orgs", "brand_orgs"]) == sorted({*DERIVED["orgs"], "brand_orgs"})
    assert not set(history_counters(DERIVED)) & set(DERIVED)
