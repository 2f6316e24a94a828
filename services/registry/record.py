"""Recording registry facts: load what a batch touches, decide each fact in order (domain), save the
batch set-based, and stage its events.

Commands (HTTP, NATS request-reply) and facts published by outside systems take this one path, so
they are checked by the same rules and produce the same events: a command is a batch of one. The
accepted event keeps the incoming `event_id`: the outside system sees its own id come back on
`cso.registry.…` as the receipt.

Why a batch and not a fact at a time: a pulled batch of 500 facts costs a handful of queries to
load and a handful to save, where a fact at a time cost a savepoint and four or five round trips
each (about 9 ms per fact). The facts are still decided one after another against the batch's
ledger, which each accepted fact updates, so a registration sees the filing just before it and a
fact that breaks a rule leaves nothing behind: it is rejected before the ledger changes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope, Topology
from contracts import events as ev
from cso import outbox
from cso.consumer import NotYet, OutOfScope, Rejected

from . import domain, store
from .domain import Interval, Organization

REGISTRY_FACTS: tuple[type[ev.Payload], ...] = (
    ev.OrganizationFiled, ev.OrganizationRegistered, ev.OrganizationUpdated,
    ev.OrganizationDeregistered, ev.HubEstablished, ev.HubDissolved, ev.IncubationBaseOpened,
    ev.IncubationBaseClosed, ev.PartyOrganizationFormed, ev.PartyOrganizationDissolved,
)


@dataclass(frozen=True)
class Recorded:
    aggregate_id: str
    region: str


@dataclass
class NewInterval:
    """A hub, base or party organization created in this batch, with what only its creation says."""

    kind: str
    interval: Interval
    source: str
    name: str | None = None
    leader: UUID | None = None
    party_kind: str | None = None
    members: int = 0
    townships: list[str] = field(default_factory=list)
    organization_ids: list[UUID] = field(default_factory=list)


@dataclass
class Ledger:
    """What a batch of facts touches, as on record when the batch began, and the batch's changes.

    Rows that a fact may change are loaded FOR UPDATE (in id order, so replicas do not deadlock);
    reference data (divisions) is read as sets of known codes.
    """

    orgs: dict[UUID, Organization | None]
    credit_holders: dict[str, UUID]
    communities: set[str]
    counties: set[str]
    townships: set[str]
    intervals: dict[tuple[str, UUID], Interval | None]
    changed_orgs: dict[UUID, tuple[Organization, UUID, str]] = field(default_factory=dict)
    new_intervals: dict[tuple[str, UUID], NewInterval] = field(default_factory=dict)
    ended_intervals: dict[tuple[str, UUID], tuple[Interval, str]] = field(default_factory=dict)
    events: list[tuple[Envelope[Any], str]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)

    def community_known(self, code: str) -> bool:
        """Known, or a Rejected; NotYet while the county's divisions have not arrived (they come on
        another stream, and a fact may overtake them), so the fact is retried rather than lost."""
        if code in self.communities:
            return True
        if code[:6] not in self.counties:
            raise NotYet("community_code", f"divisions of county {code[:6]} are not loaded yet",
                         waits_for=f"county:{code[:6]}")
        return False

    def region_known(self, code: str) -> bool:
        return code in (self.townships if len(code) == 9 else self.counties if len(code) == 6 else ())

    def interval(self, kind: str, ident: UUID) -> Interval | None:
        return self.intervals.get((kind, ident))


async def load(conn: AsyncConnection, facts: Sequence[ev.Payload]) -> Ledger:
    org_ids: set[UUID] = set()
    communities: set[str] = set()
    regions: set[str] = set()
    credit_codes: set[str] = set()
    interval_ids: dict[str, set[UUID]] = {"hub": set(), "base": set(), "party": set()}
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
                interval_ids["base"].add(fact.base_id)
            case ev.IncubationBaseClosed():
                interval_ids["base"].add(fact.base_id)
            case ev.PartyOrganizationFormed():
                org_ids.update(fact.organization_ids)
                interval_ids["party"].add(fact.party_organization_id)
            case ev.PartyOrganizationDissolved():
                interval_ids["party"].add(fact.party_organization_id)
    regions.update(c[:6] for c in communities)
    intervals: dict[tuple[str, UUID], Interval | None] = {}
    for kind, ids in interval_ids.items():
        if ids:
            found = await store.load_intervals(conn, kind, sorted(ids))
            intervals.update({(kind, i): found.get(i) for i in ids})
    return Ledger(
        orgs=await store.load_organizations(conn, sorted(org_ids)) if org_ids else {},
        credit_holders=await store.credit_code_holders(conn, sorted(credit_codes)) if credit_codes else {},
        communities=await store.known_communities(conn, sorted(communities)) if communities else set(),
        counties=await store.known_regions(conn, sorted(r for r in regions if len(r) == 6)),
        townships=await store.known_regions(conn, sorted(r for r in regions if len(r) == 9)),
        intervals=intervals)


@functools.cache
def _audited_fields(record_type: type) -> tuple[str, ...]:
    # dataclasses.fields() walks the class each call: a few per cent of registry's CPU per event.
    return tuple(f.name for f in fields(record_type) if f.name != "id")


def _changes(before: Any, after: Any) -> dict[str, Any]:
    """The audit's record of a change: each field that differs, as [before, after]."""
    # Shallow: the records hold only scalars, and dataclasses.asdict deep-copies every value.
    names = _audited_fields(type(after))
    if before is None:
        return {k: [None, v] for k in names if (v := getattr(after, k)) is not None}
    return {k: [old, new] for k in names if (old := getattr(before, k)) != (new := getattr(after, k))}


