"""training's SQL: its own schema, nothing else.

The tables below (SQLAlchemy Core, one MetaData) are the one description of training's schema: the
queries are written against them (raw SQL where it is clearer, naming them), and
tests/integration/test_schema.py checks them against what the migrations
(services/training/migrations) make. A change of the schema is a new migration and the same change
here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import date
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, CHAR, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from cso import bulk
from cso.reference import DivisionTables
from cso.tables import idempotency_table, runtime_tables

from .domain import Completion, Enrolment, Membership, Organization, Person, Session, Standing, Trainee, standing

SCHEMA = "training"
METADATA = MetaData(schema=SCHEMA)
runtime_tables(METADATA, SCHEMA)        # outbox (outbox_relay, outbox_stream), inbox, consumer_position, bus_stream
idempotency_table(METADATA, SCHEMA)     # kept command replies (cso/idempotency.py)


def _at(name: str, nullable: bool = False) -> Column[Any]:
    return Column(name, DateTime(timezone=True), nullable=nullable, server_default=func.now())


def _by() -> Column[Any]:
    return Column("updated_by", Text, nullable=False)


# Divisions, to check the regions commands name (DivisionsImported: cso/reference.py).
county = Table(
    "county", METADATA,
    Column("code", CHAR(6), primary_key=True),
    Column("name", Text, nullable=False),
    Column("city_code", CHAR(4), nullable=False),
    Column("province_code", CHAR(2), nullable=False),
    Column("edition", Text, nullable=False))
Index("county_city", county.c.city_code)
township = Table(
    "township", METADATA,
    Column("code", CHAR(9), primary_key=True),
    Column("name", Text, nullable=False),
    Column("county_code", CHAR(6), nullable=False),
    Column("edition", Text, nullable=False))
DIVISIONS = DivisionTables(county=county, township=township)
# Merges, recodes and abolitions heard of (DivisionChanged), by code and day.
division_change = Table(
    "division_change", METADATA,
    Column("code", Text, primary_key=True),
    Column("effective_on", Date, primary_key=True),
    Column("change", Text, CheckConstraint("change IN ('merged', 'recoded', 'abolished')"), nullable=False),
    Column("successor_code", Text))
# Organizations registry created, where they are and whether active (registry's events).
organization = Table(
    "organization", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("community_code", CHAR(12), nullable=False),
    Column("status", Text, nullable=False),
    Column("last_event_id", Uuid, nullable=False))
# People: personal data stays here (a name, a phone, of an ID number a keyed hash and a mask).
person = Table(
    "person", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("name", Text),
    Column("phone", Text),
    Column("id_hash", CHAR(64), unique=True),
    Column("id_masked", Text),
    _at("created_at"), _at("updated_at"), _by(),
    Column("erased_at", DateTime(timezone=True)))
Index("person_contact", person.c.phone, person.c.name)
membership = Table(
    "membership", METADATA,
    Column("seq", BigInteger, primary_key=True, autoincrement=True),
    Column("person_id", Uuid, ForeignKey(person.c.id), nullable=False),
    Column("county_code", CHAR(6), nullable=False),
    Column("role", Text, nullable=False),
    Column("organization_id", Uuid),
    Column("added_on", Date, nullable=False),
    Column("removed_on", Date),
    Column("removal_reason", Text),
    Column("hub_id", Uuid),
    Column("added_event_id", Uuid, nullable=False),
    _at("updated_at"), _by())
# A person is in at most one pool at a time.
Index("membership_current", membership.c.person_id, unique=True,
      postgresql_where=membership.c.removed_on.is_(None))
Index("membership_county", membership.c.county_code, membership.c.added_on)
trainee = Table(
    "trainee", METADATA,
    Column("person_id", Uuid, ForeignKey(person.c.id), primary_key=True),
    Column("role", Text, nullable=False),
    Column("county_code", CHAR(6), nullable=False),
    Column("added_on", Date, nullable=False),
    _at("updated_at"), _by())
Index("trainee_county", trainee.c.county_code)
hub_leader_table = Table(
    "hub_leader", METADATA,
    Column("hub_id", Uuid, primary_key=True),
    Column("person_id", Uuid, nullable=False),
    Column("county_code", CHAR(6), nullable=False),
    Column("added_to_pool", Boolean, nullable=False),
    Column("event_id", Uuid, nullable=False),
    _at("recorded_at"))
session = Table(
    "session", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("organizer_region", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("starts_on", Date, nullable=False),
    Column("ends_on", Date, nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("mode", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("completed_on", Date),
    Column("cancelled_on", Date),
    Column("cancel_reason", Text),
    _at("created_at"), _at("updated_at"), _by())
Index("session_region", session.c.organizer_region, session.c.starts_on)
enrolment = Table(
    "enrolment", METADATA,
    Column("session_id", Uuid, ForeignKey(session.c.id), primary_key=True),
    Column("person_id", Uuid, ForeignKey(person.c.id), primary_key=True),
    Column("status", Text, nullable=False),
    Column("attended", Boolean),
    _at("enrolled_at"), _at("updated_at"), _by())
Index("enrolment_person", enrolment.c.person_id)
completion = Table(
    "completion", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("session_id", Uuid, ForeignKey(session.c.id), nullable=False),
    Column("person_id", Uuid, ForeignKey(person.c.id), nullable=False),
    Column("organizer_region", Text, nullable=False),
    Column("county_code", CHAR(6), nullable=False),
    Column("completed_on", Date, nullable=False),
    _at("recorded_at"), _by(),
    Column("role", Text),
    Column("in_pool", Boolean),
    # One completion per person per session: the last word, whatever a command decided.
    UniqueConstraint("session_id", "person_id"))
Index("completion_person", completion.c.person_id)
exam = Table(
    "exam", METADATA,
    Column("person_id", Uuid, ForeignKey(person.c.id), primary_key=True),
    Column("year", SmallInteger, primary_key=True),
    Column("level", Text, primary_key=True),
    Column("passed", Boolean, nullable=False),
    Column("county_code", CHAR(6), nullable=False),
    _at("updated_at"), _by())
Index("exam_county", exam.c.county_code, exam.c.year)
outstanding = Table(
    "outstanding", METADATA,
    Column("county_code", CHAR(6), primary_key=True),
    Column("year", SmallInteger, primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("subject_id", Uuid, primary_key=True),
    Column("title", Text),
    _at("selected_at"), _by())
# Who read personal data unmasked, exported or erased it (personal.py).
personal_data_request = Table(
    "personal_data_request", METADATA,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("action", Text, nullable=False),
    Column("person_id", Uuid),
    Column("county_code", CHAR(6)),
    Column("sub", Text, nullable=False),
    Column("region", Text, nullable=False),
    Column("roles", ARRAY(Text), nullable=False),
    Column("source", Text, nullable=False),
    _at("at"))
Index("personal_data_request_person", personal_data_request.c.person_id, personal_data_request.c.at)

_ORGANIZATION = ["id", "community_code", "status", "last_event_id"]   # as save_ and update_organizations take them
_PERSON = [f.name for f in fields(Person)]
_MEMBERSHIP = [f.name for f in fields(Membership)]
_SESSION = [f.name for f in fields(Session)]
_TRAINEE = [f.name for f in fields(Trainee)]


# --- reference data: divisions and organizations -----------------------------------------------

async def region_known(conn: AsyncConnection, code: str) -> bool:
    """A city, county or township training knows from the divisions stream."""
    column = {4: county.c.city_code, 6: county.c.code, 9: township.c.code}.get(len(code))
    if column is None:
        return False
    return (await conn.execute(select(literal(1)).where(column == code).limit(1))).first() is not None


async def county_known(conn: AsyncConnection, code: str) -> bool:
    return len(code) == 6 and await region_known(conn, code)


async def save_organizations(conn: AsyncConnection,
                             rows: list[tuple[UUID, str | None, str | None, UUID]]) -> None:
    """Organizations registry created (id, community, status if it ended too, last event), each id
    once (record.fold_organization_facts). One statement over arrays for those that did not end in
    the batch, one for those that did: ON CONFLICT sees only the row as inserted (status 'active'
    in place of none), so whether the batch gave a status decides the statement, not the row. A
    redelivered creation keeps the status on record; one that ended in the batch takes its end."""
    for ended in (False, True):
        part = [r for r in rows if (r[2] is not None) == ended]
        if not part:
            continue
        status = "excluded.status" if ended else "organization.status"
        await conn.execute(text(
            f"INSERT INTO {organization.fullname} (id, community_code, status, last_event_id) "
            f"SELECT id, community_code, coalesce(status, 'active'), last_event_id FROM "
            f"{bulk.unnest(organization, _ORGANIZATION)} AS u({', '.join(_ORGANIZATION)}) "
            "ON CONFLICT (id) DO UPDATE SET community_code = excluded.community_code, "
            f"status = {status}, last_event_id = excluded.last_event_id"),
            bulk.arrays([dict(zip(_ORGANIZATION, r, strict=True)) for r in part], _ORGANIZATION))


async def update_organizations(conn: AsyncConnection,
                               rows: list[tuple[UUID, str | None, str | None, UUID]]) -> None:
    """Moves and endings of organizations, each id once (record.fold_organization_facts), in one
    statement over arrays. One not seen yet is skipped (registry publishes its creation first)."""
    if rows:
        await conn.execute(text(
            f"UPDATE {organization.fullname} o SET community_code = coalesce(u.community_code, o.community_code), "
            "status = coalesce(u.status, o.status), last_event_id = u.last_event_id "
            f"FROM {bulk.unnest(organization, _ORGANIZATION)} AS u({', '.join(_ORGANIZATION)}) WHERE o.id = u.id"),
            bulk.arrays([dict(zip(_ORGANIZATION, r, strict=True)) for r in rows], _ORGANIZATION))


async def keep_division_change(conn: AsyncConnection, code: str, on: date, change: str,
                               successor: str | None) -> None:
    """A change once by code and day (a redelivery keeps it as it was)."""
    await conn.execute(insert(division_change).values(code=code, effective_on=on, change=change,
                                                      successor_code=successor).on_conflict_do_nothing())


async def retirement(conn: AsyncConnection, code: str, day: date) -> tuple[date, str, str | None] | None:
    """The first change that retired `code` on or before `day` (its day, kind and successor)."""
    row = (await conn.execute(select(division_change.c.effective_on, division_change.c.change,
                                     division_change.c.successor_code)
                              .where(division_change.c.code == code, division_change.c.effective_on <= day)
                              .order_by(division_change.c.effective_on).limit(1))).first()
    return (row[0], row[1], row[2]) if row else None


async def follow_division_change(conn: AsyncConnection, code: str, successor: str) -> None:
    """A code merged or recoded into `successor` (DivisionChanged): the organizations of a
    community, and the current pool members and trainees of a county (县改区), are there now. A
    second application finds nothing at the old code and moves nothing."""
    if len(code) == 12:
        await conn.execute(organization.update().where(organization.c.community_code == code)
                           .values(community_code=successor))
    elif len(code) == 6 and len(successor) == 6:
        await conn.execute(membership.update().where(membership.c.county_code == code,
                                                     membership.c.removed_on.is_(None))
                           .values(county_code=successor))
        await conn.execute(trainee.update().where(trainee.c.county_code == code).values(county_code=successor))


async def load_organization(conn: AsyncConnection, org_id: UUID | None) -> Organization | None:
    if org_id is None:
        return None
    row = (await conn.execute(select(organization.c.id, organization.c.community_code, organization.c.status)
                              .where(organization.c.id == org_id))).mappings().first()
    return Organization(**row) if row else None


# --- people and pools --------------------------------------------------------------------------

async def load_person(conn: AsyncConnection, person_id: UUID | None, lock: bool = True) -> Person | None:
    if person_id is None:
        return None
    row = (await conn.execute(text(
        f"SELECT {', '.join(_PERSON)} FROM {SCHEMA}.person WHERE id = :id"
        + (" FOR UPDATE" if lock else "")), {"id": person_id})).mappings().first()
    return Person(**row) if row else None


async def person_by_hash(conn: AsyncConnection, digest: str | None) -> Person | None:
    if digest is None:
        return None
    row = (await conn.execute(text(
        f"SELECT {', '.join(_PERSON)} FROM {SCHEMA}.person WHERE id_hash = :h FOR UPDATE"),
        {"h": digest})).mappings().first()
    return Person(**row) if row else None


async def person_by_contact(conn: AsyncConnection, phone: str | None, name: str,
                            id_hash: str | None) -> Person | None:
    """The person with this phone and name (the oldest if several). When the command gives an ID
    number, only someone on record without one (or with the same) is the same person."""
    if phone is None:
        return None
    row = (await conn.execute(text(
        f"SELECT {', '.join(_PERSON)} FROM {SCHEMA}.person WHERE phone = :p AND name = :n "
        "AND (CAST(:h AS text) IS NULL OR id_hash IS NULL OR id_hash = :h) "
        "ORDER BY created_at, id LIMIT 1 FOR UPDATE"),
        {"p": phone, "n": name, "h": id_hash})).mappings().first()
    return Person(**row) if row else None


async def save_person(conn: AsyncConnection, person: Person, source: str) -> None:
    assignments = ", ".join(f"{c} = excluded.{c}" for c in _PERSON if c != "id")
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.person ({', '.join(_PERSON)}, updated_by) "
        f"VALUES ({', '.join(':' + c for c in _PERSON)}, :source) "
        f"ON CONFLICT (id) DO UPDATE SET {assignments}, updated_at = now(), "
        "updated_by = excluded.updated_by"), asdict(person) | {"source": source})


async def load_membership(conn: AsyncConnection, person_id: UUID | None) -> Membership | None:
    """The person's current membership, else their latest one."""
    if person_id is None:
        return None
    row = (await conn.execute(text(
        f"SELECT {', '.join(_MEMBERSHIP)} FROM {SCHEMA}.membership WHERE person_id = :p "
        "ORDER BY (removed_on IS NULL) DESC, added_on DESC, seq DESC LIMIT 1 FOR UPDATE"),
        {"p": person_id})).mappings().first()
    return Membership(**row) if row else None


