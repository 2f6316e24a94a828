"""The fault-injection suite's machinery: a real cluster, a seeded workload, faults, and one verdict.

* `Cluster`: nats-server (JetStream file store) and PostgreSQL from the wheels in the test's own data
  dir, the four services as `cso up` runs them (`python -m cso.http_server`; replicas at will), the demo divisions
  loaded, and a real SMTP server (aiosmtpd, in this process) that notify sends to. Every part can be
  killed (SIGKILL), stopped and started again on the same port and the same data.
* `Workload`: the benchmark's seeded generator (bench.generator) at a size set by CSO_FAULT_EVENTS,
  published by an outside system (`OutsidePublisher`) that retries until JetStream acks each
  message (Nats-Msg-Id = event id), as the contracts README asks of an integrator.
* `settle`: waits for concrete conditions, in pipeline order: every published intake fact is in
  registry's inbox or dead-lettered, and every durable consumer has nothing pending nor unacked,
  every outbox is published, targets has no dirty region left, notify has no delivery pending.
* `verdict`: projections equal the SQL recount at every tier, no event lost, none applied twice,
  no notification sent twice. It lists every problem it finds, then fails.

Sizes (see tests/faults/README.md): CSO_FAULT_EVENTS (default 1,500; 100,000 with CSO_FAULT_FULL=1),
CSO_FAULT_STORM_EVENTS, CSO_FAULT_OUTAGE_SECONDS, CSO_FAULT_KILLS (per service), CSO_FAULT_SEED.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
from aiosmtpd.controller import Controller
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.generator import Item, Plan
from bench.generator import Workload as Generator
from contracts import Topology, ancestors, encode, make_event, snake
from cso import bus
from cso.divisions import DEMO_DIVISIONS, publish_divisions
from cso.outbox import count_pending
from cso.outbox import pending as outbox_pending
from cso.settings import Settings, env
from cso_local import servers
from cso_local.stack import BACKENDS as SERVICES
from cso_local.stack import ROOT, ensure_database, migrate_one, tail, with_database
from services.notify.api import CONSUMED as NOTIFY_CONSUMED
from services.notify.domain import Screen
from services.registry import store as registry_store
from tests.support.recount import REGISTRY_COUNTERS, projected, recount

log = logging.getLogger("faults")

# ------------------------------------------------------------------ sizes


FULL = env("CSO_FAULT_FULL", "") == "1"
EVENTS = int(env("CSO_FAULT_EVENTS", "100000" if FULL else "1500"))
OUTAGE_SECONDS = float(env("CSO_FAULT_OUTAGE_SECONDS", "30" if FULL else "6"))
KILLS_PER_SERVICE = int(env("CSO_FAULT_KILLS", "4" if FULL else "2"))
SEED = int(env("CSO_FAULT_SEED", "2026"))
# Under a 1 s ack wait most batches are delivered again while they are applied, and the pipeline
# slows down accordingly: the storm case is capped unless told otherwise.
STORM_EVENTS = int(env("CSO_FAULT_STORM_EVENTS", str(min(EVENTS, 20_000))))
# Generous: the pipeline does 100-400 events/s on a shared 2-core machine; allow 15/s plus faults.
SETTLE_SECONDS = float(env("CSO_FAULT_SETTLE_SECONDS", str(max(240.0, EVENTS / 15))))
READY_SECONDS = 120.0

TRAINING_COUNTERS = {"training_person_times", "pool_members", "pool_members_trained"}
SERVICE_NAMES = tuple(s.name for s in SERVICES)
DURABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "registry": (("CSO_INTAKE", "registry-intake"), ("CSO_DIVISIONS", "registry-divisions")),
    "training": (("CSO_REGISTRY", "training-registry"), ("CSO_DIVISIONS", "training-divisions")),
    "targets": (("CSO_REGISTRY", "targets-registry"), ("CSO_TRAINING", "targets-training"),
                ("CSO_DIVISIONS", "targets-divisions")),
    "notify": tuple((stream, f"notify-{context}") for stream, context in NOTIFY_CONSUMED),
}
# What notify's subscription in the faults asks for: some registry facts and the target status
# changes of 乐山市 (5111) and below, by e-mail and in the in-app inbox.
NOTIFIED_REGISTRY_TYPES = ("HubEstablished", "HubDissolved", "IncubationBaseOpened", "IncubationBaseClosed",
                           "OrganizationDeregistered", "PartyOrganizationDissolved")
NOTIFIED_REGION = "5111"
REGISTRY_FACT_TYPES = {"OrganizationFiled", "OrganizationRegistered", "OrganizationUpdated",
                       "OrganizationDeregistered", "HubEstablished", "HubDissolved", "IncubationBaseOpened",
                       "IncubationBaseClosed", "PartyOrganizationFormed", "PartyOrganizationDissolved"}


# What a server being away (stopped, killed, starting up, shutting down) raises at a client.
AWAY = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, nats.errors.Error)


def say(message: str) -> None:
    """Progress on stderr with a timestamp (pytest -s shows it; a failing test shows it too)."""
    print(f"{time.strftime('%H:%M:%S')} [faults] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ small SQL helpers


async def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    db = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await db.fetch(query, *args))
    finally:
        await db.close()


async def scalar(dsn: str, query: str, *args: Any) -> Any:
    rows = await sql(dsn, query, *args)
    return rows[0][0] if rows else None


# ------------------------------------------------------------------ a real SMTP server


class Mailbox:
    """Every message the SMTP server accepted, by Message-ID."""

    def __init__(self) -> None:
        self.message_ids: Counter[str] = Counter()
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.message_ids[str(msg.get("Message-ID", "")).strip()] += 1
        self.count += 1
        return "250 OK"


class SmtpSink:
    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self.port = servers.free_port()
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._controller.stop()


# ------------------------------------------------------------------ the cluster


@dataclass
class Replica:
    service: str
    index: int
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    down: bool = False          # stopped on purpose (killed, not yet restarted)
    kills: int = 0
    log_start: int = 0

    @property
    def name(self) -> str:
        return f"{self.service}#{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class ServiceDied(AssertionError):
    pass


class Cluster:
    """NATS, PostgreSQL, notify's SMTP server and every service (`replicas` processes each)."""

    def __init__(self, root: Path, replicas: int = 1, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        (self.root / "logs").mkdir(exist_ok=True)
        self.replica_count = replicas
        self.extra_env = env or {}
        self.topology = Topology("")
        self.smtp = SmtpSink()
        self.nats: servers.ServerHandle | None = None
        self.pg: servers.ServerHandle | None = None
        self.dsn = ""
        self.nc: Any = None
        self.replicas: list[Replica] = []
        self.subscription: dict[str, Any] | None = None
        self.faults: list[str] = []    # what was done, for the report

    # ---------------------------------------------------------------- start and stop

    @property
    def nats_url(self) -> str:
        assert self.nats is not None
        return self.nats.url

    @property
    def js(self) -> Any:
        return self.nc.jetstream()

    def service_env(self) -> dict[str, str]:
        # Inherited CSO_* settings would make a run depend on the shell it came from.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CSO_")}
        env.update({
            "CSO_DATABASE_URL": self.dsn, "CSO_NATS_URL": self.nats_url, "CSO_NAMESPACE": "",
            "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get(
                "PYTHONPATH", "")) if p),
            # Redelivery after a kill comes within seconds, not the default 30.
            "CSO_ACK_WAIT_SECONDS": "10",
            "CSO_BUS_CHECK_SECONDS": "2",
            # What the check after a commit leaves to the sweep (a replica killed between its commit
            # and that check, services/registry/waiting.py) is decided within a second here, not
            # the default minute. The storm (test_redelivery.py) sets an hour: no sweep helps it.
            "CSO_WAITING_SWEEP_SECONDS": "1",
            "CSO_SMTP_HOST": "127.0.0.1", "CSO_SMTP_PORT": str(self.smtp.port),
            "CSO_SMTP_FROM": "cso-notify@faults.test",
            # A killed sender's lease expires in seconds; no delivery gives up while a server is away.
            "CSO_NOTIFY_LEASE_SECONDS": "20", "CSO_NOTIFY_SEND_TIMEOUT_SECONDS": "10",
            "CSO_NOTIFY_POLL_SECONDS": "0.2", "CSO_NOTIFY_RETRY_BASE_SECONDS": "0.5",
            "CSO_NOTIFY_RETRY_MAX_SECONDS": "3", "CSO_NOTIFY_MAX_ATTEMPTS": "50",
            "CSO_NOTIFY_SCHEDULE_SECONDS": "2",
            # The faults are the bus's and the servers', not the callers': requests go without
            # tokens (HTTP tokens are on by default; tests/integration/test_auth.py tests them).
            "CSO_AUTH": "off",
        })
        env.update(self.extra_env)
        return env

    async def start(self) -> None:
        started = time.monotonic()
        await asyncio.to_thread(self.smtp.start)
        self.nats = await asyncio.to_thread(servers.start_nats, self.root / "nats")
        self.pg = await asyncio.to_thread(servers.start_postgres, self.root / "postgres")
        await ensure_database(self.pg.url, "cso")
        self.dsn = with_database(self.pg.url, "cso")
        settings = Settings(database_url=self.dsn, nats_url=self.nats_url, namespace="")
        for spec in SERVICES:
            await asyncio.to_thread(migrate_one, spec.name, settings)

        async def quiet(_e: Exception) -> None:
            return None

        self.nc = await nats.connect(self.nats_url, name="faults-harness", max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.2, error_cb=quiet)
        await bus.ensure_streams(self.nc, self.topology)
        for spec in SERVICES:
            for i in range(self.replica_count):
                replica = Replica(spec.name, i, servers.free_port(), self.root / "logs" / f"{spec.name}-{i}.log")
                self.replicas.append(replica)
                self._spawn(replica)
        await asyncio.gather(*(self.wait_ready(r) for r in self.replicas))
        # Subscribed before anything happens: notify tells only of what it hears after that.
        self.subscription = await self.subscribe()
        await publish_divisions(self.js, self.topology, DEMO_DIVISIONS)
        await self.wait_divisions()
        say(f"cluster up in {time.monotonic() - started:.1f}s: {len(self.replicas)} service processes, "
            f"nats {self.nats_url}, postgres {self.pg.url}, smtp :{self.smtp.port}, data {self.root}")

    async def close(self) -> None:
        started = time.monotonic()
        for r in self.replicas:
            if r.proc is not None and r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.send_signal(signal.SIGTERM)
        for r in self.replicas:
            if r.proc is not None:
                try:
                    await asyncio.to_thread(r.proc.wait, 5)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    await asyncio.to_thread(r.proc.wait)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)
        for kind in ("nats", "postgres"):
            handle = servers.running(self.root / kind, kind)  # type: ignore[arg-type]
            if handle is not None:
                await asyncio.to_thread(servers.stop, handle)
        await asyncio.to_thread(self.smtp.stop)
        say(f"cluster down in {time.monotonic() - started:.1f}s")

    def _spawn(self, replica: Replica) -> None:
        spec = next(s for s in SERVICES if s.name == replica.service)
        # As `cso up` and the image run a service (cso/http_server.py: uvicorn with the HTTP limits).
        cmd = [sys.executable, "-m", "cso.http_server", spec.factory, "--host", "127.0.0.1",
               "--port", str(replica.port), "--no-access-log"]
        with replica.log.open("ab") as out:
            replica.log_start = out.tell()
            out.write(f"--- {time.strftime('%H:%M:%S')} start {replica.name}\n".encode())
            out.flush()
            replica.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=ROOT, env=self.service_env(), start_new_session=True)
        replica.down = False

    async def wait_ready(self, replica: Replica, timeout: float = READY_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        async with httpx.AsyncClient(trust_env=False) as client:
            while True:
                assert replica.proc is not None
                if replica.proc.poll() is not None:
                    raise ServiceDied(f"{replica.name} exited with {replica.proc.returncode} while starting:\n"
                                      f"{tail(replica.log, replica.log_start)}")
                try:
                    response = await client.get(f"{replica.url}/readyz", timeout=2)
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text}"
                except httpx.HTTPError as e:
                    last = repr(e)
                if time.monotonic() > deadline:
                    raise AssertionError(f"{replica.name} not ready within {timeout:.0f}s ({last}):\n"
                                         f"{tail(replica.log, replica.log_start)}")
                await asyncio.sleep(0.2)

    async def wait_divisions(self) -> None:
        async def loaded() -> bool:
            counties = [await scalar(self.dsn, f"SELECT count(*) FROM {schema}.county")
                        for schema in ("registry", "training")]
            targets = await scalar(self.dsn, "SELECT count(*) FROM targets.division WHERE tier = 'county'")
            notify = await scalar(self.dsn, "SELECT count(*) FROM notify.division WHERE length(code) = 6")
            return counties == [12, 12] and targets == 12 and notify == 12

        await until(loaded, 120, "the demo divisions reach every service", self.check_alive)

    async def subscribe(self) -> dict[str, Any]:
        """notify: one recipient hears of some registry facts and every target status change in 5111."""
        body = {"recipient": "faults.watch", "region": NOTIFIED_REGION, "include_subregions": True,
                "events": [*NOTIFIED_REGISTRY_TYPES, "TargetStatusChanged"],
                "channels": {"email": "watch@faults.test", "inbox": True}}
        notify = self.of("notify")[0]
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.post(f"{notify.url}/subscriptions", json=body, timeout=10)
        assert response.status_code == 201, response.text
        sub: dict[str, Any] = response.json()
        return sub

    # ---------------------------------------------------------------- processes

    def of(self, service: str) -> list[Replica]:
        return [r for r in self.replicas if r.service == service]

    def check_alive(self) -> None:
        """Fail at once if a service process died that the test did not kill."""
        for r in self.replicas:
            if not r.down and r.proc is not None and r.proc.poll() is not None:
                raise ServiceDied(f"{r.name} (pid {r.proc.pid}) exited with {r.proc.returncode} on its own; "
                                  f"log {r.log}:\n{tail(r.log, r.log_start, 60)}")

    async def kill(self, replica: Replica, why: str = "") -> None:
        assert replica.proc is not None
        replica.down = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(replica.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(replica.proc.wait, 10)
        replica.kills += 1
        self.faults.append(f"kill -9 {replica.name}{' ' + why if why else ''}")
        say(f"kill -9 {replica.name} (pid {replica.proc.pid}){' ' + why if why else ''}")

    async def restart(self, replica: Replica, wait: bool = True) -> asyncio.Task[None]:
        """Start the replica again on its port; with wait=False, go on while it starts (await the
        returned task before killing it again)."""
        self._spawn(replica)

        async def ready() -> None:
            await self.wait_ready(replica)
            say(f"{replica.name} restarted (pid {replica.pid})")

        task = asyncio.create_task(ready())
        if wait:
            await task
        return task

    # ---------------------------------------------------------------- servers

    async def stop_nats(self) -> None:
        assert self.nats is not None
        await asyncio.to_thread(servers.stop, self.nats)
        self.faults.append("nats-server stopped")
        say("nats-server stopped")

    async def start_nats(self) -> None:
        assert self.nats is not None
        url = self.nats.url
        self.nats = await asyncio.to_thread(servers.start_nats, self.root / "nats", self.nats.port)
        assert self.nats.url == url, (self.nats.url, url)
        say("nats-server started again on the same port and store")
        await self.operator_streams()

    async def operator_streams(self) -> None:
        """What the operator's migrate step (or `cso up`'s supervision) does after NATS comes back:
        make any stream its store lost; the services wait for them, they may not create them."""
        deadline = time.monotonic() + 30
        while not self.nc.is_connected:
            assert time.monotonic() < deadline, "the harness did not reconnect to nats-server"
            await asyncio.sleep(0.1)
        await bus.ensure_streams(self.nc, self.topology)

    async def stop_postgres(self, crash: bool = False) -> None:
        assert self.pg is not None
        await asyncio.to_thread(servers.kill if crash else servers.stop, self.pg)
        self.faults.append(f"postgres {'killed (SIGKILL)' if crash else 'stopped'}")
        say(f"postgres {'killed (SIGKILL)' if crash else 'stopped (fast shutdown)'}")

    async def start_postgres(self) -> None:
        assert self.pg is not None
        url = self.pg.url
        self.pg = await asyncio.to_thread(servers.start_postgres, self.root / "postgres", self.pg.port)
        assert self.pg.url == url, (self.pg.url, url)
        say("postgres started again on the same port and data dir")

    # ---------------------------------------------------------------- observations

    async def consumer_state(self, stream: str, durable: str) -> tuple[int, int] | None:
        """(num_pending, num_ack_pending) of a durable consumer; None if it cannot be asked."""
        try:
            info = await self.js.consumer_info(stream, durable, timeout=3)
        except Exception:
            return None
        return int(info.num_pending), int(info.num_ack_pending)

    async def takes(self, stream: str, durable: str) -> Callable[[str], bool]:
        """Whether the durable consumer is handed events of a type: its filter subjects are either
        the whole context's (`cso.<context>.>`) or one per event type (`cso.<context>.<event>.>`)."""
        info = await self.js.consumer_info(stream, durable, timeout=10)
        filters = info.config.filter_subjects or [info.config.filter_subject or ">"]
        if any(len(f.split(".")) < 4 or f.split(".")[-3] == "cso" for f in filters):
            return lambda _type: True
        named = {f.split(".")[-2] for f in filters}
        return lambda event_type: snake(event_type) in named

    async def mid_batch(self, replica: Replica) -> bool:
        """True while one of the process's transactions has claimed a batch in its service's inbox
        and not committed: it holds the inbox's row lock from the claim until the commit, which
        no outbox relay or sender transaction takes."""
        ports = tcp_ports(replica.pid)
        if not ports:
            return False
        return bool(await scalar(
            self.dsn, "SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                      "WHERE a.client_port = ANY($1) AND a.backend_xid IS NOT NULL "
                      "AND l.relation = to_regclass($2)", list(ports), f"{replica.service}.inbox"))

    def pause(self, replica: Replica) -> None:
        """SIGSTOP: the process holds whatever it holds (transactions, unacked messages)."""
        assert replica.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(replica.proc.pid, signal.SIGSTOP)

    def resume(self, replica: Replica) -> None:
        assert replica.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(replica.proc.pid, signal.SIGCONT)

    async def metric(self, service: str, name: str) -> float:
        """A Prometheus counter summed over the service's live replicas (since each one started)."""
        total = 0.0
        async with httpx.AsyncClient(trust_env=False) as client:
            for r in self.of(service):
                text = (await client.get(f"{r.url}/metrics/", timeout=10)).text
                for line in text.splitlines():
                    if line.startswith(name) and (line[len(name)] in " {"):
                        total += float(line.rsplit(" ", 1)[1])
        return total

    async def dead_letters(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in await read_stream(self.js, "CSO_DEADLETTER")]


def dead_event_id(record: dict[str, Any]) -> str:
    """The event id inside a dead letter (its message as received), or a marker if it has none."""
    try:
        return str(json.loads(record["data"])["event_id"])
    except (ValueError, KeyError, TypeError):
        return f"unparsable:{record.get('stream')}:{record.get('stream_seq')}"


def tcp_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets a process holds (its connections to PostgreSQL among them)."""
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports: set[int] = set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


async def read_stream(js: Any, stream: str, subject: str = ">") -> list[bytes]:
    """Every message a stream holds now (an ephemeral consumer from its first message)."""
    info = await js.stream_info(stream)
    total = int(info.state.messages)
    if not total:
        return []
    sub = await js.pull_subscribe(subject, durable=None, stream=stream,
                                  config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                                                        inactive_threshold=30))
    out: list[bytes] = []
    try:
        while len(out) < total:
            try:
                msgs = await sub.fetch(min(1000, total - len(out)), timeout=5)
            except Exception:
                break
            out += [m.data for m in msgs]
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str,
                alive: Callable[[], None] | None = None, interval: float = 0.3) -> Any:
    """Poll `check` until it returns something truthy; errors (a server away) count as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        if alive is not None:
            alive()
        try:
            last = await check()
        except AWAY as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")
        await asyncio.sleep(interval)


# ------------------------------------------------------------------ the workload


def plan_for(events: int) -> Plan:
    """Densities that make the demo divisions' workload about `events` long (13,600 at the plans')."""
    f = max(events, 100) / 13_600
    urban, rural = max(1, round(12 * f)), max(0, round(6 * f))
    spread = 1 if min(urban, rural) <= 3 else 3
    return Plan(per_urban=urban, per_rural=rural, spread=spread)


@dataclass
class Fact:
    subject: str
    data: bytes
    event_id: str
    type: str
    payload: dict[str, Any]
    region: str
    stream: str    # "intake" or "training"
    msg_id: str | None = None    # Nats-Msg-Id when it is not the event id (a duplicate on purpose)


@dataclass
class Pause:
    """A point in a workload where the publisher waits until `check` holds."""

    check: Callable[[], Awaitable[bool]]
    what: str


@dataclass
class Workload:
    """The benchmark generator's workload over the demo divisions; every other hub names a leader
    (training puts hub leaders in the pool and publishes that: training at work). The publisher
    stamps `recorded_at` as it publishes."""

    facts: list[Fact | Pause | None]   # None: a barrier (let registry take every intake fact so far)
    training_expected: Counter[tuple[str, str]]

    @classmethod
    def build(cls, events: int = EVENTS, seed: int = SEED, gap: int = 5000) -> Workload:
        # The gap keeps follow-ups further behind what they follow than a kill can reorder: the
        # messages a killed consumer held come back after the ack wait, while the next ones, up to
        # max_ack_pending (2 batches, 2,000 at the default batch), are delivered meanwhile. Within that window a
        # registration overtaking its filing is taken for a new registration, and the late filing
        # is refused (see test_redelivery.py). Below 5,000 events the follow-ups wait behind the
        # generator's barriers instead.
        gen = Generator(DEMO_DIVISIONS, None, seed=seed, plan=plan_for(events), gap=gap)
        now = datetime.now(timezone.utc).isoformat()
        facts: list[Fact | Pause | None] = []
        for item in gen.events():
            facts.append(None if item.barrier else fact_of(item, now))
        return cls(facts, Counter({k: v for k, v in gen.training_expected.items() if v}))

    @property
    def events(self) -> list[Fact]:
        return [f for f in self.facts if isinstance(f, Fact)]

    @property
    def intake(self) -> list[Fact]:
        return [f for f in self.facts if isinstance(f, Fact) and f.stream == "intake"]

    def summary(self) -> str:
        kinds = Counter(f.type for f in self.events)
        return f"{len(self.events):,} events ({', '.join(f'{n} {t}' for t, n in kinds.most_common())})"


def fact_of(item: Item, recorded_at: str) -> Fact:
    envelope = json.loads(item.data)
    envelope["recorded_at"] = recorded_at
    payload = envelope["payload"]
    if item.type == "HubEstablished" and int(payload["hub_id"][-1], 16) % 2 == 0:
        payload["leader_person_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cso-faults/leader/{payload['hub_id']}"))
    data = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
    return Fact(item.subject, data, item.event_id, item.type, payload, envelope["region"], item.stream)


