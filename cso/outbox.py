"""The transactional outbox: a service's events commit with its state, then a relay publishes them.

Published rows are kept (for `outbox_retention_days`) with the stream sequence JetStream gave them,
so the outbox is also a log the service can replay if the bus ever loses messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError
from prometheus_client import Counter, Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import Envelope, Topology, encode

from .streams import MIGRATE_HINT

log = logging.getLogger(__name__)

CRASH_AFTER_PUBLISH = os.environ.get("CSO_FAULT_CRASH_AFTER_PUBLISH") == "1"
PUBLISHED = Counter("cso_outbox_published_total", "Outbox events published", ["service"])
BACKLOG = Gauge("cso_outbox_backlog", "Outbox events not yet published", ["service"])


def ddl(schema: str) -> list[str]:
    """Tables every service keeps in its own schema: outbox, inbox (dedup), consumer positions."""
    return [
        f"""CREATE TABLE "{schema}".outbox (
            seq bigserial PRIMARY KEY,
            event_id uuid NOT NULL UNIQUE,
            subject text NOT NULL,
            type text NOT NULL,
            aggregate_id text,
            data bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            published_at timestamptz,
            stream text,
            stream_seq bigint)""",
        f'CREATE INDEX outbox_unpublished ON "{schema}".outbox (seq) WHERE published_at IS NULL',
        f'CREATE INDEX outbox_aggregate ON "{schema}".outbox (aggregate_id, seq)',
        f"""CREATE TABLE "{schema}".inbox (
            event_id uuid PRIMARY KEY,
            stream text NOT NULL,
            stream_seq bigint NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())""",
        f"""CREATE TABLE "{schema}".consumer_position (
            stream text PRIMARY KEY,
            last_seq bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now())""",
        # The identity of each stream as last seen (its creation time), to notice a recreated one.
        f"""CREATE TABLE "{schema}".bus_stream (
            stream text PRIMARY KEY,
            created timestamptz,
            last_seq bigint NOT NULL,
            messages bigint NOT NULL DEFAULT 0,
            checked_at timestamptz NOT NULL DEFAULT now())""",
    ]


async def add(conn: AsyncConnection, schema: str, topology: Topology,
              events: Iterable[tuple[Envelope[Any], str | None]]) -> int:
    """Stage events in the caller's transaction; they are published only if it commits."""
    return await add_messages(conn, schema, [(e.event_id, topology.event_subject(e.type, e.region), e.type,
                                              aggregate, encode(e)) for e, aggregate in events])


async def add_messages(conn: AsyncConnection, schema: str,
                       rows: Sequence[tuple[UUID, str, str, str | None, bytes]], table: str = "outbox") -> int:
    """Stage messages of any kind on subjects of their own (id, subject, type, aggregate, data), e.g.
    registry's receipts (in a table of their own, `table`, with its own relay): a stream must take
    the subject. An id already staged is left as it is."""
    if rows:
        # One statement for the whole batch (an executemany runs the insert once per row), in the
        # order given: the relay publishes by seq.
        ids, subjects, types, aggregates, data = (list(c) for c in zip(*rows, strict=True))
        await conn.execute(text(
            f'INSERT INTO "{schema}".{table} (event_id, subject, type, aggregate_id, data) '
            "SELECT e, s, t, a, d FROM unnest(CAST(:e AS uuid[]), CAST(:s AS text[]), CAST(:t AS text[]), "
            "CAST(:a AS text[]), CAST(:d AS bytea[])) WITH ORDINALITY AS u(e, s, t, a, d, n) ORDER BY n "
            "ON CONFLICT (event_id) DO NOTHING"),
            {"e": ids, "s": subjects, "t": types, "a": aggregates, "d": data})
    return len(rows)


class Relay:
    """Publishes unpublished outbox rows in order, pipelined, each with `Nats-Msg-Id` = event id.

    JetStream drops a second publish of the same id inside its duplicate window, and every consumer
    drops an event id it has already applied, so a crash between publish and marking the row
    published costs a harmless re-publish, never a double count.
    """

    def __init__(self, engine: AsyncEngine, js: JetStreamContext, schema: str, service: str,
                 batch: int = 500, poll_seconds: float = 0.5,
                 retention: timedelta = timedelta(days=30), table: str = "outbox") -> None:
        self.engine, self.js, self.schema, self.service = engine, js, schema, service
        self.table = table  # another table of the outbox's columns, e.g. registry's receipt_outbox
        self.batch, self.poll_seconds, self.retention = batch, poll_seconds, retention
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waiting = False   # for a stream: said once, not every second

    def notify(self) -> None:
        self.wake.set()

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many rows it published."""
        async with self.engine.begin() as conn:
            rows = (await conn.execute(text(
                f'SELECT seq, event_id, subject, data FROM "{self.schema}".{self.table} '
                "WHERE published_at IS NULL ORDER BY seq LIMIT :n FOR UPDATE SKIP LOCKED"),
                {"n": self.batch})).all()
            if not rows:
                return 0
            acks = await asyncio.gather(*(
                self.js.publish(r.subject, bytes(r.data), headers={"Nats-Msg-Id": str(r.event_id)})
                for r in rows))
            if CRASH_AFTER_PUBLISH:
                # Fault injection (tests/faults): die between publish and commit, as a kill -9 would.
                os._exit(137)
            await conn.execute(text(
                f'UPDATE "{self.schema}".{self.table} o SET published_at = now(), stream = u.stream, '
                "stream_seq = u.stream_seq FROM unnest(CAST(:seq AS bigint[]), CAST(:stream AS text[]), "
                "CAST(:stream_seq AS bigint[])) AS u(seq, stream, stream_seq) WHERE o.seq = u.seq"),
                {"seq": [r.seq for r in rows], "stream": [a.stream for a in acks],
                 "stream_seq": [a.seq for a in acks]})
        PUBLISHED.labels(self.service).inc(len(rows))
        return len(rows)

    async def backlog(self) -> int:
        async with self.engine.connect() as conn:
            n = (await conn.execute(text(
                f'SELECT count(*) FROM "{self.schema}".{self.table} WHERE published_at IS NULL'))).scalar_one()
        BACKLOG.labels(self.service).set(n)
        return int(n)

    async def purge(self) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(text(
                f'DELETE FROM "{self.schema}".{self.table} WHERE published_at < now() - CAST(:keep AS interval)'),
                {"keep": self.retention})
        return int(result.rowcount)

    async def run(self) -> None:
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                while await self.publish_pending() == self.batch:
                    pass
                await self.backlog()
                if loop.time() - last_purge > 3600:
                    last_purge = loop.time()
                    await self.purge()
            except asyncio.CancelledError:
                raise
            except NoStreamResponseError:
                # No stream takes the subject: the operator has not made it (again) yet. The rows
                # wait in the outbox; the service's readiness names the stream.
                if not self._waiting:
                    log.warning("outbox relay of %s: no stream takes its events yet (%s); holding them",
                                self.service, MIGRATE_HINT)
                self._waiting = True
                await asyncio.sleep(1)
                continue
            except Exception:
                # The bus or the database is away; the rows wait in the outbox.
                log.exception("outbox relay of %s failed; retrying", self.service)
                await asyncio.sleep(1)
            self._waiting = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_seconds)
            self.wake.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"outbox-relay-{self.service}-{self.table}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
