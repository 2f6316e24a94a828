"""registry's SQL: its own schema, nothing else.

The tables below (SQLAlchemy Core, one MetaData) are the one description of registry's schema: the
queries are written against them, and tests/integration/test_schema.py checks them against what
the migrations (services/registry/migrations) make. A change of the schema is a new migration and
the same change here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from datetime import timedelta
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
    LargeBinary,
    MetaData,
    Table,
    Text,
    Uuid,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, CHAR, JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.events import DivisionsImported
from cso import bulk, reference
from cso.reference import DivisionTables
from cso.tables import idempotency_table, outbox_table, runtime_tables

from .domain import Interval, NewInterval, Organization
from .domain.divisions import Retired, Retirement

SCHEMA = "registry"
METADATA = MetaData(schema=SCHEMA)
runtime_tables(METADATA, SCHEMA)        # outbox (outbox_relay, outbox_stream), inbox, consumer_position, bus_stream
idempotency_table(METADATA, SCHEMA)     # kept command replies (cso/idempotency.py)
# Receipts to publishers have an outbox of their own (verdicts.py): `outbox` stays registry's events.
receipt_outbox = outbox_table(METADATA, SCHEMA, "receipt_outbox")
outbox, inbox = METADATA.tables[f"{SCHEMA}.outbox"], METADATA.tables[f"{SCHEMA}.inbox"]


def _timestamp(name: str, nullable: bool = False, default: bool = True) -> Column[Any]:
    return Column(name, DateTime(timezone=True), nullable=nullable, server_default=func.now() if default else None)


# --- divisions, as registry checks filings against them (DivisionsImported: cso/reference.py) ---

county = Table(
    "county", METADATA,
    Column("code", CHAR(6), primary_key=True),
    Column("name", Text, nullable=False),
    Column("city_code", CHAR(4), nullable=False),
    Column("city_name", Text, nullable=False),
    Column("province_code", CHAR(2), nullable=False),
    Column("province_name", Text, nullable=False),
    Column("edition", Text, nullable=False))
township = Table(
    "township", METADATA,
    Column("code", CHAR(9), primary_key=True),
    Column("name", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("county_code", CHAR(6), nullable=False),
    Column("edition", Text, nullable=False))
community = Table(
    "community", METADATA,
    Column("code", CHAR(12), primary_key=True),
    Column("name", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("township_code", CHAR(9), nullable=False),
    Column("edition", Text, nullable=False))
DIVISIONS = DivisionTables(county, township, community)
# What changed in the divisions (DivisionChanged): a retired code's successor from its day on.
division_change = Table(
    "division_change", METADATA,
    Column("code", Text, primary_key=True),
    Column("effective_on", Date, primary_key=True),
    Column("change", Text, CheckConstraint("change IN ('renamed', 'merged', 'recoded', 'abolished')"),
           nullable=False),
    Column("successor_code", Text),
    Column("name", Text),
    Column("event_id", Uuid, nullable=False))

# --- the record ---------------------------------------------------------------------------------

organization = Table(
    "organization", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("name", Text, nullable=False),
    Column("community_code", CHAR(12), nullable=False),
    Column("tier", Text, CheckConstraint("tier IN ('registered', 'filed', 'guided')"), nullable=False),
    Column("category", Text, nullable=False),
    Column("status", Text, CheckConstraint("status IN ('active', 'deregistered', 'revoked')"), nullable=False),
    Column("legal_form", Text),
    Column("social_credit_code", CHAR(18), unique=True),
    Column("filing_number", Text),
    Column("filed_on", Date),
    Column("registered_on", Date),
    Column("ended_on", Date),
    Column("end_reason", Text),
    Column("brand", Boolean, nullable=False, server_default=text("false")),
    Column("brand_projects", Integer, nullable=False, server_default=text("0")),
    Column("hub_demonstration", Boolean, nullable=False, server_default=text("false")),
    Column("rating", Text),
    _timestamp("created_at"),
    _timestamp("updated_at"),
    Column("updated_by", Text, nullable=False),       # the source of the last change
    Column("last_event_id", Uuid, nullable=False))
Index("organization_community", organization.c.community_code, organization.c.id)
hub = Table(
    "hub", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("organization_id", Uuid, ForeignKey(organization.c.id), nullable=False),
    Column("region_code", Text, nullable=False),
    Column("name", Text),
    Column("leader_person_id", Uuid),
    Column("started_on", Date, nullable=False),
    Column("ended_on", Date),
    Column("updated_by", Text, nullable=False))
Index("hub_region", hub.c.region_code)
incubation_base = Table(
    "incubation_base", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("name", Text, nullable=False),
    Column("region_code", Text, nullable=False),
    Column("started_on", Date, nullable=False),
    Column("ended_on", Date),
    Column("updated_by", Text, nullable=False))
base_township = Table(
    "base_township", METADATA,
    Column("base_id", Uuid, ForeignKey(incubation_base.c.id), primary_key=True),
    Column("township_code", CHAR(9), primary_key=True))
# Innovation bases, demonstration parks, social-work stations and rooms (FacilityOpened): running
# from started_on until ended_on, counted by targets at region_code's tier.
facility = Table(
    "facility", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("kind", Text, CheckConstraint(
        "kind IN ('innovation_base', 'demonstration_park', 'social_work_station', 'social_work_room')"),
           nullable=False),
    Column("name", Text, nullable=False),
    Column("region_code", Text, nullable=False),
    Column("started_on", Date, nullable=False),
    Column("ended_on", Date),
    Column("updated_by", Text, nullable=False))
Index("facility_region", facility.c.region_code)
party_organization = Table(
    "party_organization", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("members", Integer, nullable=False),
    Column("region_code", Text, nullable=False),
    Column("started_on", Date, nullable=False),
    Column("ended_on", Date),
    Column("updated_by", Text, nullable=False))
party_coverage = Table(
    "party_coverage", METADATA,
    Column("party_organization_id", Uuid, ForeignKey(party_organization.c.id), primary_key=True),
    Column("organization_id", Uuid, ForeignKey(organization.c.id), primary_key=True))
Index("party_coverage_organization", party_coverage.c.organization_id)
# Who changed which record, when, from which system, and what. No unique index on event_id: the
# inbox, in the same transaction, already lets an event through once.
audit = Table(
    "audit", METADATA,
    Column("seq", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", Uuid, nullable=False),
    Column("record_kind", Text, CheckConstraint(
               "record_kind IN ('organization', 'hub', 'base', 'party', 'project', 'facility')"),
           nullable=False),
    Column("record_id", Uuid, nullable=False),
    Column("type", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("region", Text, nullable=False),
    _timestamp("recorded_at"),
    Column("changes", JSONB, nullable=False))
Index("audit_record", audit.c.record_id, audit.c.seq)
Index("audit_event", audit.c.event_id)          # the receipts query

# --- intake: publishers, refusals, losses, the waiting room (receipts.py, losses.py, waiting.py) -

intake_source = Table(
    "intake_source", METADATA,
    Column("source", Text, primary_key=True),
    _timestamp("first_seen"))
intake_refusal = Table(
    "intake_refusal", METADATA,
    Column("event_id", Uuid, primary_key=True),
    Column("source", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("field", Text, nullable=False),
    Column("reason", Text, nullable=False),
    _timestamp("refused_at"),
    Column("code", Text, nullable=False, server_default=text("'rule'")))
intake_loss = Table(
    "intake_loss", METADATA,
    Column("event_id", Uuid, primary_key=True),
    Column("stream", Text, nullable=False),
    _timestamp("detected_at"),
    Column("applied_sequence", BigInteger, nullable=False),
    Column("last_seen_sequence", BigInteger, nullable=False),
    Column("lost_at_least", BigInteger, nullable=False),
    _timestamp("intact_at", nullable=True, default=False),
    Column("stream_recreated", Boolean, nullable=False),
    Column("stream_first_sequence", BigInteger, nullable=False),
    Column("stream_last_sequence", BigInteger, nullable=False),
    Column("announced_to", ARRAY(Text)),
    _timestamp("announced_at", nullable=True, default=False))
waiting = Table(
    "waiting", METADATA,
    Column("seq", BigInteger, nullable=False, unique=True, autoincrement=True),  # arrival order
    Column("event_id", Uuid, primary_key=True),
    Column("source", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("region", Text, nullable=False),
    Column("waits_for", Text, nullable=False),   # organization:<id>, hub:<id>, base:<id>, party:<id>, county:<code>
    Column("field", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("data", LargeBinary, nullable=False),  # the envelope as taken in
    _timestamp("arrived_at", default=False),
    _timestamp("until", default=False))
Index("waiting_for", waiting.c.waits_for)
Index("waiting_until", waiting.c.until)

_ORG_COLUMNS = [f.name for f in fields(Organization)]


async def load_organizations(conn: AsyncConnection, ids: list[UUID]) -> dict[UUID, Organization | None]:
    """The organizations, locked in id order (replicas lock in the same order: no deadlock)."""
    rows = (await conn.execute(text(
        f"SELECT {', '.join(_ORG_COLUMNS)} FROM {organization.fullname} WHERE id = ANY(:ids) "
        "ORDER BY id FOR UPDATE"), {"ids": ids})).mappings().all()
    found = {r["id"]: Organization(**r) for r in rows}
    return {i: found.get(i) for i in ids}


async def save_organizations(conn: AsyncConnection, changed: list[tuple[Organization, UUID, str]]) -> None:
    """Upsert each organization's state after the batch, with the last event that changed it: one
    statement over arrays (each organization once, so ON CONFLICT meets each row at most once)."""
    rows = [{c: getattr(org, c) for c in _ORG_COLUMNS} | {"updated_by": source, "last_event_id": event_id}
            for org, event_id, source in changed]
    await bulk.upsert(conn, organization, rows, [*_ORG_COLUMNS, "updated_by", "last_event_id"],
                      also="updated_at = now()")


async def known_communities(conn: AsyncConnection, codes: list[str]) -> set[str]:
    return set((await conn.execute(text(
        f"SELECT code FROM {community.fullname} WHERE code = ANY(:c)"), {"c": codes})).scalars())


async def known_regions(conn: AsyncConnection, codes: list[str]) -> set[str]:
    """Which of these township (9-digit), county (6-digit) or city (4-digit: some county of it)
    codes divisions have loaded."""
    known: set[str] = set()
    cities = [c for c in codes if len(c) == 4]
    if cities:
        known.update((await conn.execute(text(
            f"SELECT DISTINCT city_code FROM {county.fullname} WHERE city_code = ANY(:c)"),
            {"c": cities})).scalars())
    for length, table in ((6, county), (9, township)):
        subset = [c for c in codes if len(c) == length]
        if subset:
            known.update((await conn.execute(text(
                f"SELECT code FROM {table.fullname} WHERE code = ANY(:c)"), {"c": subset})).scalars())
    return known


async def credit_code_holders(conn: AsyncConnection, codes: list[str]) -> dict[str, UUID]:
    rows = (await conn.execute(text(
        f"SELECT social_credit_code, id FROM {organization.fullname} WHERE social_credit_code = ANY(:c)"),
        {"c": codes})).all()
    return {code: ident for code, ident in rows}


_INTERVAL_TABLES = {"hub": hub, "base": incubation_base, "party": party_organization, "facility": facility}


async def load_intervals(conn: AsyncConnection, kind: str, ids: list[UUID]) -> dict[UUID, Interval]:
    table = _INTERVAL_TABLES[kind]
    org = "organization_id" if kind == "hub" else "NULL AS organization_id"
    rows = (await conn.execute(text(
        f"SELECT id, region_code, started_on, ended_on, {org} FROM {table.fullname} "
        "WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"), {"ids": ids})).mappings().all()
    return {r["id"]: Interval(**r) for r in rows}


_INTERVAL_COLUMNS = ["id", "region_code", "started_on", "ended_on", "updated_by"]
_INTERVAL_OWN = {"hub": ["organization_id", "name", "leader_person_id"], "base": ["name"],
                 "party": ["kind", "members"], "facility": ["kind", "name"]}


async def insert_intervals(conn: AsyncConnection, kind: str, created: Sequence[NewInterval]) -> None:
    """Hubs, bases or party organizations created in a batch (already ended, if the batch ended
    them), with the townships a base covers and the organizations a party organization covers:
    one statement over arrays per table, however many the batch created."""
    if not created:
        return
    table = _INTERVAL_TABLES[kind]
    columns = _INTERVAL_COLUMNS + _INTERVAL_OWN[kind]
    rows = [{"id": n.interval.id, "region_code": n.interval.region_code, "started_on": n.interval.started_on,
             "ended_on": n.interval.ended_on, "updated_by": n.source, "name": n.name,
             "organization_id": n.interval.organization_id, "leader_person_id": n.leader,
             "kind": n.facility_kind if kind == "facility" else n.party_kind, "members": n.members}
            for n in created]
    # Plain inserts: a key there already is an error, as it was row by row.
    await bulk.insert(conn, table, rows, columns)
    if kind == "base":  # a base at a community covers no township
        await bulk.insert(conn, base_township, [{"base_id": n.interval.id, "township_code": t}
                                                for n in created for t in n.townships])
    elif kind == "party":
        await bulk.insert(conn, party_coverage, [{"party_organization_id": n.interval.id, "organization_id": o}
                                                 for n in created for o in n.organization_ids])


async def end_intervals(conn: AsyncConnection, kind: str, ended: Sequence[tuple[Interval, str]]) -> None:
    """Hubs, bases, party organizations or facilities the batch ended, each once (the ledger keeps
    them by id), in one statement over arrays."""
    if ended:
        table = _INTERVAL_TABLES[kind]
        columns = ["id", "ended_on", "updated_by"]
        await conn.execute(text(
            f"UPDATE {table.fullname} t SET ended_on = u.ended_on, updated_by = u.updated_by "
            f"FROM {bulk.unnest(table, columns)} AS u({', '.join(columns)}) WHERE t.id = u.id"),
            bulk.arrays([{"id": i.id, "ended_on": i.ended_on, "updated_by": source} for i, source in ended],
                        columns))


async def insert_audit(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Who changed which record, when, from which system, and what changed: kept with the record,
    in the order of the rows (their seq)."""
    # `changes` travels as JSON text and becomes jsonb row by row (bulk.insert).
    await bulk.insert(conn, audit, rows,
                      ["event_id", "record_kind", "record_id", "type", "actor", "source", "region", "changes"],
                      in_order=True)


