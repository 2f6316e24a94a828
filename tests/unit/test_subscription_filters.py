"""A consumer is filtered to the event types its handler acts on (cso.consumer.Subscription)."""

from __future__ import annotations

import pytest

from contracts import PAYLOAD_BY_TYPE, Topology
from cso.consumer import Subscription, handled_types

REGISTRY_TYPES = {t for t, p in PAYLOAD_BY_TYPE.items() if p.CONTEXT == "registry"}


def test_one_filter_per_type_of_the_subjects_context() -> None:
    subject = Topology("").context_subjects("registry")
    types = handled_types(subject, {"OrganizationFiled", "HubEstablished", "DivisionsImported"})
    # DivisionsImported is not a registry event: it never arrives on registry's stream.
    assert types == {"OrganizationFiled", "HubEstablished"}
    sub = Subscription("CSO_REGISTRY", subject, "training-registry", types)
    assert sub.filters() == ["cso.registry.hub_established.>", "cso.registry.organization_filed.>"]


def test_a_filter_matches_exactly_the_subjects_of_its_type() -> None:
    topology = Topology("t1")
    subject = topology.context_subjects("registry")
    sub = Subscription("CSO_REGISTRY", subject, "d", handled_types(subject, REGISTRY_TYPES))
    filters = sub.filters()
    assert len(filters) == len(REGISTRY_TYPES)

    def matches(pattern: str, subject: str) -> bool:
        p, s = pattern.split("."), subject.split(".")
        return p[-1] == ">" and len(s) >= len(p) and all(a in ("*", b) for a, b in zip(p[:-1], s, strict=False))

    for t in REGISTRY_TYPES:
        event = topology.event_subject(t, "511102001001")
        assert [f for f in filters if matches(f, event)] == [f"t1.{event.removeprefix('t1.').rsplit('.', 3)[0]}.>"]


def test_every_event_without_a_declared_set() -> None:
    subject = Topology("").context_subjects("registry")
    assert handled_types(subject, None) is None
    assert Subscription("CSO_REGISTRY", subject, "d").filters() == [subject]
    # None of its types is of this context: a consumer cannot be filtered to nothing.
    assert handled_types(subject, {"DivisionsImported"}) is None
    # Intake subjects carry the publisher's name before the event: not filtered by type.
    assert handled_types(Topology("").context_subjects("intake"), {"OrganizationFiled"}) is None


def test_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="OrganisationFiled"):
        handled_types(Topology("").context_subjects("registry"), {"OrganisationFiled"})
