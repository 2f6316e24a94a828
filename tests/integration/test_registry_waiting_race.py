"""Two registry replicas, one parking a follow-up while the other applies what it follows, on real
NATS JetStream and PostgreSQL (services/registry/waiting.py).

Replica A parks a deregistration F (no organization X on record) while replica B, in a concurrent
transaction, applies X's filing: B looked for facts waiting on X before A committed F, and A looked
for X before B committed it. Neither transaction sees the other's row; only the check each side
runs once it has committed lets F go on, and the room's sweep is set to an hour so it cannot help.

The interleaving is driven by hand: one side is a running registry (the real consumer, handler and
commit), the other a transaction of this test through registry's own handler (FactsHandler), which
also holds the row of consumer_position that both replicas of the durable write at the end of a
batch (cso/consumer.py). So the running replica, having decided its batch, waits for the test's
transaction and commits second, as a replica that comes second does. The test's side runs no check
of its own after committing (it would find nothing: the other side has not committed yet), so the
running replica's check alone must decide F: accepted within seconds, with its `accepted` receipt.

The check after a commit and the sweep lock a waiting fact's row before the organization it
touches, a batch the other way round (waiting.py's docstring): so they wait for a lock at most
waiting.LOCK_WAIT, and a transaction of the test holding the organization's row, as a batch
does, must see them give way at once, nothing lost, while a batch waits for it as long as it takes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import fields
from datetime import date, timedelta
from typing import Any, cast

import asyncpg
import nats
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import Envelope, Topology, make_event
from contracts import events as ev
from cso.service import Runtime
from cso.settings import Settings, async_url
from services.registry import handlers, waiting
from services.registry.app import create_app, run_migrations
from services.registry.domain import Rejected
from services.registry.record import record_batch
from services.registry.settings import RegistrySettings
from tests.support import eventually, publish, publish_divisions, running

pytestmark = pytest.mark.integration

COMMUNITY = "510681001014"
SOURCE = "city-register"


class Receipts:
    """Every receipt registry publishes to SOURCE, by event id."""

    def __init__(self) -> None:
        self.heard: list[dict[str, Any]] = []

    def of(self, event_id: uuid.UUID) -> list[str]:
        return [r["verdict"] for r in self.heard if r.get("event_id") == str(event_id)]


def filing(org: uuid.UUID) -> Envelope[Any]:
    return make_event(ev.OrganizationFiled(organization_id=org, name=f"队{str(org)[:6]}", community_code=COMMUNITY,
                                           category=ev.Category.NEIGHBOURLY_HELP, filed_on=date(2024, 3, 1)),
                      source=SOURCE)


def deregistration(org: uuid.UUID) -> Envelope[Any]:
    return make_event(ev.OrganizationDeregistered(organization_id=org, ended_on=date(2024, 6, 1),
                                                  kind="deregistered", reason="自行解散"),
                      source=SOURCE, region=COMMUNITY)


class Stage:
    """A running registry replica (sweeping once an hour), the test's own replica (registry's
    handler on an engine of the test's), and the receipts SOURCE hears."""

    def __init__(self, settings: Settings, nc: nats.NATS, engine: AsyncEngine, receipts: Receipts) -> None:
        self.settings, self.nc, self.engine, self.receipts = settings, nc, engine, receipts
        t = settings.topology
        runtime = cast(Runtime, _Standing(t))   # what FactsHandler reads of a runtime
        self.handler = handlers.FactsHandler(runtime, waiting.Room(t, waiting.utc_now, timedelta(days=7)))

    async def send(self, envelope: Envelope[Any]) -> None:
        t = self.settings.topology
        await publish(self.nc, t.intake_subject(SOURCE, envelope.type, envelope.region), envelope)

    async def heard(self, expected: dict[uuid.UUID, list[str]], timeout: float) -> None:
        async def check() -> bool:
            return all(self.receipts.of(e) == v for e, v in expected.items())

        await eventually(check, timeout=timeout,
                         describe=lambda: {str(e): self.receipts.of(e) for e in expected})

    async def blocked(self, db: asyncpg.Connection) -> bool:
        """The running replica waits for a lock of the test's transaction (its batch decided)."""
        return bool(await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"))


class _Standing:
    """The parts of a Runtime that registry's handler uses: the topology, no relay to wake (the
    running replica's relays publish what the test's transaction stages)."""

    def __init__(self, topology: Topology) -> None:
        self.topology, self.relay = topology, None


@pytest.fixture
async def stage(settings: Settings, nc: nats.NATS) -> AsyncIterator[Stage]:
    config = RegistrySettings(**{f.name: getattr(settings, f.name) for f in fields(Settings)},
                              waiting_sweep_seconds=3600.0)
    await asyncio.to_thread(run_migrations, config)
    receipts = Receipts()

    async def on(msg: Any) -> None:
        receipts.heard.append(json.loads(msg.data))

    sub = await nc.subscribe(settings.topology.receipts_subject(SOURCE, "*"), cb=on)
    engine = create_async_engine(async_url(settings.database_url))
    try:
        async with running(lambda _: create_app(config), config):
            await publish_divisions(nc, settings.topology)
            stage = Stage(settings, nc, engine, receipts)
            # A first batch, so that the intake consumer's row of consumer_position is there to lock.
            first = filing(uuid.uuid4())
            await stage.send(first)
            await stage.heard({first.event_id: ["accepted"]}, timeout=30)
            yield stage
    finally:
        await sub.unsubscribe()
        await engine.dispose()


async def test_the_replica_that_applied_what_a_fact_waits_for_commits_second(stage: Stage) -> None:
    """A (the test) parks F; B (running) applies X, then waits for A's commit: B's check after its
    own commit decides F."""
    org = uuid.uuid4()
    follow_up, filed = deregistration(org), filing(org)
    db = await asyncpg.connect(stage.settings.database_url)
    try:
        async with stage.engine.begin() as conn:
            refused = await stage.handler.apply(conn, [follow_up])
            assert refused == {}
            await conn.execute(text("SELECT 1 FROM registry.consumer_position FOR UPDATE"))
            await stage.send(filed)
            await eventually(lambda: stage.blocked(db), timeout=30)
            # B's transaction has looked for facts waiting on X: F was not there to see.
        await stage.heard({filed.event_id: ["accepted"]}, timeout=30)
        await stage.heard({follow_up.event_id: ["waiting", "accepted"]}, timeout=5)
        assert await db.fetchval("SELECT count(*) FROM registry.waiting") == 0
        assert await db.fetchval("SELECT status FROM registry.organization WHERE id = $1", org) != "active"
    finally:
        await db.close()


async def test_the_replica_that_parked_a_fact_commits_second(stage: Stage) -> None:
    """B (the test) applies X; A (running) parks F, then waits for B's commit: A's check after its
    own commit decides F."""
    org = uuid.uuid4()
    follow_up, filed = deregistration(org), filing(org)
    db = await asyncpg.connect(stage.settings.database_url)
    try:
        async with stage.engine.begin() as conn:
            refused = await stage.handler.apply(conn, [filed])
            assert refused == {}
            await conn.execute(text("SELECT 1 FROM registry.consumer_position FOR UPDATE"))
            await stage.send(follow_up)
            await eventually(lambda: stage.blocked(db), timeout=30)
            # A's transaction has looked for X and parked F.
        await stage.heard({filed.event_id: ["accepted"]}, timeout=30)
        await stage.heard({follow_up.event_id: ["waiting", "accepted"]}, timeout=5)
        assert await db.fetchval("SELECT count(*) FROM registry.waiting") == 0
        assert await db.fetchval("SELECT status FROM registry.organization WHERE id = $1", org) != "active"
    finally:
        await db.close()


def updating(org: uuid.UUID) -> Envelope[Any]:
    return make_event(ev.OrganizationUpdated(organization_id=org, effective_on=date(2024, 5, 1),
                                             name=f"新{str(org)[:6]}"), source=SOURCE, region=COMMUNITY)


async def waits(db: asyncpg.Connection, envelope: Envelope[Any]) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM registry.waiting WHERE event_id = $1", envelope.event_id))


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("check", ["after a commit", "sweep"])
async def test_the_check_gives_way_to_a_batch_holding_the_organization_it_would_lock(
        stage: Stage, check: str, caplog: pytest.LogCaptureFixture) -> None:
    """F waits for X with X on record (its filing applied by a transaction that did not look at the
    room, as when the race above went unseen). A transaction of the test does what a batch applying
    a fact of X does: it holds X's row, then takes F out of the room. The check (or the sweep) took F
    and waits for X: a deadlock, unless it gives way. It must, within waiting.LOCK_WAIT (well before
    PostgreSQL's deadlock_timeout breaks the deadlock, perhaps by failing the batch), without an
    error; the batch's transaction then takes F. With that rolled back (F in the room again) and X
    free, the same check decides F."""
    caplog.set_level(logging.DEBUG, logger="services.registry.waiting")
    org = uuid.uuid4()
    follow_up, filed = deregistration(org), filing(org)
    room, tell = stage.handler.room, stage.handler.tell
    decide: Callable[[], Awaitable[None]] = (
        (lambda: waiting.rechecking(stage.engine, room, tell, {f"organization:{org}"})) if check == "after a commit"
        else (lambda: waiting.sweep(stage.engine, room, tell)))
    async with stage.engine.begin() as conn:
        assert await stage.handler.apply(conn, [follow_up]) == {}
    async with stage.engine.begin() as conn:
        [recorded] = await record_batch(conn, [filed], stage.settings.topology)
        assert not isinstance(recorded, Rejected)
    db = await asyncpg.connect(stage.settings.database_url)
    batch = await asyncpg.connect(stage.settings.database_url)

    async def check_waits_or_gave_way() -> bool:
        return deciding.done() or bool(await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", batch.get_server_pid()))

    try:
        deadlock_timeout = await db.fetchval("SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'")
        holding = batch.transaction()
        await holding.start()
        await batch.execute("SELECT 1 FROM registry.organization WHERE id = $1 FOR UPDATE", org)
        started = time.monotonic()
        deciding = asyncio.create_task(asyncio.wait_for(decide(), timeout=10))
        # The check holds F and waits for X (or, giving way, has already let go of F).
        await eventually(check_waits_or_gave_way, timeout=5)
        taken = await batch.fetchval("DELETE FROM registry.waiting WHERE event_id = $1 RETURNING 1",
                                     follow_up.event_id)
        await deciding
        took = time.monotonic() - started
        assert took < deadlock_timeout / 1000 * 0.8, f"{took:.2f} s"
        assert taken == 1
        assert errors(caplog) == []
        assert any("met a lock" in r.getMessage() for r in caplog.records)
        await holding.rollback()
        await asyncio.wait_for(decide(), timeout=10)
        assert not await waits(db, follow_up)
        assert await db.fetchval("SELECT status FROM registry.organization WHERE id = $1", org) != "active"
        assert errors(caplog) == []
        # Its connection went back to the pool (of the test's engine, which used that one only)
        # without the short wait: the next transaction on it may be a batch's.
        async with stage.engine.connect() as conn:
            assert await conn.scalar(text("SHOW lock_timeout")) == "0"
    finally:
        await batch.close()
        await db.close()


async def test_a_batch_waits_for_the_organization_it_locks_as_long_as_it_takes(
        stage: Stage, caplog: pytest.LogCaptureFixture) -> None:
    """The running replica's checks after its commits and its sweep wait briefly for locks; its
    batches do not: one that waits for X's row several times waiting.LOCK_WAIT is applied once X is
    free, in its first delivery (no failed batch, no redelivery)."""
    org = uuid.uuid4()
    filed, updated = filing(org), updating(org)
    await stage.send(filed)
    await stage.heard({filed.event_id: ["accepted"]}, timeout=30)
    db = await asyncpg.connect(stage.settings.database_url)
    batch = await asyncpg.connect(stage.settings.database_url)
    try:
        holding = batch.transaction()
        await holding.start()
        await batch.execute("SELECT 1 FROM registry.organization WHERE id = $1 FOR UPDATE", org)
        await stage.send(updated)
        await eventually(lambda: stage.blocked(db), timeout=30)
        await asyncio.sleep(5 * waiting.LOCK_WAIT.total_seconds())
        # Still the same statement waiting for the test's lock: a batch that had given up would
        # be failed, its message put back for a redelivery seconds later.
        waited = await db.fetchval(
            "SELECT extract(epoch FROM max(clock_timestamp() - query_start)) FROM pg_stat_activity "
            "WHERE $1 = ANY(pg_blocking_pids(pid))", batch.get_server_pid())
        assert waited is not None and waited > 4 * waiting.LOCK_WAIT.total_seconds(), waited
        await holding.rollback()
        await stage.heard({updated.event_id: ["accepted"]}, timeout=5)
        assert errors(caplog) == []
    finally:
        await batch.close()
        await db.close()
