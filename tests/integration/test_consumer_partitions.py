"""Partitions of a consumer by province (cso/partitions.py) on a real nats-server and PostgreSQL:
two partitions take disjoint shares that together are every event, each in stream order; a
stopped partition's share waits for it alone and it resumes there; a durable of another layout
hands its position over, unless its floor does not fit the stream, and one still pulled is
refused; a bus loss one partition's replica finds makes every partition read again, an idle
durable of another layout deleted rather than handing its floor over; an intake subject no
partition would take cannot be published."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from uuid import UUID

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NoStreamResponseError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import Envelope, Topology
from cso import bus, outbox
from cso.buswatch import BusWatch, GapListener
from cso.consumer import Consumer, Rejected, Subscription
from cso.database import make_engine
from cso.partitions import Partition, PartitionError, layout_durables
from cso.settings import Settings
from services.notify.app import run_migrations
from tests.support import eventually
from tests.support.events import publish_status, status_changed

pytestmark = pytest.mark.integration

# Counties of provinces spread over both partitions of two, and a token that is no province (99).
COUNTIES = ("110101", "130102", "370102", "410102", "440103", "510104", "511102", "650102", "990101")


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[UUID, str]] = []

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        self.events += [(e.event_id, e.region) for e in events]
        return {}


class Again:
    """The verdicts on what a consumer is handed again: the event ids its inbox already held."""

    def __init__(self) -> None:
        self.events: list[UUID] = []

    async def broken(self, conn: AsyncConnection, broken: Sequence[tuple[Msg, str]]) -> None:
        pass

    async def duplicates(self, conn: AsyncConnection, duplicates: Sequence[tuple[Msg, Envelope[Any]]]) -> None:
        self.events += [env.event_id for _, env in duplicates]


def consumer(nc: NATS, engine: Any, topology: Topology, durable: str, seen: Seen,
             partition: Partition | None, again: Again | None = None) -> Consumer:
    sub = Subscription("CSO_TARGETS", topology.context_subjects("targets"), durable, partitionable=True)
    return Consumer(nc=nc, engine=engine, topology=topology, schema="notify", service="notify",
                    subscription=sub.partitioned(partition), handler=seen, verdicts=again)


class Targets(NamedTuple):
    """What each test of consumers here starts from: notify's tables migrated, the streams, a pool
    (disposed after the test, once its consumers stopped), JetStream and CSO_TARGETS' name."""

    topology: Topology
    engine: AsyncEngine
    js: JetStreamContext
    stream: str


@pytest.fixture
async def targets(settings: Settings, nc: NATS) -> AsyncIterator[Targets]:
    await asyncio.to_thread(run_migrations, settings)
    topology = settings.topology
    await bus.ensure_streams(nc, topology)
    engine = make_engine(settings.database_url, pool_size=4)
    try:
        yield Targets(topology, engine, nc.jetstream(), topology.stream("CSO_TARGETS"))
    finally:
        await engine.dispose()


async def publish(nc: NATS, settings: Settings, rounds: int) -> list[tuple[UUID, str]]:
    published = []
    for i in range(rounds):
        for county in COUNTIES:
            event = status_changed(region=county, value=float(i))
            await publish_status(nc, settings, event)
            published.append((event.event_id, county))
    return published


def share(events: list[tuple[UUID, str]], partition: Partition) -> list[tuple[UUID, str]]:
    mine = set(partition.provinces())
    return [(e, region) for e, region in events if region[:2] in mine]


