"""The migrate step owns the streams (cso/streams.py), on a real nats-server: it creates what is
missing and puts back what drifted, never deletes; services wait for missing streams and say so,
they never create them; `cso streams` and `cso migrate` run it; `cso up`'s supervision makes
again the streams a lost store lost."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType, StreamConfig
from typer.testing import CliRunner

from contracts import Topology
from cso.settings import Settings
from cso.streams import Replicas, StreamMigrationError, migrate_streams, stream_config
from cso_local.cli import app as cli
from cso_local.stack import Stack
from services.registry.app import create_app as registry_app
from services.registry.app import run_migrations as registry_migrations
from tests.support import eventually, running

pytestmark = pytest.mark.integration
ONE = Replicas(default=1)


def fresh() -> Topology:
    return Topology(f"s{uuid.uuid4().hex[:10]}")


async def names(nc: nats.NATS, t: Topology) -> set[str]:
    prefix = t.namespace.upper() + "_"
    return {i.config.name for i in await nc.jetstream().streams_info() if i.config.name.startswith(prefix)}


async def drop(nc: nats.NATS, t: Topology) -> None:
    for name in await names(nc, t):
        await nc.jetstream().delete_stream(name)


async def test_migrate_creates_then_puts_back_drift_and_deletes_nothing(nats_url: str) -> None:
    t = fresh()
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        first = await migrate_streams(nc, t, ONE)
        assert [c.action for c in first] == ["created"] * len(t.streams)
        assert await names(nc, t) == {s.name for s in t.streams}
        assert {c.action for c in await migrate_streams(nc, t, ONE)} == {"unchanged"}

        # Someone with the rights shrank the intake stream: a max_msgs of 1 deletes messages.
        intake = t.stream("CSO_INTAKE")
        for i in range(3):
            await js.publish(f"{t.namespace}.cso.intake.organization_filed.51.5111.511102", f"{i}".encode())
        info = await js.stream_info(intake)
        await js.update_stream(dataclasses.replace(info.config, max_msgs=1, description="mine now"))
        assert (await js.stream_info(intake)).state.messages == 1
        # A stream that is not cso's, under the same prefix: never touched.
        stranger = StreamConfig(name=f"{t.namespace.upper()}_CSO_STRANGER", subjects=[f"{t.namespace}.stranger.>"])
        await js.add_stream(stranger)

        again = {c.stream: c for c in await migrate_streams(nc, t, ONE)}
        assert again[intake].action == "updated"
        assert again[intake].fields["max_msgs"] == (1, -1)
        assert "description" in again[intake].fields and "max_msgs 1 -> -1" in str(again[intake])
        assert {c.action for n, c in again.items() if n != intake} == {"unchanged"}
        config = (await js.stream_info(intake)).config
        assert config.max_msgs == -1 and config.description == stream_config(t.streams[0]).description
        assert stranger.name in await names(nc, t)

        # A change JetStream cannot make in place stops the step, naming the stream and the field.
        ops = t.stream("CSO_OPS")
        await js.delete_stream(ops)
        await js.add_stream(dataclasses.replace(stream_config(t.streams[6]), storage=StorageType.MEMORY))
        with pytest.raises(StreamMigrationError, match=rf"{ops}: storage is 'memory'.*cannot change it in place"):
            await migrate_streams(nc, t, ONE)
        assert (await js.stream_info(ops)).config.storage == StorageType.MEMORY   # left as it was

        # More copies than a single server holds: refused before asking the server, naming the setting.
        with pytest.raises(StreamMigrationError, match="CSO_INTAKE_REPLICAS=3"):
            await migrate_streams(nc, t, Replicas(per_stream={"CSO_INTAKE": 3}))
    finally:
        await drop(nc, t)
        await nc.close()


async def test_a_service_waits_for_its_streams_and_never_creates_them(database_url: str, nats_url: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    t = fresh()
    settings = Settings(database_url=database_url, nats_url=nats_url, namespace=t.namespace, max_deliver=3,
                        bus_check_seconds=0.2)
    await asyncio.to_thread(registry_migrations, settings)
    nc = await nats.connect(nats_url)
    try:
        async with running(registry_app, settings) as (_, client):
            ready = await client.get("/readyz")
            assert ready.status_code == 503, ready.text
            said = ready.json()["streams"]
            assert "run `cso migrate`" in said
            for base in ("CSO_INTAKE", "CSO_DIVISIONS", "CSO_REGISTRY", "CSO_OPS", "CSO_DEADLETTER"):
                assert t.stream(base) in said, (base, said)
            await asyncio.sleep(3)            # consumers, relay and BusWatch have had several turns
            assert (await client.get("/readyz")).status_code == 503
            assert await names(nc, t) == set()
            # Said, once each (not every second): by the service, and by each of its consumers.
            lines = [r.getMessage() for r in caplog.records]
            assert sum("registry: waiting for the operator: missing stream(s)" in line for line in lines) == 1, lines
            for base in ("CSO_INTAKE", "CSO_DIVISIONS"):
                told = [line for line in lines if f"pulling from {t.stream(base)} failed" in line]
                assert len(told) == 1 and "run `cso migrate`" in told[0], told
            await migrate_streams(nc, t, ONE)

            async def ready_now() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready_now, timeout=30)
    finally:
        await drop(nc, t)
        await nc.close()


def test_cso_streams_and_cso_migrate(nats_url: str, tmp_path: Path) -> None:
    t = fresh()
    env = {"CSO_NATS_URL": nats_url, "CSO_NAMESPACE": t.namespace, "CSO_DATABASE_URL": "",
           "CSO_STREAM_REPLICAS": "", "CSO_INTAKE_REPLICAS": ""}
    try:
        result = CliRunner().invoke(cli, ["streams", "--data-dir", str(tmp_path)], env=env)
        assert result.exit_code == 0, result.output
        assert f"stream {t.stream('CSO_INTAKE')}: created, 1 replica" in result.output
        result = CliRunner().invoke(cli, ["streams", "--data-dir", str(tmp_path)], env=env)
        assert result.exit_code == 0 and "created" not in result.output, result.output

        bad = CliRunner().invoke(cli, ["streams", "--data-dir", str(tmp_path)],
                                 env={**env, "CSO_INTAKE_REPLICAS": "3"})
        assert bad.exit_code == 2 and "CSO_INTAKE_REPLICAS=3" in bad.output, bad.output
        # `cso migrate` (all) goes on to the streams, so it needs a NATS: it says which, or --no-streams.
        lost = CliRunner().invoke(cli, ["migrate", "--data-dir", str(tmp_path)],
                                  env={**env, "CSO_NATS_URL": "", "CSO_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"})
        assert lost.exit_code == 2 and "CSO_NATS_URL" in lost.output and "--no-streams" in lost.output, lost.output
    finally:
        async def clean() -> None:
            nc = await nats.connect(nats_url)
            await drop(nc, t)
            await nc.close()

        asyncio.run(clean())


def test_cso_up_makes_again_the_streams_a_lost_store_lost(nats_url: str, tmp_path: Path) -> None:
    """The hook of `cso up`'s supervision loop, against a server: a deleted stream is back."""
    t = fresh()
    stack = Stack(data_dir=tmp_path, namespace=t.namespace, log=print)
    stack._state = {"nats": {"url": nats_url}}
    done = stack.restore_streams(every=0)
    assert len(done) == len(t.streams) and all("created" in line for line in done), done

    async def lose_intake() -> None:
        nc = await nats.connect(nats_url)
        await nc.jetstream().delete_stream(t.stream("CSO_INTAKE"))
        await nc.close()

    asyncio.run(lose_intake())
    assert stack.restore_streams(every=3600) == []          # not due yet
    assert stack.restore_streams(every=0) == [f"{t.stream('CSO_INTAKE')}: created, 1 replica"]
    assert stack.restore_streams(every=0) == []

    async def clean() -> None:
        nc = await nats.connect(nats_url)
        await drop(nc, t)
        await nc.close()

    asyncio.run(clean())


