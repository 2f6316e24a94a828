"""targets' SQL, in its own schema: facts, entity timelines, coverage deltas (per region, counter
and day), divisions, the target catalogue, its instances and their statuses. The `Table`s below
are the one description of the schema (migrations make it; tests/integration/test_schema.py
compares the two); the queries are written against them, as SQLAlchemy Core where that reads as
well, as SQL text over `unnest` arrays for the bulk upserts.

The column `coverage.month` holds the day of a delta (migration 0004; it keeps its old name while
replicas of before may still write to it). The outbox, inbox and consumer positions in the same
schema are the runtime's (cso/outbox.py)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, distinct_on
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import PAYLOAD_BY_TYPE
from contracts import events as ev
from contracts.codes import TIER_LENGTH
from cso.tables import runtime_tables

from .domain.catalogue import TargetInstance, TargetSpec, parse_catalogue
from .domain.coverage import Contribution, Timeline
from .domain.entities import Fact
from .domain.metrics import DERIVED, history_counters, with_derived

SCHEMA = "targets"
COMMUNITY_LENGTH = TIER_LENGTH["community"]

METADATA = MetaData(schema=SCHEMA)
runtime_tables(METADATA, SCHEMA)        # outbox (outbox_relay, outbox_stream), inbox, consumer_position, bus_stream
TIMESTAMPTZ = TIMESTAMP(timezone=True)
NOW = text("now()")

division = Table(
    "division", METADATA,
    Column("code", Text, primary_key=True), Column("name", Text, nullable=False),
    Column("tier", Text, nullable=False), Column("kind", Text), Column("parent_code", Text),
    Column("edition", Text, nullable=False),
    # The days a code is in force (migration 0008): NULL from, since the first edition; NULL
    # until, while it is (history.py).
    Column("valid_from", Date), Column("valid_until", Date),
    Index("division_parent", "parent_code"),
    Index("division_tier", "tier", "code", postgresql_ops={"code": "text_pattern_ops"}))
# What an edition changed (DivisionChanged), by code and day: the lineage counts follow.
division_change = Table(
    "division_change", METADATA,
    Column("code", Text, primary_key=True), Column("effective_on", Date, primary_key=True),
    Column("change", Text, nullable=False), Column("successor_code", Text), Column("name", Text),
    Column("event_id", PG_UUID(as_uuid=True), nullable=False),
    Index("division_change_successor", "successor_code"))
# The names renamed divisions had until a day, for coverage as of a past day.
division_name = Table(
    "division_name", METADATA,
    Column("code", Text, primary_key=True), Column("until", Date, primary_key=True),
    Column("name", Text, nullable=False))
# Every fact targets counts, by the entity it is about: the log its projections fold.
fact = Table(
    "fact", METADATA,
    Column("event_id", PG_UUID(as_uuid=True), primary_key=True), Column("entity_key", Text, nullable=False),
    Column("type", Text, nullable=False), Column("effective", Date, nullable=False),
    Column("occurred_at", TIMESTAMPTZ, nullable=False), Column("payload", JSONB, nullable=False),
    Index("fact_entity", "entity_key"))
# Which organizations a party organization covers, which townships a hub or base serves.
membership = Table(
    "membership", METADATA,
    Column("owner_key", Text, primary_key=True), Column("member", Text, primary_key=True),
    Index("membership_member", "member"))
entity = Table(
    "entity", METADATA,
    Column("key", Text, primary_key=True), Column("kind", Text, nullable=False), Column("region", Text),
    Column("timeline", JSONB),
    Index("entity_region", "kind", "region", postgresql_ops={"region": "text_pattern_ops"}))
coverage = Table(
    "coverage", METADATA,
    Column("region", Text, nullable=False), Column("counter", Text, nullable=False),
    Column("month", Date, nullable=False), Column("delta", BigInteger, nullable=False),
    PrimaryKeyConstraint("region", "counter", "month"))
coverage_now = Table(
    "coverage_now", METADATA,
    Column("region", Text, nullable=False), Column("counter", Text, nullable=False),
    Column("value", BigInteger, nullable=False), PrimaryKeyConstraint("region", "counter"))
# A mark per move, no key (migration 0003): a batch marking a region never waits for the coalescer.
dirty_region = Table(
    "dirty_region", METADATA,
    Column("region", Text, nullable=False), Column("since", TIMESTAMPTZ, nullable=False, server_default=NOW),
    Index("dirty_region_region", "region"))
projection_stale = Table("projection_stale", METADATA, Column("reason", Text, primary_key=True))
# The catalogue: one row per target, from the catalogue file, PUT /targets or a plan's task.
target = Table(
    "target", METADATA,
    Column("id", Text, primary_key=True), Column("spec", JSONB, nullable=False),
    Column("retired", Boolean, nullable=False, server_default=text("false")),
    Column("origin", Text, nullable=False),
    Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=NOW))
# A target expanded over its regions: one instance per region, with its last status.
target_instance = Table(
    "target_instance", METADATA,
    Column("id", Text, primary_key=True), Column("target_id", Text, nullable=False),
    Column("region", Text, nullable=False), Column("figure", Text, nullable=False),
    Column("threshold", Double, nullable=False), Column("deadline", Date, nullable=False),
    Column("instance", JSONB, nullable=False), Column("status", Text), Column("value", Double),
    Column("evaluated_at", TIMESTAMPTZ),
    Index("target_instance_region", "region"))
target_history = Table(
    "target_history", METADATA,
    Column("instance_id", Text, nullable=False), Column("status", Text, nullable=False),
    Column("previous_status", Text), Column("value", Double),
    Column("changed_at", TIMESTAMPTZ, nullable=False, server_default=NOW),
    Column("on_day", Date, nullable=False),
    Index("target_history_instance", "instance_id", "changed_at"),
    Index("target_history_day", "instance_id", "on_day"))
# Each instance's definitions over time (NULL: gone from that day), so a past day is evaluated
# with the definition then in force.
target_instance_version = Table(
    "target_instance_version", METADATA,
    Column("id", Text, nullable=False), Column("region", Text, nullable=False), Column("instance", JSONB),
    Column("from_day", Date, nullable=False),
    Column("recorded_at", TIMESTAMPTZ, nullable=False, server_default=text("clock_timestamp()")),
    Index("target_instance_version_region", "region", "id", "from_day",
          postgresql_ops={"region": "text_pattern_ops"}))
# TargetDeadlineApproaching published: once per instance, deadline and lead time.
deadline_notice = Table(
    "deadline_notice", METADATA,
    Column("instance_id", Text, nullable=False), Column("deadline", Date, nullable=False),
    Column("days_ahead", Integer, nullable=False),
    PrimaryKeyConstraint("instance_id", "deadline", "days_ahead"))


def among(values: Iterable[str]) -> Any:
    """`column == among(values)`: one array parameter (= ANY), however many values (an IN list
    would bind one parameter each)."""
    return any_(bindparam(None, list(values), type_=ARRAY(Text)))


def sql_name(table: Table) -> str:
    """A table's qualified name for SQL text (the bulk statements over unnest)."""
    return f"{SCHEMA}.{table.name}"


