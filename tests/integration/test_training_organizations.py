"""training's copy of registry's organizations, saved a batch at a time, on real PostgreSQL.

record.organization_facts folds a batch's facts per organization in stream order and saves the
fold set-based (one statement over arrays, which can touch a row once). Whatever the batches, the
rows must be what the facts say applied one after another: the last community named, the last end
(else 'active', and a creation sent again keeps the end on record), and the last event's id.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import Envelope, make_event
from contracts import events as ev
from cso.settings import Settings, async_url
from services.training.app import run_migrations
from services.training.record import organization_facts

pytestmark = pytest.mark.integration

COMMUNITIES = [f"510681001{n:03d}" for n in range(1, 6)]
Row = tuple[str, str, UUID]     # community_code, status, last_event_id


def filed(org: UUID, community: str) -> ev.OrganizationFiled:
    return ev.OrganizationFiled(organization_id=org, name="舞蹈队", community_code=community,
                                category="culture_sports", filed_on="2023-03-01")


def registered(org: UUID, community: str) -> ev.OrganizationRegistered:
    return ev.OrganizationRegistered(organization_id=org, name="舞蹈协会", community_code=community,
                                     social_credit_code="51510681MJ0000000A", legal_form="social_group",
                                     category="culture_sports", registered_on="2023-05-01")


def moved(org: UUID, community: str | None) -> ev.OrganizationUpdated:
    if community is None:   # an update that does not move it: nothing for training
        return ev.OrganizationUpdated(organization_id=org, effective_on="2023-04-01", rating="3A")
    return ev.OrganizationUpdated(organization_id=org, effective_on="2023-04-01", community_code=community)


def ended(org: UUID, kind: ev.EndKind) -> ev.OrganizationDeregistered:
    return ev.OrganizationDeregistered(organization_id=org, kind=kind, reason="停止活动", ended_on="2024-01-01")


def envelope(fact: ev.Payload) -> Envelope[Any]:
    return make_event(fact, source="city-register", region=fact.region_of() or COMMUNITIES[0])


def stream(seed: int, organizations: int = 12, facts: int = 160) -> list[Envelope[Any]]:
    """Facts about a few organizations, each created first (registry publishes its creation
    first), then moved, moved nowhere, ended, created again (a redelivery under a new event id, or
    an upgrade to registered), in any order after that."""
    rng = random.Random(seed)
    orgs = [uuid.uuid4() for _ in range(organizations)]
    out = [filed(o, rng.choice(COMMUNITIES)) for o in orgs]
    for _ in range(facts - organizations):
        o, community = rng.choice(orgs), rng.choice(COMMUNITIES)
        out.append(rng.choice([moved(o, community), moved(o, None), ended(o, rng.choice(list(ev.EndKind))),
                               filed(o, community), registered(o, community)]))
    # Creations first, the rest shuffled among themselves.
    rest = out[organizations:]
    rng.shuffle(rest)
    return [envelope(f) for f in out[:organizations] + rest]


def expected(envelopes: Sequence[Envelope[Any]]) -> dict[UUID, Row]:
    """The facts applied one after another, written out independently of record.py."""
    rows: dict[UUID, Row] = {}
    for e in envelopes:
        f = e.payload
        if isinstance(f, ev.OrganizationFiled | ev.OrganizationRegistered):
            status = rows[f.organization_id][1] if f.organization_id in rows else "active"
            rows[f.organization_id] = (f.community_code, status, e.event_id)
        elif isinstance(f, ev.OrganizationUpdated) and f.community_code is not None:
            rows[f.organization_id] = (f.community_code, rows[f.organization_id][1], e.event_id)
        elif isinstance(f, ev.OrganizationDeregistered):
            rows[f.organization_id] = (rows[f.organization_id][0], f.kind.value, e.event_id)
    return rows


async def saved(url: str) -> dict[UUID, Row]:
    db = await asyncpg.connect(url)
    try:
        return {r["id"]: (r["community_code"], r["status"], r["last_event_id"]) for r in await db.fetch(
            "SELECT id, community_code, status, last_event_id FROM training.organization")}
    finally:
        await db.close()


async def in_batches(url: str, envelopes: Sequence[Envelope[Any]], sizes: Sequence[int]) -> None:
    engine = create_async_engine(async_url(url))
    try:
        start = 0
        for size in sizes:
            async with engine.begin() as conn:
                await organization_facts(conn, envelopes[start:start + size])
            start += size
        assert start >= len(envelopes)
    finally:
        await engine.dispose()


async def test_several_facts_of_one_organization_in_one_batch(database_url: str) -> None:
    await asyncio.to_thread(run_migrations, Settings(database_url=database_url))
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    first = [envelope(f) for f in (
        filed(a, COMMUNITIES[0]), moved(a, COMMUNITIES[1]), moved(a, None), moved(a, COMMUNITIES[2]),
        filed(b, COMMUNITIES[0]), ended(b, ev.EndKind.REVOKED),
        filed(c, COMMUNITIES[3]))]
    # c ended, then its creation again (a redelivery under a new event id): it stays ended.
    second = [envelope(f) for f in (
        ended(c, ev.EndKind.DEREGISTERED), registered(c, COMMUNITIES[4]), moved(c, None))]
    await in_batches(database_url, first + second, [len(first), len(second)])
    assert await saved(database_url) == {
        a: (COMMUNITIES[2], "active", first[3].event_id),
        b: (COMMUNITIES[0], "revoked", first[5].event_id),
        c: (COMMUNITIES[4], "deregistered", second[1].event_id),
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_batches_save_what_the_facts_say_in_order(database_url: str, seed: int) -> None:
    await asyncio.to_thread(run_migrations, Settings(database_url=database_url))
    envelopes = stream(seed)
    rng = random.Random(seed)
    sizes = [rng.choice([1, 2, 7, 30, 61]) for _ in range(len(envelopes))]
    await in_batches(database_url, envelopes, sizes)
    assert await saved(database_url) == expected(envelopes)
    # … and the whole stream as one batch, onto what is there (every creation is a conflict).
    await in_batches(database_url, envelopes, [len(envelopes)])
    assert await saved(database_url) == expected(envelopes + envelopes)
