"""NATS users and subject permissions (issue #8) against a real nats-server 2.15 that enforces the
configuration `cso nats-config` generates: an outside city system publishes registry facts only in
its own region, a service only its own events; the four services, the divisions importer and a
publisher run end to end under their own users without a single permission violation; a password is
rotated by regenerating the file and reloading the server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from typer.testing import CliRunner

from contracts import Topology, encode, make_event
from contracts import events as ev
from cso import bus, natsauth
from cso.divisions import DEMO_DIVISIONS
from cso.natsauth import Publisher, Users
from cso.settings import Settings
from cso_local import servers
from cso_local.cli import app as cli_app
from cso_local.stack import import_divisions
from tests.support import eventually, running

pytestmark = pytest.mark.integration

NAMESPACE = "authz"
CITY = "leshan-city"           # 乐山市 5111
COUNTY = "shizhong-county"     # 市中区 511102
COMMUNITY = "511102004001"     # 篦子街社区, 市中区, 乐山市 (in the demo divisions)
CHENGDU_COMMUNITY = "510104001001"
EXAMPLE = Path(__file__).parents[2] / "contracts" / "examples" / "publish_filing.py"
VIOLATION = re.compile(r'"\$G/user:([^"]+)" - (Publish|Subscription) Violation - Subject "([^"]+)"')


@dataclass
class AuthServer:
    handle: servers.ServerHandle
    topology: Topology
    passwords: dict[str, str]

    @property
    def log(self) -> Path:
        return self.handle.data_dir / "nats.log"

    def log_offset(self) -> int:
        return self.log.stat().st_size

    def violations(self, since: int = 0) -> list[tuple[str, str, str]]:
        """(user, Publish|Subscription, subject) of every violation the server logged since `since`."""
        with self.log.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        return VIOLATION.findall(text)

    def url_with(self, user: str) -> str:
        return self.handle.url.replace("nats://", f"nats://{user}:{self.passwords[user]}@")


@dataclass
class Conn:
    nc: Client
    errors: list[str] = field(default_factory=list)

    def refused(self, subject: str) -> bool:
        """Did the server tell this client that it may not use `subject`? (nats-py lowercases it)"""
        return any("permissions violation" in e and f'"{subject.lower()}"' in e for e in self.errors)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """nats-server with JetStream and the generated authorization block, passwords from its
    environment as in production (`$CSO_NATS_<USER>_PASSWORD` references)."""
    topology = Topology(NAMESPACE)
    users = Users(publishers=(Publisher(CITY, "5111"), Publisher(COUNTY, "511102")))
    names = [*natsauth.SERVICES, natsauth.DIVISIONS, natsauth.ADMIN, CITY, COUNTY]
    # nats-server parses an environment variable's value as a config value: a password starting with a
    # digit is read as a number and refused (infra/README.md says so); letters first, then hex.
    passwords = {n: "p" + secrets.token_hex(16) for n in names}
    data_dir = tmp_path_factory.mktemp("nats-auth")
    config = data_dir / "auth.conf"
    config.write_text(natsauth.render(topology, users))
    handle = servers.start_nats(data_dir / "server", config=config,
                                env={natsauth.password_env(n): p for n, p in passwords.items()})
    try:
        yield AuthServer(handle, topology, passwords)
    finally:
        servers.stop(handle)


async def connect(server: AuthServer, user: str) -> Conn:
    conn = Conn(nc=None)  # type: ignore[arg-type]

    async def on_error(e: Exception) -> None:
        conn.errors.append(str(e).lower())

    conn.nc = await nats.connect(server.handle.url, user=user, password=server.passwords[user],
                                 inbox_prefix=natsauth.inbox_prefix(user), error_cb=on_error,
                                 allow_reconnect=False)
    return conn


@pytest.fixture
async def admin(auth_server: AuthServer) -> AsyncIterator[Client]:
    """The operators' user; each test starts with the streams there, empty and without consumers."""
    conn = await connect(auth_server, natsauth.ADMIN)
    js = conn.nc.jetstream()
    await bus.ensure_streams(conn.nc, auth_server.topology)
    for spec in auth_server.topology.streams:
        await js.purge_stream(spec.name)
        for info in await js.consumers_info(spec.name):
            await js.delete_consumer(spec.name, info.name)
    yield conn.nc
    await conn.nc.close()


