"""Generated registry facts for the property tests of targets' pure coverage engine: a few real
communities and townships, an organization's life as hypothesis draws it, facts in arrival order,
and the tiers a region code counts in (the oracle's own, not the engine's)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

from hypothesis import strategies as st

from contracts import events as ev
from services.targets.domain import entities as ent

COMMUNITIES = {"510681001014": "urban", "510681001011": "urban", "510681101201": "rural",
               "511102001001": "urban"}
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