async def test_two_partitions_take_disjoint_shares_and_resume_their_own(
        settings: Settings, nc: NATS, targets: Targets) -> None:
    topology, engine, js, stream = targets
    base = f"parts-{uuid.uuid4().hex[:6]}"
    parts = [Partition(0, 2), Partition(1, 2)]
    seen = [Seen(), Seen()]
    consumers = [consumer(nc, engine, topology, base, seen[p.index], p) for p in parts]
    try:
        # The counties cover both partitions, or the test proves nothing.
        assert all(share([(uuid.uuid4(), c) for c in COUNTIES], p) for p in parts)
        first = await publish(nc, settings, 3)
        for c in consumers:
            c.start()
        await eventually(lambda: asyncio.sleep(0, sum(len(s.events) for s in seen) == len(first)), timeout=15)
        # Disjoint, all of them, each partition its own provinces in stream (publish) order.
        for p in parts:
            assert seen[p.index].events == share(first, p)
        assert {e for e, _ in seen[0].events}.isdisjoint({e for e, _ in seen[1].events})
        assert sorted(seen[0].events + seen[1].events) == sorted(first)
        for p in parts:
            info = await js.consumer_info(topology.stream("CSO_TARGETS"), p.durable(base))
            assert info.config.description.startswith(f"cso partition {p.index} of 2, assignment ")
            await eventually(lambda p=p: _settled(js, topology.stream("CSO_TARGETS"), p.durable(base)))

        # Partition 1 stops; what is published meanwhile: partition 0 takes its share only, and
        # partition 1's share waits on its durable until it comes back, then is taken, once.
        await consumers[1].stop()
        second = await publish(nc, settings, 2)
        await eventually(lambda: asyncio.sleep(0, len(seen[0].events) == len(share(first + second, parts[0]))),
                         timeout=15)
        info = await js.consumer_info(topology.stream("CSO_TARGETS"), parts[1].durable(base))
        assert info.num_pending == len(share(second, parts[1]))
        assert seen[1].events == share(first, parts[1])
        consumers[1] = consumer(nc, engine, topology, base, seen[1], parts[1])
        consumers[1].start()
        await eventually(lambda: asyncio.sleep(0, len(seen[1].events) == len(share(first + second, parts[1]))),
                         timeout=15)
        await asyncio.sleep(0.5)
        assert seen[1].events == share(first + second, parts[1])
        assert seen[0].events == share(first + second, parts[0])
        # Each partition's own row in consumer_position: none waits on another's update.
        async with engine.connect() as conn:
            keys = set((await conn.execute(text("SELECT stream FROM notify.consumer_position"))).scalars())
        assert {f"{stream}#p0", f"{stream}#p1"} <= keys
    finally:
        for c in consumers:
            await c.stop()


async def test_a_new_layout_starts_where_the_old_had_got_to(settings: Settings, nc: NATS, targets: Targets) -> None:
    """Unpartitioned, then two partitions: they start at the old durable's ack floor (nothing
    applied before it comes again, nothing after it is lost), and the old durable is deleted once
    both exist. A durable of the old layout that a replica still pulls is refused, by name."""
    topology, engine, js, stream = targets
    base = f"layout-{uuid.uuid4().hex[:6]}"
    old_seen, seen = Seen(), [Seen(), Seen()]
    old = consumer(nc, engine, topology, base, old_seen, None)
    parts: list[Consumer] = []
    try:
        first = await publish(nc, settings, 2)
        old.start()
        await eventually(lambda: asyncio.sleep(0, len(old_seen.events) == len(first)), timeout=15)
        # A partition while the old layout is still pulled: refused, naming the setting.
        early = consumer(nc, engine, topology, base, seen[0], Partition(0, 2))
        await eventually(lambda: _waiting(js, stream, base), timeout=10)
        with pytest.raises(PartitionError, match=r"CSO_PARTITIONS=2.*still pulled"):
            await early._subscribe()
        assert Partition(0, 2).durable(base) not in {c.name for c in await js.consumers_info(stream)}
        floor = (await js.consumer_info(stream, base)).ack_floor.stream_seq
        assert floor >= len(first)
        await old.stop()
        second = await publish(nc, settings, 2)
        parts = [consumer(nc, engine, topology, base, seen[i], Partition(i, 2)) for i in range(2)]
        for c in parts:
            c.start()
        await eventually(lambda: asyncio.sleep(0, sum(len(s.events) for s in seen) == len(second)), timeout=15)
        await asyncio.sleep(0.5)
        assert sorted(seen[0].events + seen[1].events) == sorted(second)
        # Delivered from the old floor on, not from the stream's first message again.
        for i in range(2):
            info = await js.consumer_info(stream, Partition(i, 2).durable(base))
            assert info.delivered.consumer_seq == len(share(second, Partition(i, 2)))
        names = {c.name for c in await js.consumers_info(stream)}
        assert base not in names and set(layout_durables(base, 2)) <= names
    finally:
        for c in [old, *parts]:
            await c.stop()


