"""Registry follows division changes on real NATS and PostgreSQL (issue 22): the synthetic 2024
edition of 盐田区 (tests/division_changes.py) imported with `cso divisions import --previous`
publishes DivisionChanged, and registry consumes it. Organizations of a recoded community move to
its new code (the audit keeps the old one), a hub of the merged township serves its successor,
region views list them under the new code, a filing naming a retired code on or after the change's
day is refused naming the field and the successor, one of a past day is accepted and follows, and
the same change applied again (redelivered, or published anew) moves nothing twice."""

from __future__ import annotations

import asyncio
import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import nats
import pytest
from typer.testing import CliRunner

from contracts import events as ev
from contracts import make_event
from cso.settings import Settings
from cso_local.cli import app as cli
from services.registry.app import create_app as registry_app
from services.registry.app import run_migrations as registry_migrations
from tests import division_changes as changes
from tests.support import eventually, running

pytestmark = pytest.mark.integration

OLD, NEW = "440308001002", changes.RECODED["440308001002"]        # 梅沙's community, now under 盐田街道


def cli_import(env: dict[str, str], tmp: Path, *args: str) -> None:
    result = CliRunner().invoke(cli, ["divisions", "import", *args, "--data-dir", str(tmp)], env=env)
    assert result.exit_code == 0, result.output


async def command(registry: httpx.AsyncClient, name: str, body: dict[str, Any]) -> httpx.Response:
    return await registry.post(f"/commands/{name}", json=body)


