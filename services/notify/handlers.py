"""notify's handler table: every event notify consumes, and the handler that applies it.

`tables()` is the table: for each stream notify consumes (targets', registry's, training's and the
divisions), event type -> handler. An event type a table does not name is no business of notify's:
not delivered (the runtime filters each consumer to its table's types, cso/dispatch.py). Of
registry's and training's events, those no live subscription can match by subject are acked
unparsed (`Screened`).

- `Notices`: an event a subscription may name (domain.SUBSCRIBABLE) becomes, in the consumer's
  transaction, a delivery per channel of each subscription it reaches (or a digest item).
- `Deadlines`: what targets' events say of a target's or a task's deadline is kept, to be reminded
  of at each subscription's own lead times (routing.Scheduler.reminders); an accepted task's is
  dropped.
- `DivisionNames`: the names of the divisions, to name a region by its full path.
- `FollowDivisions`: a subscription to a region merged or recoded follows it to its successor.

notify refuses nothing it consumes (a message it cannot read is dead-lettered by the consumer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import Envelope, ancestors
from contracts import events as ev
from cso.consumer import Handler, Rejected, Subscription
from cso.dispatch import HandlerTable
from cso.service import Runtime

from . import store
from .domain import SUBSCRIBABLE, Notice, Screen, matches
from .routing import Clock, deadline_of, route, settled_task, target_info
from .sender import Sender

# The streams notify consumes, and the context named in each durable (notify-<context>).
CONSUMED = (("CSO_TARGETS", "targets"), ("CSO_REGISTRY", "registry"), ("CSO_TRAINING", "training"),
            ("CSO_DIVISIONS", "divisions"))


class Notices:
    """Events subscriptions name: a delivery per channel of each subscription reached (or a digest
    item), before anything is sent; the sender is woken once the batch commits."""

    def __init__(self, clock: Clock, sender: Sender) -> None:
        self.clock, self.sender = clock, sender

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        relevant = [e for e in events if e.type in SUBSCRIBABLE]
        if not relevant:
            return {}
        subscribers = await store.subscribers_for(conn, {e.type for e in relevant})
        if not subscribers:
            return {}
        names = await store.names(conn, {a for e in relevant for a in ancestors(e.region)})
        queued = 0
        for envelope in relevant:
            payload = envelope.payload
            status = payload.status.value if isinstance(payload, ev.TargetStatusChanged) else None
            reached = [s for s in subscribers
                       if matches(s.rule, envelope.type, envelope.region, envelope.recorded_at, status)]
            if not reached:
                continue
            notice = Notice(event_id=envelope.event_id, kind=envelope.type, region=envelope.region,
                            occurred_at=envelope.occurred_at, payload=ev.payload_fields(payload),
                            target=target_info(payload))
            queued += await route(conn, notice, reached, names, self.clock.now())
        if queued:
            # The batch commits right after this returns: wake the sender just after that (it also
            # polls, so a slow commit costs at most one poll interval).
            asyncio.get_running_loop().call_later(0.05, self.sender.wake)
        return {}


class Deadlines:
    """Targets' and tasks' deadlines, kept from the events that tell them (the latest wins)."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        await store.save_deadlines(conn, [d for e in events if (d := deadline_of(e)) is not None])
        await store.drop_deadlines(conn, [k for e in events if (k := settled_task(e)) is not None])
        return {}


class DivisionNames:
    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        for envelope in events:
            if isinstance(envelope.payload, ev.DivisionsImported):
                await store.upsert_divisions(conn, envelope.payload)
        return {}


class FollowDivisions:
    """DivisionChanged: a subscription to a region merged or recoded follows it to its successor
    (a county recoded to a district, 县改区; a township transferred to another county), so its
    subscriber hears of the records registry moved there and of what is filed there from then on.
    Renames and abolitions move nothing."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        for envelope in events:
            change = envelope.payload
            if isinstance(change, ev.DivisionChanged) and change.change in ("merged", "recoded") \
                    and change.successor_code:
                await store.follow_division_change(conn, change.code, change.successor_code)
        return {}


class Both:
    """Two handlers of the same events, in order, in the same transaction."""

    def __init__(self, first: Handler, then: Handler) -> None:
        self.first, self.then = first, then

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        return await self.first.apply(conn, events) | await self.then.apply(conn, events)


class Screened(HandlerTable):
    """A table for registry's or training's events whose consumer first asks, by subject, whether
    any live subscription can match (domain.Screen): the others are acked unparsed (cso/consumer.py)."""

    async def screen(self, engine: AsyncEngine) -> Screen:
        """Read once a batch, after it was pulled: an event recorded after a subscription was made
        is pulled after it too, so the screen sees that subscription as the batch's transaction does."""
        async with engine.connect() as conn:
            return Screen(await store.subscribed_regions(conn))


@dataclass(frozen=True)
class Consumes:
    """A subscription of notify and its handler table."""

    subscription: Subscription
    table: HandlerTable


def tables(runtime: Runtime, clock: Clock, sender: Sender) -> list[Consumes]:
    """Every event notify consumes -> its handler."""
    notices, deadlines = Notices(clock, sender), Deadlines()
    by_context: dict[str, HandlerTable] = {
        "targets": HandlerTable({
            ev.TargetStatusChanged: Both(deadlines, notices),
            ev.TargetDeadlineApproaching: deadlines,
            ev.TaskDeadlineApproaching: deadlines,
            ev.TaskStatusChanged: Both(deadlines, notices),
            ev.CoverageChanged: notices,
            ev.TaskOverdue: notices,
            ev.PlanAccepted: notices,
        }),
        "registry": Screened({
            ev.OrganizationFiled: notices,
            ev.OrganizationRegistered: notices,
            ev.OrganizationUpdated: notices,
            ev.OrganizationDeregistered: notices,
            ev.HubEstablished: notices,
            ev.HubDissolved: notices,
            ev.IncubationBaseOpened: notices,
            ev.IncubationBaseClosed: notices,
            ev.PartyOrganizationFormed: notices,
            ev.PartyOrganizationDissolved: notices,
        }),
        "training": Screened({
            ev.TrainingSessionScheduled: notices,
            ev.TrainingCompleted: notices,
            ev.TalentPoolMemberAdded: notices,
            ev.TalentPoolMemberRemoved: notices,
        }),
        "divisions": HandlerTable({ev.DivisionsImported: DivisionNames(), ev.DivisionChanged: FollowDivisions()}),
    }
    topology = runtime.topology
    return [Consumes(Subscription(stream, topology.context_subjects(context), f"notify-{context}"),
                     by_context[context]) for stream, context in CONSUMED]


def subscribe(runtime: Runtime, clock: Clock, sender: Sender) -> None:
    """Consume every subscription of `tables` when the runtime starts."""
    for consumes in tables(runtime, clock, sender):
        runtime.consume(consumes.subscription, consumes.table)
