"""Recording one training command or fact: load what it touches, decide (domain), save, and stage
its events in the outbox, all in the caller's transaction.

Commands come over HTTP and NATS request-reply; the only facts from outside are registry's
HubEstablished (its leader enters the county's pool). Events carry opaque person ids and regions:
nothing here puts a name, a phone or an ID number into an event or a log line unmasked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from uuid import UUID, uuid4, uuid5

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope, Topology, make_event
from contracts import events as ev
from cso import outbox

from . import domain, sheet, store
from .commands import (
    AddMember,
    AddTrainee,
    CancelSession,
    Command,
    CompleteSession,
    Enrol,
    RecordAttendance,
    RecordExam,
    RemoveMember,
    ScheduleSession,
    SelectOutstanding,
    UpdateMember,
    Withdraw,
)
from .domain import OutOfScope, Rejected

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    topology: Topology
    pii_key: bytes
    source: str
    today: date


@dataclass
class Done:
    id: str
    region: str | None
    events: list[Envelope[Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def reply(self) -> dict[str, Any]:
        return {"ok": True, "id": self.id, "region": self.region,
                "events": [{"event_id": str(e.event_id), "type": e.type} for e in self.events]} | self.extra


async def _stage(conn: AsyncConnection, ctx: Context, items: list[tuple[ev.Payload, str, UUID | None]]
                 ) -> list[Envelope[Any]]:
    """Wrap payloads (with their aggregate id and, where derived, a fixed event id) and stage them."""
    envelopes = [make_event(p, source=ctx.source, event_id=eid) for p, _, eid in items]
    await outbox.add(conn, store.SCHEMA, ctx.topology,
                     [(e, aggregate) for e, (_, aggregate, _) in zip(envelopes, items, strict=True)])
    return envelopes


def _hash(ctx: Context, id_number: str | None) -> tuple[str | None, str | None]:
    if id_number is None:
        return None, None
    return domain.id_hash(ctx.pii_key, id_number), domain.mask_id(id_number)


def in_scope(region: str | None, scope: str | None) -> None:
    """Raise OutOfScope unless `region` lies within `scope`, the region prefix the caller may
    write (its token's; None: no limit, "" national). An unknown region is only a national caller's."""
    if scope is None or scope == "" or (region is not None and region.startswith(scope)):
        return
    raise OutOfScope("region", f"{region or 'a record without a region'} is outside your region {scope}")


async def handle(conn: AsyncConnection, cmd: Command, ctx: Context, scope: str | None = None) -> Done:
    """Apply one command; raises Rejected (the caller rolls back) if it breaks a rule, OutOfScope
    if what it touches lies outside `scope` (checked as soon as the region is known)."""
    done = await _handle(conn, cmd, ctx, scope)
    in_scope(done.region, scope)
    return done


async def _handle(conn: AsyncConnection, cmd: Command, ctx: Context, scope: str | None) -> Done:
    match cmd:
        case AddMember():
            in_scope(cmd.county_code, scope)
            return await _add_member(conn, cmd, ctx)
        case AddTrainee():
            in_scope(cmd.county_code, scope)
            return await _add_trainee(conn, cmd, ctx, scope)
        case UpdateMember():
            return await _update_member(conn, cmd, ctx, scope)
        case RemoveMember():
            current = await store.load_membership(conn, cmd.person_id)
            if current is not None:
                in_scope(current.county_code, scope)
            membership = domain.remove_member(cmd.person_id, current, cmd.reason, cmd.removed_on)
            await store.update_membership(conn, membership, ctx.source)
            events = await _stage(conn, ctx, [(ev.TalentPoolMemberRemoved(
                person_id=cmd.person_id, county_code=membership.county_code, reason=cmd.reason_code.value,
                removed_on=cmd.removed_on), str(cmd.person_id), None)])
            log.info("person %s left the pool of %s", cmd.person_id, membership.county_code)
            return Done(str(cmd.person_id), membership.county_code, events)
        case ScheduleSession():
            in_scope(cmd.organizer_region, scope)
            scheduled = domain.schedule(
                await store.load_session(conn, cmd.session_id),
                await store.region_known(conn, cmd.organizer_region),
                domain.Session(id=cmd.session_id, organizer_region=cmd.organizer_region, topic=cmd.topic,
                               starts_on=cmd.starts_on, ends_on=cmd.ends_on, capacity=cmd.capacity,
                               mode=cmd.mode))
            await store.save_session(conn, scheduled, ctx.source)
            events = await _stage(conn, ctx, [(ev.TrainingSessionScheduled(
                session_id=scheduled.id, organizer_region=scheduled.organizer_region, topic=scheduled.topic,
                starts_on=scheduled.starts_on, ends_on=scheduled.ends_on, capacity=scheduled.capacity,
                mode=cmd.mode), str(scheduled.id), None)])
            return Done(str(scheduled.id), scheduled.organizer_region, events)
        case Enrol():
            session = await _session(conn, cmd.session_id, scope)     # locked: places are counted
            enrolments = await store.load_enrolments(conn, cmd.session_id)
            taken = sum(1 for e in enrolments.values() if e.status == "enrolled")
            enrolment = domain.enrol(session, cmd.session_id,
                                     await store.load_person(conn, cmd.person_id, lock=False),
                                     cmd.person_id, enrolments.get(cmd.person_id), taken)
            await store.save_enrolments(conn, [enrolment], ctx.source)
            assert session is not None
            return Done(str(cmd.session_id), session.organizer_region,
                        extra={"enrolled": taken + 1, "capacity": session.capacity})
        case Withdraw():
            session = await _session(conn, cmd.session_id, scope)
            enrolments = await store.load_enrolments(conn, cmd.session_id)
            enrolment = domain.withdraw(session, cmd.session_id, enrolments.get(cmd.person_id), cmd.person_id)
            await store.save_enrolments(conn, [enrolment], ctx.source)
            return Done(str(cmd.session_id), session.organizer_region if session else None)
        case RecordAttendance():
            session = await _session(conn, cmd.session_id, scope)
            enrolments = await store.load_enrolments(conn, cmd.session_id)
            enrolment = domain.attend(session, cmd.session_id, enrolments.get(cmd.person_id), cmd.person_id,
                                      cmd.attended, ctx.today)
            await store.save_enrolments(conn, [enrolment], ctx.source)
            return Done(str(cmd.session_id), session.organizer_region if session else None)
        case CompleteSession():
            return await _complete(conn, cmd, ctx, scope)
        case CancelSession():
            cancelled = domain.cancel(await _session(conn, cmd.session_id, scope), cmd.session_id,
                                      cmd.reason, cmd.cancelled_on)
            await store.save_session(conn, cancelled, ctx.source)
            released = await store.release_enrolments(conn, cmd.session_id, ctx.source)
            return Done(str(cmd.session_id), cancelled.organizer_region, extra={"released": released})
        case RecordExam():
            county = domain.exam_county(await store.load_person(conn, cmd.person_id, lock=False),
                                        cmd.person_id, await store.load_membership(conn, cmd.person_id))
            in_scope(county, scope)
            await store.upsert_exam(conn, cmd.person_id, cmd.year, cmd.level, cmd.passed, county, ctx.source)
            # The same record again is the same event; a corrected result is a new one.
            exam = ev.QualificationExamRecorded(person_id=cmd.person_id, county_code=county, year=cmd.year,
                                                level=cmd.level, passed=cmd.passed)
            events = await _stage(conn, ctx, [(exam, str(cmd.person_id), uuid5(
                domain.TRAINING, f"exam:{cmd.person_id}:{cmd.year}:{cmd.level}:{cmd.passed}"))])
            return Done(str(cmd.person_id), county, events=events)
        case SelectOutstanding():
            in_scope(cmd.county_code, scope)
            subject = cmd.subject
            leader = cmd.kind == "leader"
            domain.select_outstanding(
                await store.county_known(conn, cmd.county_code), cmd.county_code, cmd.kind, subject,
                None if leader else await store.load_organization(conn, subject),
                await store.load_person(conn, subject, lock=False) if leader else None,
                await store.load_membership(conn, subject) if leader else None,
                await store.selected(conn, cmd.county_code, cmd.year, cmd.kind, subject), cmd.year)
            await store.insert_outstanding(conn, cmd.county_code, cmd.year, cmd.kind, subject, cmd.title,
                                           ctx.source)
            if leader:
                return Done(str(subject), cmd.county_code)
            # An outstanding organization is counted by targets ("每年推选不少于10个…", issue 21).
            chosen = ev.OutstandingOrganizationSelected(organization_id=subject, county_code=cmd.county_code,
                                                        year=cmd.year)
            events = await _stage(conn, ctx, [(chosen, str(subject), uuid5(
                domain.TRAINING, f"outstanding:{cmd.county_code}:{cmd.year}:{subject}"))])
            return Done(str(subject), cmd.county_code, events=events)
        case _:
            raise Rejected("command", f"training has no command {type(cmd).__name__}")


async def _session(conn: AsyncConnection, session_id: UUID, scope: str | None) -> domain.Session | None:
    """The session (locked), refused if it is organized outside the caller's region."""
    session = await store.load_session(conn, session_id)
    if session is not None:
        in_scope(session.organizer_region, scope)
    return session


async def _identity(conn: AsyncConnection, cmd: AddMember | AddTrainee, digest: str | None
                    ) -> tuple[domain.Identity, domain.Person | None]:
    """Who the command may be about, by each key it gives (locked), and the first one found."""
    identity = domain.Identity(
        by_person_id=await store.load_person(conn, cmd.person_id),
        by_id_number=await store.person_by_hash(conn, digest),
        by_contact=await store.person_by_contact(conn, cmd.phone, cmd.name, digest))
    return identity, identity.by_person_id or identity.by_id_number or identity.by_contact


async def _add_member(conn: AsyncConnection, cmd: AddMember, ctx: Context) -> Done:
    domain.not_retired("county_code", cmd.county_code, await store.retirement(conn, cmd.county_code, cmd.added_on))
    digest, masked = _hash(ctx, cmd.id_number)
    identity, matched = await _identity(conn, cmd, digest)
    added = domain.add_member(
        identity, await store.load_membership(conn, matched.id if matched else None),
        await store.county_known(conn, cmd.county_code),
        await store.load_organization(conn, cmd.organization_id),
        domain.NewPerson(person_id=cmd.person_id, county_code=cmd.county_code, role=cmd.role, name=cmd.name,
                         added_on=cmd.added_on, organization_id=cmd.organization_id, id_hash=digest,
                         id_masked=masked, phone=cmd.phone),
        uuid4())
    await store.save_person(conn, added.person, ctx.source)
    events = await _stage(conn, ctx, [(ev.TalentPoolMemberAdded(
        person_id=added.person.id, county_code=cmd.county_code, role=cmd.role, added_on=cmd.added_on),
        str(added.person.id), None)])
    await store.insert_membership(conn, added.record, events[0].event_id, ctx.source)
    await _follow_later_change(conn, cmd.county_code)
    log.info("%s person %s joined the pool of %s as %s", "new" if added.new_person else "known",
             added.person.masked(), cmd.county_code, cmd.role)
    return Done(str(added.person.id), cmd.county_code, events,
                extra={"person_id": str(added.person.id), "new_person": added.new_person})


async def _follow_later_change(conn: AsyncConnection, county: str) -> None:
    """A person added on a day before their county was recoded or merged (a late record of a past
    fact) is in the successor's pool now, like those the change moved (its event keeps the code)."""
    later = await store.retirement(conn, county, date.max)
    if later is not None and later[2] is not None:
        await store.follow_division_change(conn, county, later[2])


async def _add_trainee(conn: AsyncConnection, cmd: AddTrainee, ctx: Context, scope: str | None) -> Done:
    domain.not_retired("county_code", cmd.county_code, await store.retirement(conn, cmd.county_code, cmd.added_on))
    digest, masked = _hash(ctx, cmd.id_number)
    identity, matched = await _identity(conn, cmd, digest)
    if matched is not None:
        # A person on record is another county's to correct: their officials' region decides.
        in_scope(await store.person_county(conn, matched.id), scope)
    added = domain.add_trainee(
        identity, await store.load_trainee(conn, matched.id if matched else None),
        await store.county_known(conn, cmd.county_code),
        domain.NewPerson(person_id=cmd.person_id, county_code=cmd.county_code, role=cmd.role, name=cmd.name,
                         added_on=cmd.added_on, id_hash=digest, id_masked=masked, phone=cmd.phone),
        uuid4())
    await store.save_person(conn, added.person, ctx.source)
    await store.save_trainee(conn, added.record, ctx.source)
    await _follow_later_change(conn, cmd.county_code)
    log.info("%s person %s recorded as a trainee (%s) of %s", "new" if added.new_person else "known",
             added.person.masked(), cmd.role, cmd.county_code)
    return Done(str(added.person.id), cmd.county_code,
                extra={"person_id": str(added.person.id), "new_person": added.new_person})


async def _update_member(conn: AsyncConnection, cmd: UpdateMember, ctx: Context, scope: str | None) -> Done:
    digest, masked = _hash(ctx, cmd.id_number)
    membership = await store.load_membership(conn, cmd.person_id)
    if membership is not None:
        in_scope(membership.county_code, scope)
    person, changed = domain.update_member(
        await store.load_person(conn, cmd.person_id), cmd.person_id, membership,
        await store.person_by_hash(conn, digest), await store.load_organization(conn, cmd.organization_id),
        domain.MemberChanges(name=cmd.name, phone=cmd.phone, id_hash=digest, id_masked=masked, role=cmd.role,
                             organization_id=cmd.organization_id))
    await store.save_person(conn, person, ctx.source)
    if changed is not None:
        await store.update_membership(conn, changed, ctx.source)
    log.info("person %s updated", person.masked())
    return Done(str(person.id), membership.county_code if membership else None)


async def _complete(conn: AsyncConnection, cmd: CompleteSession, ctx: Context, scope: str | None) -> Done:
    session = await _session(conn, cmd.session_id, scope)
    enrolments = await store.load_enrolments(conn, cmd.session_id)
    standings = await store.standings_of(conn, list(enrolments))
    completed, completions = domain.complete(session, cmd.session_id, enrolments, standings, cmd.person_ids,
                                             cmd.completed_on, ctx.today)
    await store.save_session(conn, completed, ctx.source)
    await store.insert_completions(conn, completions, ctx.source)
    events = await _stage(conn, ctx, [
        (ev.TrainingCompleted(completion_id=c.id, session_id=c.session_id, person_id=c.person_id,
                              organizer_region=c.organizer_region, county_code=c.county_code,
                              completed_on=c.completed_on, trainee_role=c.role, pool_member=c.in_pool),
         str(c.person_id), uuid5(domain.TRAINING, f"event:{c.id}"))
        for c in completions])
    return Done(str(completed.id), completed.organizer_region, events,
                extra={"completed": len(completions), "completed_on": completed.completed_on.isoformat()
                       if completed.completed_on else None})


# --- attendance sheets -----------------------------------------------------------------------------

async def attendance_sheet(conn: AsyncConnection, session_id: UUID, data: bytes, ctx: Context,
                           dry_run: bool, accept_partial: bool, scope: str | None = None
                           ) -> tuple[domain.SheetReport, bool]:
    """Check a sheet row by row and, unless it is a dry run, apply it: all of it, or (with any row
    rejected) nothing unless `accept_partial`. Returns the report and whether anything was written.
    Raises sheet.SheetError if the sheet cannot be read, Rejected if the session takes no attendance,
    OutOfScope if the session is organized outside `scope`."""
    rows = sheet.parse(data)
    session = await _session(conn, session_id, scope)
    enrolments = await store.load_enrolments(conn, session_id)
    domain.attendable(session, session_id, ctx.today)
    keys = domain.row_keys(rows, ctx.pii_key, ctx.today)
    by_hash = await store.people_by_hash(conn, [k.id_hash for k in keys if k.id_hash])
    by_contact = await store.people_by_contact(
        conn, [(k.phone, domain.normalize_name(k.row.name)) for k in keys if k.phone])
    report = domain.resolve_sheet(keys, by_hash, by_contact, enrolments)
    if dry_run:
        return report, False
    changes = domain.apply_sheet(session, session_id, report, enrolments, ctx.today, accept_partial)
    await store.save_enrolments(conn, changes, ctx.source)
    return report, bool(changes)


# --- facts from registry ---------------------------------------------------------------------------

async def hub_leader(conn: AsyncConnection, envelope: Envelope[Any], ctx: Context) -> bool:
    """A hub with a leader: the leader enters the pool of the hub's county as a hub leader (once per
    hub; a leader already in a pool stays there). True if the pool changed."""
    fact = envelope.payload
    assert isinstance(fact, ev.HubEstablished) and fact.leader_person_id is not None
    person_id, county = fact.leader_person_id, fact.region_code[:6]
    membership = await store.load_membership(conn, person_id)
    decided = domain.hub_leader(await store.load_person(conn, person_id), person_id, membership, fact.hub_id,
                                await store.hub_known(conn, fact.hub_id), fact.region_code,
                                fact.organization_id, fact.established_on)
    if decided is None:
        if membership is not None and membership.active and membership.county_code != county:
            log.warning("hub %s: leader %s stays in the pool of %s, not %s", fact.hub_id, person_id,
                        membership.county_code, county)
        await store.insert_hub_leader(conn, fact.hub_id, person_id, county, False, envelope.event_id)
        return False
    person, joined = decided
    await store.save_person(conn, person, ctx.source)
    # A fixed event id: the same HubEstablished applied again stages the same event (a no-op).
    events = await _stage(conn, ctx, [(ev.TalentPoolMemberAdded(
        person_id=person_id, county_code=county, role="hub_leader", added_on=fact.established_on),
        str(person_id), uuid5(domain.TRAINING, f"hub-leader:{envelope.event_id}"))])
    await store.insert_membership(conn, joined, events[0].event_id, ctx.source)
    await store.insert_hub_leader(conn, fact.hub_id, person_id, county, True, envelope.event_id)
    log.info("hub %s: leader %s joined the pool of %s", fact.hub_id, person_id, county)
    return True


@dataclass
class OrganizationChange:
    """An organization's changes within one batch, folded: where it is, its status, the last event."""

    event_id: UUID
    created: bool = False
    community_code: str | None = None
    status: str | None = None


def fold_organization_facts(envelopes: Sequence[Envelope[Any]]) -> dict[UUID, OrganizationChange]:
    """Where organizations are and whether they are active (to link pool members and selections),
    folded per organization in stream order (the last community named, the last end, the last
    event), so a whole batch is saved set-based, one statement over arrays touching each row once
    (store.save_organizations, store.update_organizations)."""
    changes: dict[UUID, OrganizationChange] = {}
    for envelope in envelopes:
        fact = envelope.payload
        match fact:
            case ev.OrganizationFiled() | ev.OrganizationRegistered():
                change = changes.setdefault(fact.organization_id, OrganizationChange(envelope.event_id))
                change.created, change.community_code = True, fact.community_code
            case ev.OrganizationUpdated() if fact.community_code is not None:
                change = changes.setdefault(fact.organization_id, OrganizationChange(envelope.event_id))
                change.community_code = fact.community_code
            case ev.OrganizationDeregistered():
                change = changes.setdefault(fact.organization_id, OrganizationChange(envelope.event_id))
                change.status = fact.kind.value
            case _:
                continue
        change.event_id = envelope.event_id
    return changes


async def organization_facts(conn: AsyncConnection, envelopes: Sequence[Envelope[Any]]) -> None:
    changes = fold_organization_facts(envelopes)
    await store.save_organizations(conn, [(i, c.community_code, c.status, c.event_id)
                                          for i, c in changes.items() if c.created])
    await store.update_organizations(conn, [(i, c.community_code, c.status, c.event_id)
                                            for i, c in changes.items() if not c.created])