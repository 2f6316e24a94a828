"""Shared test helpers: a running service in-process, a small real division set, bus helpers."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import httpx
import nats
import pytest
from fastapi import FastAPI
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts import Envelope, Topology, encode, make_event
from contracts import events as ev
from cso.settings import Settings

# Real NBS 2023 codes of 广汉市 (510681): two streets and a town, a few of their communities.
GUANGHAN = ev.DivisionsImported(
    edition="2023",
    province=ev.DivisionRef(code="51", name="四川省"),
    city=ev.DivisionRef(code="5106", name="德阳市"),
    county=ev.DivisionRef(code="510681", name="广汉市"),
    townships=[
        ev.TownshipDivision(code="510681001", name="雒城街道", kind="street"),
        ev.TownshipDivision(code="510681002", name="汉州街道", kind="street"),
        ev.TownshipDivision(code="510681101", name="三水镇", kind="town"),
    ],
    communities=[
        ev.CommunityDivision(code="510681001014", name="西城社区居民委员会", kind="urban"),
        ev.CommunityDivision(code="510681001011", name="金山社区居民委员会", kind="urban"),
        ev.CommunityDivision(code="510681002010", name="京皇社区居民委员会", kind="urban"),
        ev.CommunityDivision(code="510681101201", name="三水村村民委员会", kind="rural"),
    ],
)


async def publish(nc: nats.NATS, subject: str, envelope: Envelope[Any] | bytes,
                  msg_id: str | None = None) -> None:
    data = envelope if isinstance(envelope, bytes) else encode(envelope)
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    await nc.jetstream().publish(subject, data, headers=headers)


async def publish_divisions(nc: nats.NATS, topology: Topology,
                            divisions: ev.DivisionsImported = GUANGHAN) -> None:
    envelope = make_event(divisions, source="test-divisions")
    await publish(nc, topology.event_subject("DivisionsImported", divisions.county.code), envelope)


class Recorder:
    """Every message on a subject filter, from the start of its stream (an ephemeral consumer)."""

    def __init__(self) -> None:
        self.messages: list[nats.aio.msg.Msg] = []

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        out = [json.loads(m.data) for m in self.messages]
        return [e for e in out if type_ is None or e.get("type") == type_]


@asynccontextmanager
async def recording(nc: nats.NATS, subject: str, stream: str) -> AsyncIterator[Recorder]:
    recorder = Recorder()

    async def on(msg: nats.aio.msg.Msg) -> None:
        recorder.messages.append(msg)

    sub = await nc.jetstream().subscribe(subject, stream=stream, cb=on, manual_ack=False,
                                         config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    try:
        yield recorder
    finally:
        await sub.unsubscribe()


@asynccontextmanager
async def running(create_app: Callable[[Settings], FastAPI], settings: Settings
                  ) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A service started in this process (lifespan and all), with an HTTP client on it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield app, client


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
                     describe: Callable[[], object] | None = None) -> Any:
    """Poll an async check until it returns a truthy value (the bus is asynchronous).

    `describe` says, when the time is up, what was there instead (a bare False tells nothing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            state = f"; {describe()}" if describe else ""
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r}{state})")
        await asyncio.sleep(interval)


@asynccontextmanager
async def fresh_database(postgres_url: str) -> AsyncIterator[str]:
    import uuid as _uuid

    import asyncpg

    name = f"cso_test_{_uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield postgres_url.rpartition("/")[0] + "/" + name
    finally:
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    """GET (or POST `body` as JSON) a running service, no proxy: (status, parsed body); (0, None)
    when nothing answers."""
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST",
                                     headers={"content-type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except OSError:
        return 0, None


def missing(tool: str, why: str) -> NoReturn:
    """A check cannot run here for want of `tool`: skipped on a developer's machine, a failure
    where the tool must be there (CSO_REQUIRE_TOOLS, comma-separated: .ci/run names those it
    installs), so that CI never goes green on checks it skipped."""
    if tool in os.environ.get("CSO_REQUIRE_TOOLS", "").split(","):
        pytest.fail(f"{why} (CSO_REQUIRE_TOOLS names {tool}: this run must not skip it)")
    pytest.skip(why)
