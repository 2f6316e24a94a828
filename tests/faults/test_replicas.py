"""Case 5: two replicas of every service sharing each durable consumer; one replica of each service
is killed (SIGKILL) while it holds a batch: a write transaction open and its messages unacked. The
other replica takes the whole load, JetStream redelivers the dead one's messages to it after the
ack wait, the dead one comes back later; the verdict holds."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.faults.harness import (
    DURABLES,
    SEED,
    SERVICE_NAMES,
    ClusterFactory,
    OutsidePublisher,
    Replica,
    Workload,
    kill_mid_batch,
    run_case,
    say,
    taken,
    until,
)

pytestmark = pytest.mark.integration


async def test_two_replicas_one_killed_mid_batch(cluster_of: ClusterFactory) -> None:
    rng = random.Random(SEED + 5)
    workload = Workload.build()
    total = len(workload.intake)
    hits: dict[str, str] = {}
    async with cluster_of(replicas=2) as cluster:
        async def inject(_: OutsidePublisher) -> None:
            victims: list[Replica] = []
            for service in SERVICE_NAMES:
                share = rng.uniform(0.1, 0.5)

                async def reached(service: str = service, share: float = share) -> bool:
                    return await taken(cluster, service) >= share * total

                await until(reached, 600, f"{service} reaching {share:.0%}", cluster.check_alive, interval=0.2)
                victim = rng.choice(cluster.of(service))
                hits[victim.name] = await kill_mid_batch(cluster, victim, rng, patience=30, unacked=True)
                # Its unacked messages stay with JetStream until the ack wait runs out.
                unacked = [await cluster.consumer_state(stream, durable) for stream, durable in DURABLES[service]]
                say(f"{victim.name} died; (pending, unacked) per durable now: {unacked}")
                victims.append(victim)
            # The survivors carry on alone for a while, then the dead come back.
            await asyncio.sleep(5)
            await asyncio.gather(*[await cluster.restart(victim, wait=False) for victim in victims])

        await run_case(cluster, workload, inject)
    say(f"killed: {hits}")
    assert len(hits) == len(SERVICE_NAMES)
    # Registry and targets always have a batch in hand during the run: those kills are mid-batch.
    assert hits[next(n for n in hits if n.startswith("registry"))] == "mid-transaction"