# Divisions decide how organizations and townships count (urban/rural, street/town). A batch that
# imports divisions must not interleave with one that reads them, or each misses the other's rows:
# divisions take this lock exclusively, every other batch shares it (shared holders never wait).
DIVISIONS_LOCK = 0x63736F_646976  # "cso" "div"


async def lock_divisions(conn: AsyncConnection, exclusive: bool) -> None:
    """Take the divisions lock for the transaction: exclusively to import divisions, else shared."""
    await conn.execute(text(f"SELECT pg_advisory_xact_lock{'' if exclusive else '_shared'}(:k)"),
                       {"k": DIVISIONS_LOCK})


async def insert_facts(conn: AsyncConnection, rows: Sequence[tuple[UUID, str, str, date, Any, str]]) -> None:
    """rows: (event_id, entity_key, type, effective, occurred_at, payload json)."""
    if not rows:
        return
    ids, keys, types, effective, occurred, payloads = (list(c) for c in zip(*rows, strict=True))
    await conn.execute(text(
        f"INSERT INTO {sql_name(fact)} (event_id, entity_key, type, effective, occurred_at, payload) "
        "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:keys AS text[]), CAST(:types AS text[]), "
        "CAST(:eff AS date[]), CAST(:occ AS timestamptz[]), CAST(:payloads AS jsonb[])) "
        "ON CONFLICT (event_id) DO NOTHING"),
        {"ids": ids, "keys": keys, "types": types, "eff": effective, "occ": occurred,
         "payloads": payloads})


async def insert_memberships(conn: AsyncConnection, pairs: Iterable[tuple[str, str]]) -> None:
    pairs = sorted(set(pairs))
    if pairs:
        await conn.execute(text(
            f"INSERT INTO {sql_name(membership)} (owner_key, member) "
            "SELECT * FROM unnest(CAST(:o AS text[]), CAST(:m AS text[])) ON CONFLICT DO NOTHING"),
            {"o": [p[0] for p in pairs], "m": [p[1] for p in pairs]})


async def members_of(conn: AsyncConnection, owners: Iterable[str]) -> list[tuple[str, str]]:
    rows = await conn.execute(text(
        f"SELECT owner_key, member FROM {sql_name(membership)} WHERE owner_key = ANY(:o)"),
        {"o": sorted(set(owners))})
    return [(r[0], r[1]) for r in rows]


async def owners_of(conn: AsyncConnection, members: Iterable[str], prefix: str) -> list[tuple[str, str]]:
    rows = await conn.execute(text(
        f"SELECT owner_key, member FROM {sql_name(membership)} WHERE member = ANY(:m) "
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
        f"FROM {sql_name(fact)} WHERE entity_key = ANY(:k)"), {"k": sorted(set(keys)), "known": list(known)})
    out: dict[str, list[Fact]] = defaultdict(list)
    for key, event_id, type_, occurred_at, payload in rows:
        parsed = known.get(event_id) or PAYLOAD_BY_TYPE[type_].model_validate(payload)
        out[key].append(Fact(occurred_at, event_id, parsed))
    return out