@pytest.mark.parametrize(("old_count", "new_count"), [(2, 3), (3, 2)])
async def test_a_change_of_partition_count_loses_nothing_and_replays_no_stream(
        settings: Settings, nc: NATS, targets: Targets, old_count: int, new_count: int) -> None:
    """N -> M partitions while old partition 0 lags (stopped, the others went on): every new
    partition starts at the lowest ack floor of the old layout, so what old partition 0 had not
    acknowledged reaches the new partition of each province (none lost, whichever new partition
    takes it), the rest comes again and the inbox drops it, and no new partition starts from the
    stream's first message. The old durables are deleted once every new one exists."""
    topology, engine, js, stream = targets
    base = f"count-{uuid.uuid4().hex[:6]}"
    olds = [Partition(i, old_count) for i in range(old_count)]
    news = [Partition(i, new_count) for i in range(new_count)]
    old_seen = [Seen() for _ in olds]
    seen = [Seen() for _ in news]
    running = [consumer(nc, engine, topology, base, old_seen[p.index], p) for p in olds]
    try:
        before = (await js.stream_info(stream)).state.last_seq
        history = await publish(nc, settings, 1)   # applied by every old partition
        for c in running:
            c.start()
        for p in olds:
            await eventually(lambda p=p: asyncio.sleep(0, len(old_seen[p.index].events) == len(share(history, p))),
                             timeout=15)
            await eventually(lambda p=p: _settled(js, stream, p.durable(base)), timeout=15)
            assert old_seen[p.index].events == share(history, p)
        await running[0].stop()                      # old partition 0 lags from here on
        mid = await publish(nc, settings, 1)
        await eventually(lambda: asyncio.sleep(0, all(len(old_seen[p.index].events) == len(share(history + mid, p))
                                                      for p in olds[1:])), timeout=15)
        for p in olds[1:]:
            await eventually(lambda p=p: _settled(js, stream, p.durable(base)), timeout=15)
        for c in running:
            await c.stop()
        later = await publish(nc, settings, 1)
        running = [consumer(nc, engine, topology, base, seen[p.index], p) for p in news]
        for c in running:
            c.start()
        # Not applied before: old partition 0's share of `mid`, and all of `later`.
        unapplied = share(mid, olds[0]) + later
        unapplied.sort(key=(mid + later).index)
        await eventually(lambda: asyncio.sleep(0, sum(len(s.events) for s in seen) == len(unapplied)), timeout=20)
        await asyncio.sleep(0.5)
        for p in news:
            assert seen[p.index].events == share(unapplied, p)
            # Delivered from old partition 0's ack floor (within `history`), not the stream's first.
            info = await js.consumer_info(stream, p.durable(base))
            assert info.config.opt_start_seq is not None and info.config.opt_start_seq > before + 1
        await eventually(lambda: _gone(js, stream, [p.durable(base) for p in olds]), timeout=10)
    finally:
        for c in running:
            await c.stop()


