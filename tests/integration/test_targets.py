"""targets end to end on real NATS and PostgreSQL: a few thousand facts through registry, two
targets replicas on one durable consumer, projections equal to a SQL recount at every tier down to
the community, and the behind lists to what that recount puts under each threshold; the same events
shuffled and duplicated give the same per-day coverage; a rebuild equals both."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import importlib.util
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from contracts import events as ev
from contracts import make_event
from contracts.codes import TIER_LENGTH
from cso.database import make_engine
from cso.divisions import DEMO_DIVISIONS, publish_divisions
from cso.outbox import count_pending
from cso.settings import Settings
from services.registry.app import create_app as registry_app
from services.registry.app import run_migrations as registry_migrations
from services.targets import app as targets
from services.targets.domain import coverage as cov
from services.targets.domain.catalogue import TargetSpec, parse_catalogue
from services.targets.domain.metrics import DERIVED, FIGURES, numerator
from services.targets.rebuild import rebuild, upgrade
from tests.support import eventually, fresh_database, make_streams, publish, running
from tests.support.recount import REGISTRY_COUNTERS, projected, recount
from tests.support.recount import behind as recount_behind
from tests.support.scenario import regions_of, workload

pytestmark = pytest.mark.integration


def demo_codes() -> tuple[list[str], list[str]]:
    with open(DEMO_DIVISIONS / "villages.csv", encoding="utf-8") as f:
        communities = [row["code"] for row in csv.DictReader(f)]
    with open(DEMO_DIVISIONS / "streets.csv", encoding="utf-8") as f:
        townships = [row["code"] for row in csv.DictReader(f)]
    return communities, townships


async def migrate(settings: Settings) -> None:
    await asyncio.to_thread(registry_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)


async def count(dsn: str, sql: str) -> int:
    db = await asyncpg.connect(dsn)
    try:
        return int(await db.fetchval(sql))
    finally:
        await db.close()


async def settled(dsn: str, extra: int, intake: int) -> None:
    """Wait until registry has recorded all `intake` facts (some wait for its divisions and are
    retried), published everything it accepted, and targets has applied all of it (plus `extra`
    events published straight to other streams)."""

    async def caught_up() -> bool:
        if await count(dsn, "SELECT count(*) FROM registry.inbox WHERE stream LIKE '%CSO_INTAKE'") < intake:
            return False
        pending = await count(dsn, count_pending('registry'))
        published = await count(dsn, "SELECT count(*) FROM registry.outbox") - pending
        applied = await count(dsn, "SELECT count(*) FROM targets.inbox")
        return pending == 0 and applied == published + extra

    await eventually(caught_up, timeout=120, interval=0.2)


@pytest.fixture
async def stack(settings: Settings, nc: nats.NATS) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    await migrate(settings)
    async with AsyncExitStack() as stack:
        _, reg = await stack.enter_async_context(running(registry_app, settings))
        # Two replicas of targets on the same durable consumers: neither may double count.
        _, tgt = await stack.enter_async_context(running(targets.create_app, settings))
        await stack.enter_async_context(running(targets.create_app, settings))
        await publish_divisions(nc.jetstream(), settings.topology, DEMO_DIVISIONS)
        # Both must have them: registry refuses a filing of a community it does not know yet.
        for sql in ("SELECT count(*) FROM targets.division WHERE tier = 'community'",
                    "SELECT count(*) FROM registry.community"):
            await eventually(lambda sql=sql: _equals(count(settings.database_url, sql), 1494), timeout=30)
        yield reg, tgt


async def _equals(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]


async def test_projections_equal_recount_and_survive_shuffling(
        stack: tuple[httpx.AsyncClient, httpx.AsyncClient], settings: Settings, nc: nats.NATS,
        postgres_url: str) -> None:
    communities, townships = demo_codes()
    facts = workload(7, communities, townships)
    t = settings.topology
    training = [f for f in facts if f.CONTEXT == "training"]
    regions = regions_of(facts)
    for fact in facts:
        if fact.CONTEXT == "registry":
            region = fact.region_of() or regions[_subject_id(fact)]
            await publish(nc, t.intake_subject("city-register", fact.TYPE, region),
                          make_event(fact, source="city-register", region=region))
    for fact in training:
        await publish(nc, t.event_subject(fact.TYPE, fact.region_of() or ""), make_event(fact, source="training"))
    await asyncio.sleep(1)
    await settled(settings.database_url, extra=len(training) + 12,
                  intake=sum(f.CONTEXT == "registry" for f in facts))

    dead = await count(settings.database_url,
                       "SELECT count(*) FROM registry.inbox WHERE stream LIKE '%CSO_INTAKE'") - \
        await count(settings.database_url, "SELECT count(*) FROM registry.outbox")
    expected = await recount(settings.database_url)
    actual = await projected(settings.database_url, REGISTRY_COUNTERS)
    assert dead <= 0, f"{dead} intake facts were refused: {await dead_letters(nc, settings)}"
    assert sum(actual.values()) > 10_000
    diff = {k: (actual.get(k), expected.get(k)) for k in actual.keys() | expected.keys()
            if actual.get(k) != expected.get(k)}
    assert not diff, dict(list(diff.items())[:20])
    # Every tier is there, down to communities.
    assert {len(r) for r, _ in actual} == {2, 4, 6, 9, 12}

    persons = training_expected(training)
    actual_training = await projected(settings.database_url,
                                      {"training_person_times", "pool_members", "pool_members_trained"})
    assert actual_training == persons

    # A rebuild from the fact log equals the live projection row for row, and can be put in place.
    engine = make_engine(settings.database_url)
    try:
        report = await rebuild(engine)
        assert report.equal and report.rows > 1000, report.differences[:10]
        before = await coverage_by_day(settings.database_url)
        db = await asyncpg.connect(settings.database_url)
        # The history keeps no derived counter (metrics.DERIVED), only the parts they are read from.
        assert await db.fetchval("SELECT count(*) FROM targets.coverage WHERE counter = ANY($1)",
                                 list(DERIVED)) == 0
        # A projection of before migration 0012 kept orgs_<tier>, not orgs_other_<tier>: the
        # migration puts orgs_other_<tier> back, day for day, from what that one kept. The demo's
        # communities are all urban or rural: two guided organizations elsewhere in 5111 are added.
        other = [("51", "orgs_other_guided"), ("5111", "orgs_other_guided"), ("51", "orgs_guided"),
                 ("5111", "orgs_guided")]
        await db.executemany("INSERT INTO targets.coverage_now (region, counter, value) VALUES ($1, $2, 2) "
                             "ON CONFLICT (region, counter) DO UPDATE SET value = coverage_now.value + 2", other)
        await db.executemany("INSERT INTO targets.coverage (region, counter, month, delta) "
                             "VALUES ($1, $2, '2021-03-04', 2)", other[:2])
        kept, now_kept = await coverage_by_day(settings.database_url), await coverage_now(db)
        for tier in ev.ManagementTier:
            await db.execute(
                "INSERT INTO targets.coverage (region, counter, month, delta) SELECT region, $1, month, sum(delta) "
                "FROM targets.coverage WHERE counter = ANY($2) GROUP BY region, month",
                f"orgs_{tier.value}", DERIVED[f"orgs_{tier.value}"])
        for table in ("coverage", "coverage_now"):
            await db.execute(f"DELETE FROM targets.{table} WHERE counter LIKE 'orgs\\_other\\_%'")
        for statement in migration("0012_orgs_other").statements("targets"):
            await db.execute(statement)
        await db.execute("DELETE FROM targets.coverage WHERE counter = ANY($1)", list(DERIVED))
        assert await coverage_by_day(settings.database_url) == kept
        assert await coverage_now(db) == now_kept
        await db.execute("DELETE FROM targets.coverage WHERE counter = 'orgs_other_guided'")
        await db.execute("DELETE FROM targets.coverage_now WHERE counter = 'orgs_other_guided'")
        await db.execute("UPDATE targets.coverage_now SET value = value - 2 WHERE region IN ('51', '5111') "
                         "AND counter = 'orgs_guided'")
        assert await coverage_by_day(settings.database_url) == before
        await db.execute("UPDATE targets.coverage SET delta = delta + 1 "
                         "WHERE region = '5111' AND counter = 'orgs_rural_filed'")
        await db.close()
        damaged = await rebuild(engine)
        assert not damaged.equal and {d[0][:2] for d in damaged.differences} == {("5111", "orgs_rural_filed")}
        assert (await rebuild(engine, apply=True)).applied
        assert await coverage_by_day(settings.database_url) == before
        assert (await rebuild(engine)).equal
        # Coverage kept by a targets from before communities counted (no tier-12 rows) is rebuilt
        # at start, once.
        db = await asyncpg.connect(settings.database_url)
        for table in ("coverage", "coverage_now"):
            await db.execute(f"DELETE FROM targets.{table} WHERE length(region) = 12")
        await db.close()
        assert not (await rebuild(engine)).equal
        upgraded = await upgrade(engine)
        assert upgraded is not None and upgraded.applied
        assert await upgrade(engine) is None
        assert await coverage_by_day(settings.database_url) == before
        # Coverage kept per month (before migration 0004; 0006 flags it) is rebuilt at start to
        # per-day deltas, once.
        db = await asyncpg.connect(settings.database_url)
        await db.execute("INSERT INTO targets.projection_stale (reason) VALUES ('kept per month')")
        async with db.transaction():
            await db.execute("CREATE TEMP TABLE by_month ON COMMIT DROP AS SELECT region, counter, "
                             "CAST(date_trunc('month', month) AS date) AS month, sum(delta) AS delta "
                             "FROM targets.coverage GROUP BY 1, 2, 3")
            await db.execute("TRUNCATE targets.coverage")
            await db.execute("INSERT INTO targets.coverage SELECT region, counter, month, delta FROM by_month")
        await db.close()
        assert not (await rebuild(engine)).equal
        upgraded = await upgrade(engine)
        assert upgraded is not None and upgraded.applied and upgraded.differences
        assert await upgrade(engine) is None
        assert await coverage_by_day(settings.database_url) == before
        # So is coverage kept before completions told pool members from other trainees (issue 21):
        # training pulses without the mark, and no pool_training_person_times.
        assert any(c == "pool_training_person_times" for _, c, _ in before)
        db = await asyncpg.connect(settings.database_url)
        await db.execute(
            "UPDATE targets.entity SET timeline = jsonb_set(timeline, '{pulses}', (SELECT coalesce(jsonb_agg("
            "CASE WHEN p->1->>0 = 'exam' THEN p ELSE jsonb_build_array(p->0, jsonb_build_array(p->1->0)) END), "
            "'[]') FROM jsonb_array_elements(timeline->'pulses') p)) WHERE kind = 'person'")
        for table in ("coverage", "coverage_now"):
            await db.execute(f"DELETE FROM targets.{table} WHERE counter = 'pool_training_person_times'")
        await db.close()
        upgraded = await upgrade(engine)
        assert upgraded is not None and upgraded.applied
        assert await upgrade(engine) is None
        assert await coverage_by_day(settings.database_url) == before
    finally:
        await engine.dispose()

    # The read API agrees with the tables and drills down.
    body = (await stack[1].get("/coverage/5111")).json()
    assert body["counters"]["orgs"] == expected[("5111", "orgs")]
    assert {c["code"] for c in body["children"]} == {k for k, _ in expected if len(k) == 6 and k.startswith("5111")}

    await down_to_the_community(stack[1], expected, communities)
    # The same list over NATS request-reply, as the HTTP route answers it.
    query = {"region": "5111", "target": "leshan-avg-urban", "limit": 3}
    reply = json.loads((await nc.request(t.query_subject("targets", "behind"), json.dumps(query).encode(),
                                         timeout=10)).data)
    assert reply == (await stack[1].get("/behind/5111", params={"target": "leshan-avg-urban", "limit": 3})).json()

    # The same events, shuffled and partly duplicated, into a fresh targets: same coverage per month.
    live = await coverage_by_day(settings.database_url)
    async with fresh_database(postgres_url) as other_db:
        other = dataclasses.replace(settings, database_url=other_db, namespace=settings.namespace + "b")
        await asyncio.to_thread(targets.run_migrations, other)
        await make_streams(other)
        db = await asyncpg.connect(settings.database_url)
        rows = [bytes(r["data"]) for r in await db.fetch("SELECT data FROM registry.outbox")]
        await db.close()
        rows += [make_event(f, source="training").model_dump_json().encode() for f in training]
        rng = random.Random(3)
        rows += rng.sample(rows, len(rows) // 10)
        rng.shuffle(rows)
        async with running(targets.create_app, other):
            await publish_divisions(nc.jetstream(), other.topology, DEMO_DIVISIONS)
            for data in rows:
                e = json.loads(data)
                await publish(nc, other.topology.event_subject(e["type"], e["region"]), data)
            await eventually(lambda: _equals(count(other_db, "SELECT count(*) FROM targets.inbox"),
                                             len(set(rows)) + 12), timeout=120)
            assert await coverage_by_day(other_db) == live
        js = nc.jetstream()
        for s in other.topology.streams:
            await js.delete_stream(s.name)


async def down_to_the_community(client: httpx.AsyncClient, expected: Counter[tuple[str, str]],
                                 communities: list[str]) -> None:
    """A township's children are its communities with their recounted counters, and the behind
    list of a city, counties, a township and a community is what the recount says is under each
    per-community or per-township target's threshold, shortfall by shortfall."""
    township = max({c[:9] for c in communities if c.startswith("5111")}, key=lambda t: expected[(t, "orgs")])
    body = (await client.get(f"/coverage/{township}")).json()
    assert {c["code"] for c in body["children"]} == {c for c in communities if c.startswith(township)}
    for child in body["children"]:
        # The counters this recount models (as the comparison above): funding's `orgs_new` and the
        # like are recounted by their own tests (test_funding).
        assert {k: v for k, v in child["counters"].items() if v and k in REGISTRY_COUNTERS} == {
            c: v for (r, c), v in expected.items() if r == child["code"]}, child["code"]
    assert any(child["counters"].get("orgs") for child in body["children"])

    specs: dict[str, TargetSpec] = {}

    async def synced() -> bool:
        # The default catalogue and the bundled plans' targets, once expanded into instances.
        rows = (await client.get("/targets")).json()
        specs.clear()
        specs.update({s.id: s for s in parse_catalogue({"targets": [r["spec"] for r in rows]}, "GET /targets")
                      if not s.retired and FIGURES[s.figure].unit})
        body = (await client.get("/behind/5111")).json()
        return {t["target_id"] for t in body["targets"]} == applicable(specs, "5111") != set()

    await eventually(synced, timeout=60)
    community = max((c for c in communities if c.startswith("5111")),
                    key=lambda c: (expected[(c, "communities_urban")], -expected[(c, "orgs_urban")], c))
    listed = 0
    # 510681 (广汉) has targets, none per community or township: an empty answer.
    for region in ("5111", "511102", "511123", township, community, "510681"):
        body = (await client.get(f"/behind/{region}", params={"limit": 10000})).json()
        assert {t["target_id"] for t in body["targets"]} == applicable(specs, region), region
        for t in body["targets"]:
            spec, figure = specs[t["target_id"]], FIGURES[t["figure"]]
            tiers = [tier for tier in (("township", "community") if figure.unit == "community" else ("township",))
                     if len(region) <= TIER_LENGTH[tier]]
            assert [x["tier"] for x in t["tiers"]] == tiers
            for x in t["tiers"]:
                counted, want = 0, {}
                for scope in spec.regions or (spec.scope_region,):
                    if scope.startswith(region) or region.startswith(scope):
                        n, w = recount_behind(expected, max(scope, region, key=len), TIER_LENGTH[x["tier"]],
                                              numerator(spec.figure, spec.new, spec.counts),
                                              figure.denominator, spec.threshold,
                                              spec.comparison)
                        counted, want = counted + n, want | w
                assert (x["units"], x["behind"]) == (counted, len(want)), (region, t["target_id"], x["tier"])
                assert {u["code"]: u["short"] for u in x["list"]} == want, (region, t["target_id"], x["tier"])
                shorts = [u["short"] for u in x["list"]]
                assert shorts == sorted(shorts, reverse=True)
                listed += len(want)
    assert listed > 100  # the check saw communities and townships behind, not only empty lists
    only = (await client.get("/behind/5111", params={"target": "leshan-avg-urban", "limit": 3})).json()
    assert [t["target_id"] for t in only["targets"]] == ["leshan-avg-urban"]
    assert [len(x["list"]) for x in only["targets"][0]["tiers"]] == [3, 3]
    missing = await client.get("/behind/5111", params={"target": "leshan-new-filings-functional"})
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "target"
    assert (await client.get("/behind/5111", params={"limit": 0})).json()["errors"][0]["field"] == "limit"


