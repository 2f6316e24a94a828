"""HTTP bearer tokens on the real services (CSO_AUTH=jwt, real PostgreSQL and NATS): every write
endpoint of every service refuses a missing, badly signed or expired token (401) and a token without
the role (403); a token outside the region is refused (403) with nothing written (the service's
tables and outbox hashed before and after); the right role in the region goes through. Personal data
of the talent pool: masked for a county official, unmasked / exported for a pii_reader of the
region, erased on request (checked in the database) with the anonymous counts kept, each request
recorded, and none of it ever on the bus."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import nats
import pytest
from fastapi import FastAPI

from cso.auth import routes as served
from cso.settings import Settings
from services.notify import app as notify_app
from services.notify.routing import Clock as NotifyClock
from services.notify.settings import NotifySettings
from services.registry import app as registry_app
from services.targets import app as targets_app
from services.targets.evaluation import Clock as TargetsClock
from services.training import app as training_app
from services.training import domain
from services.training.commands import today
from tests.support import eventually, publish_divisions, recording, running
from tests.support.auth import (
    COMMUNITY,
    COUNTY,
    MORNING,
    OTHER,
    PLAN,
    SECRET,
    TOWNSHIP,
    Writes,
    apps,
    auth,
    db_fetch,
    errors,
    filing,
    secured,
    until,
)
from tests.support.scenario import credit_code

pytestmark = pytest.mark.integration

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


# --- the service's tables, hashed: "nothing written" ---------------------------------------------


# --- every write endpoint: 401 and 403 before anything happens -----------------------------------


WRITES = {
    "registry": {("POST", "/commands/{command}")},
    "training": {("POST", "/commands/{command}"), ("POST", "/sessions/{session_id}/attendance"),
                 ("DELETE", "/people/{person_id}")},
    "targets": {("PUT", "/targets/{target_id}"), ("DELETE", "/targets/{target_id}"), ("POST", "/plans"),
                ("PUT", "/plans/{plan_id}"), ("POST", "/plans/{plan_id}/tasks/{task_no}/evidence"),
                ("POST", "/plans/{plan_id}/tasks/{task_no}/lines/{line}/evidence"),
                ("POST", "/plans/{plan_id}/tasks/{task_no}/lines/{line}/{action}"),
                ("POST", "/plans/{plan_id}/tasks/{task_no}/{action}")},
    "notify": {("POST", "/subscriptions"), ("PUT", "/subscriptions/{sub_id}"),
               ("DELETE", "/subscriptions/{sub_id}"), ("POST", "/inbox/{recipient}/{message_id}/read")},
}
# Reads of personal data or of someone's inbox need a token whatever CSO_READ_AUTH says.
PERSONAL_READS = {
    "training": {("GET", "/people/{person_id}"), ("GET", "/people/{person_id}/trainings"),
                 ("GET", "/people/{person_id}/export"), ("GET", "/counties/{code}/pool")},
    "notify": {("GET", "/inbox/{recipient}")},
}
# Masked reads of a person or a pool need a token in the region, but no role.
ANY_ROLE = {("GET", "/people/{person_id}"), ("GET", "/people/{person_id}/trainings"), ("GET", "/counties/{code}/pool"),
            ("POST", "/receipts")}   # receipts: any token, for the events of its own source (its sub)
PARAMS = {"command": "file", "session_id": str(uuid.uuid4()), "person_id": str(uuid.uuid4()),
          "target_id": "t", "plan_id": "p", "task_no": "1", "line": TOWNSHIP, "action": "start",
          "sub_id": str(uuid.uuid4()), "recipient": "someone.else", "message_id": str(uuid.uuid4()),
          "code": COUNTY, "evidence_id": str(uuid.uuid4())}


async def test_every_write_endpoint_refuses_missing_bad_and_expired_tokens_and_wrong_roles() -> None:
    # No server is reached: the token is refused before the endpoint runs (the lifespan is not even
    # started, so a request that got past the token would fail on the database, not pass).
    settings = secured(Settings(database_url="postgresql://nobody@127.0.0.1:1/none",
                                nats_url="nats://127.0.0.1:1"))
    bad_key = "another-secret-that-is-32-bytes-long-too"
    cases = [
        ({}, 401, "authorization"),
        ({"Authorization": "Token abc"}, 401, "authorization"),
        ({"Authorization": "Bearer not-a-jwt"}, 401, "token"),
        (auth(COUNTY, "admin", key=bad_key), 401, "token"),                        # wrong signature
        (auth(COUNTY, "admin", exp_in=-3600), 401, "token.exp"),                   # expired
        ({"Authorization": "Bearer " + jwt.encode({"sub": "x", "exp": int(time.time()) + 60, "roles": []},
                                                  SECRET)}, 401, "token.region"),  # claim missing
    ]
    checked: dict[str, set[tuple[str, str]]] = {}
    for service, app in apps(settings).items():
        # Every route the app serves, those of its included routers too (cso.auth.routes).
        routes = [(m, path) for (m, path) in served(app) if m not in ("GET", "*")
                  or (m, path) in PERSONAL_READS.get(service, set())]
        checked[service] = set(routes)
        assert WRITES[service] <= checked[service], (service, WRITES[service] - checked[service])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
            for method, path in routes:
                url = path.format(**PARAMS)
                for headers, status, field in cases:
                    response = await client.request(method, url, headers=headers, json={})
                    assert response.status_code == status, (service, method, path, headers, response.text)
                    assert errors(response)[0][0] == field, (service, method, path, response.text)
                    if status == 401:
                        assert response.headers["www-authenticate"].startswith("Bearer")
                if (method, path) in ANY_ROLE:
                    continue
                # A good token without any role: 403 naming what is missing (the role, or whose inbox).
                response = await client.request(method, url, headers=auth(COUNTY, "viewer"), json={})
                assert response.status_code == 403, (service, method, path, response.text)
                assert errors(response)[0][0] in ("roles", "recipient"), (service, method, path, response.text)
    assert checked["training"] >= PERSONAL_READS["training"] and checked["notify"] >= PERSONAL_READS["notify"]


async def test_tokens_are_on_by_default_and_a_service_without_a_key_does_not_start(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CSO_AUTH", "CSO_JWT_SECRET", "CSO_JWT_PUBLIC_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().auth == "jwt" and Settings().read_auth == "open"
    for create in (registry_app.create_app, training_app.create_app, targets_app.create_app,
                   notify_app.create_app):
        with pytest.raises(ValueError) as refused:
            create(dataclasses.replace(settings, auth=Settings().auth, jwt_secret=""))
        # The message says what to set, and how to opt out.
        for named in ("CSO_AUTH=jwt (the default)", "CSO_JWT_SECRET", "CSO_JWT_PUBLIC_KEY", "CSO_AUTH=off"):
            assert named in str(refused.value), (named, str(refused.value))


# --- registry ----------------------------------------------------------------------------------

async def test_registry_commands_need_the_registrar_role_in_the_region(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(registry_app.run_migrations, settings)
    async with running(registry_app.create_app, secured(settings)) as (_, client):
        await publish_divisions(nc, settings.topology)
        await until(settings, "SELECT count(*) FROM registry.community", 4)
        api = Writes(client, settings, "registry")
        county, city, township = auth(COUNTY, "registrar"), auth("5106", "registrar"), auth(TOWNSHIP, "registrar")
        elsewhere, trainer = auth(OTHER, "registrar"), auth(COUNTY, "trainer")

        message = await api.refused(403, "region", "POST", "/commands/file", elsewhere, json=filing())
        assert message == f"{COMMUNITY} is outside the caller's region {OTHER}"
        await api.refused(403, "roles", "POST", "/commands/file", trainer, json=filing())
        await api.refused(401, "authorization", "POST", "/commands/file", {}, json=filing())
        await api.refused(401, "token.exp", "POST", "/commands/file", auth(COUNTY, "registrar", exp_in=-100),
                          json=filing())
        org = (await api.done("POST", "/commands/file", county, json=filing()))["id"]
        assert (await api.done("POST", "/commands/file", city, json=filing(filing_number="GH-2")))["ok"]
        assert (await api.done("POST", "/commands/file", auth("00", "admin"), json=filing(filing_number="GH-3")))

        # Commands about an existing record: the record's region decides.
        update = {"organization_id": org, "effective_on": "2023-07-01", "brand": True}
        await api.refused(403, "region", "POST", "/commands/update", elsewhere, json=update)
        await api.refused(403, "region", "POST", "/commands/update", auth("510681002", "registrar"), json=update)
        await api.refused(403, "region", "POST", "/commands/establish_hub", elsewhere, json={
            "organization_id": org, "region_code": TOWNSHIP, "established_on": "2023-08-01"})
        await api.refused(403, "region", "POST", "/commands/register", elsewhere, json={
            "organization_id": org, "name": "西城社区文体协会", "community_code": COMMUNITY,
            "social_credit_code": credit_code(COUNTY, "1", 1), "legal_form": "social_group",
            "category": "culture_sports",
            "registered_on": "2023-06-01"})
        deregister = {"organization_id": org, "reason": "合并", "ended_on": "2023-09-01"}
        await api.refused(403, "region", "POST", "/commands/deregister", elsewhere, json=deregister)
        await api.done("POST", "/commands/update", township, json=update)
        await api.done("POST", "/commands/deregister", county, json=deregister)
        status = await db_fetch(settings, "SELECT status FROM registry.organization WHERE id = $1", uuid.UUID(org))
        assert status[0]["status"] == "deregistered"
        # Reads stay open by default.
        assert (await client.get(f"/organizations/{org}")).status_code == 200


async def test_receipts_answer_for_the_tokens_own_source(settings: Settings, nc: nats.NATS) -> None:
    """POST /receipts: a token's sub is the source it asks about; only admin names another."""
    from contracts import events as ev
    from contracts import make_event
    from tests.support import publish

    await asyncio.to_thread(registry_app.run_migrations, settings)
    async with running(registry_app.create_app, secured(settings)) as (_, client):
        await publish_divisions(nc, settings.topology)
        await until(settings, "SELECT count(*) FROM registry.community", 4)
        source = f"leshan-register-{uuid.uuid4().hex[:6]}"
        good = make_event(ev.OrganizationFiled(name="西城社区调解队", community_code=COMMUNITY,
                                               category=ev.Category.MEDIATION, filed_on="2024-02-01"), source=source)
        bad = make_event(ev.OrganizationFiled(name="无此社区服务队", community_code="510681001999",
                                              category=ev.Category.MEDIATION, filed_on="2024-02-01"), source=source)
        t = settings.topology
        for e in (good, bad):
            await publish(nc, t.intake_subject(source, e.type, e.region), e, msg_id=str(e.event_id))
        await until(settings, f"SELECT count(*) FROM registry.inbox WHERE event_id IN ('{good.event_id}', "
                              f"'{bad.event_id}')", 2)
        never = uuid.uuid4()
        ids = {"event_ids": [str(good.event_id), str(bad.event_id), str(never)]}

        mine = await client.post("/receipts", headers=auth(COUNTY, sub=source), json=ids)
        assert mine.status_code == 200, mine.text
        receipts = mine.json()["receipts"]
        assert [r["verdict"] for r in receipts] == ["accepted", "refused", "unknown"], receipts
        assert receipts[0]["type"] == "OrganizationFiled" and receipts[0]["region"] == COMMUNITY
        assert receipts[1]["field"] == "payload.community_code", receipts
        assert mine.json()["counts"] == {"accepted": 1, "refused": 1, "unknown": 1}
        # Another source learns nothing of them, and may not ask in this source's name.
        theirs = await client.post("/receipts", headers=auth(COUNTY, sub="someone-else"), json=ids)
        assert [r["verdict"] for r in theirs.json()["receipts"]] == ["unknown"] * 3
        named = await client.post("/receipts", headers=auth(COUNTY, sub="someone-else"), json=ids | {"source": source})
        assert named.status_code == 403 and errors(named)[0][0] == "source", named.text
        admin = await client.post("/receipts", headers=auth("00", "admin"), json=ids | {"source": source})
        assert [r["verdict"] for r in admin.json()["receipts"]] == ["accepted", "refused", "unknown"]
        assert (await client.post("/receipts", json=ids)).status_code == 401
        too_many = await client.post("/receipts", headers=auth(COUNTY, sub=source),
                                     json={"event_ids": [str(never)] * 10_001})
        assert too_many.status_code == 422 and errors(too_many)[0][0] == "event_ids", too_many.text
        # Over NATS, the subject names the source; the batch is smaller (one NATS message).
        reply = json.loads((await nc.request(t.receipts_query_subject(source), json.dumps(ids).encode(),
                                             timeout=10)).data)
        assert [r["verdict"] for r in reply["receipts"]] == ["accepted", "refused", "unknown"], reply
        over = json.loads((await nc.request(t.receipts_query_subject(source), json.dumps(
            {"event_ids": [str(never)] * 2_001}).encode(), timeout=10)).data)
        assert over["ok"] is False and over["errors"][0]["field"] == "event_ids", over