def new_fact(payload: Any, region: str | None = None, event_id: uuid.UUID | None = None,
             source: str = "faults-outside-register") -> Fact:
    """A fact an outside system publishes on registry's intake (a contracts payload model)."""
    envelope = make_event(payload, source=source, region=region, event_id=event_id)
    data = encode(envelope)
    body = json.loads(data)
    subject = Topology("").intake_subject(envelope.source, envelope.type, envelope.region)
    return Fact(subject, data, str(envelope.event_id), envelope.type, body["payload"], envelope.region, "intake")


def envelope_bytes(fact: Fact, **changes: Any) -> bytes:
    envelope = json.loads(fact.data)
    envelope.update(changes)
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


class OutsidePublisher:
    """Another government system: publishes each fact until JetStream acks it, whatever the bus does
    meanwhile. Nats-Msg-Id is the event id unless told otherwise. With `lead`, it stays at most that
    many intake facts ahead of what registry has taken, so it keeps publishing through the whole run
    (and through every fault) instead of filling the stream in the first seconds."""

    def __init__(self, cluster: Cluster, window: int = 200, lead: int | None = 1000) -> None:
        self.cluster, self.window, self.lead = cluster, window, lead
        self.sent = 0
        self.retries = 0
        self.phase = "idle"
        self.duplicates_acked = 0
        self.intake_ids: set[str] = set()
        self.training_ids: set[str] = set()

    async def _one(self, subject: str, data: bytes, msg_id: str) -> None:
        while True:
            try:
                ack = await self.cluster.js.publish(subject, data, timeout=5, headers={"Nats-Msg-Id": msg_id})
                if ack.duplicate:
                    self.duplicates_acked += 1
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.retries += 1
                await asyncio.sleep(0.5)

    async def _keep_lead(self) -> None:
        cluster = self.cluster

        async def close_enough() -> bool:
            if self.lead is None:   # let go meanwhile (to publish into an outage, say)
                return True
            taken = await scalar(cluster.dsn, "SELECT count(*) FROM registry.inbox WHERE stream = 'CSO_INTAKE'")
            lead = self.lead
            return lead is None or len(self.intake_ids) - int(taken) <= lead

        await until(close_enough, SETTLE_SECONDS, f"registry coming within {self.lead} facts of the publisher",
                    interval=0.2)

    def _note(self, fact: Fact) -> None:
        (self.intake_ids if fact.stream == "intake" else self.training_ids).add(fact.event_id)

    async def publish(self, facts: Sequence[Fact], msg_id: Callable[[Fact], str] | None = None,
                      data: Callable[[Fact], bytes] | None = None) -> None:
        for start in range(0, len(facts), self.window):
            chunk = facts[start:start + self.window]
            await self._keep_lead()
            # Recorded now: notify tells a subscriber only of what was recorded after it subscribed.
            now = datetime.now(timezone.utc).isoformat()
            await asyncio.gather(*(self._one(f.subject, data(f) if data else envelope_bytes(f, recorded_at=now),
                                             msg_id(f) if msg_id else f.msg_id or f.event_id) for f in chunk))
            for f in chunk:
                self._note(f)
            self.sent += len(chunk)

    async def publish_workload(self, workload: Workload, at_barrier: Callable[[], Awaitable[None]] | None = None
                               ) -> None:
        """In order; at a barrier, after everything before it is acked, wait until registry took every
        intake fact so far (the generator's barriers: the last follow-ups have nothing left to keep
        them apart from what they follow)."""
        pending: list[Fact] = []
        self.phase = "publishing"
        for fact in workload.facts:
            if fact is None:
                await self.publish(pending)
                pending = []
                self.phase = "at a barrier"
                await (at_barrier or self.barrier)()
                self.phase = "publishing"
                continue
            if isinstance(fact, Pause):
                await self.publish(pending)
                pending = []
                self.phase = f"waiting for {fact.what}"
                await until(fact.check, SETTLE_SECONDS, fact.what, self.cluster.check_alive)
                self.phase = "publishing"
                continue
            pending.append(fact)
        await self.publish(pending)
        self.phase = "done"

    async def barrier(self) -> None:
        cluster = self.cluster

        async def taken() -> bool:
            state = await cluster.consumer_state("CSO_INTAKE", "registry-intake")
            return state == (0, 0)

        await until(taken, SETTLE_SECONDS, "registry takes the intake before a barrier", interval=0.5)


