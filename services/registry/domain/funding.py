"""Funded projects (政府购买服务, 公益创投, 孵化培育资金), as pure rules: given what is on record and a
fact, the project or a rejection naming the field. No I/O; `services/registry/funding_store.py` loads and saves.

Registry records them because they are facts clerks record about organizations, like filings: a
project names its recipient organization (or a hub and the organizations it acts for), and only
registry knows whether those exist, are active, are legal persons and where they are. The figures
(amount, projects, organizations supported per region and tier) are targets' (DESIGN §2, §4).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from uuid import UUID

from contracts.events import FundedProjectEnded, FundingProgram, ManagementTier, ProjectFunded

from .errors import NotYet, Rejected
from .rules import Interval, Organization


@dataclass(frozen=True)
class FundedProject:
    id: UUID
    name: str
    program: str
    funder_region: str
    funder_department: str
    recipient_organization_id: UUID
    hub_id: UUID | None
    region_code: str
    amount_fen: int
    awarded_on: date
    starts_on: date
    ends_on: date
    status: str = "active"          # active, completed, terminated
    ended_on: date | None = None
    end_reason: str | None = None

    def status_on(self, day: date) -> str:
        """awarded (before it starts), active, or how it ended."""
        if self.ended_on is not None and day >= self.ended_on:
            return self.status
        return "awarded" if day < self.starts_on else "active"


def _active(org: Organization | None, org_id: UUID, field: str) -> Organization:
    if org is None:
        raise NotYet(field, f"no organization {org_id} is on record", waits_for=f"organization:{org_id}")
    if org.status != "active":
        raise Rejected(field, f"organization {org_id} is {org.status} since {org.ended_on}", code="ended")
    return org


def fund(existing: FundedProject | None, recipient: Organization | None, hub: Interval | None,
         beneficiaries: dict[UUID, Organization | None], fact: ProjectFunded) -> FundedProject:
    """A project on record: its recipient active when awarded; through a hub, the hub active and run
    by the recipient, each beneficiary an active organization without legal personality under the
    hub's region; directly, a government purchase goes to a legal person (a registered organization)."""
    if existing is not None:
        raise Rejected("project_id", f"project {fact.project_id} is already on record", code="already_on_record")
    org = _active(recipient, fact.recipient_organization_id, "recipient_organization_id")
    if fact.awarded_on < org.started_on:
        raise Rejected("awarded_on", f"{fact.awarded_on} is before the recipient started on {org.started_on}",
                       code="date_order")
    if fact.hub_id is None:
        if fact.region_code != org.community_code:
            raise Rejected("region_code", f"the recipient is in community {org.community_code}, "
                                          f"not {fact.region_code}", code="region_mismatch")
        if fact.program is FundingProgram.GOVERNMENT_PURCHASE and org.tier != ManagementTier.REGISTERED.value:
            raise Rejected("recipient_organization_id",
                           f"organization {org.id} is {org.tier}, not a legal person: a government purchase "
                           "goes to a registered organization, or to a hub acting for it (hub_id)",
                           code="not_a_legal_person")
    else:
        if hub is None:
            raise NotYet("hub_id", f"no hub {fact.hub_id} is on record", waits_for=f"hub:{fact.hub_id}")
        if hub.ended_on is not None and hub.ended_on <= fact.awarded_on:
            raise Rejected("hub_id", f"hub {fact.hub_id} was dissolved on {hub.ended_on}", code="ended")
        if hub.organization_id != org.id:
            raise Rejected("recipient_organization_id",
                           f"hub {fact.hub_id} is run by organization {hub.organization_id}, not {org.id}")
        if fact.region_code != hub.region_code:
            raise Rejected("region_code", f"hub {fact.hub_id} serves {hub.region_code}, not {fact.region_code}",
                           code="region_mismatch")
        for org_id in fact.beneficiary_organization_ids:
            member = _active(beneficiaries.get(org_id), org_id, "beneficiary_organization_ids")
            if member.tier == ManagementTier.REGISTERED.value:
                raise Rejected("beneficiary_organization_ids",
                               f"organization {org_id} is registered (a legal person): it takes projects itself")
            if not member.community_code.startswith(hub.region_code):
                raise Rejected("beneficiary_organization_ids",
                               f"organization {org_id} is in {member.community_code}, outside the hub's "
                               f"region {hub.region_code}")
    return FundedProject(
        id=fact.project_id, name=fact.name, program=fact.program.value, funder_region=fact.funder_region,
        funder_department=fact.funder_department, recipient_organization_id=org.id, hub_id=fact.hub_id,
        region_code=fact.region_code, amount_fen=fact.amount_fen, awarded_on=fact.awarded_on,
        starts_on=fact.starts_on, ends_on=fact.ends_on)


def end(existing: FundedProject | None, fact: FundedProjectEnded) -> FundedProject:
    if existing is None:
        raise NotYet("project_id", f"no project {fact.project_id} is on record", waits_for=f"project:{fact.project_id}")
    if existing.ended_on is not None:
        raise Rejected("project_id", f"project {fact.project_id} already {existing.status} on {existing.ended_on}",
                       code="ended")
    if fact.ended_on < existing.awarded_on:
        raise Rejected("ended_on", f"{fact.ended_on} is before the project was awarded on {existing.awarded_on}",
                       code="date_order")
    return replace(existing, status=fact.outcome.value, ended_on=fact.ended_on, end_reason=fact.reason)
