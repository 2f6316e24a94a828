"""targets' events in: the one table from an event type to what targets does with it.

Every event targets reads arrives on one of `SUBSCRIPTIONS` (registry's, training's and the
divisions' streams); a batch is applied in one transaction by `EventsIn`, which hands each handler
of `HANDLERS` the batch's events of its types, in arrival order. An event type not in the table is
acknowledged and has no effect (registry's DivisionChanged, training's TrainingSessionScheduled…).

A module that counts a new kind of fact adds its event types here, with the handler that applies
them (most count as facts: `count_facts`, after `domain/entities.py` knows their entity and date).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope
from contracts import events as ev
from cso.consumer import Rejected

from . import projection


@dataclass
class Applied:
    """What a handler's part of a batch changed, for the service to act on after it."""

    moved: set[str] = field(default_factory=set)   # regions whose coverage moved
    regions_changed: bool = False                   # divisions were imported: targets expand again

    def __or__(self, other: Applied) -> Applied:
        return Applied(self.moved | other.moved, self.regions_changed or other.regions_changed)


Handler = Callable[[AsyncConnection, Sequence[Envelope[Any]]], Awaitable[Applied]]


async def count_facts(conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> Applied:
    """Record the facts and move coverage by the affected entities' new timelines
    (projection.apply_facts)."""
    return Applied(moved=await projection.apply_facts(conn, events))


async def import_divisions(conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> Applied:
    """Divisions count like any fact (a county's townships and communities), and may add regions
    that tier-wide targets expand over."""
    return Applied(moved=await projection.apply_facts(conn, events), regions_changed=True)


HANDLERS: dict[type[ev.Payload], Handler] = {
    # registry
    ev.OrganizationFiled: count_facts,
    ev.OrganizationRegistered: count_facts,
    ev.OrganizationUpdated: count_facts,
    ev.OrganizationDeregistered: count_facts,
    ev.HubEstablished: count_facts,
    ev.HubDissolved: count_facts,
    ev.IncubationBaseOpened: count_facts,
    ev.IncubationBaseClosed: count_facts,
    ev.PartyOrganizationFormed: count_facts,
    ev.PartyOrganizationDissolved: count_facts,
    # training
    ev.TalentPoolMemberAdded: count_facts,
    ev.TalentPoolMemberRemoved: count_facts,
    ev.TrainingCompleted: count_facts,
    ev.QualificationExamRecorded: count_facts,
    ev.OutstandingOrganizationSelected: count_facts,
    # the divisions importer
    ev.DivisionsImported: import_divisions,
}

# (stream, context whose subjects targets reads): each gets its durable consumer `targets-<context>`.
SUBSCRIPTIONS: tuple[tuple[str, str], ...] = (
    ("CSO_REGISTRY", "registry"), ("CSO_TRAINING", "training"), ("CSO_DIVISIONS", "divisions"))


class EventsIn:
    """The consumer handler (cso/consumer.py) of every stream targets reads: dispatches a batch
    through `table`, then tells `on_applied` what changed (inside the batch's transaction)."""

    def __init__(self, table: Mapping[type[ev.Payload], Handler] = HANDLERS,
                 on_applied: Callable[[Applied], None] | None = None) -> None:
        self.table, self.on_applied = table, on_applied

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        groups: dict[Handler, list[Envelope[Any]]] = {}
        for e in events:
            if (handler := self.table.get(type(e.payload))) is not None:
                groups.setdefault(handler, []).append(e)
        applied = Applied()
        for handler, mine in groups.items():
            applied |= await handler(conn, mine)
        if self.on_applied is not None:
            self.on_applied(applied)
        return {}
