"""Registry's rules, as pure functions: given what is on record and a fact, the new record or a
rejection naming the field (.errors). No I/O here; `store` loads the records and saves the results."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from uuid import UUID

from contracts.events import (
    EndKind,
    FacilityClosed,
    FacilityOpened,
    HubDissolved,
    HubEstablished,
    IncubationBaseClosed,
    IncubationBaseOpened,
    ManagementTier,
    OrganizationDeregistered,
    OrganizationFiled,
    OrganizationRegistered,
    OrganizationUpdated,
    PartyOrganizationDissolved,
    PartyOrganizationFormed,
)

from .errors import NotYet, Rejected


@dataclass(frozen=True)
class Organization:
    id: UUID
    name: str
    community_code: str
    tier: str
    category: str
    status: str = "active"
    legal_form: str | None = None
    social_credit_code: str | None = None
    filing_number: str | None = None
    filed_on: date | None = None
    registered_on: date | None = None
    ended_on: date | None = None
    end_reason: str | None = None
    brand: bool = False
    brand_projects: int = 0
    hub_demonstration: bool = False
    rating: str | None = None

    @property
    def started_on(self) -> date:
        starts = [d for d in (self.filed_on, self.registered_on) if d is not None]
        return min(starts)


@dataclass(frozen=True)
class Interval:
    """A hub, a base or a party organization: something that is active from one date to another."""

    id: UUID
    region_code: str
    started_on: date
    ended_on: date | None = None
    organization_id: UUID | None = None

    @property
    def active(self) -> bool:
        return self.ended_on is None


def _require_active(org: Organization | None, org_id: UUID, field: str = "organization_id") -> Organization:
    if org is None:
        raise NotYet(field, f"no organization {org_id} is on record", waits_for=f"organization:{org_id}")
    if org.status != "active":
        raise Rejected(field, f"organization {org_id} is {org.status} since {org.ended_on}", code="ended")
    return org


def file(existing: Organization | None, community_known: bool, fact: OrganizationFiled) -> Organization:
    if existing is not None:
        if _late_filing(existing, fact):
            # The registration that upgraded this filing overtook it (a redelivery after a crash
            # reorders them): the filing completes the organization's history, the tier stays.
            return replace(existing, filed_on=fact.filed_on, filing_number=fact.filing_number)
        raise Rejected("organization_id", f"organization {fact.organization_id} is already on record",
                       code="already_on_record")
    if not community_known:
        raise Rejected("community_code", f"unknown community {fact.community_code}", code="unknown_division")
    return Organization(id=fact.organization_id, name=fact.name, community_code=fact.community_code,
                        tier=fact.tier.value, category=fact.category.value,
                        filing_number=fact.filing_number, filed_on=fact.filed_on)


def _late_filing(org: Organization, fact: OrganizationFiled) -> bool:
    return (org.filed_on is None and org.tier == ManagementTier.REGISTERED.value
            and org.registered_on is not None and fact.filed_on <= org.registered_on
            and fact.community_code[:6] == org.community_code[:6])


def register(existing: Organization | None, community_known: bool, credit_code_holder: UUID | None,
             fact: OrganizationRegistered) -> Organization:
    """A new registration, or the upgrade of a filed/guided organization keeping its identity."""
    if not community_known:
        raise Rejected("community_code", f"unknown community {fact.community_code}", code="unknown_division")
    if credit_code_holder is not None and credit_code_holder != fact.organization_id:
        raise Rejected("social_credit_code",
                       f"{fact.social_credit_code} already belongs to organization {credit_code_holder}",
                       code="credit_code_taken")
    fields = dict(name=fact.name, community_code=fact.community_code,
                  tier=ManagementTier.REGISTERED.value, category=fact.category.value,
                  legal_form=fact.legal_form.value, social_credit_code=fact.social_credit_code,
                  registered_on=fact.registered_on)
    if existing is None:
        return Organization(id=fact.organization_id, **fields)  # type: ignore[arg-type]
    org = _require_active(existing, fact.organization_id)
    if org.tier == ManagementTier.REGISTERED.value:
        raise Rejected("organization_id", f"organization {org.id} is already registered", code="already_on_record")
    if org.filed_on is not None and fact.registered_on < org.filed_on:
        raise Rejected("registered_on", f"{fact.registered_on} is before its filing on {org.filed_on}",
                       code="date_order")
    return replace(org, **fields)  # type: ignore[arg-type]


def update(existing: Organization | None, community_known: bool, fact: OrganizationUpdated) -> Organization:
    org = _require_active(existing, fact.organization_id)
    if fact.community_code is not None and not community_known:
        raise Rejected("community_code", f"unknown community {fact.community_code}", code="unknown_division")
    if fact.effective_on < org.started_on:
        # Registered with no filing on record: the filing it upgraded may still be on its way (a
        # fact can overtake another), so retry for a while before refusing.
        message = f"{fact.effective_on} is before the organization started on {org.started_on}"
        if org.filed_on is None and org.tier == ManagementTier.REGISTERED.value:
            raise NotYet("effective_on", message, waits_for=f"organization:{org.id}")
        raise Rejected("effective_on", message, code="date_order")
    changes = {k: getattr(fact, k) for k in ("name", "community_code", "brand", "brand_projects",
                                             "hub_demonstration", "rating")
               if getattr(fact, k) is not None}
    if fact.category is not None:
        changes["category"] = fact.category.value
    return replace(org, **changes)


def deregister(existing: Organization | None, fact: OrganizationDeregistered) -> Organization:
    org = _require_active(existing, fact.organization_id)
    if fact.ended_on < org.started_on:
        raise Rejected("ended_on", f"{fact.ended_on} is before the organization started on {org.started_on}",
                       code="date_order")
    status = "revoked" if fact.kind is EndKind.REVOKED else "deregistered"
    return replace(org, status=status, ended_on=fact.ended_on, end_reason=fact.reason)


def establish_hub(existing: Interval | None, org: Organization | None, region_known: bool,
                  fact: HubEstablished, now_code: str | None = None) -> Interval:
    """`now_code`: the code standing for the hub's region now, when a division change retired it
    since the hub's day (its organization already follows the successor)."""
    if existing is not None:
        raise Rejected("hub_id", f"hub {fact.hub_id} is already on record", code="already_on_record")
    if not region_known:
        raise Rejected("region_code", f"{fact.region_code} is not a known township or county",
                       code="unknown_division")
    member = _require_active(org, fact.organization_id)
    if not member.community_code.startswith((fact.region_code, now_code or fact.region_code)):
        raise Rejected("region_code", f"organization {member.id} is in community {member.community_code}, "
                                      f"outside township/county {fact.region_code}")
    if fact.established_on < member.started_on:
        raise Rejected("established_on", f"{fact.established_on} is before the organization started",
                       code="date_order")
    return Interval(id=fact.hub_id, region_code=fact.region_code, started_on=fact.established_on,
                    organization_id=fact.organization_id)


