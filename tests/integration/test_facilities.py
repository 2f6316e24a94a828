"""Facilities on real servers (issue 22): the seed sentences about innovation bases and social-work
stations become figures targets tracks, each equal to a recount of registry's own records.

- The city plan (task 18): "在2个县区、10个街道(乡镇)、20个社区(村)打造市级社区社会组织创新发展基地": the
  figures innovation_bases_counties / _townships / _communities (divisions with a running base of
  their own, each once however many it has) at the plan's scope, 乐山 5111.
- Guanghan's plan (task 1.6): "市、镇两级社工站点全部运行": the county-level city's own station
  (counties_with_social_work_station ≥ 1) and every street and town with one running
  (townships_with_social_work_station_share = 1.0). "重点村（社区）运行社工室" names no communities
  and no number: rooms are recorded and counted (communities_with_social_work_room), not a target.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from contracts.codes import ancestors
from cso.divisions import DEMO_DIVISIONS, publish_divisions
from cso.settings import Settings
from services.registry.app import create_app as registry_app
from services.registry.app import run_migrations as registry_migrations
from services.targets import app as targets
from services.targets.evaluation import Clock
from tests.support import eventually, running
from tests.support.recount import FACILITY_COUNTERS, projected, recount

pytestmark = pytest.mark.integration

CITY_PLAN, GUANGHAN_PLAN = "city-2021-2023-special-action", "guanghan-2024-chuangtese"
INNOVATION = "在2个县区、10个街道(乡镇)、20个社区(村)打造市级社区社会组织创新发展基地"
STATIONS = "市、镇两级社工站点全部运行"
ROOMS = "重点村（社区）运行社工室"
TODAY = date(2024, 11, 20)   # within both plans' reach: the city plan's deadline passed, Guanghan's not

# Divisions of each tier with a running facility of a kind, straight from registry's tables: the
# oracle's own SQL (a township counts when a street or town, a community when urban or rural).
DISTINCT = """
SELECT count(DISTINCT f.region_code) FROM registry.facility f
LEFT JOIN registry.township t ON t.code = f.region_code LEFT JOIN registry.community c ON c.code = f.region_code
WHERE f.kind = $1 AND f.ended_on IS NULL AND f.region_code LIKE $2 || '%' AND length(f.region_code) = $3
AND (length(f.region_code) = 6 OR t.kind IN ('street', 'town', 'township') OR c.kind IN ('urban', 'rural'))
"""
TOWNSHIPS = ("SELECT count(*) FROM registry.township WHERE code LIKE $1 || '%' "
             "AND kind IN ('street', 'town', 'township')")


async def ok(registry: httpx.AsyncClient, command: str, body: dict[str, Any]) -> str:
    answer = await registry.post(f"/commands/{command}", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


async def test_plans_sentences_on_facilities_are_tracked_and_equal_a_recount(settings: Settings,
                                                                             nc: nats.NATS) -> None:
    await asyncio.to_thread(registry_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)
    clock = Clock(fixed=TODAY)
    async with running(registry_app, settings) as (_, registry), \
            running(lambda s: targets.create_app(s, clock), settings) as (_, api):
        await publish_divisions(nc.jetstream(), settings.topology, DEMO_DIVISIONS)
        db = await asyncpg.connect(settings.database_url)
        try:
            async def loaded() -> bool:
                counties = await db.fetchval("SELECT count(*) FROM registry.county")
                plans = {p["id"] for p in (await api.get("/plans")).json()}
                return counties == 12 and plans == {CITY_PLAN, GUANGHAN_PLAN}

            await eventually(loaded, timeout=90, interval=0.3)
            leshan = [r["code"] for r in await db.fetch(
                "SELECT code FROM registry.township WHERE code LIKE '5111%' AND kind IN ('street', 'town') "
                "ORDER BY code")]
            villages = [r["code"] for r in await db.fetch(
                "SELECT code FROM registry.community WHERE code LIKE '5111%' AND kind IN ('urban', 'rural') "
                "ORDER BY code")]
            guanghan = [r["code"] for r in await db.fetch(
                "SELECT code FROM registry.township WHERE code LIKE '510681%' AND kind IN ('street', 'town', "
                "'township') ORDER BY code")]
            guanghan_villages = [r["code"] for r in await db.fetch(
                "SELECT code FROM registry.community WHERE code LIKE '510681%' AND kind IN ('urban', 'rural') "
                "ORDER BY code LIMIT 3")]

            # --- the city plan's task 18: 2 counties, 10 townships, 20 communities ----------------
            for county in ("511102", "511111"):
                await ok(registry, "open_facility", {"kind": "innovation_base", "name": f"{county}创新发展基地",
                                                     "region_code": county, "opened_on": "2022-05-01"})
            # 11 townships, one of them closed again: 10 running
            ids = [await ok(registry, "open_facility", {"kind": "innovation_base", "name": f"{t}基地",
                                                        "region_code": t, "opened_on": "2022-09-01"})
                   for t in leshan[:11]]
            await ok(registry, "close_facility", {"facility_id": ids[-1], "closed_on": "2023-06-30"})
            for code in villages[:20]:
                await ok(registry, "open_facility", {"kind": "innovation_base", "name": f"{code}基地",
                                                     "region_code": code, "opened_on": "2023-03-01"})
            # A second base in one community: it has one, counted once.
            await ok(registry, "open_facility", {"kind": "innovation_base", "name": "第二基地",
                                                 "region_code": villages[0], "opened_on": "2023-04-01"})
            # A demonstration park at the city, counted as a park (no base of the plan's).
            await ok(registry, "open_facility", {"kind": "demonstration_park", "name": "社会组织创新示范园",
                                                 "region_code": "5111", "opened_on": "2023-05-01"})
            # A station cannot open at a community: refused naming the field.
            refused = await registry.post("/commands/open_facility", json={
                "kind": "social_work_station", "name": "x", "region_code": villages[0], "opened_on": "2023-05-01"})
            assert refused.status_code == 422 and "payload.region_code" in refused.text, refused.text

            # --- Guanghan's 1.6: the city's station and every town's but the last, for now ---------
            await ok(registry, "open_facility", {"kind": "social_work_station", "name": "广汉市社会工作服务总站",
                                                 "region_code": "510681", "opened_on": "2023-01-01"})
            for t in guanghan[:-1]:
                await ok(registry, "open_facility", {"kind": "social_work_station", "name": f"{t}社工站",
                                                     "region_code": t, "opened_on": "2023-02-01"})
            for code in guanghan_villages:
                await ok(registry, "open_facility", {"kind": "social_work_room", "name": f"{code}社工室",
                                                     "region_code": code, "opened_on": "2023-03-01"})

            async def target(plan: str, task: str, metric: str) -> dict[str, Any]:
                body = (await api.get(f"/plans/{plan}/tasks/{task}")).json()
                return next(x for x in body["targets"] if x["metric"] == metric)

            async def share_of_towns() -> float | None:
                value = (await target(GUANGHAN_PLAN, "1.6", "townships_with_social_work_station_share"))["value"]
                return value if value == (len(guanghan) - 1) / len(guanghan) else None

            await eventually(share_of_towns, timeout=60, interval=0.3)
            stations = await db.fetchval(DISTINCT, "social_work_station", "510681", 9)
            assert (len(guanghan) - 1) / len(guanghan) == stations / await db.fetchval(TOWNSHIPS, "510681")
            assert (await target(GUANGHAN_PLAN, "1.6", "townships_with_social_work_station_share"))["status"] != "met"
            # ... and the last town's: every one runs a station.
            await ok(registry, "open_facility", {"kind": "social_work_station", "name": "最后一个镇社工站",
                                                 "region_code": guanghan[-1], "opened_on": "2023-02-01"})

            async def evaluated(plan: str, task: str, metrics: tuple[str, ...]) -> list[dict[str, Any]] | None:
                found = [await target(plan, task, m) for m in metrics]
                return found if all(x["status"] == "met" for x in found) else None

            city = await eventually(lambda: evaluated(CITY_PLAN, "18", (
                "innovation_bases_counties", "innovation_bases_townships", "innovation_bases_communities")),
                timeout=60, interval=0.3)
            town = await eventually(lambda: evaluated(GUANGHAN_PLAN, "1.6", (
                "counties_with_social_work_station", "townships_with_social_work_station_share")),
                timeout=60, interval=0.3)

            # Each sentence's figure equals the recount of registry's records.
            want = [await db.fetchval(DISTINCT, "innovation_base", "5111", n) for n in (6, 9, 12)]
            assert want == [2, 10, 20], INNOVATION
            assert [x["value"] for x in city] == want and [x["threshold"] for x in city] == [2, 10, 20], INNOVATION
            assert town[0]["value"] == await db.fetchval(DISTINCT, "social_work_station", "510681", 6) == 1, STATIONS
            assert town[1]["value"] == await db.fetchval(DISTINCT, "social_work_station", "510681", 9) / \
                await db.fetchval(TOWNSHIPS, "510681") == 1.0, STATIONS
            assert town[0].get("quote") and town[1].get("quote")
            rooms = (await api.get("/coverage/510681")).json()["counters"]
            assert rooms["communities_with_social_work_room"] == len(guanghan_villages), ROOMS

            # registry lists them with their operating status: 2 + 10 + 21 bases running, 1 closed.
            async def listed(**params: str) -> list[dict[str, Any]]:
                answer = await registry.get("/regions/5111/facilities", params={"limit": "1000", **params})
                assert answer.status_code == 200, answer.text
                return list(answer.json()["items"])

            running_bases = await listed(kind="innovation_base", status="running")
            assert len(running_bases) == 33 and {x["status"] for x in running_bases} == {"running"}
            [closed] = await listed(kind="innovation_base", status="closed")
            assert (closed["id"], closed["status"], closed["ended_on"]) == (ids[-1], "closed", "2023-06-30")
            assert "updated_by" not in closed, closed  # who recorded it is not for every reader of the region
            assert [x["kind"] for x in await listed(kind="demonstration_park")] == ["demonstration_park"]
            assert (await registry.get("/regions/5111/facilities", params={"kind": "gym"})).status_code == 422

            # Every facility counter at every tier, province to community, equals the recount.
            async def same() -> bool:
                got = await projected(settings.database_url, FACILITY_COUNTERS)
                want = +type(got)({k: v for k, v in (await recount(settings.database_url)).items()
                                   if k[1] in FACILITY_COUNTERS})
                return got == want

            await eventually(same, timeout=30, interval=0.3)
            counters = (await api.get(f"/coverage/{villages[0]}")).json()["counters"]
            assert (counters["innovation_bases"], counters["communities_with_innovation_base"]) == (2, 1)
            for region in ancestors(leshan[0]):
                assert (await api.get(f"/coverage/{region}")).json()["counters"].get("demonstration_parks") == (
                    1 if len(region) <= 4 else None), region
        finally:
            await db.close()
