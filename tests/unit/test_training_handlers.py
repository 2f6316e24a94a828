"""training's handler table names what training consumes, and its refusals reach the consumer as
the consumer's own (dead-lettered naming the field)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from contracts import Topology
from cso import consumer
from cso.reference import DivisionsHandler
from services.training import domain, handlers


def runtime() -> Any:
    return SimpleNamespace(topology=Topology(""), relay=None)


def test_the_table_names_each_event_training_applies() -> None:
    by_durable = {c.subscription.durable: c.table for c in handlers.tables(runtime(), b"key")}
    assert set(by_durable) == {"training-divisions", "training-registry"}
    assert isinstance(by_durable["training-divisions"].handler_of("DivisionsImported"), DivisionsHandler)
    assert isinstance(by_durable["training-divisions"].handler_of("DivisionChanged"), handlers.DivisionChangesHandler)
    registry = by_durable["training-registry"]
    for kind in ("OrganizationFiled", "OrganizationRegistered", "OrganizationUpdated", "OrganizationDeregistered",
                 "HubEstablished"):
        assert isinstance(registry.handler_of(kind), handlers.RegistryHandler), kind
    # Not training's business: acknowledged with no effect.
    for kind in ("HubDissolved", "IncubationBaseOpened", "PartyOrganizationFormed"):
        assert registry.handler_of(kind) is None, kind


def test_refusals_become_the_consumers_naming_the_field() -> None:
    refused = handlers.to_consumer(domain.Rejected("organization_id", "no organization x is on record"))
    assert type(refused) is consumer.Rejected and (refused.field, refused.message) == (
        "organization_id", "no organization x is on record")
    assert isinstance(handlers.to_consumer(domain.OutOfScope("region", "outside")), consumer.OutOfScope)
