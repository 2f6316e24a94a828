"""A batch recorded set-based equals the same facts recorded one at a time, on real PostgreSQL.

registry decides a pulled batch against one ledger loaded up front and saves it in a few statements.
Loading and saving must not change what is decided: the same noisy stream of facts (duplicates
under new event ids, follow-ups before what they follow, a credit code used twice, a wrong region)
recorded as batches and recorded fact by fact must give the same verdicts and the same rows.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import Envelope, Topology, make_event
from contracts import events as ev
from cso.settings import Settings, async_url
from services.registry import store
from services.registry.app import run_migrations
from services.registry.domain import NotYet, Rejected
from services.registry.record import Recorded, record, record_batch
from tests.support import GUANGHAN, fresh_database
from tests.support.scenario import regions_of, workload

pytestmark = pytest.mark.integration

TOPOLOGY = Topology()
TABLES = {
    "organization": "SELECT id, name, community_code, tier, category, status, legal_form, social_credit_code, "
                    "filing_number, filed_on, registered_on, ended_on, end_reason, brand, brand_projects, "
                    "hub_demonstration, rating, updated_by, last_event_id FROM registry.organization ORDER BY id",
    "hub": "SELECT id, organization_id, region_code, started_on, ended_on, updated_by FROM registry.hub ORDER BY id",
    "incubation_base": "SELECT id, name, region_code, started_on, ended_on FROM registry.incubation_base ORDER BY id",
    "base_township": "SELECT base_id, township_code FROM registry.base_township ORDER BY 1, 2",
    "party_organization": "SELECT id, kind, members, region_code, started_on, ended_on "
                          "FROM registry.party_organization ORDER BY id",
    "party_coverage": "SELECT party_organization_id, organization_id FROM registry.party_coverage ORDER BY 1, 2",
    "outbox": "SELECT event_id, subject, type, aggregate_id, data FROM registry.outbox ORDER BY event_id",
    "audit": "SELECT event_id, record_kind, record_id, type, actor, source, region, changes "
             "FROM registry.audit ORDER BY event_id",
}


def noisy_stream(seed: int) -> list[Envelope[Any]]:
    """The scenario's registry facts as an outside system would send them, with the mistakes
    outside systems make."""
    rng = random.Random(seed)
    communities = [c.code for c in GUANGHAN.communities]
    townships = [t.code for t in GUANGHAN.townships]
    facts = [f for f in workload(seed, communities, townships, organizations=240, people=0)
             if f.CONTEXT == "registry"]
    regions = regions_of(facts)

    def envelope(fact: ev.Payload, region: str | None = None) -> Envelope[Any]:
        ident = next(str(getattr(fact, k)) for k in ("organization_id", "hub_id", "base_id", "party_organization_id")
                     if hasattr(fact, k))
        return make_event(fact, source="city-register", region=region or fact.region_of() or regions[ident])

    stream = [envelope(f) for f in facts]
    # The same fact sent again under a new event id: refused as already on record.
    stream += [envelope(f) for f in rng.sample(facts, 20)]
    # Follow-ups moved before the facts they follow: NotYet.
    for _ in range(30):
        i, j = sorted(rng.sample(range(len(stream)), 2))
        stream.insert(i, stream.pop(j))
    # A credit code that another organization already holds (a registration that depends on
    # nothing, so its holder is on record by the end).
    registered = next(f for f in facts if isinstance(f, ev.OrganizationRegistered) and f.name.startswith("中心"))
    stream.append(envelope(registered.model_copy(update={"organization_id": uuid.uuid4()})))
    # A fact naming the wrong region, about an organization that stays active.
    ended = {f.organization_id for f in facts if isinstance(f, ev.OrganizationDeregistered)}
    active = next(f for f in facts if isinstance(f, ev.OrganizationFiled) and f.organization_id not in ended)
    stream.append(envelope(ev.OrganizationUpdated(organization_id=active.organization_id,
                                                  effective_on=active.filed_on, rating="3A"), region="510681001"))
    return stream


@pytest.fixture
async def two_registries(postgres_url: str) -> AsyncIterator[tuple[str, str]]:
    async with fresh_database(postgres_url) as one, fresh_database(postgres_url) as other:
        for url in (one, other):
            await asyncio.to_thread(run_migrations, Settings(database_url=url))
            engine = create_async_engine(async_url(url))
            async with engine.begin() as conn:
                await store.upsert_divisions(conn, GUANGHAN)
            await engine.dispose()
        yield one, other


def verdict(result: Recorded | Rejected) -> tuple[str, ...]:
    if isinstance(result, Rejected):
        return (type(result).__name__, result.field)
    return ("recorded", result.aggregate_id, result.region)


async def in_batches(url: str, stream: Sequence[Envelope[Any]], size: int) -> list[tuple[str, ...]]:
    engine = create_async_engine(async_url(url))
    verdicts = []
    for start in range(0, len(stream), size):
        async with engine.begin() as conn:
            results = await record_batch(conn, stream[start:start + size], TOPOLOGY, actor="batch")
        verdicts += [verdict(r) for r in results]
    await engine.dispose()
    return verdicts


async def one_by_one(url: str, stream: Sequence[Envelope[Any]]) -> list[tuple[str, ...]]:
    engine = create_async_engine(async_url(url))
    verdicts = []
    for envelope in stream:
        try:
            async with engine.begin() as conn:
                verdicts.append(verdict(await record(conn, envelope, TOPOLOGY, actor="batch")))
        except Rejected as e:
            verdicts.append(verdict(e))
    await engine.dispose()
    return verdicts


async def rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    db = await asyncpg.connect(url)
    try:
        return {name: [tuple(r) for r in await db.fetch(sql)] for name, sql in TABLES.items()}
    finally:
        await db.close()


@pytest.mark.parametrize("seed", [1, 2])
async def test_batches_decide_and_save_what_one_by_one_does(two_registries: tuple[str, str], seed: int) -> None:
    batched_db, single_db = two_registries
    stream = noisy_stream(seed)
    batched = await in_batches(batched_db, stream, size=97)
    single = await one_by_one(single_db, stream)

    assert batched == single
    kinds = {v[0] for v in batched}
    # The stream really exercises every path: recorded, refused, and retried later.
    assert {"recorded", "Rejected", "NotYet"} <= kinds, kinds
    assert ("Rejected", "social_credit_code") in batched and ("Rejected", "region") in batched
    a, b = await rows(batched_db), await rows(single_db)
    for table in TABLES:
        assert a[table] == b[table], table
    assert len(a["outbox"]) == sum(v[0] == "recorded" for v in batched) == len(a["audit"])


async def test_a_rejected_fact_in_a_batch_leaves_nothing(two_registries: tuple[str, str]) -> None:
    url, _ = two_registries
    community = GUANGHAN.communities[0].code
    filed = ev.OrganizationFiled(organization_id=uuid.uuid4(), name="舞蹈队", community_code=community,
                                 category="culture_sports", filed_on="2023-03-01")
    again = filed.model_copy(update={"name": "另一个舞蹈队"})
    moved = ev.OrganizationUpdated(organization_id=filed.organization_id, effective_on="2023-04-01",
                                   community_code="510681999999")
    stream = [make_event(f, source="city", region=f.region_of() or community) for f in (filed, again, moved)]
    engine = create_async_engine(async_url(url))
    async with engine.begin() as conn:
        results = await record_batch(conn, stream, TOPOLOGY)
    await engine.dispose()
    assert verdict(results[0])[0] == "recorded"
    assert verdict(results[1]) == ("Rejected", "organization_id")
    assert verdict(results[2]) == ("Rejected", "community_code")
    saved = await rows(url)
    assert [r[1] for r in saved["organization"]] == ["舞蹈队"]
    assert [r[0] for r in saved["outbox"]] == [stream[0].event_id]
    assert not isinstance(results[2], NotYet)


async def test_another_county_cannot_take_an_organization(two_registries: tuple[str, str]) -> None:
    """A move or an upgrade names the new community; the organization's current county must agree:
    a Leshan system cannot move Guanghan's organization into Leshan, nor can a Leshan-scoped caller."""
    from tests.support.events import SHIZHONG

    url, _ = two_registries
    engine = create_async_engine(async_url(url))
    async with engine.begin() as conn:
        await store.upsert_divisions(conn, SHIZHONG)
    guanghan, leshan = GUANGHAN.communities[0].code, SHIZHONG.communities[0].code
    filed = ev.OrganizationFiled(organization_id=uuid.uuid4(), name="舞蹈队", community_code=guanghan,
                                 category="culture_sports", filed_on="2023-03-01")
    moved = ev.OrganizationUpdated(organization_id=filed.organization_id, effective_on="2023-04-01",
                                   community_code=leshan)
    async with engine.begin() as conn:
        await record(conn, make_event(filed, source="guanghan-register"), TOPOLOGY)
    async with engine.begin() as conn:
        taken = await record_batch(conn, [make_event(moved, source="leshan-register")], TOPOLOGY)
    assert verdict(taken[0]) == ("Rejected", "region")
    async with engine.begin() as conn:
        scoped = await record_batch(conn, [make_event(moved, source="http-api")], TOPOLOGY,
                                    check_region=False, scope="5111")
    assert verdict(scoped[0]) == ("OutOfScope", "region")
    # A national (unscoped) command may move it.
    async with engine.begin() as conn:
        done = await record_batch(conn, [make_event(moved, source="http-api")], TOPOLOGY, check_region=False)
    await engine.dispose()
    assert verdict(done[0]) == ("recorded", str(filed.organization_id), leshan)


