"""Idempotent commands (cso/idempotency.py) on real NATS and PostgreSQL: a command sent again with
its Idempotency-Key answers the first reply and acts once, over HTTP and NATS request-reply, for
registry and training; at once too; another body with the same key is refused naming the header;
keys are the caller's own; they expire and are pruned."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import nats
import pytest

from cso import idempotency
from cso.database import make_engine
from cso.settings import Settings
from services.registry.app import create_app as registry_app
from services.registry.app import run_migrations as registry_migrations
from services.training.app import create_app as training_app
from services.training.app import run_migrations as training_migrations
from tests.support import eventually, publish_divisions, running

pytestmark = pytest.mark.integration

SECRET = "integration-test-secret-of-32-bytes-or-more"
COMMUNITY, TOWNSHIP = "510681001014", "510681001"
KEY = idempotency.HEADER


def token(sub: str) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": sub, "region": "510681", "roles": ["registrar"], "iat": now, "exp": now + 600}
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


def filing(**over: Any) -> dict[str, Any]:
    # The README's own example: no organization_id, so each run of the command makes one.
    return {"name": "西城社区舞蹈队", "community_code": COMMUNITY, "category": "culture_sports",
            "filed_on": "2023-03-01"} | over


def session(**over: Any) -> dict[str, Any]:
    return {"organizer_region": TOWNSHIP, "topic": "社区社会组织骨干能力提升培训",
            "starts_on": "2023-03-01", "ends_on": "2023-03-02", "capacity": 30} | over


async def count(settings: Settings, table: str) -> int:
    db = await asyncpg.connect(settings.database_url)
    try:
        return int(await db.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await db.close()


async def loaded(settings: Settings, table: str, n: int) -> None:
    async def check() -> bool:
        return await count(settings, table) == n

    await eventually(check)


@pytest.fixture
async def registry(settings: Settings, nc: nats.NATS) -> AsyncIterator[httpx.AsyncClient]:
    """registry with tokens on (CSO_AUTH=jwt): a key belongs to its token's subject."""
    await asyncio.to_thread(registry_migrations, settings)
    secured = dataclasses.replace(settings, auth="jwt", jwt_secret=SECRET)
    async with running(registry_app, secured) as (_, client):
        await publish_divisions(nc, settings.topology)
        await loaded(settings, "registry.community", 4)
        yield client


@pytest.fixture
async def training(settings: Settings, nc: nats.NATS) -> AsyncIterator[httpx.AsyncClient]:
    await asyncio.to_thread(training_migrations, settings)
    async with running(training_app, settings) as (_, client):
        await publish_divisions(nc, settings.topology)
        await loaded(settings, "training.township", 3)
        yield client


async def request(nc: nats.NATS, settings: Settings, service: str, command: str, body: dict[str, Any],
                  key: str | None) -> dict[str, Any]:
    reply = await nc.request(settings.topology.command_subject(service, command), json.dumps(body).encode(),
                             timeout=10, headers={KEY: key} if key else None)
    return json.loads(reply.data)  # type: ignore[no-any-return]


def refused_for_the_key(status: int, body: dict[str, Any]) -> bool:
    return status == 422 and [e["field"] for e in body["errors"]] == [KEY]


async def test_registry_http_retry_answers_the_first_reply(registry: httpx.AsyncClient,
                                                           settings: Settings) -> None:
    official = token("official.a") | {KEY: "file-0001"}
    first = await registry.post("/commands/file", json=filing(), headers=official)
    again = await registry.post("/commands/file", json=filing(), headers=official)
    assert first.status_code == again.status_code == 200, first.json()
    assert again.content == first.content
    assert await count(settings, "registry.organization") == 1

    # Three at once with one key: one effect, one reply for all.
    fresh = token("official.a") | {KEY: "file-0002"}
    replies = await asyncio.gather(*(registry.post("/commands/file", json=filing(), headers=fresh)
                                     for _ in range(3)))
    assert {r.status_code for r in replies} == {200}
    assert len({r.content for r in replies}) == 1 and replies[0].json()["id"] != first.json()["id"]
    assert await count(settings, "registry.organization") == 2

    # The same key with another body (or command) is refused, naming the header; nothing is written.
    other = await registry.post("/commands/file", json=filing(name="西城社区合唱团"), headers=official)
    assert refused_for_the_key(other.status_code, other.json()), other.json()
    ending = {"organization_id": first.json()["id"], "reason": "自行解散", "ended_on": "2024-04-01"}
    other_command = await registry.post("/commands/deregister", json=ending, headers=official)
    assert refused_for_the_key(other_command.status_code, other_command.json())
    assert (await registry.get(f"/organizations/{first.json()['id']}")).json()["status"] == "active"
    # Another caller's key of the same name is its own.
    colleague = await registry.post("/commands/file", json=filing(), headers=token("official.b") | {KEY: "file-0001"})
    assert colleague.status_code == 200 and colleague.json()["id"] != first.json()["id"]
    assert await count(settings, "registry.organization") == 3

    # A refusal by what is on record is kept too: the retry is told the same, and acts no more.
    unknown = {"organization_id": str(uuid.uuid4()), "reason": "自行解散", "ended_on": "2024-04-01"}
    gone = token("official.a") | {KEY: "deregister-0001"}
    refused = await registry.post("/commands/deregister", json=unknown, headers=gone)
    refused_again = await registry.post("/commands/deregister", json=unknown, headers=gone)
    assert refused.status_code == refused_again.status_code == 404
    assert refused_again.content == refused.content

    bad = await registry.post("/commands/file", json=filing(), headers=token("official.a") | {KEY: "a key"})
    assert refused_for_the_key(bad.status_code, bad.json())
    # Without a key, a command sent twice acts twice (what a key is for).
    for _ in range(2):
        assert (await registry.post("/commands/file", json=filing(), headers=token("official.a"))).status_code == 200
    assert await count(settings, "registry.organization") == 5