async def entity_keys_in(conn: AsyncConnection, kinds: Sequence[str], prefix: str) -> list[str]:
    rows = await conn.execute(text(
        f"SELECT key FROM {sql_name(entity)} WHERE kind = ANY(:k) AND region LIKE :p"),
        {"k": list(kinds), "p": prefix + "%"})
    return [r[0] for r in rows]


async def lock_timelines(conn: AsyncConnection, keys: Iterable[str]) -> dict[str, Timeline | None]:
    """Lock the entities (creating missing rows), in key order so replicas never deadlock, and
    return their stored timelines. Read after the lock: a replica that recomputed the same entity
    a moment ago has committed, and its facts and timeline are visible now."""
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    # A row this statement makes is ours until we commit (another transaction inserting the same key
    # waits for us on the primary key), and it has no timeline yet: only the rows that were there
    # are locked and read. In a backfill most entities are new, so that is most of the lock's work.
    made = set((await conn.execute(text(
        f"INSERT INTO {sql_name(entity)} (key, kind) SELECT k, split_part(k, ':', 1) "
        "FROM unnest(CAST(:k AS text[])) AS k ORDER BY k ON CONFLICT DO NOTHING RETURNING key"),
        {"k": ordered})).scalars())
    out: dict[str, Timeline | None] = dict.fromkeys(made)
    there = [k for k in ordered if k not in made]
    if there:
        rows = await conn.execute(text(
            f"SELECT key, timeline FROM {sql_name(entity)} WHERE key = ANY(:k) ORDER BY key FOR UPDATE"),
            {"k": there})
        out.update((key, Timeline.from_json(tl) if tl else None) for key, tl in rows)
    return out


async def save_timelines(conn: AsyncConnection, timelines: dict[str, tuple[Timeline, str | None]]) -> None:
    if not timelines:
        return
    keys = sorted(timelines)
    await conn.execute(text(
        f"UPDATE {sql_name(entity)} e SET timeline = CAST(t.tl AS jsonb), region = t.region "
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
    # The history keeps no derived counter (metrics.DERIVED: its reads sum the parts); coverage_now
    # keeps every counter.
    kept = [(k, v) for k, v in items if k[1] not in DERIVED]
    if kept:
        await conn.execute(text(
            f"INSERT INTO {sql_name(coverage)} (region, counter, month, delta) "
            "SELECT * FROM unnest(CAST(:r AS text[]), CAST(:c AS text[]), CAST(:m AS date[]), "
            "CAST(:d AS bigint[])) ORDER BY 1, 2, 3 ON CONFLICT (region, counter, month) "
            "DO UPDATE SET delta = coverage.delta + excluded.delta"),
            {"r": [k[0] for k, _ in kept], "c": [k[1] for k, _ in kept], "m": [k[2] for k, _ in kept],
             "d": [v for _, v in kept]})
    now: dict[tuple[str, str], int] = defaultdict(int)
    for (region, counter, _), v in items:
        now[(region, counter)] += v
    flat = [(k, v) for k, v in now.items() if v]
    if flat:
        await conn.execute(text(
            f"INSERT INTO {sql_name(coverage_now)} (region, counter, value) "
            "SELECT * FROM unnest(CAST(:r AS text[]), CAST(:c AS text[]), CAST(:v AS bigint[])) "
            "ORDER BY 1, 2 ON CONFLICT (region, counter) DO UPDATE SET value = coverage_now.value + excluded.value"),
            {"r": [k[0] for k, _ in flat], "c": [k[1] for k, _ in flat], "v": [v for _, v in flat]})
    regions = {k[0] for k, _ in items}
    # A mark, not an upsert: a region may be marked many times; the coalescer takes them all.
    # Communities are not marked: no target is set on them, and a CoverageChanged for each of
    # 620,000 communities would outnumber every other event; their counters are read on demand.
    await conn.execute(text(
        f"INSERT INTO {sql_name(dirty_region)} (region) SELECT * FROM unnest(CAST(:r AS text[]))"),
        {"r": sorted(r for r in regions if len(r) < COMMUNITY_LENGTH)})
    return regions


async def upsert_divisions(conn: AsyncConnection, d: ev.DivisionsImported) -> None:
    rows: list[tuple[str, str, str, str | None, str | None]] = [
        (d.province.code, d.province.name, "province", None, None),
            (d.city.code, d.city.name, "city", None, d.province.code),
            (d.county.code, d.county.name, "county", None, d.city.code)]
    rows += [(t.code, t.name, "township", t.kind.value, d.county.code) for t in d.townships]
    rows += [(c.code, c.name, "community", c.kind.value, c.code[:9]) for c in d.communities]
    await conn.execute(text(
        f"INSERT INTO {sql_name(division)} (code, name, tier, kind, parent_code, edition) "
        "SELECT c, n, t, k, p, :e FROM unnest(CAST(:c AS text[]), CAST(:n AS text[]), "
        "CAST(:t AS text[]), CAST(:k AS text[]), CAST(:p AS text[])) AS x(c, n, t, k, p) "
        "ON CONFLICT (code) DO UPDATE SET name = excluded.name, kind = excluded.kind, "
        "parent_code = excluded.parent_code, edition = excluded.edition"),
        {"c": [r[0] for r in rows], "n": [r[1] for r in rows], "t": [r[2] for r in rows],
         "k": [r[3] for r in rows], "p": [r[4] for r in rows], "e": d.edition})


async def division_kinds(conn: AsyncConnection, codes: Iterable[str]) -> dict[str, str]:
    rows = await conn.execute(text(
        f"SELECT code, kind FROM {sql_name(division)} WHERE code = ANY(:c)"), {"c": sorted(set(codes))})
    return {r[0]: r[1] for r in rows if r[1]}


async def townships_under(conn: AsyncConnection, county: str) -> list[str]:
    rows = await conn.execute(text(
        f"SELECT code FROM {sql_name(division)} WHERE tier = 'township' AND code LIKE :p"),
        {"p": county + "%"})
    return [r[0] for r in rows]


# --- reads -------------------------------------------------------------------------------------

async def find_division(conn: AsyncConnection, code: str) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        f"SELECT code, name, tier, kind, parent_code FROM {sql_name(division)} WHERE code = :c"),
        {"c": code})).mappings().first()
    return dict(row) if row else None


