"""Full size only: every fault in one run. Two replicas of every service; while the workload runs,
seeded kills (-9) of random replicas (half of them mid-transaction), nats-server stopped and started,
PostgreSQL crashed and kept away, nats-server away again; the verdict holds at the end."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.faults.harness import (
    KILLS_PER_SERVICE,
    OUTAGE_SECONDS,
    SEED,
    SERVICE_NAMES,
    ClusterFactory,
    OutsidePublisher,
    Replica,
    Workload,
    kill_mid_batch,
    run_case,
    say,
    wait_progress,
)

pytestmark = [pytest.mark.integration, pytest.mark.full]


async def test_every_fault_in_one_run(cluster_of: ClusterFactory) -> None:
    rng = random.Random(SEED + 99)
    workload = Workload.build()
    total = len(workload.intake)
    kills = [(rng.uniform(0.05, 0.9), "kill", service) for service in SERVICE_NAMES for _ in range(KILLS_PER_SERVICE)]
    servers = [(0.3, "nats restart", ""), (0.55, "postgres crash", ""), (0.75, "nats outage", "")]
    schedule = sorted(kills + servers)
    async with cluster_of(replicas=2) as cluster:
        async def inject(publisher: OutsidePublisher) -> None:
            starting: dict[str, asyncio.Task[None]] = {}
            for share, what, service in schedule:
                await wait_progress(cluster, total, share)
                if what == "kill":
                    victim: Replica = rng.choice(cluster.of(service))
                    if victim.name in starting:
                        await starting.pop(victim.name)
                    if rng.random() < 0.5:
                        await kill_mid_batch(cluster, victim, rng, patience=10)
                    else:
                        await cluster.kill(victim, "at a random moment")
                    starting[victim.name] = await cluster.restart(victim, wait=False)
                    continue
                for task in starting.values():   # servers go away only with every service up
                    await task
                starting.clear()
                lead, publisher.lead = publisher.lead, None
                if what == "nats restart":
                    await cluster.stop_nats()
                    await cluster.start_nats()
                elif what == "postgres crash":
                    await cluster.stop_postgres(crash=True)
                    await asyncio.sleep(OUTAGE_SECONDS)
                    await cluster.start_postgres()
                else:
                    await cluster.stop_nats()
                    await asyncio.sleep(OUTAGE_SECONDS)
                    await cluster.start_nats()
                publisher.lead = lead
            for task in starting.values():
                await task

        report = await run_case(cluster, workload, inject)
    say(f"marathon: {len(report.facts['faults'])} faults over {report.facts['events']:,} events")
    assert report.facts["registry_accepted"] == total