# ------------------------------------------------------------------ waiting until done


async def settle(cluster: Cluster, publisher: OutsidePublisher, timeout: float = SETTLE_SECONDS) -> float:
    """Until all work is done, checked in pipeline order in one pass (so a later stage is looked at
    only after every stage before it finished). Returns the seconds it took."""
    started = time.monotonic()
    last: list[str] = []

    async def done() -> bool:
        nonlocal last
        last = await outstanding(cluster, publisher)
        return not last

    try:
        await until(done, timeout, "the cluster finishing its work", cluster.check_alive, interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}; still outstanding: {last}") from None
    return time.monotonic() - started


async def outstanding(cluster: Cluster, publisher: OutsidePublisher) -> list[str]:
    out: list[str] = []
    dsn = cluster.dsn
    # 1. registry has every intake fact: applied, refused, or dead-lettered.
    dead = {dead_event_id(d) for d in await cluster.dead_letters()
            if d.get("service") == "registry" and d.get("stream") == "CSO_INTAKE"}
    taken = await scalar(dsn, "SELECT count(*) FROM registry.inbox WHERE stream = 'CSO_INTAKE'")
    if taken + len(dead) < len(publisher.intake_ids):
        out.append(f"registry: {len(publisher.intake_ids) - taken - len(dead)} intake facts not yet taken")
    else:
        inbox = {str(r[0]) for r in await sql(dsn, "SELECT event_id FROM registry.inbox WHERE stream = 'CSO_INTAKE'")}
        missing = publisher.intake_ids - inbox - dead
        if missing:
            out.append(f"registry: {len(missing)} intake facts not yet taken")
    if n := await scalar(dsn, registry_store.count_satisfied_waiting()):
        out.append(f"registry: {n} waiting facts whose need is on record (the sweep decides them)")
    for service in ("registry", "training", "targets", "notify"):
        for stream, durable in DURABLES[service]:
            state = await cluster.consumer_state(stream, durable)
            if state != (0, 0):
                out.append(f"{durable}: pending/unacked {state}")
        if service == "targets" and (n := await scalar(dsn, "SELECT count(*) FROM targets.dirty_region")):
            out.append(f"targets: {n} dirty regions")
        if service == "notify" and (n := await scalar(
                dsn, "SELECT count(*) FROM notify.delivery WHERE status = 'pending'")):
            out.append(f"notify: {n} deliveries pending")
        if n := await scalar(dsn, count_pending(service)):
            out.append(f"{service}: {n} outbox rows unpublished")
    return out