async def listed(registry: httpx.AsyncClient, region: str) -> set[str]:
    answer = await registry.get(f"/regions/{region}/organizations", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    return {item["id"] for item in answer.json()["items"]}


async def test_registry_follows_division_changes(settings: Settings, nc: nats.NATS, tmp_path: Path) -> None:
    old, new = changes.write_2023(tmp_path / "2023"), changes.write_2024(tmp_path / "2024")
    await asyncio.to_thread(registry_migrations, settings)
    env = {"CSO_NATS_URL": settings.nats_url, "CSO_NAMESPACE": settings.namespace}
    db = await asyncpg.connect(settings.database_url)
    try:
        async with running(registry_app, settings) as (_, registry):
            await asyncio.to_thread(cli_import, env, tmp_path, str(old), "--edition", "2023")

            async def known() -> bool:
                return (await registry.get(f"/divisions/{OLD}")).status_code == 200

            await eventually(known, timeout=60, interval=0.3)
            orgs: list[str] = []
            for i in range(3):
                answer = await command(registry, "file", {
                    "name": f"梅沙组织{i}", "community_code": OLD, "category": "charity", "tier": "filed",
                    "filed_on": "2023-03-01"})
                assert answer.status_code == 200, answer.text
                orgs.append(answer.json()["id"])
            hub = await command(registry, "establish_hub", {
                "organization_id": orgs[0], "region_code": changes.MERGED, "established_on": "2023-05-01"})
            assert hub.status_code == 200, hub.text
            assert await listed(registry, OLD) == set(orgs)

            # --- the 2024 edition, and what changed since 2023 -------------------------------
            await asyncio.to_thread(cli_import, env, tmp_path, str(new), "--edition", "2024", "--previous",
                                    str(old), "--effective-on", changes.EFFECTIVE.isoformat())

            async def moved() -> bool:   # once the new edition's divisions and its changes are in
                return (await registry.get(f"/divisions/{NEW}")).status_code == 200 and \
                    await listed(registry, NEW) == set(orgs)

            await eventually(moved, timeout=60, interval=0.3)
            assert await listed(registry, OLD) == set()
            assert set(orgs) <= await listed(registry, changes.INTO)
            assert await listed(registry, changes.MERGED) == set()
            # The divisions in force: the merged township and the moved community are no children.
            county = (await registry.get(f"/divisions/{changes.COUNTY}")).json()
            assert changes.MERGED not in {k["code"] for k in county["children"]}
            into = (await registry.get(f"/divisions/{changes.INTO}")).json()
            assert NEW in {k["code"] for k in into["children"]}
            assert (await registry.get(f"/divisions/{changes.MERGED}")).json()["children"] == []
            view = (await registry.get(f"/organizations/{orgs[1]}")).json()
            assert view["community_code"] == NEW
            hubs = await db.fetch("SELECT region_code FROM registry.hub WHERE id = $1", UUID(hub.json()["id"]))
            assert [r["region_code"] for r in hubs] == [changes.INTO]
            # The audit keeps the old code beside the new one.
            trail = await db.fetch("SELECT type, changes FROM registry.audit WHERE record_id = $1 ORDER BY seq",
                                   UUID(orgs[1]))
            assert [r["type"] for r in trail] == ["OrganizationFiled", "DivisionChanged"]
            assert json.loads(trail[-1]["changes"]) == {"community_code": [OLD, NEW]}

            # A filing at the retired code on or after the change's day: refused, naming the
            # field and the successor. The same at the successor is accepted.
            late = {"name": "新组织", "community_code": OLD, "category": "charity", "tier": "filed",
                    "filed_on": changes.EFFECTIVE.isoformat()}
            refused = await command(registry, "file", late)
            assert refused.status_code == 409, refused.text
            assert "community_code" in refused.text and NEW in refused.text, refused.text
            hub_late = await command(registry, "establish_hub", {
                "organization_id": orgs[1], "region_code": changes.MERGED,
                "established_on": (changes.EFFECTIVE + timedelta(days=3)).isoformat()})
            assert hub_late.status_code == 409 and "region_code" in hub_late.text \
                and changes.INTO in hub_late.text, hub_late.text
            fresh = await command(registry, "file", late | {"community_code": NEW})
            assert fresh.status_code == 200, fresh.text

            # A late filing of a past fact (the day before) at the old code: accepted, and kept
            # at the code that stands for it now.
            past = await command(registry, "file", late | {
                "filed_on": (changes.EFFECTIVE - timedelta(days=1)).isoformat(), "name": "旧组织"})
            assert past.status_code == 200, past.text
            orgs.append(past.json()["id"])
            assert await listed(registry, NEW) == {*orgs, fresh.json()["id"]}
            # A late hub of a past day at the merged township, for an organization that moved.
            hub_past = await command(registry, "establish_hub", {
                "organization_id": orgs[1], "region_code": changes.MERGED, "established_on": "2024-01-10"})
            assert hub_past.status_code == 200, hub_past.text

            # The same changes once more: the import again (same event ids: the inbox), and one
            # change published anew under another event id (the handler itself).
            await asyncio.to_thread(cli_import, env, tmp_path, str(new), "--edition", "2024", "--previous",
                                    str(old), "--effective-on", changes.EFFECTIVE.isoformat())
            again = ev.DivisionChanged(code=OLD, change="recoded", successor_code=NEW,
                                       effective_on=changes.EFFECTIVE)
            t, js = settings.topology, nc.jetstream()
            await js.publish(t.event_subject(again.TYPE, OLD),
                             make_event(again, source="divisions").model_dump_json().encode())
            marker = ev.DivisionChanged(code="440308004", change="renamed", name="海山湾街道",
                                        effective_on=date(2024, 7, 1))
            await js.publish(t.event_subject(marker.TYPE, marker.code),
                             make_event(marker, source="divisions").model_dump_json().encode())

            async def caught_up() -> bool:
                return bool(await db.fetchval(
                    "SELECT count(*) FROM registry.division_change WHERE code = '440308004' "
                    "AND effective_on = '2024-07-01'"))

            await eventually(caught_up, timeout=60, interval=0.3)
            moves = await db.fetchval(
                "SELECT count(*) FROM registry.audit WHERE type = 'DivisionChanged' AND record_id = ANY($1)",
                [UUID(o) for o in orgs])
            assert moves == len(orgs)          # each moved once, the late one included
            assert await listed(registry, NEW) == {*orgs, fresh.json()["id"]}
    finally:
        await db.close()