async def test_a_batch_saves_its_hubs_bases_parties_and_facilities(two_registries: tuple[str, str]) -> None:
    """What a batch creates and ends in hubs, bases (with their townships), party organizations
    (with the organizations they cover) and facilities is on record as the facts say: several of
    each in one batch, one created and ended in the same batch, others ended in the next."""
    url, _ = two_registries
    community, township = GUANGHAN.communities[0].code, GUANGHAN.townships[0].code
    townships = sorted({c.code[:9] for c in GUANGHAN.communities if c.code.startswith(township[:6])})[:3]
    orgs = [ev.OrganizationFiled(organization_id=uuid.uuid4(), name=f"舞蹈队{i}", community_code=community,
                                 category="culture_sports", filed_on="2023-03-01") for i in range(4)]
    ids = [o.organization_id for o in orgs]
    hubs = [ev.HubEstablished(organization_id=ids[i], region_code=township, name=f"枢纽{i}",
                              leader_person_id=uuid.uuid4() if i else None, established_on="2023-04-01")
            for i in range(3)]
    bases = [ev.IncubationBaseOpened(name="孵化基地", region_code=township[:6], covered_townships=townships,
                                     opened_on="2023-04-01"),
             ev.IncubationBaseOpened(name="孵化点", region_code=community, opened_on="2023-04-02")]
    parties = [ev.PartyOrganizationFormed(kind=ev.PartyKind.JOINT_BRANCH, organization_ids=ids[:3], members=7,
                                          formed_on="2023-05-01"),
               ev.PartyOrganizationFormed(kind=ev.PartyKind.INDEPENDENT_BRANCH, organization_ids=[ids[3]],
                                          members=3, formed_on="2023-05-02"),
               ev.PartyOrganizationFormed(kind=ev.PartyKind.LIAISON, organization_ids=ids[1:], formed_on="2023-05-03")]
    facilities = [ev.FacilityOpened(kind=ev.FacilityKind.SOCIAL_WORK_STATION, name="社工站", region_code=township,
                                    opened_on="2023-06-01"),
                  ev.FacilityOpened(kind=ev.FacilityKind.SOCIAL_WORK_ROOM, name="社工室", region_code=community,
                                    opened_on="2023-06-02")]
    first = [*orgs, *hubs, *bases, *parties, *facilities,
             ev.HubDissolved(hub_id=hubs[2].hub_id, dissolved_on="2023-07-01")]
    second = [ev.HubDissolved(hub_id=hubs[0].hub_id, dissolved_on="2023-08-01"),
              ev.IncubationBaseClosed(base_id=bases[0].base_id, closed_on="2023-08-02"),
              ev.PartyOrganizationDissolved(party_organization_id=parties[0].party_organization_id,
                                            dissolved_on="2023-08-03"),
              ev.PartyOrganizationDissolved(party_organization_id=parties[2].party_organization_id,
                                            dissolved_on="2023-08-04"),
              ev.FacilityClosed(facility_id=facilities[1].facility_id, closed_on="2023-08-05")]
    # The region of a record a fact names only by id: a party organization is its county's.
    region = {"PartyOrganizationFormed": community[:6], "PartyOrganizationDissolved": community[:6],
              "HubDissolved": township, "IncubationBaseClosed": township[:6], "FacilityClosed": community}
    engine = create_async_engine(async_url(url))
    for batch in (first, second):
        async with engine.begin() as conn:
            results = await record_batch(conn, [make_event(f, source="city", region=f.region_of() or region[f.TYPE])
                                                for f in batch], TOPOLOGY)
        refused = [(f.TYPE, r) for f, r in zip(batch, results, strict=True) if isinstance(r, Rejected)]
        assert not refused, refused
    await engine.dispose()
    db = await asyncpg.connect(url)
    try:
        hub_rows = {tuple(r) for r in await db.fetch(
            "SELECT id, organization_id, region_code, name, leader_person_id, started_on::text, ended_on::text, "
            "updated_by FROM registry.hub")}
        base_rows = {tuple(r) for r in await db.fetch(
            "SELECT id, name, region_code, started_on::text, ended_on::text FROM registry.incubation_base")}
        covered = {tuple(r) for r in await db.fetch("SELECT base_id, township_code FROM registry.base_township")}
        party_rows = {tuple(r) for r in await db.fetch(
            "SELECT id, kind, members, started_on::text, ended_on::text FROM registry.party_organization")}
        coverage = {tuple(r) for r in await db.fetch(
            "SELECT party_organization_id, organization_id FROM registry.party_coverage")}
        facility_rows = {tuple(r) for r in await db.fetch(
            "SELECT id, kind, name, region_code, started_on::text, ended_on::text FROM registry.facility")}
    finally:
        await db.close()
    assert hub_rows == {(h.hub_id, h.organization_id, h.region_code, h.name, h.leader_person_id, "2023-04-01", end,
                         "city") for h, end in zip(hubs, ["2023-08-01", None, "2023-07-01"], strict=True)}
    assert base_rows == {(bases[0].base_id, "孵化基地", township[:6], "2023-04-01", "2023-08-02"),
                         (bases[1].base_id, "孵化点", community, "2023-04-02", None)}
    assert len(townships) > 1 and covered == {(bases[0].base_id, t) for t in townships}
    assert party_rows == {(p.party_organization_id, p.kind.value, p.members, p.formed_on.isoformat(), end)
                          for p, end in zip(parties, ["2023-08-03", None, "2023-08-04"], strict=True)}
    assert coverage == {(p.party_organization_id, o) for p in parties for o in p.organization_ids}
    assert facility_rows == {(f.facility_id, f.kind.value, f.name, f.region_code, f.opened_on.isoformat(), end)
                             for f, end in zip(facilities, [None, "2023-08-05"], strict=True)}


