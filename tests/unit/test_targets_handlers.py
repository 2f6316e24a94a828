"""targets' handler table (services/targets/handlers.py): each subscription names the facts it
counts, every one of them a fact with an entity (domain/entities.py), and an import of divisions
tells the coalescer that regions may have changed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date
from typing import Any
from uuid import uuid4

import pytest

from contracts import Envelope, Topology, make_event
from contracts import events as ev
from services.targets import handlers, projection
from services.targets.domain import entities as ent


def _tables() -> dict[str, Any]:
    return {c.subscription.durable: c for c in handlers.tables(Topology(""), lambda: None)}


def test_each_stream_names_the_facts_targets_counts() -> None:
    consumes = _tables()
    assert set(consumes) == {"targets-registry", "targets-training", "targets-divisions"}
    assert consumes["targets-registry"].subscription.stream == "CSO_REGISTRY"
    registry = consumes["targets-registry"].table
    assert isinstance(registry.handler_of("OrganizationFiled"), handlers.CountFacts)
    assert registry.handler_of("DivisionChanged") is None           # acknowledged, no effect
    training = consumes["targets-training"].table
    assert isinstance(training.handler_of("TrainingCompleted"), handlers.CountFacts)
    assert training.handler_of("TrainingSessionScheduled") is None
    assert isinstance(consumes["targets-divisions"].table.handler_of("DivisionsImported"), handlers.ImportDivisions)


class _Anything:
    """Any field's value: every attribute of it is itself, it reads as "x", a slice of it is itself
    and it is as long as a community's code (DivisionChanged's guard `len(code) > 6` lets it through)."""

    def __getattr__(self, _: str) -> _Anything:
        return self

    def __len__(self) -> int:
        return 12

    def __getitem__(self, _: object) -> _Anything:
        return self

    def __str__(self) -> str:
        return "x"


def test_every_type_a_table_counts_has_an_entity() -> None:
    # A type in a table that domain/entities.py does not know would be acknowledged and counted
    # as nothing; a fact targets keeps but no table names would never arrive.
    counted = {payload for consumes in _tables().values() for payload in consumes.table.handlers}
    for payload in ev.PAYLOAD_BY_TYPE.values():
        sample = payload.model_construct(**{f: _Anything() for f in payload.model_fields})
        assert (ent.entity_key(sample) is not None) == (payload in counted), payload.TYPE


def test_an_import_of_divisions_tells_that_regions_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[int] = []

    async def apply_facts(_: Any, events: Sequence[Envelope[Any]]) -> set[str]:
        applied.append(len(events))
        return set()

    monkeypatch.setattr(projection, "apply_facts", apply_facts)
    told: list[bool] = []
    table = handlers.tables(Topology(""), lambda: told.append(True))[2].table
    hub = make_event(ev.HubEstablished(hub_id=uuid4(), organization_id=uuid4(), name="枢纽",
                                       region_code="510681001", established_on=date(2023, 1, 1)), source="t")
    assert asyncio.run(table.apply(None, [hub])) == {}  # type: ignore[arg-type]
    assert (applied, told) == ([], [])                  # not a divisions event: nothing
    handler = table.handler_of("DivisionsImported")
    assert handler is not None
    assert asyncio.run(handler.apply(None, [hub])) == {}  # type: ignore[arg-type]
    assert (applied, told) == ([1], [True])
