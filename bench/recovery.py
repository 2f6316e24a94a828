"""How long cso takes to recover when the bus forgets: 100,000 events that registry had published
and targets had applied are missing from JetStream (as after a lost store). Registry's bus watch
notices the gap, its relay publishes the outbox again, and targets reads every message once more,
dropping each as already applied. Printed: time to detect, to republish, to catch up.

    .venv/bin/python -m bench.recovery [--events 100000]

The state before the loss is written straight into the tables (COPY), so the run measures the
recovery itself, not the hours it would take to produce 100,000 events first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from datetime import date, datetime, timezone
from pathlib import Path

import asyncpg
from rich.console import Console
from rich.table import Table

from contracts import Topology, encode, make_event
from contracts import events as ev
from cso.outbox import count_pending
from cso_local import servers
from cso_local.stack import Stack, recorded

RESULTS = Path(__file__).parent / "results"


def rows(n: int, topology: Topology) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    outbox, inbox = [], []
    now = datetime.now(timezone.utc)
    stream = topology.stream("CSO_REGISTRY")
    for i in range(n):
        community = "510681001014"
        fact = ev.OrganizationFiled(organization_id=uuid.uuid4(), name=f"组织{i}", community_code=community,
                                    category="charity", filed_on=date(2024, 1, 1))
        envelope = make_event(fact, source="bench-recovery")
        subject = topology.event_subject(envelope.type, envelope.region)
        outbox.append((envelope.event_id, subject, envelope.type, str(fact.organization_id), encode(envelope),
                       now))
        inbox.append((envelope.event_id, stream, i + 1, now))
    return outbox, inbox


async def seed(dsn: str, n: int, topology: Topology) -> None:
    outbox, inbox = rows(n, topology)
    db = await asyncpg.connect(dsn)
    try:
        async with db.transaction():   # published as it is written: the relay never sees it pending
            await db.copy_records_to_table("outbox", schema_name="registry", records=outbox, columns=[
                "event_id", "subject", "type", "aggregate_id", "data", "created_at"])
            # Published before the loss: the relay's position past every row, the stream at n.
            await db.execute("UPDATE registry.outbox_relay SET seq = (SELECT max(seq) FROM registry.outbox) "
                             "WHERE outbox = 'outbox'")
            await db.execute("INSERT INTO registry.outbox_stream (outbox, stream, last_seq, first_published_at, "
                             "published_at) VALUES ('outbox', $1, $2, now(), now()) ON CONFLICT (outbox, stream) "
                             "DO UPDATE SET last_seq = excluded.last_seq", topology.stream("CSO_REGISTRY"), n)
        await db.copy_records_to_table("inbox", schema_name="targets", records=inbox,
                                       columns=["event_id", "stream", "stream_seq", "applied_at"])
        # What targets had applied: the stream's last sequence before the loss.
        await db.execute("INSERT INTO targets.consumer_position (stream, last_seq) VALUES ($1, $2) "
                         "ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq",
                         topology.stream("CSO_REGISTRY"), n)
    finally:
        await db.close()


async def wait_for(dsn: str, sql: str, done: object, limit: float = 900) -> float:
    db = await asyncpg.connect(dsn)
    try:
        start = time.monotonic()
        while await db.fetchval(sql) != done:
            if time.monotonic() - start > limit:
                raise TimeoutError(sql)
            await asyncio.sleep(0.1)
        return time.monotonic()
    finally:
        await db.close()


async def main(events: int) -> dict[str, object]:
    os.environ["CSO_BUS_CHECK_SECONDS"] = "1"
    with tempfile.TemporaryDirectory(prefix="cso-recovery-") as d:
        ports = [servers.free_port() for _ in range(4)]
        stack = Stack(Path(d), registry_port=ports[0], targets_port=ports[1], training_port=ports[2],
                      notify_port=ports[3], console_port=servers.free_port(), demo=False)
        await asyncio.to_thread(stack.start)
        try:
            dsn = recorded(stack.data_dir, "database")
            assert dsn
            topology = Topology()
            t0 = time.monotonic()
            await seed(dsn, events, topology)
            seeded = time.monotonic()
            detected = await wait_for(
                dsn, "SELECT count(*) > 0 FROM registry.outbox WHERE type = 'BusGapDetected'", True)
            republished = await wait_for(
                dsn, count_pending("registry"), 0)
            caught_up = await wait_for(
                dsn, f"SELECT last_seq >= {events} FROM targets.consumer_position "
                     f"WHERE stream = '{topology.stream('CSO_REGISTRY')}'", True)
            applied = await asyncpg.connect(dsn)
            try:
                inbox = await applied.fetchval("SELECT count(*) FROM targets.inbox")
            finally:
                await applied.close()
        finally:
            await asyncio.to_thread(stack.stop)
    assert inbox == events, f"targets applied {inbox - events} events twice"
    return {"events": events, "seed_seconds": round(seeded - t0, 2),
            "detect_seconds": round(detected - seeded, 2), "republish_seconds": round(republished - seeded, 2),
            "recovered_seconds": round(caught_up - seeded, 2),
            "events_per_second": round(events / (caught_up - seeded)), "counted_twice": inbox - events,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    result = asyncio.run(main(parser.parse_args().events))
    table = Table(title="recovery after the bus lost acknowledged messages")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, str(value))
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"recovery-{result['events']}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)
