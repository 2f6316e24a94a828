"""targets' SQL, in its own schema: facts, entity timelines, coverage deltas (per region, counter
and day), divisions, targets.

The column `coverage.month` holds the day of a delta (migration 0004; it keeps its old name while
replicas of before may still write to it)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import PAYLOAD_BY_TYPE
from contracts import events as ev
from contracts.codes import TIER_LENGTH

from .domain.coverage import Contribution, Timeline
from .domain.entities import Fact

SCHEMA = "targets"
COMMUNITY_LENGTH = TIER_LENGTH["community"]


async def insert_facts(conn: AsyncConnection, rows: Sequence[tuple[UUID, str, str, date, Any, str]]) -> None:
    """rows: (event_id, entity_key, type, effective, occurred_at, payload json)."""
    if not rows:
        return
    ids, keys, types, effective, occurred, payloads = (list(c) for c in zip(*rows, strict=True))
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.fact (event_id, entity_key, type, effective, occurred_at, payload) "
        "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:keys AS text[]), CAST(:types AS text[]), "
        "CAST(:eff AS date[]), CAST(:occ AS timestamptz[]), CAST(:payloads AS jsonb[])) "
        "ON CONFLICT (event_id) DO NOTHING"),
        {"ids": ids, "keys": keys, "types": types, "eff": effective, "occ": occurred,
         "payloads": payloads})


async def insert_memberships(conn: AsyncConnection, pairs: Iterable[tuple[str, str]]) -> None:
    pairs = sorted(set(pairs))
    if pairs:
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.membership (owner_key, member) "
            "SELECT * FROM unnest(CAST(:o AS text[]), CAST(:m AS text[])) ON CONFLICT DO NOTHING"),
            {"o": [p[0] for p in pairs], "m": [p[1] for p in pairs]})


async def members_of(conn: AsyncConnection, owners: Iterable[str]) -> list[tuple[str, str]]:
    rows = await conn.execute(text(
        f"SELECT owner_key, member FROM {SCHEMA}.membership WHERE owner_key = ANY(:o)"),
        {"o": sorted(set(owners))})
    return [(r[0], r[1]) for r in rows]


async def owners_of(conn: AsyncConnection, members: Iterable[str], prefix: str) -> list[tuple[str, str]]:
    rows = await conn.execute(text(
        f"SELECT owner_key, member FROM {SCHEMA}.membership WHERE member = ANY(:m) "
        "AND owner_key LIKE :p"), {"m": sorted(set(members)), "p": prefix + "%"})
    return [(r[0], r[1]) for r in rows]


async def facts_of(conn: AsyncConnection, keys: Iterable[str],
                   known: Mapping[UUID, ev.Payload] | None = None) -> dict[str, list[Fact]]:
    """Every fact of these entities. Payloads in `known` (the batch being applied, already parsed)
    are not read back and validated again: most facts a backfill recomputes are the batch's own."""
    known = known or {}
    rows = await conn.execute(text(
        f"SELECT entity_key, event_id, type, occurred_at, "
        "CASE WHEN event_id = ANY(:known) THEN NULL ELSE payload END "
        f"FROM {SCHEMA}.fact WHERE entity_key = ANY(:k)"), {"k": sorted(set(keys)), "known": list(known)})
    out: dict[str, list[Fact]] = defaultdict(list)
    for key, event_id, type_, occurred_at, payload in rows:
        parsed = known.get(event_id) or PAYLOAD_BY_TYPE[type_].model_validate(payload)
        out[key].append(Fact(occurred_at, event_id, parsed))
    return out


async def entity_keys_in(conn: AsyncConnection, kinds: Sequence[str], prefix: str) -> list[str]:
    rows = await conn.execute(text(
        f"SELECT key FROM {SCHEMA}.entity WHERE kind = ANY(:k) AND region LIKE :p"),
        {"k": list(kinds), "p": prefix + "%"})
    return [r[0] for r in rows]


async def lock_timelines(conn: AsyncConnection, keys: Iterable[str]) -> dict[str, Timeline | None]:
    """Lock the entities (creating missing rows), in key order so replicas never deadlock, and
    return their stored timelines. Read after the lock: a replica that recomputed the same entity
    a moment ago has committed, and its facts and timeline are visible now."""
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.entity (key, kind) SELECT k, split_part(k, ':', 1) "
        "FROM unnest(CAST(:k AS text[])) AS k ORDER BY k ON CONFLICT DO NOTHING"), {"k": ordered})
    rows = await conn.execute(text(
        f"SELECT key, timeline FROM {SCHEMA}.entity WHERE key = ANY(:k) ORDER BY key FOR UPDATE"),
        {"k": ordered})
    return {key: Timeline.from_json(tl) if tl else None for key, tl in rows}


