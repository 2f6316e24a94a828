"""Division changes with history on real NATS and PostgreSQL (issue 22): a later edition of 盐田区
(tests/division_changes.py: a township merged, one renamed, one split, communities moved, one
renamed) imported with `cso divisions import --previous`, published as DivisionChanged, and
consumed by targets: each organization follows its community's new code from the change's day,
a hub of the merged township serves its successor, coverage equals a recount before and after,
"as of" the day before answers in that day's divisions and names, and a rebuild from the fact log
equals the live projection."""

from __future__ import annotations

import asyncio
import csv
from collections import Counter
from contextlib import AsyncExitStack
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from typer.testing import CliRunner

from contracts import events as ev
from contracts import make_event
from cso.database import make_engine
from cso.settings import Settings
from cso_local.cli import app as cli
from services.targets import app as targets
from services.targets.rebuild import rebuild
from tests import division_changes as changes
from tests.support import eventually, running

pytestmark = pytest.mark.integration

BEFORE = changes.EFFECTIVE - timedelta(days=1)


async def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def recount(orgs: list[str], day: date) -> Counter[str]:
    """Organizations per region on `day`, each at its community's code of that day."""
    out: Counter[str] = Counter()
    for community in orgs:
        where = changes.resolve(community, day)
        for n in (2, 4, 6, 9, 12):
            out[where[:n]] += 1
    return out


async def coverage_of(api: httpx.AsyncClient, region: str, day: date | None) -> dict[str, Any]:
    params = {"as_of": day.isoformat()} if day else {}
    body: dict[str, Any] = await ok(await api.get(f"/coverage/{region}", params=params))
    return body


async def assert_recount(api: httpx.AsyncClient, orgs: list[str], day: date | None,
                         divisions_of: date | None = None) -> dict[str, Any]:
    """Coverage of 盐田区, each township and each community (as of `day`, else now), equal to the
    recount in the divisions of `divisions_of` (default: that day's)."""
    expected = recount(orgs, divisions_of or day or date.today())
    county = await coverage_of(api, changes.COUNTY, day)
    assert county["counters"].get("orgs", 0) == expected[changes.COUNTY]
    for township in county["children"]:
        assert township["counters"].get("orgs", 0) == expected[township["code"]], (day, township)
        if township["tier"] != "township" or township["code"].endswith("403"):
            continue
        body = await coverage_of(api, township["code"], day)
        for community in body["children"]:
            assert community["counters"].get("orgs", 0) == expected[community["code"]], (day, community)
    return county


async def assert_funding(api: httpx.AsyncClient, projects: list[tuple[str, int]], day: date | None,
                         divisions_of: date | None = None) -> None:
    """Funding of 盐田区, each township and each community (as of `day`, else now) equal to a recount
    of the projects at their community's code in the divisions of `divisions_of` (default: that day's)."""
    on = divisions_of or day or date.today()
    params = {"as_of": day.isoformat()} if day else {}

    def expected(region: str) -> tuple[int, int, int]:
        mine = [amount for community, amount in projects if changes.resolve(community, on).startswith(region)]
        return sum(mine), len(mine), len(mine)

    county = await ok(await api.get(f"/funding/{changes.COUNTY}", params=params))
    assert (county["amount_fen"], county["projects"], county["projects_active"]) == expected(changes.COUNTY)
    for township in county["children"]:
        got = (township["amount_fen"], township["projects"], township["projects_active"])
        assert got == expected(township["code"]), (day, township["code"], got)
        assert township["orgs_supported"] == expected(township["code"])[1], (day, township)
        if township["code"].endswith("403"):
            continue
        body = await ok(await api.get(f"/funding/{township['code']}", params=params))
        for community in body["children"]:
            got = (community["amount_fen"], community["projects"], community["projects_active"])
            assert got == expected(community["code"]), (day, community["code"], got)
            assert community["orgs_supported"] == expected(community["code"])[1], (day, community)