async def insert_membership(conn: AsyncConnection, m: Membership, event_id: UUID, source: str) -> None:
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.membership ({', '.join(_MEMBERSHIP)}, added_event_id, updated_by) "
        f"VALUES ({', '.join(':' + c for c in _MEMBERSHIP)}, :event_id, :source)"),
        asdict(m) | {"event_id": event_id, "source": source})


async def update_membership(conn: AsyncConnection, m: Membership, source: str) -> None:
    """Change the person's active membership (role, organization, or its end)."""
    await conn.execute(text(
        f"UPDATE {SCHEMA}.membership SET role = :role, organization_id = :organization_id, "
        "removed_on = :removed_on, removal_reason = :removal_reason, updated_at = now(), "
        "updated_by = :source WHERE person_id = :person_id AND removed_on IS NULL"),
        asdict(m) | {"source": source})


async def load_trainee(conn: AsyncConnection, person_id: UUID | None) -> Trainee | None:
    if person_id is None:
        return None
    row = (await conn.execute(select(*(trainee.c[f] for f in _TRAINEE))
                              .where(trainee.c.person_id == person_id).with_for_update())).mappings().first()
    return Trainee(**row) if row else None


async def save_trainee(conn: AsyncConnection, t: Trainee, source: str) -> None:
    """A trainee recorded, or their role and county corrected (added_on stays the first)."""
    new = insert(trainee).values(**asdict(t), updated_by=source)
    await conn.execute(new.on_conflict_do_update(index_elements=[trainee.c.person_id], set_={
        "role": new.excluded.role, "county_code": new.excluded.county_code, "updated_at": func.now(),
        "updated_by": new.excluded.updated_by}))


