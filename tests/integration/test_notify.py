"""notify against real NATS JetStream and PostgreSQL, a real SMTP server on loopback (aiosmtpd) and
real HTTP webhook receivers (an asyncio server in the test): every channel, signatures, retries,
failures, a crash mid-send, digests, reminders, and the subscription API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import nats
import pytest
from aiosmtpd.controller import Controller
from fastapi import FastAPI
from nats.aio.client import Client as NATS

from contracts import Envelope, make_event
from contracts import events as ev
from cso.settings import Settings
from services.notify.app import create_app, run_migrations
from services.notify.domain import verify
from services.notify.routing import Clock
from services.notify.settings import NotifySettings
from services.targets import app as targets_app
from services.targets.evaluation import Clock as TargetsClock
from tests.support import db_fetch, eventually, publish, recording, running
from tests.support.events import SHIZHONG, publish_status, status_changed

pytestmark = pytest.mark.integration

SHIZHONG_PATH = "四川省 乐山市 市中区"
# 2026-03-02 09:00 in Shanghai: every catalogue deadline is past, so no reminder interferes.
MORNING = datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a real SMTP server -----------------------------------------------------------------------

class Mailbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.rcpts: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(msg)
        self.rcpts.append(list(envelope.rcpt_tos))
        return "250 OK"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m, r in zip(self.messages, self.rcpts, strict=True) if address in r]


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    await asyncio.to_thread(controller.start)
    try:
        yield box, port
    finally:
        await asyncio.to_thread(controller.stop)


# --- a real HTTP webhook receiver -------------------------------------------------------------

@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def delivery(self) -> str:
        return self.headers["x-cso-delivery"]

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Answers by path: /ok 200; /flaky 500 twice then 200; /dead 503; /slow-once hangs the first
    request (the sender times out) then 200; /gated holds every request until `gate` opens (a
    request whose client goes away meanwhile is dropped, never answered)."""

    def __init__(self) -> None:
        self.arrived: list[Hit] = []
        self.accepted: list[Hit] = []
        self.dropped: list[Hit] = []
        self.gate = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Hit]:
        return [h for h in self.accepted if h.path == path]

    def seen(self, path: str) -> list[Hit]:
        return [h for h in self.arrived if h.path == path]

    def tally(self, paths: tuple[str, ...]) -> dict[str, dict[str, int]]:
        return {path: {"arrived": len(self.seen(path)), "accepted": len(self.on(path)),
                       "dropped": sum(h.path == path for h in self.dropped)} for path in paths}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _decide(self, hit: Hit, reader: asyncio.StreamReader) -> int | None:
        earlier = len(self.seen(hit.path)) - 1
        if hit.path == "/flaky":
            return 500 if earlier < 2 else 200
        if hit.path == "/dead":
            return 503
        if hit.path == "/slow-once" and earlier == 0:
            await asyncio.sleep(30)
        if hit.path == "/gated":
            gate = asyncio.ensure_future(self.gate.wait())
            eof = asyncio.ensure_future(reader.read(1))
            done, pending = await asyncio.wait({gate, eof}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if eof in done:
                return None
        return 200

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                _, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    key, value = h.decode().split(":", 1)
                    headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                hit = Hit(path, headers, body)
                self.arrived.append(hit)
                status = await self._decide(hit, reader)
                if status is None:
                    self.dropped.append(hit)
                    return
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
                if 200 <= status < 300:
                    self.accepted.append(hit)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    r.gate.set()
    await r.stop()


# --- notify, running ----------------------------------------------------------------------------

def test_config(smtp_port: int = 1, **over: Any) -> dict[str, Any]:
    """notify's own settings for a test (NotifySettings.of takes them over the servers')."""
    base: dict[str, Any] = dict(
        smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_from="cso-notify@test.local", max_attempts=4,
        retry_base_seconds=0.1, retry_max_seconds=0.4, send_timeout_seconds=1.5, lease_seconds=3.0,
        pool_size=16, poll_seconds=0.1, schedule_seconds=0.1)
    return base | over


test_config.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
async def migrated(settings: Settings) -> Settings:
    await asyncio.to_thread(run_migrations, settings)
    return settings


@asynccontextmanager
async def notify(settings: Settings, config: dict[str, Any], clock: Clock | None = None,
                 divisions: bool = True) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    clock = clock or Clock(fixed=MORNING)
    async with running(lambda s: create_app(NotifySettings.of(s, **config), clock=clock), settings) as (app, client):
        if divisions:
            nc = await nats.connect(settings.nats_url)
            try:
                await publish(nc, settings.topology.event_subject("DivisionsImported", "511102"),
                              make_event(SHIZHONG, source="test-divisions"))
            finally:
                await nc.close()
            await eventually(lambda: scalar(settings, "SELECT count(*) = 7 FROM notify.division"))
        yield app, client


async def scalar(settings: Settings, sql: str, *args: Any) -> Any:
    db = await asyncpg.connect(settings.database_url)
    try:
        return await db.fetchval(sql, *args)
    finally:
        await db.close()


async def subscribe(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/subscriptions", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def waiting(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return check()
    return probe


def notify_bus(nc: NATS, settings: Settings) -> Any:
    t = settings.topology
    return recording(nc, t.context_subjects("notify"), t.stream("CSO_NOTIFY"))


# --- tests ------------------------------------------------------------------------------------

async def test_at_risk_reaches_every_channel_once(migrated: Settings, nc: NATS, receiver: Receiver,
                                                  smtp: tuple[Mailbox, int]) -> None:
    box, port = smtp
    settings = migrated
    async with notify(settings, test_config(port)) as (_, api), notify_bus(nc, settings) as bus:
        sub = await subscribe(api, recipient="leshan.mzj", region="511102", channels={
            "email": "mzj@leshan.test", "webhook": {"url": receiver.url("/ok")}, "inbox": True})
        secret = sub["channels"]["webhook"]["secret"]
        assert len(secret) >= 32
        watcher = await subscribe(api, recipient="coverage.watch", region="511102",
                                  events=["CoverageChanged"], channels={"inbox": True})

        # CoverageChanged reaches only who asked for it; the status change reaches every channel.
        coverage = make_event(ev.CoverageChanged(region_code="511102", figures={
            "avg_orgs_per_urban_community": 9.5, "streets_with_hub_share": 0.5}), source="cso-targets")
        await publish(nc, settings.topology.event_subject("CoverageChanged", "511102"), coverage)
        change = status_changed()
        await publish_status(nc, settings, change)

        await eventually(waiting(lambda: len(box.messages) == 1 and len(receiver.on("/ok")) == 1))
        await eventually(lambda: inbox_count(api, "leshan.mzj", 1))
        await eventually(lambda: inbox_count(api, "coverage.watch", 1))

        # E-mail: Chinese, the region's full path, what changed, the figure, threshold and deadline.
        mail = box.messages[0]
        assert box.rcpts[0] == ["mzj@leshan.test"]
        title = "一类县区城市社区平均拥有社区社会组织不少于15个"
        assert mail["Subject"].startswith(f"【目标状态变化】{SHIZHONG_PATH} {title}")
        text = mail.get_content()
        for part in ("进展正常 → 有风险", "当前值：9.5", "目标值：≥ 15", "截止日期：2025-12-31",
                     f"地区：{SHIZHONG_PATH}", str(change.event_id)):
            assert part in text, (part, text)

        # Webhook: the signature verifies with the subscriber's secret, as a receiver would check it.
        hit = receiver.on("/ok")[0]
        assert verify(secret, hit.headers["x-cso-timestamp"], hit.headers["x-cso-signature"], hit.body,
                      time.time())
        assert not verify("not-the-secret-at-all", hit.headers["x-cso-timestamp"],
                          hit.headers["x-cso-signature"], hit.body, time.time())
        body = hit.json()
        assert body["event_id"] == str(change.event_id) and body["region_path"] == SHIZHONG_PATH
        assert body["payload"]["status"] == "at_risk" and body["subscription_id"] == sub["id"]
        assert hit.delivery == body["delivery_id"]

        # Inbox: unread, then read.
        unread = (await api.get("/inbox/leshan.mzj", params={"unread": "true"})).json()
        assert unread["unread"] == 1 and "有风险" in unread["items"][0]["subject"]
        message_id = unread["items"][0]["id"]
        assert (await api.post(f"/inbox/leshan.mzj/{message_id}/read")).status_code == 200
        assert (await api.get("/inbox/leshan.mzj", params={"unread": "true"})).json()["items"] == []
        assert len((await api.get("/inbox/leshan.mzj")).json()["items"]) == 1
        assert (await api.post(f"/inbox/someone.else/{message_id}/read")).status_code == 404
        watched = (await api.get("/inbox/coverage.watch")).json()["items"][0]
        assert watched["kind"] == "CoverageChanged" and "50%" in watched["body"]

        # Outcomes on the bus: one NotificationSent per channel.
        await eventually(waiting(lambda: len(bus.events("NotificationSent")) == 4))
        mine = [e["payload"] for e in bus.events("NotificationSent") if e["payload"]["subscription_id"] == sub["id"]]
        assert sorted(p["channel"] for p in mine) == ["email", "inbox", "webhook"]
        assert {p["event_id"] for p in mine} == {str(change.event_id)}
        assert watcher["id"] in {e["payload"]["subscription_id"] for e in bus.events("NotificationSent")}

        # The same event again (another message id, so JetStream keeps it): nothing is sent twice.
        await publish_status(nc, settings, change, msg_id="again")
        await publish_status(nc, settings, status_changed(status="on_track", previous="at_risk"))
        await eventually(waiting(lambda: len(box.messages) == 2))
        await asyncio.sleep(0.5)
        assert len(box.messages) == 2 and len(receiver.on("/ok")) == 2
        assert await scalar(settings, "SELECT count(*) FROM notify.delivery") == 7

        metrics = (await api.get("/metrics/")).text
        for series in ('cso_notify_deliveries_total{channel="email",outcome="sent"}',
                       "cso_notify_queue_depth", 'cso_notify_retries_total{channel="webhook"}'):
            assert series in metrics
        assert (await api.get("/healthz")).json()["status"] == "ok"
        ready = (await api.get("/readyz")).json()
        assert ready["status"] == "ok" and ready["database"] == "ok", ready


async def inbox_count(api: httpx.AsyncClient, recipient: str, n: int) -> bool:
    return len((await api.get(f"/inbox/{recipient}")).json()["items"]) == n


async def test_retries_failures_and_slow_receivers(migrated: Settings, nc: NATS, receiver: Receiver) -> None:
    settings = migrated
    async with notify(settings, test_config()) as (_, api), notify_bus(nc, settings) as bus:
        subs = {path: await subscribe(api, recipient=f"r{i}", region="511102",
                                      channels={"webhook": {"url": receiver.url(path)}})
                for i, path in enumerate(("/slow-once", "/flaky", "/dead", "/ok"))}
        change = status_changed()
        await publish_status(nc, settings, change)

        # A receiver that hangs holds its own slot only: the others are served meanwhile.
        # (It is served before the slow one's first attempt even timed out.)
        await eventually(waiting(lambda: len(receiver.on("/ok")) == 1))
        assert len(receiver.seen("/slow-once")) <= 1 and not receiver.on("/slow-once")

        # Fails twice, then succeeds: one delivery accepted, after three attempts of the same delivery.
        await eventually(waiting(lambda: len(receiver.on("/flaky")) == 1))
        flaky = receiver.seen("/flaky")
        assert len(flaky) == 3 and len({h.delivery for h in flaky}) == 1
        # The timed-out one is retried and arrives once.
        await eventually(waiting(lambda: len(receiver.on("/slow-once")) == 1))

        # Always fails: `failed` after the last attempt, NotificationFailed on the bus, metric counted.
        def failed() -> list[dict[str, Any]]:
            return [e["payload"] for e in bus.events("NotificationFailed")]

        await eventually(waiting(lambda: len(failed()) == 1))
        assert failed()[0]["subscription_id"] == subs["/dead"]["id"]
        assert failed()[0]["attempts"] == 4 and "503" in failed()[0]["error"]
        assert len(receiver.seen("/dead")) == 4
        expected = {subs["/slow-once"]["id"]: ("sent", 2), subs["/flaky"]["id"]: ("sent", 3),
                    subs["/dead"]["id"]: ("failed", 4), subs["/ok"]["id"]: ("sent", 1)}

        async def states() -> bool:
            return {r["subscription_id"]: (r["status"], r["attempts"]) for r in await db_fetch(
                settings, "SELECT subscription_id::text, status, attempts FROM notify.delivery")} == expected

        await eventually(states)
        await eventually(waiting(lambda: len(bus.events("NotificationSent")) == 3))
        dead = (await api.get("/deliveries", params={"status": "failed"})).json()["items"]
        assert len(dead) == 1 and "503" in dead[0]["last_error"]
        metrics = (await api.get("/metrics/")).text
        assert 'cso_notify_failed_total{channel="webhook"}' in metrics
        assert _metric(metrics, 'cso_notify_retries_total{channel="webhook"}') >= 6  # 1 + 2 + 3


def _metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


async def test_killed_mid_send_loses_and_repeats_nothing(migrated: Settings, nc: NATS,
                                                         receiver: Receiver) -> None:
    settings = migrated
    # Sends may hang up to 4 s (the gated ones are cut short by the kill); leases last 5 s.
    config = test_config(send_timeout_seconds=4.0, lease_seconds=5.0)
    body = dict(region="511102", events=["TargetStatusChanged"])
    first = [status_changed(target=f"t{i}", value=float(i)) for i in range(5)]
    later = [status_changed(target=f"t{i}", value=float(i)) for i in range(5, 10)]
    async with contextlib.AsyncExitStack() as stack:
        async with notify(settings, config) as (_, api):
            bus = await stack.enter_async_context(notify_bus(nc, settings))
            await subscribe(api, recipient="fast", channels={"webhook": {"url": receiver.url("/ok")}}, **body)
            await subscribe(api, recipient="held", channels={"webhook": {"url": receiver.url("/gated")}}, **body)
            await subscribe(api, recipient="reader", channels={"inbox": True}, **body)
            for envelope in first:
                await publish_status(nc, settings, envelope)
            # Mid-send: the gated receiver holds five requests in flight when notify goes down.
            await eventually(waiting(lambda: len(receiver.on("/ok")) == 5
                                     and len({h.delivery for h in receiver.seen("/gated")}) == 5))
            await eventually(lambda: inbox_count(api, "reader", 5))
            # The fast sends are answered and recorded before the kill: a send answered but not
            # yet recorded is sent again after a restart (at least once; the receiver dedups on
            # the delivery id), which is not the case this test is about.
            await eventually(lambda: scalar(settings, "SELECT count(*) = 5 FROM notify.delivery"
                                                      " WHERE status = 'sent' AND channel = 'webhook'"))
        # notify is gone (its sends cancelled, its leases left behind): the receiver got nothing.
        await eventually(waiting(lambda: len(receiver.dropped) == len(receiver.seen("/gated"))))
        assert receiver.on("/gated") == []
        for envelope in later:  # while notify is down
            await publish_status(nc, settings, envelope)
        receiver.gate.set()
        async with notify(settings, config, divisions=False) as (_, api):
            await eventually(waiting(lambda: len(receiver.on("/gated")) == 10 and len(receiver.on("/ok")) == 10),
                             timeout=15, describe=lambda: receiver.tally(("/gated", "/ok")))
            await eventually(lambda: inbox_count(api, "reader", 10))
            await eventually(waiting(lambda: len(bus.events("NotificationSent")) >= 30))
            await asyncio.sleep(0.5)
        for path in ("/ok", "/gated"):
            accepted = receiver.on(path)
            assert len(accepted) == 10 and len({h.delivery for h in accepted}) == 10
            assert {h.json()["event_id"] for h in accepted} == {str(e.event_id) for e in first + later}
        sent = [e["payload"]["delivery_id"] for e in bus.events("NotificationSent")]
        assert len(sent) == 30 and len(set(sent)) == 30
        assert await scalar(settings, "SELECT count(*) FROM notify.delivery WHERE status = 'sent'") == 30
        assert await scalar(settings, "SELECT count(*) FROM notify.delivery") == 30
        assert await scalar(settings, "SELECT count(*) FROM notify.inbox_message") == 10


async def test_the_inbox_is_read_page_by_page(migrated: Settings, nc: NATS) -> None:
    """More messages than one page: reading on from each page's `next` gives every message once,
    newest first, while more arrive between the pages (they come in a read from the top); messages
    sharing a created_at (recorded in one transaction) are told apart by id across a page's edge."""
    settings = migrated
    recipient, per_page = "pager", 7

    async def recorded(n: int) -> bool:
        return bool(await scalar(settings, "SELECT count(*) = $1 FROM notify.inbox_message WHERE recipient = $2",
                                 n, recipient))

    async def arrive(first: int, n: int, total: int) -> list[str]:
        envelopes = [status_changed(target=f"t{i}", value=float(i)) for i in range(first, first + n)]
        for envelope in envelopes:
            await publish_status(nc, settings, envelope)
        await eventually(lambda: recorded(total))
        return [str(r["id"]) for r in await db_fetch(
            settings, "SELECT id FROM notify.inbox_message WHERE event_id = ANY($1::uuid[])",
            [e.event_id for e in envelopes])]

    async with notify(settings, test_config()) as (_, api):
        await subscribe(api, recipient=recipient, region="511102", events=["TargetStatusChanged"],
                        channels={"inbox": True})
        await arrive(0, 23, 23)
        # The 6th to 10th newest share one created_at: the first page's edge (7) falls among them.
        await scalar(settings, """
            WITH ranked AS (SELECT id, created_at, row_number() OVER (ORDER BY created_at DESC, id) AS n
                            FROM notify.inbox_message WHERE recipient = $1)
            UPDATE notify.inbox_message m SET created_at = (SELECT created_at FROM ranked WHERE n = 6)
            FROM ranked WHERE ranked.id = m.id AND ranked.n BETWEEN 6 AND 10""", recipient)
        expected = [str(r["id"]) for r in await db_fetch(
            settings, "SELECT id FROM notify.inbox_message WHERE recipient = $1 ORDER BY created_at DESC, id",
            recipient)]
        assert len({r["created_at"] for r in await db_fetch(
            settings, "SELECT created_at FROM notify.inbox_message WHERE recipient = $1", recipient)}) == 23 - 4

        pages: list[list[str]] = []
        later: list[str] = []
        page = (await api.get(f"/inbox/{recipient}", params={"limit": per_page})).json()
        while True:
            pages.append([m["id"] for m in page["items"]])
            assert page["unread"] == 23 + len(later)
            if page["next"] is None:
                break
            later += await arrive(100 + len(later), 2, 23 + len(later) + 2)   # between every two pages
            page = (await api.get(f"/inbox/{recipient}", params={"limit": per_page, "before": page["next"]})).json()
        assert [len(p) for p in pages] == [7, 7, 7, 2]
        assert [i for p in pages for i in p] == expected
        top = (await api.get(f"/inbox/{recipient}", params={"limit": per_page})).json()["items"]
        assert {m["id"] for m in top[:len(later)]} == set(later) and len(later) == 6

        # Unread only, paging on while the next page's first message is marked read: the rest follow.
        everything = [str(r["id"]) for r in await db_fetch(
            settings, "SELECT id FROM notify.inbox_message WHERE recipient = $1 ORDER BY created_at DESC, id",
            recipient)]
        assert len(everything) == 29 and everything[len(later):] == expected
        first = (await api.get(f"/inbox/{recipient}", params={"limit": 10, "unread": "true"})).json()
        assert (await api.post(f"/inbox/{recipient}/{everything[10]}/read")).status_code == 200
        unread, page = [m["id"] for m in first["items"]], first
        while page["next"] is not None:
            page = (await api.get(f"/inbox/{recipient}", params={
                "limit": 10, "unread": "true", "before": page["next"]})).json()
            unread += [m["id"] for m in page["items"]]
        assert unread == everything[:10] + everything[11:]

        naive = base64.urlsafe_b64encode(f"2026-03-02T01:00:00|{uuid4()}".encode()).decode()
        for bad in ("nonsense", "bm90IGEgY3Vyc29y", naive):
            refused = await api.get(f"/inbox/{recipient}", params={"before": bad})
            assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "before", refused.text


async def test_digest_one_message_per_day(migrated: Settings, nc: NATS, smtp: tuple[Mailbox, int]) -> None:
    box, port = smtp
    settings = migrated
    clock = Clock(fixed=MORNING)
    async with notify(settings, test_config(port), clock) as (_, api):
        sub = await subscribe(api, recipient="daily", region="5111", include_subregions=True,
                              frequency="digest", digest_time="18:00",
                              channels={"email": "daily@leshan.test", "inbox": True})
        assert sub["digest_time"] == "18:00" and sub["timezone"] == "Asia/Shanghai"
        await subscribe(api, recipient="now", region="511102", channels={"inbox": True})
        changes = [status_changed(), status_changed(target="leshan-avg-rural-class-a", status="met", value=8.5),
                   status_changed(status="missed", previous="at_risk")]
        for envelope in changes:
            await publish_status(nc, settings, envelope)
        await eventually(lambda: scalar(settings, "SELECT count(*) = 3 FROM notify.digest_item"))
        await eventually(lambda: inbox_count(api, "now", 3))
        await asyncio.sleep(0.3)
        assert box.messages == [] and await inbox_count(api, "daily", 0)

        clock.fixed = MORNING + timedelta(hours=9, seconds=30)   # 18:00:30 in Shanghai
        await eventually(waiting(lambda: len(box.messages) == 1))
        await eventually(lambda: inbox_count(api, "daily", 1))
        mail = box.messages[0]
        assert mail["Subject"] == "【每日摘要】四川省 乐山市 2026-03-02 共 3 项变化"
        text = mail.get_content()
        assert text.count(f"09:00 {SHIZHONG_PATH} ") == 3 and "有风险 → 未完成" in text and "已达标" in text

        # Later that day: a new change waits for tomorrow's digest; no second digest today.
        await publish_status(nc, settings, status_changed(status="at_risk", previous="missed"))
        await eventually(lambda: scalar(settings, "SELECT count(*) = 4 FROM notify.digest_item"))
        clock.fixed = MORNING + timedelta(hours=10)
        await asyncio.sleep(0.5)
        assert len(box.messages) == 1
        clock.fixed = MORNING + timedelta(days=1, hours=9, seconds=1)
        await eventually(waiting(lambda: len(box.messages) == 2))
        assert box.messages[1]["Subject"] == "【每日摘要】四川省 乐山市 2026-03-03 共 1 项变化"
        await asyncio.sleep(0.3)
        assert len(box.messages) == 2
        assert await scalar(settings, "SELECT count(*) FROM notify.digest") == 2

        # Switching to immediate loses nothing: what was waiting goes out as a last digest.
        await publish_status(nc, settings, status_changed(status="met", previous="at_risk", value=15.5))
        await eventually(lambda: scalar(settings, "SELECT count(*) = 5 FROM notify.digest_item"))
        switched = await api.put(f"/subscriptions/{sub['id']}", json={
            "recipient": "daily", "region": "5111", "include_subregions": True,
            "channels": {"email": "daily@leshan.test", "inbox": True}})
        assert switched.status_code == 200 and switched.json()["frequency"] == "immediate"
        await eventually(waiting(lambda: len(box.messages) == 3))
        assert box.messages[2]["Subject"] == "【每日摘要】四川省 乐山市 2026-03-03 共 1 项变化"
        await publish_status(nc, settings, status_changed(status="at_risk", previous="met"))
        await eventually(waiting(lambda: len(box.messages) == 4))
        assert box.messages[3]["Subject"].startswith("【目标状态变化】")


async def test_organization_filed_reaches_its_township(migrated: Settings, nc: NATS,
                                                       receiver: Receiver) -> None:
    settings = migrated
    async with notify(settings, test_config()) as (_, api):
        events = ["OrganizationFiled", "HubDissolved"]
        here = await subscribe(api, recipient="dafo.street", region="511102004", include_subregions=True,
                               events=events, channels={"inbox": True, "webhook": {"url": receiver.url("/ok")}})
        await subscribe(api, recipient="tongjiang.street", region="511102006", include_subregions=True,
                        events=events, channels={"inbox": True})
        filing = make_event(ev.OrganizationFiled(
            name="篦子街社区舞蹈队", community_code="511102004001", category="culture_sports",
            filing_number="SZ-2026-001", filed_on=date(2026, 3, 1)), source="cso-registry")
        await publish(nc, settings.topology.event_subject("OrganizationFiled", "511102004001"), filing)
        await eventually(lambda: inbox_count(api, "dafo.street", 1))
        item = (await api.get("/inbox/dafo.street")).json()["items"][0]
        path = "四川省 乐山市 市中区 大佛街道 篦子街社区居委会"
        assert item["subject"] == f"【社区社会组织备案】{path} 篦子街社区舞蹈队"
        assert item["body"].startswith("社区社会组织备案：篦子街社区舞蹈队\n")
        assert f"地区：{path}" in item["body"] and "类别：文体活动类" in item["body"]
        assert "备案号：SZ-2026-001" in item["body"]
        await eventually(waiting(lambda: len(receiver.on("/ok")) == 1))
        assert receiver.on("/ok")[0].json()["payload"]["name"] == "篦子街社区舞蹈队"
        # A hub dissolved in the township (its envelope carries the hub's region).
        dissolved = make_event(ev.HubDissolved(hub_id=uuid4(), reason="合并", dissolved_on=date(2026, 3, 1)),
                               source="cso-registry", region="511102004")
        await publish(nc, settings.topology.event_subject("HubDissolved", "511102004"), dissolved)
        await eventually(lambda: inbox_count(api, "dafo.street", 2))
        await asyncio.sleep(0.3)
        assert await inbox_count(api, "tongjiang.street", 0)
        assert here["include_subregions"] is True


async def test_a_subscription_follows_its_township_into_another_county(migrated: Settings, nc: NATS) -> None:
    """A township transferred to another county (DivisionChanged, as `cso divisions import
    --previous` reads it off two editions: 集益镇 511124110 → 五通桥区 511112111 in the synthetic
    乐山市 of tests/division_changes.py; here 大佛街道 511102004 of the test's 市中区 → 511112112):
    its subscribers hear what is filed under its new code; the old county's, with its subregions,
    no longer do."""
    settings = migrated
    async with notify(settings, test_config()) as (_, api):
        events = ["OrganizationFiled"]
        await subscribe(api, recipient="dafo.street", region="511102004", include_subregions=True,
                        events=events, channels={"inbox": True})
        await subscribe(api, recipient="shizhong.county", region="511102", include_subregions=True,
                        events=events, channels={"inbox": True})
        change = make_event(ev.DivisionChanged(code="511102004", change="recoded", successor_code="511112112",
                                               effective_on=date(2024, 6, 30)), source="cso-divisions")
        await publish(nc, settings.topology.event_subject("DivisionChanged", "511102004"), change)
        await eventually(lambda: scalar(settings, "SELECT count(*) = 1 FROM notify.subscription "
                                                  "WHERE region = '511112112'"))
        filing = make_event(ev.OrganizationFiled(
            name="篦子街社区舞蹈队", community_code="511112112001", category="culture_sports",
            filing_number="WTQ-2026-001", filed_on=date(2026, 3, 1)), source="cso-registry")
        await publish(nc, settings.topology.event_subject("OrganizationFiled", "511112112001"), filing)
        await eventually(lambda: inbox_count(api, "dafo.street", 1))
        await asyncio.sleep(0.3)
        assert await inbox_count(api, "shizhong.county", 0)
        # Applied again (a redelivery, a re-import): nothing moves twice.
        await publish(nc, settings.topology.event_subject("DivisionChanged", "511102004"),
                      make_event(change.payload, source="cso-divisions"))
        await asyncio.sleep(0.5)
        assert await scalar(settings, "SELECT count(*) FROM notify.subscription WHERE region = '511112112'") == 1


async def test_a_target_put_over_http_is_reminded_of_with_its_title(migrated: Settings) -> None:
    """notify keeps no catalogue: a target added with PUT /targets (which notify never read) gets
    its reminders 30 and 7 days before its deadline (the default lead times), learned from targets'
    events, once each, and its status change names it by its title, not its id. Both services'
    clocks move together: targets evaluates by its own, notify reminds by its own."""
    settings = migrated
    await asyncio.to_thread(targets_app.run_migrations, settings)
    day = TargetsClock(fixed=date(2025, 11, 15))
    clock = Clock(fixed=noon(day.fixed))
    title = "市中区测试目标：社区社会组织不少于99个"
    spec = {"id": "test-put-reminder", "title": title, "figure": "orgs", "scope_region": "511102",
            "threshold": 99, "start": "2025-01-01", "deadline": "2025-12-31", "source": "test"}
    async with notify(settings, test_config(), clock) as (_, api):
        await subscribe(api, recipient="county", region="511102", channels={"inbox": True})
        await subscribe(api, recipient="city", region="5111", include_subregions=True,
                        events=["DeadlineReminder"], channels={"inbox": True}, language="en")
        await subscribe(api, recipient="deaf", region="511102", events=["TargetStatusChanged"],
                        channels={"inbox": True})
        async with running(lambda s: targets_app.create_app(s, day), settings) as (app, targets):
            coalescer = app.state.coalescer
            assert (await targets.put(f"/targets/{spec['id']}", json=spec)).status_code == 200

            async def mine(recipient: str) -> list[str]:
                # The city hears of every target in 5111 (dozens of catalogue reminders as the
                # days move): read past the newest 50, the default page.
                items = (await api.get(f"/inbox/{recipient}", params={"limit": 500})).json()["items"]
                assert len(items) < 500, f"{recipient}'s inbox outgrew one page"
                return sorted(i["subject"] for i in items if title in i["subject"])

            async def has(recipient: str, n: int) -> bool:
                return len(await mine(recipient)) == n

            async def evaluated(on: date) -> None:
                day.fixed, clock.fixed = on, noon(on)
                await eventually(waiting(lambda: bool(coalescer.evaluated_on == on)), timeout=60)

            await eventually(lambda: has("county", 1), timeout=60)    # its status, by title
            assert "目标状态变化" in (await mine("county"))[0], await mine("county")
            await evaluated(date(2025, 11, 30))
            await evaluated(date(2025, 12, 1))                          # 30 days before
            await eventually(lambda: has("county", 2), timeout=60)
            assert any(s.startswith(f"【目标截止提醒】{SHIZHONG_PATH} 距截止日期 2025-12-31 还有 30 天：{title}")
                       for s in await mine("county")), await mine("county")
            await eventually(lambda: has("city", 1), timeout=30)
            assert (await mine("city"))[0].startswith(
                f"[Deadline reminder] {SHIZHONG_PATH}: 30 days to the 2025-12-31 deadline: {title}")
            await evaluated(date(2025, 12, 2))
            await evaluated(date(2025, 12, 24))                         # 7 days before
            await eventually(lambda: has("county", 3), timeout=60)
            await eventually(lambda: has("city", 2), timeout=60)
            await evaluated(date(2025, 12, 25))                         # nothing is repeated
        await asyncio.sleep(0.5)
        assert [await has("county", 3), await has("city", 2), await has("deaf", 1)] == [True] * 3, \
            (await mine("county"), await mine("city"), await mine("deaf"))


def noon(day: date) -> datetime:
    """Noon of a civil day in China, as notify's clock."""
    return datetime(day.year, day.month, day.day, 4, 0, tzinfo=timezone.utc)


async def test_each_subscription_is_reminded_at_its_own_lead_times(migrated: Settings, nc: NATS) -> None:
    """Issue 21: reminder lead times are the subscription's. A subscription with reminder_days [10]
    is reminded 10 days before a target's deadline and not at 30 or 7; one with the defaults at 30
    and 7 days, not at 10. The deadline, title and region come from targets' TargetStatusChanged
    alone (no TargetDeadlineApproaching is published here); nothing is reminded twice, and nothing
    after the deadline."""
    settings = migrated
    clock = Clock(fixed=noon(date(2025, 11, 1)))
    async with notify(settings, test_config(), clock) as (_, api):
        made = await subscribe(api, recipient="defaults", region="511102", events=["DeadlineReminder"],
                               channels={"inbox": True})
        assert made["reminder_days"] == [30, 7]
        ten = await subscribe(api, recipient="ten", region="5111", include_subregions=True,
                              events=["DeadlineReminder"], reminder_days=[10], channels={"inbox": True},
                              language="en")
        assert ten["reminder_days"] == [10]
        await subscribe(api, recipient="elsewhere", region="511111", events=["DeadlineReminder"],
                        reminder_days=[10, 30], channels={"inbox": True})
        await publish_status(nc, settings, status_changed())     # deadline 2025-12-31, 市中区
        await eventually(lambda: scalar(settings, "SELECT count(*) = 1 FROM notify.deadline"))

        async def subjects(recipient: str) -> list[str]:
            items = (await api.get(f"/inbox/{recipient}")).json()["items"]
            return sorted(i["subject"] for i in items)

        async def on(day: date, expected: dict[str, int]) -> None:
            clock.fixed = noon(day)
            for recipient, n in expected.items():
                await eventually(lambda r=recipient, n=n: _has(api, r, n), timeout=30)
            await asyncio.sleep(0.5)     # a few scheduler steps: nothing more comes
            got = {r: len(await subjects(r)) for r in expected}
            assert got == expected, (day, got)

        await on(date(2025, 11, 20), {"defaults": 0, "ten": 0, "elsewhere": 0})
        await on(date(2025, 12, 1), {"defaults": 1, "ten": 0, "elsewhere": 0})       # 30 days before
        assert (await subjects("defaults"))[0].startswith(
            f"【目标截止提醒】{SHIZHONG_PATH} 距截止日期 2025-12-31 还有 30 天："
            "一类县区城市社区平均拥有社区社会组织不少于15个")
        await on(date(2025, 12, 15), {"defaults": 1, "ten": 0, "elsewhere": 0})
        await on(date(2025, 12, 21), {"defaults": 1, "ten": 1, "elsewhere": 0})      # 10 days before
        assert (await subjects("ten"))[0].startswith(
            f"[Deadline reminder] {SHIZHONG_PATH}: 10 days to the 2025-12-31 deadline: ")
        await on(date(2025, 12, 24), {"defaults": 2, "ten": 1, "elsewhere": 0})      # 7 days before
        await on(date(2025, 12, 31), {"defaults": 2, "ten": 1, "elsewhere": 0})
        await on(date(2026, 1, 1), {"defaults": 2, "ten": 1, "elsewhere": 0})
        made = await db_fetch(settings, "SELECT s.recipient, r.lead_days FROM notify.reminder r "
                                    "JOIN notify.subscription s ON s.id = r.subscription_id ORDER BY 1, 2")
        assert [(r["recipient"], r["lead_days"]) for r in made] == [("defaults", 7), ("defaults", 30),
                                                                    ("ten", 10)]


def task_approaching(task_no: str, deadline: date = date(2025, 12, 31), lead: int = 30) -> Envelope[Any]:
    return make_event(ev.TaskDeadlineApproaching(
        plan_id="leshan-2021", plan_title="乐山市培育发展社区社会组织实施方案", task_no=task_no,
        title=f"任务{task_no}：建立枢纽型社会组织", region_code="511102", deadline=deadline,
        days_ahead=lead, lead_days=lead, lead_units=["市民政局", "市委组织部"], status="in_progress"),
        source="cso-targets")


async def test_task_deadlines_are_reminded_at_the_subscriptions_lead_times(migrated: Settings, nc: NATS) -> None:
    """A plan task's deadline, learned from targets' TaskDeadlineApproaching, is reminded at each
    subscription's own lead times (TaskDeadlineReminder), naming the plan, the task and every lead
    unit; a task accepted meanwhile (TaskStatusChanged to accepted) is reminded of no more."""
    settings = migrated
    clock = Clock(fixed=noon(date(2025, 12, 1)))
    async with notify(settings, test_config(), clock) as (_, api):
        await subscribe(api, recipient="unit", region="511102", events=["TaskDeadlineReminder"],
                        reminder_days=[10], channels={"inbox": True})
        await subscribe(api, recipient="targets-only", region="511102", channels={"inbox": True})
        for envelope in (task_approaching("1.2"), task_approaching("1.6")):
            await publish(nc, settings.topology.event_subject("TaskDeadlineApproaching", "511102"), envelope)
        await eventually(lambda: scalar(settings, "SELECT count(*) = 2 FROM notify.deadline"))
        accepted = make_event(ev.TaskStatusChanged(plan_id="leshan-2021", task_no="1.6", region_code="511102",
                                                   previous_status="submitted", status="accepted"),
                              source="cso-targets")
        await publish(nc, settings.topology.event_subject("TaskStatusChanged", "511102"), accepted)
        await eventually(lambda: scalar(settings, "SELECT count(*) = 1 FROM notify.deadline"))
        await asyncio.sleep(0.5)
        assert not await _has(api, "unit", 1)               # 30 days before: not this one's lead
        clock.fixed = noon(date(2025, 12, 21))
        await eventually(lambda: _has(api, "unit", 1), timeout=30)
        await asyncio.sleep(0.5)
        [item] = (await api.get("/inbox/unit")).json()["items"]
        assert item["subject"] == (f"【任务截止提醒】{SHIZHONG_PATH} 距截止日期 2025-12-31 还有 10 天："
                                   "乐山市培育发展社区社会组织实施方案 任务 1.2 任务1.2：建立枢纽型社会组织"
                                   "（牵头单位：市民政局、市委组织部）"), item["subject"]
        assert not await _has(api, "targets-only", 1)


async def _has(api: httpx.AsyncClient, recipient: str, n: int) -> bool:
    return len((await api.get(f"/inbox/{recipient}")).json()["items"]) >= n


async def test_reminder_days_are_validated_naming_the_field(migrated: Settings) -> None:
    async with notify(migrated, test_config(), divisions=False) as (_, api):
        for days, field in (([], "reminder_days"), ([-1], "reminder_days.0"), ([30, 400], "reminder_days.1"),
                            (["soon"], "reminder_days.0"), (list(range(11)), "reminder_days"),
                            (10, "reminder_days")):
            bad = await api.post("/subscriptions", json={"recipient": "x", "region": "5111",
                                                         "channels": {"inbox": True}, "reminder_days": days})
            assert bad.status_code == 422, (days, bad.text)
            assert [e["field"] for e in bad.json()["errors"]] == [field], (days, bad.json())
        # Lead times of a subscription that hears no reminders are a mistake, said so.
        bad = await api.post("/subscriptions", json={"recipient": "x", "region": "5111", "channels": {"inbox": True},
                                                     "events": ["TargetStatusChanged"], "reminder_days": [3]})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "reminder_days", bad.text
        made = await subscribe(api, recipient="x", region="5111", channels={"inbox": True},
                               reminder_days=[7, 60, 7, 0])
        assert made["reminder_days"] == [60, 7, 0]
        put = await api.put(f"/subscriptions/{made['id']}", json={"recipient": "x", "region": "5111",
                                                                  "channels": {"inbox": True}})
        assert put.json()["reminder_days"] == [30, 7]


async def test_subscription_api(migrated: Settings) -> None:
    settings = migrated
    async with notify(settings, test_config(), divisions=False) as (_, api):
        bad = await api.post("/subscriptions", json={
            "recipient": "x", "region": "5111x", "channels": {"email": "nope"},
            "events": ["TargetStatusChanged", "Gossip"], "frequency": "hourly"})
        assert bad.status_code == 422
        fields = {e["field"] for e in bad.json()["errors"]}
        assert {"region", "channels.email", "events.1", "frequency"} <= fields, fields
        assert (await api.post("/subscriptions", content=b"{oops")).json()["errors"][0]["field"] == "$"
        none = await api.post("/subscriptions", json={"recipient": "x", "region": "5111", "channels": {}})
        assert none.status_code == 422 and none.json()["errors"][0]["field"] == "channels"

        made = await subscribe(api, recipient="leshan.mzj", region="5111", statuses=["at_risk", "missed"],
                               channels={"webhook": {"url": "https://example.test/hook",
                                                     "secret": "a-secret-of-enough-length"}})
        sid = made["id"]
        assert made["channels"]["webhook"]["secret"] == "a-secret-of-enough-length"
        got = (await api.get(f"/subscriptions/{sid}")).json()
        # CSO_AUTH=off here: contacts shown masked, no part of the secret (test_routes: in full, to
        # their recipient's token).
        assert got["channels"]["webhook"] == {"url": "https://example.test/…", "secret": None}
        assert got["statuses"] == ["at_risk", "missed"]
        assert got["events"] == ["TargetStatusChanged", "DeadlineReminder"] and got["frequency"] == "immediate"
        listed = (await api.get("/subscriptions", params={"recipient": "leshan.mzj"})).json()["items"]
        assert [s["id"] for s in listed] == [sid]

        put = await api.put(f"/subscriptions/{sid}", json={
            "recipient": "leshan.mzj", "region": "511102", "frequency": "digest", "digest_time": "08:30",
            "channels": {"webhook": {"url": "https://example.test/hook2"}, "inbox": True}})
        assert put.status_code == 200, put.text
        after = put.json()
        assert after["region"] == "511102" and after["digest_time"] == "08:30"
        assert after["channels"]["webhook"]["secret"] == "…ngth"    # kept, not shown again
        assert (await api.put(f"/subscriptions/{sid}", json={"recipient": "leshan.mzj", "region": "511102",
                                                            "channels": {"inbox": True},
                                                            "timezone": "Nowhere/City"})).status_code == 422
        assert (await api.put(f"/subscriptions/{uuid4()}", json={"recipient": "a", "region": "51",
                                                                 "channels": {"inbox": True}})).status_code == 404
        assert (await api.delete(f"/subscriptions/{sid}")).json()["ok"] is True
        assert (await api.get(f"/subscriptions/{sid}")).status_code == 404
        assert (await api.delete(f"/subscriptions/{sid}")).status_code == 404
        assert (await api.get("/subscriptions", params={"recipient": "leshan.mzj"})).json()["items"] == []
        assert UUID(sid)