# ------------------------------------------------------------------ the verdict


@dataclass
class Expectation:
    """What the verdict holds the run to, beyond the workload itself."""

    rejected: dict[str, str] = field(default_factory=dict)   # intake event id -> field its reason names


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


def _sample(items: Iterable[Any], n: int = 5) -> list[Any]:
    return sorted(str(i) for i in items)[:n]


async def verdict(cluster: Cluster, workload: Workload, publisher: OutsidePublisher,
                  expect: Expectation | None = None) -> Report:
    """Projections equal the recount, no event lost, none applied twice, no notification sent twice.
    Every problem found is listed in one AssertionError."""
    expect = expect or Expectation()
    r = Report()
    dsn = cluster.dsn
    await coverage_equals_recount(dsn, r)
    await nothing_lost_nothing_twice(cluster, workload, publisher, expect, r)
    await training_counted_once(dsn, workload, r)
    await notified_once(cluster, r)
    r.facts["faults"] = list(cluster.faults)
    if r.problems:
        raise AssertionError("verdict: " + str(len(r.problems)) + " problem(s):\n  - " + "\n  - ".join(r.problems))
    say("verdict holds: " + json.dumps(r.facts, ensure_ascii=False, default=str))
    return r


async def coverage_equals_recount(dsn: str, r: Report) -> None:
    expected = await recount(dsn)
    actual = await projected(dsn, REGISTRY_COUNTERS)
    diff = {k: (actual.get(k), expected.get(k)) for k in actual.keys() | expected.keys()
            if actual.get(k) != expected.get(k)}
    r.check(not diff, f"coverage differs from the SQL recount at {len(diff)} (region, counter)s, "
                      f"(projected, recounted): {dict(sorted(diff.items())[:8])}")
    tiers = sorted({len(region) for region, _ in expected})
    r.check(tiers == [2, 4, 6, 9, 12], f"the recount covers tiers {tiers}, not 2, 4, 6, 9 and 12")
    orgs = sum(v for (region, c), v in expected.items() if c == "orgs" and len(region) == 2)
    r.check(orgs > 0, "no active organization at all: the workload did not run")
    r.facts["counters_compared"] = len(expected)
    r.facts["active_organizations"] = orgs