async def standings_of(conn: AsyncConnection, person_ids: Sequence[UUID]) -> dict[UUID, Standing]:
    """Where each person's completions count and as whom (domain.standing): current pool membership,
    else trainee record, else latest pool membership."""
    memberships = {r["person_id"]: Membership(**r) for r in (await conn.execute(text(
        f"SELECT DISTINCT ON (person_id) {', '.join(_MEMBERSHIP)} FROM {SCHEMA}.membership "
        "WHERE person_id = ANY(:ids) ORDER BY person_id, (removed_on IS NULL) DESC, added_on DESC, "
        "seq DESC"), {"ids": list(person_ids)})).mappings().all()}
    trainees = {r["person_id"]: Trainee(**r) for r in (await conn.execute(text(
        f"SELECT person_id, role, county_code, added_on FROM {SCHEMA}.trainee WHERE person_id = ANY(:ids)"),
        {"ids": list(person_ids)})).mappings().all()}
    out: dict[UUID, Standing] = {}
    for pid in person_ids:
        known = standing(memberships.get(pid), trainees.get(pid))
        if known is not None:
            out[pid] = known
    return out


async def hub_known(conn: AsyncConnection, hub_id: UUID) -> bool:
    return (await conn.execute(select(literal(1)).where(hub_leader_table.c.hub_id == hub_id))).first() is not None


