"""Targets count what their plan's sentence says (issue 21): Leshan's "每年新增登记和备案…" counts an
organization registered (登记) in the year as well as one filed (备案), on real servers."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date

import asyncpg
import nats
import pytest

from contracts import events as ev
from contracts import make_event
from cso.divisions import DEMO_DIVISIONS, publish_divisions
from cso.settings import Settings
from services.registry.app import create_app as registry_app
from services.registry.app import run_migrations as registry_migrations
from services.targets import app as targets
from services.targets.evaluation import Clock
from tests.support import eventually, publish, running
from tests.support.scenario import credit_code

pytestmark = pytest.mark.integration

TARGET = "leshan-new-filings-functional@5111/2021"


async def test_leshan_new_organizations_count_registrations_and_filings(settings: Settings,
                                                                       nc: nats.NATS) -> None:
    await asyncio.to_thread(registry_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)
    t = settings.topology
    async with running(registry_app, settings), \
            running(lambda s: targets.create_app(s, Clock(fixed=date(2021, 12, 31))), settings) as (_, api):
        await publish_divisions(nc.jetstream(), t, DEMO_DIVISIONS)
        db = await asyncpg.connect(settings.database_url)
        try:
            async def community() -> str | None:
                code: str | None = await db.fetchval(
                    "SELECT code FROM registry.community WHERE code LIKE '511111%' ORDER BY code LIMIT 1")
                return code

            await eventually(community, timeout=30)
            code = await community()
        finally:
            await db.close()
        assert code is not None
        registered = ev.OrganizationRegistered(
            organization_id=uuid.uuid4(), name="社区调解会", community_code=code,
            social_credit_code=credit_code("511111", "1", 1), legal_form="social_group",
            category="mediation", registered_on=date(2021, 9, 1))
        filed = ev.OrganizationFiled(organization_id=uuid.uuid4(), name="居民服务队", community_code=code,
                                     category="resident_services", filed_on=date(2021, 10, 1))
        for fact in (registered, filed):
            await publish(nc, t.intake_subject("leshan-register", fact.TYPE, code),
                          make_event(fact, source="leshan-register"))

        async def value() -> float | None:
            answer = await api.get("/regions/5111/targets")
            if answer.status_code != 200:   # the divisions are not applied yet
                return None
            rows = answer.json()
            return next((r["value"] for r in rows if r["id"] == TARGET), None)

        async def both_counted() -> bool:
            return await value() == 2.0

        # The registration counts beside the filing (before issue 21 it left the figure at 1).
        await eventually(both_counted, timeout=60, interval=0.2)
        coverage = (await api.get(f"/coverage/{code}")).json()["counters"]
        assert (coverage.get("filings_functional"), coverage.get("registrations_functional")) == (1, 1)


async def test_registrations_kept_before_they_counted_as_new_are_flagged_for_a_rebuild(settings: Settings) -> None:
    """A projection kept before registrations made organizations new (an organization registered,
    no registration pulse) is stale, so targets rebuilds it at start; one with the pulse is not."""
    from cso.database import make_engine
    from services.targets.rebuild import stale

    await asyncio.to_thread(targets.run_migrations, settings)
    registered = ["511111001001", "registered", "mediation", "urban", False, False, 0, False]
    db = await asyncpg.connect(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        await db.execute("INSERT INTO targets.coverage (region, counter, month, delta) "
                         "VALUES ('511111001001', 'orgs', '2021-09-01', 1)")
        await db.execute("INSERT INTO targets.entity (key, kind, timeline) VALUES ('org:old', 'org', $1::jsonb)",
                         json.dumps({"kind": "org", "segments": [["2021-09-01", registered]], "pulses": []}))
        async with engine.connect() as conn:
            assert (await stale(conn) or "").startswith("registrations are counted but not")
        await db.execute("UPDATE targets.entity SET timeline = $1::jsonb WHERE key = 'org:old'",
                         json.dumps({"kind": "org", "segments": [["2021-09-01", registered]],
                                     "pulses": [["2021-09-01", ["511111001001", "functional", "registered"]]]}))
        async with engine.connect() as conn:
            # Kept before funding (issue 22): the organization was never counted as new (orgs_new).
            assert (await stale(conn) or "").startswith("organizations are counted but not orgs_new")
        await db.execute("UPDATE targets.entity SET timeline = $1::jsonb WHERE key = 'org:old'",
                         json.dumps({"kind": "org", "segments": [["2021-09-01", registered]],
                                     "pulses": [["2021-09-01", ["511111001001", "functional", "registered"]],
                                                ["2021-09-01", ["511111001001", "new"]]]}))
        async with engine.connect() as conn:
            assert await stale(conn) is None
    finally:
        await db.close()
        await engine.dispose()


async def test_leshan_densities_leave_out_guided_organizations(settings: Settings, nc: nats.NATS) -> None:
    """"依法登记注册或实行在乡镇（街道）备案的社会组织": a guided (unfiled) organization in a rural
    community does not count in Leshan's rural average, nor in its behind list; a filed one does.
    Coverage still counts both."""
    await asyncio.to_thread(registry_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)
    t = settings.topology
    async with running(registry_app, settings), \
            running(lambda s: targets.create_app(s, Clock(fixed=date(2024, 6, 30))), settings) as (_, api):
        await publish_divisions(nc.jetstream(), t, DEMO_DIVISIONS)
        db = await asyncpg.connect(settings.database_url)
        try:
            async def community() -> str | None:
                code: str | None = await db.fetchval(
                    "SELECT code FROM registry.community WHERE code LIKE '5111%' AND kind = 'rural' "
                    "ORDER BY code LIMIT 1")
                return code

            await eventually(community, timeout=30)
            code = await community()
        finally:
            await db.close()
        assert code is not None

        async def counted(counter: str, want: int) -> bool:
            answer = await api.get(f"/coverage/{code[:9]}")
            return answer.status_code == 200 and answer.json()["counters"].get(counter) == want

        async def behind_numerator() -> int:
            body = (await api.get(f"/behind/{code}", params={"target": "leshan-avg-rural"})).json()
            [unit] = body["targets"][0]["tiers"][-1]["list"]
            assert unit["code"] == code
            return int(unit["numerator"])

        async def city_moved() -> bool:
            answer = await api.get("/regions/5111/targets")
            rows = answer.json() if answer.status_code == 200 else []
            return any(r["id"] == "leshan-avg-rural@5111" and (r["value"] or 0) > 0 for r in rows)

        guided = ev.OrganizationFiled(organization_id=uuid.uuid4(), name="广场舞队", community_code=code,
                                      category="culture_sports", filed_on=date(2024, 3, 1), tier="guided")
        await publish(nc, t.intake_subject("leshan-register", guided.TYPE, code),
                      make_event(guided, source="leshan-register"))
        await eventually(lambda: counted("orgs_rural_guided", 1), timeout=60, interval=0.2)
        assert (await api.get(f"/coverage/{code[:9]}")).json()["counters"]["orgs_rural"] == 1
        # The behind list reads coverage as it stands: the community holds no organization the
        # target counts (before issue 21 the guided one counted).
        assert await behind_numerator() == 0

        filed = ev.OrganizationFiled(organization_id=uuid.uuid4(), name="志愿服务队", community_code=code,
                                     category="culture_sports", filed_on=date(2024, 3, 2))
        await publish(nc, t.intake_subject("leshan-register", filed.TYPE, code),
                      make_event(filed, source="leshan-register"))
        await eventually(lambda: counted("orgs_rural", 2), timeout=60, interval=0.2)
        assert await behind_numerator() == 1
        await eventually(city_moved, timeout=60, interval=0.2)


async def test_densities_kept_before_tiers_are_flagged_for_a_rebuild(settings: Settings) -> None:
    """Coverage of organizations in rural communities without the per-tier counters a target's
    `counts` reads was kept before them: stale, so targets rebuilds it at start."""
    from cso.database import make_engine
    from services.targets.rebuild import stale

    await asyncio.to_thread(targets.run_migrations, settings)
    db = await asyncpg.connect(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        await db.execute("INSERT INTO targets.coverage_now (region, counter, value) VALUES ('5111', 'orgs_rural', 1)")
        async with engine.connect() as conn:
            assert (await stale(conn) or "").startswith("organizations in urban or rural communities")
        await db.execute("INSERT INTO targets.coverage_now (region, counter, value) "
                         "VALUES ('5111', 'orgs_rural_guided', 1)")
        async with engine.connect() as conn:
            assert await stale(conn) is None
    finally:
        await db.close()
        await engine.dispose()


async def test_outstanding_organizations_per_county_per_year_are_a_figure(settings: Settings,
                                                                        nc: nats.NATS) -> None:
    """"推选不少于10个优秀社区社会组织" each year: a target on outstanding_orgs_in_year is accepted (before
    issue 21, "unknown figure") and counts each county's selections of the year, once each."""
    await asyncio.to_thread(targets.run_migrations, settings)
    t = settings.topology
    county = "511102"
    async with running(lambda s: targets.create_app(s, Clock(fixed=date(2024, 6, 30))), settings) as (_, api):
        await publish_divisions(nc.jetstream(), t, DEMO_DIVISIONS)
        spec = {"id": "test-outstanding", "title": "每年推选不少于10个优秀社区社会组织",
                "figure": "outstanding_orgs_in_year", "scope_region": "5111", "scope_tier": "county",
                "threshold": 10, "start": "2023-01-01", "deadline": "2024-12-31", "yearly_from": 2023,
                "yearly_until": 2024, "source": "test", "quote": "推选不少于10个优秀社区社会组织"}
        put = await api.put("/targets/test-outstanding", json=spec)
        assert put.status_code == 200, put.text
        chosen = [ev.OutstandingOrganizationSelected(organization_id=uuid.uuid4(), county_code=county, year=2024)
                  for _ in range(3)]
        chosen.append(ev.OutstandingOrganizationSelected(organization_id=uuid.uuid4(), county_code=county,
                                                         year=2023))
        for payload in [*chosen, chosen[0]]:   # the first announced twice counts once
            await publish(nc, t.event_subject(payload.TYPE, county), make_event(payload, source="cso-training"))

        async def values() -> dict[str, float | None]:
            answer = await api.get(f"/regions/{county}/targets")
            rows = answer.json() if answer.status_code == 200 else []
            return {r["id"]: r["value"] for r in rows if r["target_id"] == "test-outstanding"}

        async def counted() -> bool:
            return await values() == {f"test-outstanding@{county}/2023": 1.0,
                                      f"test-outstanding@{county}/2024": 3.0}

        await eventually(counted, timeout=60, interval=0.2)