async def children(conn: AsyncConnection, code: str) -> list[dict[str, Any]]:
    """The divisions right below `code`: a township's are its communities."""
    rows = (await conn.execute(text(
        f"SELECT code, name, tier, kind FROM {sql_name(division)} WHERE parent_code = :c "
        "AND valid_until IS NULL ORDER BY code"), {"c": code})).mappings().all()
    return [dict(r) for r in rows]


async def regions_of_tier(conn: AsyncConnection, under: str, tier: str) -> list[str]:
    rows = await conn.execute(text(
        f"SELECT code FROM {sql_name(division)} WHERE tier = :t AND code LIKE :p AND valid_until IS NULL "
        "ORDER BY code"),
        {"t": tier, "p": under + "%"})
    return [r[0] for r in rows]


async def unit_counters(conn: AsyncConnection, under: str, tier: str, counters: Sequence[str]
                        ) -> dict[str, tuple[str, dict[str, int]]]:
    """Every division of `tier` under (or equal to) `under`: its name and its current values of
    `counters` (absent ones are 0). Driven by the divisions' (tier, code) index, each division's
    counters then found by coverage_now's key: a province's 50,000 communities in one query."""
    rows = await conn.execute(text(
        f"SELECT d.code, d.name, c.counter, c.value FROM {sql_name(division)} d "
        f"LEFT JOIN {sql_name(coverage_now)} c ON c.region = d.code AND c.counter = ANY(:c) "
        "WHERE d.tier = :t AND d.code LIKE :p AND d.valid_until IS NULL ORDER BY d.code"),
        {"t": tier, "p": under + "%", "c": list(counters)})
    out: dict[str, tuple[str, dict[str, int]]] = {}
    for code, name, counter, value in rows:
        _, values = out.setdefault(code, (name, {}))
        if counter is not None:
            values[counter] = int(value)
    return out


async def counters_now(conn: AsyncConnection, regions: Sequence[str]) -> dict[str, dict[str, int]]:
    rows = await conn.execute(text(
        f"SELECT region, counter, value FROM {sql_name(coverage_now)} WHERE region = ANY(:r)"),
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
        f"FROM {sql_name(coverage)} c WHERE c.region = q.region AND c.month <= q.day GROUP BY counter) s"),
        {"r": [p[0] for p in pairs], "d": [p[1] for p in pairs]})
    for region, day, counter, value in rows:
        if value:
            out[(region, day)][counter] = int(value)
    return {pair: with_derived(values) for pair, values in out.items()}


async def monthly(conn: AsyncConnection, region: str, counters: Sequence[str]) -> list[tuple[date, str, int]]:
    """Each month's net move of `counters` in `region` (the day deltas of the month, summed), by
    month and counter; a derived counter's as the sum of its parts' (metrics.DERIVED)."""
    rows = await conn.execute(text(
        f"SELECT CAST(date_trunc('month', month) AS date) AS m, counter, sum(delta) "
        f"FROM {sql_name(coverage)} WHERE region = :r AND counter = ANY(:c) GROUP BY 1, 2 ORDER BY 1, 2"),
        {"r": region, "c": history_counters(counters)})
    moves: dict[date, dict[str, int]] = defaultdict(dict)
    for month, counter, value in rows:
        moves[month][counter] = int(value)
    out = []
    for month in sorted(moves):
        kept = moves[month]
        for counter in sorted(set(counters)):
            parts = [kept[p] for p in DERIVED.get(counter, (counter,)) if p in kept]
            if parts:
                out.append((month, counter, sum(parts)))
    return out


