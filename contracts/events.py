"""The payloads of every event of DESIGN §5, version 1.

Each payload class names its `TYPE`, `VERSION` and the bounded `CONTEXT` that publishes it, and
`region_of()` gives the division code its envelope's `region` must carry, so the subject a
message is published on always agrees with what it is about.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from .codes import CommunityCode, CountyCode, RegionCode, SocialCreditCode, TownshipCode, tier_of

CHINA = timezone(timedelta(hours=8))


# Nothing cso records happened before the People's Republic was founded; nothing it plans ends
# after LATEST. A date outside is a typo (1023 for 2023) or garbage, refused rather than counted.
EARLIEST = date(1949, 10, 1)
LATEST = date(2100, 12, 31)
_latest = (0.0, date.min)


def _latest_valid_day() -> date:
    """Tomorrow in China: dates are civil dates there, and a day of slack keeps a publisher west of
    UTC+8 valid. Worked out at most once a second (every date field of every event asks)."""
    global _latest
    now = time.monotonic()
    if now - _latest[0] > 1.0:
        _latest = (now, datetime.now(CHINA).date() + timedelta(days=1))
    return _latest[1]


def _not_future(day: date) -> date:
    if day > _latest_valid_day():
        raise ValueError(f"{day.isoformat()} is in the future")
    return _plausible(day)


def _plausible(day: date) -> date:
    if day < EARLIEST:
        raise ValueError(f"{day.isoformat()} is before {EARLIEST.isoformat()}")
    if day > LATEST:
        raise ValueError(f"{day.isoformat()} is after {LATEST.isoformat()}")
    return day


def _date_text(value: Any) -> Any:
    # pydantic would read a number as seconds (or milliseconds) since 1970: ambiguous, refused.
    if isinstance(value, int | float):
        raise ValueError("a date is written YYYY-MM-DD, not as a number")
    return value


# The published JSON Schemas carry the bounds as a pattern (JSON Schema has no minimum or maximum
# for dates): YYYY-MM-DD from 1949-10-01 to 2100-12-31; `format: date` then refuses 2023-02-30.
_MONTH_DAY = "(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
DATE_PATTERN = f"^(1949-1[0-2]-(0[1-9]|[12][0-9]|3[01])|(19[5-9][0-9]|20[0-9]{{2}}|2100)-{_MONTH_DAY})$"


def _date_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "format": "date", "pattern": DATE_PATTERN,
                           "description": description})


PastOrToday = Annotated[date, BeforeValidator(_date_text), AfterValidator(_not_future), _date_schema(
    "a date, YYYY-MM-DD, from 1949-10-01; not after tomorrow in China (UTC+8): that bound moves, so "
    "JSON Schema cannot say it and cso refuses a later date naming this field")]
# A date that may lie ahead (a session's days, a deadline), within EARLIEST..LATEST.
PlausibleDate = Annotated[date, BeforeValidator(_date_text), AfterValidator(_plausible), _date_schema(
    "a date, YYYY-MM-DD, from 1949-10-01 to 2100-12-31")]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Reason = Annotated[str, Field(min_length=1, max_length=1000)]
# Identifiers and labels with no tighter rule of their own (plan ids, task numbers, actors).
Label = Annotated[str, Field(max_length=200)]


class ManagementTier(StrEnum):
    REGISTERED = "registered"
    FILED = "filed"
    GUIDED = "guided"


class LegalForm(StrEnum):
    SOCIAL_GROUP = "social_group"
    SOCIAL_SERVICE_AGENCY = "social_service_agency"
    FOUNDATION = "foundation"


class Category(StrEnum):
    RESIDENT_SERVICES = "resident_services"
    CHARITY = "charity"
    CULTURE_SPORTS = "culture_sports"
    MEDIATION = "mediation"
    NEIGHBOURLY_HELP = "neighbourly_help"
    RURAL_REVITALIZATION = "rural_revitalization"


class OrganizationClass(StrEnum):
    FUNCTIONAL = "functional"
    INTEREST = "interest"


CLASS_OF_CATEGORY: dict[Category, OrganizationClass] = {
    Category.RESIDENT_SERVICES: OrganizationClass.FUNCTIONAL,
    Category.MEDIATION: OrganizationClass.FUNCTIONAL,
    Category.RURAL_REVITALIZATION: OrganizationClass.FUNCTIONAL,
    Category.CULTURE_SPORTS: OrganizationClass.INTEREST,
    Category.CHARITY: OrganizationClass.INTEREST,
    Category.NEIGHBOURLY_HELP: OrganizationClass.INTEREST,
}


class EndKind(StrEnum):
    DEREGISTERED = "deregistered"
    REVOKED = "revoked"


class PartyKind(StrEnum):
    INDEPENDENT_BRANCH = "independent_branch"
    JOINT_BRANCH = "joint_branch"
    ACTIVITY_BRANCH = "activity_branch"
    LIAISON = "liaison"


class TownshipKind(StrEnum):
    STREET = "street"
    TOWN = "town"
    TOWNSHIP = "township"
    SPECIAL = "special"


class CommunityKind(StrEnum):
    URBAN = "urban"
    RURAL = "rural"
    OTHER = "other"


class TargetStatus(StrEnum):
    MET = "met"
    ON_TRACK = "on_track"
    AT_RISK = "at_risk"
    MISSED = "missed"


class Payload(BaseModel):
    """Base of every event payload. Unknown fields are kept (a newer publisher may add some)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    CONTEXT: ClassVar[str]
    # Set where the event travels outside `cso.<context>.<event>.<province>.<city>.<county>`.
    SUBJECT: ClassVar[str | None] = None

    def region_of(self) -> str | None:
        """The division code this payload is about, when the payload itself names one."""
        return None


