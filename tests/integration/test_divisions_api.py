"""GET /divisions/{code} on registry, with the demo divisions on real NATS and PostgreSQL: a region
with its parents and its children one tier down (kind, and a community's urban/rural class), paged;
404 naming `code` for a region registry does not hold, 422 for a code that is none."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from cso.divisions import DEMO_DIVISIONS, publish_divisions
from cso.divisions.classify import community_kind
from cso.settings import Settings
from services.registry.app import create_app, run_migrations
from tests.support import eventually, running

pytestmark = pytest.mark.integration

TOWNSHIP, TOWN, COUNTY = "510681001", "510681101", "510681"   # 雒城街道, 三水镇, 广汉市


def demo(stem: str, parent_column: str, parent: str) -> dict[str, str]:
    with (DEMO_DIVISIONS / f"{stem}.csv").open(encoding="utf-8") as f:
        return {row["code"]: row["name"] for row in csv.DictReader(f) if row[parent_column] == parent}


@pytest.fixture
async def registry(settings: Settings, nc: nats.NATS) -> AsyncIterator[httpx.AsyncClient]:
    await asyncio.to_thread(run_migrations, settings)
    async with running(create_app, settings) as (_, client):
        await publish_divisions(nc.jetstream(), settings.topology, DEMO_DIVISIONS)

        async def loaded() -> bool:
            db = await asyncpg.connect(settings.database_url)
            try:
                return bool(await db.fetchval("SELECT count(*) FROM registry.county") == 12)
            finally:
                await db.close()

        await eventually(loaded, timeout=30)
        yield client


async def every_page(client: httpx.AsyncClient, path: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    children: list[dict[str, Any]] = []
    after: str | None = None
    pages = 0
    while True:
        page = (await client.get(path, params={"limit": limit} | ({"after": after} if after else {}))).json()
        children += page["children"]
        pages += 1
        assert len(page["children"]) <= limit
        after = page["next_after"]
        if after is None:
            return children, pages


async def test_a_township_lists_its_communities_paged(registry: httpx.AsyncClient) -> None:
    expected = demo("villages", "streetCode", TOWNSHIP)
    assert len(expected) == 18
    first = (await registry.get(f"/divisions/{TOWNSHIP}", params={"limit": 5})).json()
    assert (first["code"], first["name"], first["tier"], first["kind"]) == (TOWNSHIP, "雒城街道", "township", "street")
    assert [(p["code"], p["name"], p["tier"]) for p in first["parents"]] == [
        ("51", "四川省", "province"), ("5106", "德阳市", "city"), ("510681", "广汉市", "county")]
    assert first["total_children"] == 18 and len(first["children"]) == 5
    assert first["next_after"] == first["children"][-1]["code"]

    children, pages = await every_page(registry, f"/divisions/{TOWNSHIP}", 5)
    assert pages == 4 and [c["code"] for c in children] == sorted(expected)
    for child in children:
        assert child["name"] == expected[child["code"]] and child["tier"] == "community"
        assert child["class"] == community_kind(child["name"]).value
        assert child["kind"] == {"urban": "community", "rural": "village"}[child["class"]]
    assert {c["class"] for c in children} == {"urban"}

    # A town with villages: 村民委员会 are villages, rural.
    town, _ = await every_page(registry, f"/divisions/{TOWN}", 100)
    villages = {c["code"]: c for c in town if "村民委员会" in c["name"]}
    assert villages and {(c["kind"], c["class"]) for c in villages.values()} == {("village", "rural")}
    assert len(town) == len(demo("villages", "streetCode", TOWN))

    # A community: itself, its parents down to its township, no children.
    one = (await registry.get(f"/divisions/{children[0]['code']}")).json()
    assert one["kind"] == "community" and one["class"] == "urban" and one["children"] == []
    assert [p["code"] for p in one["parents"]] == ["51", "5106", COUNTY, TOWNSHIP]


async def test_counties_cities_provinces_and_refusals(registry: httpx.AsyncClient) -> None:
    county = (await registry.get(f"/divisions/{COUNTY}")).json()
    assert (county["name"], county["tier"], county["total_children"]) == ("广汉市", "county", 12)
    townships = {c["code"]: c for c in county["children"]}
    assert {code: c["name"] for code, c in townships.items()} == demo("streets", "areaCode", COUNTY)
    assert townships[TOWNSHIP]["kind"] == "street" and townships[TOWN]["kind"] == "town"
    assert all(c["tier"] == "township" and "class" not in c for c in townships.values())

    city = (await registry.get("/divisions/5111")).json()
    assert city["name"] == "乐山市" and [c["code"] for c in city["children"]] == sorted(
        demo("areas", "cityCode", "5111"))
    province = (await registry.get("/divisions/51")).json()
    assert [(c["code"], c["name"], c["kind"]) for c in province["children"]] == [
        ("5106", "德阳市", "city"), ("5111", "乐山市", "city")]
    assert province["parents"] == []
    country = (await registry.get("/divisions")).json()
    assert [(c["code"], c["name"]) for c in country["children"]] == [("51", "四川省")]

    for unknown in ("519999", "52", "510681001999", "510681999"):
        gone = await registry.get(f"/divisions/{unknown}")
        assert gone.status_code == 404, unknown
        assert [e["field"] for e in gone.json()["errors"]] == ["code"] and unknown in gone.text
    for malformed in ("51x", "5106811", "５１", "0000000000000"):
        bad = await registry.get(f"/divisions/{malformed}")
        assert bad.status_code == 422 and [e["field"] for e in bad.json()["errors"]] == ["code"], malformed
    assert (await registry.get(f"/divisions/{COUNTY}", params={"after": "x"})).status_code == 422
    assert (await registry.get(f"/divisions/{COUNTY}", params={"limit": 0})).status_code == 422
