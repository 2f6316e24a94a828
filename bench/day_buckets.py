"""What day-exact coverage costs: the test workload (tests/scenario: 15,000 organizations with their
registrations, hubs, bases, party organizations, deregistrations and training over the demo
divisions, 2021-2025) applied through targets' projection (`apply_facts`, 500 events a batch, one
transaction each, as the consumers do), then `GET /coverage/5111?as_of=…` (a city, its counties,
its targets) on 50 random days. Printed: events per second, coverage rows, the read's mean time.

    .venv/bin/python -m bench.day_buckets [POSTGRES_ADMIN_URL]

Without a URL it starts an embedded PostgreSQL in a temporary directory (cso_local.servers). Each run
makes a database of its own and drops it.
"""

from __future__ import annotations

import asyncio
import csv
import random
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import asyncpg
from sqlalchemy import text

from contracts import make_event
from cso.database import make_engine, migrate
from cso.divisions import DEMO_DIVISIONS
from cso.divisions.importer import county_payloads
from cso_local import servers
from services.targets import app as targets
from services.targets import projection, views
from tests.support.scenario import workload

BATCH = 500


def _codes(name: str) -> list[str]:
    with open(DEMO_DIVISIONS / name, encoding="utf-8") as f:
        return [row["code"] for row in csv.DictReader(f)]


async def measure(admin_url: str) -> str:
    name = f"bench_days_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        await asyncio.to_thread(migrate, targets.MIGRATIONS, "targets", url)
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await projection.apply_facts(conn, [make_event(d, source="bench")
                                                    for d in county_payloads(DEMO_DIVISIONS)])
            facts = workload(7, _codes("villages.csv"), _codes("streets.csv"), organizations=15000, people=300)
            events = [make_event(f, source="bench", region=f.region_of() or "51") for f in facts]
            started = time.perf_counter()
            for i in range(0, len(events), BATCH):
                async with engine.begin() as conn:
                    await projection.apply_facts(conn, events[i:i + BATCH])
            applied = time.perf_counter() - started
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT count(*) FROM targets.coverage"))).scalar()
                rng = random.Random(1)
                days = [date(2021, 1, 1) + timedelta(days=rng.randrange(1800)) for _ in range(50)]
                started = time.perf_counter()
                for day in days:
                    await views.coverage(conn, "5111", day)
                read = (time.perf_counter() - started) / len(days)
        finally:
            await engine.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return (f"{len(events)} events applied in {applied:.1f} s ({len(events) / applied:.0f}/s), "
            f"{rows} coverage rows; GET /coverage/5111?as_of= {read * 1000:.1f} ms")


def main() -> None:
    if len(sys.argv) > 1:
        print(asyncio.run(measure(sys.argv[1])))
        return
    with tempfile.TemporaryDirectory(prefix="cso-bench-days-") as tmp:
        handle = servers.start_postgres(Path(tmp) / "postgres")
        try:
            print(asyncio.run(measure(handle.url)))
        finally:
            servers.stop(handle)


if __name__ == "__main__":
    main()