# --- registry ---------------------------------------------------------------------------------


class OrganizationFiled(Payload):
    """A community social organization filed at its township, or recorded as guided."""

    TYPE = "OrganizationFiled"
    CONTEXT = "registry"
    organization_id: UUID = Field(default_factory=uuid4)
    name: Name
    community_code: CommunityCode
    tier: Literal[ManagementTier.FILED, ManagementTier.GUIDED] = ManagementTier.FILED
    category: Category
    filing_number: str | None = Field(default=None, max_length=64)
    filed_on: PastOrToday

    def region_of(self) -> str:
        return self.community_code


class OrganizationRegistered(Payload):
    """Registered by the county civil-affairs bureau; upgrades a filed organization, same id."""

    TYPE = "OrganizationRegistered"
    CONTEXT = "registry"
    organization_id: UUID = Field(default_factory=uuid4)
    name: Name
    community_code: CommunityCode
    social_credit_code: SocialCreditCode
    legal_form: LegalForm
    category: Category
    registered_on: PastOrToday

    @model_validator(mode="after")
    def _credit_code_agrees_with_form(self) -> OrganizationRegistered:
        kind = {LegalForm.SOCIAL_GROUP: "1", LegalForm.SOCIAL_SERVICE_AGENCY: "2",
                LegalForm.FOUNDATION: "3"}[self.legal_form]
        if self.social_credit_code[0] != "5":
            raise ValueError("social_credit_code: position 1 must be 5 (civil affairs)")
        if self.social_credit_code[1] not in (kind, "9"):
            raise ValueError(
                f"social_credit_code: position 2 is {self.social_credit_code[1]!r}, "
                f"but legal_form {self.legal_form.value} needs {kind!r}"
            )
        return self

    def region_of(self) -> str:
        return self.community_code


class OrganizationUpdated(Payload):
    """A change of an active organization's attributes; only the fields given change."""

    TYPE = "OrganizationUpdated"
    CONTEXT = "registry"
    organization_id: UUID
    effective_on: PastOrToday
    name: Name | None = None
    category: Category | None = None
    community_code: CommunityCode | None = None
    brand: bool | None = None
    brand_projects: int | None = Field(default=None, ge=0, le=1000)
    hub_demonstration: bool | None = None
    rating: Literal["1A", "2A", "3A", "4A", "5A"] | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> OrganizationUpdated:
        fields = ("name", "category", "community_code", "brand", "brand_projects",
                  "hub_demonstration", "rating")
        if all(getattr(self, f) is None for f in fields):
            raise ValueError(f"an update must change at least one of {', '.join(fields)}")
        return self

    def region_of(self) -> str | None:
        return self.community_code