async def test_an_old_durable_a_replica_is_applying_from_is_kept(
        settings: Settings, nc: NATS, targets: Targets) -> None:
    """A replica of the old layout busy with a batch has no request waiting, only messages not yet
    acknowledged: its durable is kept (said in the log) while the idle one of the same layout is
    deleted once every new durable exists (review finding 7)."""
    topology, engine, js, stream = targets
    base = f"busy-{uuid.uuid4().hex[:6]}"
    sub = Subscription("CSO_TARGETS", topology.context_subjects("targets"), base, partitionable=True)
    olds = [sub.partitioned(Partition(i, 2)) for i in range(2)]
    for old in olds:
        await js.add_consumer(stream, ConsumerConfig(name=old.durable, durable_name=old.durable,
                                                     ack_policy=AckPolicy.EXPLICIT, filter_subjects=old.filters()))
    await publish(nc, settings, 1)
    busy = await js.pull_subscribe_bind(olds[0].durable, stream)
    held = await busy.fetch(1, timeout=5)      # in hand, not acknowledged: a batch being applied
    info = await js.consumer_info(stream, olds[0].durable)
    assert (info.num_waiting, info.num_ack_pending) == (0, 1)
    seen = [Seen() for _ in range(3)]
    news = [consumer(nc, engine, topology, base, seen[i], Partition(i, 3)) for i in range(3)]
    try:
        for c in news:
            c.start()
        await eventually(lambda: _gone(js, stream, [olds[1].durable]), timeout=15)
        names = {c.name for c in await js.consumers_info(stream)}
        assert olds[0].durable in names and set(layout_durables(base, 3)) <= names
        await held[0].ack()
    finally:
        for c in news:
            await c.stop()
        await busy.unsubscribe()


async def _gone(js: Any, stream: str, durables: list[str]) -> bool:
    return not set(durables) & {c.name for c in await js.consumers_info(stream)}


async def _settled(js: Any, stream: str, durable: str) -> bool:
    """Nothing pending nor unacknowledged (acks follow the commit, a moment after the handler)."""
    info = await js.consumer_info(stream, durable)
    return (info.num_pending, info.num_ack_pending) == (0, 0)


async def _waiting(js: Any, stream: str, durable: str) -> bool:
    return int((await js.consumer_info(stream, durable)).num_waiting or 0) > 0


async def test_intake_partitions_route_every_shape_to_exactly_one(settings: Settings, nc: NATS) -> None:
    """registry's intake split in two: nats-server takes each partition's filter list (both intake
    forms, over a hundred subjects), and every subject the stream takes, of a province or not, of an
    intake fact's shape or not (six tokens too), is pending on exactly one partition."""
    topology = settings.topology
    await bus.ensure_streams(nc, topology)
    js = nc.jetstream()
    stream = topology.stream("CSO_INTAKE")
    intake = Subscription("CSO_INTAKE", topology.context_subjects("intake"), f"in-{uuid.uuid4().hex[:6]}",
                          partitionable=True)
    parts = [intake.partitioned(Partition(i, 2)) for i in range(2)]
    assert max(len(p.filters()) for p in parts) > 100
    for p in parts:
        await js.add_consumer(stream, ConsumerConfig(name=p.durable, durable_name=p.durable,
                                                     ack_policy=AckPolicy.EXPLICIT, filter_subjects=p.filters()))
    prefix = topology.context_subjects("intake").removesuffix(">")
    subjects = [f"{prefix}organization_filed.51.5111.511102", f"{prefix}bench.organization_filed.13.1301.130102",
                f"{prefix}bench.hub_established.37._._", f"{prefix}bench.organization_filed.99.9901.990101",
                f"{prefix}odd", f"{prefix}a.b", f"{prefix}a.b.c", f"{prefix}a.b.c.d.e.f", f"{prefix}a.b.c.d.e.f.g"]
    for subject in subjects:
        await js.publish(subject, b"{}")
    pending = [(await js.consumer_info(stream, p.durable)).num_pending for p in parts]
    assert sum(pending) == len(subjects)
    for subject in subjects:
        matched = [p.durable for p in parts if any(_matches(f, subject) for f in p.filters())]
        assert len(matched) == 1, (subject, matched)


def _matches(pattern: str, subject: str) -> bool:
    ps, ss = pattern.split("."), subject.split(".")
    for i, p in enumerate(ps):
        if p == ">":
            return len(ss) > i
        if i >= len(ss) or (p != "*" and p != ss[i]):
            return False
    return len(ps) == len(ss)


