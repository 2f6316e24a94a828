"""A seeded, streamed workload at plan-like densities over the NBS divisions of a scope.

For each county (read one at a time from the NBS files, as the divisions importer does) the
generator decides its organizations — about 12 per urban community, 6 per rural one, categories in
the shares of the plans — and yields, as bytes ready for the bus:

* level 0: filings (and the few organizations registered straight away), and the county's training
  facts (pool members and completions, on training's own subjects);
* level 1, `gap` intake messages later: registrations of filed organizations (≈10%), brand and hub
  demonstration updates, a hub in most streets and towns (and some counties), incubation bases,
  party organizations;
* level 2, another `gap` later: deregistrations (≈2%), dissolved hubs and party organizations,
  closed bases.

So every fact about an organization reaches registry's intake after the facts it depends on, by
a margin of thousands of messages: enough that two registry replicas pulling neighbouring batches
never see a registration before its filing. At the end of the stream there is nothing left to
keep the last follow-ups apart, so the generator yields a `BARRIER` before each of the last two
levels: a publisher lets registry catch up there, as a real register would not deregister an
organization a millisecond after registering it. Nothing but the pending follow-ups (bounded by the
gap) and one county's organizations is held in memory.

Everything is derived from `random.Random(f"{seed}:{county}")`, so a county's events (ids
included) are the same whether it is generated alone or as part of the whole country.
"""

from __future__ import annotations

import bisect
import heapq
import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from itertools import accumulate
from pathlib import Path
from typing import Any

from contracts import Topology, ancestors
from contracts.codes import uscc_check_character
from contracts.events import CommunityKind, DivisionsImported, TownshipKind
from cso.divisions import county_payloads

SOURCE = "bench-provincial-register"
TRAINING_SOURCE = "bench-training-system"
CHINA = timezone(timedelta(hours=8))

# Shares of the plans' statistics (resident services 20.85%, charity 57.33%, culture & sports
# 13.20%, mediation 8.62%); neighbourly help and rural revitalization take a small slice of the
# largest, charity.
CATEGORY_SHARES: dict[str, float] = {
    "resident_services": 20.85,
    "charity": 55.33,
    "culture_sports": 13.20,
    "mediation": 8.62,
    "neighbourly_help": 1.20,
    "rural_revitalization": 0.80,
}
NAME_SUFFIX = {
    "resident_services": "便民服务队",
    "charity": "志愿服务队",
    "culture_sports": "文体协会",
    "mediation": "调解委员会",
    "neighbourly_help": "邻里互助会",
    "rural_revitalization": "乡村振兴促进会",
}
LEGAL_FORM_KIND = {"social_group": "1", "social_service_agency": "2"}
COVERED_TOWNSHIP_KINDS = {TownshipKind.STREET, TownshipKind.TOWN, TownshipKind.TOWNSHIP}
FIRST_DAY = date(2021, 1, 1)
LAST_DAY = date(2025, 12, 31)
TRAINING_COUNTERS = ("training_person_times", "pool_members", "pool_members_trained")


@dataclass(frozen=True)
class Plan:
    """Densities and shares; the defaults are the plans' (DESIGN §4 and the issue)."""

    per_urban: int = 12
    per_rural: int = 6
    per_other: int = 1
    spread: int = 3                     # per community: uniform in [density - spread, density + spread]
    registered_directly: float = 0.05   # registered from the start (no filing)
    guided: float = 0.20                # of the others: guided rather than filed
    registered_later: float = 0.10      # filed/guided, registered later
    deregistered: float = 0.02
    brand: float = 0.02
    township_hub: float = 0.85          # streets, towns and townships with a hub
    county_hub: float = 0.5
    hub_demonstration: float = 0.3      # of the hubs' organizations
    hub_dissolved: float = 0.03
    county_base: float = 0.7            # a county base covering ~60% of its townships
    street_base: float = 0.3            # a street's own base
    base_closed: float = 0.02
    party_independent: float = 0.05     # per organization
    party_joint: float = 0.01           # per organization: a joint branch of 2-4 in its township
    party_liaison: float = 0.02
    party_dissolved: float = 0.05
    communities_per_pool_member: int = 20
    completions_max: int = 3
    pool_removed: float = 0.03


