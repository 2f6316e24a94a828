"""Division changes across county lines on real NATS and PostgreSQL (issue 22): the synthetic 2024
edition of 乐山市 (tests/division_changes.py: 犍为县 511123 recoded to 犍为区 511114 with everything
below it, its seat 玉津镇 a street; 井研县's 集益镇 511124110 transferred to 五通桥区 as 511112111)
imported with `cso divisions import --previous`, consumed by registry and targets together.

Organizations, hubs, bases and funded projects filed through registry in the communities and
townships that move follow them into their new county: coverage equals registry's SQL recount at
every tier after the change (the city, the old and the new counties, townships, communities); as of
the day before, coverage answers in 2023's divisions (the old county codes with their counts, the
new ones 404); the moved township's hub and base serve it under its new county; registry's
divisions and region views list the records under the new codes; and a filing naming a retired
code is refused on and after the day (naming the field and the successor), accepted before it."""

from __future__ import annotations

import asyncio
import csv
from collections import Counter
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import nats
import pytest
from typer.testing import CliRunner

from cso.database import make_engine
from cso.settings import Settings
from cso_local.cli import app as cli
from services.registry.app import create_app as registry_app
from services.registry.app import run_migrations as registry_migrations
from services.targets import app as targets
from services.targets.rebuild import rebuild
from services.training import domain as training_domain
from services.training.app import create_app as training_app
from services.training.app import run_migrations as training_migrations
from tests import division_changes as changes
from tests.support import eventually, running
from tests.support.recount import REGISTRY_COUNTERS, projected, recount

pytestmark = pytest.mark.integration

D = changes.EFFECTIVE
BEFORE = D - timedelta(days=1)
OLD_COUNTY, NEW_COUNTY = changes.COUNTY_RECODED[:2]          # 犍为县 511123 → 犍为区 511114
MOVED, MOVED_TO = changes.MOVED                               # 集益镇 511124110 → 511112111
FROM_COUNTY, TO_COUNTY = MOVED[:6], MOVED_TO[:6]              # 井研县 511124 → 五通桥区 511112
SEAT = changes.SEAT[0]                                        # 玉津镇 511123100 → 玉津街道 511114001
XIAOGU = "511123101"                                          # 孝姑镇 → 511114101
COUNTIES = (OLD_COUNTY, FROM_COUNTY, NEW_COUNTY, TO_COUNTY)


def cli_import(env: dict[str, str], tmp: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["divisions", "import", *args, "--data-dir", str(tmp)], env=env)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


async def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


async def command(registry: httpx.AsyncClient, name: str, body: dict[str, Any]) -> str:
    answer = await registry.post(f"/commands/{name}", json=body)
    assert answer.status_code == 200, (name, body, answer.text)
    return str(answer.json()["id"])


def member(county: str, organization: str | None, serial: int) -> dict[str, Any]:
    """A pool member's command: a CSO leader of `organization`, with a valid ID number."""
    first17 = f"{county}19850312{serial:03d}"
    return {"county_code": county, "role": "cso_leader", "name": f"骨干{serial}", "organization_id": organization,
            "id_number": first17 + training_domain.id_check_character(first17), "phone": f"1380838{serial:04d}",
            "added_on": "2023-07-01"}


async def listed(registry: httpx.AsyncClient, region: str) -> set[str]:
    body = await ok(await registry.get(f"/regions/{region}/organizations", params={"limit": 1000}))
    return {item["id"] for item in body["items"]}


async def differences(dsn: str) -> dict[tuple[str, str], tuple[int | None, int | None]]:
    """(region, counter) of 乐山市 where targets' coverage and registry's recount differ."""
    expected, actual = await recount(dsn), await projected(dsn, REGISTRY_COUNTERS)
    return {k: (actual.get(k), expected.get(k)) for k in actual.keys() | expected.keys()
            if k[0].startswith(changes.CITY) and actual.get(k) != expected.get(k)}


async def agreed(dsn: str) -> None:
    """Wait for targets' coverage to equal the recount, and show where it does not if it never does."""
    try:
        await eventually(lambda: _none(differences(dsn)), timeout=60, interval=0.5)
    except AssertionError:
        diff = await differences(dsn)
        assert not diff, dict(sorted(diff.items())[:30])


async def _none(pending: Any) -> bool:
    return not await pending


