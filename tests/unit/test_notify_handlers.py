"""notify's handler table: every event a subscription may name has a handler that turns it into
notices, targets' deadline events are kept as deadlines, and nothing else is taken."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from contracts import Topology
from contracts import events as ev
from services.notify import handlers
from services.notify.domain import REMINDERS, SUBSCRIBABLE
from services.notify.routing import Clock


def table() -> dict[str, Any]:
    runtime = SimpleNamespace(topology=Topology(""), relay=None)
    consumes = handlers.tables(runtime, Clock(), SimpleNamespace())  # type: ignore[arg-type]
    return {c.subscription.durable: c.table for c in consumes}


def handler_kinds(handler: Any) -> set[type]:
    if isinstance(handler, handlers.Both):
        return handler_kinds(handler.first) | handler_kinds(handler.then)
    return {type(handler)}


def test_every_subscribable_event_reaches_notices() -> None:
    by_durable = table()
    assert set(by_durable) == {f"notify-{context}" for _, context in handlers.CONSUMED}
    for kind in SUBSCRIBABLE:
        if kind in REMINDERS:
            continue        # made by notify itself from the deadlines it keeps
        context = next(p.CONTEXT for p in ev.PAYLOADS if p.TYPE == kind)
        found = by_durable[f"notify-{context}"].handler_of(kind)
        assert found is not None and handlers.Notices in handler_kinds(found), kind


def test_deadlines_come_from_targets_events() -> None:
    targets = table()["notify-targets"]
    for kind in ("TargetStatusChanged", "TargetDeadlineApproaching", "TaskDeadlineApproaching",
                 "TaskStatusChanged"):
        assert handlers.Deadlines in handler_kinds(targets.handler_of(kind)), kind
    assert table()["notify-divisions"].handler_of("DivisionsImported") is not None
    assert isinstance(table()["notify-divisions"].handler_of("DivisionChanged"), handlers.FollowDivisions)
    # Not notify's business: acknowledged, no effect.
    assert targets.handler_of("NotificationSent") is None
    assert table()["notify-training"].handler_of("QualificationExamRecorded") is None