# --- the catalogue -------------------------------------------------------------------------------

async def catalogue_rows(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every target as stored (retired ones too), by id."""
    rows = (await conn.execute(select(target.c.id, target.c.spec, target.c.retired, target.c.origin,
                                      target.c.updated_at).order_by(target.c.id))).mappings().all()
    return [dict(r) for r in rows]


async def catalogue_items(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every target's catalogue entry (its spec as given), by id."""
    return list((await conn.execute(select(target.c.spec).order_by(target.c.id))).scalars().all())


async def lock_catalogue(conn: AsyncConnection) -> bool:
    """Lock the catalogue against other writers for the transaction; True when it is empty. One
    replica seeds the default catalogue; the others wait on the lock and find the table filled."""
    await conn.execute(text(f"LOCK TABLE {sql_name(target)} IN EXCLUSIVE MODE"))
    return (await conn.execute(select(target.c.id).limit(1))).first() is None


async def target_region(conn: AsyncConnection, target_id: str, lock: bool = False) -> str | None:
    """The scope region of a target in the catalogue (None: no such target)."""
    query = select(target.c.spec["scope_region"].astext).where(target.c.id == target_id)
    region: str | None = (await conn.execute(query.with_for_update() if lock else query)).scalar()
    return region


async def upsert_target(conn: AsyncConnection, target_id: str, item: Mapping[str, Any], retired: bool,
                        origin: str) -> None:
    """Add or replace a catalogue entry (`item`, already validated) as given."""
    await conn.execute(text(
        f"INSERT INTO {sql_name(target)} (id, spec, retired, origin) VALUES (:id, CAST(:spec AS jsonb), :r, :o) "
        "ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, retired = excluded.retired, "
        "origin = excluded.origin, updated_at = now()"),
        {"id": target_id, "spec": json.dumps(item, default=str, ensure_ascii=False), "r": retired,
         "o": origin})


async def retire_targets(conn: AsyncConnection, ids: Sequence[str] | None = None, *,
                         origins: Sequence[str] = (), keep: Sequence[str] = ()) -> int:
    """Retire the targets `ids`, or those of `origins` (plans) not in `keep` that are not retired
    yet; the spec says so too. Returns how many rows were retired."""
    where = (target.c.id == among(ids) if ids is not None
             else and_(target.c.origin == among(origins), ~target.c.retired, ~(target.c.id == among(keep))))
    result = await conn.execute(update(target).where(where).values(
        retired=True, spec=func.jsonb_set(target.c.spec, text("'{retired}'"), text("'true'")),
        updated_at=func.now()))
    return int(result.rowcount)


async def load_specs(conn: AsyncConnection) -> list[TargetSpec]:
    """The catalogue, validated (domain/catalogue.py), retired targets included."""
    items = await catalogue_items(conn)
    return parse_catalogue({"targets": items}, "targets.target") if items else []


async def upsert_spec(conn: AsyncConnection, item: dict[str, Any], origin: str) -> TargetSpec:
    """Validate one catalogue entry (CatalogueError) and add or replace it."""
    spec = parse_catalogue({"targets": [item]}, origin)[0]
    await upsert_target(conn, spec.id, item, spec.retired, origin)
    return spec


# --- target instances, their statuses and versions ------------------------------------------------

async def instances_locked(conn: AsyncConnection) -> dict[str, tuple[str, Any]]:
    """Every stored instance: (region, document) by id, locked for the sync."""
    rows = await conn.execute(select(target_instance.c.id, target_instance.c.region, target_instance.c.instance)
                              .order_by(target_instance.c.id).with_for_update())
    return {r[0]: (r[1], r[2]) for r in rows}


async def add_instance_versions(conn: AsyncConnection, versions: Sequence[tuple[str, str, str | None]],
                                day: date) -> None:
    """versions: (instance id, region, document JSON, or None: gone), in force from `day`."""
    if versions:
        await conn.execute(text(
            f"INSERT INTO {sql_name(target_instance_version)} (id, region, instance, from_day) "
            "SELECT i, r, CAST(d AS jsonb), :day FROM unnest(CAST(:i AS text[]), CAST(:r AS text[]), "
            "CAST(:d AS text[])) AS v(i, r, d)"),
            {"i": [v[0] for v in versions], "r": [v[1] for v in versions], "d": [v[2] for v in versions],
             "day": day})


async def replace_instances(conn: AsyncConnection, instances: Sequence[TargetInstance],
                            documents: Sequence[str]) -> None:
    """Make `instances` (with their JSON documents) the stored ones: others are deleted, these
    upserted (their last status kept)."""
    ids = [i.instance_id for i in instances]
    await conn.execute(target_instance.delete().where(~(target_instance.c.id == among(ids))))
    if instances:
        await conn.execute(text(
            f"INSERT INTO {sql_name(target_instance)} (id, target_id, region, figure, threshold, deadline, "
            "instance) SELECT * FROM unnest(CAST(:id AS text[]), CAST(:t AS text[]), CAST(:r AS text[]), "
            "CAST(:f AS text[]), CAST(:th AS float8[]), CAST(:d AS date[]), CAST(:i AS jsonb[])) "
            "ON CONFLICT (id) DO UPDATE SET threshold = excluded.threshold, deadline = excluded.deadline, "
            "figure = excluded.figure, instance = excluded.instance"),
            {"id": ids, "t": [i.spec_id for i in instances], "r": [i.region for i in instances],
             "f": [i.figure for i in instances], "th": [i.threshold for i in instances],
             "d": [i.deadline for i in instances], "i": list(documents)})


async def statuses_locked(conn: AsyncConnection, regions: Iterable[str] | None
                          ) -> list[tuple[str, dict[str, Any], str | None]]:
    """(id, document, status) of the instances of `regions` (all when None), locked, by id."""
    query = select(target_instance.c.id, target_instance.c.instance, target_instance.c.status)
    if regions is not None:
        query = query.where(target_instance.c.region == among(sorted(regions)))
    return [(r[0], r[1], r[2]) for r in await conn.execute(query.order_by(target_instance.c.id).with_for_update())]


async def save_statuses(conn: AsyncConnection, statuses: Sequence[tuple[str, str, float | None]]) -> None:
    """(instance id, status, value) of each evaluated instance, evaluated now."""
    if statuses:
        await conn.execute(text(
            f"UPDATE {sql_name(target_instance)} t SET status = u.s, value = u.v, evaluated_at = now() "
            "FROM unnest(CAST(:id AS text[]), CAST(:s AS text[]), CAST(:v AS float8[])) AS u(id, s, v) "
            "WHERE t.id = u.id"),
            {"id": [s[0] for s in statuses], "s": [s[1] for s in statuses], "v": [s[2] for s in statuses]})


async def add_history(conn: AsyncConnection, changes: Sequence[tuple[str, str, str | None, float | None]],
                      day: date) -> None:
    """(instance id, status, previous status, value) of each status change on `day`."""
    if changes:
        await conn.execute(text(
            f"INSERT INTO {sql_name(target_history)} (instance_id, status, previous_status, value, on_day) "
            "SELECT i, s, p, v, :d FROM unnest(CAST(:i AS text[]), CAST(:s AS text[]), CAST(:p AS text[]), "
            "CAST(:v AS float8[])) AS h(i, s, p, v)"),
            {"i": [h[0] for h in changes], "s": [h[1] for h in changes], "p": [h[2] for h in changes],
             "v": [h[3] for h in changes], "d": day})


async def claim_deadline_notices(conn: AsyncConnection, due: Sequence[tuple[str, date, int]]
                                 ) -> set[tuple[str, date, int]]:
    """Record (instance id, deadline, lead days) notices; returns those not recorded before."""
    if not due:
        return set()
    return {(r[0], r[1], r[2]) for r in await conn.execute(text(
        f"INSERT INTO {sql_name(deadline_notice)} (instance_id, deadline, days_ahead) "
        "SELECT * FROM unnest(CAST(:i AS text[]), CAST(:d AS date[]), CAST(:l AS int[])) "
        "ON CONFLICT DO NOTHING RETURNING instance_id, deadline, days_ahead"),
        {"i": [d[0] for d in due], "d": [d[1] for d in due], "l": [d[2] for d in due]})}


async def take_dirty(conn: AsyncConnection, limit: int) -> set[str]:
    """Take up to `limit` regions marked dirty, skipping marks another replica holds."""
    # Marks taken are deleted by row (ctid), never by region: a mark a batch adds meanwhile stays for
    # the next step, so a move committed after this step read the counters is published too.
    return set((await conn.execute(text(
        f"DELETE FROM {sql_name(dirty_region)} d USING (SELECT ctid FROM {sql_name(dirty_region)} "
        "ORDER BY region LIMIT :n FOR UPDATE SKIP LOCKED) taken WHERE d.ctid = taken.ctid "
        "RETURNING d.region"), {"n": limit})).scalars())


# --- the read side's target queries --------------------------------------------------------------

def _attr(key: str) -> Any:
    return target_instance.c.instance[key].astext


async def instances_of(conn: AsyncConnection, region: str) -> list[dict[str, Any]]:
    """A region's instances with their last status, by deadline."""
    t = target_instance.c
    rows = (await conn.execute(select(
        t.id, t.target_id, t.region, t.figure, t.threshold, t.deadline, t.status, t.value, t.evaluated_at,
        _attr("title").label("title"), _attr("source").label("source"),
        _attr("comparison").label("comparison"), _attr("year").label("year"))
        .where(t.region == region).order_by(t.deadline, t.id))).mappings().all()
    return [dict(r) for r in rows]


async def history_of(conn: AsyncConnection, ids: Sequence[str], up_to: date | None = None,
                     last_only: bool = False) -> list[dict[str, Any]]:
    """The status changes of instances `ids` (up to a day), in order; `last_only`: the last of
    each instance up to the day (the status then in force)."""
    h = target_history.c
    query = select(h.instance_id, h.previous_status, h.status, h.value, h.on_day, h.changed_at).where(
        h.instance_id == among(ids))
    if up_to is not None:
        query = query.where(h.on_day <= up_to)
    if last_only:
        query = query.ext(distinct_on(h.instance_id)).order_by(h.instance_id, h.on_day.desc(), h.changed_at.desc())
    else:
        query = query.order_by(h.on_day, h.changed_at) if up_to is not None else query.order_by(h.changed_at)
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]


