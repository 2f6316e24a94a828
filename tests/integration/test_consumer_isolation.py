"""A batch that breaks is applied a message at a time (cso/consumer.py `_isolate`). With a
thousand messages that takes longer than ack_wait: the messages still waiting are marked in
progress, so JetStream neither redelivers them meanwhile nor spends their deliveries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope
from cso.consumer import Rejected
from cso.settings import Settings
from tests.support import eventually
from tests.support.events import publish_status, status_changed
from tests.support.status_consumers import durable, status_consumers

pytestmark = pytest.mark.integration


class BreaksBatches:
    """Fails any batch of more than one event; applies one alone, slowly."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.applied: list[UUID] = []

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        if len(events) > 1:
            raise RuntimeError("one of them breaks the batch")
        await asyncio.sleep(self.seconds)
        self.applied += [e.event_id for e in events]
        return {}


async def test_a_broken_batch_applied_alone_outlasts_ack_wait_without_redelivery(
        settings: Settings, nc: NATS) -> None:
    handler = BreaksBatches(0.12)
    events = [status_changed() for _ in range(40)]
    async with status_consumers(settings, nc) as bus:
        name = durable("alone")
        # 40 events alone at 0.12 s each: 4.8 s, more than twice the ack wait.
        consumer = bus.consumer(name, handler, ack_wait=2.0)
        for event in events:
            await publish_status(nc, settings, event)
        try:
            consumer.start()
            loop = asyncio.get_running_loop()
            began = loop.time()
            await eventually(lambda: asyncio.sleep(0, len(handler.applied) >= len(events)), timeout=20)
            assert handler.applied == [e.event_id for e in events], "each applied once, in order"
            assert loop.time() - began > 2 * consumer.ack_wait
            await asyncio.sleep(consumer.ack_wait + 0.5)   # a redelivery would have come by now
            info = await nc.jetstream().consumer_info(bus.stream, name)
            assert (info.num_redelivered, info.num_ack_pending, info.delivered.consumer_seq) == (0, 0, len(events))
            assert handler.applied == [e.event_id for e in events]
        finally:
            await consumer.stop()