class OrganizationDeregistered(Payload):
    """Deregistered (注销) or revoked (撤销): it stops counting from `ended_on`."""

    TYPE = "OrganizationDeregistered"
    CONTEXT = "registry"
    organization_id: UUID
    kind: EndKind = EndKind.DEREGISTERED
    reason: Reason
    ended_on: PastOrToday


class HubEstablished(Payload):
    """An organization becomes the hub of a township (or a county)."""

    TYPE = "HubEstablished"
    CONTEXT = "registry"
    hub_id: UUID = Field(default_factory=uuid4)
    organization_id: UUID
    region_code: RegionCode
    name: Name | None = None
    leader_person_id: UUID | None = None
    established_on: PastOrToday

    @model_validator(mode="after")
    def _township_or_county(self) -> HubEstablished:
        if tier_of(self.region_code) not in ("township", "county"):
            raise ValueError("region_code: a hub serves a township (9 digits) or a county (6 digits)")
        return self

    def region_of(self) -> str:
        return self.region_code


class HubDissolved(Payload):
    TYPE = "HubDissolved"
    CONTEXT = "registry"
    hub_id: UUID
    reason: Reason | None = None
    dissolved_on: PastOrToday


class IncubationBaseOpened(Payload):
    """A base opened at a township, county or city, covering the townships it lists; or (since
    1.7.0) an incubation point at a community (村/社区孵化点: Guanghan's 三级孵化体系, Leshan's 五级联动),
    which covers its own community and lists no township."""

    TYPE = "IncubationBaseOpened"
    CONTEXT = "registry"
    base_id: UUID = Field(default_factory=uuid4)
    name: Name
    region_code: RegionCode
    covered_townships: list[TownshipCode] = Field(default_factory=list, max_length=5000, description=(
        "the townships it covers (at least one); empty for a base at a community, which covers its own"))
    opened_on: PastOrToday

    @model_validator(mode="after")
    def _covers_its_own_townships(self) -> IncubationBaseOpened:
        tier = tier_of(self.region_code)
        if tier == "community":
            if self.covered_townships:
                raise ValueError("covered_townships: a base at a community covers its own community, no township")
            return self
        if tier not in ("township", "county", "city"):
            raise ValueError("region_code: a base opens at a community, township, county or city")
        if not self.covered_townships:
            raise ValueError("covered_townships: a base at a township, county or city covers at least one")
        outside = [t for t in self.covered_townships if not t.startswith(self.region_code)]
        if outside:
            raise ValueError(
                f"covered_townships: {', '.join(outside[:5])} not under region {self.region_code}"
            )
        return self

    def region_of(self) -> str:
        return self.region_code


class IncubationBaseClosed(Payload):
    TYPE = "IncubationBaseClosed"
    CONTEXT = "registry"
    base_id: UUID
    closed_on: PastOrToday


class PartyOrganizationFormed(Payload):
    """A party branch or liaison that covers one organization, or several (a joint branch)."""

    TYPE = "PartyOrganizationFormed"
    CONTEXT = "registry"
    party_organization_id: UUID = Field(default_factory=uuid4)
    kind: PartyKind
    organization_ids: list[UUID] = Field(min_length=1, max_length=500)
    members: int = Field(default=0, ge=0, le=100_000)
    formed_on: PastOrToday

    @model_validator(mode="after")
    def _members_fit_kind(self) -> PartyOrganizationFormed:
        if self.kind is PartyKind.INDEPENDENT_BRANCH and self.members < 3:
            raise ValueError("members: an independent branch needs at least 3 formal party members")
        if self.kind is PartyKind.INDEPENDENT_BRANCH and len(self.organization_ids) != 1:
            raise ValueError("organization_ids: an independent branch covers exactly one organization")
        return self


class PartyOrganizationDissolved(Payload):
    TYPE = "PartyOrganizationDissolved"
    CONTEXT = "registry"
    party_organization_id: UUID
    dissolved_on: PastOrToday


# --- funding (since 1.5.0) ----------------------------------------------------------------------


class FundingProgram(StrEnum):
    """How a project is funded: 政府购买服务, 公益创投, 孵化培育资金."""

    GOVERNMENT_PURCHASE = "government_purchase"
    VENTURE_PHILANTHROPY = "venture_philanthropy"
    INCUBATION_FUND = "incubation_fund"


class ProjectOutcome(StrEnum):
    COMPLETED = "completed"
    TERMINATED = "terminated"


