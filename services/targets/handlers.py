"""targets' handler table: every event targets consumes, and the handler that applies it.

`tables()` below is the table: for each of targets' subscriptions (registry's facts, training's
facts, the divisions), event type -> handler (cso/dispatch.py hands each handler its share of a
consumer's batch, in stream order, in the batch's transaction). An event type a table does not
name is acknowledged and has no effect (training's TrainingSessionScheduled…).

Every handler counts facts: it records them in the fact log and moves coverage by the affected
entities' new timelines (projection.apply_facts; what each type means is domain/entities.py). A
module that counts a new kind of fact adds its event types here, to the table of the stream they
arrive on, after `domain/entities.py` knows their entity and date.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope, Topology
from contracts import events as ev
from cso.consumer import Rejected, Subscription
from cso.dispatch import HandlerTable

from . import history, projection, store


class CountFacts:
    """Facts of organizations, hubs, bases, party organizations and people: recorded, and
    coverage moved by the difference they make."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        await projection.apply_facts(conn, events)
        return {}


class ImportDivisions:
    """A county's divisions count like any fact (its townships and communities), and may add
    regions that tier-wide targets expand over: `regions_changed` is told (the coalescer expands
    the catalogue again at its next step)."""

    def __init__(self, regions_changed: Callable[[], None]) -> None:
        self.regions_changed = regions_changed

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        await projection.apply_facts(conn, events)
        self.regions_changed()
        return {}


class ChangeDivisions(ImportDivisions):
    """A merge, recode, rename or abolition (DivisionChanged, history.record_changes), then
    counted as a fact of its county's divisions: organizations follow their community's new code
    from its day, a merged township's hubs serve its successor (domain/lineage.py)."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        # Divisions change under the same exclusive lock as an import (projection.apply_facts).
        await store.lock_divisions(conn, exclusive=True)
        await history.record_changes(conn, events)
        await projection.apply_facts(conn, events)
        self.regions_changed()
        return {}


@dataclass(frozen=True)
class Consumes:
    """A subscription of targets and its handler table."""

    subscription: Subscription
    table: HandlerTable


def tables(topology: Topology, regions_changed: Callable[[], None]) -> list[Consumes]:
    """Every event targets consumes -> its handler."""
    facts = CountFacts()
    registry = HandlerTable({
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
        ev.ProjectFunded: facts,            # funding (domain/funding.py)
        ev.FundedProjectEnded: facts,
        ev.FacilityOpened: facts,           # facilities (domain/entities.py)
        ev.FacilityClosed: facts,
    })
    training = HandlerTable({
        ev.TalentPoolMemberAdded: facts,
        ev.TalentPoolMemberRemoved: facts,
        ev.TrainingCompleted: facts,
        ev.QualificationExamRecorded: facts,
        ev.OutstandingOrganizationSelected: facts,
    })
    divisions = HandlerTable({
        ev.DivisionsImported: ImportDivisions(regions_changed),
        ev.DivisionChanged: ChangeDivisions(regions_changed),
    })
    # The facts' consumers split by province when replicas are partitioned (CSO_PARTITIONS,
    # cso/partitions.py); divisions, rare and national, stay one durable that every replica shares.
    return [Consumes(Subscription(stream, topology.context_subjects(context), f"targets-{context}",
                                  partitionable=hot), table)
            for stream, context, table, hot in (("CSO_REGISTRY", "registry", registry, True),
                                                ("CSO_TRAINING", "training", training, True),
                                                ("CSO_DIVISIONS", "divisions", divisions, False))]
