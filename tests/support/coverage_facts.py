"""Generated registry facts for the property tests of targets' pure coverage engine: a few real
communities and townships, an organization's life as hypothesis draws it, facts in arrival order,
the tiers a region code counts in (the oracle's own, not the engine's), and the engine's side: the
timelines projected from a set of facts, and what applying them batch by batch moves."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone

from hypothesis import strategies as st

from contracts import events as ev
from services.targets.domain import coverage as cov
from services.targets.domain import entities as ent
from services.targets.domain.lineage import Lineage

# One community of neither kind (a farm's living quarters, 生活区): its organizations count in
# orgs_other_<tier>, not in orgs_urban or orgs_rural.
COMMUNITIES = {"510681001014": "urban", "510681001011": "urban", "510681101201": "rural",
               "511102001001": "urban", "510681101299": "other"}
TOWNSHIPS = {"510681001": "street", "510681101": "town", "511102001": "street"}
CATEGORIES = list(ev.Category)
DAY0 = date(2021, 1, 1)


def day(n: int) -> date:
    return DAY0 + timedelta(days=n)


def registered(oid: uuid.UUID, community: str, category: ev.Category, on: date) -> ev.Payload:
    # The engine never looks at the credit code; skip its validation to keep generation simple.
    return ev.OrganizationRegistered.model_construct(
        organization_id=oid, name="o", community_code=community, social_credit_code="X",
        legal_form=ev.LegalForm.SOCIAL_GROUP, category=category, registered_on=on)


@st.composite
def org_facts(draw: st.DrawFn) -> list[ev.Payload]:
    oid = draw(st.uuids())
    community = draw(st.sampled_from(sorted(COMMUNITIES)))
    start = draw(st.integers(0, 900))
    out: list[ev.Payload] = []
    if draw(st.booleans()):
        out.append(ev.OrganizationFiled(organization_id=oid, name="o", community_code=community,
                                        category=draw(st.sampled_from(CATEGORIES)), filed_on=day(start),
                                        tier=draw(st.sampled_from([ev.ManagementTier.FILED,
                                                                   ev.ManagementTier.GUIDED]))))
        if draw(st.booleans()):
            out.append(registered(oid, community, draw(st.sampled_from(CATEGORIES)),
                                  day(start + draw(st.integers(0, 300)))))
    else:
        out.append(registered(oid, community, draw(st.sampled_from(CATEGORIES)), day(start)))
    for _ in range(draw(st.integers(0, 2))):
        out.append(ev.OrganizationUpdated(
            organization_id=oid, effective_on=day(start + draw(st.integers(0, 400))),
            category=draw(st.none() | st.sampled_from(CATEGORIES)),
            brand=draw(st.booleans()), brand_projects=draw(st.integers(0, 3)),
            community_code=draw(st.none() | st.sampled_from(sorted(COMMUNITIES)))))
    if draw(st.booleans()):
        out.append(ev.OrganizationDeregistered(organization_id=oid, reason="r",
                                               ended_on=day(start + draw(st.integers(0, 500)))))
    return out


def to_facts(payloads: list[ev.Payload]) -> list[ent.Fact]:
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return [ent.Fact(base + timedelta(seconds=i), uuid.UUID(int=i + 1), p) for i, p in enumerate(payloads)]


def regions(code: str) -> list[str]:
    """Every tier a fact at `code` counts in, province down to community: the oracle's own, not
    the engine's coverage_regions."""
    return [code[:n] for n in (2, 4, 6, 9, 12) if n <= len(code)]


def project(facts: Sequence[ent.Fact], kinds: Mapping[str, str] = COMMUNITIES | TOWNSHIPS,
            lineage: Lineage = ent.NO_LINEAGE) -> dict[str, cov.Timeline]:
    """Every entity's timeline from a set of facts, through the function the service uses
    (entities.timelines_for), keyed as its rebuild keys them (services/targets/rebuild.py): each
    fact's entity but party organizations (they count through the organizations they cover), each
    organization a project supports (`supported:<organization>`), the hub and base coverage of each
    division a hub or base serves and of each township `lineage` names, and the facility coverage of
    each division a facility's place touches (its own code and those that come to stand for it)."""
    by_key: dict[str, list[ent.Fact]] = defaultdict(list)
    links: set[tuple[str, str]] = set()
    for f in facts:
        key = ent.entity_key(f.payload)
        if key:
            by_key[key].append(f)
            links.update(ent.memberships(key, f.payload))
    served = {m for o, m in links if o.startswith(("hub:", "base:"))} | {c for c in lineage.codes() if len(c) == 9}
    facilities = ent.facility_coverage_members({m for o, m in links if o.startswith("facility:")}, lineage)
    keys = ({k for k in by_key if not k.startswith("party:")} | {m for o, m in links if o.startswith("fund:")}
            | {f"hubcov:{t}" for t in served} | {f"basecov:{t}" for t in served}
            | {f"faccov:{m}" for m in facilities})
    return ent.timelines_for(keys, by_key, sorted(links), kinds, lineage)


def moved_in_batches(facts: Sequence[ent.Fact], order: Sequence[int], batches: int,
                     project: Callable[[list[ent.Fact]], dict[str, cov.Timeline]]) -> cov.Contribution:
    """What the stored coverage moves by in all, the facts applied as the service applies them: in
    `order`, in `batches` batches (each with one fact redelivered, which changes nothing: facts are
    a set by event id), each moving it by the new timelines' contribution less the stored ones'.
    Only what moved (no zero entries), to compare with the contribution projected from scratch."""
    shuffled = [facts[i] for i in order]
    deltas: cov.Contribution = Counter()
    stored: dict[str, cov.Timeline] = {}
    seen: list[ent.Fact] = []
    size = max(1, len(shuffled) // batches)
    for i in range(0, len(shuffled), size):
        seen += shuffled[i:i + size]
        seen.append(shuffled[i])
        new = project(list({f.event_id: f for f in seen}.values()))
        for key in new.keys() | stored.keys():
            deltas.update(cov.difference(stored.get(key), new.get(key)))
        stored = new
    return Counter({k: v for k, v in deltas.items() if v})
