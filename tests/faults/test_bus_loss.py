"""PostgreSQL is the record of truth: when NATS loses acknowledged messages (its store deleted, or
its newest block file truncated), registry and targets notice the gap, refill the bus from the
outbox, and coverage equals a from-scratch recount with nothing counted twice."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

from contracts import make_event
from cso import bus
from cso.divisions import DEMO_DIVISIONS, publish_divisions
from cso.outbox import count_pending
from cso.settings import Settings
from cso_local import servers
from services.registry.app import create_app as registry_app
from services.registry.app import run_migrations as registry_migrations
from services.targets import app as targets
from tests.support import eventually, publish, running
from tests.support.recount import REGISTRY_COUNTERS, projected, recount
from tests.support.scenario import regions_of, workload

pytestmark = pytest.mark.integration


def demo() -> tuple[list[str], list[str]]:
    with open(DEMO_DIVISIONS / "villages.csv", encoding="utf-8") as f:
        communities = [r["code"] for r in csv.DictReader(f) if r["code"].startswith("5111")]
    with open(DEMO_DIVISIONS / "streets.csv", encoding="utf-8") as f:
        townships = [r["code"] for r in csv.DictReader(f) if r["code"].startswith("5111")]
    return communities, townships


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[servers.ServerHandle]:
    handle = await asyncio.to_thread(servers.start_nats, tmp_path / "nats")
    try:
        yield handle
    finally:
        # The test restarts the server: stop whichever process runs from the data dir now.
        current = servers.running(handle.data_dir, "nats")
        if current is not None:
            await asyncio.to_thread(servers.stop, current)


async def feed(nc: nats.NATS, settings: Settings, seed: int, organizations: int) -> int:
    communities, townships = demo()
    facts = [f for f in workload(seed, communities, townships, organizations=organizations, people=0)
             if f.CONTEXT == "registry"]
    regions = regions_of(facts)
    t = settings.topology
    for fact in facts:
        region = fact.region_of() or regions[str(getattr(fact, "organization_id", None) or getattr(
            fact, "hub_id", None) or getattr(fact, "base_id", None) or fact.party_organization_id)]
        await publish(nc, t.intake_subject("city-register", fact.TYPE, region),
                      make_event(fact, source="city-register", region=region))
    return len(facts)


async def caught_up(dsn: str, fed: int) -> bool:
    db = await asyncpg.connect(dsn)
    try:
        # Registry's accepted facts only: its outbox also holds gap announcements and receipts.
        facts = "position('cso.registry.' in subject) > 0"
        recorded = await db.fetchval(f"SELECT count(*) FROM registry.outbox WHERE {facts}")
        if recorded < fed:
            return False
        pending = await db.fetchval(count_pending('registry', where=facts))
        accepted = set(await db.fetch(f"SELECT event_id FROM registry.outbox WHERE {facts}"))
        applied = set(await db.fetch("SELECT event_id FROM targets.inbox"))
        return pending == 0 and accepted <= applied
    finally:
        await db.close()


async def count_applied(dsn: str) -> int:
    db = await asyncpg.connect(dsn)
    try:
        return int(await db.fetchval("SELECT count(*) FROM targets.inbox"))
    finally:
        await db.close()


async def gap_announced(dsn: str) -> bool:
    db = await asyncpg.connect(dsn)
    try:
        return bool(await db.fetchval("SELECT count(*) FROM registry.outbox WHERE type = 'BusGapDetected'"))
    finally:
        await db.close()


async def divisions_loaded(dsn: str) -> bool:
    db = await asyncpg.connect(dsn)
    try:
        return bool(await db.fetchval("SELECT count(*) FROM registry.county") == 12
                    and await db.fetchval("SELECT count(*) FROM targets.division WHERE tier = 'county'") == 12)
    finally:
        await db.close()


async def equal_to_recount(dsn: str) -> bool:
    return await projected(dsn, REGISTRY_COUNTERS) == await recount(dsn)


def truncate_newest_block(store: Path, stream: str) -> Path:
    """Cut the newest block file that holds messages (NATS may have rolled an empty one last)."""
    blocks = sorted((store / "jetstream").rglob(f"streams/{stream}/msgs/*.blk"), key=lambda p: int(p.stem))
    newest = [b for b in blocks if b.stat().st_size > 1024][-1]
    with newest.open("r+b") as f:
        # Keep only the block's first bytes: whatever it held after them is lost.
        f.truncate(64)
    return newest


@pytest.mark.parametrize("loss", ["store deleted", "newest block truncated"])
async def test_gap_is_detected_and_refilled(loss: str, settings: Settings, own_nats: servers.ServerHandle) -> None:
    settings = dataclasses.replace(settings, nats_url=own_nats.url, bus_check_seconds=0.5)
    await asyncio.to_thread(registry_migrations, settings)
    await asyncio.to_thread(targets.run_migrations, settings)
    nc = await nats.connect(own_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        await bus.ensure_streams(nc, settings.topology)   # the operator's migrate step
        async with AsyncExitStack() as stack:
            _, registry = await stack.enter_async_context(running(registry_app, settings))
            await stack.enter_async_context(running(targets.create_app, settings))
            await publish_divisions(nc.jetstream(), settings.topology, DEMO_DIVISIONS)
            await eventually(lambda: divisions_loaded(settings.database_url), timeout=30)
            fed = await feed(nc, settings, seed=1, organizations=400)
            await eventually(lambda: caught_up(settings.database_url, fed), timeout=90, interval=0.3)
            assert await equal_to_recount(settings.database_url)

            stored = (await nc.jetstream().stream_info(settings.topology.stream("CSO_REGISTRY"))).state.messages
            await asyncio.to_thread(servers.stop, own_nats)
            if loss == "store deleted":
                shutil.rmtree(own_nats.data_dir / "jetstream")
            else:
                truncate_newest_block(own_nats.data_dir, settings.topology.stream("CSO_REGISTRY"))
            await asyncio.to_thread(servers.start_nats, own_nats.data_dir)

            # New facts keep flowing after the loss, alongside the refill.
            await eventually(lambda: _connected(nc), timeout=30)
            # The services do not recreate the lost streams (they may not): they wait, not ready,
            # naming them, and the operator makes them again (`cso migrate`; `cso up` does it by
            # itself). An outside publisher retries until then.
            if loss == "store deleted":
                intake = settings.topology.stream("CSO_INTAKE")

                async def waiting_for_intake() -> bool:
                    ready = await registry.get("/readyz")
                    return ready.status_code == 503 and intake in ready.json().get("streams", "")

                await eventually(waiting_for_intake, timeout=30)
                assert "run `cso migrate`" in (await registry.get("/readyz")).json()["streams"]
                assert not await _stream_exists(nc, intake)
            await bus.ensure_streams(nc, settings.topology)
            if loss != "store deleted":
                left = (await nc.jetstream().stream_info(settings.topology.stream("CSO_REGISTRY"))).state.messages
                assert left < stored, f"the truncation lost nothing ({left} of {stored} messages left)"
            fed += await feed(nc, settings, seed=2, organizations=100)
            await eventually(lambda: caught_up(settings.database_url, fed), timeout=90, interval=0.3)
            await eventually(lambda: equal_to_recount(settings.database_url), timeout=30, interval=0.5)
            # Registry found the gap in its own stream and said so (once the repair is under way).
            await eventually(lambda: gap_announced(settings.database_url), timeout=30, interval=0.5)

            # By hand, too: `cso replay` publishes the outbox again; nothing counts twice.
            from typer.testing import CliRunner

            from cso_local.cli import app as cli

            applied = await count_applied(settings.database_url)
            result = await asyncio.to_thread(
                CliRunner().invoke, cli, ["replay", "registry", "--since", "2000-01-01T00:00:00+00:00"],
                env={"CSO_DATABASE_URL": settings.database_url})
            assert result.exit_code == 0 and "queued" in result.output, result.output
            await eventually(lambda: caught_up(settings.database_url, fed), timeout=60, interval=0.3)
            assert await count_applied(settings.database_url) == applied
            assert await equal_to_recount(settings.database_url)
    finally:
        await nc.close()


async def _connected(nc: nats.NATS) -> bool:
    return nc.is_connected


async def _stream_exists(nc: nats.NATS, name: str) -> bool:
    try:
        await nc.jetstream().stream_info(name)
        return True
    except Exception:
        return False



async def test_every_stream_is_watched_before_anything_is_published_there(settings: Settings) -> None:
    """A stream first looked at after it was lost and made again looks new, not recreated: registry
    did not refill CSO_REGISTRY when the store went within seconds of its first event (seen in
    tests/faults/test_intake_loss.py). So each service records every stream it uses at its first check."""
    settings = dataclasses.replace(settings, bus_check_seconds=0.5)
    await asyncio.to_thread(registry_migrations, settings)
    async with running(registry_app, settings):
        async def recorded() -> set[str]:
            db = await asyncpg.connect(settings.database_url)
            try:
                return {r["stream"] for r in await db.fetch("SELECT stream FROM registry.bus_stream")}
            finally:
                await db.close()

        t = settings.topology
        wanted = {t.stream("CSO_REGISTRY"), t.stream("CSO_OPS"), t.stream("CSO_INTAKE")}
        await eventually(lambda: _contains(recorded(), wanted), timeout=30, interval=0.3)
        db = await asyncpg.connect(settings.database_url)
        try:
            assert await db.fetchval("SELECT count(*) FROM registry.outbox") == 0  # nothing published yet
        finally:
            await db.close()


async def _contains(found: Any, wanted: set[str]) -> bool:
    return wanted <= await found


async def test_a_lost_ops_stream_is_refilled_without_the_whole_outbox(settings: Settings) -> None:
    """CSO_OPS lost (deleted and made again): registry republishes from its first row on CSO_OPS,
    not its whole outbox (review finding 5: every gap rewound the relay to 0, up to 30 days of
    every stream, far past JetStream's duplicate window)."""
    from cso.outbox import PUBLISHED

    settings = dataclasses.replace(settings, bus_check_seconds=0.5)
    await asyncio.to_thread(registry_migrations, settings)
    t = settings.topology
    ops, facts = t.stream("CSO_OPS"), t.context_subjects("registry").replace(">", "test.51.11.02")
    nc = await nats.connect(settings.nats_url)
    db = await asyncpg.connect(settings.database_url)

    async def stage(subject: str, n: int) -> None:
        await db.executemany("INSERT INTO registry.outbox (event_id, subject, type, data) VALUES ($1, $2, 'T', '')",
                             [(uuid.uuid4(), subject) for _ in range(n)])
        await eventually(lambda: _drained(db), timeout=30, interval=0.2)

    try:
        await bus.ensure_streams(nc, t)
        async with running(registry_app, settings):
            await stage(facts, 60)
            await stage(t.context_subjects("ops").replace(">", "test"), 1)
            await stage(facts, 5)
            before = PUBLISHED.labels("registry")._value.get()
            await nc.jetstream().delete_stream(ops)
            await bus.ensure_streams(nc, t)
            await eventually(lambda: gap_announced(settings.database_url), timeout=30, interval=0.3)
            await eventually(lambda: _drained(db), timeout=30, interval=0.2)
            # The CSO_OPS row, the 5 after it and the announcement; not the 60 before.
            assert PUBLISHED.labels("registry")._value.get() - before == 7
            assert (await nc.jetstream().stream_info(ops)).state.messages == 2
    finally:
        await db.close()
        await nc.close()


async def _drained(db: asyncpg.Connection) -> bool:
    return await db.fetchval(count_pending("registry")) == 0


async def test_a_lost_stream_is_refilled_with_what_a_lagging_consumer_had_not_read(settings: Settings) -> None:
    """CSO_REGISTRY lost an hour after its rows were published: a consumer behind by that much
    (targets during a backfill, a service that was down) had not read them, so the refill is every
    row the outbox keeps of the stream, not only those made since the loss (a refill bounded to ten
    minutes before the loss lost these 60 for such a consumer)."""
    settings = dataclasses.replace(settings, bus_check_seconds=0.5)
    await asyncio.to_thread(registry_migrations, settings)
    t = settings.topology
    stream, facts = t.stream("CSO_REGISTRY"), t.context_subjects("registry").replace(">", "test.51.11.02")
    nc = await nats.connect(settings.nats_url)
    db = await asyncpg.connect(settings.database_url)
    try:
        await bus.ensure_streams(nc, t)
        async with running(registry_app, settings):
            await db.executemany("INSERT INTO registry.outbox (event_id, subject, type, data) VALUES ($1, $2, 'T', '')",
                                 [(uuid.uuid4(), facts) for _ in range(60)])
            await eventually(lambda: _drained(db), timeout=30, interval=0.2)
            await db.execute("UPDATE registry.outbox SET created_at = created_at - interval '1 hour'")
            await asyncio.sleep(1.5)   # the watch has looked at the stream whole since
            await nc.jetstream().delete_stream(stream)
            await bus.ensure_streams(nc, t)
            await eventually(lambda: gap_announced(settings.database_url), timeout=30, interval=0.3)
            await eventually(lambda: _drained(db), timeout=30, interval=0.2)

            async def refilled() -> bool:
                return int((await nc.jetstream().stream_info(stream)).state.messages) >= 60

            await eventually(refilled, timeout=30, interval=0.3)
    finally:
        await db.close()
        await nc.close()
