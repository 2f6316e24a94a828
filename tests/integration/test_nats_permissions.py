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
from cso import bus, natsauth, servers
from cso.cli import app as cli_app
from cso.divisions import DEMO_DIVISIONS
from cso.natsauth import Publisher, Users
from cso.settings import Settings
from cso.stack import import_divisions
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
    await bus.ensure_streams(js, auth_server.topology)
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
        # Nobody else's replies, and no receipts of another region.
        await city.nc.subscribe("_INBOX.>")
        await city.nc.subscribe(t.event_subject("OrganizationFiled", CHENGDU_COMMUNITY))
        await eventually(lambda: _true(city.refused("_INBOX.>")), timeout=5)
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
            (CITY, "Subscription", t.event_subject("OrganizationFiled", CHENGDU_COMMUNITY))} <= seen
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
            assert receipt["receipt"].startswith(f"{NAMESPACE}.cso.registry.organization_filed.51.5111.511102")

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