async def instance_versions(conn: AsyncConnection, region: str | None = None, under: str | None = None
                            ) -> list[tuple[str, dict[str, Any] | None, date]]:
    """(id, document or None, from day) of every version of the instances of `region` (or of
    every region under `under`), by id and when recorded."""
    v = target_instance_version.c
    where = v.region == region if under is None else v.region.like(under + "%")
    rows = await conn.execute(select(v.id, v.instance, v.from_day).where(where).order_by(v.id, v.recorded_at))
    return [(r[0], r[1], r[2]) for r in rows]


async def division_names(conn: AsyncConnection, codes: Iterable[str]) -> dict[str, str]:
    rows = await conn.execute(select(division.c.code, division.c.name)
                              .where(division.c.code == among(sorted(set(codes)))))
    return {r[0]: r[1] for r in rows}


async def at_risk_now(conn: AsyncConnection, under: str) -> list[dict[str, Any]]:
    """The instances under a region at risk or missed, with their region's name, by deadline."""
    t = target_instance.c
    rows = (await conn.execute(select(
        t.id, t.target_id, t.region, division.c.name.label("region_name"), t.figure, t.threshold, t.deadline,
        t.status, t.value).select_from(target_instance.outerjoin(division, division.c.code == t.region))
        .where(t.region.like(under + "%"), t.status.in_(("at_risk", "missed")))
        .order_by(t.deadline, t.id))).mappings().all()
    return [dict(r) for r in rows]


