"""targets' handler table (services/targets/handlers.py): a batch goes to each event type's
handler, in arrival order, once per handler; types not in the table have no effect."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date
from typing import Any
from uuid import uuid4

from contracts import Envelope, make_event
from contracts import events as ev
from services.targets import handlers
from services.targets.domain import entities as ent


def _hub(n: int) -> Envelope[Any]:
    return make_event(ev.HubEstablished(hub_id=uuid4(), organization_id=uuid4(), name=f"枢纽{n}",
                                        region_code="510681001", established_on=date(2023, 1, n)),
                      source="test")


def _dissolved() -> Envelope[Any]:
    return make_event(ev.HubDissolved(hub_id=uuid4(), dissolved_on=date(2023, 6, 1)), source="test",
                      region="510681001")


def test_a_batch_is_split_by_handler_in_arrival_order() -> None:
    seen: list[tuple[str, list[Any]]] = []

    def recorder(name: str, applied: handlers.Applied) -> handlers.Handler:
        async def handle(_: Any, events: Sequence[Envelope[Any]]) -> handlers.Applied:
            seen.append((name, [e.event_id for e in events]))
            return applied
        return handle

    table = {ev.HubEstablished: recorder("a", handlers.Applied({"510681"})),
             ev.HubDissolved: recorder("b", handlers.Applied({"5106"}, regions_changed=True))}
    told: list[handlers.Applied] = []
    batch = [_hub(1), _dissolved(), _hub(2)]
    assert asyncio.run(handlers.EventsIn(table, told.append).apply(None, batch)) == {}  # type: ignore[arg-type]
    assert seen == [("a", [batch[0].event_id, batch[2].event_id]), ("b", [batch[1].event_id])]
    assert told == [handlers.Applied({"510681", "5106"}, regions_changed=True)]

    # An event type the table does not name is passed over: no handler runs, nothing changed.
    seen.clear()
    told.clear()
    assert asyncio.run(handlers.EventsIn({}, told.append).apply(None, batch)) == {}  # type: ignore[arg-type]
    assert seen == [] and told == [handlers.Applied()]


def test_every_counted_type_names_its_entity() -> None:
    # The table and the domain agree: a type counted as a fact has an entity to count it under.
    hub = _hub(1).payload
    assert ent.entity_key(hub) == f"hub:{hub.hub_id}"
    assert handlers.HANDLERS[ev.DivisionsImported] is handlers.import_divisions
    assert ev.TrainingSessionScheduled not in handlers.HANDLERS
    assert ev.CoverageChanged not in handlers.HANDLERS