# What a waiting fact's key calls each kind of interval (services/registry/waiting.py).
_KIND = {"hub": "hub", "incubation base": "base", "party organization": "party", "facility": "facility"}


def _close(existing: Interval | None, what: str, field: str, ident: UUID, day: date, day_field: str) -> Interval:
    if existing is None:
        raise NotYet(field, f"no {what} {ident} is on record", waits_for=f"{_KIND[what]}:{ident}")
    if not existing.active:
        raise Rejected(field, f"{what} {ident} already ended on {existing.ended_on}", code="ended")
    if day < existing.started_on:
        raise Rejected(day_field, f"{day} is before the {what} started on {existing.started_on}", code="date_order")
    return replace(existing, ended_on=day)


def dissolve_hub(existing: Interval | None, fact: HubDissolved) -> Interval:
    return _close(existing, "hub", "hub_id", fact.hub_id, fact.dissolved_on, "dissolved_on")


def open_base(existing: Interval | None, unknown_townships: list[str], fact: IncubationBaseOpened) -> Interval:
    if existing is not None:
        raise Rejected("base_id", f"incubation base {fact.base_id} is already on record", code="already_on_record")
    if unknown_townships:
        raise Rejected("covered_townships", f"unknown townships {', '.join(unknown_townships[:10])}",
                       code="unknown_division")
    return Interval(id=fact.base_id, region_code=fact.region_code, started_on=fact.opened_on)


def close_base(existing: Interval | None, fact: IncubationBaseClosed) -> Interval:
    return _close(existing, "incubation base", "base_id", fact.base_id, fact.closed_on, "closed_on")


def open_facility(existing: Interval | None, region_known: bool, fact: FacilityOpened) -> Interval:
    """A facility at a known division of the tier its kind allows (the contract checks the tier)."""
    if existing is not None:
        raise Rejected("facility_id", f"facility {fact.facility_id} is already on record", code="already_on_record")
    if not region_known:
        raise Rejected("region_code", f"unknown division {fact.region_code}", code="unknown_division")
    return Interval(id=fact.facility_id, region_code=fact.region_code, started_on=fact.opened_on)


def close_facility(existing: Interval | None, fact: FacilityClosed) -> Interval:
    return _close(existing, "facility", "facility_id", fact.facility_id, fact.closed_on, "closed_on")


def form_party(existing: Interval | None, members: dict[UUID, Organization | None],
               fact: PartyOrganizationFormed) -> Interval:
    if existing is not None:
        raise Rejected("party_organization_id", f"{fact.party_organization_id} is already on record",
                       code="already_on_record")
    for org_id in fact.organization_ids:
        _require_active(members.get(org_id), org_id, "organization_ids")
    counties = {org.community_code[:6] for org in members.values() if org is not None}
    if len(counties) > 1:
        raise Rejected("organization_ids", "a party organization groups organizations of one county")
    return Interval(id=fact.party_organization_id, region_code=counties.pop(), started_on=fact.formed_on)


def dissolve_party(existing: Interval | None, fact: PartyOrganizationDissolved) -> Interval:
    return _close(existing, "party organization", "party_organization_id",
                  fact.party_organization_id, fact.dissolved_on, "dissolved_on")
