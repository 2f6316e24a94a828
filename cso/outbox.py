"""The transactional outbox: a service's events commit with its state, then a relay publishes them.

An event is written once: its row is inserted in the transaction that makes it and never updated.
What has been published is a position, not a flag on each row: `outbox_relay` holds, per outbox
table, the position (txid, seq) of the last row its relay published, and every row at or below it
is published. A batch of 500 costs the relay one statement (that position, and per stream the last
sequence JetStream gave the batch, `outbox_stream`), not an UPDATE of 500 rows.

Why the position is (txid, seq) and not seq alone: `seq` is taken at insert, a transaction
commits later, so a transaction that took seq 10 can commit after one that took seq 11. A relay
that published 11 and moved its mark to 11 would never see 10. So every row also carries the id
of the transaction that wrote it (`txid`, `pg_current_xact_id()`, 64 bits, never wraps), and the
relay takes only rows whose transaction is below its snapshot's xmin
(`pg_snapshot_xmin(pg_current_snapshot())`): every transaction below xmin has ended, so no row can
still appear there, and every row that will ever appear has a txid at or above it, i.e. beyond any
position the relay has recorded. Rows are published in (txid, seq) order (a transaction's rows in
the order it wrote them). The alternatives were worse: a lock serialising every writer of the
outbox until it commits (every transaction that emits an event would queue behind the others),
or polling for gaps in `seq` (a gap from a rolled-back transaction never fills).

What it costs: a row is published only once every transaction that began writing before it has
ended, in any database of the cluster (xmin is the cluster's), so a long writing transaction
delays publishing (not throughput: the relay then publishes a larger batch). Order: a
transaction's events are published in order; two transactions' events in the order of their
transaction ids (when they began writing), which for two transactions contending for one row may
differ from their commit order. It did not guarantee more before: `seq` is not commit order either,
and the relays of several replicas published side by side. Consumers order facts by their own
dates (targets' timelines) or park what comes early (registry's waiting room).

Republishing (BusWatch after the bus lost a stream, `cso replay`) moves the position back
(`rewind`): the relay publishes every row above it again; JetStream's duplicate window
(`Nats-Msg-Id` = event id) and every consumer's inbox drop what was already there. Rows are kept
for `outbox_retention_days` after they were made, so the outbox is also a log the service can
replay if the bus ever loses messages.

Relays of several replicas take turns (a transaction-scoped advisory lock, tried: a replica whose
neighbour is publishing skips its turn), and a relay moves the position only from where it read it
(compare and set): a rewind that lands while a batch is in flight is kept, not overwritten.
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


def written_once_ddl(schema: str, tables: Sequence[str] = ("outbox",)) -> list[str]:
    """The migration from rows marked published one by one to a position per outbox (issue 23):
    a `txid` on every row, `outbox_relay` and `outbox_stream`. Rows there before get txid 0, in seq
    order below every later one; the position starts just below the first row not yet published
    (rows published after it are published again: harmless, see the module's docstring).
    `published_at`, `stream` and `stream_seq` stay for the replicas of before (see below).
    History, like `ddl`: a later change is a migration of its own."""
    s = f'"{schema}"'
    out = [
        f"""CREATE TABLE {s}.outbox_relay (
            outbox text PRIMARY KEY,
            txid xid8 NOT NULL,
            seq bigint NOT NULL,
            published_at timestamptz)""",
        f"""CREATE TABLE {s}.outbox_stream (
            outbox text NOT NULL,
            stream text NOT NULL,
            last_seq bigint NOT NULL,
            first_published_at timestamptz NOT NULL,
            published_at timestamptz NOT NULL,
            PRIMARY KEY (outbox, stream))""",
    ]
    for table in tables:
        out += [
            # A constant default fills the old rows without rewriting the table; new rows get
            # their transaction's id.
            f"ALTER TABLE {s}.{table} ADD COLUMN txid xid8 NOT NULL DEFAULT '0'",
            f"ALTER TABLE {s}.{table} ALTER COLUMN txid SET DEFAULT pg_current_xact_id()",
            f"""INSERT INTO {s}.outbox_relay (outbox, txid, seq, published_at)
                SELECT '{table}', '0', coalesce(min(seq) FILTER (WHERE published_at IS NULL) - 1,
                                                 max(seq), 0), max(published_at)
                FROM {s}.{table}""",
            f"""INSERT INTO {s}.outbox_stream (outbox, stream, last_seq, first_published_at, published_at)
                SELECT '{table}', stream, max(stream_seq), min(published_at), max(published_at)
                FROM {s}.{table} WHERE published_at IS NOT NULL AND stream IS NOT NULL GROUP BY stream""",
            # Replicas of the version before run on during the roll (infra/README.md, Upgrade): a
            # new row's published_at is its creation time, so their relays leave it alone (it
            # never enters {table}_unpublished either) and their purge keeps it its 30 days.
            # The three columns go in a later migration, once no such replica is left.
            f"ALTER TABLE {s}.{table} ALTER COLUMN published_at SET DEFAULT now()",
            f"CREATE INDEX {table}_position ON {s}.{table} (txid, seq)",
        ]
    return out


def pending(schema: str, table: str = "outbox", alias: str = "") -> str:
    """A condition on `table`'s rows (named `alias` in the query, if it names them): not yet
    published. For counts (the backlog, tests, the benchmark)."""
    row = f"{alias}." if alias else ""
    return (f"({row}txid, {row}seq) > (SELECT r.txid, r.seq FROM \"{schema}\".outbox_relay r "
            f"WHERE r.outbox = '{table}')")


def count_pending(schema: str, table: str = "outbox", where: str = "TRUE") -> str:
    """SQL: how many rows of `table` (and `where`, on its rows as `o`) wait to be published."""
    return f'SELECT count(*) FROM "{schema}".{table} o WHERE {pending(schema, table, "o")} AND ({where})'


async def rewind(conn: AsyncConnection, schema: str, table: str = "outbox", stream: str | None = None) -> None:
    """Publish every row of `table` again, from the first (BusWatch, when the bus lost `stream`:
    what was recorded as acknowledged there is forgotten until the relay publishes it again)."""
    await conn.execute(text(f'UPDATE "{schema}".outbox_relay SET txid = \'0\', seq = 0 WHERE outbox = :o'),
                       {"o": table})
    if stream is not None:
        await conn.execute(text(f'DELETE FROM "{schema}".outbox_stream WHERE outbox = :o AND stream = :s'),
                           {"o": table, "s": stream})


def replay_sql(schema: str, where: str, table: str = "outbox") -> str:
    """For `cso replay` (asyncpg, `where` on the outbox's rows with $1): move the position back to
    just below the first row `where` holds, so that every row from there on is published again
    (a few others too: rows of later transactions that took a lower seq). Never moves it forward."""
    s = f'"{schema}"'
    return (f"WITH first AS (SELECT txid, seq FROM {s}.{table} WHERE {where} ORDER BY txid, seq LIMIT 1) "
            f"UPDATE {s}.outbox_relay r SET txid = first.txid, seq = first.seq - 1 FROM first "
            f"WHERE r.outbox = '{table}' AND (first.txid, first.seq - 1) < (r.txid, r.seq)")


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
    """Publishes the outbox's rows above its position, in (txid, seq) order, pipelined, each with
    `Nats-Msg-Id` = event id, then records the new position: one statement a batch.

    JetStream drops a second publish of the same id inside its duplicate window, and every consumer
    drops an event id it has already applied, so a crash between publish and recording the position
    costs a harmless re-publish, never a double count.
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
        s = f'"{self.schema}"'
        async with self.engine.begin() as conn:
            # One statement: the turn (one relay of the service's replicas at a time, the others
            # skip theirs: no row), the position, and the rows above it whose transactions are
            # below the snapshot's xmin: every one of those has ended, so no row can still
            # appear below the new position (the module's docstring).
            rows = (await conn.execute(text(
                f"SELECT r.txid::text AS mark_txid, r.seq AS mark_seq, o.txid::text AS txid, o.seq, "
                f"o.event_id, o.subject, o.data FROM {s}.outbox_relay r JOIN {s}.{self.table} o "
                "ON (o.txid, o.seq) > (r.txid, r.seq) AND o.txid < pg_snapshot_xmin(pg_current_snapshot()) "
                "WHERE r.outbox = :o AND pg_try_advisory_xact_lock(hashtext(:k)) "
                "ORDER BY o.txid, o.seq LIMIT :n"),
                {"o": self.table, "k": f"cso outbox relay {self.schema}.{self.table}", "n": self.batch})).all()
            if not rows:
                return 0
            acks = await asyncio.gather(*(
                self.js.publish(r.subject, bytes(r.data), headers={"Nats-Msg-Id": str(r.event_id)})
                for r in rows))
            if CRASH_AFTER_PUBLISH:
                # Fault injection (tests/faults): die between publish and commit, as a kill -9 would.
                os._exit(137)
            last: dict[str, int] = {}
            for ack in acks:
                last[ack.stream] = max(last.get(ack.stream, 0), ack.seq)
            # Compare and set: a rewind (BusWatch, cso replay) since the position was read stands.
            await conn.execute(text(
                f"WITH moved AS (UPDATE {s}.outbox_relay SET txid = CAST(CAST(:t2 AS text) AS xid8), seq = :s2, "
                "published_at = now() WHERE outbox = :o AND txid = CAST(CAST(:t AS text) AS xid8) AND seq = :s "
                "RETURNING outbox) "
                f"INSERT INTO {s}.outbox_stream AS k (outbox, stream, last_seq, first_published_at, published_at) "
                "SELECT moved.outbox, u.stream, u.last_seq, now(), now() FROM moved, "
                "unnest(CAST(:streams AS text[]), CAST(:seqs AS bigint[])) AS u(stream, last_seq) "
                "ON CONFLICT (outbox, stream) DO UPDATE SET last_seq = GREATEST(k.last_seq, excluded.last_seq), "
                "published_at = excluded.published_at"),
                {"o": self.table, "t": rows[0].mark_txid, "s": rows[0].mark_seq, "t2": rows[-1].txid,
                 "s2": rows[-1].seq, "streams": list(last), "seqs": list(last.values())})
        PUBLISHED.labels(self.service).inc(len(rows))
        return len(rows)

    async def backlog(self) -> int:
        async with self.engine.connect() as conn:
            n = (await conn.execute(text(
                f'SELECT count(*) FROM "{self.schema}".{self.table} o WHERE {pending(self.schema, self.table, "o")}'
            ))).scalar_one()
        BACKLOG.labels(self.service).set(n)
        return int(n)

    async def purge(self) -> int:
        """Drop the published rows made longer ago than the retention."""
        s = f'"{self.schema}"'
        async with self.engine.begin() as conn:
            result = await conn.execute(text(
                f"DELETE FROM {s}.{self.table} o USING {s}.outbox_relay r WHERE r.outbox = :o "
                "AND (o.txid, o.seq) <= (r.txid, r.seq) AND o.created_at < now() - CAST(:keep AS interval)"),
                {"o": self.table, "keep": self.retention})
        return int(result.rowcount)

    async def _ensure_position(self) -> None:
        """Its migration made the position's row; made here too, so that a missing row cannot stop
        the relay for good (it would find nothing above a position that is not there)."""
        async with self.engine.begin() as conn:
            await conn.execute(text(f'INSERT INTO "{self.schema}".outbox_relay (outbox, txid, seq) '
                                    "VALUES (:o, '0', 0) ON CONFLICT DO NOTHING"), {"o": self.table})

    async def run(self) -> None:
        last_purge = 0.0
        ensured = False
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not ensured:
                    await self._ensure_position()
                    ensured = True
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