async def instances_around(conn: AsyncConnection, ancestors_: Sequence[str], under: str) -> list[dict[str, Any]]:
    """The instances set on one of `ancestors_` or on a region under `under`, with what the behind
    lists need, by deadline, target and region."""
    t = target_instance.c
    rows = (await conn.execute(select(
        t.target_id, t.region, t.figure, t.threshold, t.deadline, t.status, _attr("title").label("title"),
        _attr("source").label("source"), func.coalesce(_attr("comparison"), ">=").label("comparison"),
        _attr("counts").label("counts"))
        .where(or_(t.region == among(ancestors_), t.region.like(under + "%")))
        .order_by(t.deadline, t.target_id, t.region))).mappings().all()
    return [dict(r) for r in rows]


# --- rebuilding the projection from the fact log (rebuild.py) -------------------------------------

async def stream_facts(conn: AsyncConnection) -> AsyncIterator[tuple[str, UUID, str, datetime, Any]]:
    """Every fact: (entity key, event id, type, occurred at, payload JSON), streamed."""
    f = fact.c
    result = await conn.stream(select(f.entity_key, f.event_id, f.type, f.occurred_at, f.payload))
    async for key, event_id, type_, occurred_at, payload in result:
        yield key, event_id, type_, occurred_at, payload


async def all_division_kinds(conn: AsyncConnection) -> dict[str, str]:
    rows = await conn.execute(select(division.c.code, division.c.kind).where(division.c.kind.is_not(None)))
    return {r[0]: r[1] for r in rows}


async def coverage_deltas(conn: AsyncConnection) -> dict[tuple[str, str, date], int]:
    """Every non-zero delta of a counter the history keeps: (region, counter, day) -> delta. Rows of
    a derived counter (metrics.DERIVED), which a targets of before kept, are never read: a rebuild
    with --apply clears them."""
    c = coverage.c
    rows = await conn.execute(select(c.region, c.counter, c.month, c.delta)
                              .where(c.delta != 0, c.counter.not_in(list(DERIVED))))
    return {(r, k, m): int(d) for r, k, m, d in rows}


async def clear_projection(conn: AsyncConnection) -> None:
    """Empty the projection (the timelines of the entities too), for a rebuilt one to be put in its
    place (after lock_projection)."""
    await conn.execute(coverage.delete())
    await conn.execute(coverage_now.delete())
    await conn.execute(update(entity).values(timeline=None))


async def lock_projection(conn: AsyncConnection) -> None:
    """Lock the projection's tables against the consumers for the transaction."""
    await conn.execute(text(
        f"LOCK TABLE {sql_name(entity)}, {sql_name(coverage)}, {sql_name(coverage_now)} IN EXCLUSIVE MODE"))