async def nothing_lost_nothing_twice(cluster: Cluster, workload: Workload, publisher: OutsidePublisher,
                                     expect: Expectation, r: Report) -> None:
    dsn = cluster.dsn
    intake = {f.event_id: f for f in workload.intake}
    published = publisher.intake_ids
    r.check(set(intake) <= published, f"{len(set(intake) - published)} workload facts were never published")
    accepted_expected = published - set(expect.rejected)

    # registry: every accepted fact recorded once (its outbox keeps the incoming id: the receipt).
    outbox = await sql(dsn, "SELECT event_id, type, subject, "
                            f"{outbox_pending('registry', alias='o')} AS pending FROM registry.outbox o")
    facts_out = Counter(str(row["event_id"]) for row in outbox if row["type"] in REGISTRY_FACT_TYPES)
    accepted = set(facts_out)
    lost = accepted_expected - accepted
    r.check(not lost, f"{len(lost)} accepted intake facts are not in registry's outbox (lost): {_sample(lost)}")
    extra = accepted - accepted_expected
    r.check(not extra, f"{len(extra)} facts in registry's outbox that should have been refused or were never "
                       f"published: {_sample(extra)}")
    r.check(not any(row["pending"] for row in outbox), "registry's outbox has rows its relay has not published")

    # ... and in its tables.
    for table, types, key in (("organization", ("OrganizationFiled", "OrganizationRegistered"), "organization_id"),
                              ("hub", ("HubEstablished",), "hub_id"),
                              ("incubation_base", ("IncubationBaseOpened",), "base_id"),
                              ("party_organization", ("PartyOrganizationFormed",), "party_organization_id")):
        wanted = {intake[e].payload[key] for e in accepted_expected if e in intake and intake[e].type in types}
        have = {str(row[0]) for row in await sql(dsn, f"SELECT id FROM registry.{table}")}
        r.check(wanted <= have, f"registry.{table}: {len(wanted - have)} records missing: {_sample(wanted - have)}")
        r.check(have <= wanted, f"registry.{table}: {len(have - wanted)} records no accepted fact made: "
                                f"{_sample(have - wanted)}")
    ended = {intake[e].payload["organization_id"] for e in accepted_expected
             if e in intake and intake[e].type == "OrganizationDeregistered"}
    active = {str(row[0]) for row in await sql(dsn, "SELECT id FROM registry.organization WHERE status = 'active'")}
    r.check(not ended & active, f"{len(ended & active)} deregistered organizations are still active")

    # registry's inbox: every published intake fact claimed once (refused ones too).
    reg_inbox = {str(row[0]) for row in await sql(dsn, "SELECT event_id FROM registry.inbox WHERE stream = "
                                                       "'CSO_INTAKE'")}
    r.check(accepted_expected <= reg_inbox, f"{len(accepted_expected - reg_inbox)} accepted facts missing from "
                                            "registry's inbox")

    # Dead letters: exactly the expected refusals, each naming its field; nothing else anywhere.
    dead = await cluster.dead_letters()
    intake_dead: dict[str, list[str]] = {}
    for d in dead:
        eid = dead_event_id(d)
        if d.get("service") == "registry" and d.get("stream") == "CSO_INTAKE":
            intake_dead.setdefault(eid, []).append(d.get("reason", ""))
        else:
            r.problems.append(f"unexpected dead letter from {d.get('service')} on {d.get('stream')}: "
                              f"{d.get('reason', '')[:300]}")
    wrongly = {e: reasons for e, reasons in intake_dead.items() if e not in expect.rejected}
    r.check(not wrongly, f"{len(wrongly)} good facts were dead-lettered (lost): "
                         f"{dict(list(wrongly.items())[:5])}")
    for eid, field_name in expect.rejected.items():
        reasons = intake_dead.get(eid)
        r.check(bool(reasons), f"{eid} should have been refused and dead-lettered, but was not")
        if reasons:
            r.check(any(field_name in reason for reason in reasons),
                    f"{eid} was dead-lettered with {reasons} (naming no {field_name!r})")
            r.check(len(reasons) == 1, f"{eid} was dead-lettered {len(reasons)} times")
    r.facts["dead_letters"] = len(dead)
    if intake_dead:
        r.facts["refusals"] = sorted({reason[:120] for reasons in intake_dead.values() for reason in reasons})[:6]

    # Downstream: every event of registry's and training's outboxes applied exactly once.
    # Each as (event id, type, subject): a consumer filtered to its handler's types is handed only
    # those, and notify parses only what a subscription can match by subject (its screen).
    registry_events = {(str(row["event_id"]), row["type"], row["subject"]) for row in outbox
                       if row["type"] != "BusGapDetected"}
    training_outbox = {(str(row[0]), row[1], row[2])
                       for row in await sql(dsn, "SELECT event_id, type, subject FROM training.outbox")}
    training_outbox |= {(f.event_id, f.type, f.subject) for f in workload.events
                        if f.stream != "intake" and f.event_id in publisher.training_ids}
    targets_outbox = {(str(row[0]), row[1], row[2])
                      for row in await sql(dsn, "SELECT event_id, type, subject FROM targets.outbox")}
    sent_on = {"CSO_REGISTRY": registry_events, "CSO_TRAINING": training_outbox, "CSO_TARGETS": targets_outbox}
    sub = cluster.subscription or {}
    screen = Screen((kind, sub["region"], sub["include_subregions"]) for kind in sub.get("events", ()))
    wanted_by: dict[str, dict[str, set[str]]] = {}
    sent_to: dict[tuple[str, str], set[str]] = {}   # what was published that the consumer takes
    for service in ("targets", "training", "notify"):
        for stream, durable in DURABLES[service]:
            if stream in sent_on:
                takes = await cluster.takes(stream, durable)
                sent_to[service, stream] = {e for e, t, _ in sent_on[stream] if takes(t)}
                wanted_by.setdefault(service, {})[stream] = {
                    e for e, t, subject in sent_on[stream] if takes(t) and (service != "notify" or screen(subject))}
    for service, streams in wanted_by.items():
        for stream, wanted in streams.items():
            rows = await sql(dsn, f"SELECT event_id FROM {service}.inbox WHERE stream = $1", stream)
            have = Counter(str(row[0]) for row in rows)
            twice = [e for e, n in have.items() if n > 1]
            r.check(not twice, f"{service}'s inbox holds {len(twice)} events of {stream} more than once")
            missing = wanted - set(have)
            r.check(not missing, f"{service} never applied {len(missing)} events of {stream} (lost): "
                                 f"{_sample(missing)}")
            foreign = set(have) - sent_to[service, stream]
            r.check(not foreign, f"{service} applied {len(foreign)} events of {stream} nobody published: "
                                 f"{_sample(foreign)}")
    r.facts.update(intake_published=len(published), registry_accepted=len(accepted),
                   registry_refused=len(intake_dead), training_events=len(training_outbox),
                   targets_events=len(targets_outbox))