async def upsert_divisions(conn: AsyncConnection, d: DivisionsImported) -> None:
    """One county's divisions (the handler is cso.reference.DivisionsHandler, handlers.py)."""
    await reference.upsert_divisions(conn, DIVISIONS, d)


# --- read side --------------------------------------------------------------------------------

async def organization_view(conn: AsyncConnection, org_id: UUID) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        f"SELECT o.*, c.name AS community_name, c.kind AS community_kind "
        f"FROM {organization.fullname} o LEFT JOIN {community.fullname} c ON c.code = o.community_code "
        "WHERE o.id = :id"), {"id": org_id})).mappings().first()
    if row is None:
        return None
    history = (await conn.execute(text(
        f"SELECT event_id, type, created_at FROM {outbox.fullname} WHERE aggregate_id = :id ORDER BY seq"),
        {"id": str(org_id)})).mappings().all()
    hubs = (await conn.execute(text(
        f"SELECT id, region_code, started_on, ended_on FROM {hub.fullname} WHERE organization_id = :id"),
        {"id": org_id})).mappings().all()
    party = (await conn.execute(text(
        f"SELECT p.id, p.kind, p.started_on, p.ended_on FROM {party_organization.fullname} p "
        f"JOIN {party_coverage.fullname} c ON c.party_organization_id = p.id WHERE c.organization_id = :id"),
        {"id": org_id})).mappings().all()
    trail = (await conn.execute(text(
        f"SELECT event_id, type, actor, source, recorded_at, changes FROM {audit.fullname} "
        "WHERE record_id = :id ORDER BY seq"), {"id": org_id})).mappings().all()
    return dict(row) | {"history": [dict(h) for h in history], "hubs": [dict(h) for h in hubs],
                        "party_organizations": [dict(p) for p in party], "audit": [dict(a) for a in trail]}


