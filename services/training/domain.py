"""Training's rules, as pure functions: given what is on record and a command, the new records (and
what they announce) or a rejection naming the field. No I/O and no clock here: `store` loads the
records, `record` passes today's date in, saves the results and stages the events.

Personal data stays here and in training's own tables: a resident ID number is kept only as a keyed
hash (to find duplicates) and a masked form (to show); names and phones are masked whenever they
leave the service in a log line or a report. The bus sees an opaque person id and a region only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Generic, Literal, TypeVar
from uuid import UUID, uuid5


class Rejected(Exception):
    """A command or fact that breaks one of training's rules: refused, nothing written. `field`
    names the field at fault as the command (or event) names it; a message starting "no … is on
    record" about an `*_id` field means the thing is unknown (HTTP 404). The edges translate it:
    the API into an HTTP status, the handler table into the consumer's refusal (a dead letter)."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class OutOfScope(Rejected):
    """What the command touches lies outside the caller's region (its token's scope): HTTP 403."""

# --- GB 11643-1999: the citizen identity number ------------------------------------------------

ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK_CHARACTERS = "10X98765432"


class BadIdNumber(ValueError):
    """An ID number that breaks GB 11643; `checksum` tells a wrong check character from the rest.

    Messages never repeat the number (nor the birth date in it): they end up in logs and replies.
    """

    def __init__(self, message: str, checksum: bool = False) -> None:
        super().__init__(message)
        self.checksum = checksum


def id_check_character(first17: str) -> str:
    """The 18th character of a resident ID number, from its first 17 digits."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise BadIdNumber("the first 17 characters of an ID number are digits")
    total = sum(int(d) * w for d, w in zip(first17, ID_WEIGHTS, strict=True))
    return ID_CHECK_CHARACTERS[total % 11]


def normalize_id_number(raw: str) -> str:
    """Full-width digits, spaces and a spreadsheet's leading apostrophe removed; x upper-cased."""
    text = unicodedata.normalize("NFKC", raw)
    return re.sub(r"\s+", "", text).lstrip("'").upper()


def validate_id_number(raw: str, today: date) -> str:
    """The normalized 18-character ID number, or BadIdNumber saying what is wrong with it."""
    code = normalize_id_number(raw)
    if re.fullmatch(r"\d(\.\d+)?E\+\d+", code):
        raise BadIdNumber("a spreadsheet turned the ID number into a number (…E+17); "
                          "format the column as text and enter it again")
    if len(code) != 18:
        raise BadIdNumber(f"a resident ID number has 18 characters, got {len(code)}")
    if not (code[:17].isascii() and code[:17].isdigit()) or code[17] not in "0123456789X":
        raise BadIdNumber("a resident ID number is 17 digits and a final digit or X")
    if code[0] == "0":
        raise BadIdNumber("positions 1-6 are not a division code")
    try:
        birth = date(int(code[6:10]), int(code[10:12]), int(code[12:14]))
    except ValueError:
        raise BadIdNumber("positions 7-14 are not a valid birth date") from None
    if birth.year < 1900 or birth > today:
        raise BadIdNumber("positions 7-14 give a birth date before 1900 or in the future")
    expected = id_check_character(code[:17])
    if code[17] != expected:
        raise BadIdNumber(f"check character is {code[17]!r} but GB 11643 gives {expected!r}",
                          checksum=True)
    return code


def id_hash(key: bytes, id_number: str) -> str:
    """The keyed hash kept for finding duplicates: HMAC-SHA256, hex. Useless without the key."""
    return hmac.new(key, id_number.encode("ascii"), hashlib.sha256).hexdigest()


def mask_id(id_number: str) -> str:
    """5106**********123X: enough to recognize a number one holds, not to recover one."""
    return id_number[:4] + "*" * (len(id_number) - 8) + id_number[-4:]


def mask_phone(phone: str | None) -> str | None:
    if phone is None:
        return None
    if len(phone) < 7:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]


def mask_name(name: str | None) -> str | None:
    if not name:
        return name
    return name[0] + "*" * max(len(name) - 1, 1)


