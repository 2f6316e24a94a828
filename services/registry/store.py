"""registry's SQL: its own schema, nothing else."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.events import DivisionsImported

from .domain import Interval, Organization

SCHEMA = "registry"
_ORG_COLUMNS = [f.name for f in fields(Organization)]


async def load_organization(conn: AsyncConnection, org_id: UUID, lock: bool = True) -> Organization | None:
    row = (await conn.execute(text(
        f"SELECT {', '.join(_ORG_COLUMNS)} FROM {SCHEMA}.organization WHERE id = :id"
        + (" FOR UPDATE" if lock else "")), {"id": org_id})).mappings().first()
    return Organization(**row) if row else None


async def load_organizations(conn: AsyncConnection, ids: list[UUID]) -> dict[UUID, Organization | None]:
    rows = (await conn.execute(text(
        f"SELECT {', '.join(_ORG_COLUMNS)} FROM {SCHEMA}.organization WHERE id = ANY(:ids) "
        "ORDER BY id FOR UPDATE"), {"ids": ids})).mappings().all()
    found = {r["id"]: Organization(**r) for r in rows}
    return {i: found.get(i) for i in ids}


async def save_organization(conn: AsyncConnection, org: Organization, event_id: UUID, source: str) -> None:
    values = asdict(org) | {"event_id": event_id, "source": source}
    assignments = ", ".join(f"{c} = excluded.{c}" for c in _ORG_COLUMNS if c != "id")
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.organization ({', '.join(_ORG_COLUMNS)}, updated_by, last_event_id) "
        f"VALUES ({', '.join(':' + c for c in _ORG_COLUMNS)}, :source, :event_id) "
        f"ON CONFLICT (id) DO UPDATE SET {assignments}, updated_at = now(), "
        "updated_by = excluded.updated_by, last_event_id = excluded.last_event_id"), values)


async def community_known(conn: AsyncConnection, code: str) -> bool:
    return (await conn.execute(text(f"SELECT 1 FROM {SCHEMA}.community WHERE code = :c"),
                               {"c": code})).first() is not None


async def region_known(conn: AsyncConnection, code: str) -> bool:
    table = {9: "township", 6: "county"}.get(len(code))
    if table is None:
        return False
    return (await conn.execute(text(f"SELECT 1 FROM {SCHEMA}.{table} WHERE code = :c"),
                               {"c": code})).first() is not None


async def unknown_townships(conn: AsyncConnection, codes: list[str]) -> list[str]:
    known = set((await conn.execute(text(
        f"SELECT code FROM {SCHEMA}.township WHERE code = ANY(:c)"), {"c": codes})).scalars())
    return [c for c in codes if c not in known]


async def credit_code_holder(conn: AsyncConnection, code: str) -> UUID | None:
    holder: UUID | None = (await conn.execute(text(
        f"SELECT id FROM {SCHEMA}.organization WHERE social_credit_code = :c"), {"c": code})).scalar()
    return holder


_INTERVAL_TABLES = {"hub": "hub", "base": "incubation_base", "party": "party_organization"}


async def load_interval(conn: AsyncConnection, kind: str, ident: UUID) -> Interval | None:
    table = _INTERVAL_TABLES[kind]
    org = "organization_id" if kind == "hub" else "NULL AS organization_id"
    row = (await conn.execute(text(
        f"SELECT id, region_code, started_on, ended_on, {org} FROM {SCHEMA}.{table} "
        "WHERE id = :id FOR UPDATE"), {"id": ident})).mappings().first()
    return Interval(**row) if row else None


async def insert_hub(conn: AsyncConnection, hub: Interval, name: str | None,
                     leader: UUID | None, source: str) -> None:
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.hub (id, organization_id, region_code, name, leader_person_id, "
        "started_on, updated_by) VALUES (:id, :org, :region, :name, :leader, :started, :source)"),
        {"id": hub.id, "org": hub.organization_id, "region": hub.region_code, "name": name,
         "leader": leader, "started": hub.started_on, "source": source})


async def insert_base(conn: AsyncConnection, base: Interval, name: str, townships: list[str],
                      source: str) -> None:
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.incubation_base (id, name, region_code, started_on, updated_by) "
        "VALUES (:id, :name, :region, :started, :source)"),
        {"id": base.id, "name": name, "region": base.region_code, "started": base.started_on,
         "source": source})
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.base_township (base_id, township_code) VALUES (:b, :t)"),
        [{"b": base.id, "t": t} for t in sorted(set(townships))])


async def insert_party(conn: AsyncConnection, party: Interval, kind: str, members: int,
                       organization_ids: list[UUID], source: str) -> None:
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.party_organization (id, kind, members, region_code, started_on, "
        "updated_by) VALUES (:id, :kind, :members, :region, :started, :source)"),
        {"id": party.id, "kind": kind, "members": members, "region": party.region_code,
         "started": party.started_on, "source": source})
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.party_coverage (party_organization_id, organization_id) VALUES (:p, :o)"),
        [{"p": party.id, "o": o} for o in sorted(set(organization_ids))])


async def end_interval(conn: AsyncConnection, kind: str, interval: Interval, source: str) -> None:
    await conn.execute(text(
        f"UPDATE {SCHEMA}.{_INTERVAL_TABLES[kind]} SET ended_on = :ended, updated_by = :source "
        "WHERE id = :id"), {"id": interval.id, "ended": interval.ended_on, "source": source})


async def upsert_divisions(conn: AsyncConnection, d: DivisionsImported) -> None:
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.county (code, name, city_code, city_name, province_code, province_name, "
        "edition) VALUES (:code, :name, :city, :city_name, :prov, :prov_name, :edition) "
        "ON CONFLICT (code) DO UPDATE SET name = excluded.name, city_name = excluded.city_name, "
        "province_name = excluded.province_name, edition = excluded.edition"),
        {"code": d.county.code, "name": d.county.name, "city": d.city.code, "city_name": d.city.name,
         "prov": d.province.code, "prov_name": d.province.name, "edition": d.edition})
    if d.townships:
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.township (code, name, kind, county_code, edition) "
            "SELECT * FROM unnest(CAST(:c AS text[]), CAST(:n AS text[]), CAST(:k AS text[]), "
            "CAST(:p AS text[]), CAST(:e AS text[])) "
            "ON CONFLICT (code) DO UPDATE SET name = excluded.name, kind = excluded.kind, "
            "edition = excluded.edition"),
            {"c": [t.code for t in d.townships], "n": [t.name for t in d.townships],
             "k": [t.kind.value for t in d.townships], "p": [d.county.code] * len(d.townships),
             "e": [d.edition] * len(d.townships)})
    if d.communities:
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.community (code, name, kind, township_code, edition) "
            "SELECT * FROM unnest(CAST(:c AS text[]), CAST(:n AS text[]), CAST(:k AS text[]), "
            "CAST(:p AS text[]), CAST(:e AS text[])) "
            "ON CONFLICT (code) DO UPDATE SET name = excluded.name, kind = excluded.kind, "
            "edition = excluded.edition"),
            {"c": [c.code for c in d.communities], "n": [c.name for c in d.communities],
             "k": [c.kind.value for c in d.communities], "p": [c.code[:9] for c in d.communities],
             "e": [d.edition] * len(d.communities)})


# --- read side --------------------------------------------------------------------------------

async def organization_view(conn: AsyncConnection, org_id: UUID) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        f"SELECT o.*, c.name AS community_name, c.kind AS community_kind "
        f"FROM {SCHEMA}.organization o LEFT JOIN {SCHEMA}.community c ON c.code = o.community_code "
        "WHERE o.id = :id"), {"id": org_id})).mappings().first()
    if row is None:
        return None
    history = (await conn.execute(text(
        f"SELECT event_id, type, created_at FROM {SCHEMA}.outbox WHERE aggregate_id = :id ORDER BY seq"),
        {"id": str(org_id)})).mappings().all()
    hubs = (await conn.execute(text(
        f"SELECT id, region_code, started_on, ended_on FROM {SCHEMA}.hub WHERE organization_id = :id"),
        {"id": org_id})).mappings().all()
    party = (await conn.execute(text(
        f"SELECT p.id, p.kind, p.started_on, p.ended_on FROM {SCHEMA}.party_organization p "
        f"JOIN {SCHEMA}.party_coverage c ON c.party_organization_id = p.id WHERE c.organization_id = :id"),
        {"id": org_id})).mappings().all()
    return dict(row) | {"history": [dict(h) for h in history], "hubs": [dict(h) for h in hubs],
                        "party_organizations": [dict(p) for p in party]}


async def organizations_in(conn: AsyncConnection, region: str, status: str | None, limit: int,
                           after: UUID | None) -> list[dict[str, Any]]:
    """Keyset paging on (id) within a region prefix: stable under concurrent inserts."""
    rows = (await conn.execute(text(
        f"SELECT id, name, community_code, tier, category, status, filed_on, registered_on, ended_on "
        f"FROM {SCHEMA}.organization WHERE community_code LIKE :prefix "
        "AND (CAST(:status AS text) IS NULL OR status = :status) "
        "AND (CAST(:after AS uuid) IS NULL OR id > :after) ORDER BY id LIMIT :limit"),
        {"prefix": region + "%", "status": status, "after": after, "limit": limit})).mappings().all()
    return [dict(r) for r in rows]


async def division_known(conn: AsyncConnection, code: str) -> bool:
    table = {2: ("county", "province_code"), 4: ("county", "city_code"), 6: ("county", "code"),
             9: ("township", "code"), 12: ("community", "code")}.get(len(code))
    if table is None:
        return False
    return (await conn.execute(text(f"SELECT 1 FROM {SCHEMA}.{table[0]} WHERE {table[1]} = :c LIMIT 1"),
                               {"c": code})).first() is not None