async def organizations_in(conn: AsyncConnection, region: str, status: str | None, limit: int,
                           after: UUID | None) -> list[dict[str, Any]]:
    """Keyset paging on (id) within a region prefix: stable under concurrent inserts."""
    rows = (await conn.execute(text(
        f"SELECT id, name, community_code, tier, category, status, filed_on, registered_on, ended_on "
        f"FROM {organization.fullname} WHERE community_code LIKE :prefix "
        "AND (CAST(:status AS text) IS NULL OR status = :status) "
        "AND (CAST(:after AS uuid) IS NULL OR id > :after) ORDER BY id LIMIT :limit"),
        {"prefix": region + "%", "status": status, "after": after, "limit": limit})).mappings().all()
    return [dict(r) for r in rows]


async def facilities_in(conn: AsyncConnection, region: str, limit: int, after: UUID | None = None,
                        kind: str | None = None, running: bool | None = None) -> list[dict[str, Any]]:
    """Keyset paging on id of the facilities at a region and below it, each with its operating
    status (running while it has not closed). Who recorded it (`updated_by`, a token's subject may be
    a person's) is not for every reader of the region, as with organizations."""
    query = select(facility.c.id, facility.c.kind, facility.c.name, facility.c.region_code,
                   facility.c.started_on, facility.c.ended_on).where(
        facility.c.region_code.startswith(region, autoescape=True))
    if after is not None:
        query = query.where(facility.c.id > after)
    if kind is not None:
        query = query.where(facility.c.kind == kind)
    if running is not None:
        query = query.where(facility.c.ended_on.is_(None) if running else facility.c.ended_on.is_not(None))
    rows = (await conn.execute(query.order_by(facility.c.id).limit(limit))).mappings().all()
    return [dict(r) | {"status": "running" if r["ended_on"] is None else "closed"} for r in rows]


