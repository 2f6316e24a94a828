"""Case 1: `kill -9` of each service (registry, targets, training, notify), several times each, at
seeded random points of a run, half of them while the process has a write transaction open (a
batch claimed in its inbox, its messages unacked; or its outbox relay between publish and commit;
or notify's sender between send and record). Each is restarted, the run completes, the verdict holds."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.faults.harness import (
    KILLS_PER_SERVICE,
    SEED,
    SERVICE_NAMES,
    ClusterFactory,
    OutsidePublisher,
    Workload,
    kill_mid_batch,
    run_case,
    say,
    taken,
    until,
)

pytestmark = pytest.mark.integration


async def test_kill_9_each_service_repeatedly(cluster_of: ClusterFactory) -> None:
    rng = random.Random(SEED)
    workload = Workload.build()
    total = len(workload.intake)
    # When: at a share of the intake that the victim itself has taken in (its own inbox).
    schedule = sorted((rng.uniform(0.05, 0.85), service) for service in SERVICE_NAMES
                      for _ in range(KILLS_PER_SERVICE))
    hits: list[str] = []
    async with cluster_of() as cluster:
        async def inject(_: OutsidePublisher) -> None:
            starting: dict[str, asyncio.Task[None]] = {}
            for share, service in schedule:
                async def reached(service: str = service, share: float = share) -> bool:
                    return await taken(cluster, service) >= share * total

                await until(reached, 600, f"{service} reaching {share:.0%} of the intake", cluster.check_alive,
                            interval=0.2)
                victim = cluster.of(service)[0]
                if service in starting:
                    await starting.pop(service)
                if rng.random() < 0.5:
                    hits.append(f"{service}: " + await kill_mid_batch(cluster, victim, rng, patience=10))
                else:
                    await asyncio.sleep(rng.uniform(0, 1))
                    await cluster.kill(victim, "at a random moment")
                    hits.append(f"{service}: random")
                await asyncio.sleep(rng.uniform(0, 2))
                # Restarted at once; the next kill (of another service, usually) does not wait for it.
                starting[service] = await cluster.restart(victim, wait=False)
            for task in starting.values():
                await task

        report = await run_case(cluster, workload, inject)
    say(f"kills: {hits}")
    assert len(hits) == len(SERVICE_NAMES) * KILLS_PER_SERVICE
    assert report.facts["registry_accepted"] == total
