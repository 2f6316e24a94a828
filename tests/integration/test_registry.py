"""registry against real NATS JetStream and PostgreSQL: commands, facts from outside, rejections,
dead letters, idempotence and the outbox."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from contracts import events as ev
from contracts import make_event
from contracts.deadletter import DeadLetter
from cso.settings import Settings
from services.registry.app import create_app, run_migrations
from tests.support import eventually, publish, publish_divisions, recording, running
from tests.support.scenario import credit_code

pytestmark = pytest.mark.integration

COMMUNITY = "510681001014"


@pytest.fixture
async def registry(settings: Settings, nc: nats.NATS) -> AsyncIterator[httpx.AsyncClient]:
    await asyncio.to_thread(run_migrations, settings)
    async with running(create_app, settings) as (_, client):
        await publish_divisions(nc, settings.topology)

        async def loaded() -> bool:
            db = await asyncpg.connect(settings.database_url)
            try:
                return bool(await db.fetchval("SELECT count(*) FROM registry.community") == 4)
            finally:
                await db.close()

        await eventually(loaded)
        yield client


async def command(nc: nats.NATS, settings: Settings, name: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await nc.request(settings.topology.command_subject("registry", name),
                             json.dumps(body, default=str).encode(), timeout=5)
    return json.loads(reply.data)  # type: ignore[no-any-return]


def filing(**over: Any) -> dict[str, Any]:
    return {"name": "西城社区舞蹈队", "community_code": COMMUNITY, "category": "culture_sports",
            "filed_on": "2023-03-01", "filing_number": "GH-2023-001"} | over


async def test_every_command_over_nats_and_http(registry: httpx.AsyncClient, nc: nats.NATS,
                                               settings: Settings) -> None:
    t = settings.topology
    async with recording(nc, t.context_subjects("registry"), t.stream("CSO_REGISTRY")) as bus:
        filed = await command(nc, settings, "file", filing())
        assert filed["ok"], filed
        org = filed["id"]
        reg = await command(nc, settings, "register", {
            "organization_id": org, "name": "西城社区文体协会", "community_code": COMMUNITY,
            "social_credit_code": credit_code(kind="1"), "legal_form": "social_group",
            "category": "culture_sports", "registered_on": "2023-06-01"})
        assert reg["ok"] and reg["id"] == org, reg
        upd = (await registry.post("/commands/update", json={
            "organization_id": org, "effective_on": "2023-07-01", "brand": True})).json()
        assert upd["ok"], upd
        hub = await command(nc, settings, "establish_hub", {
            "organization_id": org, "region_code": "510681001", "established_on": "2023-08-01"})
        assert hub["ok"], hub
        base = await command(nc, settings, "open_base", {
            "name": "广汉市社会组织孵化基地", "region_code": "510681",
            "covered_townships": ["510681001", "510681002"], "opened_on": "2022-05-01"})
        assert base["ok"] and base["region"] == "510681", base
        party = await command(nc, settings, "form_party", {
            "kind": "independent_branch", "organization_ids": [org], "members": 3,
            "formed_on": "2023-09-01"})
        assert party["ok"] and party["region"] == "510681", party
        assert (await command(nc, settings, "dissolve_party", {
            "party_organization_id": party["id"], "dissolved_on": "2024-01-01"}))["ok"]
        assert (await command(nc, settings, "close_base", {
            "base_id": base["id"], "closed_on": "2024-02-01"}))["ok"]
        assert (await command(nc, settings, "dissolve_hub", {
            "hub_id": hub["id"], "dissolved_on": "2024-03-01"}))["ok"]
        gone = await command(nc, settings, "deregister", {
            "organization_id": org, "reason": "自行解散", "ended_on": "2024-04-01"})
        assert gone["ok"], gone

        expected = ["OrganizationFiled", "OrganizationRegistered", "OrganizationUpdated",
                    "HubEstablished", "IncubationBaseOpened", "PartyOrganizationFormed",
                    "PartyOrganizationDissolved", "IncubationBaseClosed", "HubDissolved",
                    "OrganizationDeregistered"]
        await eventually(lambda: _count(bus, len(expected)))
        assert [e["type"] for e in bus.events()] == expected
        assert {m.subject for m in bus.messages if json.loads(m.data)["type"].startswith("Organization")} == {
            t.event_subject("OrganizationFiled", COMMUNITY).replace("organization_filed", x)
            for x in ("organization_filed", "organization_registered", "organization_updated",
                      "organization_deregistered")}

    view = (await registry.get(f"/organizations/{org}")).json()
    assert view["status"] == "deregistered" and view["tier"] == "registered" and view["brand"] is True
    assert [h["type"] for h in view["history"]][:2] == ["OrganizationFiled", "OrganizationRegistered"]
    # The audit trail: who changed what, from which system; the HTTP update came from the http-api.
    audit = {a["type"]: a for a in view["audit"]}
    assert list(audit) == ["OrganizationFiled", "OrganizationRegistered", "OrganizationUpdated",
                           "OrganizationDeregistered"]
    assert audit["OrganizationFiled"]["source"] == "nats-command"
    assert audit["OrganizationUpdated"]["source"] == "http-api"
    assert audit["OrganizationUpdated"]["changes"] == {"brand": [False, True]}
    assert audit["OrganizationRegistered"]["changes"]["tier"] == ["filed", "registered"]
    page = (await registry.get("/regions/510681/organizations", params={"limit": 10})).json()
    assert [o["id"] for o in page["items"]] == [org]
    assert (await registry.get("/regions/519999/organizations")).status_code == 404
    assert (await registry.get("/regions/51x/organizations")).status_code == 422
    assert (await registry.get(f"/organizations/{uuid.uuid4()}")).status_code == 404


async def _count(bus: Any, n: int) -> bool:
    return len(bus.messages) >= n


@pytest.mark.parametrize(("name", "body", "field"), [
    # Fields are named by their path in the event, as on intake (contracts/README.md, Field names).
    ("file", filing(community_code="510681001999"), "payload.community_code"),
    ("file", filing(filed_on=(date.today() + timedelta(days=10)).isoformat()), "payload.filed_on"),
    ("file", filing(category="gardening"), "payload.category"),
    ("register", {"name": "x", "community_code": COMMUNITY, "legal_form": "social_group",
                  "social_credit_code": credit_code(kind="1")[:17] + "0", "category": "charity",
                  "registered_on": "2023-01-01"}, "payload.social_credit_code"),
    ("establish_hub", {"organization_id": str(uuid.uuid4()), "region_code": "510681001014",
                       "established_on": "2023-01-01"}, "payload.region_code"),
    ("nonsense", {}, "command"),
])
async def test_commands_are_refused_with_the_field(registry: httpx.AsyncClient, nc: nats.NATS,
                                                   settings: Settings, name: str,
                                                   body: dict[str, Any], field: str) -> None:
    reply = await command(nc, settings, name, body)
    assert reply["ok"] is False
    assert field in [e["field"] for e in reply["errors"]], reply
    http = await registry.post(f"/commands/{name}", json=body)
    assert http.status_code in (404, 409, 422) and http.json()["errors"] == reply["errors"]


async def test_state_rules(registry: httpx.AsyncClient, nc: nats.NATS, settings: Settings) -> None:
    org = (await command(nc, settings, "file", filing()))["id"]
    other = (await command(nc, settings, "file", filing(community_code="510681002010")))["id"]
    # A hub must be in the township of the organization it is.
    outside = await command(nc, settings, "establish_hub", {
        "organization_id": other, "region_code": "510681001", "established_on": "2023-05-01"})
    assert not outside["ok"] and outside["errors"][0]["field"] == "payload.region_code"
    assert (await command(nc, settings, "deregister", {
        "organization_id": org, "reason": "合并", "ended_on": "2023-05-01"}))["ok"]
    late = await command(nc, settings, "update", {
        "organization_id": org, "effective_on": "2023-06-01", "name": "新名字"})
    assert not late["ok"] and "deregistered" in late["errors"][0]["message"]
    again = await command(nc, settings, "file", filing(organization_id=org))
    assert not again["ok"] and again["errors"][0]["field"] == "payload.organization_id"
    # Non-JSON and oversize bodies get an error, not silence.
    raw = await nc.request(settings.topology.command_subject("registry", "file"), b"{nope", timeout=5)
    assert json.loads(raw.data)["errors"][0]["field"] == "$"
    huge = await registry.post("/commands/file", content=b"{" + b" " * 70_000 + b"}")
    assert huge.status_code == 422 and "exceeds" in huge.json()["errors"][0]["message"]


async def test_outside_system_publishes_facts(registry: httpx.AsyncClient, nc: nats.NATS,
                                              settings: Settings) -> None:
    t = settings.topology
    good = make_event(ev.OrganizationFiled.model_validate(filing()), source="city-register")
    bad = make_event(ev.OrganizationFiled.model_validate(filing()), source="city-register")
    bad_data = json.loads(bad.model_dump_json())
    bad_data["payload"]["community_code"] = bad_data["region"] = "510681001999"
    async with recording(nc, t.context_subjects("registry"), t.stream("CSO_REGISTRY")) as accepted, \
            recording(nc, t.deadletter_subject("registry"), t.stream("CSO_DEADLETTER")) as dead:
        await publish(nc, t.intake_subject("city-register", "OrganizationFiled", COMMUNITY), good)
        # The same event again under another message id: JetStream keeps both, registry applies one.
        await publish(nc, t.intake_subject("city-register", "OrganizationFiled", COMMUNITY), good, msg_id="again")
        await publish(nc, t.intake_subject("city-register", "OrganizationFiled", "510681001999"),
                      json.dumps(bad_data).encode())
        await publish(nc, t.intake_subject("city-register", "OrganizationFiled", COMMUNITY), b"not json at all")
        await eventually(lambda: _count(dead, 2))
        await eventually(lambda: _count(accepted, 1))
        await asyncio.sleep(0.5)
        assert [e["event_id"] for e in accepted.events()] == [str(good.event_id)]
        letters = [DeadLetter.model_validate_json(m.data) for m in dead.messages]
        reasons = [d.reason for d in letters]
        # Named as by the command path and the contract errors: the field's path in the event.
        assert any(r.startswith("payload.community_code: ") and "510681001999" in r for r in reasons), reasons
        assert any("not JSON" in r for r in reasons), reasons
        # The dead letter carries the event's id when the message names one.
        assert {str(d.event_id) for d in letters if d.event_id} == {str(bad.event_id)}
        assert {m.headers.get("Cso-Event-Id") for m in dead.messages if m.headers} == {str(bad.event_id), ""}
        assert all(not d.truncated and d.data_bytes == len(d.data.encode()) for d in letters)
        assert all(m.headers and m.headers.get("Cso-Reason") for m in dead.messages)
    db = await asyncpg.connect(settings.database_url)
    try:
        assert await db.fetchval("SELECT count(*) FROM registry.organization") == 1
        assert await db.fetchval("SELECT updated_by FROM registry.organization") == "city-register"
    finally:
        await db.close()


async def test_an_intake_fact_speaks_only_for_the_publisher_its_subject_names(
        registry: httpx.AsyncClient, nc: nats.NATS, settings: Settings) -> None:
    """Under `cso.intake.<publisher>.…` (where NATS lets only that publisher's user publish) the
    envelope's source must be that publisher: a claim to be another system is dead-lettered, naming
    `source`. The version 1 subject without a name (operators only) keeps the envelope's word."""
    t = settings.topology
    forged = make_event(ev.OrganizationFiled.model_validate(filing(filing_number="GH-2023-101")),
                        source="other-register")
    own = make_event(ev.OrganizationFiled.model_validate(filing(filing_number="GH-2023-102")),
                     source="city-register")
    operators = make_event(ev.OrganizationFiled.model_validate(filing(filing_number="GH-2023-103")),
                           source="Operators:Bulk-Load")
    async with recording(nc, t.context_subjects("registry"), t.stream("CSO_REGISTRY")) as accepted, \
            recording(nc, t.deadletter_subject("registry"), t.stream("CSO_DEADLETTER")) as dead:
        await publish(nc, t.intake_subject("city-register", "OrganizationFiled", COMMUNITY), forged)
        await publish(nc, t.intake_subject("city-register", "OrganizationFiled", COMMUNITY), own)
        await publish(nc, t.operator_intake_subject("OrganizationFiled", COMMUNITY), operators)
        await eventually(lambda: _count(accepted, 2))
        await eventually(lambda: _count(dead, 1))
        await asyncio.sleep(0.5)
        assert {e["event_id"] for e in accepted.events()} == {str(own.event_id), str(operators.event_id)}
        [record] = [json.loads(m.data) for m in dead.messages]
        assert json.loads(record["data"])["event_id"] == str(forged.event_id)
        assert record["reason"].startswith("source: "), record["reason"]
        assert "'city-register'" in record["reason"] and "'other-register'" in record["reason"]
    db = await asyncpg.connect(settings.database_url)
    try:
        sources = await db.fetch("SELECT updated_by FROM registry.organization")
        assert sorted(r["updated_by"] for r in sources) == ["Operators:Bulk-Load", "city-register"]
    finally:
        await db.close()


async def test_registry_serves_the_asyncapi_document(registry: httpx.AsyncClient) -> None:
    from contracts.asyncapi import DOCUMENT

    served = await registry.get("/asyncapi.json")
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    assert served.content == DOCUMENT.read_bytes()
    assert served.json()["asyncapi"] == "3.0.0"
