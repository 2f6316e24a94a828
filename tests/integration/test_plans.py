"""Plans and their task ledgers on real NATS and PostgreSQL, with a controlled clock: both bundled
plans load once their divisions arrive; Guanghan's task 1.4 goes in_progress -> submitted (with
evidence) -> returned -> submitted -> accepted, its twelve townships' lines first; 1.1's deadline
passes unaccepted and one TaskOverdue is published; 1.5 turns met when three brand organizations
are in coverage; a changed plan is a new revision with its diff, a bad one changes nothing; a
township imported later gets its line; a one-task plan accepted publishes PlanAccepted."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
import zipfile
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nats
import pytest
from fastapi import FastAPI

from contracts import events as ev
from contracts import make_event
from cso.divisions import DEMO_DIVISIONS, publish_divisions
from cso.settings import Settings
from services.targets import app as targets
from services.targets.evaluation import Clock
from services.targets.plans import api as plans_api
from services.targets.plans import domain as plans_domain
from tests.support import eventually, ok, publish, recording, running

pytestmark = pytest.mark.integration

GUANGHAN = "guanghan-2024-chuangtese"
CITY = "city-2021-2023-special-action"
DATA = Path(plans_api.__file__).parent / "data"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
GUANGHAN_TOWNSHIPS = 12  # in the demo divisions (cso/divisions/demo/streets.csv)


def docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", "<w:document/>")
    return buffer.getvalue()


def plans_app(settings: Settings, clock: Clock) -> FastAPI:
    """targets' app (its plans' routes included)."""
    return targets.create_app(settings, clock)


async def test_plans_ledger_end_to_end(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(targets.run_migrations, settings)
    clock = Clock(fixed=date(2024, 5, 20))
    t = settings.topology
    by = {"X-Cso-By": quote("张三 (市民政局)")}  # header text: percent-encoded UTF-8
    async with running(lambda s: plans_app(s, clock), settings) as (_, api), \
            recording(nc, t.context_subjects("targets"), t.stream("CSO_TARGETS")) as bus:
        await publish_divisions(nc.jetstream(), t, DEMO_DIVISIONS)

        # --- both bundled plans load once their divisions are known ---------------------------
        async def loaded() -> list[dict[str, Any]] | None:
            body = (await api.get("/plans")).json()
            return body if {p["id"] for p in body} == {GUANGHAN, CITY} else None

        await eventually(loaded, timeout=30, interval=0.2)
        city = await ok(await api.get(f"/plans/{CITY}"))
        # innovation_bases_*: tracked since facilities are recorded (test_facilities), untracked before
        assert len(city["tasks"]) == 19 and not city["plan"]["warnings"]
        t18 = next(x for x in city["tasks"] if x["no"] == "18")
        assert all(x["status"] != "untracked" and x["target_id"] for x in t18["targets"]), t18["targets"]
        ledger = await ok(await api.get(f"/plans/{GUANGHAN}"))
        assert len(ledger["tasks"]) == 13 and ledger["plan"]["scope_name"] == "广汉市"
        assert ledger["completion"]["share"] == 0 and ledger["by_state"]["not_started"][0] == "1.1"
        t14 = next(x for x in ledger["tasks"] if x["no"] == "1.4")
        assert t14["deadline"] == "2024-06-30" and t14["lines"]["total"] == GUANGHAN_TOWNSHIPS

        # --- 1.4: in_progress -> submitted with evidence -> returned -> submitted -> accepted ---
        base = f"/plans/{GUANGHAN}/tasks/1.4"
        refused = await api.post(f"{base}/submit", json={"note": "done"}, headers=by)
        assert refused.status_code == 409 and "not_started" in refused.text  # start first
        await ok(await api.post(f"{base}/start", headers=by))
        assert (await api.post(f"{base}/start", headers=by)).status_code == 409
        assert (await api.post(f"{base}/submit", json={"note": "done"}, headers=by)).status_code == 409  # no evidence
        wrong = await api.post(f"{base}/evidence", params={"filename": "报告.pdf"}, content=PNG, headers=by)
        assert wrong.status_code == 415 and "png" in wrong.text
        evidence = await ok(await api.post(f"{base}/evidence", params={"filename": "孵化体系方案.pdf"},
                                           content=PDF, headers=by), 201)
        assert evidence["type"] == "pdf" and len(evidence["sha256"]) == 64
        await ok(await api.post(f"{base}/submit", json={"note": "三级孵化体系已建立，附方案"}, headers=by))
        await ok(await api.post(f"{base}/return", json={"by": "李四 (验收组)", "reason": "缺少镇级孵化点名单"}))
        task = await ok(await api.get(base))
        assert task["state"] == "in_progress" and task["reason"] == "缺少镇级孵化点名单" and task["returns"] == 1
        png = base64.b64encode(PNG).decode()
        await ok(await api.post(f"{base}/submit", headers=by, json={
            "note": "补充镇级孵化点名单", "evidence": [{"filename": "名单.png", "content_base64": png}]}))
        early = await api.post(f"{base}/accept", json={"by": "李四 (验收组)"})
        assert early.status_code == 409 and "lines" in early.text  # townships first

        # Per-township progress: every township's own line, rolled up to the task.
        lines = (await ok(await api.get(f"{base}/lines")))["lines"]
        assert len(lines) == GUANGHAN_TOWNSHIPS and {x["unit"] for x in lines} >= {"雒城街道", "三星堆镇"}
        for i, line in enumerate(sorted(x["line"] for x in lines)):
            lb = f"{base}/lines/{line}"
            await ok(await api.post(f"{lb}/start", headers=by))
            await ok(await api.post(f"{lb}/evidence", params={"filename": "自评.docx"}, content=docx(), headers=by),
                     201)
            await ok(await api.post(f"{lb}/submit", json={"note": "镇级孵化点已运行"}, headers=by))
            if i < 3:
                await ok(await api.post(f"{lb}/accept", json={"by": "李四 (验收组)"}))
        progress = await ok(await api.get(f"{base}/lines"))
        assert progress["summary"]["accepted"] == 3 and progress["summary"]["share"] == pytest.approx(0.25)
        assert progress["summary"]["by_state"]["submitted"] == GUANGHAN_TOWNSHIPS - 3
        assert (await ok(await api.get(base)))["progress"] == pytest.approx(0.25)
        for line in [x["line"] for x in progress["lines"] if x["state"] == "submitted"]:
            await ok(await api.post(f"{base}/lines/{line}/accept", json={"by": "李四 (验收组)"}))
        done = await ok(await api.post(f"{base}/accept", json={"by": "李四 (验收组)"}))
        assert done["status"] == "accepted"
        assert (await api.post(f"{base}/return", json={"by": "x", "reason": "y"})).status_code == 409

        def task_events(no: str, region: str = "510681") -> list[dict[str, Any]]:
            return [e["payload"] for e in bus.events("TaskStatusChanged")
                    if e["payload"]["plan_id"] == GUANGHAN and e["payload"]["task_no"] == no
                    and e["region"] == region]

        async def walked() -> bool:
            return len(task_events("1.4")) == 6

        await eventually(walked, timeout=10)
        assert [(e["previous_status"], e["status"]) for e in task_events("1.4")] == [
            ("not_started", "in_progress"), ("in_progress", "submitted"), ("submitted", "returned"),
            ("returned", "in_progress"), ("in_progress", "submitted"), ("submitted", "accepted")]
        returned = task_events("1.4")[2]
        assert returned["by"] == "李四 (验收组)" and returned["note"] == "缺少镇级孵化点名单"
        assert task_events("1.4")[0]["by"] == "张三 (市民政局)"
        history = (await ok(await api.get(base)))["history"]
        assert [h["status"] for h in history if h["line"] == ""][-1] == "accepted"

        # --- 1.5 takes its figures from coverage: three brand organizations make it met -------
        async def brand_status() -> str | None:
            t15 = await ok(await api.get(f"/plans/{GUANGHAN}/tasks/1.5"))
            return next(x["status"] for x in t15["targets"] if x["metric"] == "brand_organizations")

        async def evaluated() -> str | None:
            status = await brand_status()
            return status if status != "pending" else None

        assert await eventually(evaluated, timeout=20, interval=0.2) == "at_risk"
        for community in ("510681001014", "510681001011", "510681002010"):
            filed = ev.OrganizationFiled(name=f"品牌组织{community[-3:]}", community_code=community,
                                         category="charity", filed_on=date(2024, 3, 10))
            await publish(nc, t.event_subject(filed.TYPE, community), make_event(filed, source="test-registry"))
            brand = ev.OrganizationUpdated(organization_id=filed.organization_id, effective_on=date(2024, 4, 1),
                                           brand=True)
            await publish(nc, t.event_subject(brand.TYPE, community),
                          make_event(brand, source="test-registry", region=community))

        async def met() -> bool:
            return await brand_status() == "met"

        await eventually(met, timeout=20, interval=0.2)
        t15 = await ok(await api.get(f"/plans/{GUANGHAN}/tasks/1.5"))
        brand_target = next(x for x in t15["targets"] if x["metric"] == "brand_organizations")
        # the catalogue's guanghan-brand-orgs states the same promise: the task shows it (one instance)
        assert brand_target["value"] == 3 and brand_target["target_id"] == "guanghan-brand-orgs"
        assert brand_target["linked"] is True

        # --- 1.1's deadline (2024-05-31) passes unaccepted: TaskOverdue, once -------------------
        clock.fixed = date(2024, 6, 5)

        def overdue(no: str) -> list[dict[str, Any]]:
            return [e["payload"] for e in bus.events("TaskOverdue")
                    if e["payload"]["plan_id"] == GUANGHAN and e["payload"]["task_no"] == no]

        async def overdue_published() -> bool:
            return len(overdue("1.1")) == 1

        await eventually(overdue_published, timeout=15, interval=0.2)
        assert overdue("1.1")[0] == {"plan_id": GUANGHAN, "task_no": "1.1", "region_code": "510681",
                                     "lead_unit": "市民政局", "deadline": "2024-05-31", "lead_units": ["市民政局"]}

        async def joint_overdue() -> bool:
            return bool(overdue("1.2"))

        await eventually(joint_overdue, timeout=15, interval=0.2)
        assert (overdue("1.2")[0]["lead_unit"], overdue("1.2")[0]["lead_units"]) == ("市委组织部",
                                                                                  ["市委组织部", "市民政局"])
        assert not overdue("1.4")  # accepted, and not due before 06-30 anyway
        ledger = await ok(await api.get(f"/plans/{GUANGHAN}"))
        assert ledger["tasks"][0]["overdue"] and set(ledger["overdue"]) == {"1.1", "1.2", "1.3", "1.8", "1.9"}
        assert ledger["by_state"]["accepted"] == ["1.4"]
        assert ledger["completion"]["share"] == pytest.approx(1 / 13)
        todo = await ok(await api.get("/units/市民政局/todo"))
        assert todo["items"][0]["overdue"] and {i["task_no"] for i in todo["items"] if i["overdue"]} >= {"1.1", "1.3"}
        assert "1.4" not in {i["task_no"] for i in todo["items"]}
        township = await ok(await api.get("/units/雒城街道/todo"))
        assert {i["role"] for i in township["items"]} == {"lead", "line"}  # 2.1 leads; lines of 1.x
        assert (await api.get("/units/不存在的单位/todo")).status_code == 404
        metrics = (await api.get("/metrics/")).text
        # 1.1 1.3 1.8, and 1.2, which it leads jointly with 市委组织部
        assert f'cso_tasks_overdue{{plan="{GUANGHAN}",unit="市民政局"}} 4.0' in metrics
        assert f'cso_tasks_overdue{{plan="{GUANGHAN}",unit="市委组织部"}} 1.0' in metrics  # 1.2

        # --- joint leads: 1.2 and 1.6 (市委组织部、市民政局), 1.8 (市民政局、市基层治理促进中心) ---
        joint = {"1.2": ["市委组织部", "市民政局"], "1.6": ["市委组织部", "市民政局"],
                 "1.8": ["市民政局", "市基层治理促进中心"]}
        tasks = {x["no"]: x for x in ledger["tasks"]}
        for no, leads in joint.items():
            assert tasks[no]["leads"] == leads and tasks[no]["lead"] == leads[0]
            assert not set(leads) & set(tasks[no]["co"])
            for unit in leads:
                items = (await ok(await api.get(f"/units/{quote(unit)}/todo")))["items"]
                mine = [i for i in items if i["task_no"] == no and i["plan_id"] == GUANGHAN and not i["line"]]
                assert [(i["role"], i["leads"]) for i in mine] == [("lead", leads)], (no, unit)
        await asyncio.sleep(2.5)  # more sweeps: still one TaskOverdue for 1.1
        assert len(overdue("1.1")) == 1

        # --- NATS request-reply ---------------------------------------------------------------
        reply = await nc.request(t.query_subject("targets", "plan.ledger"),
                                 json.dumps({"plan": GUANGHAN}).encode(), timeout=5)
        assert json.loads(reply.data)["completion"]["accepted"] == 1
        reply = await nc.request(t.query_subject("targets", "plan.todo"),
                                 json.dumps({"unit": "市民政局"}).encode(), timeout=5)
        assert json.loads(reply.data)["overdue"] >= 3
        reply = await nc.request(t.query_subject("targets", "plan.lines"),
                                 json.dumps({"plan": GUANGHAN, "task": "1.4"}).encode(), timeout=5)
        assert json.loads(reply.data)["summary"]["share"] == 1

        # --- re-import: a changed plan is a revision with its diff; a bad one changes nothing ---
        source = (DATA / f"{GUANGHAN}.yaml").read_text(encoding="utf-8")
        changed = source.replace("title: 开展社区治理宣传,", "title: 开展社区治理宣传和培训,")
        assert changed != source
        result = await ok(await api.put(f"/plans/{GUANGHAN}", content=changed.encode(),
                                        params={"file": "guanghan-v2.yaml"}, headers=by))
        assert result["revision"] == 2 and result["diff"]["tasks"]["changed"] == {
            "1.9": {"title": {"from": "开展社区治理宣传", "to": "开展社区治理宣传和培训"}}}
        again = await ok(await api.put(f"/plans/{GUANGHAN}", content=changed.encode(), headers=by))
        assert again["changed"] is False and again["revision"] == 2
        bad = plans_domain.read_plan_text(changed, "bad.yaml")
        assert isinstance(bad, dict)
        bad["tasks"][5]["targets"] = [{"metric": "orgs", "threshold": 10}]  # valid, but the file is not:
        bad["tasks"][7]["no"] = "1.7"  # a duplicate number
        bad["tasks"][9]["due"] = "2023-12"  # before the plan was issued
        rejected = await api.put(f"/plans/{GUANGHAN}", params={"file": "bad.yaml"},
                                 content=json.dumps(bad, default=str, ensure_ascii=False).encode())
        assert rejected.status_code == 422
        errors = rejected.json()["errors"]
        assert any(e["field"] == "tasks[7].no" and "bad.yaml" in e["message"] and "duplicate" in e["message"]
                   for e in errors), errors
        assert any(e["field"] == "tasks[9].due" and "before the plan issued" in e["message"] for e in errors), errors
        catalogue = {x["id"] for x in await ok(await api.get("/targets"))}
        # 1.5's brand organizations are the catalogue's guanghan-brand-orgs (one promise, one target)
        assert "guanghan-brand-orgs" in catalogue and f"{GUANGHAN}-1.5-brand_organizations" not in catalogue
        assert f"{GUANGHAN}-1.6-orgs" not in catalogue
        # 1.6 keeps its own targets (its stations: test_facilities), not the rejected file's
        assert [x["metric"] for x in (await ok(await api.get(f"/plans/{GUANGHAN}/tasks/1.6")))["targets"]] == [
            "counties_with_social_work_station", "townships_with_social_work_station_share"]
        revisions = await ok(await api.get(f"/plans/{GUANGHAN}/revisions"))
        assert [r["revision"] for r in revisions] == [1, 2]
        after = await ok(await api.get(f"/plans/{GUANGHAN}/tasks/2.1"))
        assert after["deadline"] == "2024-12-31"

        # --- a township imported later gets its own line (not under an accepted task) ----------
        newer = ev.DivisionsImported(
            edition="2024", province=ev.DivisionRef(code="51", name="四川省"),
            city=ev.DivisionRef(code="5106", name="德阳市"), county=ev.DivisionRef(code="510681", name="广汉市"),
            townships=[ev.TownshipDivision(code="510681199", name="测试镇", kind="town")], communities=[])
        await publish(nc, t.event_subject(newer.TYPE, "510681"), make_event(newer, source="test-divisions"))

        async def new_line() -> bool:
            body = await ok(await api.get(f"/plans/{GUANGHAN}/tasks/1.5/lines"))
            return any(x["unit"] == "测试镇" for x in body["lines"])

        await eventually(new_line, timeout=10, interval=0.2)
        assert (await ok(await api.get(f"{base}/lines")))["summary"]["total"] == GUANGHAN_TOWNSHIPS

        # --- a plan whose every task is accepted: PlanAccepted ---------------------------------
        small = {"plan": {"id": "small-plan", "title": "小计划", "scope": "510681", "issued": "2024-03-01"},
                 "tasks": [{"no": "1", "title": "唯一任务", "lead": "市民政局", "due": "2024-12"}]}
        await ok(await api.post("/plans", content=json.dumps(small, ensure_ascii=False).encode(),
                                params={"file": "small.json"}))
        await ok(await api.post("/plans/small-plan/tasks/1/start", headers=by))
        await ok(await api.post("/plans/small-plan/tasks/1/submit", headers=by, json={
            "note": "完成", "evidence": [{"filename": "a.pdf", "content_base64": base64.b64encode(PDF).decode()}]}))
        accepted = await ok(await api.post("/plans/small-plan/tasks/1/accept", headers=by))
        assert accepted["plan_accepted"] is True

        async def plan_accepted() -> list[dict[str, Any]]:
            return [e["payload"] for e in bus.events("PlanAccepted")]

        assert (await eventually(plan_accepted, timeout=10))[0] == {
            "plan_id": "small-plan", "region_code": "510681", "by": "张三 (市民政局)"}
        evidence_id = (await ok(await api.get("/plans/small-plan/tasks/1")))["evidence"][0]["id"]
        download = await api.get(f"/plans/small-plan/evidence/{evidence_id}")
        assert download.content == PDF and download.headers["content-type"] == "application/pdf"
        assert str(uuid.UUID(evidence_id)) == evidence_id
