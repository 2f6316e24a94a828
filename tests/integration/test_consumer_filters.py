"""A consumer filtered to its handler's event types is never handed the others (filter_subjects),
and a durable made before with the whole context's filter is updated in place."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope
from cso.consumer import Consumer, Rejected
from cso.settings import Settings
from tests.support import eventually
from tests.support.events import publish_status, status_changed
from tests.support.status_consumers import durable, status_consumers

pytestmark = pytest.mark.integration


class Seen:
    def __init__(self) -> None:
        self.events: list[UUID] = []

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        self.events += [e.event_id for e in events]
        return {}


async def test_only_the_handled_types_are_delivered(settings: Settings, nc: NATS) -> None:
    js = nc.jetstream()
    wanted, other = durable("wants"), durable("other")
    seen = {wanted: Seen(), other: Seen()}
    async with status_consumers(settings, nc) as bus:
        stream, topology = bus.stream, settings.topology

        def consumer(name: str, types: frozenset[str] | None) -> Consumer:
            return bus.consumer(name, seen[name], types)

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