def cli_import(env: dict[str, str], tmp: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["divisions", "import", *args, "--data-dir", str(tmp)], env=env)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())   # rich wraps at the terminal's width


async def test_counts_follow_their_communities_and_the_past_keeps_its_divisions(
        settings: Settings, nc: nats.NATS, tmp_path: Path) -> None:
    old, new = changes.write_2023(tmp_path / "2023"), changes.write_2024(tmp_path / "2024")
    await asyncio.to_thread(targets.run_migrations, settings)
    env = {"CSO_NATS_URL": settings.nats_url, "CSO_NAMESPACE": settings.namespace}
    async with AsyncExitStack() as stack:
        _, api = await stack.enter_async_context(running(targets.create_app, settings))
        await asyncio.to_thread(cli_import, env, tmp_path, str(old), "--edition", "2023")

        async def known() -> bool:
            return (await api.get(f"/coverage/{changes.COUNTY}")).status_code == 200

        await eventually(known, timeout=60, interval=0.3)

        # Two organizations in each community of 2023 (not the bonded zone's virtual one), and a
        # hub in 梅沙街道, the township that will be merged; as registry announces them.
        rows = csv.DictReader((old / "villages.csv").read_text(encoding="utf-8").splitlines())
        communities = [r["code"] for r in rows if not r["code"].startswith("440308403")]
        orgs = [c for c in communities for _ in range(2)]
        t, js = settings.topology, nc.jetstream()
        projects: list[tuple[str, int]] = []       # (community, amount in fen) of each funded project
        for i, community in enumerate(orgs):
            filed = ev.OrganizationFiled(name=f"盐田组织{i}", community_code=community, category="charity",
                                         tier="filed", filed_on=date(2023, 3, 1))
            await js.publish(t.event_subject(filed.TYPE, community), make_event(filed, source="registry")
                             .model_dump_json().encode())
            if i % 2 == 0:     # one project in each community, running through the change
                amount = (i + 1) * 1000_00
                funded = ev.ProjectFunded(
                    name=f"公益创投{i}", program="venture_philanthropy", funder_region=changes.COUNTY,
                    funder_department="区民政局", recipient_organization_id=filed.organization_id,
                    region_code=community, amount_fen=amount, awarded_on=date(2023, 9, 1),
                    starts_on=date(2023, 9, 1), ends_on=date(2025, 8, 31))
                await js.publish(t.event_subject(funded.TYPE, community), make_event(funded, source="registry")
                                 .model_dump_json().encode())
                projects.append((community, amount))
        hub = ev.HubEstablished(organization_id=filed.organization_id, region_code=changes.MERGED,
                                established_on=date(2023, 5, 1))
        await js.publish(t.event_subject(hub.TYPE, changes.MERGED),
                         make_event(hub, source="registry").model_dump_json().encode())
        # Facilities: a social-work station in 梅沙街道 and one in 盐田街道, which 梅沙 merges into
        # (two townships with a station before, one after, still two stations); a social-work room
        # in a community of 梅沙 that is recoded.
        room_before, room_after = "440308001002", changes.RECODED["440308001002"]
        for place, kind in ((changes.MERGED, "social_work_station"), (changes.INTO, "social_work_station"),
                            (room_before, "social_work_room")):
            opened = ev.FacilityOpened(kind=kind, name=f"{place}社工站点", region_code=place,
                                       opened_on=date(2023, 4, 1))
            await js.publish(t.event_subject(opened.TYPE, place),
                             make_event(opened, source="registry").model_dump_json().encode())

        async def counted() -> bool:
            c = (await coverage_of(api, changes.COUNTY, None))["counters"]
            return (c.get("orgs", 0) == len(orgs) and c.get("streets_with_hub", 0) == 1
                    and c.get("townships_with_social_work_station") == 2
                    and c.get("communities_with_social_work_room") == 1)

        await eventually(counted, timeout=60, interval=0.3)

        async def funded() -> bool:
            answer = await api.get(f"/funding/{changes.COUNTY}")
            return answer.status_code == 200 and answer.json()["projects"] == len(projects)

        await eventually(funded, timeout=60, interval=0.3)
        await assert_funding(api, projects, None, divisions_of=BEFORE)
        before = await assert_recount(api, orgs, None, divisions_of=BEFORE)   # no change imported yet
        assert [k["code"] for k in before["children"]] == [
            "440308001", "440308002", "440308003", "440308004", "440308403"]

        # --- the 2024 edition: its counties, then what changed ------------------------------
        output = await asyncio.to_thread(cli_import, env, tmp_path, str(new), "--edition", "2024",
                                         "--previous", str(old), "--effective-on", changes.EFFECTIVE.isoformat())
        assert ("changes since 2023 (effective 2024-06-30): 6 community recoded, 1 community renamed, "
                "1 township merged, 1 township renamed") in output, output

        async def moved() -> bool:
            body = await coverage_of(api, changes.COUNTY, None)
            return [k["code"] for k in body["children"]] == [
                "440308002", "440308003", "440308004", "440308005", "440308403"] and (
                await coverage_of(api, changes.NEW_TOWNSHIP, None))["counters"].get("orgs", 0) == 4

        await eventually(moved, timeout=60, interval=0.3)
        # Today: in the new divisions, each organization at its community's new code, and each
        # project too: its amount, its count and its running state moved on the change's day.
        after = await assert_recount(api, orgs, None)
        await assert_funding(api, projects, None)
        await assert_funding(api, projects, BEFORE)
        names = {k["code"]: k["name"] for k in after["children"]}
        assert names["440308004"] == "海山湾街道" and names[changes.NEW_TOWNSHIP] == "中英街街道"
        assert after["counters"]["streets"] == 4
        # The merged township's hub serves its successor: 盐田街道 has a hub, 梅沙 is no more.
        into = await coverage_of(api, changes.INTO, None)
        assert into["counters"].get("streets_with_hub") == 1 and into["counters"]["orgs"] == 20
        assert after["counters"]["streets_with_hub"] == 1
        # ... and so do its stations: one township with a station now, and both stations there.
        assert (after["counters"]["townships_with_social_work_station"], after["counters"]["social_work_stations"],
                into["counters"]["social_work_stations_township"]) == (1, 2, 2)
        room = (await coverage_of(api, room_after, None))["counters"]
        assert (room.get("communities_with_social_work_room"), room.get("social_work_rooms")) == (1, 1)

        # As of the day before: the 2023 divisions, their names, and the counts they had.
        then = await assert_recount(api, orgs, BEFORE)
        assert [k["code"] for k in then["children"]] == [
            "440308001", "440308002", "440308003", "440308004", "440308403"]
        assert {k["code"]: k["name"] for k in then["children"]}["440308004"] == "海山街道"
        assert next(k for k in then["children"] if k["code"] == changes.MERGED)["counters"]["streets_with_hub"] == 1
        assert then["counters"]["townships_with_social_work_station"] == 2
        assert next(k for k in then["children"] if k["code"] == changes.MERGED)["counters"][
            "townships_with_social_work_station"] == 1
        township = await coverage_of(api, "440308004", BEFORE)
        assert {k["code"]: k["name"] for k in township["children"]}["440308004007"] == "海涛居委会"
        gone = await api.get(f"/coverage/{changes.NEW_TOWNSHIP}", params={"as_of": BEFORE.isoformat()})
        assert gone.status_code == 404 and "did not exist on 2024-06-29" in gone.text

        # The live projection is what the fact log rebuilds to.
        engine = make_engine(settings.database_url)
        try:
            report = await rebuild(engine)
        finally:
            await engine.dispose()
        assert report.equal, report.differences[:10]
