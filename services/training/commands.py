"""The bodies of training's commands (HTTP `POST /commands/{name}` and NATS `cso.cmd.training.{name}`).

Unlike registry's, most bodies are not event payloads: they carry personal data that stays in
training. Unknown fields are refused (a misspelt field must not silently drop a person's data), and
a rejected ID number is never echoed back.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from contracts import events as ev
from contracts.codes import CountyCode
from contracts.events import CHINA, Name, PastOrToday, Reason

from .domain import ORGANIZER_TIERS, Role, TraineeRole, normalize_name, normalize_phone, validate_id_number


def today() -> date:
    """Today's civil date in China (dates in cso are Chinese civil dates)."""
    return datetime.now(CHINA).date()


def _id_number(raw: str) -> str:
    return validate_id_number(raw, today())


def _phone(raw: object) -> object:
    return normalize_phone(raw) if isinstance(raw, str) else raw


def _name(raw: object) -> object:
    return normalize_name(raw) if isinstance(raw, str) else raw


IdNumber = Annotated[str, Field(max_length=40), AfterValidator(_id_number)]
Phone = Annotated[str, Field(max_length=40), BeforeValidator(_phone)]
PersonName = Annotated[str, BeforeValidator(_name), Field(min_length=1, max_length=50)]
Year = Annotated[int, Field(ge=1990, le=2100)]


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AddMember(Command):
    """Add a person to a county's core-talent pool."""

    person_id: UUID | None = None
    county_code: CountyCode
    role: Role
    organization_id: UUID | None = None
    name: PersonName
    id_number: IdNumber | None = None
    phone: Phone | None = None
    added_on: PastOrToday = Field(default_factory=today)

    @model_validator(mode="after")
    def _identifiable(self) -> AddMember:
        if self.id_number is None and self.phone is None:
            raise ValueError("id_number: give an ID number, or a phone with the name, to tell people apart")
        return self


class AddTrainee(Command):
    """Record a trainee outside the pools, so their completions count as person-times: a
    民政助理 (civil_affairs_assistant), 儿童主任 (children_director), 社区工作者 (community_worker), or
    one of the pool roles (cso_leader, social_worker 社会工作者, volunteer, hub_leader) held outside a
    pool. Sent again for the same person, it corrects their role or county."""

    person_id: UUID | None = None
    county_code: CountyCode
    role: TraineeRole
    name: PersonName
    id_number: IdNumber | None = None
    phone: Phone | None = None
    added_on: PastOrToday = Field(default_factory=today)

    @model_validator(mode="after")
    def _identifiable(self) -> AddTrainee:
        if self.id_number is None and self.phone is None and self.person_id is None:
            raise ValueError("id_number: give an ID number, or a phone with the name, to tell people apart")
        return self


class UpdateMember(Command):
    """Correct a person's details, or change their role / organization in their pool."""

    person_id: UUID
    name: PersonName | None = None
    id_number: IdNumber | None = None
    phone: Phone | None = None
    role: Role | None = None
    organization_id: UUID | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> UpdateMember:
        fields = ("name", "id_number", "phone", "role", "organization_id")
        if all(getattr(self, f) is None for f in fields):
            raise ValueError(f"an update must change at least one of {', '.join(fields)}")
        return self


class RemovalReason(StrEnum):
    """Why a person left a pool, as published: a code, never the official's words, because
    TalentPoolMemberRemoved travels on the bus, where personal data may not go."""

    LEFT_COUNTY = "left_county"
    RESIGNED = "resigned"
    NO_LONGER_ACTIVE = "no_longer_active"
    DECEASED = "deceased"
    OTHER = "other"


class RemoveMember(Command):
    person_id: UUID
    # The official's own words: kept in training's schema (erased with the person), never published.
    reason: Reason
    reason_code: RemovalReason = RemovalReason.OTHER
    removed_on: PastOrToday = Field(default_factory=today)


class ScheduleSession(Command, ev.TrainingSessionScheduled):
    """Schedule a training session: the TrainingSessionScheduled payload it announces.

    The contract's own model (its fields and checks), with no unknown field, and an organizer of a
    tier that organizes sessions."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _organizer_tier(self) -> ScheduleSession:
        if len(self.organizer_region) not in ORGANIZER_TIERS:
            raise ValueError("organizer_region: a session is organized by a city (4 digits), "
                             "a county (6) or a township (9)")
        return self


class Enrol(Command):
    session_id: UUID
    person_id: UUID


class Withdraw(Command):
    session_id: UUID
    person_id: UUID


class RecordAttendance(Command):
    session_id: UUID
    person_id: UUID
    attended: bool = True


class CompleteSession(Command):
    session_id: UUID
    person_ids: list[UUID] | None = Field(default=None, min_length=1, max_length=100_000)
    completed_on: PastOrToday | None = None


class CancelSession(Command):
    session_id: UUID
    reason: Reason
    cancelled_on: PastOrToday = Field(default_factory=today)


class RecordExam(Command):
    """A social-work qualification exam (社会工作者职业资格考试) taken, and whether it was passed."""

    person_id: UUID
    year: Year
    level: Literal["assistant", "intermediate", "senior"] = "assistant"
    passed: bool

    @model_validator(mode="after")
    def _not_future(self) -> RecordExam:
        if self.year > today().year:
            raise ValueError(f"year: {self.year} is in the future")
        return self


class SelectOutstanding(Command):
    """An outstanding organization or leader selected by a county for a year (优秀社区社会组织 / 带头人)."""

    county_code: CountyCode
    year: Year
    kind: Literal["organization", "leader"]
    organization_id: UUID | None = None
    person_id: UUID | None = None
    title: Name | None = None

    @model_validator(mode="after")
    def _subject(self) -> SelectOutstanding:
        if self.year > today().year:
            raise ValueError(f"year: {self.year} is in the future")
        if self.kind == "organization" and (self.organization_id is None or self.person_id is not None):
            raise ValueError("organization_id: an outstanding organization is named by organization_id only")
        if self.kind == "leader" and (self.person_id is None or self.organization_id is not None):
            raise ValueError("person_id: an outstanding leader is named by person_id only")
        return self

    @property
    def subject(self) -> UUID:
        subject = self.organization_id if self.kind == "organization" else self.person_id
        assert subject is not None
        return subject


class AttendanceSheet(Command):
    """A whole attendance sheet over NATS (HTTP takes the file itself: POST /sessions/{id}/attendance)."""

    session_id: UUID
    sheet: str | None = Field(default=None, description="the CSV as text")
    sheet_base64: str | None = Field(default=None, description="the CSV file's bytes, base64 (for GBK)")
    dry_run: bool = False
    accept_partial: bool = False

    @model_validator(mode="after")
    def _one_sheet(self) -> AttendanceSheet:
        if (self.sheet is None) == (self.sheet_base64 is None):
            raise ValueError("sheet: give the sheet as text (sheet) or as base64 bytes (sheet_base64)")
        return self


COMMANDS: dict[str, type[Command]] = {
    "add_member": AddMember,
    "add_trainee": AddTrainee,
    "update_member": UpdateMember,
    "remove_member": RemoveMember,
    "schedule": ScheduleSession,
    "enrol": Enrol,
    "withdraw": Withdraw,
    "attend": RecordAttendance,
    "complete": CompleteSession,
    "cancel": CancelSession,
    "record_exam": RecordExam,
    "select_outstanding": SelectOutstanding,
    "attendance_sheet": AttendanceSheet,
}
