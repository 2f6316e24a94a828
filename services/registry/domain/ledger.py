"""A batch's ledger and the decision of each fact against it: pure, no I/O.

`record.load` fills a Ledger with what a batch of facts touches; `decide` takes the facts one after
another, each against the ledger as the facts before it left it (so a registration sees the filing
just before it), and changes the ledger only once the fact is accepted: a fact that breaks a rule
raises (.errors) and leaves nothing behind. `record.save` then writes the ledger's changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from datetime import date
from typing import Any
from uuid import UUID

from contracts import Envelope
from contracts import events as ev

from . import funding, rules
from .divisions import Retired
from .errors import NotYet, OutOfScope, Rejected
from .funding import FundedProject
from .rules import Interval, Organization


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
    facility_kind: str | None = None
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
    projects: dict[UUID, FundedProject | None] = field(default_factory=dict)
    cities: set[str] = field(default_factory=set)     # cities some county of which divisions loaded
    # Codes retired by merges, recodes and abolitions (DivisionChanged) among those the batch names.
    retired: Retired = field(default_factory=Retired)
    # Each changed project after the batch, with the organizations a new one supports through a hub.
    changed_projects: dict[UUID, tuple[FundedProject, list[UUID], str]] = field(default_factory=dict)
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

    def division_known(self, code: str) -> bool:
        """A community, township or county known (NotYet while its county's divisions have not
        arrived, as for a community), or a city one of whose counties is."""
        if len(code) in (6, 9, 12) and code[:6] not in self.counties:
            raise NotYet("region_code", f"divisions of county {code[:6]} are not loaded yet",
                         waits_for=f"county:{code[:6]}")
        return code in self.communities if len(code) == 12 else self.region_known(code)

    def region_known(self, code: str) -> bool:
        return code in (self.townships if len(code) == 9 else self.counties if len(code) == 6
                        else self.cities if len(code) == 4 else ())

    def interval(self, kind: str, ident: UUID) -> Interval | None:
        return self.intervals.get((kind, ident))


_AUDITED: dict[type, tuple[str, ...]] = {}


def _audited_fields(record_type: type[Organization | Interval | FundedProject]) -> tuple[str, ...]:
    # dataclasses.fields() walks the class each call: a few per cent of registry's CPU per event.
    names = _AUDITED.get(record_type)
    if names is None:
        names = _AUDITED[record_type] = tuple(f.name for f in fields(record_type) if f.name != "id")
    return names


def _changes(before: Organization | Interval | FundedProject | None,
             after: Organization | Interval | FundedProject) -> dict[str, Any]:
    """The audit's record of a change: each field that differs, as [before, after]."""
    # Shallow: the records hold only scalars, and dataclasses.asdict deep-copies every value.
    names = _audited_fields(type(after))
    if before is None:
        return {k: [None, v] for k in names if (v := getattr(after, k)) is not None}
    return {k: [old, new] for k in names if (old := getattr(before, k)) != (new := getattr(after, k))}


def _same_region(envelope: Envelope[Any], region: str, check: bool, retired: Retired | None = None) -> None:
    # A fact of a past day may name its record's region by the code it had then.
    if check and envelope.region != region and (retired is None or retired.current(envelope.region) != region):
        raise Rejected("region", f"{envelope.region} is not the record's region {region}", code="region_mismatch")