def applicable(specs: dict[str, TargetSpec], region: str) -> set[str]:
    """The targets set on, above or below a region."""
    return {i for i, s in specs.items()
            if any(r.startswith(region) or region.startswith(r) for r in s.regions or (s.scope_region,))}


def _subject_id(fact: ev.Payload) -> str:
    for field in ("organization_id", "hub_id", "base_id", "party_organization_id"):
        if hasattr(fact, field):
            return str(getattr(fact, field))
    raise AssertionError(fact)


def training_expected(training: list[ev.Payload]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    removed = {p.person_id for p in training if isinstance(p, ev.TalentPoolMemberRemoved)}
    trained = {p.person_id for p in training if isinstance(p, ev.TrainingCompleted)}
    for p in training:
        if isinstance(p, ev.TrainingCompleted):
            for r in cov.coverage_regions(p.organizer_region):
                out[(r, "training_person_times")] += 1
        elif isinstance(p, ev.TalentPoolMemberAdded) and p.person_id not in removed:
            for r in cov.coverage_regions(p.county_code):
                out[(r, "pool_members")] += 1
                if p.person_id in trained:
                    out[(r, "pool_members_trained")] += 1
    return out


def migration(name: str) -> Any:
    """One of targets' migration modules (their file names begin with a digit: no import statement)."""
    path = Path(__file__).parents[2] / "services" / "targets" / "migrations" / "versions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"targets_migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def coverage_now(db: asyncpg.Connection) -> dict[tuple[str, str], int]:
    return {(r["region"], r["counter"]): int(r["value"])
            for r in await db.fetch("SELECT region, counter, value FROM targets.coverage_now")}


async def coverage_by_day(dsn: str) -> dict[tuple[str, str, str], int]:
    db = await asyncpg.connect(dsn)
    try:
        # coverage.month holds the day of a delta (migration 0004).
        rows = await db.fetch("SELECT region, counter, month, delta FROM targets.coverage WHERE delta <> 0")
        return {(r["region"], r["counter"], r["month"].isoformat()): int(r["delta"]) for r in rows}
    finally:
        await db.close()


async def dead_letters(nc: nats.NATS, settings: Settings) -> list[str]:
    sub = await nc.jetstream().pull_subscribe(settings.topology.deadletter_subject("registry"), durable=None,
                                              stream=settings.topology.stream("CSO_DEADLETTER"))
    try:
        return [json.loads(m.data)["reason"] for m in await sub.fetch(50, timeout=2)]
    except Exception as e:
        return [repr(e)]