async def clear_stale_flags(conn: AsyncConnection) -> None:
    await conn.execute(projection_stale.delete())


async def stale_flag(conn: AsyncConnection) -> str | None:
    """The first reason a migration flagged the projection as kept by an older targets."""
    flagged: str | None = (await conn.execute(
        select(projection_stale.c.reason).order_by(projection_stale.c.reason).limit(1))).scalar()
    return flagged


async def projection_staleness(conn: AsyncConnection) -> str | None:
    """Why the live projection predates this code (None: it does not); see rebuild.stale."""
    if (await conn.execute(text(
            f"SELECT EXISTS (SELECT 1 FROM {sql_name(entity)} WHERE kind IN ('org', 'div') "
            "AND timeline IS NOT NULL) "
            f"AND NOT EXISTS (SELECT 1 FROM {sql_name(coverage)} WHERE length(region) = 12)"))).scalar():
        return "organizations or divisions are counted but no community is (coverage kept before tier 12)"
    # A completion's pulse names whether a pool member completed it since the pool-only person-times
    # came in (issue 21); one of before never added to pool_training_person_times.
    if (await conn.execute(text(
            f"SELECT EXISTS (SELECT 1 FROM {sql_name(entity)} e, jsonb_array_elements(e.timeline->'pulses') p "
            "WHERE e.kind = 'person' AND jsonb_array_length(p->1) = 1)"))).scalar():
        return "completions are counted but not pool_training_person_times (coverage kept before trainees)"
    # A registration is a pulse (registrations_<class>) since targets count "新增登记" (issue 21); an
    # organization registered before never added one.
    if (await conn.execute(text(
            f"SELECT EXISTS (SELECT 1 FROM {sql_name(entity)} e WHERE e.kind = 'org' "
            "AND EXISTS (SELECT 1 FROM jsonb_array_elements(e.timeline->'segments') s WHERE s->1->>1 = 'registered') "
            "AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(e.timeline->'pulses') p "
            "WHERE jsonb_array_length(p->1) = 3))"))).scalar():
        return "registrations are counted but not registrations_<class> (coverage kept before new registrations)"
    # Densities count organizations by tier since a target says which tiers it counts (issue 21).
    if (await conn.execute(text(
            f"SELECT EXISTS (SELECT 1 FROM {sql_name(coverage_now)} WHERE counter IN ('orgs_urban', 'orgs_rural') "
            "AND value <> 0) "
            f"AND NOT EXISTS (SELECT 1 FROM {sql_name(coverage_now)} WHERE counter LIKE 'orgs\\_urban\\_%' "
            "OR counter LIKE 'orgs\\_rural\\_%')"))).scalar():
        return "organizations in urban or rural communities are counted but not by tier (coverage kept before tiers)"
    # Ratings (等级评估) count since Guangdong's figure (issue 22); an organization rated before
    # never added orgs_rated.
    if (await conn.execute(text(
            f"SELECT EXISTS (SELECT 1 FROM {sql_name(fact)} f JOIN {sql_name(entity)} e ON e.key = f.entity_key "
            "WHERE f.type = 'OrganizationUpdated' AND f.payload->>'rating' IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM jsonb_array_elements(e.timeline->'segments') s "
            "WHERE jsonb_typeof(s->1) = 'array' AND jsonb_array_length(s->1) = 8))"))).scalar():
        return "ratings are recorded but not counted (coverage kept before orgs_rated)"
    # A base counts by the tier it opened at (bases_<tier>) since bases open at every tier (issue 22).
    if (await conn.execute(text(
            f"SELECT EXISTS (SELECT 1 FROM {sql_name(coverage_now)} WHERE counter = 'bases' AND value <> 0) "
            f"AND NOT EXISTS (SELECT 1 FROM {sql_name(coverage_now)} WHERE counter LIKE 'bases\\_%')"))).scalar():
        return "bases are counted but not by the tier they opened at (coverage kept before bases_<tier>)"
    # Every organization is new once, a pulse (community, "new"), since funding counts the share of new
    # organizations funded in their first year (issue 22); one counted before has none.
    if (await conn.execute(text(
            f"SELECT EXISTS (SELECT 1 FROM {sql_name(entity)} e WHERE e.kind = 'org' "
            "AND jsonb_array_length(e.timeline->'segments') > 0 "
            "AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(e.timeline->'pulses') p WHERE p->1->>1 = 'new'))"
            ))).scalar():
        return "organizations are counted but not orgs_new (coverage kept before funding)"
    # Flagged by a migration that changed how coverage is kept (0006: per day, not per month).
    return await stale_flag(conn)


async def session_lock(conn: AsyncConnection, key: int) -> None:
    """An advisory lock held by the connection's session until session_unlock."""
    await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})


async def session_unlock(conn: AsyncConnection, key: int) -> None:
    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
