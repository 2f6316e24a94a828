"""Recording one registry fact: load what it touches, decide (domain), save, and stage its event.

Commands (HTTP, NATS request-reply) and facts published by outside systems take this one path, so
they are checked by the same rules and produce the same events. The accepted event keeps the
incoming `event_id`: the outside system sees its own id come back on `cso.registry.…` as the receipt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope, Topology
from contracts import events as ev
from cso import outbox
from cso.consumer import NotYet, OutOfScope, Rejected

from . import domain, store

REGISTRY_FACTS: tuple[type[ev.Payload], ...] = (
    ev.OrganizationFiled, ev.OrganizationRegistered, ev.OrganizationUpdated,
    ev.OrganizationDeregistered, ev.HubEstablished, ev.HubDissolved, ev.IncubationBaseOpened,
    ev.IncubationBaseClosed, ev.PartyOrganizationFormed, ev.PartyOrganizationDissolved,
)


@dataclass(frozen=True)
class Recorded:
    aggregate_id: str
    region: str


async def _community_known(conn: AsyncConnection, code: str) -> bool:
    """Known, or a Rejected; NotYet while the county's divisions have not arrived (they come on
    another stream, and a fact may overtake them), so the fact is retried rather than lost."""
    if await store.community_known(conn, code):
        return True
    if not await store.region_known(conn, code[:6]):
        raise NotYet("community_code", f"divisions of county {code[:6]} are not loaded yet")
    return False


def _same_region(envelope: Envelope[Any], region: str, check: bool = True) -> None:
    if check and envelope.region != region:
        raise Rejected("region", f"{envelope.region} is not the record's region {region}")


async def record(conn: AsyncConnection, envelope: Envelope[Any], topology: Topology,
                 check_region: bool = True, scope: str | None = None) -> Recorded:
    """Apply one fact in the caller's transaction; raises Rejected (nothing written) if it breaks a rule.

    A fact from outside must name the region of the record it touches (`check_region`); a command
    need not, and its event takes the record's region. `scope` is the region prefix the caller may
    write (a token's region); a record outside it raises OutOfScope and the caller's transaction
    rolls back.
    """
    fact = envelope.payload
    source = envelope.source
    eid = envelope.event_id
    match fact:
        case ev.OrganizationFiled():
            org = domain.file(await store.load_organization(conn, fact.organization_id),
                              await _community_known(conn, fact.community_code), fact)
            await store.save_organization(conn, org, eid, source)
            done = Recorded(str(org.id), org.community_code)
        case ev.OrganizationRegistered():
            org = domain.register(
                await store.load_organization(conn, fact.organization_id),
                await _community_known(conn, fact.community_code),
                await store.credit_code_holder(conn, fact.social_credit_code), fact)
            await store.save_organization(conn, org, eid, source)
            done = Recorded(str(org.id), org.community_code)
        case ev.OrganizationUpdated():
            existing = await store.load_organization(conn, fact.organization_id)
            known = fact.community_code is None or await _community_known(conn, fact.community_code)
            org = domain.update(existing, known, fact)
            if fact.community_code is None and existing is not None:
                _same_region(envelope, existing.community_code, check_region)
            await store.save_organization(conn, org, eid, source)
            done = Recorded(str(org.id), org.community_code)
        case ev.OrganizationDeregistered():
            org = domain.deregister(await store.load_organization(conn, fact.organization_id), fact)
            _same_region(envelope, org.community_code, check_region)
            await store.save_organization(conn, org, eid, source)
            done = Recorded(str(org.id), org.community_code)
        case ev.HubEstablished():
            hub = domain.establish_hub(
                await store.load_interval(conn, "hub", fact.hub_id),
                await store.load_organization(conn, fact.organization_id, lock=False),
                await store.region_known(conn, fact.region_code), fact)
            await store.insert_hub(conn, hub, fact.name, fact.leader_person_id, source)
            done = Recorded(str(hub.id), hub.region_code)
        case ev.HubDissolved():
            hub = domain.dissolve_hub(await store.load_interval(conn, "hub", fact.hub_id), fact)
            _same_region(envelope, hub.region_code, check_region)
            await store.end_interval(conn, "hub", hub, source)
            done = Recorded(str(hub.id), hub.region_code)
        case ev.IncubationBaseOpened():
            base = domain.open_base(
                await store.load_interval(conn, "base", fact.base_id),
                await store.unknown_townships(conn, list(fact.covered_townships)), fact)
            await store.insert_base(conn, base, fact.name, list(fact.covered_townships), source)
            done = Recorded(str(base.id), base.region_code)
        case ev.IncubationBaseClosed():
            base = domain.close_base(await store.load_interval(conn, "base", fact.base_id), fact)
            _same_region(envelope, base.region_code, check_region)
            await store.end_interval(conn, "base", base, source)
            done = Recorded(str(base.id), base.region_code)
        case ev.PartyOrganizationFormed():
            members = await store.load_organizations(conn, list(fact.organization_ids))
            party = domain.form_party(await store.load_interval(conn, "party", fact.party_organization_id),
                                      members, fact)
            _same_region(envelope, party.region_code, check_region)
            await store.insert_party(conn, party, fact.kind.value, fact.members,
                                     list(fact.organization_ids), source)
            done = Recorded(str(party.id), party.region_code)
        case ev.PartyOrganizationDissolved():
            party = domain.dissolve_party(
                await store.load_interval(conn, "party", fact.party_organization_id), fact)
            _same_region(envelope, party.region_code, check_region)
            await store.end_interval(conn, "party", party, source)
            done = Recorded(str(party.id), party.region_code)
        case _:
            raise Rejected("type", f"registry does not record {envelope.type}")
    if scope is not None and not done.region.startswith(scope):
        raise OutOfScope("region", f"{done.region} is outside the caller's region {scope}")
    _same_region(envelope, done.region, check_region)
    if envelope.region != done.region:
        envelope = envelope.model_copy(update={"region": done.region})
    await outbox.add(conn, store.SCHEMA, topology, [(envelope, done.aggregate_id)])
    return done
