"""targets announces plan tasks' deadlines (TaskDeadlineApproaching, contracts 1.5.0) on real NATS and
PostgreSQL, on a controlled clock: at each lead of DEADLINE_LEADS it reaches, once per task,
deadline and lead, with the plan, the task's title, region, deadline, every lead unit and its
state; an accepted task is announced no more; a deadline moved by a re-import is announced anew."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from typing import Any

import nats
import pytest

from cso.divisions import DEMO_DIVISIONS, publish_divisions
from cso.settings import Settings
from services.targets import app as targets
from services.targets.evaluation import Clock
from tests.support import eventually, ok, recording, running

pytestmark = pytest.mark.integration

PLAN = "test-task-deadlines"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def plan(due: str = "2024-12") -> bytes:
    return json.dumps({
        "plan": {"id": PLAN, "title": "测试计划", "scope": "510681", "issued": "2024-01-01"},
        "tasks": [
            {"no": "1", "title": "建立孵化体系", "lead": ["市委组织部", "市民政局"], "co": ["各镇(街道)"], "due": due},
            {"no": "2", "title": "开展宣传", "lead": "市民政局", "due": "2024-12"},
        ]}, ensure_ascii=False).encode()


async def test_a_tasks_deadline_is_announced_at_each_lead(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(targets.run_migrations, settings)
    clock = Clock(fixed=date(2024, 5, 20))
    t = settings.topology
    async with running(lambda s: targets.create_app(s, clock), settings) as (_, api), \
            recording(nc, t.context_subjects("targets"), t.stream("CSO_TARGETS")) as bus:
        await publish_divisions(nc.jetstream(), t, DEMO_DIVISIONS)

        async def known() -> bool:   # the divisions are in (a bundled plan loaded)
            return bool((await api.get("/plans")).json())

        await eventually(known, timeout=30, interval=0.2)
        await ok(await api.post("/plans", content=plan(), params={"file": "t.yaml"}))

        def announced(no: str) -> list[dict[str, Any]]:
            return [e["payload"] for e in bus.events("TaskDeadlineApproaching")
                    if e["payload"]["plan_id"] == PLAN and e["payload"]["task_no"] == no]

        async def count(no: str, n: int) -> None:
            async def reached() -> bool:
                return len(announced(no)) >= n
            await eventually(reached, timeout=20, interval=0.1)
            await asyncio.sleep(1.5)   # more sweeps: nothing more
            assert len(announced(no)) == n, announced(no)

        # 225 days before 2024-12-31: the 366-day lead, the nearest reached, with the days left.
        await count("1", 1)
        assert announced("1")[0] == {
            "plan_id": PLAN, "plan_title": "测试计划", "task_no": "1", "title": "建立孵化体系",
            "region_code": "510681", "deadline": "2024-12-31", "days_ahead": 225, "lead_days": 366,
            "lead_units": ["市委组织部", "市民政局"], "status": "not_started"}
        await count("2", 1)
        event = next(e for e in bus.events("TaskDeadlineApproaching") if e["payload"]["task_no"] == "1")
        assert event["region"] == "510681"

        # Task 2 accepted: announced no more.
        base = f"/plans/{PLAN}/tasks/2"
        await ok(await api.post(f"{base}/start", json={"by": "张三"}))
        await ok(await api.post(f"{base}/evidence", params={"filename": "a.pdf"}, content=PDF,
                                headers={"X-Cso-By": "x"}), 201)
        await ok(await api.post(f"{base}/submit", json={"by": "张三", "note": "完成"}))
        await ok(await api.post(f"{base}/accept", json={"by": "李四"}))

        clock.fixed = date(2024, 7, 3)    # 181 days: nothing
        await count("1", 1)
        clock.fixed = date(2024, 7, 4)    # 180 days
        await count("1", 2)
        clock.fixed = date(2024, 12, 20)  # 11 days: the 14-day lead (90 … 30 passed unseen)
        await count("1", 3)
        assert [(a["lead_days"], a["days_ahead"], a["status"]) for a in announced("1")] == [
            (366, 225, "not_started"), (180, 180, "not_started"), (14, 11, "not_started")]
        assert len(announced("2")) == 1

        # The deadline moved by a re-import: the new one is announced at its nearest lead.
        await ok(await api.put(f"/plans/{PLAN}", content=plan("2025-01"), params={"file": "t.yaml"}))
        await count("1", 4)
        assert (announced("1")[3]["deadline"], announced("1")[3]["lead_days"], announced("1")[3]["days_ahead"]) \
            == ("2025-01-31", 60, 42)