async def division_known(conn: AsyncConnection, code: str) -> bool:
    table = {2: (county, "province_code"), 4: (county, "city_code"), 6: (county, "code"),
             9: (township, "code"), 12: (community, "code")}.get(len(code))
    if table is None:
        return False
    return (await conn.execute(text(f"SELECT 1 FROM {table[0].fullname} WHERE {table[1]} = :c LIMIT 1"),
                               {"c": code})).first() is not None


# --- divisions, as registry holds them (GET /divisions/{code}) ----------------------------------

# A child's code begins with its parent's (NBS), so a region's children are a range of the child
# table's primary key: no index beyond the keys is needed, nationally either.
_CHILD_LENGTH = {0: 2, 2: 4, 4: 6, 6: 9, 9: 12}


def _community_kind(kind: str) -> str:
    """A community's committee, from its class: urban ones are residents' committees (社区,
    居民委员会), rural ones villagers' committees (村, 村民委员会); cso.divisions.classify."""
    return {"urban": "community", "rural": "village"}.get(kind, "other")


def _node(code: str, name: str, kind: str | None = None) -> dict[str, Any]:
    tier = {2: "province", 4: "city", 6: "county", 9: "township", 12: "community"}[len(code)]
    node: dict[str, Any] = {"code": code, "name": name, "tier": tier}
    if tier == "township":
        node["kind"] = kind  # street, town, township or special
    elif tier == "community":
        node["kind"], node["class"] = _community_kind(kind or ""), kind
    else:
        node["kind"] = tier
    return node


