"""A handler's `after_commit(engine)` (cso/consumer.py) runs once its batch committed and was acked,
and a failure there is only logged: the batch is acked, applied once, never redelivered (registry's
check of the waiting room after a commit, services/registry/waiting.py, leans on this); a slow one
holds no ack back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest
from nats.aio.client import Client as NATS
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import Envelope
from cso.consumer import Rejected
from cso.settings import Settings
from tests.support import eventually
from tests.support.events import publish_status, status_changed
from tests.support.status_consumers import durable, status_consumers

pytestmark = pytest.mark.integration


class Failing:
    """Applies by noting; after the commit, sees whether its events' inbox rows are committed, then fails."""

    def __init__(self) -> None:
        self.applied: list[UUID] = []
        self.committed_before_after_commit: list[bool] = []

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        self.applied += [e.event_id for e in events]
        return {}

    async def after_commit(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            n = (await conn.execute(text("SELECT count(*) FROM notify.inbox WHERE event_id = ANY(:ids)"),
                                    {"ids": self.applied})).scalar_one()
        self.committed_before_after_commit.append(n == len(self.applied))
        raise RuntimeError("the check after the commit broke")


async def test_a_failing_after_commit_only_logs(settings: Settings, nc: NATS, caplog: pytest.LogCaptureFixture) -> None:
    handler = Failing()
    async with status_consumers(settings, nc) as consumers:
        stream, name = consumers.stream, durable("after")
        consumer = consumers.consumer(name, handler)
        try:
            consumer.start()
            first, second = status_changed(), status_changed()
            await publish_status(nc, settings, first)
            await eventually(lambda: asyncio.sleep(0, handler.committed_before_after_commit == [True]), timeout=10)
            await publish_status(nc, settings, second)
            await eventually(lambda: asyncio.sleep(0, len(handler.committed_before_after_commit) == 2), timeout=10)

            async def all_acked() -> bool:
                info = await nc.jetstream().consumer_info(stream, name)
                return bool(info.num_ack_pending == 0 and info.num_redelivered == 0
                            and info.delivered.consumer_seq == 2)

            await eventually(all_acked, timeout=10)
            assert handler.applied == [first.event_id, second.event_id]
            assert handler.committed_before_after_commit == [True, True]
            assert "the work after committing a batch" in caplog.text
        finally:
            await consumer.stop()


class Holding:
    """Applies by noting; its work after the commit lasts until the test lets it end (a slow check
    of the waiting room, a database that answers late). `alone`: it breaks on a batch of more than
    one event, so that the consumer applies each by itself (Consumer._apply_alone)."""

    def __init__(self, alone: bool) -> None:
        self.alone = alone
        self.applied: list[UUID] = []
        self.started, self.release = asyncio.Event(), asyncio.Event()

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        if self.alone and len(events) > 1:
            raise RuntimeError("one at a time")
        self.applied += [e.event_id for e in events]
        return {}

    async def after_commit(self, engine: AsyncEngine) -> None:
        self.started.set()
        await self.release.wait()


@pytest.mark.parametrize("alone", [False, True], ids=["batch", "alone"])
async def test_the_acks_do_not_wait_for_after_commit(settings: Settings, nc: NATS, alone: bool) -> None:
    """While a handler's after_commit is still at work, the server already holds every message of
    the committed transaction acknowledged: its further transaction never keeps them pending
    towards ack_wait and a redelivery (review: after_commit ran before the acks). A batch, and an
    event applied alone once its batch broke."""
    js = nc.jetstream()
    handler = Holding(alone)
    events = [status_changed() for _ in range(3)]
    async with status_consumers(settings, nc) as consumers:
        stream, name = consumers.stream, durable("held")
        consumer = consumers.consumer(name, handler)
        for event in events:
            await publish_status(nc, settings, event)
        try:
            consumer.start()
            await asyncio.wait_for(handler.started.wait(), 10)
            # Committed: the batch, or its first event by itself (the others wait behind it).
            committed = events[:1] if alone else events
            assert handler.applied == [e.event_id for e in committed]

            seen: list[Any] = []

            async def acked() -> bool:
                info = await js.consumer_info(stream, name)
                seen[:] = [info]
                return bool(info.delivered.consumer_seq == len(events)
                            and info.num_ack_pending == len(events) - len(committed)
                            and info.ack_floor.stream_seq == info.delivered.stream_seq - len(events) + len(committed))

            # after_commit is still waiting for the release: the acks came before it.
            await eventually(acked, timeout=5, describe=lambda: seen)
            handler.release.set()
            await asyncio.sleep(0.5)
            assert handler.applied == [e.event_id for e in events]
            assert (await js.consumer_info(stream, name)).num_redelivered == 0
        finally:
            handler.release.set()
            await consumer.stop()
