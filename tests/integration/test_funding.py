"""Funding as a domain on real servers (issue 22): clerks record funded projects in registry
(政府购买服务, 公益创投, 孵化培育资金; to an organization, or to a hub acting for organizations without
legal personality), and targets' funding figures equal a recount of registry's records at every
tier, province to community."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import date
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from contracts import events as ev
from contracts import make_event
from contracts.codes import ancestors
from cso.divisions import DEMO_DIVISIONS, publish_divisions
from cso.settings import Settings
from services.registry.app import create_app as registry_app
from services.registry.app import run_migrations as registry_migrations
from services.targets import app as targets
from services.targets.evaluation import Clock
from tests.support import eventually, publish, running
from tests.support.scenario import credit_code

pytestmark = pytest.mark.integration


async def ok(registry: httpx.AsyncClient, command: str, body: dict[str, Any]) -> str:
    answer = await registry.post(f"/commands/{command}", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


RECOUNT = """
WITH supported AS (
    SELECT p.id AS project, CASE WHEN p.hub_id IS NULL THEN p.recipient_organization_id
                                 ELSE b.organization_id END AS org, p.awarded_on
    FROM registry.funded_project p LEFT JOIN registry.funded_beneficiary b ON b.project_id = p.id),
first_award AS (SELECT org, min(awarded_on) AS awarded FROM supported GROUP BY org)
SELECT
  (SELECT coalesce(sum(amount_fen), 0) FROM registry.funded_project WHERE region_code LIKE $1 || '%'),
  (SELECT count(*) FROM registry.funded_project WHERE region_code LIKE $1 || '%'),
  (SELECT count(*) FROM registry.funded_project WHERE region_code LIKE $1 || '%'
     AND starts_on <= $2 AND (ended_on IS NULL OR ended_on > $2)),
  (SELECT count(*) FROM first_award f JOIN registry.organization o ON o.id = f.org
     WHERE o.community_code LIKE $1 || '%'),
  (SELECT count(*) FROM first_award f JOIN registry.organization o ON o.id = f.org
     WHERE o.community_code LIKE $1 || '%'
       AND f.awarded < least(o.filed_on, o.registered_on) + interval '1 year'),
  (SELECT count(*) FROM registry.organization o WHERE o.community_code LIKE $1 || '%')
