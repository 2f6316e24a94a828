"""A consumer that stops hands its durable over at once: a replica started after it (a restart, a
rolling upgrade) gets the next message without waiting for ack_wait."""

from __future__ import annotations

import asyncio
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


async def test_a_stopped_consumer_leaves_no_pull_behind(settings: Settings, nc: NATS) -> None:
    await asyncio.to_thread(run_migrations, settings)
    topology = settings.topology
    await bus.ensure_streams(nc, topology)
    engine = make_engine(settings.database_url, pool_size=2)
    seen = Seen()

    def consumer() -> Consumer:
        # ack_wait far beyond the test's patience: a message handed to the stopped consumer's
        # forgotten pull would come back only then.
        return Consumer(nc=nc, engine=engine, topology=topology, schema="notify", service="notify",
                        subscription=Subscription("CSO_TARGETS", topology.context_subjects("targets"),
                                                  "handover"),
                        handler=seen, ack_wait=60.0)

    try:
        first = consumer()
        first.start()
        await asyncio.wait_for(first.idle.wait(), 10)  # an empty pull has come back: it pulls again
        await asyncio.sleep(0.1)
        # The connection stays open (a replica may share it, and a closing one is not gone for the
        # server at once): only the consumer's own unsubscribe can withdraw its pull.
        await first.stop()
        event = status_changed()
        await publish_status(nc, settings, event)
        second = consumer()
        second.start()
        try:
            await eventually(lambda: asyncio.sleep(0, seen.events == [event.event_id]), timeout=5)
        finally:
            await second.stop()
    finally:
        await engine.dispose()