# Money travels as whole fen (分, 0.01 yuan): an integer, never a float. Up to 100 billion yuan.
AmountFen = Annotated[int, Field(ge=1, le=10_000_000_000_000, description=(
    "the amount in fen (分): yuan × 100, an integer (12,345.67 yuan is 1234567)"))]


class ProjectFunded(Payload):
    """A project funded by a region's department: awarded to an organization, or to a hub acting for
    organizations without legal personality (Guangdong: 枢纽型社会组织承接政府购买服务项目). It counts
    at `region_code`, the recipient's community or, through a hub, the hub's township or county;
    the organizations it supports are the recipient, or the hub's beneficiaries."""

    TYPE = "ProjectFunded"
    CONTEXT = "registry"
    project_id: UUID = Field(default_factory=uuid4)
    name: Name
    program: FundingProgram
    funder_region: RegionCode = Field(description="the region whose department funds it (a city, county, …)")
    funder_department: Name = Field(description="the funding department, e.g. 市民政局")
    recipient_organization_id: UUID
    hub_id: UUID | None = Field(default=None, description=(
        "the hub the recipient acts as, for the organizations in beneficiary_organization_ids"))
    beneficiary_organization_ids: list[UUID] = Field(default_factory=list, max_length=500, description=(
        "through a hub only: the organizations without legal personality (filed or guided) it serves"))
    region_code: RegionCode = Field(description=(
        "where the project counts: the recipient's community, or the hub's township or county"))
    amount_fen: AmountFen
    awarded_on: PastOrToday
    starts_on: PlausibleDate
    ends_on: PlausibleDate

    @model_validator(mode="after")
    def _consistent(self) -> ProjectFunded:
        if self.ends_on < self.starts_on:
            raise ValueError("ends_on: a project cannot end before it starts")
        if not self.region_code.startswith(self.funder_region):
            raise ValueError(f"funder_region: {self.funder_region} does not contain region_code {self.region_code}")
        if self.hub_id is None and self.beneficiary_organization_ids:
            raise ValueError("beneficiary_organization_ids: only a project through a hub (hub_id) lists them")
        if self.hub_id is not None and not self.beneficiary_organization_ids:
            raise ValueError("beneficiary_organization_ids: a hub acts for at least one organization")
        if len(set(self.beneficiary_organization_ids)) != len(self.beneficiary_organization_ids):
            raise ValueError("beneficiary_organization_ids: an organization is listed twice")
        return self

    def supported(self) -> list[UUID]:
        """The organizations the project supports."""
        return list(self.beneficiary_organization_ids) if self.hub_id else [self.recipient_organization_id]

    def region_of(self) -> str:
        return self.region_code


class FundedProjectEnded(Payload):
    """A funded project ended: completed (结项) or terminated early."""

    TYPE = "FundedProjectEnded"
    CONTEXT = "registry"
    project_id: UUID
    outcome: ProjectOutcome = ProjectOutcome.COMPLETED
    ended_on: PastOrToday
    reason: Reason | None = None


# --- facilities (since 1.8.0) -------------------------------------------------------------------


class FacilityKind(StrEnum):
    """A facility that plans count by tier and coverage: 社区社会组织创新发展基地, 社会组织创新示范园,
    社工站 (a township's, county's or city's social-work station), 社工室 (a community's social-work room)."""

    INNOVATION_BASE = "innovation_base"
    DEMONSTRATION_PARK = "demonstration_park"
    SOCIAL_WORK_STATION = "social_work_station"
    SOCIAL_WORK_ROOM = "social_work_room"


# The tiers each kind opens at. A 社工室 is a community's; a 社工站 a township's (乡镇社工站), a
# county's or a city's (县级社工总站, 市级指导中心); bases and parks at any of the four.
FACILITY_TIERS: dict[FacilityKind, tuple[str, ...]] = {
    FacilityKind.INNOVATION_BASE: ("city", "county", "township", "community"),
    FacilityKind.DEMONSTRATION_PARK: ("city", "county", "township", "community"),
    FacilityKind.SOCIAL_WORK_STATION: ("city", "county", "township"),
    FacilityKind.SOCIAL_WORK_ROOM: ("community",),
}


