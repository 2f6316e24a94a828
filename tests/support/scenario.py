"""A seeded, causally ordered workload of registry and training facts over real divisions."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import date, timedelta

from contracts import codes
from contracts import events as ev

CATEGORIES = list(ev.Category)
RATINGS: tuple[str | None, ...] = (None, "1A", "2A", "3A", "4A", "5A")   # 等级评估, or none given


def credit_code(county: str = "510681", kind: str = "2", serial: int = 1) -> str:
    """A valid unified social credit code (统一社会信用代码) of a social organization (5) of `kind`
    (1 social group, 2 private non-enterprise unit) registered in `county`, numbered `serial`."""
    first17 = f"5{kind}{county}MJ{serial:07d}"
    return first17 + codes.uscc_check_character(first17)


def random_credit_code(rng: random.Random, kind: str, county: str) -> str:
    return credit_code(county, kind, int("".join(rng.choice("0123456789") for _ in range(7))))


def day(rng: random.Random, after: date, before: date = date(2025, 12, 31)) -> date:
    span = (before - after).days
    return after + timedelta(days=rng.randint(0, max(span, 0)))


def workload(seed: int, communities: Sequence[str], townships: Sequence[str],
             organizations: int = 1500, people: int = 150) -> list[ev.Payload]:
    """Filings, registrations, updates, hubs, bases, party organizations, deregistrations and
    training, in an order registry accepts (each fact after the ones it depends on)."""
    rng = random.Random(seed)
    start = date(2021, 1, 1)
    created: list[tuple[ev.Payload, date]] = []
    later: list[ev.Payload] = []
    orgs: list[tuple[uuid.UUID, str, date]] = []
    for _ in range(organizations):
        oid, community = uuid.uuid4(), rng.choice(communities)
        category = rng.choice(CATEGORIES)
        on = day(rng, start)
        if rng.random() < 0.7:
            created.append((ev.OrganizationFiled(organization_id=oid, name=f"组织{oid.hex[:6]}",
                                                 community_code=community, category=category,
                                                 tier=rng.choice(["filed"] * 4 + ["guided"]),
                                                 filed_on=on), on))
            if rng.random() < 0.2:
                later.append(ev.OrganizationRegistered(
                    organization_id=oid, name=f"协会{oid.hex[:6]}", community_code=community,
                    social_credit_code=random_credit_code(rng, "1", community[:6]), legal_form="social_group",
                    category=category, registered_on=day(rng, on)))
        else:
            created.append((ev.OrganizationRegistered(
                organization_id=oid, name=f"中心{oid.hex[:6]}", community_code=community,
                social_credit_code=random_credit_code(rng, "2", community[:6]),
                legal_form="social_service_agency", category=category, registered_on=on), on))
        orgs.append((oid, community, on))
    created.sort(key=lambda c: c[1])
    for oid, _, on in rng.sample(orgs, len(orgs) // 10):
        later.append(ev.OrganizationUpdated(organization_id=oid, effective_on=day(rng, on),
                                            brand=True, brand_projects=rng.randint(0, 2),
                                            hub_demonstration=rng.random() < 0.3,
                                            # a grade from the id, not the rng: the rest of the
                                            # scenario stays as it was
                                            rating=RATINGS[oid.int % len(RATINGS)]))
    by_township: dict[str, list[tuple[uuid.UUID, str, date]]] = {}
    for o in orgs:
        by_township.setdefault(o[1][:9], []).append(o)
    hubs: list[ev.Payload] = []
    endings: list[ev.Payload] = []
    for township in townships:
        members = by_township.get(township)
        if not members or rng.random() < 0.3:
            continue
        oid, _, on = rng.choice(members)
        hub = ev.HubEstablished(organization_id=oid, region_code=township, established_on=day(rng, on))
        hubs.append(hub)
        if rng.random() < 0.15:
            endings.append(ev.HubDissolved(hub_id=hub.hub_id, dissolved_on=day(rng, hub.established_on)))
    counties = sorted({t[:6] for t in townships})
    for county in rng.sample(counties, min(5, len(counties))):
        covered = [t for t in townships if t.startswith(county)]
        base = ev.IncubationBaseOpened(name=f"{county}孵化基地", region_code=county,
                                       covered_townships=rng.sample(covered, max(1, len(covered) // 2)),
                                       opened_on=day(rng, start))
        hubs.append(base)
        if rng.random() < 0.3:
            endings.append(ev.IncubationBaseClosed(base_id=base.base_id, closed_on=day(rng, base.opened_on)))
    for oid, _, on in rng.sample(orgs, len(orgs) // 15):
        party = ev.PartyOrganizationFormed(kind="independent_branch", organization_ids=[oid], members=3,
                                           formed_on=day(rng, on))
        hubs.append(party)
        if rng.random() < 0.1:
            endings.append(ev.PartyOrganizationDissolved(party_organization_id=party.party_organization_id,
                                                         dissolved_on=day(rng, party.formed_on)))
    for oid, _, on in rng.sample(orgs, len(orgs) // 10):
        endings.append(ev.OrganizationDeregistered(organization_id=oid, reason="自行解散",
                                                   ended_on=day(rng, on, date(2026, 6, 30))))
    training: list[ev.Payload] = []
    for _ in range(people):
        person, county = uuid.uuid4(), rng.choice(counties)
        added = day(rng, start)
        training.append(ev.TalentPoolMemberAdded(person_id=person, county_code=county, role="cso_leader",
                                                 added_on=added))
        for _ in range(rng.randint(0, 3)):
            training.append(ev.TrainingCompleted(session_id=uuid.uuid4(), person_id=person,
                                                 organizer_region=rng.choice([county, county[:4]]),
                                                 county_code=county, completed_on=day(rng, added)))
        if rng.random() < 0.1:
            training.append(ev.TalentPoolMemberRemoved(person_id=person, county_code=county,
                                                       reason="调离", removed_on=day(rng, added)))
    # Registrations come after filings; everything about an organization after it exists.
    return [c for c, _ in created] + later + hubs + endings + training


def regions_of(facts: list[ev.Payload]) -> dict[str, str]:
    """What an outside system knows: the region of each record it publishes facts about."""
    out: dict[str, str] = {}
    for f in facts:
        match f:
            case ev.OrganizationFiled() | ev.OrganizationRegistered():
                out[str(f.organization_id)] = f.community_code
            case ev.HubEstablished():
                out[str(f.hub_id)] = f.region_code
            case ev.IncubationBaseOpened():
                out[str(f.base_id)] = f.region_code
            case ev.PartyOrganizationFormed():
                out[str(f.party_organization_id)] = out[str(f.organization_ids[0])][:6]
    return out
