"""registry's SQL: its own schema, nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.events import DivisionsImported

from .domain import Interval, NewInterval, Organization

SCHEMA = "registry"
_ORG_COLUMNS = [f.name for f in fields(Organization)]


async def load_organizations(conn: AsyncConnection, ids: list[UUID]) -> dict[UUID, Organization | None]:
    """The organizations, locked in id order (replicas lock in the same order: no deadlock)."""
    rows = (await conn.execute(text(
        f"SELECT {', '.join(_ORG_COLUMNS)} FROM {SCHEMA}.organization WHERE id = ANY(:ids) "
        "ORDER BY id FOR UPDATE"), {"ids": ids})).mappings().all()
    found = {r["id"]: Organization(**r) for r in rows}
    return {i: found.get(i) for i in ids}


_ORG_TYPES = {"id": "uuid", "filed_on": "date", "registered_on": "date", "ended_on": "date",
              "brand": "boolean", "brand_projects": "integer", "hub_demonstration": "boolean"}


async def save_organizations(conn: AsyncConnection, changed: list[tuple[Organization, UUID, str]]) -> None:
    """Upsert each organization's state after the batch, with the last event that changed it: one
    statement over arrays (each organization once, so ON CONFLICT meets each row at most once)."""
    if not changed:
        return
    columns = [*_ORG_COLUMNS, "updated_by", "last_event_id"]
    arrays = {c: [getattr(org, c) for org, _, _ in changed] for c in _ORG_COLUMNS}
    arrays["updated_by"] = [source for _, _, source in changed]
    arrays["last_event_id"] = [event_id for _, event_id, _ in changed]
    types = _ORG_TYPES | {"last_event_id": "uuid"}
    assignments = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "id")
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.organization ({', '.join(columns)}) SELECT * FROM unnest("
        + ", ".join(f"CAST(:{c} AS {types.get(c, 'text')}[])" for c in columns)
        + f") ON CONFLICT (id) DO UPDATE SET {assignments}, updated_at = now()"), arrays)


async def known_communities(conn: AsyncConnection, codes: list[str]) -> set[str]:
    return set((await conn.execute(text(
        f"SELECT code FROM {SCHEMA}.community WHERE code = ANY(:c)"), {"c": codes})).scalars())


async def known_regions(conn: AsyncConnection, codes: list[str]) -> set[str]:
    """Which of these township (9-digit) or county (6-digit) codes divisions have loaded."""
    known: set[str] = set()
    for length, table in ((6, "county"), (9, "township")):
        subset = [c for c in codes if len(c) == length]
        if subset:
            known.update((await conn.execute(text(
                f"SELECT code FROM {SCHEMA}.{table} WHERE code = ANY(:c)"), {"c": subset})).scalars())
    return known


async def credit_code_holders(conn: AsyncConnection, codes: list[str]) -> dict[str, UUID]:
    rows = (await conn.execute(text(
        f"SELECT social_credit_code, id FROM {SCHEMA}.organization WHERE social_credit_code = ANY(:c)"),
        {"c": codes})).all()
    return {code: ident for code, ident in rows}


_INTERVAL_TABLES = {"hub": "hub", "base": "incubation_base", "party": "party_organization"}


async def load_intervals(conn: AsyncConnection, kind: str, ids: list[UUID]) -> dict[UUID, Interval]:
    table = _INTERVAL_TABLES[kind]
    org = "organization_id" if kind == "hub" else "NULL AS organization_id"
    rows = (await conn.execute(text(
        f"SELECT id, region_code, started_on, ended_on, {org} FROM {SCHEMA}.{table} "
        "WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"), {"ids": ids})).mappings().all()
    return {r["id"]: Interval(**r) for r in rows}


async def insert_intervals(conn: AsyncConnection, kind: str, created: Sequence[NewInterval]) -> None:
    """Hubs, bases or party organizations created in a batch (already ended, if the batch ended them)."""
    if not created:
        return
    rows = [{"id": n.interval.id, "region": n.interval.region_code, "started": n.interval.started_on,
             "ended": n.interval.ended_on, "source": n.source, "name": n.name, "org": n.interval.organization_id,
             "leader": n.leader, "kind": n.party_kind, "members": n.members} for n in created]
    columns = {"hub": "organization_id, name, leader_person_id", "base": "name",
               "party": "kind, members"}[kind]
    values = {"hub": ":org, :name, :leader", "base": ":name", "party": ":kind, :members"}[kind]
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.{_INTERVAL_TABLES[kind]} (id, region_code, started_on, ended_on, updated_by, "
        f"{columns}) VALUES (:id, :region, :started, :ended, :source, {values})"), rows)
    if kind == "base":
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.base_township (base_id, township_code) VALUES (:b, :t)"),
            [{"b": n.interval.id, "t": t} for n in created for t in n.townships])
    elif kind == "party":
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.party_coverage (party_organization_id, organization_id) VALUES (:p, :o)"),
            [{"p": n.interval.id, "o": o} for n in created for o in n.organization_ids])


async def end_intervals(conn: AsyncConnection, kind: str, ended: Sequence[tuple[Interval, str]]) -> None:
    if ended:
        await conn.execute(text(
            f"UPDATE {SCHEMA}.{_INTERVAL_TABLES[kind]} SET ended_on = :ended, updated_by = :source "
            "WHERE id = :id"), [{"id": i.id, "ended": i.ended_on, "source": source} for i, source in ended])


async def insert_audit(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Who changed which record, when, from which system, and what changed: kept with the record."""
    if rows:
        columns = ["event_id", "record_kind", "record_id", "type", "actor", "source", "region", "changes"]
        types = {"event_id": "uuid", "record_id": "uuid"}
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.audit ({', '.join(columns)}) SELECT e, k, i, t, a, s, r, CAST(c AS jsonb) "
            "FROM unnest(" + ", ".join(f"CAST(:{c} AS {types.get(c, 'text')}[])" for c in columns)
            + ") WITH ORDINALITY AS u(e, k, i, t, a, s, r, c, n) ORDER BY n"),
            {c: [row[c] for row in rows] for c in columns})


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
    audit = (await conn.execute(text(
        f"SELECT event_id, type, actor, source, recorded_at, changes FROM {SCHEMA}.audit "
        "WHERE record_id = :id ORDER BY seq"), {"id": org_id})).mappings().all()
    return dict(row) | {"history": [dict(h) for h in history], "hubs": [dict(h) for h in hubs],
                        "party_organizations": [dict(p) for p in party], "audit": [dict(a) for a in audit]}


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
    county = (await conn.execute(text(
        f"SELECT code, name, city_code, city_name, province_code, province_name, edition FROM {SCHEMA}.county "
        "WHERE code BETWEEN :low AND :high ORDER BY code LIMIT 1"),
        {"low": code[:6].ljust(6, "0"), "high": code[:6].ljust(6, "9")})).mappings().first()
    if county is None:
        return None
    parents = [_node(county["province_code"], county["province_name"]),
               _node(county["city_code"], county["city_name"]), _node(county["code"], county["name"])]
    if len(code) <= 6:
        found = parents[len(code) // 2 - 1]
        return found | {"edition": county["edition"], "parents": parents[:len(code) // 2 - 1]} \
            if found["code"] == code else None
    township = (await conn.execute(text(
        f"SELECT code, name, kind, edition FROM {SCHEMA}.township WHERE code = :c"),
        {"c": code[:9]})).mappings().first()
    if township is None:
        return None
    if len(code) == 9:
        return _node(code, township["name"], township["kind"]) | {"edition": township["edition"],
                                                                  "parents": parents}
    community = (await conn.execute(text(
        f"SELECT name, kind, edition FROM {SCHEMA}.community WHERE code = :c"), {"c": code})).mappings().first()
    if community is None:
        return None
    return _node(code, community["name"], community["kind"]) | {
        "edition": community["edition"],
        "parents": [*parents, _node(township["code"], township["name"], township["kind"])]}


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
        source = (f"SELECT {column} AS code, max({name}) AS name, NULL AS kind FROM {SCHEMA}.county "
                  f"WHERE code BETWEEN :low AND :high GROUP BY {column}")
        params = {"low": code.ljust(6, "0"), "high": code.ljust(6, "9")}
    else:
        table = {6: "county", 9: "township", 12: "community"}[child]
        kind = "NULL" if child == 6 else "kind"
        source = (f"SELECT code, name, {kind} AS kind FROM {SCHEMA}.{table} "
                  "WHERE code BETWEEN :low AND :high")
    rows = (await conn.execute(text(
        f"SELECT code, name, kind FROM ({source}) c WHERE code > :after ORDER BY code LIMIT :limit"),
        params | {"after": after or "", "limit": limit})).all()
    total = (await conn.execute(text(f"SELECT count(*) FROM ({source}) c"), params)).scalar_one()
    return [_node(c.strip(), n, k) for c, n, k in rows], int(total)