async def insert_hub_leader(conn: AsyncConnection, hub_id: UUID, person_id: UUID, county: str,
                            added: bool, event_id: UUID) -> None:
    await conn.execute(insert(hub_leader_table).values(
        hub_id=hub_id, person_id=person_id, county_code=county, added_to_pool=added, event_id=event_id)
        .on_conflict_do_nothing(index_elements=[hub_leader_table.c.hub_id]))


# --- sessions ----------------------------------------------------------------------------------

async def load_session(conn: AsyncConnection, session_id: UUID, lock: bool = True) -> Session | None:
    row = (await conn.execute(text(
        f"SELECT {', '.join(_SESSION)} FROM {SCHEMA}.session WHERE id = :id"
        + (" FOR UPDATE" if lock else "")), {"id": session_id})).mappings().first()
    return Session(**row) if row else None


async def save_session(conn: AsyncConnection, s: Session, source: str) -> None:
    assignments = ", ".join(f"{c} = excluded.{c}" for c in _SESSION if c != "id")
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.session ({', '.join(_SESSION)}, updated_by) "
        f"VALUES ({', '.join(':' + c for c in _SESSION)}, :source) "
        f"ON CONFLICT (id) DO UPDATE SET {assignments}, updated_at = now(), "
        "updated_by = excluded.updated_by"), asdict(s) | {"source": source})