"""


async def test_funding_figures_equal_a_recount_at_every_tier(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(registry_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)
    t = settings.topology
    today = date.today()
    async with running(registry_app, settings) as (_, registry), \
            running(lambda s: targets.create_app(s, Clock(fixed=today)), settings) as (_, api):
        await publish_divisions(nc.jetstream(), t, DEMO_DIVISIONS)
        db = await asyncpg.connect(settings.database_url)
        try:
            async def communities() -> list[str]:
                rows = await db.fetch(
                    "SELECT DISTINCT ON (left(code, 9)) code FROM registry.community WHERE code LIKE '511102%' "
                    "OR code LIKE '511111%' OR code LIKE '510681%' ORDER BY left(code, 9), code")
                codes = [r["code"] for r in rows]
                return codes if len({c[:6] for c in codes}) == 3 else []

            places = (await eventually(communities, timeout=60))[:12]
            # Per place: a registered organization (a legal person) and a filed one.
            registered, filed = {}, {}
            for i, code in enumerate(places):
                registered[code] = await ok(registry, "register", {
                    "name": f"社工服务中心{i}", "community_code": code, "legal_form": "social_service_agency",
                    "social_credit_code": credit_code(code[:6], "2", i + 1), "category": "resident_services",
                    "registered_on": "2023-03-01"})
                filed[code] = await ok(registry, "file", {
                    "name": f"志愿服务队{i}", "community_code": code, "category": "charity",
                    "filed_on": f"2023-0{1 + i % 4}-10"})
            amounts: Counter[str] = Counter()
            for i, code in enumerate(places):
                # A government purchase from the county's bureau, to the legal person.
                await ok(registry, "fund_project", {
                    "name": f"居家养老服务{i}", "program": "government_purchase", "funder_region": code[:6],
                    "funder_department": "区民政局", "recipient_organization_id": registered[code],
                    "region_code": code, "amount_fen": 12_345_67 * (i + 1), "awarded_on": "2023-06-01",
                    "starts_on": "2023-07-01", "ends_on": "2024-06-30"})
                # Venture philanthropy from the city, to the filed organization (no legal person needed).
                project = await ok(registry, "fund_project", {
                    "name": f"公益创投{i}", "program": "venture_philanthropy", "funder_region": code[:4],
                    "funder_department": "市民政局", "recipient_organization_id": filed[code],
                    "region_code": code, "amount_fen": 5_000_00 + i, "awarded_on": f"202{3 + i % 2}-05-01",
                    "starts_on": f"202{3 + i % 2}-05-01", "ends_on": "2027-12-31"})
                if i % 3 == 0:
                    await ok(registry, "end_project", {"project_id": project, "outcome": "terminated",
                                                       "ended_on": "2024-12-31", "reason": "未按期开展"})
                amounts[code] += 12_345_67 * (i + 1) + 5_000_00 + i

            # A government purchase cannot go to a filed organization directly: through a hub.
            refused = await registry.post("/commands/fund_project", json={
                "name": "不合规", "program": "government_purchase", "funder_region": places[0][:6],
                "funder_department": "区民政局", "recipient_organization_id": filed[places[0]],
                "region_code": places[0], "amount_fen": 100, "awarded_on": "2023-06-01",
                "starts_on": "2023-07-01", "ends_on": "2024-06-30"})
            assert refused.status_code == 409, refused.text
            assert refused.json()["errors"][0]["field"] == "payload.recipient_organization_id"
            township = places[1][:9]
            hub = await ok(registry, "establish_hub", {
                "organization_id": registered[places[1]], "region_code": township, "established_on": "2023-04-01"})
            # Incubation funds through the hub, for the township's organizations without legal personality;
            # published on intake by an outside system, the way a city's own register would.
            through_hub = ev.ProjectFunded(
                name="孵化培育", program="incubation_fund", funder_region=township[:4], funder_department="市民政局",
                recipient_organization_id=uuid.UUID(registered[places[1]]), hub_id=uuid.UUID(hub),
                beneficiary_organization_ids=[uuid.UUID(filed[places[1]])], region_code=township,
                amount_fen=30_000_00, awarded_on=date(2023, 9, 1), starts_on=date(2023, 9, 1),
                ends_on=date(2024, 8, 31))
            await publish(nc, t.intake_subject("city-register", through_hub.TYPE, township),
                          make_event(through_hub, source="city-register"))
            total = sum(amounts.values()) + 30_000_00

            async def all_counted() -> bool:
                answer = await api.get("/funding/51")
                return answer.status_code == 200 and answer.json()["amount_fen"] == total

            await eventually(all_counted, timeout=90, interval=0.3,
                             describe=lambda: "targets has not counted every project")
            province = (await api.get("/funding/51")).json()
            assert province["amount_yuan"] == f"{total // 100}.{total % 100:02d}"
            assert province["programs"]["incubation_fund"]["amount_fen"] == 30_000_00

            # Every region a project or an organization counts in, each tier: the figures equal a recount.
            regions = sorted({a for code in places for a in ancestors(code)})
            assert {len(r) for r in regions} == {2, 4, 6, 9, 12}
            for region in regions:
                figures = (await api.get(f"/funding/{region}")).json()
                recount = await db.fetchrow(RECOUNT, region, today)
                got = (figures["amount_fen"], figures["projects"], figures["projects_active"],
                       figures["orgs_supported"], figures["orgs_new_supported_first_year"], figures["orgs_new"])
                assert got == tuple(recount), region
                # The children's drill-down is each child's own answer.
                for child in figures["children"][:3]:
                    own = (await api.get(f"/funding/{child['code']}")).json()
                    assert (child["amount_fen"], child["orgs_supported"]) == (own["amount_fen"], own["orgs_supported"])
            assert province["orgs_supported"] == 2 * len(places)
            # The registry's own view of a region's projects, amounts exact in yuan.
            listed = (await registry.get(f"/regions/{township}/projects", params={"limit": 1000})).json()["items"]
            hub_project = next(p for p in listed if p["hub_id"] == hub)
            assert hub_project["amount_yuan"] == "30000.00"
            assert hub_project["beneficiary_organization_ids"] == [filed[places[1]]]
        finally:
            await db.close()