class FacilityOpened(Payload):
    """A facility running from `opened_on` at `region_code`, the division whose tier the plans name
    it by (a county's innovation base, a township's social-work station), until a FacilityClosed."""

    TYPE = "FacilityOpened"
    CONTEXT = "registry"
    facility_id: UUID = Field(default_factory=uuid4)
    kind: FacilityKind
    name: Name
    region_code: RegionCode = Field(description=(
        "where it counts: a city (4 digits), county (6), township (9) or community (12), as its kind allows"))
    opened_on: PastOrToday

    @model_validator(mode="after")
    def _tier_fits_kind(self) -> FacilityOpened:
        allowed = FACILITY_TIERS[self.kind]
        if tier_of(self.region_code) not in allowed:
            raise ValueError(f"region_code: a {self.kind.value} opens at a {', '.join(allowed)}, "
                             f"not a {tier_of(self.region_code)}")
        return self

    def region_of(self) -> str:
        return self.region_code


class FacilityClosed(Payload):
    """A facility stops running (停止运行: closed, or merged into another)."""

    TYPE = "FacilityClosed"
    CONTEXT = "registry"
    facility_id: UUID
    closed_on: PastOrToday
    reason: Reason | None = None


# --- divisions --------------------------------------------------------------------------------


class DivisionRef(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    code: RegionCode
    name: Name


class TownshipDivision(DivisionRef):
    kind: TownshipKind


class CommunityDivision(DivisionRef):
    kind: CommunityKind


class DivisionsImported(Payload):
    """The divisions of one county in one edition of the NBS codes, with their kinds.

    Published per county so that a message stays far below NATS's payload limit; a re-import of
    the same edition publishes the same event ids, which consumers drop as duplicates.
    """

    TYPE = "DivisionsImported"
    CONTEXT = "divisions"
    edition: str = Field(min_length=4, max_length=20)
    province: DivisionRef
    city: DivisionRef
    county: DivisionRef
    townships: list[TownshipDivision] = Field(max_length=2000)
    communities: list[CommunityDivision] = Field(max_length=20000)

    @model_validator(mode="after")
    def _nested(self) -> DivisionsImported:
        if not (self.city.code.startswith(self.province.code)
                and self.county.code.startswith(self.city.code)):
            raise ValueError("county: province, city and county codes are not nested")
        townships = {t.code for t in self.townships}
        for t in self.townships:
            if tier_of(t.code) != "township" or not t.code.startswith(self.county.code):
                raise ValueError(f"townships: {t.code} is not a township of {self.county.code}")
        for c in self.communities:
            if tier_of(c.code) != "community" or c.code[:9] not in townships:
                raise ValueError(f"communities: {c.code} is not under a listed township")
        return self

    def region_of(self) -> str:
        return self.county.code


class DivisionChanged(Payload):
    TYPE = "DivisionChanged"
    CONTEXT = "divisions"
    code: RegionCode
    change: Literal["renamed", "merged", "recoded", "abolished"]
    name: Name | None = None
    successor_code: RegionCode | None = None
    effective_on: PastOrToday

    def region_of(self) -> str:
        return self.code


# --- training ---------------------------------------------------------------------------------


class TrainingSessionScheduled(Payload):
    TYPE = "TrainingSessionScheduled"
    CONTEXT = "training"
    session_id: UUID = Field(default_factory=uuid4)
    organizer_region: RegionCode
    topic: Name
    starts_on: PlausibleDate
    ends_on: PlausibleDate
    capacity: int = Field(ge=1, le=100_000)
    mode: Literal["on_site", "online"] = "on_site"

    @model_validator(mode="after")
    def _ordered(self) -> TrainingSessionScheduled:
        if self.ends_on < self.starts_on:
            raise ValueError("ends_on: a session cannot end before it starts")
        return self

    def region_of(self) -> str:
        return self.organizer_region


TraineeRole = Literal["cso_leader", "social_worker", "volunteer", "hub_leader",
                      "civil_affairs_assistant", "children_director", "community_worker"]


class TrainingCompleted(Payload):
    """One person-time: a person completed a session, pool member or not. Only an opaque person
    id travels. `trainee_role` and `pool_member` came in contracts 1.2.0; an event without them is
    from before, when only pool members (current or past) could complete a session."""

    TYPE = "TrainingCompleted"
    CONTEXT = "training"
    completion_id: UUID = Field(default_factory=uuid4)
    session_id: UUID
    person_id: UUID
    organizer_region: RegionCode
    county_code: CountyCode
    completed_on: PastOrToday
    trainee_role: TraineeRole | None = Field(
        default=None, description="the trainee's role then: a pool role, or civil_affairs_assistant "
        "(民政助理), children_director (儿童主任), community_worker (社区工作者); absent: not said")
    pool_member: bool | None = Field(
        default=None, description="whether the person was in a county's talent pool on completing "
        "(the pool-only person-times count these); absent: an event of before 1.2.0, a pool member's")

    def region_of(self) -> str:
        return self.organizer_region


class TalentPoolMemberAdded(Payload):
    TYPE = "TalentPoolMemberAdded"
    CONTEXT = "training"
    person_id: UUID
    county_code: CountyCode
    role: Literal["cso_leader", "social_worker", "volunteer", "hub_leader"]
    added_on: PastOrToday

    def region_of(self) -> str:
        return self.county_code


class TalentPoolMemberRemoved(Payload):
    """A person left a county's talent pool. `reason` is a code (training publishes left_county,
    resigned, no_longer_active, deceased or other), never free text: personal data stays off the bus."""

    TYPE = "TalentPoolMemberRemoved"
    CONTEXT = "training"
    person_id: UUID
    county_code: CountyCode
    reason: Reason
    removed_on: PastOrToday

    def region_of(self) -> str:
        return self.county_code


class QualificationExamRecorded(Payload):
    """A social-work qualification exam taken by a person of a county's pool, and whether it was
    passed. A correction for the same person, year and level replaces the earlier record."""

    TYPE = "QualificationExamRecorded"
    CONTEXT = "training"
    person_id: UUID
    county_code: CountyCode
    year: int = Field(ge=2000, le=2100)
    level: Literal["assistant", "intermediate", "senior"] = "assistant"
    passed: bool

    def region_of(self) -> str:
        return self.county_code


# --- targets ----------------------------------------------------------------------------------


class CoverageChanged(Payload):
    """The figures of one region after a burst of events (coalesced: at most one a second)."""

    TYPE = "CoverageChanged"
    CONTEXT = "targets"
    region_code: RegionCode
    figures: dict[Label, float] = Field(max_length=500)

    def region_of(self) -> str:
        return self.region_code


class TargetStatusChanged(Payload):
    TYPE = "TargetStatusChanged"
    CONTEXT = "targets"
    target_id: str = Field(min_length=1, max_length=200)
    region_code: RegionCode
    metric: Label
    previous_status: TargetStatus | None
    status: TargetStatus
    value: float | None
    threshold: float
    deadline: PlausibleDate
    title: str | None = Field(default=None, max_length=200, description="the target's title (since 1.3.0; "
                              "absent: an event of before, when consumers looked the title up themselves)")
    comparison: Literal[">=", "<="] | None = Field(
        default=None, description="how value meets threshold (since 1.3.0; absent: an event of before)")

    def region_of(self) -> str:
        return self.region_code


# The lead times (days before a deadline) at which targets announces a deadline approaching, for
# target instances (TargetDeadlineApproaching) and plan tasks (TaskDeadlineApproaching) alike.
# One announcement per thing, deadline and lead. Per-subscription lead times work either way: a
# consumer keeps the announcements whose `lead_days` a subscription chose among these, or (as
# notify does) it keeps each deadline it hears of and reminds by its own clock at any lead: the
# first lead, 366 days, makes every deadline within a year known. Reaching a lead late (a task
# imported 20 days before its deadline, a service down for days) announces only the smallest lead
# reached, never a stale one, with the days truly left in `days_ahead`; a deadline moved is a new
# deadline, announced at its own leads. Adding a lead is not breaking.
DEADLINE_LEADS: tuple[int, ...] = (366, 180, 90, 60, 30, 14, 7, 3, 1)


def lead_reached(deadline: date, today: date, leads: tuple[int, ...] = DEADLINE_LEADS) -> int | None:
    """The lead announced on `today`: the smallest lead not yet passed (None: none reached yet, or
    the deadline is past). 20 days before, with leads 30 and 7: 30 (the 7-day one is not due yet)."""
    left = (deadline - today).days
    if left < 0:
        return None
    reached = [lead for lead in leads if left <= lead]
    return min(reached) if reached else None


class TargetDeadlineApproaching(Payload):
    """A target instance's deadline is `days_ahead` days away (published once per instance, deadline
    and lead time, by targets' daily evaluation): whoever reminds people needs no catalogue of its own.
    Lead times: `DEADLINE_LEADS` (since 1.5.0; before, 30 and 7 only, and no `lead_days`)."""

    TYPE = "TargetDeadlineApproaching"
    CONTEXT = "targets"
    target_id: str = Field(min_length=1, max_length=200)
    region_code: RegionCode
    title: str = Field(max_length=200)
    metric: Label
    threshold: float
    comparison: Literal[">=", "<="]
    deadline: PlausibleDate
    days_ahead: int = Field(ge=0, le=366)
    status: TargetStatus | None = None
    value: float | None = None
    lead_days: int | None = Field(default=None, ge=0, le=366, description=(
        "the lead time this announcement is for, one of DEADLINE_LEADS (366, 180, 90, 60, 30, 14, 7, 3, 1); "
        "days_ahead can be smaller when the lead was reached late. Since 1.5.0; absent: an event of "
        "before, announced at 30 and 7 days only (7 when days_ahead <= 7, else 30)"))

    def region_of(self) -> str:
        return self.region_code


class TaskDeadlineApproaching(Payload):
    """A plan task's deadline is `days_ahead` days away and the task is not accepted (since 1.5.0).

    targets publishes it once per task, deadline and lead time of `DEADLINE_LEADS` (366, 180, 90,
    60, 30, 14, 7, 3 and 1 days before), from its sweep of plans; a lead reached late is announced
    with the days truly left, and only the smallest lead reached. A reminder consumer keeps the
    announcements whose `lead_days` a subscription chose, or keeps the deadline and reminds at any
    lead by its own clock. A deadline moved by a re-import is announced again at its own leads;
    an accepted task is announced no more (its TaskStatusChanged says so). The region is the
    task's scope (the plan's region, or the task's community); `lead_units` are every lead unit
    (joint leads each lead it)."""

    TYPE = "TaskDeadlineApproaching"
    CONTEXT = "targets"
    plan_id: Label
    plan_title: str = Field(max_length=200)
    task_no: Label
    title: str = Field(max_length=200, description="the task's title")
    region_code: RegionCode
    deadline: PlausibleDate
    days_ahead: int = Field(ge=0, le=366)
    lead_days: int = Field(ge=0, le=366, description="the lead time this announcement is for, one of "
                           "DEADLINE_LEADS; days_ahead can be smaller when the lead was reached late")
    lead_units: list[Label] = Field(min_length=1, max_length=50)
    status: Label = Field(description="the task's state that day: not_started, in_progress or submitted")

    def region_of(self) -> str:
        return self.region_code


class TaskStatusChanged(Payload):
    TYPE = "TaskStatusChanged"
    CONTEXT = "targets"
    plan_id: Label
    task_no: Label
    region_code: RegionCode
    previous_status: Label | None
    status: Label
    by: Label | None = None
    note: str | None = Field(default=None, max_length=4000)

    def region_of(self) -> str:
        return self.region_code


class TaskOverdue(Payload):
    TYPE = "TaskOverdue"
    CONTEXT = "targets"
    plan_id: Label
    task_no: Label
    region_code: RegionCode
    lead_unit: Label | None = None
    deadline: PlausibleDate
    lead_units: list[Label] | None = Field(
        default=None, max_length=50, description="every lead unit of the task, lead_unit first: joint "
        "leads (「市委组织部、市民政局」牵头) each have it overdue; absent: an event of before 1.2.0")

    def region_of(self) -> str:
        return self.region_code


class PlanAccepted(Payload):
    TYPE = "PlanAccepted"
    CONTEXT = "targets"
    plan_id: Label
    region_code: RegionCode
    by: Label | None = None

    def region_of(self) -> str:
        return self.region_code


class BusGapDetected(Payload):
    """A service found a stream behind what it had published or applied: the bus lost messages.
    Its envelope's region is "00", the whole country."""

    TYPE = "BusGapDetected"
    CONTEXT = "ops"
    stream: Label
    consumer: Label
    applied_sequence: int = Field(ge=0)
    stream_last_sequence: int = Field(ge=0)
    # What was lost and what to do (absent from events of before 2026-12: they said only the above).
    lost_after_sequence: int | None = Field(default=None, ge=0, description=(
        "Messages after this sequence of the stream as it was are gone (the ones up to it were "
        "published or applied and are safe)"))
    lost_through_sequence: int | None = Field(default=None, ge=0, description=(
        "The stream held at least up to this sequence when last seen intact; later ones may be gone too"))
    lost_at_least: int | None = Field(default=None, ge=0)
    stream_recreated: bool | None = None
    stream_first_sequence: int | None = Field(default=None, ge=0)
    action: Reason | None = Field(default=None, description="What cso does about it, and what is left to do")


class IntakeLost(Payload):
    """The intake stream lost facts that JetStream had acknowledged: told to each publisher.

    Registry publishes it on `cso.receipts.<source>.lost` (core NATS) for every source it has seen
    on intake, as soon as it notices the loss. The facts are those of the stream's sequences after
    `applied_sequence`: at least up to `last_seen_sequence`, and any fact acknowledged after
    `intact_at` may be among them. No outbox holds them: a publisher asks for its receipts
    (`cso.query.registry.receipts.<source>`) and publishes again, under the same event_id, what
    has none (`cso publish --reconcile FILE`). Its envelope's region is "00"."""

    TYPE = "IntakeLost"
    CONTEXT = "receipts"
    SUBJECT = "cso.receipts.<source>.lost"
    stream: Label
    applied_sequence: int = Field(ge=0, description="Registry applied every message up to this one")
    last_seen_sequence: int = Field(ge=0, description="The stream held at least this many when last seen intact")
    lost_at_least: int = Field(ge=0)
    intact_at: AwareDatetime | None = Field(description="When registry last saw the stream intact")
    detected_at: AwareDatetime
    stream_recreated: bool
    stream_first_sequence: int = Field(ge=0, description="The stream as registry found it")
    stream_last_sequence: int = Field(ge=0)
    action: Reason


# --- notify -----------------------------------------------------------------------------------


class NotificationSent(Payload):
    TYPE = "NotificationSent"
    CONTEXT = "notify"
    delivery_id: UUID
    subscription_id: UUID
    channel: Literal["email", "webhook", "inbox"]
    event_id: UUID
    attempts: int = Field(ge=1, le=1000)


class NotificationFailed(Payload):
    TYPE = "NotificationFailed"
    CONTEXT = "notify"
    delivery_id: UUID
    subscription_id: UUID
    channel: Literal["email", "webhook", "inbox"]
    event_id: UUID
    attempts: int = Field(ge=1, le=1000)
    error: str = Field(max_length=4000)


class OutstandingOrganizationSelected(Payload):
    """An organization a county selected as outstanding (优秀社区社会组织) for a year (since 1.4.0).
    Plans promise a number each year ("每年推选不少于10个优秀社区社会组织")."""

    TYPE = "OutstandingOrganizationSelected"
    CONTEXT = "training"
    organization_id: UUID
    county_code: CountyCode
    year: int = Field(ge=1990, le=2100)

    def region_of(self) -> str:
        return self.county_code


PAYLOADS: tuple[type[Payload], ...] = (
    OrganizationFiled, OrganizationRegistered, OrganizationUpdated, OrganizationDeregistered,
    HubEstablished, HubDissolved, IncubationBaseOpened, IncubationBaseClosed,
    PartyOrganizationFormed, PartyOrganizationDissolved, ProjectFunded, FundedProjectEnded,
    FacilityOpened, FacilityClosed, DivisionsImported, DivisionChanged,
    TrainingSessionScheduled, TrainingCompleted, TalentPoolMemberAdded, TalentPoolMemberRemoved,
    QualificationExamRecorded, OutstandingOrganizationSelected,
    CoverageChanged, TargetStatusChanged, TargetDeadlineApproaching,
    TaskStatusChanged, TaskOverdue, TaskDeadlineApproaching, PlanAccepted,
    BusGapDetected, IntakeLost, NotificationSent, NotificationFailed,
)
PAYLOAD_BY_TYPE: dict[str, type[Payload]] = {p.TYPE: p for p in PAYLOADS}


def payload_fields(payload: Payload) -> dict[str, Any]:
    """The payload as JSON-ready data, unknown fields included."""
    return payload.model_dump(mode="json")