async def load_enrolments(conn: AsyncConnection, session_id: UUID) -> dict[UUID, Enrolment]:
    rows = (await conn.execute(text(
        f"SELECT session_id, person_id, status, attended FROM {SCHEMA}.enrolment "
        "WHERE session_id = :s FOR UPDATE"), {"s": session_id})).mappings().all()
    return {r["person_id"]: Enrolment(**r) for r in rows}


async def save_enrolments(conn: AsyncConnection, enrolments: Sequence[Enrolment], source: str) -> None:
    if not enrolments:
        return
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.enrolment (session_id, person_id, status, attended, updated_by) "
        "VALUES (:session_id, :person_id, :status, :attended, :source) "
        "ON CONFLICT (session_id, person_id) DO UPDATE SET status = excluded.status, "
        "attended = excluded.attended, updated_at = now(), updated_by = excluded.updated_by"),
        [asdict(e) | {"source": source} for e in enrolments])


async def release_enrolments(conn: AsyncConnection, session_id: UUID, source: str) -> int:
    result = await conn.execute(update(enrolment).where(
        enrolment.c.session_id == session_id, enrolment.c.status == "enrolled").values(
        status="released", updated_at=func.now(), updated_by=source))
    return int(result.rowcount)


async def insert_completions(conn: AsyncConnection, completions: Sequence[Completion], source: str) -> None:
    if completions:
        # The unique (session_id, person_id) is the last word on one completion per person per session.
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.completion (id, session_id, person_id, organizer_region, county_code, "
            "completed_on, role, in_pool, updated_by) VALUES (:id, :session_id, :person_id, :organizer_region, "
            ":county_code, :completed_on, :role, :in_pool, :source)"),
            [asdict(c) | {"source": source} for c in completions])


