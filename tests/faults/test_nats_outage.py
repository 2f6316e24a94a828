"""Case 2: nats-server stopped and started again mid-run on the same JetStream file store, then
unreachable for a while (30 s at full size) and back. The outside publisher retries until acked;
every service reconnects, its consumers resubscribe, its outbox relay catches up; the verdict holds."""

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


async def test_nats_restarted_and_unreachable(cluster_of: ClusterFactory) -> None:
    workload = Workload.build()
    total = len(workload.intake)
    async with cluster_of() as cluster:
        async def inject(publisher: OutsidePublisher) -> None:
            await wait_progress(cluster, total, 0.08)
            await cluster.stop_nats()
            await cluster.start_nats()
            # Work goes on after the restart (registry takes intake again) before the long outage.
            await wait_progress(cluster, total, 0.2)
            # The outside system publishes on into the outage (not paced by registry meanwhile).
            lead, publisher.lead = publisher.lead, None
            await cluster.stop_nats()
            say(f"nats-server away for {OUTAGE_SECONDS:g}s; the outside publisher is {publisher.phase}")
            retries = publisher.retries
            await asyncio.sleep(OUTAGE_SECONDS)
            await cluster.start_nats()
            publisher.lead = lead
            say(f"the outside publisher retried {publisher.retries - retries} times meanwhile")

        report = await run_case(cluster, workload, inject)
    assert report.facts["registry_accepted"] == total
