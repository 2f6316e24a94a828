"""Recording registry facts: load what a batch touches, decide each fact in order (domain), save the
batch set-based, and stage its events.

Commands (HTTP, NATS request-reply) and facts published by outside systems take this one path, so
they are checked by the same rules and produce the same events: a command is a batch of one. The
accepted event keeps the incoming `event_id`: the outside system sees its own id come back on
`cso.registry.…` as the receipt.

Why a batch and not a fact at a time: a pulled batch of facts (up to CSO_BATCH_SIZE) costs a
handful of queries to load and a handful to save, where a fact at a time cost a savepoint and four or five round trips
each (about 9 ms per fact). The facts are still decided one after another against the batch's
ledger, which each accepted fact updates, so a registration sees the filing just before it and a
fact that breaks a rule leaves nothing behind: it is rejected before the ledger changes
(domain/ledger.py, pure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope, Topology
from contracts import events as ev
from cso import outbox

from . import funding_store, store
from .domain import Interval, Ledger, Recorded, Rejected, decide

__all__ = ["REGISTRY_FACTS", "Recorded", "load", "record", "record_batch", "save"]

REGISTRY_FACTS: tuple[type[ev.Payload], ...] = (
    ev.OrganizationFiled, ev.OrganizationRegistered, ev.OrganizationUpdated,
    ev.OrganizationDeregistered, ev.HubEstablished, ev.HubDissolved, ev.IncubationBaseOpened,
    ev.IncubationBaseClosed, ev.PartyOrganizationFormed, ev.PartyOrganizationDissolved,
    ev.ProjectFunded, ev.FundedProjectEnded, ev.FacilityOpened, ev.FacilityClosed,
)


async def load(conn: AsyncConnection, facts: Sequence[ev.Payload]) -> Ledger:
    org_ids: set[UUID] = set()
    communities: set[str] = set()
    regions: set[str] = set()
    credit_codes: set[str] = set()
    interval_ids: dict[str, set[UUID]] = {"hub": set(), "base": set(), "party": set(),
                                               "facility": set()}
    project_ids: set[UUID] = set()
    for fact in facts:
        match fact:
            case ev.OrganizationFiled() | ev.OrganizationRegistered() | ev.OrganizationUpdated():
                org_ids.add(fact.organization_id)
                if fact.community_code is not None:
                    communities.add(fact.community_code)
                if isinstance(fact, ev.OrganizationRegistered):
                    credit_codes.add(fact.social_credit_code)
            case ev.OrganizationDeregistered():
                org_ids.add(fact.organization_id)
            case ev.HubEstablished():
                org_ids.add(fact.organization_id)
                regions.add(fact.region_code)
                interval_ids["hub"].add(fact.hub_id)
            case ev.HubDissolved():
                interval_ids["hub"].add(fact.hub_id)
            case ev.IncubationBaseOpened():
                regions.update(fact.covered_townships)
                if len(fact.region_code) == 12:     # an incubation point at a community
                    communities.add(fact.region_code)
                interval_ids["base"].add(fact.base_id)
            case ev.IncubationBaseClosed():
                interval_ids["base"].add(fact.base_id)
            case ev.PartyOrganizationFormed():
                org_ids.update(fact.organization_ids)
                interval_ids["party"].add(fact.party_organization_id)
            case ev.PartyOrganizationDissolved():
                interval_ids["party"].add(fact.party_organization_id)
            case ev.ProjectFunded():
                project_ids.add(fact.project_id)
                org_ids.add(fact.recipient_organization_id)
                org_ids.update(fact.beneficiary_organization_ids)
                if fact.hub_id is not None:
                    interval_ids["hub"].add(fact.hub_id)
            case ev.FundedProjectEnded():
                project_ids.add(fact.project_id)
            case ev.FacilityOpened():
                (communities if len(fact.region_code) == 12 else regions).add(fact.region_code)
                if len(fact.region_code) == 9:      # its county: loaded yet, or the fact waits for it
                    regions.add(fact.region_code[:6])
                interval_ids["facility"].add(fact.facility_id)
            case ev.FacilityClosed():
                interval_ids["facility"].add(fact.facility_id)
    regions.update(c[:6] for c in communities)
    # Retired codes (DivisionChanged) of every county the batch names, a project's region included.
    # (A city names no county: retired codes are read by county.)
    named = (communities | {r for r in regions if len(r) > 4}
             | {f.region_code for f in facts if isinstance(f, ev.ProjectFunded)})
    intervals: dict[tuple[str, UUID], Interval | None] = {}
    for kind, ids in interval_ids.items():
        if ids:
            found = await store.load_intervals(conn, kind, sorted(ids))
            intervals.update({(kind, i): found.get(i) for i in ids})
    orgs = await store.load_organizations(conn, sorted(org_ids)) if org_ids else {}
    # ... and of the organizations' own communities: a fact of a past day may name its record's
    # region by the code it had then (domain/ledger.py, _same_region).
    named |= {o.community_code for o in orgs.values() if o is not None}
    return Ledger(
        orgs=orgs,
        credit_holders=await store.credit_code_holders(conn, sorted(credit_codes)) if credit_codes else {},
        communities=await store.known_communities(conn, sorted(communities)) if communities else set(),
        counties=await store.known_regions(conn, sorted(r for r in regions if len(r) == 6)),
        townships=await store.known_regions(conn, sorted(r for r in regions if len(r) == 9)),
        cities=await store.known_regions(conn, sorted(r for r in regions if len(r) == 4)),
        intervals=intervals,
        projects=await funding_store.load_projects(conn, sorted(project_ids)) if project_ids else {},
        retired=await store.retired_codes(conn, sorted({c[:6] for c in named})))


async def save(conn: AsyncConnection, ledger: Ledger, topology: Topology) -> None:
    """Write the batch's changes set-based: organizations first (hubs and parties refer to them)."""
    await store.save_organizations(conn, list(ledger.changed_orgs.values()))
    for kind in ("hub", "base", "party", "facility"):
        await store.insert_intervals(conn, kind, [n for (k, _), n in ledger.new_intervals.items() if k == kind])
        await store.end_intervals(conn, kind, [v for (k, _), v in ledger.ended_intervals.items() if k == kind])
    await funding_store.save_projects(conn, list(ledger.changed_projects.values()))
    await outbox.add(conn, store.SCHEMA, topology, ledger.events)
    await store.insert_audit(conn, ledger.audit)