async def save_timelines(conn: AsyncConnection, timelines: dict[str, tuple[Timeline, str | None]]) -> None:
    if not timelines:
        return
    keys = sorted(timelines)
    await conn.execute(text(
        f"UPDATE {SCHEMA}.entity e SET timeline = CAST(t.tl AS jsonb), region = t.region "
        "FROM unnest(CAST(:k AS text[]), CAST(:tl AS text[]), CAST(:r AS text[])) AS t(key, tl, region) "
        "WHERE e.key = t.key"),
        {"k": keys, "tl": [json.dumps(timelines[k][0].to_json()) for k in keys],
         "r": [timelines[k][1] for k in keys]})


async def add_coverage(conn: AsyncConnection, delta: Contribution) -> set[str]:
    """Move coverage by a batch's net contribution; returns the regions that moved."""
    # Rows are upserted in key order (ORDER BY, sorted by PostgreSQL rather than in Python, where it
    # cost more than the statement): replicas then take the rows' locks in one order, no deadlock.
    items = [(k, v) for k, v in delta.items() if v]
    if not items:
        return set()
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.coverage (region, counter, month, delta) "
        "SELECT * FROM unnest(CAST(:r AS text[]), CAST(:c AS text[]), CAST(:m AS date[]), "
        "CAST(:d AS bigint[])) ORDER BY 1, 2, 3 ON CONFLICT (region, counter, month) "
        "DO UPDATE SET delta = coverage.delta + excluded.delta"),
        {"r": [k[0] for k, _ in items], "c": [k[1] for k, _ in items], "m": [k[2] for k, _ in items],
         "d": [v for _, v in items]})
    now: dict[tuple[str, str], int] = defaultdict(int)
    for (region, counter, _), v in items:
        now[(region, counter)] += v
    flat = [(k, v) for k, v in now.items() if v]
    if flat:
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.coverage_now (region, counter, value) "
            "SELECT * FROM unnest(CAST(:r AS text[]), CAST(:c AS text[]), CAST(:v AS bigint[])) "
            "ORDER BY 1, 2 ON CONFLICT (region, counter) DO UPDATE SET value = coverage_now.value + excluded.value"),
            {"r": [k[0] for k, _ in flat], "c": [k[1] for k, _ in flat], "v": [v for _, v in flat]})
    regions = {k[0] for k, _ in items}
    # A mark, not an upsert: a region may be marked many times; the coalescer takes them all.
    # Communities are not marked: no target is set on them, and a CoverageChanged for each of
    # 620,000 communities would outnumber every other event; their counters are read on demand.
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.dirty_region (region) SELECT * FROM unnest(CAST(:r AS text[]))"),
        {"r": sorted(r for r in regions if len(r) < COMMUNITY_LENGTH)})
    return regions


async def upsert_divisions(conn: AsyncConnection, d: ev.DivisionsImported) -> None:
    rows = [(d.province.code, d.province.name, "province", None, None),
            (d.city.code, d.city.name, "city", None, d.province.code),
            (d.county.code, d.county.name, "county", None, d.city.code)]
    rows += [(t.code, t.name, "township", t.kind.value, d.county.code) for t in d.townships]
    rows += [(c.code, c.name, "community", c.kind.value, c.code[:9]) for c in d.communities]
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.division (code, name, tier, kind, parent_code, edition) "
        "SELECT c, n, t, k, p, :e FROM unnest(CAST(:c AS text[]), CAST(:n AS text[]), "
        "CAST(:t AS text[]), CAST(:k AS text[]), CAST(:p AS text[])) AS x(c, n, t, k, p) "
        "ON CONFLICT (code) DO UPDATE SET name = excluded.name, kind = excluded.kind, "
        "parent_code = excluded.parent_code, edition = excluded.edition"),
        {"c": [r[0] for r in rows], "n": [r[1] for r in rows], "t": [r[2] for r in rows],
         "k": [r[3] for r in rows], "p": [r[4] for r in rows], "e": d.edition})


async def division_kinds(conn: AsyncConnection, codes: Iterable[str]) -> dict[str, str]:
    rows = await conn.execute(text(
        f"SELECT code, kind FROM {SCHEMA}.division WHERE code = ANY(:c)"), {"c": sorted(set(codes))})
    return {r[0]: r[1] for r in rows if r[1]}


async def townships_under(conn: AsyncConnection, county: str) -> list[str]:
    rows = await conn.execute(text(
        f"SELECT code FROM {SCHEMA}.division WHERE tier = 'township' AND code LIKE :p"),
        {"p": county + "%"})
    return [r[0] for r in rows]


