"""training against real NATS JetStream and PostgreSQL: the session lifecycle and its event, pool
rules, attendance sheets, hub leaders from registry, cancellation, idempotence, dead letters, and
personal data kept off the bus."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import asyncpg
import httpx
import nats
import openpyxl
import pytest

from contracts import events as ev
from contracts import make_event
from cso.settings import Settings
from services.registry.app import create_app as registry_app
from services.registry.app import run_migrations as registry_migrations
from services.training import domain
from services.training.app import create_app, run_migrations
from services.training.commands import today
from tests.support import eventually, publish, publish_divisions, recording, running

pytestmark = pytest.mark.integration

COUNTY = "510681"
TOWNSHIP = "510681001"
COMMUNITY = "510681001014"


def id_number(birth: str = "19850312", serial: int = 123, region: str = COUNTY) -> str:
    first17 = f"{region}{birth}{serial:03d}"
    return first17 + domain.id_check_character(first17)


def days_ago(n: int) -> str:
    return (today() - timedelta(days=n)).isoformat()


async def db_value(settings: Settings, sql: str, *args: Any) -> Any:
    db = await asyncpg.connect(settings.database_url)
    try:
        return await db.fetchval(sql, *args)
    finally:
        await db.close()


async def divisions_loaded(settings: Settings, schema: str, table: str, n: int) -> None:
    async def loaded() -> bool:
        return bool(await db_value(settings, f"SELECT count(*) FROM {schema}.{table}") == n)

    await eventually(loaded)


@pytest.fixture
async def training(settings: Settings, nc: nats.NATS) -> AsyncIterator[httpx.AsyncClient]:
    await asyncio.to_thread(run_migrations, settings)
    async with running(create_app, settings) as (_, client):
        await publish_divisions(nc, settings.topology)
        await divisions_loaded(settings, "training", "township", 3)
        yield client


async def command(nc: nats.NATS, settings: Settings, name: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await nc.request(settings.topology.command_subject("training", name),
                             json.dumps(body, default=str).encode(), timeout=5)
    return json.loads(reply.data)  # type: ignore[no-any-return]


def member(name: str = "张丽华", serial: int = 123, **over: Any) -> dict[str, Any]:
    return {"county_code": COUNTY, "role": "cso_leader", "name": name,
            "id_number": id_number(serial=serial), "phone": f"1380838{serial:04d}"} | over


async def add(nc: nats.NATS, settings: Settings, **over: Any) -> str:
    reply = await command(nc, settings, "add_member", member(**over))
    assert reply["ok"], reply
    return str(reply["person_id"])


async def schedule(nc: nats.NATS, settings: Settings, **over: Any) -> str:
    body = {"organizer_region": TOWNSHIP, "topic": "社区社会组织骨干能力提升培训",
            "starts_on": days_ago(3), "ends_on": days_ago(1), "capacity": 30, "mode": "on_site"} | over
    reply = await command(nc, settings, "schedule", body)
    assert reply["ok"], reply
    return str(reply["id"])


def fields(reply: dict[str, Any]) -> list[str]:
    assert reply["ok"] is False, reply
    return [e["field"] for e in reply["errors"]]


async def _count(bus: Any, n: int, type_: str | None = None) -> bool:
    return len(bus.events(type_)) >= n


async def test_session_lifecycle(training: httpx.AsyncClient, nc: nats.NATS, settings: Settings) -> None:
    t = settings.topology
    secrets = {"name": "张丽华", "id": id_number(serial=123), "phone": "13808380123"}
    async with recording(nc, t.context_subjects("training"), t.stream("CSO_TRAINING")) as bus:
        # One member over HTTP, one over NATS: the same command either way.
        http = await training.post("/commands/add_member", json=member(), headers={"x-cso-source": "county-ui"})
        assert http.status_code == 200, http.json()
        alice = http.json()["person_id"]
        bob = await add(nc, settings, name="李强", serial=456, role="social_worker")
        session = await schedule(nc, settings)
        for person in (alice, bob):
            enrolled = await command(nc, settings, "enrol", {"session_id": session, "person_id": person})
            assert enrolled["ok"], enrolled
        assert (await command(nc, settings, "attend", {"session_id": session, "person_id": alice}))["ok"]
        assert (await command(nc, settings, "attend", {"session_id": session, "person_id": bob,
                                                       "attended": False}))["ok"]
        done = await command(nc, settings, "complete", {"session_id": session})
        assert done["ok"] and done["completed"] == 1, done
        again = await command(nc, settings, "complete", {"session_id": session})
        assert fields(again) == ["session_id"] and "completed" in again["errors"][0]["message"]

        await eventually(lambda: _count(bus, 1, "TrainingCompleted"))
        await eventually(lambda: _count(bus, 4))
        assert [e["type"] for e in bus.events()] == ["TalentPoolMemberAdded", "TalentPoolMemberAdded",
                                                     "TrainingSessionScheduled", "TrainingCompleted"]
        [completed] = bus.events("TrainingCompleted")
        assert completed["payload"]["person_id"] == alice
        assert completed["payload"]["session_id"] == session
        assert completed["payload"]["organizer_region"] == TOWNSHIP
        assert completed["payload"]["county_code"] == COUNTY
        assert completed["payload"]["completed_on"] == days_ago(1)
        assert completed["region"] == TOWNSHIP and completed["source"] == "nats-command"
        added = bus.events("TalentPoolMemberAdded")
        assert added[0]["source"] == "county-ui" and added[0]["payload"] == {
            "person_id": alice, "county_code": COUNTY, "role": "cso_leader", "added_on": today().isoformat()}
        assert {m.subject for m in bus.messages if json.loads(m.data)["type"] == "TrainingCompleted"} == {
            t.event_subject("TrainingCompleted", TOWNSHIP)}
        # Personal data never travels: not the name, the phone, the ID number, nor its masked form.
        masked = domain.mask_id(secrets["id"])
        for m in bus.messages:
            text = m.data.decode()
            for secret in (*secrets.values(), masked, "李强", secrets["id"][:14]):
                assert secret not in text, (secret, text)

    view = (await training.get(f"/sessions/{session}")).json()
    assert view["status"] == "completed" and view["enrolled"] == 2 and view["completed"] == 1
    roster = {r["person_id"]: r for r in view["roster"]}
    assert roster[alice]["attended"] is True and roster[alice]["completed_on"] == days_ago(1)
    assert roster[bob]["attended"] is False and roster[bob]["completion_id"] is None
    assert roster[alice]["name"] == "张**"
    history = (await training.get(f"/people/{alice}/trainings")).json()
    assert history["completed"] == 1 and history["items"][0]["session_id"] == session
    assert (await training.get(f"/people/{bob}/trainings")).json()["completed"] == 0
    pool = (await training.get(f"/counties/{COUNTY}/pool")).json()
    assert pool["total"] == 2 and pool["trained"] == 1
    counts = {m["person_id"]: m["trainings"] for m in pool["members"]}
    assert counts == {alice: 1, bob: 0}
    assert {m["id_masked"] for m in pool["members"]} == {domain.mask_id(secrets["id"]),
                                                         domain.mask_id(id_number(serial=456))}
    assert "13808380123" not in json.dumps(pool, ensure_ascii=False)
    assert "张丽华" not in json.dumps(pool, ensure_ascii=False)
    person = (await training.get(f"/people/{alice}")).json()
    assert person["phone"] == "138****0123" and person["memberships"][0]["county_code"] == COUNTY
    # The ID number itself is nowhere in training's tables: only its keyed hash and masked form.
    dump = await db_value(settings, "SELECT string_agg(t::text, ' ') FROM training.person t")
    assert secrets["id"] not in dump and masked in dump
    listed = (await training.get(f"/regions/{COUNTY}/sessions")).json()["items"]
    assert [(i["id"], i["enrolled"], i["completions"]) for i in listed] == [(session, 2, 1)]
    assert (await training.get(f"/sessions/{uuid.uuid4()}")).status_code == 404
    assert (await training.get(f"/people/{uuid.uuid4()}/trainings")).status_code == 404
    assert (await training.get("/counties/519999/pool")).status_code == 404
    assert (await training.get("/counties/51x/pool")).status_code == 422
    assert (await training.get("/healthz")).json()["service"] == "training"
    assert (await training.get("/readyz")).status_code == 200
    assert "cso_outbox_published_total" in (await training.get("/metrics/")).text


async def test_capacity_and_double_enrolment(training: httpx.AsyncClient, nc: nats.NATS,
                                             settings: Settings) -> None:
    alice = await add(nc, settings)
    bob = await add(nc, settings, name="李强", serial=456)
    session = await schedule(nc, settings, capacity=1)
    assert (await command(nc, settings, "enrol", {"session_id": session, "person_id": alice}))["ok"]
    twice = await command(nc, settings, "enrol", {"session_id": session, "person_id": alice})
    assert fields(twice) == ["person_id"] and "already enrolled" in twice["errors"][0]["message"]
    full = await command(nc, settings, "enrol", {"session_id": session, "person_id": bob})
    assert fields(full) == ["capacity"] and "1 of 1" in full["errors"][0]["message"]
    http = await training.post("/commands/enrol", json={"session_id": session, "person_id": bob})
    assert http.status_code == 409 and http.json()["errors"] == full["errors"]
    # A withdrawal frees the place.
    assert (await command(nc, settings, "withdraw", {"session_id": session, "person_id": alice}))["ok"]
    assert (await command(nc, settings, "enrol", {"session_id": session, "person_id": bob}))["ok"]
    unknown = await training.post("/commands/enrol", json={"session_id": str(uuid.uuid4()), "person_id": bob})
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "session_id"
    nobody = await command(nc, settings, "enrol", {"session_id": session, "person_id": str(uuid.uuid4())})
    assert fields(nobody) == ["person_id"]
    # Attendance is for enrolled people, and a session with nobody attending cannot complete.
    absent = await command(nc, settings, "attend", {"session_id": session, "person_id": alice})
    assert fields(absent) == ["person_id"]
    assert fields(await command(nc, settings, "complete", {"session_id": session})) == ["session_id"]
    later = await schedule(nc, settings, starts_on=(today() + timedelta(days=5)).isoformat(),
                           ends_on=(today() + timedelta(days=6)).isoformat())
    assert (await command(nc, settings, "enrol", {"session_id": later, "person_id": bob}))["ok"]
    early = await command(nc, settings, "attend", {"session_id": later, "person_id": bob})
    assert fields(early) == ["session_id"] and "starts on" in early["errors"][0]["message"]


def sheet(rows: list[str], header: str = "姓名,身份证号,手机号,签到") -> str:
    return "\r\n".join([header, *rows]) + "\r\n"


async def test_attendance_sheet(training: httpx.AsyncClient, nc: nats.NATS, settings: Settings) -> None:
    alice = await add(nc, settings, name="张丽华", serial=101)
    bob = await add(nc, settings, name="李强", serial=102, id_number=None, phone="13900001111")
    carol = await add(nc, settings, name="王芳", serial=103)
    outsider = await add(nc, settings, name="赵敏", serial=104)
    session = await schedule(nc, settings)
    for person in (alice, bob, carol):
        assert (await command(nc, settings, "enrol", {"session_id": session, "person_id": person}))["ok"]
    assert outsider
    bad_checksum = id_number(serial=105)[:17] + ("0" if id_number(serial=105)[17] != "0" else "1")
    csv_text = sheet([
        f"张丽华,{id_number(serial=101)},13808380101,是",        # row 2: good
        "李强,,139-0000-1111,√",                                  # row 3: good, by phone and name
        f"王芳,{id_number(serial=103)},,否",                      # row 4: good, absent
        f"赵敏,{id_number(serial=104)},,是",                      # row 5: not enrolled
        f"钱多多,{id_number(serial=199)},,是",                    # row 6: unknown person
        f"孙悟空,{bad_checksum},,是",                             # row 7: bad checksum
        f"张丽华,{id_number(serial=101)},,是",                    # row 8: duplicate of row 2
        ",,,",                                                    # row 9: blank, skipped
    ])
    gbk = csv_text.encode("gbk")
    dry = await training.post(f"/sessions/{session}/attendance", params={"dry_run": "true"}, content=gbk,
                              headers={"content-type": "text/csv"})
    assert dry.status_code == 200, dry.json()
    report = dry.json()
    assert report["ok"] is False and report["applied"] is False and report["rows"] == 7
    assert {(r["row"], r["reason"]) for r in report["rejected"]} == {
        (5, "not_enrolled"), (6, "unknown_person"), (7, "bad_id_checksum"), (8, "duplicate_row")}
    assert next(r for r in report["rejected"] if r["row"] == 8)["message"] == "same person as row 2"
    assert [(a["row"], a["person_id"], a["attended"]) for a in report["attendance"]] == [
        (2, alice, True), (3, bob, True), (4, carol, False)]
    assert bad_checksum not in dry.text and id_number(serial=101) not in dry.text

    # Not a dry run: any rejected row and nothing is written.
    real = await training.post(f"/sessions/{session}/attendance", content=gbk)
    assert real.status_code == 422 and real.json()["applied"] is False and real.json()["ok"] is False
    assert real.json()["rejected"] == report["rejected"] and real.json()["written"] == []
    assert [(r["row"], r["reason"]) for r in real.json()["not_written"]] == [
        (2, "held"), (3, "held"), (4, "held"), (5, "not_enrolled"), (6, "unknown_person"),
        (7, "bad_id_checksum"), (8, "duplicate_row")]
    roster = (await training.get(f"/sessions/{session}")).json()["roster"]
    assert all(r["attended"] is None for r in roster)

    # The good rows alone, UTF-8 with a BOM, over NATS: applied in full.
    good = "\ufeff" + sheet(csv_text.split("\r\n")[1:4])
    applied = await command(nc, settings, "attendance_sheet", {
        "session_id": session, "sheet_base64": base64.b64encode(good.encode("utf-8")).decode()})
    assert applied["ok"] and applied["applied"] is True, applied
    roster = {r["person_id"]: r["attended"] for r in (await training.get(f"/sessions/{session}")).json()["roster"]}
    assert roster == {alice: True, bob: True, carol: False}

    # An explicit partial acceptance writes the good rows and reports the others.
    # An .xlsx workbook (a title row above the header, a phone typed as a number); the reply says
    # what was written and what was not: ok, as rows were written, with 207 for "in part".
    book = openpyxl.Workbook()
    ws = book.active
    assert ws is not None
    ws.append(["2024年第一期培训签到表"])
    ws.append(["姓名", "身份证号", "手机号", "签到"])
    ws.append(["王芳", id_number(serial=103), None, "√"])
    ws.append(["无名氏", None, None, "是"])
    ws.append(["李强", None, 13900001111, True])
    xlsx = io.BytesIO()
    book.save(xlsx)
    partial = await training.post(f"/sessions/{session}/attendance", params={"accept_partial": "true"},
                                  content=xlsx.getvalue())
    assert partial.status_code == 207 and partial.json()["applied"] is True and partial.json()["ok"] is True
    assert [(r["row"], r["reason"]) for r in partial.json()["rejected"]] == [(4, "no_identity")]
    assert partial.json()["written"] == [3, 5]
    assert [(r["row"], r["field"], r["reason"]) for r in partial.json()["not_written"]] == [
        (4, "身份证号", "no_identity")]
    view = (await training.get(f"/sessions/{session}")).json()
    assert view["attended"] == 3
    missing = await training.post(f"/sessions/{session}/attendance", content="姓名,身份证号\n张三,1\n".encode())
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "签到"
    nowhere = await training.post(f"/sessions/{uuid.uuid4()}/attendance", content=gbk)
    assert nowhere.status_code == 404


async def test_hub_leader_enters_the_pool(settings: Settings, nc: nats.NATS) -> None:
    t = settings.topology
    await asyncio.to_thread(registry_migrations, settings)
    await asyncio.to_thread(run_migrations, settings)
    async with running(registry_app, settings) as (_, registry), \
            running(create_app, settings) as (_, training), \
            recording(nc, t.context_subjects("training"), t.stream("CSO_TRAINING")) as bus:
        await publish_divisions(nc, t)
        await divisions_loaded(settings, "registry", "community", 4)
        await divisions_loaded(settings, "training", "township", 3)
        org = (await registry.post("/commands/file", json={
            "name": "雒城街道社区社会组织联合会", "community_code": COMMUNITY, "category": "resident_services",
            "filed_on": "2022-03-01"})).json()["id"]
        leader = str(uuid.uuid4())
        hub = (await registry.post("/commands/establish_hub", json={
            "organization_id": org, "region_code": TOWNSHIP, "leader_person_id": leader,
            "established_on": "2022-06-01"})).json()
        assert hub["ok"], hub

        async def in_pool() -> list[dict[str, Any]]:
            members = (await training.get(f"/counties/{COUNTY}/pool")).json()["members"]
            return [m for m in members if m["person_id"] == leader]

        [entry] = await eventually(in_pool)
        assert entry["role"] == "hub_leader" and entry["organization_id"] == org
        assert entry["added_on"] == "2022-06-01" and entry["name"] is None
        await eventually(lambda: _count(bus, 1, "TalentPoolMemberAdded"))
        [added] = bus.events("TalentPoolMemberAdded")
        assert added["payload"] == {"person_id": leader, "county_code": COUNTY, "role": "hub_leader",
                                    "added_on": "2022-06-01"}

        # The same HubEstablished again (a redelivery under another message id), and another event
        # about the same hub: neither changes anything.
        raw = await db_value(settings, "SELECT data FROM registry.outbox WHERE type = 'HubEstablished'")
        subject = t.event_subject("HubEstablished", TOWNSHIP)
        await publish(nc, subject, bytes(raw), msg_id="again")
        copy = json.loads(bytes(raw))
        twin = make_event(ev.HubEstablished.model_validate(copy["payload"]), source="replay")
        await publish(nc, subject, twin)

        async def applied() -> bool:
            # filed, hub, the copy (a duplicate by event id), the twin (same hub, another event id)
            seq = await db_value(settings, "SELECT last_seq FROM training.consumer_position "
                                           "WHERE stream LIKE '%CSO_REGISTRY'")
            return bool(seq == 4)

        await eventually(applied)
        await asyncio.sleep(0.5)
        assert await db_value(settings, "SELECT count(*) FROM training.inbox") == 3 + 1   # + divisions
        assert await db_value(settings, "SELECT count(*) FROM training.membership") == 1
        assert await db_value(settings, "SELECT count(*) FROM training.outbox") == 1
        assert len(bus.events()) == 1
        # Organizations from registry: an outstanding organization must be one of the county's.
        chosen = await training.post("/commands/select_outstanding", json={
            "county_code": COUNTY, "year": 2023, "kind": "organization", "organization_id": org,
            "title": "优秀社区社会组织"})
        assert chosen.status_code == 200, chosen.json()
        picked = (await training.get(f"/counties/{COUNTY}/outstanding", params={"year": 2023})).json()
        assert picked["counts"] == {"2023": {"organization": 1, "leader": 0}}
        # … and announced, so that targets counts it (a "≥10 per year" target, issue 21).
        await eventually(lambda: _count(bus, 1, "OutstandingOrganizationSelected"))
        [selected] = bus.events("OutstandingOrganizationSelected")
        assert selected["payload"] == {"organization_id": org, "county_code": COUNTY, "year": 2023}


async def test_cancelled_session_counts_nothing(training: httpx.AsyncClient, nc: nats.NATS,
                                                settings: Settings) -> None:
    t = settings.topology
    alice = await add(nc, settings)
    session = await schedule(nc, settings)
    assert (await command(nc, settings, "enrol", {"session_id": session, "person_id": alice}))["ok"]
    assert (await command(nc, settings, "attend", {"session_id": session, "person_id": alice}))["ok"]
    cancelled = await command(nc, settings, "cancel", {"session_id": session, "reason": "场地不可用"})
    assert cancelled["ok"] and cancelled["released"] == 1, cancelled
    assert fields(await command(nc, settings, "complete", {"session_id": session})) == ["session_id"]
    assert fields(await command(nc, settings, "enrol", {"session_id": session, "person_id": alice})) == [
        "session_id"]
    view = (await training.get(f"/sessions/{session}")).json()
    assert view["status"] == "cancelled" and view["enrolled"] == 0 and view["completed"] == 0
    assert [r["status"] for r in view["roster"]] == ["released"]
    pool = (await training.get(f"/counties/{COUNTY}/pool")).json()
    assert pool["trained"] == 0 and pool["members"][0]["trainings"] == 0
    # A completed session cannot be cancelled.
    other = await schedule(nc, settings)
    assert (await command(nc, settings, "enrol", {"session_id": other, "person_id": alice}))["ok"]
    assert (await command(nc, settings, "attend", {"session_id": other, "person_id": alice}))["ok"]
    assert (await command(nc, settings, "complete", {"session_id": other}))["ok"]
    late = await command(nc, settings, "cancel", {"session_id": other, "reason": "补录"})
    assert fields(late) == ["session_id"] and "cannot be cancelled" in late["errors"][0]["message"]
    async with recording(nc, t.context_subjects("training"), t.stream("CSO_TRAINING")) as bus:
        await eventually(lambda: _count(bus, 4))
        await asyncio.sleep(0.3)
        completions = bus.events("TrainingCompleted")
        assert [c["payload"]["session_id"] for c in completions] == [other]


async def test_pool_rules(training: httpx.AsyncClient, nc: nats.NATS, settings: Settings) -> None:
    t = settings.topology
    bad = id_number()[:17] + ("0" if id_number()[17] != "0" else "1")
    for number, hint in ((bad, "check character"), ("510681198502301234", "birth date"),
                         ("51068119850312", "18 characters")):
        reply = await command(nc, settings, "add_member", member(id_number=number))
        assert fields(reply) == ["id_number"] and hint in reply["errors"][0]["message"], reply
        assert number not in json.dumps(reply)
    http = await training.post("/commands/add_member", json=member(id_number=bad))
    assert http.status_code == 422 and http.json()["errors"][0]["field"] == "id_number"
    assert fields(await command(nc, settings, "add_member", member(id_number=None, phone=None))) == ["id_number"]
    assert fields(await command(nc, settings, "add_member", member(county_code="510699"))) == ["county_code"]
    assert fields(await command(nc, settings, "add_member", member(role="mayor"))) == ["role"]
    assert fields(await command(nc, settings, "add_member", member(nickname="x"))) == ["nickname"]

    alice = await add(nc, settings)
    # Once per county: the same ID number (written with a lower-case x or spaces makes no difference),
    # or the same phone and name without an ID number.
    same_id = await command(nc, settings, "add_member", member(name="张丽", phone="13900000000"))
    assert fields(same_id) == ["id_number"] and alice in same_id["errors"][0]["message"]
    same_contact = await command(nc, settings, "add_member", member(id_number=None))
    assert fields(same_contact) == ["phone"]
    by_id = await command(nc, settings, "add_member", member(person_id=alice))
    assert fields(by_id) == ["person_id"]
    # Update, remove with a reason, and come back: the same person id.
    assert (await command(nc, settings, "update_member", {"person_id": alice, "role": "volunteer",
                                                          "phone": "+86 139 0808 0808"}))["ok"]
    assert (await training.get(f"/people/{alice}")).json()["phone"] == "139****0808"
    assert fields(await command(nc, settings, "remove_member", {"person_id": alice})) == ["reason"]
    removed = await command(nc, settings, "remove_member", {"person_id": alice, "reason": "调离本县",
                                                            "reason_code": "left_county"})
    assert removed["ok"] and removed["region"] == COUNTY
    assert fields(await command(nc, settings, "remove_member", {"person_id": alice, "reason": "again"})) == [
        "person_id"]
    back = await command(nc, settings, "add_member", member(role="social_worker"))
    assert back["ok"] and back["person_id"] == alice and back["new_person"] is False
    person = (await training.get(f"/people/{alice}")).json()
    assert [(m["role"], m["removal_reason"]) for m in person["memberships"]] == [
        ("volunteer", "调离本县"), ("social_worker", None)]
    # Exams: takers and passes per county and year.
    for year, passed in ((2022, False), (2023, True)):
        assert (await command(nc, settings, "record_exam", {"person_id": alice, "year": year,
                                                            "passed": passed}))["ok"]
    exams = (await training.get(f"/counties/{COUNTY}/exams")).json()["figures"]
    assert [(e["year"], e["takers"], e["passed"]) for e in exams] == [(2022, 1, 0), (2023, 1, 1)]
    leader = await training.post("/commands/select_outstanding", json={
        "county_code": COUNTY, "year": 2023, "kind": "leader", "person_id": alice})
    assert leader.status_code == 200, leader.json()
    again = await training.post("/commands/select_outstanding", json={
        "county_code": COUNTY, "year": 2023, "kind": "leader", "person_id": alice})
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "person_id"
    async with recording(nc, t.context_subjects("training"), t.stream("CSO_TRAINING")) as bus:
        await eventually(lambda: _count(bus, 5))
        assert [(e["type"], e["payload"]["person_id"]) for e in bus.events()] == [
            ("TalentPoolMemberAdded", alice), ("TalentPoolMemberRemoved", alice),
            ("TalentPoolMemberAdded", alice), ("QualificationExamRecorded", alice),
            ("QualificationExamRecorded", alice)]
        assert [(e["payload"]["year"], e["payload"]["passed"]) for e in bus.events("QualificationExamRecorded")] \
            == [(2022, False), (2023, True)]
        # The bus carries the code; the official's words stay in training (they may name people).
        assert bus.events("TalentPoolMemberRemoved")[0]["payload"]["reason"] == "left_county"


async def test_commands_refused_with_the_field(training: httpx.AsyncClient, nc: nats.NATS,
                                               settings: Settings) -> None:
    unknown_region = await command(nc, settings, "schedule", {
        "organizer_region": "510681999", "topic": "x", "starts_on": "2023-01-01", "ends_on": "2023-01-01",
        "capacity": 1})
    assert fields(unknown_region) == ["organizer_region"]
    community = await command(nc, settings, "schedule", {
        "organizer_region": COMMUNITY, "topic": "x", "starts_on": "2023-01-01", "ends_on": "2023-01-01",
        "capacity": 1})
    assert fields(community) == ["organizer_region"]
    backwards = await command(nc, settings, "schedule", {
        "organizer_region": "5106", "topic": "x", "starts_on": "2023-01-02", "ends_on": "2023-01-01",
        "capacity": 1})
    assert fields(backwards) == ["ends_on"]
    city = await command(nc, settings, "schedule", {
        "organizer_region": "5106", "topic": "德阳市培训", "starts_on": "2023-01-01", "ends_on": "2023-01-01",
        "capacity": 1, "mode": "online"})
    assert city["ok"] and city["region"] == "5106"
    assert fields(await command(nc, settings, "nonsense", {})) == ["command"]
    raw = await nc.request(settings.topology.command_subject("training", "enrol"), b"{nope", timeout=5)
    assert json.loads(raw.data)["errors"][0]["field"] == "$"
    bad_source = await training.post("/commands/schedule", headers={"x-cso-source": "a b"}, json={
        "organizer_region": "5106", "topic": "x", "starts_on": "2023-01-01", "ends_on": "2023-01-01",
        "capacity": 1})
    assert bad_source.status_code == 422 and bad_source.json()["errors"][0]["field"] == "source"


async def test_poison_message_is_dead_lettered(training: httpx.AsyncClient, nc: nats.NATS,
                                               settings: Settings) -> None:
    t = settings.topology
    async with recording(nc, t.deadletter_subject("training"), t.stream("CSO_DEADLETTER")) as dead:
        await publish(nc, t.event_subject("HubEstablished", TOWNSHIP), b"not json at all")
        await eventually(lambda: _count(dead, 1))
        record = json.loads(dead.messages[0].data)
        assert record["service"] == "training" and "not JSON" in record["reason"]
    assert (await training.get("/readyz")).status_code == 200


async def test_dates_are_checked(training: httpx.AsyncClient, nc: nats.NATS, settings: Settings) -> None:
    alice = await add(nc, settings, added_on=str(date(2023, 1, 10)))
    removed = await command(nc, settings, "remove_member", {"person_id": alice, "reason": "x",
                                                            "removed_on": "2023-01-01"})
    assert fields(removed) == ["removed_on"]
    session = await schedule(nc, settings, starts_on=days_ago(10), ends_on=days_ago(9))
    assert (await command(nc, settings, "enrol", {"session_id": session, "person_id": alice}))["ok"]
    assert (await command(nc, settings, "attend", {"session_id": session, "person_id": alice}))["ok"]
    early = await command(nc, settings, "complete", {"session_id": session, "completed_on": days_ago(20)})
    assert fields(early) == ["completed_on"]
    done = await command(nc, settings, "complete", {"session_id": session, "person_ids": [alice]})
    assert done["ok"] and done["completed_on"] == days_ago(9)


async def test_completions_move_the_person_times_targets(settings: Settings, nc: nats.NATS) -> None:
    """Training → NATS → targets: completions at a Leshan session move the figure of Leshan's
    "1,000 person-times by 2025" target, and flip a target set on the same figure to met."""
    from datetime import date

    from cso.divisions import DEMO_DIVISIONS
    from cso.divisions import publish_divisions as publish_demo
    from services.targets import app as targets
    from services.targets.evaluation import Clock

    await asyncio.to_thread(run_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)
    clock = Clock(fixed=date(2025, 12, 1))  # before the Leshan deadline, so its status follows the figure
    async with running(create_app, settings), \
            running(lambda s: targets.create_app(s, clock), settings) as (_, api):
        await publish_demo(nc.jetstream(), settings.topology, DEMO_DIVISIONS)
        await divisions_loaded(settings, "training", "county", 12)
        assert (await api.put("/targets/test-leshan-3-person-times", json={
            "id": "test-leshan-3-person-times", "title": "3 人次", "figure": "training_person_times",
            "scope_region": "5111", "threshold": 3, "start": "2025-01-01", "deadline": "2027-12-31",
            "source": "test"})).status_code == 200
        people = [await add(nc, settings, name=f"骨干{i}", serial=200 + i, county_code="511102",
                            id_number=id_number(serial=200 + i, region="511102")) for i in range(3)]
        session = await schedule(nc, settings, organizer_region="5111")
        for person in people:
            assert (await command(nc, settings, "enrol", {"session_id": session, "person_id": person}))["ok"]
            assert (await command(nc, settings, "attend", {"session_id": session, "person_id": person}))["ok"]
        assert (await command(nc, settings, "complete", {"session_id": session}))["ok"]

        async def moved() -> dict[str, Any] | None:
            rows = {r["target_id"]: r for r in (await api.get("/regions/5111/targets")).json()}
            leshan, mine = rows.get("leshan-training-person-times"), rows.get("test-leshan-3-person-times")
            if leshan and mine and leshan["value"] == 3 and mine["status"] == "met":
                return leshan
            return None

        leshan = await eventually(moved, timeout=30)
        assert leshan["status"] == "at_risk"  # 3 of 1,000 by 2025-12-31
        body = (await api.get("/coverage/511102")).json()
        assert body["counters"]["pool_members"] == 3 and body["counters"]["pool_members_trained"] == 3

        # Exam passes travel as QualificationExamRecorded; a correction replaces the earlier record.
        for passed in (False, True):
            reply = await command(nc, settings, "record_exam", {"person_id": people[0], "year": 2025,
                                                                 "passed": passed})
            assert reply["ok"], reply
        assert (await command(nc, settings, "record_exam", {"person_id": people[1], "year": 2025,
                                                            "passed": False}))["ok"]

        async def passes() -> int:
            counters = (await api.get("/coverage/511102")).json()["counters"]
            return int(counters.get("exam_passes", 0))

        await eventually(passes, timeout=20)
        await asyncio.sleep(1)
        assert await passes() == 1


async def test_trainees_beyond_the_pools_count_in_person_times(settings: Settings, nc: nats.NATS) -> None:
    """Issue 21: a 社区工作者 in no pool is recorded as a trainee, completes a session beside a pool
    member, and counts in training_person_times (at the organizer's region) while the pool-only
    figure counts the pool member alone; their data stays personal (masked, not on the bus)."""
    from datetime import date

    from cso.divisions import DEMO_DIVISIONS
    from cso.divisions import publish_divisions as publish_demo
    from services.targets import app as targets
    from services.targets.evaluation import Clock

    await asyncio.to_thread(run_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)
    county = "511102"
    t = settings.topology
    async with running(create_app, settings) as (_, client), \
            running(lambda s: targets.create_app(s, Clock(fixed=date(2025, 12, 1))), settings) as (_, api), \
            recording(nc, t.context_subjects("training"), t.stream("CSO_TRAINING")) as bus:
        await publish_demo(nc.jetstream(), settings.topology, DEMO_DIVISIONS)
        await divisions_loaded(settings, "training", "county", 12)
        pooled = await add(nc, settings, name="骨干甲", serial=301, county_code=county,
                           id_number=id_number(serial=301, region=county))
        refused = await command(nc, settings, "add_trainee", {
            "county_code": county, "role": "teacher", "name": "王芳", "phone": "13808381302"})
        assert fields(refused) == ["role"]
        worker = await command(nc, settings, "add_trainee", {
            "county_code": county, "role": "community_worker", "name": "王芳",
            "id_number": id_number(serial=302, region=county), "phone": "13808381302"})
        assert worker["ok"] and worker["new_person"], worker
        trainee = worker["person_id"]
        session = await schedule(nc, settings, organizer_region=county)
        for person in (pooled, trainee):
            assert (await command(nc, settings, "enrol", {"session_id": session, "person_id": person}))["ok"]
            assert (await command(nc, settings, "attend", {"session_id": session, "person_id": person}))["ok"]
        done = await command(nc, settings, "complete", {"session_id": session})
        assert done["ok"] and done["completed"] == 2, done

        await eventually(lambda: _count(bus, 2, "TrainingCompleted"))
        completed = {e["payload"]["person_id"]: e["payload"] for e in bus.events("TrainingCompleted")}
        assert (completed[trainee]["trainee_role"], completed[trainee]["pool_member"],
                completed[trainee]["county_code"]) == ("community_worker", False, county)
        assert (completed[pooled]["trainee_role"], completed[pooled]["pool_member"]) == ("cso_leader", True)
        assert "王芳" not in json.dumps([e for e in bus.events()], ensure_ascii=False)

        async def counted() -> dict[str, Any] | None:
            counters: dict[str, Any] = (await api.get(f"/coverage/{county}")).json()["counters"]
            return counters if counters.get("training_person_times") == 2 else None

        counters = await eventually(counted, timeout=30)
        assert counters["pool_training_person_times"] == 1      # the pool member's only
        assert counters["pool_members"] == 1 and counters["pool_members_trained"] == 1

        async def leshan() -> bool:
            rows = {r["target_id"]: r for r in (await api.get("/regions/5111/targets")).json()}
            return bool(rows["leshan-training-person-times"]["value"] == 2)

        await eventually(leshan, timeout=30)    # Leshan's 1,000 person-times count every trainee

    # The trainee is no pool member, and is personal data like one: masked, seen in their county.
    async with running(create_app, settings) as (_, client):
        pool = (await client.get(f"/counties/{county}/pool")).json()
        assert [m["person_id"] for m in pool["members"]] == [pooled]
        person = (await client.get(f"/people/{trainee}")).json()
        assert person["name"] == "王*" and person["phone"] == "138****1302"
        assert person["trainee"]["role"] == "community_worker" and person["memberships"] == []
        assert (await client.get(f"/people/{trainee}/trainings")).json()["completed"] == 1
