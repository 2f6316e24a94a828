"""Leshan's targets on a scripted scenario: 沙湾区 (511111) reaches 15 organizations per urban and
8 per rural community and is `met`; 五通桥区 (511112) falls behind and is `at_risk`; its deadline
passes (a controlled clock) and it is `missed`. Each change is a TargetStatusChanged on the bus."""

from __future__ import annotations

import asyncio
import csv
import json
import uuid
from datetime import date, timedelta

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
from tests.support import eventually, publish, recording, running

pytestmark = pytest.mark.integration

URBAN = "leshan-avg-urban-class-a"
RURAL = "leshan-avg-rural-class-a"


def communities(county: str) -> dict[str, list[str]]:
    from cso.divisions.classify import community_kind

    out: dict[str, list[str]] = {"urban": [], "rural": []}
    with open(DEMO_DIVISIONS / "villages.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            kind = community_kind(row["name"]).value
            if row["code"].startswith(county) and kind in out:
                out[kind].append(row["code"])
    return out


def filings(codes: list[str], per_community: int, start: date) -> list[ev.OrganizationFiled]:
    return [ev.OrganizationFiled(organization_id=uuid.uuid4(), name=f"组织{i}", community_code=code,
                                 category="culture_sports", filed_on=start + timedelta(days=i % 700))
            for code in codes for i in range(per_community)]


async def test_leshan_statuses_move_and_are_published(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(registry_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)
    clock = Clock(fixed=date(2025, 6, 30))
    t = settings.topology
    async with running(registry_app, settings), \
            running(lambda s: targets.create_app(s, clock), settings) as (_, api), \
            recording(nc, t.context_subjects("targets"), t.stream("CSO_TARGETS")) as bus:
        await publish_divisions(nc.jetstream(), t, DEMO_DIVISIONS)
        shawan, wutongqiao = communities("511111"), communities("511112")
        facts = (filings(shawan["urban"], 15, date(2023, 1, 1)) + filings(shawan["rural"], 8, date(2023, 1, 1))
                 + filings(wutongqiao["urban"][:5], 1, date(2024, 1, 1)))
        # Divisions and facts travel on different streams: a filing registry reads before it has
        # applied the divisions names an unknown community and is dead-lettered, as it should be.
        needed = sorted({fact.community_code for fact in facts})
        db = await asyncpg.connect(settings.database_url)
        try:
            async def communities_known() -> bool:
                return bool(await db.fetchval("SELECT count(*) FROM registry.community WHERE code = ANY($1)",
                                              needed) == len(needed))

            await eventually(communities_known, timeout=30)
        finally:
            await db.close()
        for fact in facts:
            await publish(nc, t.intake_subject("leshan-register", fact.TYPE, fact.community_code),
                          make_event(fact, source="leshan-register"))

        def statuses() -> dict[str, list[str | None]]:
            out: dict[str, list[str | None]] = {}
            for e in bus.events("TargetStatusChanged"):
                out.setdefault(e["payload"]["target_id"], []).append(e["payload"]["status"])
            return out

        async def shawan_met() -> bool:
            s = statuses()
            return s.get(f"{URBAN}@511111", [None])[-1] == "met" and s.get(f"{RURAL}@511111", [None])[-1] == "met"

        await eventually(shawan_met, timeout=60, interval=0.2)
        s = statuses()
        assert s[f"{URBAN}@511112"][-1] == "at_risk"
        body = (await api.get("/regions/511111/targets")).json()
        urban = next(x for x in body if x["id"] == f"{URBAN}@511111")
        assert urban["status"] == "met" and urban["value"] == pytest.approx(15.0)
        assert [h["status"] for h in urban["history"]][-1] == "met"
        risky = {x["id"] for x in (await api.get("/targets/at-risk", params={"under": "5111"})).json()}
        assert f"{URBAN}@511112" in risky and f"{URBAN}@511111" not in risky

        # The same read API over NATS request-reply; an unknown region is refused with the field.
        reply = json.loads((await nc.request(t.query_subject("targets", "coverage"),
                                             json.dumps({"region": "511111"}).encode(), timeout=5)).data)
        assert reply["counters"]["orgs"] == len(shawan["urban"]) * 15 + len(shawan["rural"]) * 8
        unknown = json.loads((await nc.request(t.query_subject("targets", "coverage"),
                                               json.dumps({"region": "519999"}).encode(), timeout=5)).data)
        assert unknown["ok"] is False and unknown["errors"][0]["field"] == "region"
        assert (await api.get("/coverage/51x")).status_code == 422
        assert (await api.get("/coverage/5111", params={"as_of": "2024-13-01"})).status_code == 422
        as_of = (await api.get("/coverage/511111", params={"as_of": "2022-12-31"})).json()
        assert as_of["counters"].get("orgs", 0) == 0  # every filing is dated 2023 or later

        # Targets are added, replaced and retired through the API, and validated on the way in.
        spec = {"id": "test-shawan-orgs", "title": "沙湾区组织数", "figure": "orgs", "scope_region": "511111",
                "threshold": 100, "start": "2023-01-01", "deadline": "2026-12-31", "source": "test"}
        assert (await api.put("/targets/test-shawan-orgs", json=spec)).status_code == 200
        bad = await api.put("/targets/test-bad", json=spec | {"id": "test-bad", "figure": "nonsense"})
        assert bad.status_code == 422 and "figure" in bad.text

        async def added_and_met() -> bool:
            rows = (await api.get("/regions/511111/targets")).json()
            return any(r["id"] == "test-shawan-orgs@511111" and r["status"] == "met" for r in rows)

        await eventually(added_and_met, timeout=20, interval=0.2)
        assert (await api.delete("/targets/test-shawan-orgs")).status_code == 200

        async def retired() -> bool:
            rows = (await api.get("/regions/511111/targets")).json()
            return not any(r["target_id"] == "test-shawan-orgs" for r in rows)

        await eventually(retired, timeout=20, interval=0.2)
        assert (await api.delete("/targets/never-was")).status_code == 404

        # The deadline (2025-12-31) passes: what was behind is missed, what was met stays met.
        clock.fixed = date(2026, 1, 2)

        async def missed() -> bool:
            return statuses().get(f"{URBAN}@511112", [None])[-1] == "missed"

        await eventually(missed, timeout=30, interval=0.2)
        assert statuses()[f"{URBAN}@511111"][-1] == "met"
        changed = [e for e in bus.events("TargetStatusChanged") if e["payload"]["target_id"] == f"{URBAN}@511112"]
        assert changed[-1]["payload"]["previous_status"] == "at_risk"
        assert changed[-1]["region"] == "511112"
        # Figures of a burst are coalesced: far fewer CoverageChanged than events applied.
        coverage = [e for e in bus.events("CoverageChanged") if e["region"] == "511111"]
        assert 1 <= len(coverage) < len(facts) / 10
        assert json.loads(bus.messages[0].data)["source"] == "cso-targets"