def normalize_phone(raw: str) -> str:
    """Digits only (a landline keeps its area code); +86 / 0086 dropped. ValueError if it is not one."""
    text = re.sub(r"[\s()\-]", "", unicodedata.normalize("NFKC", raw)).lstrip("'")
    for prefix in ("+86", "0086"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if not text.isascii() or not text.isdigit() or not 7 <= len(text) <= 15:
        raise ValueError("a phone number is 7 to 15 digits")
    if len(text) == 11 and text.startswith("1") and text[1] not in "3456789":
        raise ValueError("not a mainland mobile number")
    return text


def normalize_name(raw: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", raw)).strip()


# --- records -----------------------------------------------------------------------------------

Role = Literal["cso_leader", "social_worker", "volunteer", "hub_leader"]
ROLES: tuple[Role, ...] = ("cso_leader", "social_worker", "volunteer", "hub_leader")
# Who training may record a completion for (DESIGN §3: trainees are wider than the pools): the
# pool roles, and those the plans train besides. The list is closed on purpose: a role is how
# plans count trainees, so a misspelt one must be refused, not counted apart.
TraineeRole = Literal["cso_leader", "social_worker", "volunteer", "hub_leader",
                      "civil_affairs_assistant", "children_director", "community_worker"]
TRAINEE_ROLES: dict[str, str] = {
    "cso_leader": "社区社会组织负责人",
    "social_worker": "社会工作者",
    "volunteer": "志愿者",
    "hub_leader": "枢纽型社会组织负责人",
    "civil_affairs_assistant": "民政助理",
    "children_director": "儿童主任",
    "community_worker": "社区工作者",
}
TRAINING = UUID("6f1d3c52-7a0e-4b8e-9a57-2d1c9e0b6a11")   # namespace of derived ids


@dataclass(frozen=True)
class Person:
    id: UUID
    name: str | None = None
    phone: str | None = None
    id_hash: str | None = None
    id_masked: str | None = None

    def masked(self) -> str:
        return f"{self.id} ({mask_name(self.name) or 'no name'}, {mask_phone(self.phone) or 'no phone'})"


@dataclass(frozen=True)
class Membership:
    """A person in one county's pool, from `added_on` until removed. A person is in at most one
    county's pool at a time (a move is a removal there and an addition here)."""

    person_id: UUID
    county_code: str
    role: str
    added_on: date
    organization_id: UUID | None = None
    removed_on: date | None = None
    removal_reason: str | None = None
    hub_id: UUID | None = None

    @property
    def active(self) -> bool:
        return self.removed_on is None


@dataclass(frozen=True)
class Trainee:
    """A person trained outside the pools (or besides their pool role): their role and the county
    they work in, where their completions count when they are in no pool."""

    person_id: UUID
    role: str
    county_code: str
    added_on: date


@dataclass(frozen=True)
class Organization:
    id: UUID
    community_code: str
    status: str = "active"


@dataclass(frozen=True)
class Session:
    id: UUID
    organizer_region: str
    topic: str
    starts_on: date
    ends_on: date
    capacity: int
    mode: str = "on_site"
    status: str = "scheduled"       # scheduled | completed | cancelled
    completed_on: date | None = None
    cancelled_on: date | None = None
    cancel_reason: str | None = None


@dataclass(frozen=True)
class Enrolment:
    session_id: UUID
    person_id: UUID
    status: str = "enrolled"        # enrolled | withdrawn | released (the session was cancelled)
    attended: bool | None = None    # None: not recorded yet


@dataclass(frozen=True)
class Completion:
    id: UUID
    session_id: UUID
    person_id: UUID
    organizer_region: str
    county_code: str
    completed_on: date
    role: str | None = None         # the trainee's role then (None: a person with no role on record)
    in_pool: bool = False           # in a county's pool when they completed it


@dataclass(frozen=True)
class Standing:
    """Where a person's completion counts and as whom: their current pool membership, else their
    trainee record, else their latest pool membership."""

    county_code: str
    role: str
    in_pool: bool


def standing(membership: Membership | None, trainee: Trainee | None) -> Standing | None:
    if membership is not None and membership.active:
        return Standing(membership.county_code, membership.role, True)
    if trainee is not None:
        return Standing(trainee.county_code, trainee.role, False)
    if membership is not None:
        return Standing(membership.county_code, membership.role, False)
    return None


def _missing(field: str, what: str, ident: UUID) -> Rejected:
    # "no … is on record" on an *_id field is what the API turns into a 404.
    return Rejected(field, f"no {what} {ident} is on record")


# --- talent pool -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """Who a command about a person may be about, as found by each key it gives."""

    by_person_id: Person | None = None
    by_id_number: Person | None = None
    by_contact: Person | None = None    # same phone and name, and no (other) ID number on record


@dataclass(frozen=True)
class NewPerson:
    """A person a command records, in a county's pool (`add_member`) or as a trainee
    (`add_trainee`): who they are, and where and as whom they count."""

    person_id: UUID | None
    county_code: str
    role: str
    name: str
    added_on: date
    organization_id: UUID | None = None     # pool members only: the organization they lead or serve
    id_hash: str | None = None
    id_masked: str | None = None
    phone: str | None = None


R = TypeVar("R", Membership, Trainee)


@dataclass(frozen=True)
class Added(Generic[R]):
    """A person recorded (new to training or not) and what records them: a pool membership or a
    trainee record."""

    person: Person
    record: R
    new_person: bool


def _match(identity: Identity, asked_person_id: UUID | None) -> tuple[Person | None, str]:
    """The one person on record the keys point at (and the field that found them), or a rejection."""
    found: dict[UUID, tuple[Person, str]] = {}
    for person, key in ((identity.by_person_id, "person_id"), (identity.by_id_number, "id_number"),
                        (identity.by_contact, "phone")):
        if person is not None:
            found.setdefault(person.id, (person, key))
    if len(found) > 1:
        keys = " and ".join(f"{key} points at person {pid}" for pid, (_, key) in found.items())
        raise Rejected("person_id" if asked_person_id else "id_number", f"two people on record: {keys}")
    if not found:
        return None, ""
    person, key = next(iter(found.values()))
    return person, key


def _known(identity: Identity, new: NewPerson) -> tuple[Person | None, str]:
    """The one person on record the command's keys point at (and the key that found them), who
    must not hold another ID number than the command's."""
    person, key = _match(identity, new.person_id)
    if person is not None and new.id_hash is not None and person.id_hash not in (None, new.id_hash):
        raise Rejected("id_number", f"person {person.id} is on record with another ID number")
    return person, key


def _with_details(person: Person | None, new: NewPerson, new_id: UUID) -> Person:
    """The person (new, with `new_id` when the command brings no id) with the command's details."""
    person = person or Person(id=new.person_id or new_id)
    return replace(person, name=new.name, phone=new.phone or person.phone,
                   id_hash=new.id_hash or person.id_hash, id_masked=new.id_masked or person.id_masked)


def add_member(identity: Identity, membership: Membership | None, county_known: bool,
               organization: Organization | None, new: NewPerson, new_id: UUID) -> Added[Membership]:
    """Add a person to a county's pool: a new person, or one on record who is in no pool now.

    `membership` is the person's current (or latest) pool membership; `new_id` the id a person new
    to training gets when the command does not bring one.
    """
    if not county_known:
        raise Rejected("county_code", f"unknown county {new.county_code}")
    _check_organization(new.organization_id, organization, new.county_code)
    person, key = _known(identity, new)
    if person is not None and membership is not None and membership.active:
        if membership.county_code == new.county_code:
            raise Rejected(key, f"already in the pool of county {new.county_code} as person {person.id} "
                                f"(since {membership.added_on})")
        raise Rejected("county_code", f"person {person.id} is in the pool of county "
                                      f"{membership.county_code}; remove them there first")
    if membership is not None and membership.removed_on is not None and new.added_on < membership.removed_on:
        raise Rejected("added_on", f"{new.added_on} is before the person left the pool on "
                                   f"{membership.removed_on}")
    person = _with_details(person, new, new_id)
    joined = Membership(person_id=person.id, county_code=new.county_code, role=new.role,
                        added_on=new.added_on, organization_id=new.organization_id)
    return Added(person, joined, new_person=key == "")


def _check_organization(org_id: UUID | None, org: Organization | None, county: str) -> None:
    if org_id is None:
        return
    if org is None:
        raise Rejected("organization_id", f"no organization {org_id} is on record "
                                          "(from registry's events)")
    if org.status != "active":
        raise Rejected("organization_id", f"organization {org_id} is {org.status}")
    if not org.community_code.startswith(county):
        raise Rejected("organization_id", f"organization {org_id} is in county {org.community_code[:6]}, "
                                          f"not {county}")


def add_trainee(identity: Identity, trainee: Trainee | None, county_known: bool, new: NewPerson,
                new_id: UUID) -> Added[Trainee]:
    """Record a trainee outside the pools (民政助理, 儿童主任, 社区工作者 …), or correct the role and
    county of one on record. A pool member may be recorded too: while in a pool, their pool's county
    and role still decide where their completions count."""
    if not county_known:
        raise Rejected("county_code", f"unknown county {new.county_code}")
    if new.role not in TRAINEE_ROLES:
        raise Rejected("role", f"{new.role!r} is not a trainee role ({', '.join(TRAINEE_ROLES)})")
    person, key = _known(identity, new)
    if trainee is not None and trainee == Trainee(trainee.person_id, new.role, new.county_code, trainee.added_on):
        raise Rejected(key or "person_id", f"already on record as a trainee ({trainee.role}) of county "
                                           f"{trainee.county_code} as person {trainee.person_id}")
    person = _with_details(person, new, new_id)
    recorded = Trainee(person_id=person.id, role=new.role, county_code=new.county_code,
                       added_on=trainee.added_on if trainee is not None else new.added_on)
    return Added(person, recorded, new_person=key == "")


@dataclass(frozen=True)
class MemberChanges:
    name: str | None = None
    phone: str | None = None
    id_hash: str | None = None
    id_masked: str | None = None
    role: str | None = None
    organization_id: UUID | None = None


def update_member(person: Person | None, person_id: UUID, membership: Membership | None,
                  holder_of_id: Person | None, organization: Organization | None,
                  changes: MemberChanges) -> tuple[Person, Membership | None]:
    """Correct a person's details, or their role / organization in the pool they are in."""
    if person is None:
        raise _missing("person_id", "person", person_id)
    if changes.id_hash is not None and holder_of_id is not None and holder_of_id.id != person.id:
        raise Rejected("id_number", f"this ID number belongs to person {holder_of_id.id}")
    # Another number for the same person is a correction: the hash and the masked form are replaced.
    pool_change = changes.role is not None or changes.organization_id is not None
    if pool_change and (membership is None or not membership.active):
        raise Rejected("person_id", f"person {person.id} is in no pool: role and organization "
                                    "belong to a pool membership")
    updated = replace(person, name=changes.name or person.name, phone=changes.phone or person.phone,
                      id_hash=changes.id_hash or person.id_hash,
                      id_masked=changes.id_masked or person.id_masked)
    if not pool_change or membership is None:
        return updated, None
    if changes.organization_id is not None:
        _check_organization(changes.organization_id, organization, membership.county_code)
    return updated, replace(membership, role=changes.role or membership.role,
                            organization_id=changes.organization_id or membership.organization_id)


def remove_member(person_id: UUID, membership: Membership | None, reason: str, removed_on: date) -> Membership:
    if membership is None:
        raise _missing("person_id", "pool member", person_id)
    if not membership.active:
        raise Rejected("person_id", f"person {person_id} already left the pool of county "
                                    f"{membership.county_code} on {membership.removed_on}")
    if removed_on < membership.added_on:
        raise Rejected("removed_on", f"{removed_on} is before the person joined the pool on "
                                     f"{membership.added_on}")
    return replace(membership, removed_on=removed_on, removal_reason=reason)


def hub_leader(person: Person | None, person_id: UUID, membership: Membership | None, hub_id: UUID,
               hub_known: bool, region_code: str, organization_id: UUID,
               established_on: date) -> tuple[Person, Membership] | None:
    """A hub's leader enters the pool of the hub's county as a hub leader; None when nothing changes
    (the hub was seen before, or the leader is in a pool already: they stay where they are)."""
    if hub_known:
        return None
    if membership is not None and membership.active:
        return None
    if membership is not None and membership.removed_on is not None and established_on < membership.removed_on:
        return None     # an old hub: the leader joined and left since
    joined = Membership(person_id=person_id, county_code=region_code[:6], role="hub_leader",
                        added_on=established_on, organization_id=organization_id, hub_id=hub_id)
    return person or Person(id=person_id), joined


# --- sessions ----------------------------------------------------------------------------------

ORGANIZER_TIERS = {4: "city", 6: "county", 9: "township"}


def schedule(existing: Session | None, region_known: bool, session: Session) -> Session:
    if existing is not None:
        raise Rejected("session_id", f"session {session.id} is already on record")
    if len(session.organizer_region) not in ORGANIZER_TIERS:
        raise Rejected("organizer_region", "a session is organized by a city, a county or a township")
    if not region_known:
        raise Rejected("organizer_region", f"unknown {ORGANIZER_TIERS[len(session.organizer_region)]} "
                                           f"{session.organizer_region}")
    if session.ends_on < session.starts_on:
        raise Rejected("ends_on", "a session cannot end before it starts")
    return session


def _open(session: Session | None, session_id: UUID) -> Session:
    if session is None:
        raise _missing("session_id", "session", session_id)
    if session.status == "cancelled":
        raise Rejected("session_id", f"session {session_id} was cancelled on {session.cancelled_on}")
    if session.status == "completed":
        raise Rejected("session_id", f"session {session_id} was completed on {session.completed_on}")
    return session


def enrol(session: Session | None, session_id: UUID, person: Person | None, person_id: UUID,
          enrolment: Enrolment | None, enrolled: int) -> Enrolment:
    """A place for a person: capacity enforced (`enrolled` counts the places taken), once per person."""
    s = _open(session, session_id)
    if person is None:
        raise _missing("person_id", "person", person_id)
    if enrolment is not None and enrolment.status == "enrolled":
        raise Rejected("person_id", f"person {person_id} is already enrolled in session {s.id}")
    if enrolled >= s.capacity:
        raise Rejected("capacity", f"session {s.id} is full: {enrolled} of {s.capacity} places taken")
    return Enrolment(session_id=s.id, person_id=person_id)


def withdraw(session: Session | None, session_id: UUID, enrolment: Enrolment | None,
             person_id: UUID) -> Enrolment:
    _open(session, session_id)
    if enrolment is None or enrolment.status != "enrolled":
        raise Rejected("person_id", f"person {person_id} is not enrolled in session {session_id}")
    return replace(enrolment, status="withdrawn", attended=None)


def attendable(session: Session | None, session_id: UUID, today: date) -> Session:
    s = _open(session, session_id)
    if today < s.starts_on:
        raise Rejected("session_id", f"session {s.id} starts on {s.starts_on}: attendance is recorded "
                                     "from that day")
    return s


def attend(session: Session | None, session_id: UUID, enrolment: Enrolment | None, person_id: UUID,
           attended: bool, today: date) -> Enrolment:
    attendable(session, session_id, today)
    if enrolment is None or enrolment.status != "enrolled":
        raise Rejected("person_id", f"person {person_id} is not enrolled in session {session_id}")
    return replace(enrolment, attended=attended)


def completion_id(session_id: UUID, person_id: UUID) -> UUID:
    """One completion per person per session: its id is derived from both, so it cannot double."""
    return uuid5(TRAINING, f"completion:{session_id}:{person_id}")


def complete(session: Session | None, session_id: UUID, enrolments: Mapping[UUID, Enrolment],
             standings: Mapping[UUID, Standing], person_ids: Sequence[UUID] | None,
             completed_on: date | None, today: date) -> tuple[Session, list[Completion]]:
    """Close a session: each attending person (or each of `person_ids`, who must have attended)
    completes it once, pool member or not. `standings` gives each person's county and role (see
    `standing`); someone with neither counts in the organizer's county."""
    s = _open(session, session_id)
    day = completed_on or min(s.ends_on, today)
    if day < s.starts_on:
        raise Rejected("completed_on", f"{day} is before the session starts on {s.starts_on}")
    if day > today:
        raise Rejected("completed_on", f"{day} is in the future")
    if person_ids is None:
        chosen = sorted(p for p, e in enrolments.items() if e.status == "enrolled" and e.attended)
    else:
        chosen = list(dict.fromkeys(person_ids))
        for pid in chosen:
            e = enrolments.get(pid)
            if e is None or e.status != "enrolled":
                raise Rejected("person_ids", f"person {pid} is not enrolled in session {s.id}")
            if not e.attended:
                raise Rejected("person_ids", f"person {pid} has no attendance recorded in session {s.id}")
    if not chosen:
        raise Rejected("session_id", f"nobody attended session {s.id}: record attendance first")
    done: list[Completion] = []
    for pid in chosen:
        known = standings.get(pid)
        county = known.county_code if known else (s.organizer_region[:6] if len(s.organizer_region) >= 6
                                                  else None)
        if county is None:
            raise Rejected("person_ids", f"person {pid} is in no county pool, has no trainee record and "
                                         f"the organizer {s.organizer_region} is above county tier")
        done.append(Completion(id=completion_id(s.id, pid), session_id=s.id, person_id=pid,
                               organizer_region=s.organizer_region, county_code=county, completed_on=day,
                               role=known.role if known else None, in_pool=known.in_pool if known else False))
    return replace(s, status="completed", completed_on=day), done


def cancel(session: Session | None, session_id: UUID, reason: str, cancelled_on: date) -> Session:
    """Cancel before completion: enrolments are released and nothing counts."""
    if session is not None and session.status == "completed":
        raise Rejected("session_id", f"session {session_id} was completed on {session.completed_on}: "
                                     "a completed session cannot be cancelled")
    s = _open(session, session_id)
    return replace(s, status="cancelled", cancelled_on=cancelled_on, cancel_reason=reason)


# --- attendance sheets ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SheetRow:
    """One data row of an attendance sheet, as written (cleaned of spaces), with its sheet row number."""

    row: int
    name: str
    id_number: str
    phone: str
    sign_in: str


@dataclass(frozen=True)
class RowProblem:
    row: int
    field: str
    reason: str         # unknown_person | bad_id_checksum | bad_id_number | not_enrolled | ...
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"row": self.row, "field": self.field, "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class RowAccepted:
    row: int
    person_id: UUID
    attended: bool


@dataclass(frozen=True)
class SheetReport:
    rows: int
    accepted: list[RowAccepted] = field(default_factory=list)
    rejected: list[RowProblem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.rejected


PRESENT = {"是", "√", "✓", "✔", "☑", "y", "yes", "1", "已签到", "签到", "到", "已到", "true", "t", "出席"}
ABSENT = {"否", "", "空", "×", "✗", "✘", "x", "n", "no", "0", "未签到", "未到", "缺", "缺席", "false", "f",
          "无", "-", "/"}


def sign_in_value(raw: str) -> bool | None:
    """签到 as organizers write it: 是/√/1… present, 否/blank/×… absent; None if unrecognized."""
    value = unicodedata.normalize("NFKC", raw).strip().lower()
    if value in PRESENT:
        return True
    if value in ABSENT:
        return False
    return None


@dataclass(frozen=True)
class RowKeys:
    """What the ID number / phone + name of a row resolve to, before any person is looked up."""

    row: SheetRow
    id_hash: str | None = None
    phone: str | None = None
    problem: RowProblem | None = None


def row_keys(rows: Iterable[SheetRow], key: bytes, today: date) -> list[RowKeys]:
    """Validate each row's identity and sign-in cells; the hash / phone + name to look people up by."""
    out: list[RowKeys] = []
    for r in rows:
        if sign_in_value(r.sign_in) is None:
            out.append(RowKeys(r, problem=RowProblem(r.row, "签到", "bad_sign_in",
                                                     "签到 must be 是/否, √/×, 1/0 or blank")))
            continue
        if r.id_number:
            try:
                number = validate_id_number(r.id_number, today)
            except BadIdNumber as e:
                reason = "bad_id_checksum" if e.checksum else "bad_id_number"
                out.append(RowKeys(r, problem=RowProblem(r.row, "身份证号", reason, str(e))))
                continue
            out.append(RowKeys(r, id_hash=id_hash(key, number)))
            continue
        if not r.name or not r.phone:
            out.append(RowKeys(r, problem=RowProblem(
                r.row, "身份证号", "no_identity", "give 身份证号, or 姓名 with 手机号, to identify the person")))
            continue
        try:
            out.append(RowKeys(r, phone=normalize_phone(r.phone)))
        except ValueError as e:
            out.append(RowKeys(r, problem=RowProblem(r.row, "手机号", "bad_phone", str(e))))
    return out


def resolve_sheet(keys: Sequence[RowKeys], by_hash: Mapping[str, UUID],
                  by_contact: Mapping[tuple[str, str], Sequence[UUID]],
                  enrolments: Mapping[UUID, Enrolment]) -> SheetReport:
    """Each row to an enrolled person, or the reason it cannot be applied. A person on two rows:
    the later row is a duplicate, whatever it says."""
    report = SheetReport(rows=len(keys))
    first_row: dict[UUID, int] = {}
    for k in keys:
        r = k.row
        if k.problem is not None:
            report.rejected.append(k.problem)
            continue
        if k.id_hash is not None:
            candidates = [by_hash[k.id_hash]] if k.id_hash in by_hash else []
            field_name = "身份证号"
        else:
            candidates = list(by_contact.get((k.phone or "", normalize_name(r.name)), ()))
            field_name = "手机号"
        if not candidates:
            report.rejected.append(RowProblem(r.row, field_name, "unknown_person",
                                              "no person on record with this "
                                              + ("ID number" if k.id_hash else "phone and name")))
            continue
        enrolled = [p for p in candidates if p in enrolments and enrolments[p].status == "enrolled"]
        if not enrolled:
            report.rejected.append(RowProblem(r.row, field_name, "not_enrolled",
                                              f"person {candidates[0]} is not enrolled in this session"))
            continue
        if len(enrolled) > 1:
            report.rejected.append(RowProblem(r.row, "身份证号", "ambiguous_person",
                                              "several enrolled people share this phone and name; "
                                              "give 身份证号"))
            continue
        person = enrolled[0]
        if person in first_row:
            report.rejected.append(RowProblem(r.row, field_name, "duplicate_row",
                                              f"same person as row {first_row[person]}"))
            continue
        first_row[person] = r.row
        attended = sign_in_value(r.sign_in)
        report.accepted.append(RowAccepted(r.row, person, bool(attended)))
    return report


def apply_sheet(session: Session | None, session_id: UUID, report: SheetReport,
                enrolments: Mapping[UUID, Enrolment], today: date,
                accept_partial: bool) -> list[Enrolment]:
    """The enrolments to write: all accepted rows, or none at all if any row was rejected (unless
    the caller explicitly accepts a partial sheet)."""
    attendable(session, session_id, today)
    if report.rejected and not accept_partial:
        return []
    return [replace(enrolments[a.person_id], attended=a.attended) for a in report.accepted]


# --- exams and selections -------------------------------------------------------------------------

def exam_county(person: Person | None, person_id: UUID, membership: Membership | None) -> str:
    """Exams count in the county of the person's pool (current, else latest)."""
    if person is None:
        raise _missing("person_id", "person", person_id)
    if membership is None:
        raise Rejected("person_id", f"person {person_id} has never been in a county's pool")
    return membership.county_code


def not_retired(field: str, code: str, retired: tuple[date, str, str | None] | None) -> None:
    """Refuse a county named by a command of a day on or after it was merged, recoded or
    abolished (DivisionChanged: 犍为县 511123 is 犍为区 511114 from 2024-06-30), naming its successor."""
    if retired is None:
        return
    on, change, successor = retired
    if successor is None:
        raise Rejected(field, f"{code} was abolished on {on}")
    raise Rejected(field, f"{code} was {change} on {on}: its successor is {successor}")


def select_outstanding(county_known: bool, county: str, kind: str, subject: UUID,
                       organization: Organization | None, person: Person | None,
                       membership: Membership | None, already: bool, year: int) -> None:
    """An outstanding organization (of the county) or leader (in the county's pool) of a year."""
    if not county_known:
        raise Rejected("county_code", f"unknown county {county}")
    if kind == "organization":
        _check_organization(subject, organization, county)
        field_name = "organization_id"
    else:
        if person is None:
            raise _missing("person_id", "person", subject)
        if membership is None or membership.county_code != county:
            raise Rejected("person_id", f"person {subject} is not in the pool of county {county}")
        field_name = "person_id"
    if already:
        raise Rejected(field_name, f"{subject} is already selected in county {county} for {year}")
