"""registry's handler table: every event registry consumes, and the handler that applies it.

`tables()` below is the table: for each of registry's subscriptions (facts from outside systems on
CSO_INTAKE, division reference data on CSO_DIVISIONS), event type -> handler.

Each handler runs in the consumer's transaction, beside the inbox that claims the batch's event
ids (cso/consumer.py), with its share of the batch in stream order (cso/dispatch.py). This is
also the edge where registry's own refusals (domain/errors.py) become the consumer's: `Rejected`
is dead-lettered, `NotYet` retried. Registry parks its waiting facts itself (waiting.py), so what
it hands back is a refusal for good.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import Envelope
from contracts import events as ev
from cso import consumer
from cso.consumer import Subscription, Verdicts
from cso.dispatch import HandlerTable
from cso.reference import DivisionsHandler
from cso.service import Runtime

from . import domain, store, verdicts, waiting
from .losses import note_sources
from .record import record_batch
from .verdicts import in_event

# What the transaction in progress applied or parked facts for (waiting.Settled.unchecked), kept
# until the consumer has committed it and calls `after_commit`: per task, as each consumer pulls
# and applies its batches in a task of its own, one after another (cso/consumer.py). Keys left by
# a transaction that rolled back are looked at after the next commit: for nothing, at no harm.
_UNCHECKED: ContextVar[frozenset[str]] = ContextVar("registry_unchecked", default=frozenset())


def telling(runtime: Runtime, room: waiting.Room) -> Callable[[AsyncConnection, waiting.Settled], Awaitable[None]]:
    """What the room decided outside a batch (the sweep, the check after a commit), told:
    receipts, and the relay woken."""

    async def tell(conn: AsyncConnection, settled: waiting.Settled) -> None:
        await verdicts.tell(conn, runtime.topology, room.clock, settled)
        if (settled.accepted or settled.refused) and runtime.relay:
            runtime.relay.notify()

    return tell


class Rechecking:
    """The check after a commit (waiting.rechecking): what the committed transaction applied or
    parked facts for, looked at again in a short transaction of its own."""

    def __init__(self, runtime: Runtime, room: waiting.Room) -> None:
        self.runtime, self.room = runtime, room
        self.tell = telling(runtime, room)

    @staticmethod
    def note(settled: waiting.Settled) -> None:
        """In the transaction: what to look at again once it commits."""
        _UNCHECKED.set(_UNCHECKED.get() | settled.unchecked)

    async def after_commit(self, engine: AsyncEngine) -> None:
        keys = _UNCHECKED.get()
        _UNCHECKED.set(frozenset())
        if keys:
            await waiting.rechecking(engine, self.room, self.tell, keys)


def to_consumer(refusal: domain.Rejected) -> consumer.Rejected:
    """A refusal of registry's rules as the consumer takes it (its field named as in the event)."""
    refusal = in_event(refusal)
    if isinstance(refusal, domain.NotYet):
        return consumer.NotYet(refusal.field, refusal.message, waits_for=refusal.waits_for)
    if isinstance(refusal, domain.OutOfScope):
        return consumer.OutOfScope(refusal.field, refusal.message, code=refusal.code)
    return consumer.Rejected(refusal.field, refusal.message, code=refusal.code)