async def training_counted_once(dsn: str, workload: Workload, r: Report) -> None:
    """Training counters: the generator's own expectation for the facts it published straight on the
    training stream, plus the hub leaders training put in the pools (recounted from its outbox)."""
    expected = Counter(workload.training_expected)
    leaders = 0
    for (data,) in await sql(dsn, "SELECT data FROM training.outbox WHERE type = 'TalentPoolMemberAdded'"):
        payload = json.loads(bytes(data))["payload"]
        leaders += 1
        for region in ancestors(payload["county_code"])[:4]:
            expected[(region, "pool_members")] += 1
    actual = await projected(dsn, TRAINING_COUNTERS)
    diff = {k: (actual.get(k), expected.get(k)) for k in actual.keys() | expected.keys()
            if actual.get(k) != expected.get(k)}
    r.check(not diff, f"training counters differ at {len(diff)} (region, counter)s, (projected, expected): "
                      f"{dict(sorted(diff.items())[:8])}")
    r.check(leaders > 0, "training put no hub leader in a pool: the training path did not run")
    r.facts["hub_leaders_pooled"] = leaders


async def notified_once(cluster: Cluster, r: Report) -> None:
    dsn = cluster.dsn
    assert cluster.subscription is not None
    sub_id = str(cluster.subscription["id"])
    channels = ("email", "inbox")
    # What should reach the subscriber: registry facts of those types in 5111, every status change.
    wanted: set[str] = set()
    for schema, types in (("registry", list(NOTIFIED_REGISTRY_TYPES)), ("targets", ["TargetStatusChanged"])):
        for row in await sql(dsn, f"SELECT event_id, data FROM {schema}.outbox WHERE type = ANY($1)", types):
            if json.loads(bytes(row["data"]))["region"].startswith(NOTIFIED_REGION):
                wanted.add(str(row["event_id"]))
    # Targets evaluates its catalogue as it starts: what notify applied before the subscription
    # existed reaches nobody (a subscription is not retroactive); those may go either way.
    before = {str(row[0]) for row in await sql(
        dsn, "SELECT event_id FROM notify.inbox WHERE applied_at < (SELECT created_at FROM notify.subscription "
             "WHERE id = $1)", uuid.UUID(sub_id))}
    wanted -= before
    deliveries = await sql(dsn, "SELECT id, event_id, channel, status, attempts FROM notify.delivery "
                                "WHERE subscription_id = $1", uuid.UUID(sub_id))
    per = Counter((str(d["event_id"]), d["channel"]) for d in deliveries)
    for channel in channels:
        have = {e for (e, c) in per if c == channel}
        r.check(wanted <= have, f"notify: {len(wanted - have)} events never got a {channel} delivery (lost): "
                                f"{_sample(wanted - have)}")
        unexpected = have - before - wanted
        r.check(not unexpected, f"notify: {len(unexpected)} {channel} deliveries for events it should not "
                                f"tell of: {_sample(unexpected)}")
    twice = [k for k, n in per.items() if n > 1]
    r.check(not twice, f"notify: {len(twice)} (event, channel) pairs delivered more than once")
    unsent = Counter(d["status"] for d in deliveries if d["status"] != "sent")
    r.check(not unsent, f"notify: deliveries not sent: {dict(unsent)}")

    # The inbox channel: exactly once per delivery.
    inbox = Counter(str(row[0]) for row in await sql(
        dsn, "SELECT event_id FROM notify.inbox_message WHERE subscription_id = $1", uuid.UUID(sub_id)))
    inbox_wanted = {str(d["event_id"]) for d in deliveries if d["channel"] == "inbox"}
    r.check(set(inbox) == inbox_wanted, f"notify inbox: {len(inbox_wanted - set(inbox))} missing, "
                                        f"{len(set(inbox) - inbox_wanted)} unexpected")
    r.check(all(n == 1 for n in inbox.values()), f"notify inbox: {sum(1 for n in inbox.values() if n > 1)} "
                                                 "messages shown more than once")

    # E-mail, as the SMTP server received it: every delivery's Message-ID once.
    box = cluster.smtp.mailbox.message_ids
    email_ids = {f"<{d['id']}@cso-notify>": d for d in deliveries if d["channel"] == "email"}
    r.check(set(box) == set(email_ids), f"smtp: {len(set(email_ids) - set(box))} e-mails never arrived, "
                                        f"{len(set(box) - set(email_ids))} arrived that no delivery sent")
    # At-least-once towards the outside world, as notify promises: an e-mail whose first attempt
    # timed out after the server took it, or whose sender died before recording the send, goes out
    # again with the same Message-ID (receivers drop the repeat). A repeat is allowed only for a
    # delivery attempted more than once; one attempt, two e-mails would be notify sending twice.
    repeated = {m: n for m, n in box.items() if n > 1}
    unexcused = {m: n for m, n in repeated.items() if m not in email_ids or email_ids[m]["attempts"] < 2}
    r.check(not unexcused, f"smtp: {len(unexcused)} e-mails arrived more than once from a single attempt: "
                           f"{dict(list(unexcused.items())[:5])}")

    # One NotificationSent per delivery.
    outcomes = Counter(json.loads(bytes(row[0]))["payload"]["delivery_id"] for row in await sql(
        dsn, "SELECT data FROM notify.outbox WHERE type = 'NotificationSent'"))
    r.check(set(outcomes) == {str(d["id"]) for d in deliveries} and all(n == 1 for n in outcomes.values()),
            "notify: NotificationSent is not exactly one per delivery")
    r.facts.update(notified_events=len(wanted), deliveries=len(deliveries), emails=cluster.smtp.mailbox.count,
                   emails_resent=sum(n - 1 for n in repeated.values()))