async def test_importer_and_publisher_refuse_a_missing_stream(nats_url: str, tmp_path: Path) -> None:
    """`cso divisions import` and `cso publish` do not create streams either: they say which is
    missing and publish nothing."""
    from contracts import encode, make_event
    from contracts import events as ev
    from cso.divisions import DEMO_DIVISIONS
    from cso_local.stack import import_divisions

    t = fresh()
    with pytest.raises(ValueError, match=rf"missing stream\(s\) {t.stream('CSO_DIVISIONS')}: run `cso migrate`"):
        await import_divisions(nats_url, t.namespace, DEMO_DIVISIONS, only=["511102"])
    filing = make_event(ev.OrganizationFiled(name="篦子街社区志愿服务队", community_code="511102004001",
                                             category=ev.Category.NEIGHBOURLY_HELP, filed_on="2024-05-01"),
                        source="cso-test")
    file = tmp_path / "one.jsonl"
    file.write_bytes(encode(filing) + b"\n")
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["publish", str(file), "--data-dir", str(tmp_path)],
                                     env={"CSO_NATS_URL": nats_url, "CSO_NAMESPACE": t.namespace})
    assert result.exit_code != 0 and "nothing was published" in result.output, result.output
    assert t.stream("CSO_INTAKE") in result.output.replace("\n", "")
    nc = await nats.connect(nats_url)
    try:
        assert await names(nc, t) == set()
    finally:
        await nc.close()