@dataclass(frozen=True, slots=True)
class Item:
    """One message for the bus: `stream` is "intake" (registry facts) or "training"."""

    stream: str
    type: str
    subject: str
    data: bytes
    event_id: str

    @property
    def barrier(self) -> bool:
        return self.stream == "barrier"


BARRIER = Item("barrier", "", "", b"", "")


@dataclass(slots=True)
class _Org:
    id: str
    community: str
    name: str
    category: str
    tier: str        # filed | guided | registered
    start: int       # day index
    ends: bool       # deregistered later: never chosen for hubs and party organizations


@dataclass
class Scope:
    """What the generator saw of the divisions (filled while it runs)."""

    counties: int = 0
    townships: int = 0
    communities: Counter[str] = field(default_factory=Counter)


class _Days:
    def __init__(self, first: date, last: date) -> None:
        today = datetime.now(CHINA).date()
        last = min(last, today - timedelta(days=1))
        self.iso = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]

    def __len__(self) -> int:
        return len(self.iso)


def _uuid(rng: random.Random) -> str:
    n = rng.getrandbits(128)
    n = (n & ~(0xF000 << 64)) | (0x4000 << 64)   # version 4
    n = (n & ~(0xC000 << 48)) | (0x8000 << 48)   # RFC 4122 variant
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _short(name: str) -> str:
    for suffix in ("社区居民委员会", "居民委员会", "村民委员会", "居委会", "村委会", "委员会"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name[:20]


class Workload:
    """`events()` streams the workload of a scope; `organization_rows()` the same organizations
    as rows (for the COPY floor); `training_expected` is filled as training facts are generated."""

    def __init__(self, divisions: Path | str, scope: Sequence[str] | None, seed: int = 2023,
                 plan: Plan | None = None, gap: int = 5000, namespace: str = "") -> None:
        self.divisions, self.only = Path(divisions), list(scope) if scope else None
        self.seed, self.plan, self.gap = seed, plan or Plan(), gap
        self.topology = Topology(namespace)
        self.days = _Days(FIRST_DAY, LAST_DAY)
        self.scope = Scope()
        self.training_expected: Counter[tuple[str, str]] = Counter()
        self.counts: Counter[str] = Counter()
        self.sample: list[str] = []          # up to 20,000 communities, for the steady-state load
        self.first_community: str | None = None
        self._sample_rng = random.Random(f"{seed}:sample")
        self._subjects: dict[tuple[str, str, str], str] = {}
        self._serials: Counter[str] = Counter()
        weights = list(CATEGORY_SHARES.values())
        self._cum = list(accumulate(weights))
        self._categories = list(CATEGORY_SHARES)

    def forget_caches(self) -> None:
        """Drop what only speeds up generating (a national run's subjects: millions), before the
        workload is sent to another process."""
        self._subjects.clear()

    # ------------------------------------------------------------------ helpers

    def payloads(self) -> Iterator[DivisionsImported]:
        return county_payloads(self.divisions, only=self.only)

    def _subject(self, context: str, type_: str, region: str) -> str:
        key = (context, type_, region if len(region) < 6 else region[:6])
        subject = self._subjects.get(key)
        if subject is None:
            subject = (self.topology.intake_subject(SOURCE, type_, region) if context == "intake"
                       else self.topology.event_subject(type_, region))
            self._subjects[key] = subject
        return subject

    def _item(self, stream: str, type_: str, region: str, payload: dict[str, Any], eid: str,
              day: str) -> Item:
        occurred = f"{day}T09:00:00+08:00"
        data = json.dumps({"event_id": eid, "type": type_, "version": 1, "occurred_at": occurred,
                           "recorded_at": occurred,
                           "source": SOURCE if stream == "intake" else TRAINING_SOURCE,
                           "region": region, "payload": payload},
                          ensure_ascii=False, separators=(",", ":")).encode()
        self.counts[type_] += 1
        return Item(stream, type_, self._subject("intake" if stream == "intake" else "training", type_, region),
                    data, eid)

    def _category(self, rng: random.Random) -> str:
        return self._categories[bisect.bisect(self._cum, rng.random() * self._cum[-1])]

    def _after(self, rng: random.Random, day: int) -> int:
        return rng.randrange(day, len(self.days))

    def _credit_code(self, county: str, kind: str, serial: int) -> str:
        first17 = f"5{kind}{county}MJ{serial:07d}"
        return first17 + uscc_check_character(first17)

    # ------------------------------------------------------------------ organizations of a county

    def _organizations(self, rng: random.Random, d: DivisionsImported) -> list[_Org]:
        plan, orgs = self.plan, []
        density = {CommunityKind.URBAN: plan.per_urban, CommunityKind.RURAL: plan.per_rural,
                   CommunityKind.OTHER: plan.per_other}
        filing_days = len(self.days) - 180   # leave room for what follows a filing
        for c in d.communities:
            base = density[c.kind]
            n = rng.randint(max(0, base - plan.spread), base + plan.spread) if base else 0
            short = _short(c.name)
            for i in range(n):
                category = self._category(rng)
                r = rng.random()
                tier = ("registered" if r < plan.registered_directly
                        else "guided" if r < plan.registered_directly + plan.guided else "filed")
                orgs.append(_Org(_uuid(rng), c.code, f"{short}{NAME_SUFFIX[category]}{i + 1}", category, tier,
                                 rng.randrange(filing_days), rng.random() < plan.deregistered))
        return orgs

    def organization_rows(self) -> Iterator[tuple[Any, ...]]:
        """(id, name, community_code, tier, category, status, filed_on, registered_on, updated_by,
        last_event_id) of every organization the workload creates, in the same order."""
        for d in self.payloads():
            rng = random.Random(f"{self.seed}:{d.county.code}")
            for o in self._organizations(rng, d):
                day = date.fromisoformat(self.days.iso[o.start])
                yield (o.id, o.name, o.community, o.tier, o.category, "active",
                       None if o.tier == "registered" else day, day if o.tier == "registered" else None,
                       SOURCE, o.id)

    # ------------------------------------------------------------------ the stream

    def events(self) -> Iterator[Item]:
        """The stream, with two `BARRIER`s near its end (skip them if you only want events)."""
        pending: list[tuple[int, int, int, Item]] = []   # (release position, order, level, item)
        position = order = 0
        for d in self.payloads():
            county = d.county.code
            rng = random.Random(f"{self.seed}:{county}")
            self._note_scope(d)
            orgs = self._organizations(rng, d)
            for o in orgs:
                while pending and pending[0][0] <= position:
                    yield heapq.heappop(pending)[3]
                    position += 1
                yield self._first_fact(o, county)
                position += 1
            level1, level2 = self._follow_ups(rng, d, orgs)
            for item in level1:
                heapq.heappush(pending, (position + self.gap, order, 1, item))
                order += 1
            for item in level2:
                heapq.heappush(pending, (position + 2 * self.gap, order, 2, item))
                order += 1
            yield from self._training(rng, d)
        tail = [heapq.heappop(pending) for _ in range(len(pending))]
        for level in (1, 2):
            items = [entry[3] for entry in tail if entry[2] == level]
            if items:
                yield BARRIER
                yield from items

    def _note_scope(self, d: DivisionsImported) -> None:
        self.scope.counties += 1
        self.scope.townships += len(d.townships)
        for c in d.communities:
            self.scope.communities[c.kind.value] += 1
            if self.first_community is None:
                self.first_community = c.code
            # Reservoir sample of the scope's communities.
            seen = sum(self.scope.communities.values())
            if len(self.sample) < 20_000:
                self.sample.append(c.code)
            else:
                j = self._sample_rng.randrange(seen)
                if j < 20_000:
                    self.sample[j] = c.code

    def _first_fact(self, o: _Org, county: str) -> Item:
        day = self.days.iso[o.start]
        if o.tier == "registered":
            return self._registration(o, county, day, "social_service_agency", o.id)
        payload = {"organization_id": o.id, "name": o.name, "community_code": o.community, "tier": o.tier,
                   "category": o.category, "filed_on": day}
        return self._item("intake", "OrganizationFiled", o.community, payload, o.id, day)

    def _registration(self, o: _Org, county: str, day: str, form: str, eid: str) -> Item:
        # Unique within the county, and the county is part of the code: unique everywhere.
        self._serials[county] += 1
        payload = {"organization_id": o.id, "name": o.name, "community_code": o.community,
                   "social_credit_code": self._credit_code(county, LEGAL_FORM_KIND[form], self._serials[county]),
                   "legal_form": form, "category": o.category, "registered_on": day}
        return self._item("intake", "OrganizationRegistered", o.community, payload, eid, day)

    def _follow_ups(self, rng: random.Random, d: DivisionsImported,
                    orgs: list[_Org]) -> tuple[list[Item], list[Item]]:
        plan, days, county = self.plan, self.days.iso, d.county.code
        level1: list[Item] = []
        level2: list[Item] = []
        by_township: dict[str, list[_Org]] = {}
        for o in orgs:
            if not o.ends:
                by_township.setdefault(o.community[:9], []).append(o)
            if o.tier != "registered" and rng.random() < plan.registered_later:
                on = self._after(rng, o.start)
                form = "social_group" if rng.random() < 0.7 else "social_service_agency"
                level1.append(self._registration(o, county, days[on], form, _uuid(rng)))
            if rng.random() < plan.brand:
                on = self._after(rng, o.start)
                level1.append(self._update(rng, o, days[on], {"brand": True, "brand_projects": rng.randint(0, 3)}))
            if o.ends:
                on = self._after(rng, o.start)
                kind = "revoked" if rng.random() < 0.1 else "deregistered"
                level2.append(self._item("intake", "OrganizationDeregistered", o.community,
                                         {"organization_id": o.id, "kind": kind, "reason": "自行解散",
                                          "ended_on": days[on]}, _uuid(rng), days[on]))
        # Hubs: most streets, towns and townships, some counties.
        for t in d.townships:
            members = by_township.get(t.code)
            if t.kind in COVERED_TOWNSHIP_KINDS and members and rng.random() < plan.township_hub:
                self._hub(rng, rng.choice(members), t.code, level1, level2)
        active = [o for o in orgs if not o.ends]
        if active and rng.random() < plan.county_hub:
            self._hub(rng, rng.choice(active), county, level1, level2)
        # Incubation bases: at the county over ~60% of its townships, and in some streets.
        covered = [t.code for t in d.townships if t.kind in COVERED_TOWNSHIP_KINDS]
        if covered and rng.random() < plan.county_base:
            chosen = sorted(rng.sample(covered, max(1, round(len(covered) * 0.6))))[:5000]
            self._base(rng, county, f"{d.county.name}社会组织孵化基地", chosen, level1, level2)
        for t in d.townships:
            if t.kind is TownshipKind.STREET and rng.random() < plan.street_base:
                self._base(rng, t.code, f"{t.name}社区社会组织培育基地", [t.code], level1, level2)
        # Party organizations.
        for o in active:
            r = rng.random()
            if r < plan.party_independent:
                self._party(rng, county, "independent_branch", [o], rng.randint(3, 12), level1, level2)
            elif r < plan.party_independent + plan.party_liaison:
                self._party(rng, county, "liaison", [o], 0, level1, level2)
            elif r < plan.party_independent + plan.party_liaison + plan.party_joint:
                neighbours = by_township.get(o.community[:9], [])
                group = {o.id: o} | {n.id: n for n in rng.sample(neighbours, min(len(neighbours), rng.randint(1, 3)))}
                self._party(rng, county, "joint_branch", list(group.values()), rng.randint(0, 2), level1, level2)
        return level1, level2

    def _update(self, rng: random.Random, o: _Org, day: str, changes: dict[str, Any]) -> Item:
        return self._item("intake", "OrganizationUpdated", o.community,
                          {"organization_id": o.id, "effective_on": day, **changes}, _uuid(rng), day)

    def _hub(self, rng: random.Random, o: _Org, region: str, level1: list[Item], level2: list[Item]) -> None:
        plan, days = self.plan, self.days.iso
        hub_id, on = _uuid(rng), self._after(rng, o.start)
        level1.append(self._item("intake", "HubEstablished", region,
                                 {"hub_id": hub_id, "organization_id": o.id, "region_code": region,
                                  "name": f"{o.name[:12]}社区社会组织联合会", "established_on": days[on]},
                                 hub_id, days[on]))
        if rng.random() < plan.hub_demonstration:
            level1.append(self._update(rng, o, days[self._after(rng, o.start)], {"hub_demonstration": True}))
        if rng.random() < plan.hub_dissolved:
            off = self._after(rng, on)
            level2.append(self._item("intake", "HubDissolved", region,
                                     {"hub_id": hub_id, "reason": "合并", "dissolved_on": days[off]},
                                     _uuid(rng), days[off]))

    def _base(self, rng: random.Random, region: str, name: str, townships: list[str], level1: list[Item],
              level2: list[Item]) -> None:
        days = self.days.iso
        base_id, on = _uuid(rng), rng.randrange(len(days) - 30)
        level1.append(self._item("intake", "IncubationBaseOpened", region,
                                 {"base_id": base_id, "name": name, "region_code": region,
                                  "covered_townships": townships, "opened_on": days[on]}, base_id, days[on]))
        if rng.random() < self.plan.base_closed:
            off = self._after(rng, on)
            level2.append(self._item("intake", "IncubationBaseClosed", region,
                                     {"base_id": base_id, "closed_on": days[off]}, _uuid(rng), days[off]))

    def _party(self, rng: random.Random, county: str, kind: str, orgs: list[_Org], members: int,
               level1: list[Item], level2: list[Item]) -> None:
        days = self.days.iso
        party_id, on = _uuid(rng), self._after(rng, max(o.start for o in orgs))
        level1.append(self._item("intake", "PartyOrganizationFormed", county,
                                 {"party_organization_id": party_id, "kind": kind,
                                  "organization_ids": [o.id for o in orgs], "members": members,
                                  "formed_on": days[on]}, party_id, days[on]))
        if rng.random() < self.plan.party_dissolved:
            off = self._after(rng, on)
            level2.append(self._item("intake", "PartyOrganizationDissolved", county,
                                     {"party_organization_id": party_id, "dissolved_on": days[off]},
                                     _uuid(rng), days[off]))

    # ------------------------------------------------------------------ training

    def _training(self, rng: random.Random, d: DivisionsImported) -> Iterator[Item]:
        """Pool members of the county and their completions, straight onto training's subjects."""
        plan, days, county = self.plan, self.days.iso, d.county.code
        people = max(3, len(d.communities) // plan.communities_per_pool_member)
        sessions = [(_uuid(rng), county if rng.random() < 0.7 else county[:4]) for _ in range(4)]
        for _ in range(people):
            person, added = _uuid(rng), rng.randrange(len(days) - 60)
            yield self._item("training", "TalentPoolMemberAdded", county,
                             {"person_id": person, "county_code": county,
                              "role": rng.choice(["cso_leader", "social_worker", "volunteer"]),
                              "added_on": days[added]}, _uuid(rng), days[added])
            completions = rng.randint(0, plan.completions_max)
            for _ in range(completions):
                session, organizer = rng.choice(sessions)
                on, completion = self._after(rng, added), _uuid(rng)
                yield self._item("training", "TrainingCompleted", organizer,
                                 {"completion_id": completion, "session_id": session, "person_id": person,
                                  "organizer_region": organizer, "county_code": county,
                                  "completed_on": days[on]}, completion, days[on])
                self._expect(organizer, "training_person_times")
            if rng.random() < plan.pool_removed:
                off = rng.randrange(added + 1, len(days))
                yield self._item("training", "TalentPoolMemberRemoved", county,
                                 {"person_id": person, "county_code": county, "reason": "调离",
                                  "removed_on": days[off]}, _uuid(rng), days[off])
            else:
                self._expect(county, "pool_members")
                if completions:
                    self._expect(county, "pool_members_trained")

    def _expect(self, region: str, counter: str) -> None:
        for r in ancestors(region)[:4]:
            self.training_expected[(r, counter)] += 1

    # ------------------------------------------------------------------ steady-state load

    def filings(self, seed: str, communities: Sequence[str], categories: Iterable[str]) -> Iterator[Item]:
        """New filings, forever, in `communities` (one category list to choose from)."""
        rng = random.Random(f"{self.seed}:{seed}")
        cats = list(categories)
        day = self.days.iso[-1]
        n = 0
        while True:
            n += 1
            community, category = rng.choice(communities), rng.choice(cats)
            oid = _uuid(rng)
            yield self._item("intake", "OrganizationFiled", community,
                             {"organization_id": oid, "name": f"新备案{NAME_SUFFIX[category]}{n}",
                              "community_code": community, "tier": "filed", "category": category,
                              "filed_on": day}, oid, day)