async def people_by_hash(conn: AsyncConnection, digests: Sequence[str]) -> dict[str, UUID]:
    rows = (await conn.execute(text(
        f"SELECT id_hash, id FROM {SCHEMA}.person WHERE id_hash = ANY(:h)"), {"h": list(digests)})).all()
    return {r.id_hash: r.id for r in rows}


async def people_by_contact(conn: AsyncConnection, contacts: Sequence[tuple[str, str]]
                            ) -> dict[tuple[str, str], list[UUID]]:
    if not contacts:
        return {}
    rows = (await conn.execute(text(
        f"SELECT phone, name, id FROM {SCHEMA}.person WHERE (phone, name) IN "
        "(SELECT * FROM unnest(CAST(:p AS text[]), CAST(:n AS text[]))) ORDER BY created_at, id"),
        {"p": [c[0] for c in contacts], "n": [c[1] for c in contacts]})).all()
    out: dict[tuple[str, str], list[UUID]] = {}
    for r in rows:
        out.setdefault((r.phone, r.name), []).append(r.id)
    return out


# --- exams and selections ----------------------------------------------------------------------

async def upsert_exam(conn: AsyncConnection, person_id: UUID, year: int, level: str, passed: bool,
                      county: str, source: str) -> None:
    new = insert(exam).values(person_id=person_id, year=year, level=level, passed=passed, county_code=county,
                              updated_by=source)
    await conn.execute(new.on_conflict_do_update(
        index_elements=[exam.c.person_id, exam.c.year, exam.c.level],
        set_={"passed": new.excluded.passed, "county_code": new.excluded.county_code, "updated_at": func.now(),
              "updated_by": new.excluded.updated_by}))


async def selected(conn: AsyncConnection, county: str, year: int, kind: str, subject: UUID) -> bool:
    o = outstanding.c
    return (await conn.execute(select(literal(1)).where(
        o.county_code == county, o.year == year, o.kind == kind, o.subject_id == subject))).first() is not None


async def insert_outstanding(conn: AsyncConnection, county: str, year: int, kind: str, subject: UUID,
                             title: str | None, source: str) -> None:
    await conn.execute(insert(outstanding).values(county_code=county, year=year, kind=kind, subject_id=subject,
                                                  title=title, updated_by=source))


# --- read side ---------------------------------------------------------------------------------

async def pool_view(conn: AsyncConnection, county: str, include_removed: bool) -> list[dict[str, Any]]:
    rows = (await conn.execute(text(
        f"SELECT m.person_id, m.role, m.organization_id, m.added_on, m.removed_on, m.removal_reason, "
        "p.name, p.phone, p.id_masked, "
        f"(SELECT count(*) FROM {SCHEMA}.completion c WHERE c.person_id = m.person_id) AS trainings "
        f"FROM {SCHEMA}.membership m JOIN {SCHEMA}.person p ON p.id = m.person_id "
        "WHERE m.county_code = :c AND (:all OR m.removed_on IS NULL) "
        "ORDER BY m.added_on, m.person_id"), {"c": county, "all": include_removed})).mappings().all()
    return [dict(r) for r in rows]


async def county_name(conn: AsyncConnection, code: str) -> str | None:
    name: str | None = (await conn.execute(select(county.c.name).where(county.c.code == code))).scalar()
    return name


