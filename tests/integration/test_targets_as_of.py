"""Day-exact time on real NATS and PostgreSQL, on a controlled clock: coverage as of a day inside a
month counts the facts dated up to that day and no later; a target's status as of a past day is
evaluated for that day, with the threshold then in force, next to the status recorded then; the
API, NATS and the CLI's tables say the day they answer for."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from rich.console import Console

from contracts import events as ev
from contracts import make_event
from cso.settings import Settings
from cso_local.cli import coverage_table, targets_table
from services.targets import app as targets
from services.targets.evaluation import Clock
from tests.support import eventually, publish, publish_divisions, running

pytestmark = pytest.mark.integration

COUNTY, STREET, COMMUNITY = "510681", "510681001", "510681001014"
TARGET = "test-dayexact-orgs"
SPEC = {"id": TARGET, "title": "广汉市组织数", "figure": "orgs", "scope_region": COUNTY, "threshold": 3,
        "start": "2025-01-01", "deadline": "2025-12-31", "source": "test"}


def filed(org: uuid.UUID, on: date) -> ev.OrganizationFiled:
    return ev.OrganizationFiled(organization_id=org, name=f"组织{org.hex[:4]}", community_code=COMMUNITY,
                                category="culture_sports", filed_on=on)


async def orgs_as_of(api: httpx.AsyncClient, day: str, region: str = COUNTY) -> Any:
    body = (await api.get(f"/coverage/{region}", params={"as_of": day})).json()
    assert body["as_of"] == day
    return body["counters"].get("orgs", 0)


async def as_of(api: httpx.AsyncClient, day: str) -> dict[str, Any] | None:
    rows = (await api.get(f"/regions/{COUNTY}/targets", params={"as_of": day})).json()
    assert all(r["as_of"] == day for r in rows), rows
    return next((r for r in rows if r["id"] == f"{TARGET}@{COUNTY}"), None)


def rendered(table: Any) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


async def test_as_of_a_day_inside_a_month(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(targets.run_migrations, settings)
    clock = Clock(fixed=date(2025, 7, 15))
    t = settings.topology
    async with running(lambda s: targets.create_app(s, clock), settings) as (_, api):
        await publish_divisions(nc, t)
        a, b, c, d = (uuid.uuid4() for _ in range(4))
        facts: list[ev.Payload] = [
            filed(a, date(2022, 3, 1)), filed(b, date(2022, 3, 2)), filed(c, date(2024, 1, 10)),
            ev.OrganizationDeregistered(organization_id=c, reason="注销", ended_on=date(2025, 6, 30)),
            filed(d, date(2025, 7, 10))]
        for fact in facts:
            await publish(nc, t.event_subject(fact.TYPE, COMMUNITY),
                          make_event(fact, source="registry", region=COMMUNITY))

        seen: dict[str, int] = {}

        async def all_applied() -> bool:
            seen.update((await api.get(f"/coverage/{COUNTY}")).json().get("counters", {}))
            return seen.get("orgs") == 3 and seen.get("orgs_filed") == 3

        await eventually(all_applied, timeout=60, interval=0.2, describe=lambda: seen)

        # Counts: a filing of 03-02 is not counted as of 03-01; a deregistration of 06-30 still
        # counts the organization as of 06-29, and no longer on 06-30. Every tier alike.
        assert await orgs_as_of(api, "2022-03-01") == 1
        assert await orgs_as_of(api, "2022-03-01", STREET) == 1
        assert await orgs_as_of(api, "2022-03-02") == 2
        assert await orgs_as_of(api, "2022-02-28") == 0
        assert await orgs_as_of(api, "2025-06-29") == 3
        assert await orgs_as_of(api, "2025-06-30", "51") == 2
        assert await orgs_as_of(api, "2025-07-10", "5106") == 3
        # The monthly series still sums months: March 2022 holds both filings.
        series = (await api.get(f"/coverage/{COUNTY}/series", params={"figure": "orgs"})).json()
        assert {"month": "2022-03-01", "value": 2} in series

        # A target is set on 2025-07-15 (threshold 3), raised to 4 on 2025-08-01, retired on 09-01.
        assert (await api.put(f"/targets/{TARGET}", json=SPEC)).status_code == 200

        async def live(status: str) -> bool:
            rows = (await api.get(f"/regions/{COUNTY}/targets")).json()
            return any(r["id"] == f"{TARGET}@{COUNTY}" and r["status"] == status for r in rows)

        await eventually(lambda: live("met"), timeout=30, interval=0.2)
        clock.fixed = date(2025, 8, 1)
        assert (await api.put(f"/targets/{TARGET}", json=SPEC | {"threshold": 4})).status_code == 200
        await eventually(lambda: live("at_risk"), timeout=30, interval=0.2)

        # Status as of a past day: the figure that day, the threshold then in force (before the
        # target was entered, its first definition), and what the service recorded then.
        on_0629 = await as_of(api, "2025-06-29")
        assert on_0629 is not None
        assert (on_0629["status"], on_0629["value"], on_0629["threshold"]) == ("met", 3, 3)
        assert on_0629["recorded"] is None  # the service did not know this target yet
        on_0630 = await as_of(api, "2025-06-30")
        assert on_0630 is not None and (on_0630["status"], on_0630["value"]) == ("at_risk", 2)
        on_0720 = await as_of(api, "2025-07-20")
        assert on_0720 is not None and (on_0720["status"], on_0720["threshold"]) == ("met", 3)
        assert on_0720["recorded"]["status"] == "met" and on_0720["recorded"]["on_day"] == "2025-07-15"
        on_0801 = await as_of(api, "2025-08-01")
        assert on_0801 is not None and (on_0801["status"], on_0801["threshold"]) == ("at_risk", 4)
        assert on_0801["recorded"]["status"] == "at_risk"
        assert [h["status"] for h in on_0801["history"]] == ["met", "at_risk"]

        clock.fixed = date(2025, 9, 1)
        assert (await api.delete(f"/targets/{TARGET}")).status_code == 200

        async def retired() -> bool:
            rows = (await api.get(f"/regions/{COUNTY}/targets")).json()
            return not any(r["target_id"] == TARGET for r in rows)

        await eventually(retired, timeout=30, interval=0.2)
        assert await as_of(api, "2025-09-02") is None
        after = await as_of(api, "2025-08-31")
        assert after is not None and after["threshold"] == 4

        # At risk under the county as of a day, and over NATS request-reply.
        risky = (await api.get("/targets/at-risk", params={"under": COUNTY, "as_of": "2025-06-30"})).json()
        assert [(r["id"], r["as_of"], r["region_name"]) for r in risky if r["target_id"] == TARGET] == [
            (f"{TARGET}@{COUNTY}", "2025-06-30", "广汉市")]
        reply = json.loads((await nc.request(t.query_subject("targets", "targets"), json.dumps(
            {"region": COUNTY, "as_of": "2025-06-29"}).encode(), timeout=5)).data)
        assert next(r for r in reply if r["target_id"] == TARGET)["status"] == "met"
        assert (await api.get(f"/regions/{COUNTY}/targets", params={"as_of": "2025-02-30"})).status_code == 422

        # The coverage answer (what `cso coverage --as-of` prints) carries the targets of that day,
        # and both of the CLI's tables say the day.
        body = (await api.get(f"/coverage/{COUNTY}", params={"as_of": "2025-06-30"})).json()
        mine = next(r for r in body["targets"] if r["target_id"] == TARGET)
        assert (mine["status"], mine["as_of"]) == ("at_risk", "2025-06-30")
        assert "as of 2025-06-30" in rendered(coverage_table(body))
        text = rendered(targets_table(body))
        assert "as of 2025-06-30" in text and TARGET in text


async def test_coverage_kept_per_month_is_flagged_for_a_rebuild(settings: Settings) -> None:
    """A database whose coverage was kept per month (revision 0003) is flagged on upgrade, so that
    targets rebuilds it at start; a fresh one is not."""
    from cso.database import make_engine, migrate
    from services.targets.rebuild import stale

    await asyncio.to_thread(migrate, targets.MIGRATIONS, "targets", settings.database_url, "0003")
    db = await asyncpg.connect(settings.database_url)
    try:
        await db.execute("INSERT INTO targets.coverage (region, counter, month, delta) "
                         "VALUES ('510681', 'orgs', '2022-03-01', 2)")
    finally:
        await db.close()
    await asyncio.to_thread(targets.run_migrations, settings)
    engine = make_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            assert await stale(conn) == "coverage kept per month (before day-exact time)"
    finally:
        await engine.dispose()
