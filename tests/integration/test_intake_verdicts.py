"""An outside publisher sees a receipt for every verdict on its facts (issue 19), on real servers:
nats-server enforcing the generated permissions, the publisher connected as its own NATS user
(Leshan's city system) and subscribed to `cso.receipts.<its name>.>`, registry and targets under
their users.

It sends filed, bad, duplicate and out-of-order facts, follow-ups up to 10 minutes (on registry's
injected clock) before their predecessors and a filing before its county's divisions; one
follow-up's predecessor never comes, and after CSO_WAITING_MAX_DAYS it is refused. Every message
gets its receipt, a waiting fact its second one, and registry's recount equals targets' coverage.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client

from contracts import Envelope, Topology, encode, make_event
from contracts import events as ev
from contracts.receipts import IntakeReceipt
from cso import bus, natsauth
from cso.divisions import DEMO_DIVISIONS
from cso.natsauth import Publisher, Users
from cso.settings import Settings
from cso_local import servers
from cso_local.stack import import_divisions
from services.registry.settings import RegistrySettings
from tests.support import eventually, running
from tests.support.recount import projected, recount

pytestmark = pytest.mark.integration

NAMESPACE = "verdicts"
CITY = "leshan-city"            # 乐山市 5111
COMMUNITY = "511102004001"      # 市中区 511102: divisions loaded first
LATE_COMMUNITY = "511111002001"  # 沙湾区 511111: divisions loaded only later


class Clock:
    """registry's clock for the waiting room, moved by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[servers.ServerHandle, dict[str, str]]]:
    users = Users(publishers=(Publisher(CITY, "5111"),))
    names = [*natsauth.SERVICES, natsauth.DIVISIONS, natsauth.ADMIN, CITY]
    passwords = {n: "p" + secrets.token_hex(16) for n in names}
    data_dir = tmp_path_factory.mktemp("nats-verdicts")
    config = data_dir / "auth.conf"
    config.write_text(natsauth.render(Topology(NAMESPACE), users))
    handle = servers.start_nats(data_dir / "server", config=config,
                                env={natsauth.password_env(n): p for n, p in passwords.items()})
    try:
        yield handle, passwords
    finally:
        servers.stop(handle)


async def connect(url: str, user: str, password: str) -> Client:
    return await nats.connect(url, user=user, password=password, inbox_prefix=natsauth.inbox_prefix(user),
                              allow_reconnect=False)


class Publisher_:
    """The outside system: publishes as its user and keeps every receipt it hears."""

    def __init__(self, nc: Client, topology: Topology) -> None:
        self.nc, self.t = nc, topology
        self.receipts: list[dict[str, Any]] = []

    async def listen(self) -> None:
        async def on(msg: Any) -> None:
            data = json.loads(msg.data)
            IntakeReceipt.model_validate(data)  # every receipt keeps its published contract
            assert msg.subject == self.t.receipts_subject(CITY, data["verdict"])
            self.receipts.append(data)

        await self.nc.subscribe(f"{NAMESPACE}.cso.receipts.{CITY}.>", cb=on)
        await self.nc.flush()

    async def send(self, envelope: Envelope[Any] | bytes, subject: str | None = None,
                   msg_id: str | None = "event_id") -> None:
        data = envelope if isinstance(envelope, bytes) else encode(envelope)
        if subject is None:
            assert not isinstance(envelope, bytes)
            subject = self.t.intake_subject(CITY, envelope.type, envelope.region)
        headers = None
        if msg_id == "event_id" and not isinstance(envelope, bytes):
            headers = {"Nats-Msg-Id": str(envelope.event_id)}
        elif msg_id not in (None, "event_id"):
            headers = {"Nats-Msg-Id": msg_id}
        ack = await self.nc.jetstream().publish(subject, data, headers=headers, timeout=10)
        assert not ack.duplicate

    def of(self, event_id: uuid.UUID | str) -> list[str]:
        return [r["verdict"] for r in self.receipts if r.get("event_id") == str(event_id)]

    def receipt(self, event_id: uuid.UUID, verdict: str) -> dict[str, Any]:
        [found] = [r for r in self.receipts if r.get("event_id") == str(event_id) and r["verdict"] == verdict]
        return found


def fact(payload: ev.Payload, region: str | None = None) -> Envelope[Any]:
    return make_event(payload, source=CITY, region=region)


def filing(org: uuid.UUID, community: str = COMMUNITY, filed_on: str = "2024-03-01") -> Envelope[Any]:
    return fact(ev.OrganizationFiled(organization_id=org, name=f"队{str(org)[:6]}", community_code=community,
                                     category=ev.Category.NEIGHBOURLY_HELP, filed_on=date.fromisoformat(filed_on)))


def deregistration(org: uuid.UUID, ended_on: str, region: str = COMMUNITY) -> Envelope[Any]:
    return fact(ev.OrganizationDeregistered(organization_id=org, ended_on=date.fromisoformat(ended_on),
                                            kind="deregistered", reason="自行解散"), region=region)