async def session_view(conn: AsyncConnection, session_id: UUID) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        f"SELECT * FROM {SCHEMA}.session WHERE id = :id"), {"id": session_id})).mappings().first()
    if row is None:
        return None
    roster = (await conn.execute(text(
        "SELECT e.person_id, e.status, e.attended, e.enrolled_at, p.name, c.completed_on, "
        "c.id AS completion_id "
        f"FROM {SCHEMA}.enrolment e JOIN {SCHEMA}.person p ON p.id = e.person_id "
        f"LEFT JOIN {SCHEMA}.completion c ON c.session_id = e.session_id AND c.person_id = e.person_id "
        "WHERE e.session_id = :id ORDER BY e.enrolled_at, e.person_id"), {"id": session_id})).mappings().all()
    return dict(row) | {"roster": [dict(r) for r in roster]}


async def sessions_in(conn: AsyncConnection, region: str, limit: int) -> list[dict[str, Any]]:
    rows = (await conn.execute(text(
        f"SELECT s.*, (SELECT count(*) FROM {SCHEMA}.enrolment e WHERE e.session_id = s.id "
        "AND e.status = 'enrolled') AS enrolled, "
        f"(SELECT count(*) FROM {SCHEMA}.completion c WHERE c.session_id = s.id) AS completions "
        f"FROM {SCHEMA}.session s WHERE s.organizer_region LIKE :prefix "
        "ORDER BY s.starts_on DESC, s.id LIMIT :n"), {"prefix": region + "%", "n": limit})).mappings().all()
    return [dict(r) for r in rows]


async def person_view(conn: AsyncConnection, person_id: UUID) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        f"SELECT id, name, phone, id_masked, created_at, updated_at FROM {SCHEMA}.person WHERE id = :id"),
        {"id": person_id})).mappings().first()
    if row is None:
        return None
    memberships = (await conn.execute(text(
        f"SELECT county_code, role, organization_id, added_on, removed_on, removal_reason "
        f"FROM {SCHEMA}.membership WHERE person_id = :id ORDER BY added_on, seq"),
        {"id": person_id})).mappings().all()
    exams = (await conn.execute(text(
        f"SELECT year, level, passed, county_code FROM {SCHEMA}.exam WHERE person_id = :id "
        "ORDER BY year, level"), {"id": person_id})).mappings().all()
    trainee = (await conn.execute(text(
        f"SELECT role, county_code, added_on FROM {SCHEMA}.trainee WHERE person_id = :id"),
        {"id": person_id})).mappings().first()
    return dict(row) | {"memberships": [dict(m) for m in memberships], "exams": [dict(e) for e in exams],
                        "trainee": dict(trainee) if trainee else None}


async def trainings_of(conn: AsyncConnection, person_id: UUID) -> list[dict[str, Any]]:
    rows = (await conn.execute(text(
        "SELECT s.id AS session_id, s.topic, s.organizer_region, s.starts_on, s.ends_on, s.mode, "
        "s.status AS session_status, e.status AS enrolment, e.attended, c.id AS completion_id, "
        f"c.completed_on FROM {SCHEMA}.enrolment e JOIN {SCHEMA}.session s ON s.id = e.session_id "
        f"LEFT JOIN {SCHEMA}.completion c ON c.session_id = e.session_id AND c.person_id = e.person_id "
        "WHERE e.person_id = :p ORDER BY s.starts_on, s.id"), {"p": person_id})).mappings().all()
    return [dict(r) for r in rows]


async def exam_figures(conn: AsyncConnection, county: str, year: int | None) -> list[dict[str, Any]]:
    rows = (await conn.execute(text(
        f"SELECT year, level, count(*) AS takers, count(*) FILTER (WHERE passed) AS passed "
        f"FROM {SCHEMA}.exam WHERE county_code = :c AND (CAST(:y AS integer) IS NULL OR year = :y) "
        "GROUP BY year, level ORDER BY year, level"), {"c": county, "y": year})).mappings().all()
    return [dict(r) for r in rows]