@dataclass
class Replica:
    """What BusWatch reads of a service (cso.buswatch.Watched): one replica, its own partition's consumer."""

    name: str
    schema: str
    topology: Topology
    engine: AsyncEngine
    nc: NATS | None
    consumers: list[Consumer]
    relay: outbox.Relay | None = None
    gap_listeners: list[GapListener] = field(default_factory=list)

    @property
    def needed_streams(self) -> tuple[str, ...]:
        return ()

    async def check_streams(self) -> list[str]:
        return []


async def test_a_bus_loss_one_partition_finds_makes_every_partition_read_again(
        settings: Settings, nc: NATS, targets: Targets) -> None:
    """The stream lost messages and survived: the replica of partition 0 finds the gap and records
    it in the tables both partitions share (their positions reset, the stream's new state), so
    partition 1's replica never sees it. Its durable must start over too: both partitions are
    handed their whole share again (the inbox drops it: nothing applied twice)."""
    topology, engine, js, stream = targets
    base = f"gap-{uuid.uuid4().hex[:6]}"
    parts = [Partition(0, 2), Partition(1, 2)]
    seen, again = [Seen(), Seen()], [Again(), Again()]
    consumers = [consumer(nc, engine, topology, base, seen[p.index], p, again[p.index]) for p in parts]
    try:
        before = (await js.stream_info(stream)).state.last_seq
        published = await publish(nc, settings, 2)
        for c in consumers:
            c.start()
        await eventually(lambda: asyncio.sleep(0, sum(len(s.events) for s in seen) == len(published)), timeout=15)
        for p in parts:
            await eventually(lambda p=p: _settled(js, stream, p.durable(base)), timeout=15)
        watch = BusWatch(Replica("notify", "notify", topology, engine, nc, consumers=[consumers[0]]))
        assert await watch.check() == []       # the stream as it is, recorded
        # The bus loses one message of each partition's share; the stream stays.
        lost = [next(published.index(e) for e in published if e in share(published, p)) for p in parts]
        for index in lost:
            assert await js.delete_msg(stream, before + 1 + index)
        gaps = await watch.check()
        assert [(g.side, g.lost) for g in gaps] == [("consumer", 2)]
        kept = [e for i, e in enumerate(published) if i not in lost]
        for p in parts:
            mine = {e for e, _ in share(kept, p)}
            await eventually(lambda p=p, mine=mine: asyncio.sleep(0, set(again[p.index].events) == mine),
                             timeout=20)
            assert seen[p.index].events == share(published, p)   # applied once, before the loss
        assert await watch.check() == []
    finally:
        for c in consumers:
            await c.stop()


async def test_a_floor_beyond_the_stream_is_not_handed_over(
        settings: Settings, nc: NATS, targets: Targets, caplog: pytest.LogCaptureFixture) -> None:
    """An idle durable of another layout whose ack floor lies beyond the stream's last sequence (a
    leftover of a stream since lost or cut: its floor counts messages the stream no longer has):
    the new partitions start at the stream's first message, not after that floor, which would
    skip everything published up to it; the stale durable is deleted once both exist."""
    topology, engine, js, stream = targets
    base = f"stale-{uuid.uuid4().hex[:6]}"
    seen = [Seen(), Seen()]
    parts: list[Consumer] = []
    try:
        first = await publish(nc, settings, 1)
        last = (await js.stream_info(stream)).state.last_seq
        # The unpartitioned layout's durable, acknowledged (it says) up to far past the stream's end.
        await js.add_consumer(stream, ConsumerConfig(
            name=base, durable_name=base, ack_policy=AckPolicy.EXPLICIT, filter_subject=topology.context_subjects(
                "targets"), deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 100))
        assert (await js.consumer_info(stream, base)).ack_floor.stream_seq > last
        second = await publish(nc, settings, 2)   # all below that floor
        parts = [consumer(nc, engine, topology, base, seen[i], Partition(i, 2)) for i in range(2)]
        for c in parts:
            c.start()
        everything = first + second
        await eventually(lambda: asyncio.sleep(0, sum(len(s.events) for s in seen) == len(everything)), timeout=15,
                         describe=lambda: [len(s.events) for s in seen])
        await asyncio.sleep(0.5)
        for i in range(2):
            assert seen[i].events == share(everything, Partition(i, 2))
            info = await js.consumer_info(stream, Partition(i, 2).durable(base))
            assert info.config.opt_start_seq is None   # from the stream's first
        assert f"{base} acknowledged up to {last + 99}" in caplog.text
        await eventually(lambda: _gone(js, stream, [base]), timeout=10)
    finally:
        for c in parts:
            await c.stop()