def decide(ledger: Ledger, envelope: Envelope[Any], check_region: bool = True,
           scope: str | None = None, actor: str | None = None) -> Recorded:
    """Decide one fact against the ledger and, if it is accepted, change the ledger.

    Everything that can reject the fact runs before the ledger changes: a Rejected leaves nothing.
    """
    fact = envelope.payload
    org: Organization | None = None
    before: Organization | Interval | FundedProject | None = None
    created: NewInterval | None = None
    ended: tuple[str, Interval] | None = None
    project: FundedProject | None = None
    _check_current(ledger.retired, fact)
    match fact:
        case ev.OrganizationFiled():
            org = rules.file(ledger.orgs.get(fact.organization_id),
                              ledger.community_known(fact.community_code), fact)
        case ev.OrganizationRegistered():
            before = ledger.orgs.get(fact.organization_id)
            org = rules.register(before, ledger.community_known(fact.community_code),
                                  ledger.credit_holders.get(fact.social_credit_code), fact)
        case ev.OrganizationUpdated():
            before = ledger.orgs.get(fact.organization_id)
            known = fact.community_code is None or ledger.community_known(fact.community_code)
            org = rules.update(before, known, fact)
            if fact.community_code is None:
                _same_region(envelope, before.community_code if before else "", check_region, ledger.retired)
        case ev.OrganizationDeregistered():
            before = ledger.orgs.get(fact.organization_id)
            org = rules.deregister(before, fact)
        case ev.HubEstablished():
            hub = rules.establish_hub(ledger.interval("hub", fact.hub_id),
                                       ledger.orgs.get(fact.organization_id),
                                       ledger.region_known(fact.region_code), fact,
                                       now_code=ledger.retired.current(fact.region_code))
            created = NewInterval("hub", hub, envelope.source, name=fact.name, leader=fact.leader_person_id)
        case ev.HubDissolved():
            before = ledger.interval("hub", fact.hub_id)
            ended = ("hub", rules.dissolve_hub(before, fact))
        case ev.IncubationBaseOpened():
            unknown = [t for t in fact.covered_townships if t not in ledger.townships]
            if len(fact.region_code) == 12 and not ledger.community_known(fact.region_code):
                raise Rejected("region_code", f"unknown community {fact.region_code}", code="unknown_division")
            base = rules.open_base(ledger.interval("base", fact.base_id), unknown, fact)
            created = NewInterval("base", base, envelope.source, name=fact.name,
                                  townships=sorted(set(fact.covered_townships)))
        case ev.IncubationBaseClosed():
            before = ledger.interval("base", fact.base_id)
            ended = ("base", rules.close_base(before, fact))
        case ev.FacilityOpened():
            facility = rules.open_facility(ledger.interval("facility", fact.facility_id),
                                           ledger.division_known(fact.region_code), fact)
            created = NewInterval("facility", facility, envelope.source, name=fact.name,
                                  facility_kind=fact.kind.value)
        case ev.FacilityClosed():
            before = ledger.interval("facility", fact.facility_id)
            ended = ("facility", rules.close_facility(before, fact))
        case ev.PartyOrganizationFormed():
            members = {i: ledger.orgs.get(i) for i in fact.organization_ids}
            party = rules.form_party(ledger.interval("party", fact.party_organization_id), members, fact)
            created = NewInterval("party", party, envelope.source, party_kind=fact.kind.value,
                                  members=fact.members, organization_ids=sorted(set(fact.organization_ids)))
        case ev.PartyOrganizationDissolved():
            before = ledger.interval("party", fact.party_organization_id)
            ended = ("party", rules.dissolve_party(before, fact))
        case ev.ProjectFunded():
            if (now := ledger.retired.current(fact.region_code)) != fact.region_code:
                fact = fact.model_copy(update={"region_code": now})   # awarded before the change
            project = funding.fund(
                ledger.projects.get(fact.project_id), ledger.orgs.get(fact.recipient_organization_id),
                ledger.interval("hub", fact.hub_id) if fact.hub_id else None,
                {i: ledger.orgs.get(i) for i in fact.beneficiary_organization_ids}, fact)
        case ev.FundedProjectEnded():
            before = ledger.projects.get(fact.project_id)
            project = funding.end(before, fact)
        case _:
            raise Rejected("type", f"registry does not record {envelope.type}", code="not_a_registry_fact")

    after: Organization | Interval | FundedProject
    if project is not None:
        after, kind = project, "project"
        done = Recorded(str(project.id), project.region_code)
    elif org is not None:
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
    _same_region(envelope, done.region, check_region, ledger.retired)
    if isinstance(before, Organization):
        # A change of an existing organization is also its current county's business: a move or
        # an upgrade names the new community, and must not let another county take the record.
        if scope is not None and not before.community_code.startswith(scope):
            raise OutOfScope("region", f"{before.community_code} is outside the caller's region {scope}")
        if check_region and before.community_code[:6] != ledger.retired.current(envelope.region)[:6]:
            raise Rejected("region", f"organization {before.id} is in county {before.community_code[:6]}, "
                                     f"not {envelope.region[:6]}", code="region_mismatch")

    # Accepted: from here on the ledger changes.
    if project is not None:
        supported = list(fact.beneficiary_organization_ids) if isinstance(fact, ev.ProjectFunded) else []
        if project.id in ledger.changed_projects:   # ended in the batch that created it
            supported = ledger.changed_projects[project.id][1]
        ledger.projects[project.id] = project
        ledger.changed_projects[project.id] = (project, supported, envelope.source)
    elif org is not None:
        moved = ledger.retired.current(org.community_code)
        if moved != org.community_code:   # accepted at a code retired since: a late filing of a past fact
            org = replace(org, community_code=moved)
        ledger.orgs[org.id] = org
        ledger.changed_orgs[org.id] = (org, envelope.event_id, envelope.source)
        if org.social_credit_code is not None:
            ledger.credit_holders[org.social_credit_code] = org.id
    elif created is not None:
        created.interval = replace(created.interval, region_code=ledger.retired.current(created.interval.region_code))
        created.townships = sorted({ledger.retired.current(t) for t in created.townships})
        ledger.intervals[(kind, created.interval.id)] = created.interval
        ledger.new_intervals[(kind, created.interval.id)] = created
    elif ended is not None:
        interval = ended[1]
        key = (kind, interval.id)
        ledger.intervals[key] = interval
        if key in ledger.new_intervals:
            ledger.new_intervals[key].interval = interval
        else:
            ledger.ended_intervals[key] = (interval, envelope.source)
    if envelope.region != done.region:
        envelope = envelope.model_copy(update={"region": done.region})
    ledger.events.append((envelope, done.aggregate_id))
    ledger.audit.append({
        "event_id": envelope.event_id, "record_kind": kind, "record_id": after.id, "type": envelope.type,
        "actor": actor or envelope.source, "source": envelope.source, "region": done.region,
        "changes": json.dumps(_changes(before, after), default=_json_value)})
    if org is not None and org.community_code != done.region:
        # The organization follows the code that stands for its community now; the audit keeps
        # the code the fact named in the row above and the move in this one.
        ledger.audit.append({
            "event_id": envelope.event_id, "record_kind": "organization", "record_id": org.id,
            "type": "DivisionChanged", "actor": actor or envelope.source, "source": envelope.source,
            "region": org.community_code,
            "changes": json.dumps({"community_code": [done.region, org.community_code]})})
    return done


def _check_current(retired: Retired, fact: Any) -> None:
    """Refuse a fact that names, on or after its day, a code retired by then (naming its successor)."""
    if not retired:
        return
    match fact:
        case ev.OrganizationFiled():
            retired.check("community_code", fact.community_code, fact.filed_on)
        case ev.OrganizationRegistered():
            retired.check("community_code", fact.community_code, fact.registered_on)
        case ev.OrganizationUpdated() if fact.community_code is not None:
            retired.check("community_code", fact.community_code, fact.effective_on)
        case ev.HubEstablished():
            retired.check("region_code", fact.region_code, fact.established_on)
        case ev.IncubationBaseOpened():
            retired.check("region_code", fact.region_code, fact.opened_on)
            for township in fact.covered_townships:
                retired.check("covered_townships", township, fact.opened_on)
        case ev.ProjectFunded():
            retired.check("region_code", fact.region_code, fact.awarded_on)
        case ev.FacilityOpened():
            retired.check("region_code", fact.region_code, fact.opened_on)


def _json_value(value: Any) -> str:
    if isinstance(value, (date, UUID)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