async def outstanding_view(conn: AsyncConnection, county: str, year: int | None) -> list[dict[str, Any]]:
    rows = (await conn.execute(text(
        f"SELECT year, kind, subject_id, title, selected_at FROM {SCHEMA}.outstanding "
        "WHERE county_code = :c AND (CAST(:y AS integer) IS NULL OR year = :y) "
        "ORDER BY year, kind, selected_at, subject_id"), {"c": county, "y": year})).mappings().all()
    return [dict(r) for r in rows]


# --- personal data rights: the data subject's export, erasure, and who asked -------------------

async def person_county(conn: AsyncConnection, person_id: UUID) -> str | None:
    """The county whose pool the person is in, else the one they train in (their trainee record),
    else whose pool they were in last: whose officials may see them."""
    known = (await standings_of(conn, [person_id])).get(person_id)
    return known.county_code if known else None


async def audit_personal_data(conn: AsyncConnection, action: str, person_id: UUID | None, county: str | None,
                              sub: str, region: str, roles: Sequence[str], source: str) -> None:
    """Who read personal data unmasked, exported or erased it: kept in training's schema."""
    await conn.execute(insert(personal_data_request).values(
        action=action, person_id=person_id, county_code=county, sub=sub, region=region, roles=sorted(roles),
        source=source))


async def person_export(conn: AsyncConnection, person_id: UUID) -> dict[str, Any] | None:
    """Everything training holds about a person, unmasked (the data subject's copy)."""
    row = (await conn.execute(text(
        f"SELECT id, name, phone, id_masked, (id_hash IS NOT NULL) AS id_number_hashed, created_at, "
        f"updated_at, updated_by, erased_at FROM {SCHEMA}.person WHERE id = :id"),
        {"id": person_id})).mappings().first()
    if row is None:
        return None

    async def rows(sql: str) -> list[dict[str, Any]]:
        return [dict(r) for r in (await conn.execute(text(sql), {"id": person_id})).mappings().all()]

    return {
        "person": dict(row),
        "memberships": await rows(
            "SELECT county_code, role, organization_id, added_on, removed_on, removal_reason, hub_id, "
            f"updated_at, updated_by FROM {SCHEMA}.membership WHERE person_id = :id ORDER BY added_on, seq"),
        "trainee": await rows(
            f"SELECT role, county_code, added_on, updated_at, updated_by FROM {SCHEMA}.trainee "
            "WHERE person_id = :id"),
        "trainings": await trainings_of(conn, person_id),
        "exams": await rows(
            f"SELECT year, level, passed, county_code, updated_at, updated_by FROM {SCHEMA}.exam "
            "WHERE person_id = :id ORDER BY year, level"),
        "outstanding": await rows(
            f"SELECT county_code, year, title, selected_at FROM {SCHEMA}.outstanding "
            "WHERE kind = 'leader' AND subject_id = :id ORDER BY year"),
        "hubs_led": await rows(
            f"SELECT hub_id, county_code, added_to_pool, recorded_at FROM {SCHEMA}.hub_leader "
            "WHERE person_id = :id ORDER BY recorded_at"),
        "requests": await rows(
            f"SELECT action, sub, source, at FROM {SCHEMA}.personal_data_request WHERE person_id = :id "
            "ORDER BY at, id"),
    }


async def erase_person(conn: AsyncConnection, person_id: UUID, source: str) -> bool:
    """Erase the person's personal fields (name, phone, ID-number hash and mask, the free-text
    removal reasons); memberships, enrolments, completions and exams stay, anonymous, so pool,
    person-time and exam figures do not change. False if there is no such person."""
    result = await conn.execute(text(
        f"UPDATE {SCHEMA}.person SET name = NULL, phone = NULL, id_hash = NULL, id_masked = NULL, "
        "erased_at = coalesce(erased_at, now()), updated_at = now(), updated_by = :source WHERE id = :id"),
        {"id": person_id, "source": source})
    if int(result.rowcount) == 0:
        return False
    await conn.execute(text(
        f"UPDATE {SCHEMA}.membership SET removal_reason = NULL WHERE person_id = :id AND removal_reason IS NOT NULL"),
        {"id": person_id})
    return True
