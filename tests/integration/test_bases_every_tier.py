"""Incubation at every tier on real servers (issue 22): Guanghan's "市、镇(街道)、村(社区)三级社会组织孵化
体系" and Leshan's "省—市—县—乡镇—村(社区)五级联动" open bases at a community too; each counts at its own
tier (bases_<tier>) and rolls up, and communities with one are covered (communities_with_base)."""

from __future__ import annotations

import asyncio
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
from tests.support import eventually, running

pytestmark = pytest.mark.integration

SENTENCE = "市、镇(街道)、村(社区)三级社会组织孵化体系"


async def ok(registry: httpx.AsyncClient, command: str, body: dict[str, Any]) -> None:
    answer = await registry.post(f"/commands/{command}", json=body)
    assert answer.status_code == 200, answer.text


async def test_three_tier_incubation_counts_each_tier_and_rolls_up(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(registry_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)
    async with running(registry_app, settings) as (_, registry), running(targets.create_app, settings) as (_, api):
        await publish_divisions(nc.jetstream(), settings.topology, DEMO_DIVISIONS)
        db = await asyncpg.connect(settings.database_url)
        try:
            async def places() -> list[str]:
                rows = await db.fetch("SELECT code FROM registry.community WHERE code LIKE '510681%' "
                                      "AND kind IN ('urban', 'rural') ORDER BY code LIMIT 3")
                return [r["code"] for r in rows] if len(rows) == 3 else []

            communities = await eventually(places, timeout=60)
        finally:
            await db.close()
        township = communities[0][:9]
        # 三级: the city (德阳 5106), the town or street, and each village or community.
        await ok(registry, "open_base", {"name": "市级孵化基地", "region_code": "5106",
                                         "covered_townships": [township], "opened_on": "2022-03-01"})
        await ok(registry, "open_base", {"name": "镇级孵化基地", "region_code": township,
                                         "covered_townships": [township], "opened_on": "2022-06-01"})
        for code in communities:
            await ok(registry, "open_base", {"name": "社区孵化点", "region_code": code, "opened_on": "2023-01-01"})
        # A second point in the first community: it has a base, counted once.
        await ok(registry, "open_base", {"name": "社区孵化点二", "region_code": communities[0],
                                         "opened_on": "2023-02-01"})

        async def counters(code: str) -> dict[str, int]:
            answer = await api.get(f"/coverage/{code}")
            return dict(answer.json()["counters"]) if answer.status_code == 200 else {}

        async def counted() -> bool:
            return (await counters("5106")).get("bases_community") == 4

        await eventually(counted, timeout=60, interval=0.2)
        for region in ancestors(township):
            c = await counters(region)
            want_points = len([x for x in communities if x.startswith(region)]) + 1
            assert (c.get("bases_city"), c.get("bases_township")) == (
                1 if region == "5106" or len(region) == 2 else None, 1), (SENTENCE, region, c)
            assert c.get("bases_community") == want_points, (region, c)
            assert c.get("communities_with_base") == len([x for x in communities if x.startswith(region)])
        own = await counters(communities[0])
        assert (own.get("bases_community"), own.get("communities_with_base")) == (2, 1)
        figures = (await api.get(f"/coverage/{township}")).json()["figures"]
        c = await counters(township)
        with_base = len([x for x in communities if x.startswith(township)])
        total = c.get("communities_urban", 0) + c.get("communities_rural", 0)
        assert figures["communities_with_base_share"] == with_base / total