# --- training: commands ------------------------------------------------------------------------

async def nats_command(nc: nats.NATS, settings: Settings, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """The NATS request-reply path: guarded by NATS permissions, not by tokens."""
    reply = await nc.request(settings.topology.command_subject("training", name),
                             json.dumps(body, default=str).encode(), timeout=5)
    result: dict[str, Any] = json.loads(reply.data)
    assert result["ok"], result
    return result


def id_number(serial: int) -> str:
    first17 = f"{COUNTY}19850312{serial:03d}"
    return first17 + domain.id_check_character(first17)


def member(name: str, serial: int, **over: Any) -> dict[str, Any]:
    return {"county_code": COUNTY, "role": "cso_leader", "name": name, "id_number": id_number(serial),
            "phone": f"1380838{serial:04d}"} | over


def session(**over: Any) -> dict[str, Any]:
    return {"organizer_region": TOWNSHIP, "topic": "社区社会组织骨干能力提升培训",
            "starts_on": (today() - timedelta(days=3)).isoformat(),
            "ends_on": (today() - timedelta(days=1)).isoformat(), "capacity": 30} | over


def sheet(*rows: str) -> str:
    return "\r\n".join(["姓名,身份证号,手机号,签到", *rows]) + "\r\n"


@pytest.fixture
async def training(settings: Settings, nc: nats.NATS) -> AsyncIterator[httpx.AsyncClient]:
    await asyncio.to_thread(training_app.run_migrations, settings)
    async with running(training_app.create_app, secured(settings)) as (_, client):
        await publish_divisions(nc, settings.topology)
        await until(settings, "SELECT count(*) FROM training.township", 3)
        yield client


async def test_training_commands_need_the_trainer_role_in_the_region(
        training: httpx.AsyncClient, nc: nats.NATS, settings: Settings) -> None:
    api = Writes(training, settings, "training")
    alice = (await nats_command(nc, settings, "add_member", member("张丽华", 101)))["person_id"]
    past = (await nats_command(nc, settings, "schedule", session()))["id"]
    future = (await nats_command(nc, settings, "schedule", session(
        starts_on=(today() + timedelta(days=5)).isoformat(), ends_on=(today() + timedelta(days=6)).isoformat())))["id"]
    await nats_command(nc, settings, "enrol", {"session_id": past, "person_id": alice})
    county, township = auth(COUNTY, "trainer"), auth(TOWNSHIP, "trainer")
    elsewhere, registrar = auth(OTHER, "trainer"), auth(COUNTY, "registrar", "pii_reader")

    good_sheet = sheet(f"张丽华,{id_number(101)},13808380101,是")
    commands: list[tuple[str, dict[str, Any]]] = [
        ("add_member", member("李强", 102)),
        ("update_member", {"person_id": alice, "phone": "13900001111"}),
        ("remove_member", {"person_id": alice, "reason": "调离"}),
        ("schedule", session()),
        ("enrol", {"session_id": future, "person_id": alice}),
        ("withdraw", {"session_id": past, "person_id": alice}),
        ("attend", {"session_id": past, "person_id": alice}),
        ("complete", {"session_id": past}),
        ("cancel", {"session_id": future, "reason": "改期"}),
        ("record_exam", {"person_id": alice, "year": 2023, "passed": True}),
        ("select_outstanding", {"county_code": COUNTY, "year": 2023, "kind": "leader", "person_id": alice}),
        ("attendance_sheet", {"session_id": past, "sheet": good_sheet}),
    ]
    for name, body in commands:
        message = await api.refused(403, "region", "POST", f"/commands/{name}", elsewhere, json=body)
        assert message.endswith(f"is outside your region {OTHER}"), (name, message)
        await api.refused(403, "roles", "POST", f"/commands/{name}", registrar, json=body)
        await api.refused(401, "token", "POST", f"/commands/{name}", auth(COUNTY, "trainer", key="x" * 40),
                          json=body)
    await api.refused(403, "region", "POST", f"/sessions/{past}/attendance", elsewhere,
                      content=good_sheet.encode())
    await api.refused(403, "roles", "POST", f"/sessions/{past}/attendance", registrar, content=good_sheet.encode())
    # A township official may work on its township's sessions, not on the county's pool.
    await api.refused(403, "region", "POST", "/commands/add_member", township, json=member("李强", 102))
    assert (await api.refused(403, "region", "POST", "/commands/schedule", township,
                              json=session(organizer_region=COUNTY))) == f"{COUNTY} is outside your region {TOWNSHIP}"

    # In the region, with the role: every command goes through.
    bob = (await api.done("POST", "/commands/add_member", county, json=member("李强", 102)))["person_id"]
    await api.done("POST", "/commands/update_member", county, json={"person_id": bob, "phone": "13900001111"})
    await api.done("POST", "/commands/enrol", township, json={"session_id": past, "person_id": bob})
    await api.done("POST", "/commands/attend", township, json={"session_id": past, "person_id": bob,
                                                                "attended": False})
    await api.done("POST", "/commands/attendance_sheet", township, json={"session_id": past, "sheet": good_sheet})
    await api.done("POST", f"/sessions/{past}/attendance", county,
                   content=sheet(f"李强,{id_number(102)},,是").encode())
    await api.done("POST", "/commands/complete", township, json={"session_id": past})
    await api.done("POST", "/commands/enrol", county, json={"session_id": future, "person_id": alice})
    await api.done("POST", "/commands/withdraw", county, json={"session_id": future, "person_id": alice})
    await api.done("POST", "/commands/cancel", county, json={"session_id": future, "reason": "改期"})
    await api.done("POST", "/commands/schedule", county, json=session())
    await api.done("POST", "/commands/record_exam", county, json={"person_id": alice, "year": 2023, "passed": True})
    await api.done("POST", "/commands/select_outstanding", auth("51", "admin"),
                   json={"county_code": COUNTY, "year": 2023, "kind": "leader", "person_id": alice})
    await api.done("POST", "/commands/remove_member", county, json={"person_id": bob, "reason": "调离"})
    completions = await db_fetch(settings, "SELECT person_id FROM training.completion")
    assert {str(r["person_id"]) for r in completions} == {alice, bob}


# --- training: personal data -------------------------------------------------------------------

async def test_personal_data_masked_exported_erased_and_never_on_the_bus(
        training: httpx.AsyncClient, nc: nats.NATS, settings: Settings) -> None:
    t = settings.topology
    secrets = ("张丽华", "13808380101", id_number(101), id_number(101)[:14], "王芳", "13808380102")
    async with recording(nc, t.context_subjects("training"), t.stream("CSO_TRAINING")) as bus:
        alice = (await nats_command(nc, settings, "add_member", member("张丽华", 101)))["person_id"]
        carol = (await nats_command(nc, settings, "add_member", member("王芳", 102, role="volunteer")))["person_id"]
        past = (await nats_command(nc, settings, "schedule", session()))["id"]
        for person in (alice, carol):
            await nats_command(nc, settings, "enrol", {"session_id": past, "person_id": person})
            await nats_command(nc, settings, "attend", {"session_id": past, "person_id": person})
        await nats_command(nc, settings, "complete", {"session_id": past})
        await nats_command(nc, settings, "record_exam", {"person_id": alice, "year": 2023, "passed": True})
        # The removal reason is the official's free text: stored (erased with the person), while
        # the bus carries only a code (TalentPoolMemberRemoved.reason).
        await nats_command(nc, settings, "remove_member", {"person_id": carol, "reason": "王芳本人申请退出",
                                                           "reason_code": "resigned"})

        official = auth(COUNTY, "trainer", sub="gh.official")
        reader = auth(COUNTY, "pii_reader", sub="gh.privacy")
        # The calling system is the token's (its source claim): a header may only repeat it.
        desk = auth(COUNTY, "pii_reader", sub="gh.privacy", source="gh-privacy-desk")
        source = {"X-Cso-Source": "gh-privacy-desk"}
        forged = await training.get(f"/people/{alice}?unmasked=true", headers=reader | source)
        assert forged.status_code == 403 and errors(forged)[0][0] == "x-cso-source", forged.text

        # No token: refused; the county official: masked only.
        assert (await training.get(f"/people/{alice}")).status_code == 401
        assert (await training.get(f"/counties/{COUNTY}/pool")).status_code == 401
        seen = (await training.get(f"/people/{alice}", headers=official)).json()
        assert seen["name"] == "张**" and seen["phone"] == "138****0101"
        pool = await training.get(f"/counties/{COUNTY}/pool", headers=official)
        assert pool.status_code == 200 and "张丽华" not in pool.text and "13808380101" not in pool.text
        for url in (f"/people/{alice}?unmasked=true", f"/counties/{COUNTY}/pool?unmasked=true",
                    f"/people/{alice}/export"):
            response = await training.get(url, headers=official)
            assert response.status_code == 403 and errors(response)[0][0] == "roles", (url, response.text)
            assert "张丽华" not in response.text
        erase = await training.delete(f"/people/{alice}", headers=official)
        assert erase.status_code == 403 and errors(erase)[0][0] == "roles"
        # Admin may erase but not read; a pii_reader elsewhere gets nothing of this county.
        admin = auth("51", "admin", sub="sc.admin")
        assert (await training.get(f"/people/{alice}/export", headers=admin)).status_code == 403
        elsewhere = auth(OTHER, "pii_reader")
        for method, url in (("GET", f"/people/{alice}"), ("GET", f"/people/{alice}/export"),
                            ("GET", f"/people/{alice}/trainings"), ("DELETE", f"/people/{alice}"),
                            ("GET", f"/counties/{COUNTY}/pool?unmasked=true")):
            response = await training.request(method, url, headers=elsewhere)
            assert response.status_code == 403, (url, response.text)
            assert errors(response)[0][0] in ("region", "code") and OTHER in errors(response)[0][1]
        assert await db_fetch(settings, "SELECT * FROM training.personal_data_request") == []

        # The pii_reader of the county: in full, and everything held.
        full = (await training.get(f"/people/{alice}?unmasked=true", headers=desk | source)).json()
        assert full["name"] == "张丽华" and full["phone"] == "13808380101"
        unmasked_pool = (await training.get(f"/counties/{COUNTY}/pool?unmasked=true&include_removed=true",
                                            headers=reader)).json()
        assert {m["name"] for m in unmasked_pool["members"]} == {"张丽华", "王芳"}
        export = (await training.get(f"/people/{alice}/export", headers=desk)).json()
        assert export["person"]["name"] == "张丽华" and export["person"]["phone"] == "13808380101"
        assert export["person"]["id_masked"] == domain.mask_id(id_number(101))
        assert export["person"]["id_number_hashed"] is True and id_number(101) not in json.dumps(export)
        assert [m["county_code"] for m in export["memberships"]] == [COUNTY]
        assert [(x["session_id"], x["completion_id"] is not None) for x in export["trainings"]] == [(past, True)]
        assert [(x["year"], x["passed"]) for x in export["exams"]] == [(2023, True)]
        assert [(r["action"], r["sub"], r["source"]) for r in export["requests"]] == [
            ("read_unmasked", "gh.privacy", "gh-privacy-desk"), ("export", "gh.privacy", "gh-privacy-desk")]

        # Erasure (on the data subject's request): the personal fields go, the counts stay.
        async def counts() -> tuple[Any, ...]:
            pool = (await training.get(f"/counties/{COUNTY}/pool?include_removed=true", headers=official)).json()
            exams = (await training.get(f"/counties/{COUNTY}/exams")).json()["figures"]
            rows = await db_fetch(settings, "SELECT (SELECT count(*) FROM training.membership), "
                                            "(SELECT count(*) FROM training.completion), "
                                            "(SELECT count(*) FROM training.enrolment)")
            return pool["total"], pool["trained"], len(pool["members"]), json.dumps(exams), tuple(rows[0])

        before = await counts()
        carol_before = await db_fetch(settings, "SELECT name, phone, id_hash FROM training.person WHERE id = $1",
                                      uuid.UUID(carol))
        erased = await training.delete(f"/people/{carol}", headers=auth("51", "admin", sub="sc.admin",
                                                                         source="gh-privacy-desk"))
        assert erased.status_code == 200 and erased.json()["ok"], erased.text
        assert (await training.delete(f"/people/{alice}", headers=reader)).status_code == 200
        rows = await db_fetch(settings, "SELECT id, name, phone, id_hash, id_masked, erased_at FROM training.person")
        assert {str(r["id"]) for r in rows} == {alice, carol}
        for row in rows:
            assert (row["name"], row["phone"], row["id_hash"], row["id_masked"]) == (None, None, None, None), row
            assert row["erased_at"] is not None
        assert carol_before[0]["name"] == "王芳" and carol_before[0]["id_hash"] is not None
        reasons = await db_fetch(settings, "SELECT removal_reason FROM training.membership WHERE removal_reason "
                                           "IS NOT NULL")
        assert reasons == []
        assert await counts() == before
        later = (await training.get(f"/people/{alice}?unmasked=true", headers=reader)).json()
        assert later["name"] is None and later["phone"] is None and later["id_masked"] is None
        again = (await training.get(f"/people/{alice}/export", headers=reader)).json()
        assert again["person"]["name"] is None and again["person"]["erased_at"] is not None
        everything = json.dumps(await db_fetch(settings, "SELECT * FROM training.person"), default=str)
        assert not any(s in everything for s in secrets)
        # The same person enrolled again by ID number is a new person: nothing matches an erased one.
        back = await nats_command(nc, settings, "add_member", member("张丽华", 101))
        assert back["person_id"] != alice and back["new_person"] is True

        # Who asked, from where, when: recorded in training's schema.
        audit = await db_fetch(settings, "SELECT action, person_id, county_code, sub, region, roles, source, at "
                                         "FROM training.personal_data_request ORDER BY id")
        assert [(r["action"], str(r["person_id"]) if r["person_id"] else None, r["sub"], r["source"])
                for r in audit] == [
            ("read_unmasked", alice, "gh.privacy", "gh-privacy-desk"),
            ("read_unmasked", None, "gh.privacy", "gh.privacy"),      # no source claim: the sub
            ("export", alice, "gh.privacy", "gh-privacy-desk"),
            ("erase", carol, "sc.admin", "gh-privacy-desk"),
            ("erase", alice, "gh.privacy", "gh.privacy"),
            ("read_unmasked", alice, "gh.privacy", "gh.privacy"),
            ("export", alice, "gh.privacy", "gh.privacy")]
        assert all(r["county_code"] == COUNTY and r["at"] is not None for r in audit)
        assert audit[3]["roles"] == ["admin"] and audit[3]["region"] == "51"

        # Nothing personal ever on the bus, nor staged for it.
        staged = await db_fetch(settings, "SELECT data FROM training.outbox")
        assert len(staged) == 8     # 3 added, scheduled, 2 completed, exam, removed
        await eventually(lambda: _has(bus, len(staged)))
        texts = [m.data.decode() for m in bus.messages] + [bytes(r["data"]).decode() for r in staged]
        for text in texts:
            for secret in (*secrets, domain.mask_id(id_number(101))):
                assert secret not in text, (secret, text)


async def _has(bus: Any, n: int) -> bool:
    return len(bus.events()) >= n


# --- targets: the catalogue and plans ----------------------------------------------------------

def target(target_id: str, region: str = COUNTY) -> dict[str, Any]:
    return {"id": target_id, "title": "城市社区平均拥有社区社会组织不少于12个",
            "figure": "avg_orgs_per_urban_community", "kind": "urban", "scope_region": region,
            "threshold": 12, "start": "2021-01-01", "deadline": "2023-12-31", "source": "授权测试"}


PLAN_TABLES = ("target", "plan", "plan_revision", "plan_task", "plan_progress", "plan_task_history", "plan_evidence")


async def test_targets_and_plans_need_the_planner_role_in_the_region(
        settings: Settings, nc: nats.NATS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSO_TARGETS_PLANS", "none")
    await asyncio.to_thread(targets_app.run_migrations, settings)
    clock = TargetsClock(fixed=date(2024, 5, 20))
    async with running(lambda s: targets_app.create_app(s, clock), secured(settings)) as (_, client):
        await publish_divisions(nc, settings.topology)
        await until(settings, f"SELECT count(*) FROM targets.division WHERE code LIKE '{COUNTY}%'", 8)
        await until(settings, "SELECT count(*) > 0 FROM targets.target", True)   # the default catalogue
        api = Writes(client, settings, "targets", PLAN_TABLES, ("TaskStatusChanged", "PlanAccepted"))
        county, township = auth(COUNTY, "planner"), auth(TOWNSHIP, "planner")
        elsewhere, trainer = auth(OTHER, "planner"), auth(COUNTY, "trainer")

        # The catalogue.
        await api.refused(403, "region", "PUT", "/targets/auth-t", elsewhere, json=target("auth-t"))
        await api.refused(403, "roles", "PUT", "/targets/auth-t", trainer, json=target("auth-t"))
        await api.done("PUT", "/targets/auth-t", county, json=target("auth-t"))
        # Replacing a target of another region with one of one's own: the replaced one decides too.
        await api.refused(403, "region", "PUT", "/targets/auth-t", elsewhere, json=target("auth-t", "510104"))
        await api.refused(403, "region", "DELETE", "/targets/auth-t", elsewhere)
        await api.refused(403, "roles", "DELETE", "/targets/auth-t", trainer)
        assert (await api.done("DELETE", "/targets/auth-t", county))["retired"] is True

        # Plans: import, then work on a task or a line in its region, review in the plan's.
        body = json.dumps(PLAN, ensure_ascii=False).encode()
        await api.refused(403, "region", "POST", "/plans", elsewhere, content=body)
        await api.refused(403, "region", "POST", "/plans", township, content=body)
        await api.refused(403, "roles", "POST", "/plans", trainer, content=body)
        await api.done("POST", "/plans", county, content=body)
        changed = json.loads(body) | {"plan": PLAN["plan"] | {"title": "授权测试计划（修订）"}}
        await api.refused(403, "region", "PUT", "/plans/auth-plan", elsewhere,
                          content=json.dumps(changed, ensure_ascii=False).encode())
        await api.done("PUT", "/plans/auth-plan", county, content=json.dumps(changed, ensure_ascii=False).encode())

        by = {"X-Cso-By": "gh"}
        await api.refused(403, "region", "POST", "/plans/auth-plan/tasks/1/start", elsewhere | by)
        await api.refused(403, "region", "POST", "/plans/auth-plan/tasks/1/start", township | by)
        await api.refused(403, "roles", "POST", "/plans/auth-plan/tasks/1/start", trainer | by)
        await api.refused(403, "region", "POST", "/plans/auth-plan/tasks/1/evidence?filename=a.pdf",
                          elsewhere | by, content=PDF)
        await api.done("POST", "/plans/auth-plan/tasks/1/start", county | by)
        await api.done("POST", "/plans/auth-plan/tasks/1/evidence?filename=a.pdf", county | by, status=201,
                       content=PDF)
        await api.done("POST", "/plans/auth-plan/tasks/1/submit", county | by, json={"note": "完成"})
        await api.refused(403, "region", "POST", "/plans/auth-plan/tasks/1/accept", elsewhere | by)

        line = f"/plans/auth-plan/tasks/2/lines/{TOWNSHIP}"
        neighbour = "/plans/auth-plan/tasks/2/lines/510681002"
        await api.refused(403, "region", "POST", f"{neighbour}/start", township | by)
        await api.refused(403, "region", "POST", f"{neighbour}/evidence?filename=a.pdf", township | by, content=PDF)
        await api.done("POST", f"{line}/start", township | by)
        await api.done("POST", f"{line}/evidence?filename=a.pdf", township | by, status=201, content=PDF)
        await api.done("POST", f"{line}/submit", township | by, json={"note": "镇级完成"})
        await api.refused(403, "region", "POST", f"{line}/accept", township | by)     # not its own review
        await api.done("POST", f"{line}/accept", county | by)
        await api.done("POST", "/plans/auth-plan/tasks/1/accept", county | by)
        # Reads stay open by default.
        assert (await client.get("/plans/auth-plan")).status_code == 200


# --- notify ------------------------------------------------------------------------------------

NOTIFY_TABLES = ("subscription", "inbox_message", "delivery")


def subscription(recipient: str, region: str = COUNTY) -> dict[str, Any]:
    return {"recipient": recipient, "region": region, "channels": {"inbox": True}}


async def test_notify_subscriptions_and_inboxes(settings: Settings) -> None:
    await asyncio.to_thread(notify_app.run_migrations, settings)
    config = dict(smtp_host="127.0.0.1", smtp_port=1, poll_seconds=0.1, schedule_seconds=0.1)

    def create(s: Settings) -> FastAPI:
        return notify_app.create_app(NotifySettings.of(s, **config), clock=NotifyClock(fixed=MORNING))

    async with running(create, secured(settings)) as (_, client):
        api = Writes(client, settings, "notify", NOTIFY_TABLES)
        zhang = auth(COUNTY, "subscriber", sub="zhang.gh")
        admin = auth(COUNTY, "notify_admin", sub="gh.notify")
        elsewhere = auth(OTHER, "notify_admin", sub="cd.notify")

        await api.refused(403, "recipient", "POST", "/subscriptions", zhang, json=subscription("li.gh"))
        await api.refused(403, "region", "POST", "/subscriptions", zhang, json=subscription("zhang.gh", OTHER))
        await api.refused(403, "region", "POST", "/subscriptions", elsewhere, json=subscription("zhang.gh"))
        await api.refused(403, "roles", "POST", "/subscriptions", auth(COUNTY, "planner"),
                          json=subscription("official.gh"))
        mine = (await api.done("POST", "/subscriptions", zhang, status=201, json=subscription("zhang.gh")))["id"]
        theirs = (await api.done("POST", "/subscriptions", admin, status=201, json=subscription("li.gh")))["id"]

        await api.refused(403, "recipient", "PUT", f"/subscriptions/{theirs}", zhang, json=subscription("zhang.gh"))
        await api.refused(403, "region", "PUT", f"/subscriptions/{mine}", zhang,
                          json=subscription("zhang.gh", OTHER))
        await api.refused(403, "region", "PUT", f"/subscriptions/{mine}", elsewhere, json=subscription("zhang.gh"))
        await api.done("PUT", f"/subscriptions/{mine}", zhang, json=subscription("zhang.gh", TOWNSHIP))
        await api.refused(403, "recipient", "DELETE", f"/subscriptions/{theirs}", zhang)
        await api.refused(403, "region", "DELETE", f"/subscriptions/{theirs}", elsewhere)
        await api.done("DELETE", f"/subscriptions/{theirs}", admin)

        # An inbox is its recipient's: a message for zhang, read by zhang (or a notify admin) only.
        message = uuid.uuid4()
        db = await asyncpg.connect(settings.database_url)
        try:
            await db.execute(
                "INSERT INTO notify.delivery (id, event_id, subscription_id, channel, kind, region, recipient, "
                "subject, body, data, status) VALUES ($1, $2, $3, 'inbox', 'TargetStatusChanged', $4, 'zhang.gh', "
                "'目标状态', '正文', '{}', 'sent')", message, uuid.uuid4(), uuid.UUID(mine), TOWNSHIP)
            await db.execute(
                "INSERT INTO notify.inbox_message (id, recipient, subscription_id, event_id, kind, region, subject, "
                "body, data) SELECT id, recipient, subscription_id, event_id, kind, region, subject, body, data "
                "FROM notify.delivery WHERE id = $1", message)
        finally:
            await db.close()
        assert (await client.get("/inbox/zhang.gh")).status_code == 401
        assert (await client.get("/inbox/zhang.gh", headers=auth(COUNTY, "subscriber", sub="li.gh"))).status_code == 403
        assert len((await client.get("/inbox/zhang.gh", headers=zhang)).json()["items"]) == 1
        assert len((await client.get("/inbox/zhang.gh", headers=admin)).json()["items"]) == 1
        await api.refused(403, "recipient", "POST", f"/inbox/zhang.gh/{message}/read",
                          auth(COUNTY, "subscriber", sub="li.gh"))
        await api.refused(401, "authorization", "POST", f"/inbox/zhang.gh/{message}/read", {})
        read = await api.done("POST", f"/inbox/zhang.gh/{message}/read", zhang)
        assert read["ok"] and read["read_at"]


# --- reads scoped by configuration -------------------------------------------------------------

async def test_scoped_reads_of_coverage(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(registry_app.run_migrations, settings)
    async with running(registry_app.create_app, secured(settings, read_auth="scoped")) as (_, client):
        await publish_divisions(nc, settings.topology)
        await until(settings, "SELECT count(*) FROM registry.community", 4)
        url = f"/regions/{COUNTY}/organizations"
        assert (await client.get(url)).status_code == 401
        assert (await client.get(url, headers=auth(COUNTY))).status_code == 200          # any role may read
        assert (await client.get(url, headers=auth("5106"))).status_code == 200
        refused = await client.get(url, headers=auth(OTHER))
        assert refused.status_code == 403 and errors(refused) == [("code", f"{COUNTY} is outside your region {OTHER}")]
        assert (await client.get("/healthz")).status_code == 200

