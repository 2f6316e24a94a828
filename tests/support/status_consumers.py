"""Consumers of targets' status events in notify's schema, for the tests of cso.consumer itself
(its filters, its acks around after_commit, a broken batch applied alone): one setup for all."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine

from cso import bus
from cso.consumer import Consumer, Handler, Subscription
from cso.database import make_engine
from cso.settings import Settings
from services.notify.app import run_migrations

STATUS = frozenset({"TargetStatusChanged"})


@dataclass
class StatusConsumers:
    settings: Settings
    nc: NATS
    engine: AsyncEngine
    stream: str   # CSO_TARGETS, in the test's namespace

    def consumer(self, durable: str, handler: Handler, types: frozenset[str] | None = STATUS,
                 **options: Any) -> Consumer:
        """A consumer of CSO_TARGETS (`types` of it; None: the whole context's filter)."""
        topology = self.settings.topology
        return Consumer(nc=self.nc, engine=self.engine, topology=topology, schema="notify", service="notify",
                        subscription=Subscription("CSO_TARGETS", topology.context_subjects("targets"),
                                                  durable, types), handler=handler, **options)


def durable(prefix: str) -> str:
    """A durable name of its own, so tests sharing the stream never share a consumer."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@asynccontextmanager
async def status_consumers(settings: Settings, nc: NATS) -> AsyncIterator[StatusConsumers]:
    """notify's schema migrated, the streams made, an engine of two connections (disposed after)."""
    await asyncio.to_thread(run_migrations, settings)
    await bus.ensure_streams(nc, settings.topology)
    engine = make_engine(settings.database_url, pool_size=2)
    try:
        yield StatusConsumers(settings, nc, engine, settings.topology.stream("CSO_TARGETS"))
    finally:
        await engine.dispose()
