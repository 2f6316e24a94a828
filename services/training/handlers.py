"""training's handler table: every event training consumes, and the handler that applies it.

`tables()` is the table: for each of training's subscriptions (division reference data on
CSO_DIVISIONS, registry's accepted facts on CSO_REGISTRY), event type -> handler. An event type a
table does not name is no business of training's: acknowledged, no effect (cso/dispatch.py).

Each handler runs in the consumer's transaction, beside the inbox that claims the batch's event
ids (cso/consumer.py). This is also the edge where training's own refusals (domain.Rejected)
become the consumer's `Rejected`, which dead-letters the event with its field and reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope
from contracts import events as ev
from cso import consumer
from cso.consumer import Subscription
from cso.dispatch import HandlerTable
from cso.reference import DivisionsHandler
from cso.service import Runtime

from . import domain, store
from .commands import today
from .record import Context, hub_leader, organization_facts

SERVICE = "training"


def to_consumer(refusal: domain.Rejected) -> consumer.Rejected:
    """A refusal of training's rules as the consumer takes it (dead-lettered naming the field)."""
    if isinstance(refusal, domain.OutOfScope):
        return consumer.OutOfScope(refusal.field, refusal.message)
    return consumer.Rejected(refusal.field, refusal.message)


class RegistryHandler:
    """registry's accepted facts: organizations (where they are, whether active: to link pool
    members and selections), and hubs with a leader, whose leader enters the pool of the hub's
    county. A hub leader is applied in a savepoint: a refused one leaves nothing."""

    def __init__(self, runtime: Runtime, pii_key: bytes) -> None:
        self.runtime, self.pii_key = runtime, pii_key

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, consumer.Rejected]:
        rejected: dict[UUID, consumer.Rejected] = {}
        staged = False
        ctx = Context(self.runtime.topology, self.pii_key, SERVICE, today())
        pending: list[Envelope[Any]] = []
        for envelope in events:
            fact = envelope.payload
            if not (isinstance(fact, ev.HubEstablished) and fact.leader_person_id is not None):
                pending.append(envelope)
                continue
            # A hub leader may refer to an organization of the same batch: save those first.
            await organization_facts(conn, pending)
            pending = []
            savepoint = await conn.begin_nested()
            try:
                staged = await hub_leader(conn, envelope, ctx) or staged
                await savepoint.commit()
            except domain.Rejected as e:
                await savepoint.rollback()
                rejected[envelope.event_id] = to_consumer(e)
        await organization_facts(conn, pending)
        if staged and self.runtime.relay:
            self.runtime.relay.notify()
        return rejected


class DivisionChangesHandler:
    """DivisionChanged: what training keeps at a code that was merged or recoded follows it, as
    registry's records do (registry moves its organizations without an event of theirs): an
    organization of a recoded community is in its new community, so a county's pool takes it; a
    county recoded to a district (县改区) keeps its pool under the new code. Each merge, recode or
    abolition is kept: a pool member or trainee added to a retired county on or after its day is
    refused, naming the successor. Renames change nothing."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, consumer.Rejected]:
        for envelope in events:
            change = envelope.payload
            if not isinstance(change, ev.DivisionChanged) or change.change == "renamed":
                continue
            # Kept, so that a command naming the county on or after its day is refused.
            await store.keep_division_change(conn, change.code, change.effective_on, change.change,
                                             change.successor_code)
            if change.successor_code:
                await store.follow_division_change(conn, change.code, change.successor_code)
        return {}


@dataclass(frozen=True)
class Consumes:
    """A subscription of training and its handler table."""

    subscription: Subscription
    table: HandlerTable


def tables(runtime: Runtime, pii_key: bytes) -> list[Consumes]:
    """Every event training consumes -> its handler."""
    topology = runtime.topology
    registry = RegistryHandler(runtime, pii_key)
    return [
        Consumes(Subscription("CSO_DIVISIONS", topology.context_subjects("divisions"), "training-divisions"),
                 HandlerTable({ev.DivisionsImported: DivisionsHandler(store.DIVISIONS),
                               ev.DivisionChanged: DivisionChangesHandler()})),
        Consumes(Subscription("CSO_REGISTRY", topology.context_subjects("registry"), "training-registry"),
                 HandlerTable({
                     ev.OrganizationFiled: registry,
                     ev.OrganizationRegistered: registry,
                     ev.OrganizationUpdated: registry,
                     ev.OrganizationDeregistered: registry,
                     ev.HubEstablished: registry,     # with a leader: the leader joins the pool
                 })),
    ]


def subscribe(runtime: Runtime, pii_key: bytes) -> None:
    """Consume every subscription of `tables` when the runtime starts."""
    for consumes in tables(runtime, pii_key):
        runtime.consume(consumes.subscription, consumes.table)
