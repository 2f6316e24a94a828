"""A consumer filtered to its handler's event types is never handed the others (filter_subjects),
and a durable made before with the whole context's filter is updated in place."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope
from cso import bus
from cso.consumer import Consumer, Rejected, Subscription
from cso.database import make_engine
from cso.settings import Settings
from services.notify.app import run_migrations
from tests.support import eventually
from tests.support.events import publish_status, status_changed

pytestmark = pytest.mark.integration


class Seen:
    def __init__(self) -> None:
        self.events: list[UUID] = []

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        self.events += [e.event_id for e in events]
        return {}


async def test_only_the_handled_types_are_delivered(settings: Settings, nc: NATS) -> None:
    await asyncio.to_thread(run_migrations, settings)
    topology = settings.topology
    await bus.ensure_streams(nc, topology)
    stream = topology.stream("CSO_TARGETS")
    engine = make_engine(settings.database_url, pool_size=2)
    js = nc.jetstream()
    wanted, other = f"wants-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    seen = {wanted: Seen(), other: Seen()}

    def consumer(durable: str, types: frozenset[str] | None) -> Consumer:
        return Consumer(nc=nc, engine=engine, topology=topology, schema="notify", service="notify",
                        subscription=Subscription("CSO_TARGETS", topology.context_subjects("targets"),
                                                  durable, types), handler=seen[durable])

    try:
        # `wanted` first exists with the whole context's filter, as an earlier version made it.
        first = consumer(wanted, None)
        first.start()
        await asyncio.wait_for(first.idle.wait(), 10)
        await first.stop()
        consumers = [consumer(wanted, frozenset({"TargetStatusChanged"})),
                     consumer(other, frozenset({"CoverageChanged"}))]
        for c in consumers:
            c.start()
        for c in consumers:
            await asyncio.wait_for(c.idle.wait(), 10)
        info = await js.consumer_info(stream, wanted)
        assert info.config.filter_subjects == [f"{topology.context_subjects('targets')[:-1]}target_status_changed.>"]
        # So is one made with another batch size (CSO_BATCH_SIZE changed): two batches in hand.
        assert info.config.max_ack_pending == 2 * consumers[0].batch
        await consumers[0].stop()
        consumers[0] = consumer(wanted, frozenset({"TargetStatusChanged"}))
        consumers[0].batch = 30
        consumers[0].start()
        await asyncio.wait_for(consumers[0].idle.wait(), 10)
        assert (await js.consumer_info(stream, wanted)).config.max_ack_pending == 60
        event = status_changed()
        await publish_status(nc, settings, event)
        await eventually(lambda: asyncio.sleep(0, seen[wanted].events == [event.event_id]), timeout=10)
        # The other was never handed it: nothing delivered, nothing pending.
        info = await js.consumer_info(stream, other)
        assert (info.delivered.consumer_seq, info.num_pending, info.num_ack_pending) == (0, 0, 0)
        assert seen[other].events == []
        for c in consumers:
            await c.stop()
    finally:
        await engine.dispose()