async def record_batch(conn: AsyncConnection, envelopes: Sequence[Envelope[Any]], topology: Topology,
                       check_region: bool = True, scope: str | None = None,
                       actor: str | None = None) -> list[Recorded | Rejected]:
    """Apply facts in order in the caller's transaction; per fact, what was recorded or why not.

    A fact from outside must name the region of the record it touches (`check_region`); a command
    need not, and its event takes the record's region. `scope` is the region prefix the caller may
    write (a token's region): a record outside it is refused with OutOfScope. `actor` is who asked
    (a token's subject), kept in the audit trail beside the source system.
    """
    ledger = await load(conn, [e.payload for e in envelopes])
    results: list[Recorded | Rejected] = []
    for envelope in envelopes:
        try:
            results.append(decide(ledger, envelope, check_region, scope, actor))
        except Rejected as e:
            results.append(e)
    await save(conn, ledger, topology)
    return results


async def record(conn: AsyncConnection, envelope: Envelope[Any], topology: Topology,
                 check_region: bool = True, scope: str | None = None, actor: str | None = None) -> Recorded:
    """One fact (a command): what was recorded, or the Rejected raised with nothing written."""
    [result] = await record_batch(conn, [envelope], topology, check_region, scope, actor)
    if isinstance(result, Rejected):
        raise result
    return result