async def test_a_restart_from_the_start_deletes_an_idle_durable_of_another_layout(
        settings: Settings, nc: NATS, targets: Targets) -> None:
    """Unpartitioned, then two partitions of which only partition 0 has come up: the old durable
    is kept (not every new one exists) and partition 0 starts after its floor. The bus loses what
    partition 0 had read (BusWatch restarts it from the start): the idle old durable goes too,
    so that its floor, of the stream before the loss, is handed to no new durable, and
    partition 0 is handed its whole share again from the stream's first (the inbox drops it)."""
    topology, engine, js, stream = targets
    base = f"idle-{uuid.uuid4().hex[:6]}"
    old_seen, seen, again = Seen(), Seen(), Again()
    old = consumer(nc, engine, topology, base, old_seen, None)
    part = consumer(nc, engine, topology, base, seen, Partition(0, 2), again)
    try:
        published = await publish(nc, settings, 2)
        old.start()
        await eventually(lambda: asyncio.sleep(0, len(old_seen.events) == len(published)), timeout=15)
        await eventually(lambda: _settled(js, stream, base), timeout=15)
        await old.stop()
        part.start()
        durable = Partition(0, 2).durable(base)
        await asyncio.wait_for(part.idle.wait(), 10)
        info = await js.consumer_info(stream, durable)
        assert info.config.opt_start_seq is not None and info.delivered.consumer_seq == 0   # after the old floor
        assert base in {c.name for c in await js.consumers_info(stream)}                   # partition 1 missing

        await part.restart(from_start=True)
        mine = {e for e, _ in share(published, Partition(0, 2))}
        await eventually(lambda: asyncio.sleep(0, set(again.events) == mine), timeout=15,
                         describe=lambda: len(again.events))
        assert seen.events == []                        # applied once, by the old layout
        assert (await js.consumer_info(stream, durable)).config.opt_start_seq is None
        assert base not in {c.name for c in await js.consumers_info(stream)}
    finally:
        for c in (old, part):
            await c.stop()


async def test_an_intake_fact_without_a_two_digit_province_cannot_be_published(settings: Settings, nc: NATS) -> None:
    """A subject of an intake fact's shape whose province token is not two digits matches no
    partition's filters: CSO_INTAKE does not take it, so its publish fails where the sender sees it
    (partitioned or not: the stream is one), instead of waiting in the stream for no one."""
    topology = settings.topology
    await bus.ensure_streams(nc, topology)
    js = nc.jetstream()
    stream = topology.stream("CSO_INTAKE")
    prefix = topology.context_subjects("intake").removesuffix(">")
    messages = (await js.stream_info(stream)).state.messages
    for subject in (f"{prefix}bench.organization_filed.5x.510104.510104",
                    f"{prefix}bench.organization_filed.5.5101.510104",
                    f"{prefix}organization_filed.sichuan.5101.510104"):
        with pytest.raises(NoStreamResponseError):
            await js.publish(subject, b"{}")
    assert (await js.stream_info(stream)).state.messages == messages
    await js.publish(f"{prefix}bench.organization_filed.51.5101.510104", b"{}")
    assert (await js.stream_info(stream)).state.messages == messages + 1
