"""What the outbox and the inbox cost PostgreSQL per event (issue 23), each form beside a COPY floor
of the same rows measured in the same run.

    .venv/bin/python -m bench.dedup [POSTGRES_ADMIN_URL] [--events 100000] [--prefill 200000]

Without a URL it starts an embedded PostgreSQL in a temporary directory (cso_local.servers); each run
makes a database of its own and drops it. Batches of 500, one transaction each, as the consumers
and the relay run them; no NATS (the relay publishes to a stand-in that acknowledges at once), so
what is measured is the database's share.

The outbox, written and published:
- `marked`: the form before issue 23: the rows inserted, then the relay selects them
  (`published_at IS NULL … FOR UPDATE SKIP LOCKED`) and updates each with its stream sequence.
- `written once`: the rows inserted; the relay (cso.outbox.Relay) selects those above its position
  and records the new position, one statement.

The inbox, claimed (5% of each batch are ids claimed before: redeliveries, which must be found):
- `row per event`: cso's inbox (event_id PRIMARY KEY), one INSERT … unnest … ON CONFLICT DO
  NOTHING RETURNING a batch (cso/consumer.py `_claim`).
- `row per batch`: the batch's ids in a `uuid[]` with a GIN index. Exact under concurrent
  replicas only behind a lock per event id (`pg_advisory_xact_lock` over the ids' 64-bit keys,
  in order), taken in a statement of its own before the lookup (a statement sees what committed
  before it started: a lookup in the statement that waited for the lock would miss the batch it
  waited for); then the lookup (`event_ids @> ARRAY[id]` for each id, GIN without a pending list)
  and one INSERT of the fresh ids. Also measured without the locks, which is not exact (two
  replicas could both find an id fresh), to show what the locks cost.

Printed per form: events/s, WAL bytes per event, and events/s ÷ the COPY floor of its kind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from cso import outbox
from cso.database import make_engine
from cso_local import servers
from tests.support.jetstream import AckingJetStream

BATCH = 500
STREAM = "CSO_REGISTRY"
PAYLOAD = 600   # bytes: about a registry event's JSON


@dataclass
class Result:
    form: str
    events: int
    seconds: float
    wal_bytes: int

    @property
    def per_second(self) -> float:
        return self.events / self.seconds


async def wal(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


async def timed(db: asyncpg.Connection, form: str, events: int,
                run: Callable[[], Awaitable[None]]) -> Result:
    await db.execute("CHECKPOINT")   # every form starts without full-page images owed
    before = await wal(db)
    started = time.perf_counter()
    await run()
    seconds = time.perf_counter() - started
    return Result(form, events, seconds, await wal(db) - before)


def batches(ids: Sequence[uuid.UUID]) -> list[list[uuid.UUID]]:
    return [list(ids[i:i + BATCH]) for i in range(0, len(ids), BATCH)]


def outbox_rows(n: int) -> list[tuple[Any, ...]]:
    data = os.urandom(PAYLOAD)
    return [(uuid.uuid4(), "cso.registry.organization_filed.51.5111.511102", "OrganizationFiled",
             str(uuid.uuid4()), data) for _ in range(n)]


INSERT_OUTBOX = (
    'INSERT INTO "{s}".outbox (event_id, subject, type, aggregate_id, data) '
    "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[])")


class MarkedRelay(outbox.Relay):
    """The relay before issue 23 (cso/outbox.py at 8788e53): the rows selected, then each updated."""

    async def publish_pending(self) -> int:
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
            await conn.execute(text(
                f'UPDATE "{self.schema}".{self.table} o SET published_at = now(), stream = u.stream, '
                "stream_seq = u.stream_seq FROM unnest(CAST(:seq AS bigint[]), CAST(:stream AS text[]), "
                "CAST(:stream_seq AS bigint[])) AS u(seq, stream, stream_seq) WHERE o.seq = u.seq"),
                {"seq": [r.seq for r in rows], "stream": [a.stream for a in acks],
                 "stream_seq": [a.seq for a in acks]})
        return len(rows)


async def outbox_written(db: asyncpg.Connection, url: str, rows: list[tuple[Any, ...]], schema: str,
                         relay: type[outbox.Relay]) -> None:
    """Each batch written (its own transaction, as a consumer's), then published by `relay`."""
    engine = make_engine(url)
    publisher = relay(engine, AckingJetStream(STREAM), schema, "bench", batch=BATCH)  # type: ignore[arg-type]
    try:
        for i in range(0, len(rows), BATCH):
            await db.execute(INSERT_OUTBOX.format(s=schema), *map(list, zip(*rows[i:i + BATCH], strict=True)))
            for _ in range(10_000):   # another transaction may hold xmin back a moment
                if await publisher.publish_pending():
                    break
                await asyncio.sleep(0.001)
    finally:
        await engine.dispose()


def with_redeliveries(ids: list[uuid.UUID], claimed: list[uuid.UUID], rng: random.Random) -> list[list[uuid.UUID]]:
    """Batches of `ids` in which 5% are ids claimed earlier."""
    out = []
    for batch in batches(ids):
        again = rng.sample(claimed, BATCH // 20)
        out.append(batch[:BATCH - len(again)] + again)
        claimed.extend(batch[:BATCH - len(again)])
    return out


async def inbox_per_event(db: asyncpg.Connection, work: list[list[uuid.UUID]]) -> int:
    duplicates = 0
    for n, batch in enumerate(work):
        async with db.transaction():
            fresh = await db.fetch(
                'INSERT INTO "perevent".inbox (event_id, stream, stream_seq) SELECT * FROM '
                "unnest($1::uuid[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING RETURNING event_id",
                batch, [STREAM] * len(batch), list(range(n * BATCH, n * BATCH + len(batch))))
        duplicates += len(batch) - len(fresh)
    return duplicates


def lock_key(event_id: uuid.UUID) -> int:
    return int.from_bytes(event_id.bytes[:8], "big", signed=True)


async def inbox_per_batch(db: asyncpg.Connection, work: list[list[uuid.UUID]], schema: str, locks: bool) -> int:
    duplicates = 0
    for n, batch in enumerate(work):
        async with db.transaction():
            if locks:
                await db.execute("SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest($1::bigint[]) AS k "
                                 "ORDER BY 1) keys", sorted({lock_key(i) for i in batch}))
            taken = await db.fetch(
                # Each id probes the GIN index (one && over the whole batch would unnest every
                # batch it matches and compare it with all 500 ids: 10x slower still).
                "WITH taken AS (SELECT u.e FROM unnest($1::uuid[]) u(e) WHERE EXISTS "
                f'(SELECT FROM "{schema}".inbox b WHERE b.event_ids @> ARRAY[u.e])), '
                f'kept AS (INSERT INTO "{schema}".inbox (stream, event_ids, seqs) '
                "SELECT $2, array_agg(u.e ORDER BY u.n), array_agg(u.q ORDER BY u.n) "
                "FROM unnest($1::uuid[], $3::bigint[]) WITH ORDINALITY AS u(e, q, n) "
                "WHERE u.e NOT IN (SELECT e FROM taken)) "
                "SELECT e FROM taken",
                batch, STREAM, list(range(n * BATCH, n * BATCH + len(batch))))
        duplicates += len(taken)
    return duplicates


async def copy_floor(db: asyncpg.Connection, work: list[list[uuid.UUID]]) -> None:
    for n, batch in enumerate(work):
        await db.copy_records_to_table("inbox", schema_name="floor", columns=["event_id", "stream", "stream_seq"],
                                       records=[(e, STREAM, n * BATCH + k) for k, e in enumerate(batch)
                                                if k < BATCH - BATCH // 20])


async def measure(admin_url: str, events: int, prefill: int) -> list[Result]:
    name = f"bench_dedup_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    db = await asyncpg.connect(url)
    try:
        for schema in ("marked", "once", "perevent", "perbatch", "unlocked", "floor"):
            await db.execute(f'CREATE SCHEMA "{schema}"')
        for statement in (outbox.ddl("marked") + outbox.ddl("once") + outbox.written_once_ddl("once")
                          + outbox.seq_position_ddl("once")):
            await db.execute(statement)
        for schema in ("perevent", "floor"):
            await db.execute(f'CREATE TABLE "{schema}".inbox (event_id uuid PRIMARY KEY, stream text NOT NULL, '
                             "stream_seq bigint NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        for schema in ("perbatch", "unlocked"):
            await db.execute(f'CREATE TABLE "{schema}".inbox (id bigserial PRIMARY KEY, stream text NOT NULL, '
                             "event_ids uuid[] NOT NULL, seqs bigint[] NOT NULL, "
                             "applied_at timestamptz NOT NULL DEFAULT now())")
            # Without the pending list, which every probe below would read through.
            await db.execute(f'CREATE INDEX inbox_event_ids ON "{schema}".inbox USING gin (event_ids) '
                             "WITH (fastupdate = off)")

        rng = random.Random(23)
        old = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(prefill)]
        # A service's inbox is never empty: the same ids before, in each form's shape.
        for schema in ("perevent", "floor"):
            await db.copy_records_to_table("inbox", schema_name=schema, columns=["event_id", "stream", "stream_seq"],
                                           records=[(e, STREAM, k) for k, e in enumerate(old)])
        for schema in ("perbatch", "unlocked"):
            await db.executemany(f'INSERT INTO "{schema}".inbox (stream, event_ids, seqs) VALUES ($1, $2, $3)',
                                 [(STREAM, b, list(range(len(b)))) for b in batches(old)])
        await db.execute("VACUUM ANALYZE")
        new = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(events)]
        work = with_redeliveries(new, list(old), rng)
        fresh = sum(len(b) for b in work) - len(work) * (BATCH // 20)

        results = [await timed(db, "inbox: COPY floor (fresh rows)", fresh, lambda: copy_floor(db, work))]
        found: dict[str, int] = {}

        async def per_event() -> None:
            found["row per event"] = await inbox_per_event(db, work)

        async def per_batch() -> None:
            found["row per batch"] = await inbox_per_batch(db, work, "perbatch", locks=True)

        async def unlocked() -> None:
            found["unlocked"] = await inbox_per_batch(db, work, "unlocked", locks=False)

        results.append(await timed(db, "inbox: row per event", fresh, per_event))
        results.append(await timed(db, "inbox: row per batch (uuid[], GIN, locks)", fresh, per_batch))
        results.append(await timed(db, "inbox: the same without the locks (not exact)", fresh, unlocked))
        expected = len(work) * (BATCH // 20)
        assert found == dict.fromkeys(("row per event", "row per batch", "unlocked"), expected), (found, expected)

        rows = outbox_rows(events)
        results.append(await timed(db, "outbox: COPY floor", events, lambda: db.copy_records_to_table(
            "outbox", schema_name="marked", columns=["event_id", "subject", "type", "aggregate_id", "data"],
            records=[(uuid.uuid4(), *r[1:]) for r in rows])))
        await db.execute('TRUNCATE "marked".outbox')
        results.append(await timed(db, "outbox: marked (insert, then update each)", events,
                                   lambda: outbox_written(db, url, rows, "marked", MarkedRelay)))
        results.append(await timed(db, "outbox: written once (insert, a position a batch)", events,
                                   lambda: outbox_written(db, url, rows, "once", outbox.Relay)))
        assert await db.fetchval('SELECT count(*) FROM "marked".outbox WHERE published_at IS NULL') == 0
        assert await db.fetchval(outbox.count_pending("once")) == 0
        return results
    finally:
        await db.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def show(results: list[Result]) -> None:
    table = Table(title=f"per event, batches of {BATCH}")
    for column in ("form", "events/s", "WAL bytes / event", "÷ its COPY floor"):
        table.add_column(column, justify="left" if column == "form" else "right")
    floor = 0.0
    for r in results:
        if "COPY floor" in r.form:
            floor = r.per_second
        table.add_row(r.form, f"{r.per_second:,.0f}", f"{r.wal_bytes / r.events:,.0f}",
                      f"{r.per_second / floor:.2f}")
    Console(width=120).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dedup")
    parser.add_argument("url", nargs="?", help="a PostgreSQL admin URL; default: an embedded one")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--prefill", type=int, default=200_000)
    args = parser.parse_args()
    if args.url:
        show(asyncio.run(measure(args.url, args.events, args.prefill)))
        return
    with tempfile.TemporaryDirectory(prefix="cso-dedup-") as tmp:
        handle = servers.start_postgres(Path(tmp) / "postgres", settings=servers.postgres_sizing())
        try:
            show(asyncio.run(measure(handle.url, args.events, args.prefill)))
        finally:
            servers.stop(handle)


if __name__ == "__main__":
    main()