# ------------------------------------------------------------------ running a case


async def run_case(cluster: Cluster, workload: Workload,
                   injector: Callable[[OutsidePublisher], Awaitable[None]] | None = None,
                   expect: Expectation | None = None, publisher: OutsidePublisher | None = None) -> Report:
    """Publish the workload while `injector` does its damage (it must leave every part running),
    wait until the work is done, then the verdict."""
    publisher = publisher or OutsidePublisher(cluster)
    say(f"workload: {workload.summary()}")
    started = time.monotonic()
    publishing = asyncio.create_task(publisher.publish_workload(workload))
    injecting = asyncio.create_task(injector(publisher)) if injector else None
    try:
        while not publishing.done() or (injecting is not None and not injecting.done()):
            cluster.check_alive()
            await asyncio.wait([t for t in (publishing, injecting) if t is not None], timeout=1,
                               return_when=asyncio.FIRST_EXCEPTION)
            for task in (publishing, injecting):
                if task is not None and task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        for task in (publishing, injecting):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
    for r in cluster.replicas:
        assert not r.down, f"the injector left {r.name} down"
    settled = await settle(cluster, publisher)
    seconds = time.monotonic() - started
    report = await verdict(cluster, workload, publisher, expect)
    report.facts.update(events=len(workload.events), seconds=round(seconds, 1), settle_seconds=round(settled, 1),
                        publish_retries=publisher.retries)
    say(f"case done in {seconds:.1f}s ({len(workload.events) / seconds:.0f} events/s end to end)")
    return report


