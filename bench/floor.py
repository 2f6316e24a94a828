"""The physical floor of this machine: the same rows COPYed into PostgreSQL, the same number of
messages published raw to a scratch JetStream stream. cso's throughput is read against these."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from .publisher import Publisher

COPY_COLUMNS = ("id", "name", "community_code", "tier", "category", "status", "filed_on", "registered_on",
                "updated_by", "last_event_id")
SCRATCH_SCHEMA = "bench_floor"
SCRATCH_STREAM = "BENCH_FLOOR"


def _chunks(rows: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


async def copy_floor(dsn: str, rows: Iterable[tuple[Any, ...]], chunk: int = 50_000) -> dict[str, Any]:
    """COPY the organization rows into a table shaped (and indexed) like registry.organization.
    Only the COPY calls are timed; building the rows is not."""
    db = await asyncpg.connect(dsn)
    try:
        await db.execute(f"DROP SCHEMA IF EXISTS {SCRATCH_SCHEMA} CASCADE")
        await db.execute(f"CREATE SCHEMA {SCRATCH_SCHEMA}")
        await db.execute(f"CREATE TABLE {SCRATCH_SCHEMA}.organization "
                         "(LIKE registry.organization INCLUDING ALL)")
        total, seconds = 0, 0.0
        for part in _chunks(rows, chunk):
            records = [(uuid.UUID(r[0]), *r[1:-1], uuid.UUID(r[-1])) for r in part]
            started = time.perf_counter()
            await db.copy_records_to_table("organization", schema_name=SCRATCH_SCHEMA, records=records,
                                           columns=list(COPY_COLUMNS))
            seconds += time.perf_counter() - started
            total += len(records)
        return {"rows": total, "seconds": seconds, "rows_per_second": total / seconds if seconds else None,
                "table": "LIKE registry.organization INCLUDING ALL (primary key, unique credit code, "
                         "community index)"}
    finally:
        await db.execute(f"DROP SCHEMA IF EXISTS {SCRATCH_SCHEMA} CASCADE")
        await db.close()


async def jetstream_floor(js: JetStreamContext, count: int, pool: Sequence[tuple[str, bytes]],
                          window: int = 1000) -> dict[str, Any]:
    """Publish `count` messages (cycling through real event bodies) to a scratch file stream, with
    a distinct Nats-Msg-Id each, as fast as the server acks them; then delete the stream."""
    await js.add_stream(StreamConfig(name=SCRATCH_STREAM, subjects=["bench.floor.>"], storage=StorageType.FILE,
                                     duplicate_window=120))
    try:
        publisher = Publisher(js, window=window)
        started = time.monotonic()
        for i in range(count):
            subject, data = pool[i % len(pool)]
            await publisher.send(subject, data, f"floor-{i}")
        stats = await publisher.flush()
        seconds = time.monotonic() - started
        return {"messages": count, "seconds": seconds, "messages_per_second": count / seconds if seconds else None,
                "bytes": stats.bytes, "duplicates": stats.duplicates, "window": window}
    finally:
        await js.delete_stream(SCRATCH_STREAM)
