"""Numeric community tasks on real NATS and PostgreSQL (issue 22): Guanghan's community sentences
are targets of its bundled plan's community tasks, each with its quote, and each figure moves:
"孵化培育公益慈善类社区社会组织3个" and "至少5家" with registry's events (organizations new at the
community since the plan's start), "常态化志愿服务活动开展不少于10次" with evidence numbers an
accepter confirmed (an unconfirmed number does not count). The `cso plan` table shows them."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any
from urllib.parse import quote

import nats
import pytest
from rich.console import Console

from contracts import events as ev
from contracts import make_event
from cso.divisions import DEMO_DIVISIONS, publish_divisions
from cso.settings import Settings
from cso_local.cli import ledger_table
from services.targets import app as targets
from services.targets.evaluation import Clock
from tests.support import eventually, ok, publish, running

pytestmark = pytest.mark.integration

GUANGHAN = "guanghan-2024-chuangtese"
XICHENG = "510681001014"      # 西城社区, task 2.1
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
CHARITY = "孵化培育公益慈善类社区社会组织3个"
FIVE = "至少5家"
ACTIVITIES = "常态化志愿服务活动开展不少于10次"


def by_quote(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["quote"]: t for t in task["targets"] if t.get("quote")}


async def test_community_targets_count_events_and_confirmed_evidence(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(targets.run_migrations, settings)
    clock = Clock(fixed=date(2024, 5, 20))
    t = settings.topology
    worker = {"X-Cso-By": quote("王五 (京皇社区)")}
    async with running(lambda s: targets.create_app(s, clock), settings) as (_, api):
        await publish_divisions(nc.jetstream(), t, DEMO_DIVISIONS)

        async def loaded() -> bool:
            return GUANGHAN in {p["id"] for p in (await api.get("/plans")).json()}

        await eventually(loaded, timeout=30, interval=0.2)
        t21 = by_quote(await ok(await api.get(f"/plans/{GUANGHAN}/tasks/2.1")))
        assert {q: (x["metric"], x["threshold"], x["counted"], x["value"], x["status"], x["target_id"])
                for q, x in t21.items()} == {CHARITY: ("orgs_charity", 3, "figure", 0, "pending", None),
                                             FIVE: ("orgs", 5, "figure", 0, "pending", None)}

        # --- organizations at 西城社区: events move both figures; one filed before the plan's
        # start (2024-02-21) is not new, and one elsewhere is not this community's ------------
        async def file(name: str, community: str, category: str, on: date) -> None:
            filed = ev.OrganizationFiled(name=name, community_code=community, category=category, filed_on=on)
            await publish(nc, t.event_subject(filed.TYPE, community), make_event(filed, source="test-registry"))

        await file("老年协会", XICHENG, "charity", date(2024, 1, 10))
        await file("金山志愿队", "510681001011", "charity", date(2024, 3, 1))
        for i in range(3):
            await file(f"西城公益{i}", XICHENG, "charity", date(2024, 3, 1 + i))
        await file("西城调解会", XICHENG, "mediation", date(2024, 4, 2))

        async def figures() -> dict[str, Any] | None:
            now = by_quote(await ok(await api.get(f"/plans/{GUANGHAN}/tasks/2.1")))
            return now if now[CHARITY]["value"] == 3 and now[FIVE]["value"] == 4 else None

        now = await eventually(figures, timeout=20, interval=0.2)
        assert (now[CHARITY]["status"], now[FIVE]["status"]) == ("met", "pending")
        await file("西城文体队", XICHENG, "culture_sports", date(2024, 5, 2))

        async def five() -> bool:
            return bool(by_quote(await ok(await api.get(f"/plans/{GUANGHAN}/tasks/2.1")))[FIVE]["status"] == "met")

        await eventually(five, timeout=20, interval=0.2)

        # --- 京皇社区's activities: the numbers evidence carries, confirmed by an accepter -------
        base = f"/plans/{GUANGHAN}/tasks/2.3"

        async def activities() -> dict[str, Any]:
            return by_quote(await ok(await api.get(base)))[ACTIVITIES]

        assert (await activities())["value"] == 0
        await ok(await api.post(f"{base}/start", headers=worker))
        bad = await api.post(f"{base}/evidence", params={"filename": "a.pdf", "count": "-3"}, content=PDF,
                             headers=worker)
        assert bad.status_code == 422 and "count" in bad.text
        ids = {}
        for name, count in (("三月活动.pdf", 6), ("四月活动.pdf", 4), ("五月活动.pdf", 7)):
            ids[count] = (await ok(await api.post(f"{base}/evidence", params={"filename": name, "count": count},
                                                  content=PDF, headers=worker), 201))["id"]
        plain = (await ok(await api.post(f"{base}/evidence", params={"filename": "照片说明.pdf"}, content=PDF,
                                         headers=worker), 201))["id"]
        early = await api.post(f"/plans/{GUANGHAN}/evidence/{ids[6]}/confirm", json={"by": "李四 (验收组)"})
        assert early.status_code == 409 and "not submitted" in early.text   # confirmed when reviewed
        await ok(await api.post(f"{base}/submit", json={"note": "三次活动记录"}, headers=worker))
        assert (await activities())["value"] == 0          # carried, not yet confirmed
        own = await api.post(f"/plans/{GUANGHAN}/evidence/{ids[6]}/confirm", headers=worker)
        assert own.status_code == 409 and "someone else" in own.text
        nothing = await api.post(f"/plans/{GUANGHAN}/evidence/{plain}/confirm", json={"by": "李四 (验收组)"})
        assert nothing.status_code == 422 and "no number" in nothing.text
        await ok(await api.post(f"/plans/{GUANGHAN}/evidence/{ids[6]}/confirm", json={"by": "李四 (验收组)"}))
        assert ((await activities())["value"], (await activities())["status"]) == (6, "pending")
        await ok(await api.post(f"/plans/{GUANGHAN}/evidence/{ids[4]}/confirm", json={"by": "李四 (验收组)"}))
        done = await activities()
        assert (done["value"], done["status"], done["counted"]) == (10, "met", "evidence")  # 7 unconfirmed
        task = await ok(await api.get(base))
        assert {e["count"]: e["confirmed_by"] for e in task["evidence"]} == {
            6: "李四 (验收组)", 4: "李四 (验收组)", 7: None, None: None}

        # --- the ledger and `cso plan` show each figure against its threshold ----------------
        ledger = await ok(await api.get(f"/plans/{GUANGHAN}"))
        console = Console(width=400, record=True)
        console.print(ledger_table(ledger))
        shown = console.export_text()
        assert "orgs_charity 3/3 met" in shown and "orgs 5/5 met" in shown
        assert "evidence_count 10/10 met" in shown
        assert {x["no"]: x["targets_status"] for x in ledger["tasks"]}["2.3"] == "met"