async def progress(cluster: Cluster, total: int) -> float:
    """The share of the intake registry has claimed so far (0 while the database is away)."""
    try:
        n = await scalar(cluster.dsn, "SELECT count(*) FROM registry.inbox WHERE stream = 'CSO_INTAKE'")
    except AWAY:
        return 0.0
    return float(n) / max(total, 1)


async def taken(cluster: Cluster, service: str) -> int:
    """How many events the service has taken so far: its inbox's rows; for notify, which acks
    unparsed what no subscription can match (its screen) and so claims only the rest, what it has
    acknowledged of registry's stream."""
    if service == "notify":
        info = await cluster.js.consumer_info("CSO_REGISTRY", "notify-registry", timeout=5)
        return int(info.ack_floor.stream_seq)
    return int(await scalar(cluster.dsn, f"SELECT count(*) FROM {service}.inbox"))


async def wait_progress(cluster: Cluster, total: int, share: float) -> None:
    async def reached() -> bool:
        return await progress(cluster, total) >= share

    await until(reached, SETTLE_SECONDS, f"registry reaching {share:.0%} of the intake", cluster.check_alive,
                interval=0.2)


async def kill_mid_batch(cluster: Cluster, victim: Replica, rng: random.Random, patience: float = 20.0,
                         unacked: bool = False) -> str:
    """SIGKILL the replica while it holds a batch (its inbox claim not committed, the messages
    unacked), or after `patience` seconds at a random moment. With `unacked`, only while one of its
    service's durable consumers also has messages delivered and not acked. Returns where it was hit.

    A consumer that keeps up with the publisher is inside a batch only briefly, and polling for that
    moment could miss it for the whole patience (the faster consumer then went unmeasured). So the
    victim is made to hold one: stopped (SIGSTOP) for a moment with its service's other replicas,
    work queues up for it; let go alone, it takes a batch; stopped again as soon as its transaction
    is seen open, somewhere inside it. The check is then made on the frozen process, so the kill
    surely lands where the check saw it; a check that fails lets it go on, and it tries again."""
    deadline = time.monotonic() + patience

    async def holding() -> bool:
        for stream, durable in DURABLES[victim.service]:
            state = await cluster.consumer_state(stream, durable)
            if state is not None and state[1] > 0:
                return True
        return False

    async def caught() -> bool:
        return await cluster.mid_batch(victim) and (not unacked or await holding())

    # Its service's other replicas are stopped with it, or they would drain what queues up.
    held = [victim, *(r for r in cluster.of(victim.service) if r is not victim and not r.down)]
    while time.monotonic() < deadline:
        cluster.check_alive()
        try:
            with contextlib.suppress(*AWAY):
                for r in held:
                    cluster.pause(r)
                if await caught():
                    await cluster.kill(victim, "mid-transaction")
                    return "mid-transaction"
                await asyncio.sleep(rng.uniform(0.2, 1.0))   # work queues up for it
                cluster.resume(victim)
                watch_until = time.monotonic() + 3
                while time.monotonic() < watch_until:
                    if await cluster.mid_batch(victim):
                        # Somewhere inside the transaction, not always at its start.
                        await asyncio.sleep(rng.uniform(0, 0.05))
                        cluster.pause(victim)
                        if await caught():
                            await cluster.kill(victim, "mid-transaction")
                            return "mid-transaction"
                        cluster.resume(victim)
                    await asyncio.sleep(0.01)
        finally:
            for r in held:
                if not r.down:
                    cluster.resume(r)
    await cluster.kill(victim, "at a random moment")
    return "random"


# What the `cluster_of` fixture (conftest) gives a case: `async with cluster_of(replicas=2) as cluster:`.
ClusterFactory = Callable[..., AbstractAsyncContextManager[Cluster]]