async def division(conn: AsyncConnection, code: str) -> dict[str, Any] | None:
    """A region (2, 4, 6, 9 or 12 digits) registry holds: code, name, tier, kind (class for a
    community), edition, and its parents (province first); None if none of its divisions are loaded."""
    in_county = (await conn.execute(text(
        f"SELECT code, name, city_code, city_name, province_code, province_name, edition FROM {county.fullname} "
        "WHERE code BETWEEN :low AND :high ORDER BY code LIMIT 1"),
        {"low": code[:6].ljust(6, "0"), "high": code[:6].ljust(6, "9")})).mappings().first()
    if in_county is None:
        return None
    parents = [_node(in_county["province_code"], in_county["province_name"]),
               _node(in_county["city_code"], in_county["city_name"]), _node(in_county["code"], in_county["name"])]
    if len(code) <= 6:
        found = parents[len(code) // 2 - 1]
        return found | {"edition": in_county["edition"], "parents": parents[:len(code) // 2 - 1]} \
            if found["code"] == code else None
    in_township = (await conn.execute(text(
        f"SELECT code, name, kind, edition FROM {township.fullname} WHERE code = :c"),
        {"c": code[:9]})).mappings().first()
    if in_township is None:
        return None
    if len(code) == 9:
        return _node(code, in_township["name"], in_township["kind"]) | {"edition": in_township["edition"],
                                                                  "parents": parents}
    in_community = (await conn.execute(text(
        f"SELECT name, kind, edition FROM {community.fullname} WHERE code = :c"), {"c": code})).mappings().first()
    if in_community is None:
        return None
    return _node(code, in_community["name"], in_community["kind"]) | {
        "edition": in_community["edition"],
        "parents": [*parents, _node(in_township["code"], in_township["name"], in_township["kind"])]}


async def division_children(conn: AsyncConnection, code: str, after: str | None,
                            limit: int) -> tuple[list[dict[str, Any]], int]:
    """A page of the region's children in code order after `after` ("" is the country: its
    provinces), with how many there are in all."""
    child = _CHILD_LENGTH.get(len(code))
    if child is None:  # a community has none
        return [], 0
    params: dict[str, Any] = {"low": code.ljust(child, "0"), "high": code.ljust(child, "9")}
    if child in (2, 4):  # provinces and cities: the names their counties carry
        column, name = ("province_code", "province_name") if child == 2 else ("city_code", "city_name")
        source = (f"SELECT {column} AS code, max({name}) AS name, NULL AS kind FROM {county.fullname} "
                  f"WHERE code BETWEEN :low AND :high GROUP BY {column}")
        params = {"low": code.ljust(6, "0"), "high": code.ljust(6, "9")}
    else:
        table = {6: county, 9: township, 12: community}[child]
        kind = "NULL" if child == 6 else "kind"
        # The divisions in force: a code retired by a merge, recode or abolition (DivisionChanged)
        # is no child any more, though filings of its past days still name it.
        source = (f"SELECT code, name, {kind} AS kind FROM {table.fullname} "
                  "WHERE code BETWEEN :low AND :high AND code NOT IN ("
                  f"SELECT code FROM {division_change.fullname} WHERE change <> 'renamed')")
    rows = (await conn.execute(text(
        f"SELECT code, name, kind FROM ({source}) c WHERE code > :after ORDER BY code LIMIT :limit"),
        params | {"after": after or "", "limit": limit})).all()
    total = (await conn.execute(text(f"SELECT count(*) FROM ({source}) c"), params)).scalar_one()
    return [_node(c.strip(), n, k) for c, n, k in rows], int(total)


# --- the inbox: event ids taken (the consumer's, the sheet upload's) ------------------------------

async def inbox_entries(conn: AsyncConnection, ids: Sequence[UUID]) -> dict[UUID, Any]:
    """Each of these event ids that was taken: its row (event_id, stream, stream_seq)."""
    return {r.event_id: r for r in (await conn.execute(text(
        f"SELECT event_id, stream, stream_seq FROM {inbox.fullname} WHERE event_id = ANY(:ids)"),
        {"ids": list(ids)})).all()}


async def claim_event_ids(conn: AsyncConnection, ids: Sequence[UUID | str], streams: Sequence[str],
                          seqs: Sequence[int]) -> set[UUID]:
    """Take these event ids in the inbox; the ones that were new (an id taken before stays as it was)."""
    return set((await conn.execute(text(
        f"INSERT INTO {inbox.fullname} (event_id, stream, stream_seq) SELECT * FROM "
        f"{bulk.unnest(inbox, ['event_id', 'stream', 'stream_seq'])} ON CONFLICT DO NOTHING RETURNING event_id"),
        {"event_id": list(ids), "stream": list(streams), "stream_seq": list(seqs)})).scalars())


async def add_event_ids(conn: AsyncConnection, ids: Sequence[UUID], stream: str, seqs: Sequence[int]) -> None:
    """Take these event ids in the inbox, each new: one taken before (by a concurrent sheet upload)
    raises IntegrityError, and the caller's transaction is lost."""
    await conn.execute(text(
        f"INSERT INTO {inbox.fullname} (event_id, stream, stream_seq) SELECT * FROM "
        f"{bulk.unnest(inbox, ['event_id', 'stream', 'stream_seq'])}"),
        {"event_id": list(ids), "stream": [stream] * len(ids), "stream_seq": list(seqs)})


async def applied_before(conn: AsyncConnection, stream: str, moment: Any) -> int:
    """The last sequence of `stream` applied before `moment` (0: none)."""
    last = (await conn.execute(text(
        f"SELECT max(stream_seq) FROM {inbox.fullname} WHERE stream = :s AND applied_at < :moment"),
        {"s": stream, "moment": moment})).scalar()
    return int(last or 0)


# --- intake: sources, refusals, verdicts by event id, losses -------------------------------------

async def note_sources(conn: AsyncConnection, sources: Sequence[str]) -> None:
    if sources:
        await conn.execute(text(
            f"INSERT INTO {intake_source.fullname} (source) SELECT unnest(CAST(:s AS text[])) "
            "ON CONFLICT DO NOTHING"), {"s": list(sources)})


async def intake_sources(conn: AsyncConnection) -> list[str]:
    return list((await conn.execute(text(
        f"SELECT source FROM {intake_source.fullname} ORDER BY source"))).scalars())


_REFUSAL = ["event_id", "source", "type", "field", "reason", "code"]


async def note_refusals(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Refusals for good (event_id, source, type, field, reason, code), in one statement over
    arrays; the first refusal of an id stands (inserted in the order of the rows)."""
    await bulk.insert(conn, intake_refusal, rows, _REFUSAL, on_conflict="DO NOTHING", in_order=True)


_MINE = "(CAST(:source AS text) IS NULL OR source = :source)"


async def accepted_events(conn: AsyncConnection, ids: Sequence[UUID], source: str | None = None) -> dict[UUID, Any]:
    """Accepted facts by event id (record_id, type, region), of `source` (None: any)."""
    return {r.event_id: r for r in (await conn.execute(text(
        f"SELECT event_id, record_id, type, region FROM {audit.fullname} WHERE event_id = ANY(:ids) AND {_MINE}"),
        {"ids": list(ids), "source": source})).all()}


async def refused_events(conn: AsyncConnection, ids: Sequence[UUID], source: str | None = None) -> dict[UUID, Any]:
    """Refused facts by event id (field, reason, code), of `source` (None: any)."""
    return {r.event_id: r for r in (await conn.execute(text(
        f"SELECT event_id, field, reason, code FROM {intake_refusal.fullname} WHERE event_id = ANY(:ids) "
        f"AND {_MINE}"), {"ids": list(ids), "source": source})).all()}


async def waiting_events(conn: AsyncConnection, ids: Sequence[UUID], source: str | None = None) -> dict[UUID, Any]:
    """Waiting facts by event id (field, reason, until), of `source` (None: any)."""
    return {r.event_id: r for r in (await conn.execute(text(
        f"SELECT event_id, field, reason, until FROM {waiting.fullname} WHERE event_id = ANY(:ids) AND {_MINE}"),
        {"ids": list(ids), "source": source})).all()}


async def recent_losses(conn: AsyncConnection, days: int, limit: int) -> list[Any]:
    return list((await conn.execute(text(
        f"SELECT * FROM {intake_loss.fullname} WHERE detected_at > now() - make_interval(days => :days) "
        "ORDER BY detected_at DESC LIMIT :n"), {"days": days, "n": limit})).mappings().all())


async def note_loss(conn: AsyncConnection, loss: dict[str, Any]) -> None:
    """A loss of the intake stream (intake_loss's columns); replicas that find the same one record it once."""
    await conn.execute(text(
        f"INSERT INTO {intake_loss.fullname} ({', '.join(loss)}) VALUES ({', '.join(':' + c for c in loss)}) "
        "ON CONFLICT DO NOTHING"), loss)


async def unannounced_losses(conn: AsyncConnection) -> list[Any]:
    """Losses not yet told to the publishers, locked (one replica tells each)."""
    return list((await conn.execute(text(
        f"SELECT * FROM {intake_loss.fullname} WHERE announced_at IS NULL ORDER BY detected_at "
        "FOR UPDATE SKIP LOCKED"))).mappings().all())


async def mark_announced(conn: AsyncConnection, ids: Sequence[UUID], told: Sequence[str]) -> None:
    await conn.execute(text(
        f"UPDATE {intake_loss.fullname} SET announced_at = now(), announced_to = :to WHERE event_id = ANY(:ids)"),
        {"to": list(told), "ids": list(ids)})


# --- the waiting room (waiting.py) ---------------------------------------------------------------

_TAKEN = "RETURNING seq, event_id, data, waits_for, field, reason, arrived_at, until"


async def take_waiting(conn: AsyncConnection, keys: Sequence[str]) -> list[Any]:
    """Take the facts waiting for these keys out of the room (their rows, locked by the delete)."""
    if not keys:
        return []
    return list((await conn.execute(text(
        f"DELETE FROM {waiting.fullname} WHERE waits_for = ANY(:keys) {_TAKEN}"),
        {"keys": list(keys)})).mappings().all())


# What a waiting fact waits for is on record (each kind of key, and the table that holds it).
_SATISFIED = " OR ".join(
    f"(split_part(w.waits_for, ':', 1) = '{kind}' AND EXISTS (SELECT 1 FROM {table.fullname} x "
    f"WHERE x.{column}::text = split_part(w.waits_for, ':', 2)))"
    for kind, table, column in (("organization", organization, "id"), ("county", county, "code"),
                                ("hub", hub, "id"), ("base", incubation_base, "id"),
                                ("party", party_organization, "id"), ("facility", facility, "id")))
# Funded projects (funding_store.py, which builds on this module): named, not imported.
_SATISFIED += (" OR (split_part(w.waits_for, ':', 1) = 'project' AND EXISTS (SELECT 1 FROM "
               f"{SCHEMA}.funded_project x WHERE x.id::text = split_part(w.waits_for, ':', 2)))")


def count_satisfied_waiting() -> str:
    """SQL: how many waiting facts have their need on record now (the next sweep decides them)."""
    return f"SELECT count(*) FROM {waiting.fullname} w WHERE {_SATISFIED}"


async def take_satisfied_waiting(conn: AsyncConnection, keys: Sequence[str]) -> list[Any]:
    """Take the facts waiting for these keys whose need is on record now (a batch's check after it
    committed, waiting.Room.recheck: the `waits_for` index, not the whole room); facts another
    transaction holds are left to it."""
    if not keys:
        return []
    return list((await conn.execute(text(
        f"DELETE FROM {waiting.fullname} WHERE seq IN (SELECT seq FROM {waiting.fullname} w "
        f"WHERE w.waits_for = ANY(:keys) AND ({_SATISFIED}) ORDER BY seq FOR UPDATE SKIP LOCKED) {_TAKEN}"),
        {"keys": list(keys)})).mappings().all())


async def take_due_waiting(conn: AsyncConnection, now: Any, limit: int) -> list[Any]:
    """Take up to `limit` facts, oldest first, whose need is on record now or whose time is up
    (`until` <= now); facts another transaction holds are left to it."""
    return list((await conn.execute(text(
        f"DELETE FROM {waiting.fullname} WHERE seq IN (SELECT seq FROM {waiting.fullname} w "
        f"WHERE w.until <= :now OR {_SATISFIED} ORDER BY seq LIMIT :n FOR UPDATE SKIP LOCKED) {_TAKEN}"),
        {"now": now, "n": limit})).mappings().all())


async def park_waiting(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Put facts in the room (seq None: a new arrival, numbered now); one there already keeps its
    place and arrival and takes the new reason."""
    if rows:
        await conn.execute(text(
            f"INSERT INTO {waiting.fullname} (seq, event_id, source, type, region, waits_for, field, reason, data, "
            "arrived_at, until) VALUES (COALESCE(CAST(:seq AS bigint), "
            f"nextval(pg_get_serial_sequence('{waiting.fullname}', 'seq'))), :event_id, :source, :type, :region, "
            ":waits_for, :field, :reason, :data, :arrived_at, :until) "
            "ON CONFLICT (event_id) DO UPDATE SET waits_for = excluded.waits_for, field = excluded.field, "
            "reason = excluded.reason"), list(rows))


LOCK_NOT_AVAILABLE = "55P03"   # PostgreSQL's lock_not_available: a lock_timeout ran out


async def wait_for_locks_at_most(conn: AsyncConnection, wait: timedelta) -> None:
    """For the rest of this transaction only (a pooled connection keeps nothing of it), a statement
    that waits longer than `wait` for a lock fails (LOCK_NOT_AVAILABLE) instead of waiting on."""
    await conn.execute(text("SELECT set_config('lock_timeout', :wait, true)"),
                       {"wait": f"{max(1, round(wait / timedelta(milliseconds=1)))}ms"})


def lock_not_available(error: BaseException) -> bool:
    """The statement gave up waiting for a lock (wait_for_locks_at_most); its transaction is lost."""
    return isinstance(error, DBAPIError) and getattr(error.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE


async def waiting_extent(conn: AsyncConnection) -> tuple[int, Any]:
    """(how many facts wait, when the oldest arrived: None if none)."""
    count, oldest = (await conn.execute(text(f"SELECT count(*), min(arrived_at) FROM {waiting.fullname}"))).one()
    return int(count), oldest


# --- the sheet upload (imports.py) ----------------------------------------------------------------

async def organizations_named(conn: AsyncConnection, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], UUID]:
    """Organizations on record by (community code, name)."""
    if not pairs:
        return {}
    communities, names = zip(*pairs, strict=True)
    return {(c, n): i for c, n, i in (await conn.execute(text(
        f"SELECT o.community_code, o.name, o.id FROM {organization.fullname} o JOIN unnest("
        "CAST(:c AS text[]), CAST(:n AS text[])) AS p(c, n) ON o.community_code = p.c AND o.name = p.n"),
        {"c": list(communities), "n": list(names)})).all()}


# --- division changes (DivisionChanged: divisions.py) -------------------------------------------


async def retired_codes(conn: AsyncConnection, counties: list[str]) -> Retired:
    """The codes retired in these counties, and in the counties their successors lie in (a chain
    of changes may cross a county line)."""
    found: dict[tuple[str, Any], Retirement] = {}
    todo, seen = set(counties), set[str]()
    while todo:
        seen |= todo
        rows = (await conn.execute(text(
            f"SELECT code, effective_on, change, successor_code FROM {division_change.fullname} "
            "WHERE left(code, 6) = ANY(:c) AND change <> 'renamed'"), {"c": sorted(todo)})).all()
        for code, on, change, successor in rows:
            found[(code, on)] = Retirement(code, on, change, successor)
        todo = {r.successor[:6] for r in found.values() if r.successor} - seen
    return Retired(found.values())


async def keep_changes(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Each change once by code and day: a redelivered or re-imported change is kept as it was."""
    if rows:
        await bulk.upsert(conn, division_change, rows, update=[])


# What moves when a code retires: each table's code column, and the audit's name for its records.
# A funded project counts where its recipient (or its hub) is; its table is funding_store's, in
# this MetaData (funding_store imports this module, so it is looked up by name).
_FOLLOWING = (("organization", "organization", "community_code"), ("hub", "hub", "region_code"),
              ("base", "incubation_base", "region_code"), ("party", "party_organization", "region_code"),
              ("project", "funded_project", "region_code"), ("facility", "facility", "region_code"))


async def follow_changes(conn: AsyncConnection, retired: Retired, source: str) -> int:
    """Move every record at a retired code to the code standing for it now, one statement per
    table, with an audit row per record naming the old and the new code (and the change's event).
    Records already moved are not touched again: applying the changes twice moves nothing twice.
    Returns how many records moved."""
    moves = {code: now for code in retired.codes() if (now := retired.current(code)) != code}
    if not moves:
        return 0
    events: dict[str, UUID] = dict((await conn.execute(text(
        f"SELECT DISTINCT ON (code) code, event_id FROM {division_change.fullname} "
        "WHERE code = ANY(:c) AND change <> 'renamed' ORDER BY code, effective_on"),
        {"c": sorted(moves)})).all())
    params = {"old": sorted(moves), "new": [moves[c] for c in sorted(moves)],
              "event": [events[c] for c in sorted(moves)]}
    moved = 0
    for kind, name, column in _FOLLOWING:
        table = METADATA.tables[f"{SCHEMA}.{name}"]
        touched = "updated_by = :source" + (", updated_at = now(), last_event_id = m.event"
                                            if kind == "organization" else "")
        rows = (await conn.execute(text(
            f"UPDATE {table.fullname} t SET {column} = m.new, {touched} "
            "FROM unnest(CAST(:old AS text[]), CAST(:new AS text[]), CAST(:event AS uuid[])) AS m(old, new, event) "
            f"WHERE t.{column} = m.old RETURNING t.id, m.old, m.new, m.event"),
            params | {"source": source})).all()
        moved += len(rows)
        await insert_audit(conn, [{
            "event_id": event, "record_kind": kind, "record_id": ident, "type": "DivisionChanged",
            "actor": source, "source": source, "region": new,
            "changes": json.dumps({column: [old, new]})} for ident, old, new, event in rows])
    # A base's townships: the successor once, the retired code no more.
    await conn.execute(text(
        f"INSERT INTO {base_township.fullname} (base_id, township_code) "
        f"SELECT b.base_id, m.new FROM {base_township.fullname} b "
        "JOIN unnest(CAST(:old AS text[]), CAST(:new AS text[])) AS m(old, new) ON b.township_code = m.old "
        "ON CONFLICT DO NOTHING"), {"old": params["old"], "new": params["new"]})
    await conn.execute(text(
        f"DELETE FROM {base_township.fullname} WHERE township_code = ANY(:old)"), {"old": params["old"]})
    return moved