async def test_refusals_are_noted_at_once_and_the_first_of_an_id_stands(two_registries: tuple[str, str]) -> None:
    """A batch's refusals for good are kept in one statement: every one, the first of an id (in
    the order given, before any later one), whether its id comes as a UUID or as text (a message
    refused by the contract)."""
    url, _ = two_registries
    ids = [uuid.uuid4() for _ in range(3)]

    def refusal(event_id: uuid.UUID | str, reason: str, code: str = "rule") -> dict[str, Any]:
        return {"event_id": event_id, "source": "city", "type": "OrganizationFiled", "field": "payload.name",
                "reason": reason, "code": code}

    engine = create_async_engine(async_url(url))
    async with engine.begin() as conn:
        await store.note_refusals(conn, [refusal(ids[0], "first"), refusal(ids[1], "only"),
                                         refusal(ids[0], "second")])
    async with engine.begin() as conn:
        await store.note_refusals(conn, [refusal(str(ids[2]), "broken", "contract"), refusal(ids[1], "again")])
    await engine.dispose()
    db = await asyncpg.connect(url)
    try:
        noted = {r["event_id"]: (r["reason"], r["code"]) for r in await db.fetch(
            "SELECT event_id, reason, code FROM registry.intake_refusal")}
    finally:
        await db.close()
    assert noted == {ids[0]: ("first", "rule"), ids[1]: ("only", "rule"), ids[2]: ("broken", "contract")}
