"""Case 4: facts that break a rule inside one batch. After the workload has run, registry is away
while an outside system publishes one batch of new filings with bad facts among them:

* two registrations of different new organizations with the same unified social credit code;
* a filing that reuses an organization id already on record, under a new event id;
* a hub established again under its id, with a new event id;
* a registration whose credit code a concurrent writer holds uncommitted: registry's check does not
  see it, its INSERT waits on the unique index, and when the writer commits, PostgreSQL refuses the
  whole batch's transaction (unique violation). The consumer then applies the batch's messages one
  by one: this one is refused, every other one applies.

Each bad fact is dead-lettered once with a reason naming its field; the rest of the batch applies;
the verdict holds."""

from __future__ import annotations

import random
import uuid
from datetime import date

import asyncpg
import pytest

from contracts import events as ev
from tests.faults.harness import (
    EVENTS,
    SEED,
    ClusterFactory,
    Expectation,
    Fact,
    OutsidePublisher,
    Workload,
    new_fact,
    run_case,
    say,
    scalar,
    settle,
    until,
    verdict,
)
from tests.support.scenario import credit_code

pytestmark = pytest.mark.integration


def registration(community: str, code: str, name: str) -> ev.OrganizationRegistered:
    return ev.OrganizationRegistered(organization_id=uuid.uuid4(), name=name, community_code=community,
                                     social_credit_code=code, legal_form="social_group", category="charity",
                                     registered_on=date(2024, 5, 6))


async def test_constraint_failures_inside_a_batch(cluster_of: ClusterFactory) -> None:
    rng = random.Random(SEED)
    # The batch is what matters here; a third of the run's size is enough around it.
    workload = Workload.build(max(500, EVENTS // 3))
    async with cluster_of() as cluster:
        publisher = OutsidePublisher(cluster)
        await run_case(cluster, workload, publisher=publisher)

        filings = [f for f in workload.intake if f.type == "OrganizationFiled"]
        hubs = [f for f in workload.intake if f.type == "HubEstablished"]
        communities = sorted({f.payload["community_code"] for f in filings})
        good = [new_fact(ev.OrganizationFiled(name=f"新备案志愿服务队{i}", community_code=rng.choice(communities),
                                              category="charity", filed_on=date(2025, 3, 1)))
                for i in range(40)]
        county = communities[0][:6]
        shared, held = credit_code(county, "1", 9_000_001), credit_code(county, "1", 9_000_002)
        first = new_fact(registration(communities[0], shared, "同码协会甲"))
        second = new_fact(registration(communities[1], shared, "同码协会乙"))
        again = rng.choice(filings)
        refile = new_fact(ev.OrganizationFiled(organization_id=uuid.UUID(again.payload["organization_id"]),
                                               name="重复备案", community_code=again.payload["community_code"],
                                               category="charity", filed_on=date(2025, 3, 1)))
        hub = rng.choice(hubs)
        rehub = new_fact(ev.HubEstablished(hub_id=uuid.UUID(hub.payload["hub_id"]),
                                           organization_id=uuid.UUID(hub.payload["organization_id"]),
                                           region_code=hub.payload["region_code"], established_on=date(2025, 3, 1)))
        contested = new_fact(registration(communities[2], held, "争码协会"))
        batch: list[Fact] = good[:20] + [first, second, refile, rehub, contested] + good[20:]
        rejected = {second.event_id: "social_credit_code", refile.event_id: "organization_id",
                    rehub.event_id: "hub_id", contested.event_id: "social_credit_code"}

        # registry away: the batch waits in the stream, to be pulled at once (500 at a time).
        registry = cluster.of("registry")[0]
        await cluster.kill(registry, "to queue one batch")
        await publisher.publish(batch)
        workload.facts += batch

        # A concurrent writer (another replica's command, here a plain SQL session) holds `held`.
        writer = await asyncpg.connect(cluster.dsn)
        intruder = uuid.uuid4()
        try:
            tx = writer.transaction()
            await tx.start()
            await writer.execute(
                "INSERT INTO registry.organization (id, name, community_code, tier, category, status, "
                "social_credit_code, registered_on, updated_by, last_event_id) VALUES ($1, '并发写入', $2, "
                "'registered', 'charity', 'active', $3, '2024-01-01', 'faults-writer', $1)",
                intruder, communities[3], held)
            await cluster.restart(registry)

            async def blocked() -> bool:
                return bool(await scalar(cluster.dsn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type "
                                                      "= 'Lock' AND query LIKE '%registry.organization%'"))

            await until(blocked, 120, "registry's batch waiting on the held credit code", cluster.check_alive)
            await tx.commit()
            say("the concurrent writer committed: registry's batch transaction hits the unique index")
            await settle(cluster, publisher)
        finally:
            # The writer's row was never a fact: it goes again, and the recount is over facts only.
            await writer.execute("DELETE FROM registry.organization WHERE id = $1", intruder)
            await writer.close()

        log = (cluster.root / "postgres" / "postgres.log").read_text(errors="replace")
        assert 'violates unique constraint "organization_social_credit_code_key"' in log
        report = await verdict(cluster, workload, publisher, Expectation(rejected=rejected))
    assert report.facts["registry_refused"] == len(rejected)