# --- reads -------------------------------------------------------------------------------------

async def division(conn: AsyncConnection, code: str) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        f"SELECT code, name, tier, kind, parent_code FROM {SCHEMA}.division WHERE code = :c"),
        {"c": code})).mappings().first()
    return dict(row) if row else None


async def children(conn: AsyncConnection, code: str) -> list[dict[str, Any]]:
    """The divisions right below `code`: a township's are its communities."""
    rows = (await conn.execute(text(
        f"SELECT code, name, tier, kind FROM {SCHEMA}.division WHERE parent_code = :c "
        "ORDER BY code"), {"c": code})).mappings().all()
    return [dict(r) for r in rows]


async def regions_of_tier(conn: AsyncConnection, under: str, tier: str) -> list[str]:
    rows = await conn.execute(text(
        f"SELECT code FROM {SCHEMA}.division WHERE tier = :t AND code LIKE :p ORDER BY code"),
        {"t": tier, "p": under + "%"})
    return [r[0] for r in rows]


async def unit_counters(conn: AsyncConnection, under: str, tier: str, counters: Sequence[str]
                        ) -> dict[str, tuple[str, dict[str, int]]]:
    """Every division of `tier` under (or equal to) `under`: its name and its current values of
    `counters` (absent ones are 0). Driven by the divisions' (tier, code) index, each division's
    counters then found by coverage_now's key: a province's 50,000 communities in one query."""
    rows = await conn.execute(text(
        f"SELECT d.code, d.name, c.counter, c.value FROM {SCHEMA}.division d "
        f"LEFT JOIN {SCHEMA}.coverage_now c ON c.region = d.code AND c.counter = ANY(:c) "
        "WHERE d.tier = :t AND d.code LIKE :p ORDER BY d.code"),
        {"t": tier, "p": under + "%", "c": list(counters)})
    out: dict[str, tuple[str, dict[str, int]]] = {}
    for code, name, counter, value in rows:
        _, values = out.setdefault(code, (name, {}))
        if counter is not None:
            values[counter] = int(value)
    return out


async def counters_now(conn: AsyncConnection, regions: Sequence[str]) -> dict[str, dict[str, int]]:
    rows = await conn.execute(text(
        f"SELECT region, counter, value FROM {SCHEMA}.coverage_now WHERE region = ANY(:r)"),
        {"r": list(regions)})
    out: dict[str, dict[str, int]] = {r: {} for r in regions}
    for region, counter, value in rows:
        out[region][counter] = int(value)
    return out


async def counters_as_of(conn: AsyncConnection, regions: Sequence[str], day: date) -> dict[str, dict[str, int]]:
    """Counter values at the end of `day`: every delta of that day and before."""
    at = await counters_on(conn, [(r, day) for r in regions])
    return {r: at[(r, day)] for r in regions}


async def counters_on(conn: AsyncConnection, asked: Iterable[tuple[str, date]]
                      ) -> dict[tuple[str, date], dict[str, int]]:
    """Counter values of each (region, day) asked, at the end of that day, in one statement."""
    pairs = sorted(set(asked))
    out: dict[tuple[str, date], dict[str, int]] = {p: {} for p in pairs}
    if not pairs:
        return out
    # One index range scan per pair (LATERAL): as a plain join, PostgreSQL hashed the whole table.
    rows = await conn.execute(text(
        "SELECT q.region, q.day, s.counter, s.value FROM unnest(CAST(:r AS text[]), "
        "CAST(:d AS date[])) AS q(region, day) CROSS JOIN LATERAL (SELECT counter, sum(delta) AS value "
        f"FROM {SCHEMA}.coverage c WHERE c.region = q.region AND c.month <= q.day GROUP BY counter) s"),
        {"r": [p[0] for p in pairs], "d": [p[1] for p in pairs]})
    for region, day, counter, value in rows:
        if value:
            out[(region, day)][counter] = int(value)
    return out


async def monthly(conn: AsyncConnection, region: str, counters: Sequence[str]) -> list[tuple[date, str, int]]:
    """Each month's net move of `counters` in `region` (the day deltas of the month, summed)."""
    rows = await conn.execute(text(
        f"SELECT CAST(date_trunc('month', month) AS date) AS m, counter, sum(delta) "
        f"FROM {SCHEMA}.coverage WHERE region = :r AND counter = ANY(:c) GROUP BY 1, 2 ORDER BY 1, 2"),
        {"r": region, "c": list(counters)})
    return [(r[0], r[1], int(r[2])) for r in rows]