async def test_every_verdict_has_a_receipt(server: tuple[servers.ServerHandle, dict[str, str]],
                                           database_url: str) -> None:
    from services.registry.app import create_app as registry_app
    from services.registry.app import run_migrations as registry_migrations
    from services.targets.app import create_app as targets_app
    from services.targets.app import run_migrations as targets_migrations

    handle, passwords = server
    t = Topology(NAMESPACE)
    clock = Clock()

    def settings(user: str) -> Settings:
        # registry's waiting room is swept every 0.3 s (its own setting: services/registry/settings.py).
        return RegistrySettings(database_url=database_url, nats_url=handle.url, nats_user=user,
                                nats_password=passwords[user], namespace=NAMESPACE, max_deliver=3,
                                waiting_sweep_seconds=0.3)

    admin = await connect(handle.url, natsauth.ADMIN, passwords[natsauth.ADMIN])
    await bus.ensure_streams(admin, t)
    for migrate, user in ((registry_migrations, "registry"), (targets_migrations, "targets")):
        await asyncio.to_thread(migrate, settings(user))
    db = await asyncpg.connect(database_url)
    dead: list[dict[str, Any]] = []

    async def on_dead(msg: Any) -> None:
        dead.append(json.loads(msg.data))

    await admin.subscribe(t.deadletter_subject("registry"), cb=on_dead)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(db.close)
        stack.push_async_callback(admin.close)
        await stack.enter_async_context(running(lambda s: registry_app(s, clock=clock), settings("registry")))
        await stack.enter_async_context(running(targets_app, settings("targets")))
        url = handle.url.replace("nats://", f"nats://{natsauth.DIVISIONS}:{passwords[natsauth.DIVISIONS]}@")
        assert await import_divisions(url, NAMESPACE, DEMO_DIVISIONS, only=["511102"]) == 1

        async def divisions_known() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM registry.community WHERE code = $1", COMMUNITY))

        await eventually(divisions_known, timeout=30)
        city = Publisher_(await connect(handle.url, CITY, passwords[CITY]), t)
        stack.push_async_callback(city.nc.close)
        await city.listen()

        def receipts_of(expected: dict[uuid.UUID, list[str]]) -> Any:
            async def check() -> bool:
                return all(city.of(e) == v for e, v in expected.items())
            return check

        def described(expected: dict[uuid.UUID, list[str]]) -> Any:
            return lambda: {str(e): city.of(e) for e in expected if city.of(e) != expected[e]}

        async def heard(expected: dict[uuid.UUID, list[str]]) -> None:
            await eventually(receipts_of(expected), timeout=40, describe=described(expected))

        # 1. Filed, and bad: an unknown community, a broken message, one without an event id.
        a, b = uuid.uuid4(), uuid.uuid4()
        filed = filing(a)
        unknown = filing(b, community="511102004999")
        broken = json.loads(encode(filing(uuid.uuid4())))
        broken["payload"]["filed_on"] = "2999-01-01"
        no_id = {k: v for k, v in json.loads(encode(filing(uuid.uuid4()))).items() if k != "event_id"}
        await city.send(filed)
        await city.send(unknown)
        await city.send(json.dumps(broken).encode(), t.intake_subject(CITY, "OrganizationFiled", COMMUNITY),
                        msg_id=broken["event_id"])
        await city.send(json.dumps(no_id).encode(), t.intake_subject(CITY, "OrganizationFiled", COMMUNITY),
                        msg_id="no-id-1")
        broken_id = uuid.UUID(broken["event_id"])
        await heard({filed.event_id: ["accepted"], unknown.event_id: ["refused"], broken_id: ["refused"]})
        accepted = city.receipt(filed.event_id, "accepted")
        assert (accepted["id"], accepted["region"], accepted["type"]) == (str(a), COMMUNITY, "OrganizationFiled")
        refusal = city.receipt(unknown.event_id, "refused")
        assert (refusal["field"], refusal["code"]) == ("payload.community_code", "unknown_division"), refusal
        assert "NEW event_id" in refusal["action"]
        contract = city.receipt(broken_id, "refused")
        assert (contract["field"], contract["code"]) == ("payload.filed_on", "contract"), contract
        await eventually(lambda: _true(any(r.get("msg_id") == "no-id-1" for r in city.receipts)), timeout=20)
        [anonymous] = [r for r in city.receipts if r.get("msg_id") == "no-id-1"]
        assert anonymous["event_id"] is None and anonymous["field"] == "event_id" and anonymous["code"] == "contract"

        # 2. Duplicates, sent after JetStream's two-minute window (no Nats-Msg-Id stands for that):
        # the accepted one and a corrected refused one, same ids: the first verdicts stand.
        corrected = unknown.model_copy(update={"region": COMMUNITY, "payload": unknown.payload.model_copy(
            update={"community_code": COMMUNITY})})
        await city.send(filed, msg_id=None)
        await city.send(corrected, msg_id=None)
        await heard({filed.event_id: ["accepted", "duplicate"], unknown.event_id: ["refused", "duplicate"]})
        assert city.receipt(filed.event_id, "duplicate")["first"] == {"verdict": "accepted", "id": str(a),
                                                                      "region": COMMUNITY}
        first = city.receipt(unknown.event_id, "duplicate")["first"]
        assert (first["verdict"], first["code"]) == ("refused", "unknown_division")

        # 3. Out of order: follow-ups 10 minutes before their filings, a filing before its county's
        # divisions, and a deregistration whose filing never comes.
        c, d, late_org, orphan = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        gone = deregistration(c, "2024-06-01")
        renamed = fact(ev.OrganizationUpdated(organization_id=d, effective_on=date(2024, 5, 1), name="新名字队"),
                       region=COMMUNITY)
        too_early = deregistration(d, "2023-01-01")     # before the filing it waits for: refused then
        late = filing(late_org, community=LATE_COMMUNITY)
        never = deregistration(orphan, "2024-06-01")
        for follow_up in (gone, renamed, too_early, late, never):
            await city.send(follow_up)
        await heard({e.event_id: ["waiting"] for e in (gone, renamed, too_early, late, never)})
        wait = city.receipt(gone.event_id, "waiting")
        assert wait["waits_for"] == {"kind": "predecessor", "key": f"organization:{c}",
                                     "field": "payload.organization_id",
                                     "reason": f"no organization {c} is on record"}
        assert datetime.fromisoformat(wait["until"]) == clock.now + timedelta(days=7)
        assert city.receipt(late.event_id, "waiting")["waits_for"]["kind"] == "divisions"
        clock.advance(timedelta(minutes=10))
        await asyncio.sleep(1)   # sweeps run meanwhile: ten minutes is nothing to a week
        predecessors = [filing(c), filing(d, filed_on="2024-01-15")]
        for predecessor in predecessors:
            await city.send(predecessor)
        assert await import_divisions(url, NAMESPACE, DEMO_DIVISIONS, only=["511111"]) == 1
        await heard({gone.event_id: ["waiting", "accepted"], renamed.event_id: ["waiting", "accepted"],
                     too_early.event_id: ["waiting", "refused"], late.event_id: ["waiting", "accepted"],
                     never.event_id: ["waiting"], **{p.event_id: ["accepted"] for p in predecessors}})
        assert city.receipt(too_early.event_id, "refused")["code"] == "date_order"
        assert city.receipt(late.event_id, "accepted")["region"] == LATE_COMMUNITY

        # What waits is visible to the publisher (receipts query) and to operators (metrics).
        reply = await city.nc.request(t.receipts_query_subject(CITY), json.dumps(
            {"event_ids": [str(never.event_id), str(gone.event_id)]}).encode(), timeout=10)
        answer = json.loads(reply.data)
        assert [r["verdict"] for r in answer["receipts"]] == ["waiting", "accepted"], answer
        from services.registry import waiting

        async def measured() -> bool:   # set by each sweep
            return bool(waiting.WAITING.labels("registry")._value.get() == 1
                        and waiting.OLDEST.labels("registry")._value.get() >= 600)

        await eventually(measured, timeout=10)

        # A week later the orphan is refused, with a receipt and a dead letter carrying its id.
        clock.advance(timedelta(days=7))
        await heard({never.event_id: ["waiting", "refused"]})
        expired = city.receipt(never.event_id, "refused")
        assert (expired["code"], expired["field"]) == ("waited_too_long", "payload.organization_id"), expired
        await eventually(lambda: _true({str(never.event_id), str(unknown.event_id), str(broken_id)}
                                       <= {d.get("event_id") for d in dead}), timeout=20)

        # One receipt per verdict, nothing more (a receipt published twice carries the same id).
        sent = [filed, unknown, corrected, gone, renamed, too_early, late, never, *predecessors]
        ids = Counter(r["receipt_id"] for r in city.receipts)
        unique = {r["receipt_id"]: r for r in city.receipts}
        verdicts = Counter(r["verdict"] for r in unique.values())
        assert verdicts == {"accepted": 6, "refused": 5, "duplicate": 2, "waiting": 5}, (verdicts, ids)
        assert len({e.event_id for e in sent} | {broken_id}) == 10

        # The counts equal a recount: registry's record against targets' coverage.
        counted = await recount(database_url)
        assert counted[("511102", "orgs")] == 2   # a, d active; c deregistered
        assert counted[("511111", "orgs")] == 1

        async def coverage_agrees() -> bool:
            return await projected(database_url, {"orgs"}) == Counter(
                {k: v for k, v in counted.items() if k[1] == "orgs"})

        await eventually(coverage_agrees, timeout=40)


async def _true(value: bool) -> bool:
    return value
