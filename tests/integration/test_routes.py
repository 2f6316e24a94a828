"""Every HTTP route of every service declares one access class (cso/auth.py), and the class is
enforced: read from the real apps (each built by its create_app), so a route added without a class
fails here, and a service with one does not start. Then, on real servers with CSO_AUTH=jwt, the
findings of issue 18: notify's subscriptions and deliveries (e-mail addresses, webhook URLs, the end
of webhook secrets) need a token, their recipient's or a notify_admin's of their region (finding 1),
and with CSO_AUTH=off they are masked; an event's source is the token's, not a free header (finding 4).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from datetime import date
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from fastapi import FastAPI

from cso.auth import PERSONAL, Access, routes, unclassified
from cso.service import Runtime
from cso.settings import Settings
from services.notify import app as notify_app
from services.notify.routing import Clock as NotifyClock
from services.notify.settings import NotifySettings
from services.registry import app as registry_app
from services.targets import app as targets_app
from services.targets.evaluation import Clock as TargetsClock
from tests.support import publish_divisions, running
from tests.support.auth import (
    COMMUNITY,
    COUNTY,
    MORNING,
    OTHER,
    PLAN,
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

pytestmark = pytest.mark.integration

NOWHERE = Settings(database_url="postgresql://nobody@127.0.0.1:1/none", nats_url="nats://127.0.0.1:1")
PARAMS = {"command": "file", "session_id": str(uuid.uuid4()), "person_id": str(uuid.uuid4()),
          "target_id": "t", "plan_id": "p", "task_no": "1", "line": TOWNSHIP, "action": "start",
          "sub_id": str(uuid.uuid4()), "recipient": "someone", "message_id": str(uuid.uuid4()),
          "code": COUNTY, "region": COUNTY, "org_id": str(uuid.uuid4()), "evidence_id": "e", "unit": "u",
          "project_id": str(uuid.uuid4())}
# What must be personal data whatever else changes: a person, a pool, a roster, contacts, inboxes.
PERSONAL_PATHS = ("/people/", "/pool", "/sessions/{session_id}", "/subscriptions", "/deliveries", "/inbox/")


def url_of(path: str) -> str:
    return path.format(**PARAMS) + ("?under=" + COUNTY if path == "/targets/at-risk" else "") + (
        "?figure=orgs" if path.endswith("/series") else "")


def test_every_route_of_every_service_declares_one_class() -> None:
    for service, app in apps(secured(NOWHERE)).items():
        assert unclassified(app) == [], service
        for (method, path), access in routes(app).items():
            # Writes are never GETs, GETs never writes; what names people is personal data.
            assert (access is Access.WRITE) == (method not in ("GET", "*")) or (
                access is Access.PERSONAL and method == "DELETE"), (service, method, path, access)
            if any(p in path for p in PERSONAL_PATHS) and method == "GET":
                assert access is Access.PERSONAL, (service, method, path, access)
        # The class is visible in the API's own description too.
        operations = app.openapi()["paths"]["/healthz"]["get"]
        assert operations["x-cso-access"] == "health" and operations["tags"] == ["health"]


async def test_each_class_is_enforced() -> None:
    # No server is reached: what is refused is refused before the route runs; what is let through
    # fails on the database (503), which is not a refusal.
    for read_auth in ("open", "scoped"):
        for service, app in apps(secured(NOWHERE, read_auth=read_auth)).items():
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
                for (method, path), access in routes(app).items():
                    if method == "*" or path in ("/readyz", "/docs/oauth2-redirect"):
                        continue
                    response = await client.request(method, url_of(path), json={})
                    where = (read_auth, service, method, path, response.text[:200])
                    if access is Access.HEALTH:
                        assert response.status_code == 200, where
                    elif access in (Access.PERSONAL, Access.WRITE) or read_auth == "scoped":
                        assert response.status_code == 401, where
                        assert errors(response)[0][0] == "authorization", where
                    else:
                        assert response.status_code not in (401, 403), where
                # Metrics are health: never a token.
                assert (await client.get("/metrics/")).status_code == 200


async def test_a_route_without_a_class_is_refused_and_its_service_does_not_start() -> None:
    runtime = Runtime("unclassified", "unclassified", secured(NOWHERE))
    app = runtime.http("a service with a forgotten route")

    @app.get("/people/{person_id}/gossip")
    async def gossip(person_id: str) -> dict[str, str]:
        return {"person": person_id}

    @app.get("/people/{person_id}/ok", **PERSONAL)
    async def ok(person_id: str) -> dict[str, str]:
        return {"person": person_id}

    assert unclassified(app) == ["GET /people/{person_id}/gossip"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        refused = await client.get("/people/1/gossip", headers=auth(COUNTY, "pii_reader"))
        assert refused.status_code == 403 and errors(refused)[0][0] == "route"
        assert (await client.get("/people/1/ok", headers=auth(COUNTY))).status_code == 200
    with pytest.raises(RuntimeError, match=r"routes without an access class \(cso/auth.py\): "
                                           r"GET /people/\{person_id\}/gossip"):
        async with app.router.lifespan_context(app):
            pass


async def test_auth_off_is_loud_in_the_log_and_in_readyz(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cso.service"):
        app = registry_app.create_app(dataclasses.replace(NOWHERE, auth="off"))
    assert any("CSO_AUTH=off" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        assert (await client.get("/readyz")).json()["auth"] == "off"
    secured_app = registry_app.create_app(secured(NOWHERE))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=secured_app), base_url="http://svc") as client:
        assert (await client.get("/readyz")).json()["auth"] == "jwt"


# --- finding 1: notify's personal data ---------------------------------------------------------

def subscription(recipient: str, region: str = COUNTY) -> dict[str, Any]:
    return {"recipient": recipient, "region": region, "channels": {
        "email": f"{recipient}@example.cn", "inbox": True,
        "webhook": {"url": f"https://hooks.example.cn/{recipient}/token-abc",
                    "secret": f"{recipient}-webhook-secret-value"}}}


async def add_delivery(settings: Settings, sub_id: str, recipient: str) -> None:
    db = await asyncpg.connect(settings.database_url)
    try:
        await db.execute(
            "INSERT INTO notify.delivery (id, event_id, subscription_id, channel, kind, region, recipient, "
            "subject, body, data, status, last_error) VALUES ($1, $2, $3, 'email', 'TargetStatusChanged', $4, $5, "
            "'目标状态', '正文', '{}', 'failed', $6)", uuid.uuid4(), uuid.uuid4(), uuid.UUID(sub_id), TOWNSHIP,
            recipient, f"550 mailbox <{recipient}@example.cn> unknown; see https://hooks.example.cn/{recipient}/x")
    finally:
        await db.close()


def notify_factory(s: Settings) -> FastAPI:
    config = NotifySettings.of(s, smtp_host="127.0.0.1", smtp_port=1, poll_seconds=3600, schedule_seconds=3600)
    return notify_app.create_app(config, clock=NotifyClock(fixed=MORNING))


async def test_notify_personal_data_needs_its_recipients_or_an_admins_token(settings: Settings) -> None:
    await asyncio.to_thread(notify_app.run_migrations, settings)
    async with running(notify_factory, secured(settings)) as (_, client):
        zhang, li = auth(COUNTY, "subscriber", sub="zhang"), auth(COUNTY, "subscriber", sub="li")
        admin = auth(COUNTY, "notify_admin", sub="gh.notify")
        elsewhere = auth(OTHER, "notify_admin", sub="cd.notify")
        mine = (await client.post("/subscriptions", json=subscription("zhang"), headers=zhang)).json()["id"]
        theirs = (await client.post("/subscriptions", json=subscription("li"), headers=li)).json()["id"]
        await add_delivery(settings, mine, "zhang")
        await add_delivery(settings, theirs, "li")

        # No token: nothing, whatever CSO_READ_AUTH says (it says open here).
        for url in ("/subscriptions", f"/subscriptions/{mine}", "/deliveries", "/subscriptions?recipient=zhang"):
            response = await client.get(url)
            assert response.status_code == 401 and errors(response)[0][0] == "authorization", url
            assert "example.cn" not in response.text

        # A subscriber: their own, and nobody else's.
        own = await client.get(f"/subscriptions/{mine}", headers=zhang)
        assert own.status_code == 200 and own.json()["channels"]["email"] == "zhang@example.cn"
        another = await client.get(f"/subscriptions/{theirs}", headers=zhang)
        assert another.status_code == 403 and errors(another)[0][0] == "recipient" and "li@" not in another.text
        listed = (await client.get("/subscriptions", headers=zhang)).json()["items"]
        assert [s["id"] for s in listed] == [mine]
        asked = await client.get("/subscriptions?recipient=li", headers=zhang)
        assert asked.status_code == 403 and errors(asked)[0][0] == "recipient"
        deliveries = (await client.get("/deliveries", headers=zhang)).json()["items"]
        assert {d["recipient"] for d in deliveries} == {"zhang"}
        assert (await client.get(f"/deliveries?subscription_id={theirs}", headers=zhang)).json()["items"] == []

        # A notify_admin of the region: everyone's there; of another region: nothing of these.
        assert (await client.get(f"/subscriptions/{theirs}", headers=admin)).json()["channels"]["email"] == \
            "li@example.cn"
        assert {s["id"] for s in (await client.get("/subscriptions", headers=admin)).json()["items"]} == {mine, theirs}
        assert {d["recipient"] for d in (await client.get("/deliveries", headers=admin)).json()["items"]} == \
            {"zhang", "li"}
        refused = await client.get(f"/subscriptions/{theirs}", headers=elsewhere)
        assert refused.status_code == 403 and errors(refused)[0][0] == "region"
        assert (await client.get("/subscriptions", headers=elsewhere)).json()["items"] == []
        assert (await client.get("/deliveries", headers=elsewhere)).json()["items"] == []
        outside = await client.get(f"/subscriptions?region={COUNTY}", headers=elsewhere)
        assert outside.status_code == 403 and errors(outside)[0][0] == "region"
        # `admin` may change subscriptions, but reads nobody's contacts (as with other personal data).
        assert (await client.get(f"/subscriptions/{theirs}", headers=auth("51", "admin"))).status_code == 403


async def test_notify_personal_data_is_masked_with_auth_off(settings: Settings) -> None:
    await asyncio.to_thread(notify_app.run_migrations, settings)
    async with running(notify_factory, dataclasses.replace(settings, auth="off")) as (_, client):
        made = (await client.post("/subscriptions", json=subscription("zhang"))).json()
        assert made["channels"]["webhook"]["secret"] == "zhang-webhook-secret-value"    # shown once, to its maker
        await add_delivery(settings, made["id"], "zhang")
        for url in (f"/subscriptions/{made['id']}", "/subscriptions", "/deliveries"):
            response = await client.get(url)
            assert response.status_code == 200, url
            for secret in ("zhang@example.cn", "token-abc", "alue", "/zhang/x"):
                assert secret not in response.text, (url, secret, response.text)
        seen = (await client.get(f"/subscriptions/{made['id']}")).json()["channels"]
        assert seen["email"] == "z***@example.cn" and seen["webhook"] == {"url": "https://hooks.example.cn/…",
                                                                          "secret": None}
        error = (await client.get("/deliveries")).json()["items"][0]["last_error"]
        assert error == "550 mailbox <z***@example.cn> unknown; see https://hooks.example.cn/…"


# --- finding 4: the source of an event is the caller's -----------------------------------------

async def sources(settings: Settings) -> list[str]:
    rows = await db_fetch(settings, "SELECT data FROM registry.outbox ORDER BY seq")
    return [json.loads(bytes(r["data"]))["source"] for r in rows]


async def test_an_events_source_is_the_tokens_not_a_header(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(registry_app.run_migrations, settings)
    async with running(registry_app.create_app, secured(settings)) as (_, client):
        await publish_divisions(nc, settings.topology)
        await until(settings, "SELECT count(*) FROM registry.community", 4)
        api = Writes(client, settings, "registry")
        plain = auth(COUNTY, "registrar", sub="gh.registrar")
        system = auth(COUNTY, "registrar", sub="gh.registrar", source="guanghan-register")

        message = await api.refused(403, "x-cso-source", "POST", "/commands/file",
                                    plain | {"X-Cso-Source": "leshan-register"}, json=filing())
        assert "'leshan-register' is not your source 'gh.registrar'" in message
        await api.refused(403, "x-cso-source", "POST", "/commands/file",
                          system | {"X-Cso-Source": "gh.registrar"}, json=filing())
        await api.done("POST", "/commands/file", plain, json=filing(filing_number="1"))
        await api.done("POST", "/commands/file", plain | {"X-Cso-Source": "gh.registrar"},
                       json=filing(filing_number="2"))
        await api.done("POST", "/commands/file", system, json=filing(filing_number="3"))
        assert await sources(settings) == ["gh.registrar", "gh.registrar", "guanghan-register"]
        # A subject that cannot be a source needs a source claim: refused, naming the claim.
        await api.refused(403, "token.sub", "POST", "/commands/file", auth(COUNTY, "registrar", sub="张 三"),
                          json=filing(filing_number="4"))


async def test_with_auth_off_the_header_names_the_source(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(registry_app.run_migrations, settings)
    async with running(registry_app.create_app, dataclasses.replace(settings, auth="off")) as (_, client):
        await publish_divisions(nc, settings.topology)
        await until(settings, "SELECT count(*) FROM registry.community", 4)
        assert (await client.post("/commands/file", json=filing(), headers={"X-Cso-Source": "leshan-register"})
                ).status_code == 200
        assert (await client.post("/commands/file", json=filing(filing_number="2"))).status_code == 200
        assert await sources(settings) == ["leshan-register", "http-api"]
        assert COMMUNITY.startswith(COUNTY)


# --- scoped reads: a record named by id is checked against its own region ----------------------

async def test_scoped_reads_check_the_region_of_a_record_named_by_id(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(registry_app.run_migrations, settings)
    async with running(registry_app.create_app, secured(settings, read_auth="scoped")) as (_, client):
        await publish_divisions(nc, settings.topology)
        await until(settings, "SELECT count(*) FROM registry.community", 4)
        filed = await client.post("/commands/file", json=filing(), headers=auth(COUNTY, "registrar"))
        url = f"/organizations/{filed.json()['id']}"
        assert (await client.get(url)).status_code == 401
        refused = await client.get(url, headers=auth(OTHER))
        assert refused.status_code == 403 and errors(refused)[0][0] == "organization_id", refused.text
        assert "西城社区" not in refused.text
        for region in (TOWNSHIP, COUNTY, "51", "00"):
            assert (await client.get(url, headers=auth(region))).status_code == 200, region
        assert (await client.get(url, headers=auth("510681002"))).status_code == 403   # another township


async def test_scoped_reads_of_a_plan(settings: Settings, nc: nats.NATS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSO_TARGETS_PLANS", "none")
    await asyncio.to_thread(targets_app.run_migrations, settings)
    clock = TargetsClock(fixed=date(2024, 5, 20))
    scoped = secured(settings, read_auth="scoped")
    async with running(lambda s: targets_app.create_app(s, clock), scoped) as (_, client):
        await publish_divisions(nc, settings.topology)
        await until(settings, f"SELECT count(*) FROM targets.division WHERE code LIKE '{COUNTY}%'", 8)
        imported = await client.post("/plans", content=json.dumps(PLAN, ensure_ascii=False).encode(),
                                     headers=auth(COUNTY, "planner"))
        assert imported.status_code == 200, imported.text
        for url in ("/plans/auth-plan", "/plans/auth-plan/revisions", "/plans/auth-plan/tasks/1",
                    "/plans/auth-plan/tasks/2/lines"):
            assert (await client.get(url)).status_code == 401, url
            refused = await client.get(url, headers=auth(OTHER))
            assert refused.status_code == 403 and errors(refused)[0][0] == "plan_id", (url, refused.text)
            assert (await client.get(url, headers=auth(COUNTY))).status_code == 200, url
        assert (await client.get("/plans/auth-plan", headers=auth("5106"))).status_code == 200