def _same_region(envelope: Envelope[Any], region: str, check: bool) -> None:
    if check and envelope.region != region:
        raise Rejected("region", f"{envelope.region} is not the record's region {region}", code="region_mismatch")


def decide(ledger: Ledger, envelope: Envelope[Any], check_region: bool = True,
           scope: str | None = None, actor: str | None = None) -> Recorded:
    """Decide one fact against the ledger and, if it is accepted, change the ledger.

    Everything that can reject the fact runs before the ledger changes: a Rejected leaves nothing.
    """
    fact = envelope.payload
    org: Organization | None = None
    before: Organization | Interval | None = None
    created: NewInterval | None = None
    ended: tuple[str, Interval] | None = None
    match fact:
        case ev.OrganizationFiled():
            org = domain.file(ledger.orgs.get(fact.organization_id),
                              ledger.community_known(fact.community_code), fact)
        case ev.OrganizationRegistered():
            before = ledger.orgs.get(fact.organization_id)
            org = domain.register(before, ledger.community_known(fact.community_code),
                                  ledger.credit_holders.get(fact.social_credit_code), fact)
        case ev.OrganizationUpdated():
            before = ledger.orgs.get(fact.organization_id)
            known = fact.community_code is None or ledger.community_known(fact.community_code)
            org = domain.update(before, known, fact)
            if fact.community_code is None:
                _same_region(envelope, before.community_code if before else "", check_region)
        case ev.OrganizationDeregistered():
            before = ledger.orgs.get(fact.organization_id)
            org = domain.deregister(before, fact)
        case ev.HubEstablished():
            hub = domain.establish_hub(ledger.interval("hub", fact.hub_id),
                                       ledger.orgs.get(fact.organization_id),
                                       ledger.region_known(fact.region_code), fact)
            created = NewInterval("hub", hub, envelope.source, name=fact.name, leader=fact.leader_person_id)
        case ev.HubDissolved():
            before = ledger.interval("hub", fact.hub_id)
            ended = ("hub", domain.dissolve_hub(before, fact))
        case ev.IncubationBaseOpened():
            unknown = [t for t in fact.covered_townships if t not in ledger.townships]
            base = domain.open_base(ledger.interval("base", fact.base_id), unknown, fact)
            created = NewInterval("base", base, envelope.source, name=fact.name,
                                  townships=sorted(set(fact.covered_townships)))
        case ev.IncubationBaseClosed():
            before = ledger.interval("base", fact.base_id)
            ended = ("base", domain.close_base(before, fact))
        case ev.PartyOrganizationFormed():
            members = {i: ledger.orgs.get(i) for i in fact.organization_ids}
            party = domain.form_party(ledger.interval("party", fact.party_organization_id), members, fact)
            created = NewInterval("party", party, envelope.source, party_kind=fact.kind.value,
                                  members=fact.members, organization_ids=sorted(set(fact.organization_ids)))
        case ev.PartyOrganizationDissolved():
            before = ledger.interval("party", fact.party_organization_id)
            ended = ("party", domain.dissolve_party(before, fact))
        case _:
            raise Rejected("type", f"registry does not record {envelope.type}", code="not_a_registry_fact")

    after: Organization | Interval
    if org is not None:
        after, kind = org, "organization"
        done = Recorded(str(org.id), org.community_code)
    elif created is not None:
        after, kind = created.interval, created.kind
        done = Recorded(str(after.id), after.region_code)
    else:
        assert ended is not None
        kind, after = ended
        done = Recorded(str(after.id), after.region_code)
    if scope is not None and not done.region.startswith(scope):
        raise OutOfScope("region", f"{done.region} is outside the caller's region {scope}")
    _same_region(envelope, done.region, check_region)
    if isinstance(before, Organization):
        # A change of an existing organization is also its current county's business: a move or
        # an upgrade names the new community, and must not let another county take the record.
        if scope is not None and not before.community_code.startswith(scope):
            raise OutOfScope("region", f"{before.community_code} is outside the caller's region {scope}")
        if check_region and before.community_code[:6] != envelope.region[:6]:
            raise Rejected("region", f"organization {before.id} is in county {before.community_code[:6]}, "
                                     f"not {envelope.region[:6]}", code="region_mismatch")

    # Accepted: from here on the ledger changes.
    if org is not None:
        ledger.orgs[org.id] = org
        ledger.changed_orgs[org.id] = (org, envelope.event_id, envelope.source)
        if org.social_credit_code is not None:
            ledger.credit_holders[org.social_credit_code] = org.id
    elif created is not None:
        ledger.intervals[(kind, after.id)] = after
        ledger.new_intervals[(kind, after.id)] = created
    elif ended is not None:
        key = (kind, after.id)
        ledger.intervals[key] = after
        if key in ledger.new_intervals:
            ledger.new_intervals[key].interval = after
        else:
            ledger.ended_intervals[key] = (after, envelope.source)
    if envelope.region != done.region:
        envelope = envelope.model_copy(update={"region": done.region})
    ledger.events.append((envelope, done.aggregate_id))
    ledger.audit.append({
        "event_id": envelope.event_id, "record_kind": kind, "record_id": after.id, "type": envelope.type,
        "actor": actor or envelope.source, "source": envelope.source, "region": done.region,
        "changes": json.dumps(_changes(before, after), default=_json_value)})
    return done


def _json_value(value: Any) -> str:
    if isinstance(value, (date, UUID)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


async def save(conn: AsyncConnection, ledger: Ledger, topology: Topology) -> None:
    """Write the batch's changes set-based: organizations first (hubs and parties refer to them)."""
    await store.save_organizations(conn, list(ledger.changed_orgs.values()))
    for kind in ("hub", "base", "party"):
        await store.insert_intervals(conn, kind, [n for (k, _), n in ledger.new_intervals.items() if k == kind])
        await store.end_intervals(conn, kind, [v for (k, _), v in ledger.ended_intervals.items() if k == kind])
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
