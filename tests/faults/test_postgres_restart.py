"""Case 3: PostgreSQL stopped (fast shutdown) and started again mid-run on the same data dir, then
killed (SIGKILL of the postmaster and every backend, as a crash) and kept away for a while before it
starts again and recovers. Every service's pool reconnects; nothing applied in a transaction that
never committed counts; the verdict holds.

The consumers retry a failing message only a few times (CSO_MAX_DELIVER, 2 here: one retry 2 s
later) before they dead-letter it as poison. An outage longer than that must not be charged to the
messages: a consumer whose database is away holds its batch until the database answers again."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.harness import (
    OUTAGE_SECONDS,
    ClusterFactory,
    OutsidePublisher,
    Workload,
    run_case,
    say,
    wait_progress,
)

pytestmark = pytest.mark.integration


async def test_postgres_restarted_and_crashed(cluster_of: ClusterFactory) -> None:
    workload = Workload.build()
    total = len(workload.intake)
    async with cluster_of(env={"CSO_MAX_DELIVER": "2"}) as cluster:
        async def inject(publisher: OutsidePublisher) -> None:
            await wait_progress(cluster, total, 0.15)
            await cluster.stop_postgres()
            await asyncio.sleep(1)
            await cluster.start_postgres()
            await wait_progress(cluster, total, 0.4)
            lead, publisher.lead = publisher.lead, None   # registry's progress cannot be read meanwhile
            await cluster.stop_postgres(crash=True)
            say(f"postgres away for {OUTAGE_SECONDS:g}s")
            await asyncio.sleep(OUTAGE_SECONDS)
            await cluster.start_postgres()
            publisher.lead = lead

        report = await run_case(cluster, workload, inject)
    assert report.facts["registry_accepted"] == total