async def test_registry_nats_retry_answers_the_first_reply(registry: httpx.AsyncClient, nc: nats.NATS,
                                                           settings: Settings) -> None:
    first = await request(nc, settings, "registry", "file", filing(), "nats-0001")
    again = await request(nc, settings, "registry", "file", filing(), "nats-0001")
    assert first["ok"] and again == first
    together = await asyncio.gather(*(request(nc, settings, "registry", "file", filing(), "nats-0002")
                                      for _ in range(3)))
    assert together[0]["ok"] and all(r == together[0] for r in together)
    assert await count(settings, "registry.organization") == 2
    other = await request(nc, settings, "registry", "file", filing(name="西城社区合唱团"), "nats-0001")
    assert refused_for_the_key(422, other) and other["ok"] is False

    # An expired key runs the command again; expired keys are pruned.
    db = await asyncpg.connect(settings.database_url)
    try:
        await db.execute("UPDATE registry.idempotency SET created_at = now() - interval '25 hours' "
                         "WHERE key = 'nats-0001'")
    finally:
        await db.close()
    later = await request(nc, settings, "registry", "file", filing(), "nats-0001")
    assert later["ok"] and later["id"] != first["id"]
    assert await count(settings, "registry.organization") == 3
    db = await asyncpg.connect(settings.database_url)
    try:
        await db.execute("UPDATE registry.idempotency SET created_at = now() - interval '25 hours' "
                         "WHERE key = 'nats-0002'")
    finally:
        await db.close()
    engine = make_engine(settings.database_url)
    try:
        assert await idempotency.prune(engine, "registry", timedelta(hours=24)) == 1
    finally:
        await engine.dispose()
    assert await count(settings, "registry.idempotency") == 1


async def test_training_retry_answers_the_first_reply(training: httpx.AsyncClient, nc: nats.NATS,
                                                      settings: Settings) -> None:
    # HTTP (CSO_AUTH=off: a key belongs to the source named).
    first = await training.post("/commands/schedule", json=session(), headers={KEY: "schedule-1"})
    again = await training.post("/commands/schedule", json=session(), headers={KEY: "schedule-1"})
    assert first.status_code == again.status_code == 200 and again.content == first.content
    together = await asyncio.gather(*(training.post("/commands/schedule", json=session(),
                                                    headers={KEY: "schedule-2"}) for _ in range(3)))
    assert {r.status_code for r in together} == {200} and len({r.content for r in together}) == 1
    assert await count(settings, "training.session") == 2
    other = await training.post("/commands/schedule", json=session(capacity=31), headers={KEY: "schedule-1"})
    assert refused_for_the_key(other.status_code, other.json())
    elsewhere = await training.post("/commands/schedule", json=session(),
                                    headers={KEY: "schedule-1", "X-Cso-Source": "another-system"})
    assert elsewhere.status_code == 200 and elsewhere.json()["id"] != first.json()["id"]
    assert await count(settings, "training.session") == 3

    # NATS request-reply.
    by_nats = await asyncio.gather(*(request(nc, settings, "training", "schedule", session(), "schedule-3")
                                     for _ in range(3)))
    assert by_nats[0]["ok"] and all(r == by_nats[0] for r in by_nats)
    assert await request(nc, settings, "training", "schedule", session(), "schedule-3") == by_nats[0]
    mixed = await request(nc, settings, "training", "schedule", session(topic="另一个"), "schedule-3")
    assert refused_for_the_key(422, mixed)
    assert await count(settings, "training.session") == 4


async def test_an_attendance_sheet_sent_again_answers_its_first_report(training: httpx.AsyncClient, nc: nats.NATS,
                                                                       settings: Settings) -> None:
    from services.training import domain
    from services.training.commands import today

    first17 = "51068119850312101"
    id_number = first17 + domain.id_check_character(first17)
    person = await request(nc, settings, "training", "add_member", {
        "county_code": "510681", "role": "cso_leader", "name": "张丽华", "id_number": id_number}, None)
    past = (today() - timedelta(days=2)).isoformat()
    held = await request(nc, settings, "training", "schedule", session(starts_on=past, ends_on=past), None)
    assert (await request(nc, settings, "training", "enrol", {
        "session_id": held["id"], "person_id": person["person_id"]}, None))["ok"]
    sheet = f"姓名,身份证号,手机号,签到\r\n张丽华,{id_number},,是\r\n".encode()
    url = f"/sessions/{held['id']}/attendance"

    async def attended() -> bool:
        roster = (await training.get(f"/sessions/{held['id']}")).json()["roster"]
        return bool(roster[0]["attended"])

    first = await training.post(url, content=sheet, headers={KEY: "sheet-1"})
    assert first.status_code == 200 and first.json()["applied"] is True, first.json()
    assert await attended()
    # Corrected since by a command: the sheet sent again with its key answers its first report
    # and does not write again.
    assert (await request(nc, settings, "training", "attend", {
        "session_id": held["id"], "person_id": person["person_id"], "attended": False}, None))["ok"]
    again = await training.post(url, content=sheet, headers={KEY: "sheet-1"})
    assert again.status_code == 200 and again.content == first.content
    assert not await attended()
    # The query is part of what the key stands for: a dry run under the same key is another request.
    dry = await training.post(url, content=sheet, params={"dry_run": "true"}, headers={KEY: "sheet-1"})
    assert refused_for_the_key(dry.status_code, dry.json())
    # Without the key the sheet is applied again.
    assert (await training.post(url, content=sheet)).json()["applied"] is True
    assert await attended()
