"""Handler tables (cso/dispatch.py) and registry's (services/registry/handlers.py): each handler gets
its share of a batch in stream order, once; a type the table does not name goes to `otherwise`, or
is applied as nothing; registry's table names every registry fact."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import Envelope, make_event
from contracts import events as ev
from cso import consumer
from cso.dispatch import HandlerTable
from cso.service import Runtime
from cso.settings import Settings
from services.registry import domain, handlers, waiting
from services.registry.record import REGISTRY_FACTS


class Recorder:
    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.refuse = refuse

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, consumer.Rejected]:
        self.calls.append([e.payload.name for e in events])
        return {e.event_id: consumer.Rejected("type", "no") for e in events} if self.refuse else {}


def filed(name: str) -> Envelope[Any]:
    return make_event(ev.OrganizationFiled(organization_id=uuid.uuid4(), name=name, community_code="510681001014",
                                           category=ev.Category.CHARITY, filed_on="2024-03-01"), source="s")


def hub(name: str) -> Envelope[Any]:
    return make_event(ev.HubEstablished(hub_id=uuid.uuid4(), organization_id=uuid.uuid4(), region_code="510681001",
                                        name=name, established_on="2024-03-02"), source="s")


def test_each_handler_gets_its_share_once_in_stream_order() -> None:
    orgs, hubs = Recorder(), Recorder(refuse=True)
    table = HandlerTable({ev.OrganizationFiled: orgs, ev.HubEstablished: hubs})
    batch = [filed("a"), hub("h1"), filed("b"), hub("h2"), filed("c")]
    rejected = asyncio.run(table.apply(cast(AsyncConnection, None), batch))
    assert orgs.calls == [["a", "b", "c"]]
    assert hubs.calls == [["h1", "h2"]]
    assert set(rejected) == {batch[1].event_id, batch[3].event_id}


def test_a_type_the_table_does_not_name_goes_to_otherwise_or_is_ignored() -> None:
    orgs, rest = Recorder(), Recorder(refuse=True)
    batch = [hub("h"), filed("a")]
    assert asyncio.run(HandlerTable({ev.OrganizationFiled: orgs}).apply(cast(AsyncConnection, None), batch)) == {}
    assert orgs.calls == [["a"]]
    rejected = asyncio.run(HandlerTable({ev.OrganizationFiled: orgs}, otherwise=rest).apply(
        cast(AsyncConnection, None), batch))
    assert rest.calls == [["h"]] and set(rejected) == {batch[0].event_id}


class AfterCommit(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.after: list[object] = []

    async def after_commit(self, engine: AsyncEngine) -> None:
        self.after.append(engine)


def test_after_commit_reaches_each_handler_that_has_one_once() -> None:
    shared, rest, plain = AfterCommit(), AfterCommit(), Recorder()
    table = HandlerTable({ev.OrganizationFiled: shared, ev.OrganizationUpdated: shared, ev.HubEstablished: plain},
                         otherwise=rest)
    engine = cast(AsyncEngine, object())
    asyncio.run(table.after_commit(engine))
    assert shared.after == [engine] and rest.after == [engine]


def test_registry_table_names_every_registry_fact_and_divisions() -> None:
    runtime = Runtime("registry", "registry", Settings(auth="off"))
    room = waiting.Room(runtime.topology, waiting.utc_now, timedelta(days=7))
    consumed = {c.subscription.durable: c for c in handlers.tables(runtime, room)}
    intake = consumed["registry-intake"].table
    assert set(intake.handlers) == set(REGISTRY_FACTS)
    assert all(isinstance(intake.handler_of(f.TYPE), handlers.FactsHandler) for f in REGISTRY_FACTS)
    assert isinstance(intake.handler_of("TrainingCompleted"), handlers.NotAFactHandler)
    assert consumed["registry-intake"].verdicts is not None
    divisions = consumed["registry-divisions"].table
    assert set(divisions.handlers) == {ev.DivisionsImported, ev.DivisionChanged}
    assert isinstance(divisions.handler_of("DivisionChanged"), handlers.DivisionChangesHandler)


def test_domain_refusals_become_the_consumers_at_the_edge() -> None:
    waits = handlers.to_consumer(domain.NotYet("organization_id", "no org", waits_for="organization:x"))
    assert isinstance(waits, consumer.NotYet) and waits.waits_for == "organization:x"
    scoped = handlers.to_consumer(domain.OutOfScope("region", "outside"))
    assert isinstance(scoped, consumer.OutOfScope)
    plain = handlers.to_consumer(domain.Rejected("registered_on", "before", code="date_order"))
    assert type(plain) is consumer.Rejected
    assert (plain.field, plain.code) == ("payload.registered_on", "date_order")


def test_registry_readme_names_every_event_it_consumes_and_its_handler() -> None:
    from pathlib import Path

    readme = (Path(handlers.__file__).parent / "README.md").read_text(encoding="utf-8")
    events_in = readme.split("## Events in", 1)[1].split("## Events out", 1)[0]
    runtime = Runtime("registry", "registry", Settings(auth="off"))
    room = waiting.Room(runtime.topology, waiting.utc_now, timedelta(days=7))
    for consumed in handlers.tables(runtime, room):
        assert consumed.subscription.durable in events_in
        for payload, handler in consumed.table.handlers.items():
            assert f"`{payload.TYPE}`" in events_in, payload.TYPE
            assert type(handler).__name__ in events_in, type(handler).__name__
