"""Shared test helpers: a running service in-process, a small real division set, bus helpers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn, Self

import httpx
import nats
import pytest
from fastapi import FastAPI
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts import Envelope, Topology, encode, make_event
from contracts import events as ev
from cso.settings import Settings

REPO = Path(__file__).resolve().parents[2]

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


async def ok(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body of an HTTP answer that must have `status` (its text shown if not)."""
    assert response.status_code == status, response.text
    return response.json()


async def make_streams(settings: Settings) -> None:
    """Create the streams of settings' namespace, as the operator's migrate step does (one replica):
    services wait for their streams, they never create them."""
    from cso import bus

    client = await nats.connect(settings.nats_url)
    try:
        await bus.ensure_streams(client, settings.topology)
    finally:
        await client.close()


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


async def db_fetch(settings: Settings, sql: str, *args: Any) -> list[Any]:
    """The rows of one query in the settings' database, on a connection of its own."""
    import asyncpg

    db = await asyncpg.connect(settings.database_url)
    try:
        return list(await db.fetch(sql, *args))
    finally:
        await db.close()


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET (or POST `body` as JSON) a running service, no proxy: (status, parsed body); (0, None)
    when nothing answers."""
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST",
                                     headers={"content-type": "application/json", **(headers or {})})
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


class CsoUp:
    """`cso up` as an operator runs it: a process of its own (`python -m cso_local.cli up`) on a data dir
    and free ports, its output in `output`. The environment is given whole: CSO_AUTH and the
    servers' URLs of the test process must not leak into the stack (it starts its own)."""

    SERVICES = ("registry", "targets", "training", "notify", "console")

    def __init__(self, data_dir: Path, *, demo: bool = False, env: dict[str, str] | None = None) -> None:
        from cso_local.servers import free_port

        self.data_dir = data_dir
        self.demo = demo
        self.ports = {name: free_port() for name in self.SERVICES}
        self.output = data_dir.parent / f"{data_dir.name}.cso-up.log"
        self.env = {**os.environ, "CSO_AUTH": "off", "CSO_NATS_URL": "", "CSO_DATABASE_URL": "",
                    "CSO_NAMESPACE": "", "COLUMNS": "200", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CsoUp:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 300.0) -> None:
        """Until `cso up` says the stack is up (after the demo divisions, when asked for)."""
        cmd = [sys.executable, "-m", "cso_local.cli", "up", "--data-dir", str(self.data_dir),
               "--demo" if self.demo else "--no-demo",
               *(arg for name, port in self.ports.items() for arg in (f"--{name}-port", str(port)))]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=REPO, env=self.env)
        deadline = time.monotonic() + timeout
        while "data and logs in" not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(f"cso up exited with {self.proc.returncode}:\n{self.text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"cso up not up within {timeout:.0f}s:\n{self.text()[-4000:]}")
            time.sleep(0.2)

    def stop(self, timeout: float = 120.0) -> None:
        """As Ctrl-C does; whatever survives a cso up that did not stop is stopped as `cso down` does."""
        from cso_local.stack import Stack

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        Stack(self.data_dir).stop_recorded()

    def text(self) -> str:
        """What cso up printed so far."""
        try:
            return self.output.read_text(errors="replace")
        except OSError:
            return ""

    def state(self) -> dict[str, Any]:
        from cso_local.stack import read_stack_file

        return read_stack_file(self.data_dir) or {}

    def part(self, name: str) -> dict[str, Any]:
        """A part's entry of stack.json (url, pid, restarts)."""
        state = self.state()
        return dict(state.get("services", {}).get(name) or state.get(name) or {})

    def url(self, name: str) -> str:
        return str(self.part(name)["url"])

    def cso(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Another `cso` command against this stack (`--data-dir` added), its output captured."""
        return subprocess.run([sys.executable, "-m", "cso_local.cli", *args, "--data-dir", str(self.data_dir)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=REPO,
                              env=self.env, timeout=timeout, check=False)

    def back(self, name: str, old_pid: int, timeout: float) -> float:
        """Seconds until `name` runs under a pid other than old_pid, recorded in stack.json, and
        is ready (/readyz 200 for a service, its port answering for a server)."""
        from cso_local.servers import answers

        start = time.monotonic()
        while True:
            info = self.part(name)
            pid, url = info.get("pid"), info.get("url")
            if pid and pid != old_pid and url:
                if name in self.SERVICES:
                    ready = http_json(f"{url}/readyz", timeout=2)[0] == 200
                else:
                    ready = answers(str(url))
                if ready:
                    return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{name} not back within {timeout:.0f}s (stack.json: {info}); "
                                     f"cso up said:\n{self.text()[-3000:]}")
            time.sleep(0.1)


class Background:
    """A loop in a daemon thread for as long as a `with` block runs: a subclass's `_run`, which
    returns once `_stop` is set (the block's end sets it and waits for the thread)."""

    thread_name = "background"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


class HealthWatch(Background):
    """Polls /healthz of some services from a thread, every failed answer kept; `pause` stops
    watching one (the one being killed) and `resume` watches it again."""

    thread_name = "healthz-watch"

    def __init__(self, urls: dict[str, str], timeout: float = 10.0) -> None:
        super().__init__()
        self.urls = dict(urls)
        self.timeout = timeout
        self.paused: set[str] = set()
        self.failures: list[str] = []
        self.answers = 0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name, url in self.urls.items():
                if name in self.paused:
                    continue
                status, body = http_json(f"{url}/healthz", timeout=self.timeout)
                if name in self.paused:
                    continue  # paused while we asked: the answer says nothing
                if status == 200:
                    self.answers += 1
                else:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {name}: /healthz {status} {body}")