class FactsHandler(Rechecking):
    """Facts published by outside systems on `cso.intake.…`: decided in order and saved as one
    batch (record.record_batch); a rejected fact leaves nothing behind while its batch commits. A
    fact that cannot be decided yet waits in the room (waiting.py) and is acked; facts waiting for
    what this batch applied are decided in its transaction, and once it committed, those a
    concurrent transaction kept from it (`after_commit`). Every verdict gets a receipt
    (verdicts.py)."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, consumer.Rejected]:
        results = await record_batch(conn, events, self.runtime.topology)
        settled = await self.room.settle(conn, list(zip(events, results, strict=True)))
        self.note(settled)
        # Receipts (verdicts.py, receipts.py) and loss announcements (losses.py) read these.
        await note_sources(conn, events)
        await verdicts.tell(conn, self.runtime.topology, self.room.clock, settled)
        if settled.accepted and self.runtime.relay:
            self.runtime.relay.notify()
        # The consumer dead-letters this batch's refusals; those of facts woken from the room were
        # staged by tell (their messages were acked when they were parked).
        return {e.event_id: to_consumer(r) for e, r, from_room in settled.refused if not from_room}


class NotAFactHandler:
    """An event on intake that is no registry fact: refused (`not_a_registry_fact`), with a receipt
    to its publisher and a dead letter."""

    def __init__(self, runtime: Runtime, clock: waiting.Clock) -> None:
        self.runtime, self.clock = runtime, clock

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, consumer.Rejected]:
        refused = [(e, domain.Rejected("type", f"{e.type} is not a registry fact", code="not_a_registry_fact"))
                   for e in events]
        await note_sources(conn, events)
        await verdicts.tell(conn, self.runtime.topology, self.clock, waiting.Settled(), refused)
        return {e.event_id: to_consumer(r) for e, r in refused}


class Waking(Rechecking):
    """What registry does once a county's divisions are kept (cso.reference.DivisionsHandler's
    `then`): the facts that waited for them are decided in the same transaction, with their
    receipts, and once it committed, those a concurrent transaction kept from it (`after_commit`)."""

    async def __call__(self, conn: AsyncConnection, counties: set[str]) -> None:
        settled = await self.room.settle(conn, [], keys=counties)
        self.note(settled)
        if settled.accepted or settled.refused:
            await self.tell(conn, settled)


class DivisionChangesHandler:
    """DivisionChanged: each change is kept by code and day (a redelivery keeps it once), and the
    records at a code it retires (organizations, hubs, bases, party organizations, funded
    projects) move to the code standing for it now, with an audit row each keeping the old code.
    Facts naming a retired code are checked against the kept changes (domain/divisions.py)."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, consumer.Rejected]:
        rows: list[dict[str, Any]] = [{"code": c.code, "effective_on": c.effective_on, "change": c.change,
                 "successor_code": c.successor_code, "name": c.name, "event_id": e.event_id}
                for e in events if isinstance(c := e.payload, ev.DivisionChanged)]
        if rows:
            await store.keep_changes(conn, rows)
            # Every county of the batch, so a change that arrived before its chain's next link
            # (in another batch) is followed through when that link comes.
            retired = await store.retired_codes(conn, sorted({r["code"][:6] for r in rows}))
            await store.follow_changes(conn, retired, source="divisions")
        return {}


@dataclass(frozen=True)
class Consumes:
    """A subscription of registry, its handler table, and who hears of what no handler sees."""

    subscription: Subscription
    table: HandlerTable
    verdicts: Verdicts | None = None


def tables(runtime: Runtime, room: waiting.Room) -> list[Consumes]:
    """Every event registry consumes -> its handler."""
    facts = FactsHandler(runtime, room)
    topology = runtime.topology
    intake = HandlerTable({
        ev.OrganizationFiled: facts,
        ev.OrganizationRegistered: facts,
        ev.OrganizationUpdated: facts,
        ev.OrganizationDeregistered: facts,
        ev.HubEstablished: facts,
        ev.HubDissolved: facts,
        ev.IncubationBaseOpened: facts,
        ev.IncubationBaseClosed: facts,
        ev.PartyOrganizationFormed: facts,
        ev.PartyOrganizationDissolved: facts,
        ev.ProjectFunded: facts,
        ev.FundedProjectEnded: facts,
        ev.FacilityOpened: facts,
        ev.FacilityClosed: facts,
    }, otherwise=NotAFactHandler(runtime, room.clock))
    divisions = HandlerTable({
        ev.DivisionsImported: DivisionsHandler(store.DIVISIONS, then=Waking(runtime, room)),
        ev.DivisionChanged: DivisionChangesHandler(),
    })
    return [
        Consumes(Subscription("CSO_INTAKE", topology.context_subjects("intake"), "registry-intake",
                              partitionable=True), intake,   # by province: CSO_PARTITIONS (cso/partitions.py)
                 # Receipts of what the handlers never see: broken messages, event ids taken before.
                 verdicts=verdicts.IntakeVerdicts(topology, room.clock)),
        Consumes(Subscription("CSO_DIVISIONS", topology.context_subjects("divisions"), "registry-divisions"),
                 divisions),
    ]


def subscribe(runtime: Runtime, room: waiting.Room) -> None:
    """Consume every subscription of `tables` when the runtime starts."""
    for consumes in tables(runtime, room):
        runtime.consume(consumes.subscription, consumes.table, verdicts=consumes.verdicts)