def filing(community: str, source: str = CITY) -> bytes:
    payload = ev.OrganizationFiled(name="篦子街社区志愿服务队", community_code=community,
                                   category=ev.Category.NEIGHBOURLY_HELP, filed_on="2024-05-01")
    return encode(make_event(payload, source=source))


async def messages(js: Any, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


async def refused_publish(conn: Conn, subject: str, data: bytes = b"{}") -> None:
    """A JetStream publish the server drops: no ack ever comes, and the client is told why."""
    with pytest.raises(NatsTimeout):
        await conn.nc.jetstream().publish(subject, data, timeout=1)
    await eventually(lambda: _true(conn.refused(subject)), timeout=5)


async def _true(value: bool) -> bool:
    return value


# ---------------------------------------------------------------- outside publishers


async def test_city_publisher_publishes_in_its_region_only(auth_server: AuthServer, admin: Client) -> None:
    t, js = auth_server.topology, admin.jetstream()
    intake, registry = t.stream("CSO_INTAKE"), t.stream("CSO_REGISTRY")
    before = {s: await messages(js, s) for s in (intake, registry)}
    since = auth_server.log_offset()
    city = await connect(auth_server, CITY)
    try:
        accepted = t.intake_subject(CITY, "OrganizationFiled", COMMUNITY)
        ack = await city.nc.jetstream().publish(accepted, filing(COMMUNITY))
        assert ack.stream == intake and not ack.duplicate

        chengdu = t.intake_subject(CITY, "OrganizationFiled", CHENGDU_COMMUNITY)
        as_registry = t.event_subject("OrganizationFiled", COMMUNITY)
        # Under another publisher's name (the county user may publish there), or on the operators'
        # version 1 subject: either would let it speak for another system.
        as_county = t.intake_subject(COUNTY, "OrganizationFiled", COMMUNITY)
        unnamed = t.operator_intake_subject("OrganizationFiled", COMMUNITY)
        await refused_publish(city, chengdu, filing(CHENGDU_COMMUNITY))
        await refused_publish(city, as_registry, filing(COMMUNITY))
        await refused_publish(city, as_county, filing(COMMUNITY, source=COUNTY))
        await refused_publish(city, unnamed, filing(COMMUNITY, source=COUNTY))
        # No JetStream API: it can neither delete a stream nor make itself a consumer.
        await refused_publish(city, f"$JS.API.STREAM.DELETE.{registry}")
        await refused_publish(city, f"$JS.API.CONSUMER.CREATE.{registry}")
        # Nobody else's replies, and no receipts of another region or another publisher.
        await city.nc.subscribe("_INBOX.>")
        await city.nc.subscribe(t.event_subject("OrganizationFiled", CHENGDU_COMMUNITY))
        await city.nc.subscribe(t.receipts_subject(COUNTY, "lost"))
        await city.nc.publish(t.receipts_query_subject(COUNTY), b'{"event_ids": []}')
        await eventually(lambda: _true(city.refused("_INBOX.>")), timeout=5)
        await eventually(lambda: _true(city.refused(t.receipts_query_subject(COUNTY))), timeout=5)
    finally:
        await city.nc.close()

    assert await messages(js, intake) == before[intake] + 1
    last = await js.get_last_msg(intake, accepted)
    assert last.subject == accepted
    assert await messages(js, registry) == before[registry]
    seen = set(auth_server.violations(since))
    assert {(CITY, "Publish", chengdu), (CITY, "Publish", as_registry), (CITY, "Publish", as_county),
            (CITY, "Publish", unnamed),
            (CITY, "Publish", f"$JS.API.STREAM.DELETE.{registry}"),
            (CITY, "Subscription", "_INBOX.>"),
            (CITY, "Subscription", t.event_subject("OrganizationFiled", CHENGDU_COMMUNITY)),
            (CITY, "Subscription", t.receipts_subject(COUNTY, "lost")),
            (CITY, "Publish", t.receipts_query_subject(COUNTY))} <= seen
    assert (CITY, "Publish", accepted) not in seen


async def test_county_publisher_is_held_to_its_county(auth_server: AuthServer, admin: Client) -> None:
    t = auth_server.topology
    county = await connect(auth_server, COUNTY)
    try:
        ack = await county.nc.jetstream().publish(t.intake_subject(COUNTY, "OrganizationFiled", COMMUNITY),
                                                  filing(COMMUNITY, source=COUNTY))
        assert ack.stream == t.stream("CSO_INTAKE")
        # 沙湾区 511111, same city, another county; and a city-tier fact of its own city.
        await refused_publish(county, t.intake_subject(COUNTY, "OrganizationFiled", "511111100001"))
        await refused_publish(county, t.intake_subject(COUNTY, "HubEstablished", "5111"))
        # Its city's publisher covers its county, but the county user cannot use that name.
        await refused_publish(county, t.intake_subject(CITY, "OrganizationFiled", COMMUNITY))
    finally:
        await county.nc.close()


# ---------------------------------------------------------------- services


async def test_a_service_cannot_speak_for_another(auth_server: AuthServer, admin: Client) -> None:
    t, js = auth_server.topology, admin.jetstream()
    registry_stream = t.stream("CSO_REGISTRY")
    before = await messages(js, registry_stream)
    since = auth_server.log_offset()
    targets = await connect(auth_server, "targets")
    try:
        # Its own events are acked: the refusals below are about the subjects, not the user.
        own = await targets.nc.jetstream().publish(t.event_subject("CoverageChanged", "5111"), b"{}")
        assert own.stream == t.stream("CSO_TARGETS")
        await refused_publish(targets, t.event_subject("OrganizationFiled", COMMUNITY), filing(COMMUNITY))
        await refused_publish(targets, t.intake_subject(CITY, "OrganizationFiled", COMMUNITY), filing(COMMUNITY))
        await refused_publish(targets, t.operator_intake_subject("OrganizationFiled", COMMUNITY), filing(COMMUNITY))
        await refused_publish(targets, t.deadletter_subject("registry"))
        await refused_publish(targets, f"$JS.API.STREAM.DELETE.{registry_stream}")
        # Not registry's consumer: neither pull its messages nor delete it.
        intake = t.stream("CSO_INTAKE")
        await refused_publish(targets, f"$JS.API.CONSUMER.MSG.NEXT.{intake}.registry-intake")
        await refused_publish(targets, f"$JS.API.CONSUMER.DELETE.{intake}.registry-intake")
        # Nor listen to registry's commands.
        await targets.nc.subscribe(t.command_subject("registry", "*"))
        await eventually(lambda: _true(targets.refused(t.command_subject("registry", "*"))), timeout=5)
    finally:
        await targets.nc.close()
    assert await messages(js, registry_stream) == before
    users = {user for user, _, _ in auth_server.violations(since)}
    assert users == {"targets"}


async def test_services_run_end_to_end_under_their_own_users(auth_server: AuthServer, admin: Client,
                                                             database_url: str) -> None:
    """Divisions (divisions user) → a filing from Leshan's city system (the contracts example, as an
    outside process) → registry → targets' coverage; training and notify consume alongside. The
    server logs no violation at all meanwhile, and every durable consumer was made by its service."""
    from services.notify.app import create_app as notify_app
    from services.notify.app import run_migrations as notify_migrations
    from services.registry.app import create_app as registry_app
    from services.registry.app import run_migrations as registry_migrations
    from services.targets.app import create_app as targets_app
    from services.targets.app import run_migrations as targets_migrations
    from services.training.app import create_app as training_app
    from services.training.app import run_migrations as training_migrations

    server, t = auth_server, auth_server.topology

    def settings(user: str) -> Settings:
        common = {"database_url": database_url, "namespace": NAMESPACE, "max_deliver": 3,
                  "bus_check_seconds": 0.5, "nats_inbox_prefix": ""}
        if user == "training":  # credentials in the URL, as CSO_NATS_URL may carry them
            return Settings(nats_url=server.url_with(user), nats_user="", nats_password="", **common)
        return Settings(nats_url=server.handle.url, nats_user=user, nats_password=server.passwords[user],
                        **common)

    for migrate, user in ((registry_migrations, "registry"), (targets_migrations, "targets"),
                          (training_migrations, "training"), (notify_migrations, "notify")):
        await asyncio.to_thread(migrate, settings(user))
    since = server.log_offset()
    try:
        db = await asyncpg.connect(database_url)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(db.close)
            for create, user in ((registry_app, "registry"), (targets_app, "targets"),
                                 (training_app, "training"), (notify_app, "notify")):
                await stack.enter_async_context(running(create, settings(user)))

            counties = await import_divisions(server.url_with(natsauth.DIVISIONS), NAMESPACE, DEMO_DIVISIONS,
                                              only=["511102"])
            assert counties == 1

            async def divisions_known() -> bool:
                return bool(await db.fetchval("SELECT count(*) FROM registry.community WHERE code = $1",
                                              COMMUNITY))

            await eventually(divisions_known, timeout=30)

            # The outside system, exactly as the contracts README shows it, as Leshan's city user.
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            env["NATS_PASSWORD"] = server.passwords[CITY]
            result = await asyncio.to_thread(subprocess.run, [
                sys.executable, str(EXAMPLE), "--nats", server.handle.url, "--prefix", NAMESPACE,
                "--community", COMMUNITY, "--user", CITY, "--timeout", "30"],
                capture_output=True, text=True, timeout=90, env=env, cwd="/")
            assert result.returncode == 0, result.stderr
            published, receipt = (json.loads(line) for line in result.stdout.splitlines())
            assert receipt["event_id"] == published["published"]
            assert receipt["receipt"] == f"{NAMESPACE}.cso.receipts.{CITY}.accepted", receipt

            # Under its own name, Leshan's user claims to be the county's system: NATS lets the
            # publish through (its name, its region), registry refuses the claim, naming `source`.
            dead: list[dict[str, Any]] = []

            async def on_dead(msg: Any) -> None:
                dead.append(json.loads(msg.data))

            dead_sub = await admin.subscribe(t.deadletter_subject("registry"), cb=on_dead)
            await admin.flush()
            forged = make_event(ev.OrganizationFiled(
                name="篦子街社区冒名队", community_code=COMMUNITY, category=ev.Category.CHARITY,
                filed_on="2024-05-01"), source=COUNTY)
            city = await connect(server, CITY)
            try:
                await city.nc.jetstream().publish(t.intake_subject(CITY, "OrganizationFiled", COMMUNITY),
                                                  encode(forged), timeout=10)
            finally:
                await city.nc.close()

            async def forged_refused() -> bool:
                return any(json.loads(d["data"])["event_id"] == str(forged.event_id) for d in dead)

            await eventually(forged_refused, timeout=30)
            await dead_sub.unsubscribe()
            [reason] = [d["reason"] for d in dead if json.loads(d["data"])["event_id"] == str(forged.event_id)]
            assert reason.startswith("source: ") and repr(COUNTY) in reason and repr(CITY) in reason, reason

            # Request-reply under the services' users: a command to registry, a query to targets.
            reply = await admin.request(t.command_subject("registry", "file"), json.dumps({
                "name": "篦子街社区文体队", "community_code": COMMUNITY, "category": "culture_sports",
                "filed_on": "2024-03-01", "filing_number": "LS-2024-007"}).encode(), timeout=10)
            assert json.loads(reply.data)["ok"], reply.data

            async def counted() -> bool:
                reply = await admin.request(t.query_subject("targets", "coverage"),
                                            json.dumps({"region": "511102"}).encode(), timeout=5)
                return int(json.loads(reply.data).get("counters", {}).get("orgs", 0)) == 2

            await eventually(counted, timeout=30)

            async def training_applied() -> bool:
                return bool(await db.fetchval(
                    "SELECT count(*) FROM training.inbox i JOIN registry.outbox o USING (event_id)") >= 2)

            await eventually(training_applied, timeout=30)
            await receipts_of_its_own(server, t)
            await asyncio.sleep(1.5)  # BusWatch checks every stream of every service at least once more

            js = admin.jetstream()
            for service, consumers in natsauth.SERVICE_CONSUMERS.items():
                for base, durable, _ in consumers:
                    info = await js.consumer_info(t.stream(base), durable)
                    assert info.name == durable, service
    except AssertionError as e:
        # A permission the services lack shows as something that never happens: name it.
        raise AssertionError(f"{e}; permission violations: {server.violations(since)}") from e
    assert server.violations(since) == []


async def receipts_of_its_own(server: AuthServer, t: Topology) -> None:
    """The city system asks registry for the receipts of its events under its own user, and hears
    what registry (its user) tells it on its own `cso.receipts.<user>.…` subject."""
    city = await connect(server, CITY)
    registry = await connect(server, "registry")
    try:
        mine = make_event(ev.OrganizationFiled(name="篦子街社区调解队", community_code=COMMUNITY,
                                               category=ev.Category.MEDIATION, filed_on="2024-06-01"),
                          source=CITY)
        await city.nc.jetstream().publish(t.intake_subject(CITY, mine.type, mine.region), encode(mine),
                                          headers={"Nats-Msg-Id": str(mine.event_id)})
        never = uuid.uuid4()

        async def answered() -> bool:
            reply = await city.nc.request(t.receipts_query_subject(CITY), json.dumps(
                {"event_ids": [str(mine.event_id), str(never)]}).encode(), timeout=5)
            answer = json.loads(reply.data)
            return [r["verdict"] for r in answer["receipts"]] == ["accepted", "unknown"] \
                and answer["receipts"][0]["region"] == COMMUNITY

        await eventually(answered, timeout=30)
        heard: list[bytes] = []

        async def on_lost(msg: Any) -> None:
            heard.append(msg.data)

        await city.nc.subscribe(t.receipts_subject(CITY, "lost"), cb=on_lost)
        await city.nc.flush()
        await registry.nc.publish(t.receipts_subject(CITY, "lost"), b"{}")
        await registry.nc.flush()
        # 30 s like the waits above: the four services share this test's event loop and the
        # machine, and under CI's load 5 s ran out once (CI on 5ab9199; alone it takes ms).
        await eventually(lambda: _true(heard == [b"{}"]), timeout=30, describe=lambda: f"heard {heard!r}")
    finally:
        await city.nc.close()
        await registry.nc.close()


async def test_a_service_may_restart_its_own_consumer_only(auth_server: AuthServer, admin: Client) -> None:
    """BusWatch deletes a service's durable consumer to start it over: allowed for its own."""
    from nats.js.api import AckPolicy, ConsumerConfig

    t, js = auth_server.topology, admin.jetstream()
    divisions = t.stream("CSO_DIVISIONS")
    subject = t.context_subjects("divisions")
    registry = await connect(auth_server, "registry")
    try:
        rjs = registry.nc.jetstream()
        psub = await rjs.pull_subscribe(subject, durable="registry-divisions", stream=divisions,
                                        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
        await psub.unsubscribe()
        assert await rjs.delete_consumer(divisions, "registry-divisions")
        await js.add_consumer(divisions, ConsumerConfig(durable_name="targets-divisions", filter_subject=subject))
        with pytest.raises(NatsTimeout):
            await rjs.delete_consumer(divisions, "targets-divisions")
        assert registry.refused(f"$JS.API.CONSUMER.DELETE.{divisions}.targets-divisions")
    finally:
        await registry.nc.close()
    assert (await js.consumer_info(divisions, "targets-divisions")).name == "targets-divisions"


# ---------------------------------------------------------------- rotation


def test_a_password_is_rotated_by_regenerating_and_reloading(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """infra/README.md: regenerate auth.conf with bcrypt hashes of the new passwords, reload
    nats-server; the old password stops working, the new one works, nothing restarts."""
    monkeypatch.setattr(natsauth, "BCRYPT_ROUNDS", 4)
    names = [*natsauth.SERVICES, natsauth.DIVISIONS, natsauth.ADMIN]
    env = {natsauth.password_env(n): secrets.token_urlsafe(12) for n in names}
    config = tmp_path / "auth.conf"

    def generate() -> None:
        result = CliRunner().invoke(
            cli_app,
            ["nats-config", "--passwords", "bcrypt", "--output", str(config)], env=env)
        assert result.exit_code == 0, result.output

    generate()
    assert env[natsauth.password_env("targets")] not in config.read_text()
    handle = servers.start_nats(tmp_path / "server", config=config)
    try:
        old = env[natsauth.password_env("targets")]

        async def login(password: str) -> str:
            try:
                nc = await nats.connect(handle.url, user="targets", password=password, allow_reconnect=False,
                                        max_reconnect_attempts=0, connect_timeout=5)
            except Exception as e:  # nats-py reports the refusal as nats.errors.Error
                return str(e)
            await nc.close()
            return "ok"

        async def rotate() -> tuple[str, str, bool]:
            first = await login(old)
            assert first == "ok", first
            running_service = await nats.connect(handle.url, user="targets", password=old,
                                                 allow_reconnect=False)
            env[natsauth.password_env("targets")] = new = secrets.token_urlsafe(12)
            generate()
            servers.reload(handle)
            for _ in range(100):
                before, after = await login(old), await login(new)
                if after == "ok" and before != "ok":
                    break
                await asyncio.sleep(0.1)
            # The server drops a connection whose password is gone: the service must restart
            # with the new one (its outbox keeps what it publishes meanwhile).
            for _ in range(50):
                if not running_service.is_connected:
                    break
                await asyncio.sleep(0.1)
            dropped = not running_service.is_connected
            await running_service.close()
            return before, after, dropped

        before, after, dropped = asyncio.run(rotate())
        # nats-py says "Authorization Violation" or, when the server hangs up first, "Connection lost".
        assert after == "ok" and before != "ok", (before, after)
        assert 'authentication error - User "targets"' in (handle.data_dir / "nats.log").read_text()
        assert dropped
    finally:
        servers.stop(handle)


# ---------------------------------------------------------------- every JetStream verb


# What each service needs to know about streams, written out here rather than read from
# cso/natsauth.py: the streams it consumes from, its own, CSO_OPS (gaps) and CSO_DEADLETTER.
NEEDS: dict[str, set[str]] = {
    "registry": {"CSO_INTAKE", "CSO_DIVISIONS", "CSO_REGISTRY", "CSO_OPS", "CSO_DEADLETTER", "CSO_RECEIPTS"},
    "targets": {"CSO_REGISTRY", "CSO_TRAINING", "CSO_DIVISIONS", "CSO_TARGETS", "CSO_OPS", "CSO_DEADLETTER"},
    "training": {"CSO_DIVISIONS", "CSO_REGISTRY", "CSO_TRAINING", "CSO_OPS", "CSO_DEADLETTER"},
    "notify": {"CSO_TARGETS", "CSO_REGISTRY", "CSO_TRAINING", "CSO_DIVISIONS", "CSO_NOTIFY", "CSO_OPS",
               "CSO_DEADLETTER"},
    natsauth.DIVISIONS: {"CSO_DIVISIONS"},
}
STREAM_VERBS = ("CREATE", "UPDATE", "DELETE", "PURGE", "INFO", "MSG.GET", "MSG.DELETE", "SNAPSHOT",
                "RESTORE", "LEADER.STEPDOWN")
CONSUMER_VERBS = ("CREATE", "DURABLE.CREATE", "INFO", "DELETE", "MSG.NEXT")
NOWHERE = 10**9   # a sequence no stream holds: MSG.GET and MSG.DELETE answer "not found"


@dataclass(frozen=True)
class Call:
    """One JetStream API request: `verb` on a stream, or on a durable consumer of it."""

    subject: str
    body: bytes
    base: str               # the stream's base name, e.g. CSO_INTAKE
    verb: str               # e.g. "STREAM.UPDATE", "CONSUMER.DELETE"
    durable: str = ""

    def __str__(self) -> str:
        return f"{self.verb} {self.base}" + (f" consumer {self.durable}" if self.durable else "")


def jetstream_calls(t: Topology) -> list[Call]:
    """Every stream verb on every stream; every consumer verb on every durable of every service on
    that stream and on one nobody owns; the consumer verbs without a durable."""
    from cso.streams import base_streams, stream_config

    calls: list[Call] = []
    for base, spec in base_streams(t):
        name, config = spec.name, json.dumps(stream_config(spec).as_dict()).encode()
        bodies = {"CREATE": config, "UPDATE": config, "PURGE": b'{"keep": 1000000000}',
                  "MSG.GET": json.dumps({"seq": NOWHERE}).encode(),
                  "MSG.DELETE": json.dumps({"seq": NOWHERE}).encode(), "SNAPSHOT": b"{}", "RESTORE": b"{}"}
        calls += [Call(f"$JS.API.STREAM.{verb}.{name}", bodies.get(verb, b""), base, f"STREAM.{verb}")
                  for verb in STREAM_VERBS]
        # Each durable with the filter its owner uses; and one nobody owns.
        durables = {d: c for consumers in natsauth.SERVICE_CONSUMERS.values() for b, d, c in consumers if b == base}
        durables["intruder"] = base.removeprefix("CSO_").lower()
        for durable, context in durables.items():
            subjects = {
                "CREATE": f"$JS.API.CONSUMER.CREATE.{name}.{durable}.{t.context_subjects(context)}",
                "DURABLE.CREATE": f"$JS.API.CONSUMER.DURABLE.CREATE.{name}.{durable}",
                "INFO": f"$JS.API.CONSUMER.INFO.{name}.{durable}",
                "DELETE": f"$JS.API.CONSUMER.DELETE.{name}.{durable}",
                "MSG.NEXT": f"$JS.API.CONSUMER.MSG.NEXT.{name}.{durable}",
            }
            calls += [Call(subjects[verb], b'{"batch": 1, "no_wait": true}' if verb == "MSG.NEXT" else b"{}",
                           base, f"CONSUMER.{verb}", durable) for verb in CONSUMER_VERBS]
        calls += [Call(f"$JS.API.CONSUMER.{verb}.{name}", b"{}", base, f"CONSUMER.{verb}")
                  for verb in ("CREATE", "LIST", "NAMES")]
    return calls


def may(user: str, call: Call) -> bool:
    """The rule: admin changes streams; a service asks INFO about the streams it uses and works its
    own durable consumers; the divisions importer asks INFO about its stream; nobody else anything."""
    if user == natsauth.ADMIN:
        return True
    if call.verb == "STREAM.INFO":
        return call.base in NEEDS.get(user, set())
    own = {(b, d) for b, d, _ in natsauth.SERVICE_CONSUMERS.get(user, ())}
    return call.verb in ("CONSUMER.CREATE", "CONSUMER.INFO", "CONSUMER.DELETE", "CONSUMER.MSG.NEXT") \
        and (call.base, call.durable) in own


async def attempt(nc: Client, call: Call) -> bool:
    """Did the request get past the server's permissions? Any answer, an API error included, says
    it did; so does 'no responders' (it reached a subject nobody serves: a pull from a consumer
    that does not exist). A refused request is dropped: the client hears nothing."""
    from nats.errors import NoRespondersError

    try:
        await nc.request(call.subject, call.body, timeout=8)
    except NoRespondersError:
        return True
    except NatsTimeout:
        return False
    return True


async def test_every_jetstream_verb_as_every_user_on_every_stream(auth_server: AuthServer, admin: Client) -> None:
    """Streams belong to the operator (issue 18, finding 3: services could UPDATE any stream to
    max_msgs=1 and so delete messages). Every user tries every verb on every stream and consumer:
    only admin may create, change or delete a stream; a service may ask INFO about the streams it
    uses and work its own durable consumers; a publisher gets no JetStream API at all."""
    t, js = auth_server.topology, admin.jetstream()
    calls = jetstream_calls(t)
    before = {spec.name: (await js.stream_info(spec.name)).config for spec in t.streams}
    users = [*natsauth.SERVICES, natsauth.DIVISIONS, CITY, natsauth.ADMIN]
    wrong: list[str] = []
    since = auth_server.log_offset()
    for user in users:
        conn = await connect(auth_server, user)
        try:
            # The admin deletes last, once it has shown every other verb.
            mine = [c for c in calls if not (user == natsauth.ADMIN and c.verb == "STREAM.DELETE")]
            results = await asyncio.gather(*(attempt(conn.nc, c) for c in mine))
            if user == natsauth.ADMIN:
                deletes = [c for c in calls if c.verb == "STREAM.DELETE"]
                mine += deletes
                results += [await attempt(conn.nc, c) for c in deletes]
        finally:
            await conn.nc.close()
        for call, passed in zip(mine, results, strict=True):
            if passed != may(user, call):
                wrong.append(f"{user} {'may' if passed else 'may not'} {call}")
        if user != natsauth.ADMIN:
            # What the others were let do changed no stream (an UPDATE to max_msgs=1 would have).
            after = {spec.name: (await js.stream_info(spec.name)).config for spec in t.streams}
            assert after == before, f"{user} changed a stream"
    assert not wrong, f"{len(wrong)} JetStream API calls against the rule:\n" + "\n".join(wrong[:80])
    # Each refusal is the server's (a violation it logged), not a lost request.
    refused = {(u, s) for u, kind, s in auth_server.violations(since) if kind == "Publish"}
    silent = [(u, c.subject) for u in users for c in calls if not may(u, c)]
    assert set(silent) <= refused, sorted(set(silent) - refused)[:10]
    for spec in t.streams:
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info(spec.name)       # the admin's DELETE did delete
    await bus.ensure_streams(admin, t)