async def test_records_follow_their_divisions_across_county_lines(
        settings: Settings, nc: nats.NATS, tmp_path: Path) -> None:
    old = changes.write_leshan_2023(tmp_path / "2023")
    new = changes.write_leshan_2024(tmp_path / "2024")
    await asyncio.to_thread(registry_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)
    await asyncio.to_thread(training_migrations, settings)
    env = {"CSO_NATS_URL": settings.nats_url, "CSO_NAMESPACE": settings.namespace}
    dsn = settings.database_url
    villages = [row["code"] for row in csv.DictReader((old / "villages.csv").read_text(encoding="utf-8")
                                                      .splitlines())]
    async with AsyncExitStack() as stack:
        _, reg = await stack.enter_async_context(running(registry_app, settings))
        _, tgt = await stack.enter_async_context(running(targets.create_app, settings))
        _, trn = await stack.enter_async_context(running(training_app, settings))
        await asyncio.to_thread(cli_import, env, tmp_path, str(old), "--edition", "2023")

        async def known() -> bool:
            return (await reg.get(f"/divisions/{MOVED}001")).status_code == 200 and \
                (await tgt.get(f"/coverage/{OLD_COUNTY}")).status_code == 200

        await eventually(known, timeout=60, interval=0.3)

        # --- 2023: records in the communities and townships that will move, and beside them ----
        moving = [c for c in villages if c.startswith((MOVED, SEAT, XIAOGU))]
        staying = [c for c in villages if c.startswith(("511124101", "511112100"))][:6]
        orgs: list[tuple[str, str]] = []          # (organization, its 2023 community)
        for i, community in enumerate([c for c in moving if c.startswith(MOVED)] + moving + staying):
            org = await command(reg, "file", {
                "name": f"乐山组织{i}", "community_code": community, "category": "charity",
                "tier": "filed", "filed_on": "2023-03-01"})
            orgs.append((org, community))
        first = {community: org for org, community in reversed(orgs)}
        jiyi = f"{MOVED}001"
        # The moved township's hub and base; a hub at the seat (a town that becomes a street); a
        # county-wide base of 犍为县 covering two of its townships.
        jiyi_hub = await command(reg, "establish_hub", {"organization_id": first[jiyi], "region_code": MOVED,
                                                        "established_on": "2023-05-01"})
        await command(reg, "establish_hub", {"organization_id": first[f"{SEAT}001"], "region_code": SEAT,
                                             "established_on": "2023-05-01"})
        await command(reg, "open_base", {"name": "集益镇社会组织孵化基地", "region_code": MOVED,
                                         "covered_townships": [MOVED], "opened_on": "2023-06-01"})
        await command(reg, "open_base", {"name": "犍为县社会组织培育基地", "region_code": OLD_COUNTY,
                                         "covered_townships": [SEAT, XIAOGU], "opened_on": "2023-06-01"})
        # Facilities in what moves: a station in the moved township and at the seat, the county's
        # innovation base, a social-work room in a community of 孝姑镇 (recoded with its county).
        facilities = {}
        for kind, place in (("social_work_station", MOVED), ("social_work_station", SEAT),
                            ("innovation_base", OLD_COUNTY), ("social_work_room", f"{XIAOGU}001")):
            facilities[place] = await command(reg, "open_facility", {
                "kind": kind, "name": f"{place}{kind}", "region_code": place, "opened_on": "2023-06-01"})
        # Funded projects running through the change: one in the moved township (funded by the
        # county it leaves), one in the recoded county.
        projects = [(jiyi, FROM_COUNTY, 50_000_00), (f"{XIAOGU}001", OLD_COUNTY, 30_000_00)]
        for community, funder, amount in projects:
            await command(reg, "fund_project", {
                "name": f"公益创投{community}", "program": "venture_philanthropy", "funder_region": funder,
                "funder_department": "县民政局", "recipient_organization_id": first[community],
                "region_code": community, "amount_fen": amount, "awarded_on": "2023-09-01",
                "starts_on": "2023-09-01", "ends_on": "2025-08-31"})

        # A core-talent pool member of 犍为县, a leader of one of its organizations (training knows
        # registry's organizations from its events).
        async def pooled() -> bool:
            answer = await trn.post("/commands/add_member", json=member(OLD_COUNTY, first[f"{XIAOGU}001"], 1))
            return answer.status_code == 200

        await eventually(pooled, timeout=60, interval=0.5)

        async def counted() -> bool:
            body = await ok(await tgt.get(f"/coverage/{changes.CITY}"))
            return body["counters"].get("orgs", 0) == len(orgs) and not await differences(dsn)

        await eventually(counted, timeout=90, interval=0.5)
        assert not await differences(dsn)

        # --- the 2024 edition, and what changed since 2023 ----------------------------------
        output = await asyncio.to_thread(cli_import, env, tmp_path, str(new), "--edition", "2024",
                                         "--previous", str(old), "--effective-on", D.isoformat())
        assert "1 county recoded" in output, output

        async def moved() -> bool:
            answer = await tgt.get(f"/coverage/{NEW_COUNTY}")
            return answer.status_code == 200 and answer.json()["counters"].get("orgs", 0) == sum(
                c.startswith((SEAT, XIAOGU)) for _, c in orgs) and \
                await listed(reg, MOVED_TO) == {o for o, c in orgs if c.startswith(MOVED)}

        await eventually(moved, timeout=90, interval=0.5)
        await agreed(dsn)

        # Every tier through the read API, now: the city lists the new county, not the old one.
        expected = await recount(dsn)
        city = await ok(await tgt.get(f"/coverage/{changes.CITY}"))
        kids = {k["code"] for k in city["children"]}
        assert NEW_COUNTY in kids and OLD_COUNTY not in kids
        for region in (changes.CITY, *COUNTIES, MOVED_TO, changes.SEAT[1], f"{NEW_COUNTY}101",
                       f"{MOVED_TO}001", f"{changes.SEAT[1]}001"):
            body = await ok(await tgt.get(f"/coverage/{region}"))
            got = {k: v for k, v in body["counters"].items() if v and k in REGISTRY_COUNTERS}
            assert got == {c: v for (r, c), v in expected.items() if r == region}, region
        # The moved township's hub and base serve it under its new county; the seat's hub serves
        # a street now; the county-wide base covers the recoded townships.
        to = (await ok(await tgt.get(f"/coverage/{TO_COUNTY}")))["counters"]
        assert to.get("towns_with_hub") == 1 and to.get("towns_with_base") == 1, to
        frm = (await ok(await tgt.get(f"/coverage/{FROM_COUNTY}")))["counters"]
        assert not frm.get("towns_with_hub") and not frm.get("towns_with_base"), frm
        recoded = (await ok(await tgt.get(f"/coverage/{NEW_COUNTY}")))["counters"]
        assert recoded.get("streets_with_hub") == 1 and recoded.get("streets_with_base") == 1, recoded
        assert recoded.get("towns_with_base") == 1 and recoded.get("bases") == 1, recoded
        # ... and so do the facilities (the recount above compares every facility counter too).
        assert (to.get("townships_with_social_work_station"), recoded.get("townships_with_social_work_station"),
                recoded.get("counties_with_innovation_base"), recoded.get("communities_with_social_work_room"),
                frm.get("townships_with_social_work_station") or 0) == (1, 1, 1, 1, 0), (to, recoded)
        for region, amount in ((MOVED_TO, 50_000_00), (NEW_COUNTY, 30_000_00), (FROM_COUNTY, 0)):
            funding = await ok(await tgt.get(f"/funding/{region}"))
            assert funding["amount_fen"] == amount, (region, funding)

        # The catalogue's targets follow: one set on every county of the city (expanded over the
        # divisions in force) and one naming 犍为县 by its code (Leshan's class B) apply to 犍为区 now.
        async def targets_of(region: str, **params: str) -> set[str]:
            body = await ok(await tgt.get(f"/regions/{region}/targets", params=params))
            return {t["target_id"] for t in body}

        wanted = {"city-2021-2023-avg-urban-per-county", "leshan-avg-urban-class-b"}

        async def followed() -> bool:
            return await targets_of(NEW_COUNTY) >= wanted

        await eventually(followed, timeout=30, interval=0.5)
        assert not await targets_of(OLD_COUNTY)
        assert await targets_of(OLD_COUNTY, as_of=BEFORE.isoformat()) >= wanted

        # training: 犍为县's pool is 犍为区's now, counted there from the day; the organizations of
        # the recoded communities are the new county's, so its pool takes their leaders.
        async def pool_moved() -> bool:
            now = (await ok(await tgt.get(f"/coverage/{NEW_COUNTY}")))["counters"]
            return now.get("pool_members") == 1
        await eventually(pool_moved, timeout=30, interval=0.5)
        assert not (await ok(await tgt.get(f"/coverage/{OLD_COUNTY}")))["counters"].get("pool_members")
        xiaogu_2 = next(o for o, c in orgs if c == f"{XIAOGU}002")
        joined = await trn.post("/commands/add_member", json=member(NEW_COUNTY, xiaogu_2, 2) | {
            "added_on": D.isoformat()})
        assert joined.status_code == 200, joined.text
        # A pool member added to 犍为县 on or after the day: refused, naming the field and 犍为区;
        # one of the day before (a late record): accepted, and in 犍为区's pool now.
        refused = await trn.post("/commands/add_member", json=member(OLD_COUNTY, None, 3) | {
            "added_on": D.isoformat()})
        assert refused.status_code == 409 and "county_code" in refused.text and NEW_COUNTY in refused.text, \
            refused.text
        late_member = await trn.post("/commands/add_member", json=member(OLD_COUNTY, None, 4) | {
            "added_on": BEFORE.isoformat()})
        assert late_member.status_code == 200, late_member.text
        pool_db = await asyncpg.connect(dsn)
        try:
            assert await pool_db.fetchval("SELECT county_code FROM training.membership WHERE person_id = $1",
                                          UUID(late_member.json()["person_id"])) == NEW_COUNTY
        finally:
            await pool_db.close()
        chosen = await trn.post("/commands/select_outstanding", json={
            "county_code": NEW_COUNTY, "year": 2024, "kind": "organization", "organization_id": xiaogu_2,
            "title": "优秀社区社会组织"})
        assert chosen.status_code == 200, chosen.text

        # --- as of the day before: 2023's divisions and the counts they had -----------------
        def then(region: str) -> Counter[str]:
            out: Counter[str] = Counter()
            for _, community in orgs:
                if community.startswith(region):
                    out["orgs"] += 1
            return out

        past = await ok(await tgt.get(f"/coverage/{changes.CITY}", params={"as_of": BEFORE.isoformat()}))
        kids = {k["code"]: k for k in past["children"]}
        assert OLD_COUNTY in kids and NEW_COUNTY not in kids, sorted(kids)
        assert past["counters"]["orgs"] == len(orgs)
        for county in (OLD_COUNTY, FROM_COUNTY, TO_COUNTY):
            assert kids[county]["counters"].get("orgs", 0) == then(county)["orgs"], county
        assert kids[OLD_COUNTY]["counters"]["towns"] == 15 and not kids[OLD_COUNTY]["counters"].get("streets")
        assert kids[OLD_COUNTY]["counters"].get("pool_members") == 2   # one of them recorded late
        for region in (MOVED, SEAT, f"{MOVED}001"):
            body = await ok(await tgt.get(f"/coverage/{region}", params={"as_of": BEFORE.isoformat()}))
            assert body["counters"].get("orgs", 0) == then(region)["orgs"], region
        jiyi_then = (await ok(await tgt.get(f"/coverage/{FROM_COUNTY}", params={"as_of": BEFORE.isoformat()})))
        assert jiyi_then["counters"].get("towns_with_hub") == 1 and \
            jiyi_then["counters"].get("towns_with_base") == 1, jiyi_then["counters"]
        assert MOVED in {k["code"] for k in jiyi_then["children"]}
        for gone in (NEW_COUNTY, MOVED_TO, changes.SEAT[1]):
            answer = await tgt.get(f"/coverage/{gone}", params={"as_of": BEFORE.isoformat()})
            assert answer.status_code == 404 and "did not exist" in answer.text, (gone, answer.text)

        # --- registry: the divisions in force and the region views -------------------------
        city_divisions = await ok(await reg.get(f"/divisions/{changes.CITY}", params={"limit": 1000}))
        codes = {k["code"] for k in city_divisions["children"]}
        assert NEW_COUNTY in codes and OLD_COUNTY not in codes, sorted(codes)
        assert MOVED_TO in {k["code"] for k in (await ok(await reg.get(f"/divisions/{TO_COUNTY}")))["children"]}
        assert MOVED not in {k["code"] for k in (await ok(await reg.get(f"/divisions/{FROM_COUNTY}")))["children"]}
        assert await listed(reg, MOVED) == set() and await listed(reg, OLD_COUNTY) == set()
        assert await listed(reg, NEW_COUNTY) == {o for o, c in orgs if c.startswith((SEAT, XIAOGU))}
        assert await listed(reg, changes.SEAT[1]) == {o for o, c in orgs if c.startswith(SEAT)}
        assert await listed(reg, TO_COUNTY) >= {o for o, c in orgs if c.startswith(MOVED)}

        # --- filings naming a retired code ---------------------------------------------------
        late = {"name": "新组织", "community_code": jiyi, "category": "charity", "tier": "filed",
                "filed_on": D.isoformat()}
        refused = await reg.post("/commands/file", json=late)
        assert refused.status_code == 409 and "community_code" in refused.text and \
            f"{MOVED_TO}001" in refused.text, refused.text
        refused = await reg.post("/commands/establish_hub", json={
            "organization_id": first[f"{XIAOGU}001"], "region_code": XIAOGU,
            "established_on": (D + timedelta(days=3)).isoformat()})
        assert refused.status_code == 409 and "region_code" in refused.text and \
            f"{NEW_COUNTY}101" in refused.text, refused.text
        refused = await reg.post("/commands/open_base", json={
            "name": "犍为县第二基地", "region_code": OLD_COUNTY, "covered_townships": [XIAOGU],
            "opened_on": D.isoformat()})
        assert refused.status_code == 409 and NEW_COUNTY in refused.text, refused.text
        # The day before: accepted, and kept at the code standing for it now.
        past_one = await command(reg, "file", late | {"filed_on": BEFORE.isoformat(), "name": "旧组织"})
        fresh = await command(reg, "file", late | {"community_code": f"{MOVED_TO}001"})
        assert {past_one, fresh} <= await listed(reg, f"{MOVED_TO}001")
        await eventually(lambda: _count_is(tgt, f"{MOVED_TO}001", sum(
            c == jiyi for _, c in orgs) + 2), timeout=60, interval=0.3)

        # Facts of moved records after the day: their events name the new codes (the county token
        # of their subjects is the new county's), and coverage follows.
        later = (D + timedelta(days=10)).isoformat()
        await command(reg, "dissolve_hub", {"hub_id": jiyi_hub, "reason": "撤并", "dissolved_on": later})
        leaving = [o for o, c in orgs if c.startswith(XIAOGU)][-1]
        await command(reg, "deregister", {"organization_id": leaving, "reason": "自行解散", "ended_on": later})
        # ... and the moved township's station closes: 五通桥区 has no township with one any more.
        await command(reg, "close_facility", {"facility_id": facilities[MOVED], "closed_on": later})
        db = await asyncpg.connect(dsn)
        try:
            subjects = {r["type"]: r["subject"] for r in await db.fetch(
                "SELECT type, subject FROM registry.outbox WHERE type IN ('HubDissolved', 'OrganizationDeregistered', "
                "'FacilityClosed')")}
        finally:
            await db.close()
        assert subjects["HubDissolved"].endswith(f".51.5111.{TO_COUNTY}"), subjects
        assert subjects["OrganizationDeregistered"].endswith(f".51.5111.{NEW_COUNTY}"), subjects
        assert subjects["FacilityClosed"].endswith(f".51.5111.{TO_COUNTY}"), subjects
        await eventually(lambda: _hubs_are(tgt, TO_COUNTY, 0), timeout=60, interval=0.3)

        async def no_station() -> bool:
            counters = (await ok(await tgt.get(f"/coverage/{TO_COUNTY}")))["counters"]
            return not counters.get("townships_with_social_work_station")

        await eventually(no_station, timeout=60, interval=0.3)
        await agreed(dsn)

        # The live projection is what the fact log rebuilds to, the changes across counties included.
        engine = make_engine(dsn)
        try:
            report = await rebuild(engine)
        finally:
            await engine.dispose()
        assert report.equal, report.differences[:10]


async def _hubs_are(api: httpx.AsyncClient, region: str, n: int) -> bool:
    body = await ok(await api.get(f"/coverage/{region}"))
    return bool(body["counters"].get("towns_with_hub", 0) == n)


async def _count_is(api: httpx.AsyncClient, region: str, n: int) -> bool:
    body = await ok(await api.get(f"/coverage/{region}"))
    return bool(body["counters"].get("orgs", 0) == n)
