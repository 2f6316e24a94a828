"""Targets announces its own deadlines on real NATS and PostgreSQL, on a controlled clock: a target
added with `PUT /targets` gets TargetDeadlineApproaching at each lead of contracts'
DEADLINE_LEADS it reaches (60 days when first seen 46 days before, then 30 and 7), once each, with
its title, and its TargetStatusChanged carries the title too."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import nats
import pytest

from cso.settings import Settings
from services.targets import app as targets
from services.targets.evaluation import Clock, lead_due
from tests.support import eventually, publish_divisions, recording, running

pytestmark = pytest.mark.integration

COUNTY = "510681"
TARGET = "test-deadline-orgs"
SPEC = {"id": TARGET, "title": "广汉市社会组织数", "figure": "orgs", "scope_region": COUNTY, "threshold": 3,
        "start": "2025-01-01", "deadline": "2025-12-31", "source": "test"}


def test_lead_due() -> None:
    deadline = date(2025, 12, 31)
    assert lead_due(deadline, date(2025, 11, 30), (30, 7)) is None       # 31 days: nothing yet
    assert lead_due(deadline, date(2025, 12, 1), (30, 7)) == 30
    assert lead_due(deadline, date(2025, 12, 20), (30, 7)) == 30         # started late: not the 7-day one yet
    assert lead_due(deadline, date(2025, 12, 24), (30, 7)) == 7
    assert lead_due(deadline, date(2025, 12, 31), (30, 7)) == 7          # the day itself
    assert lead_due(deadline, date(2026, 1, 1), (30, 7)) is None         # past
    # The contracts' ladder: a year ahead the deadline is announced first (reminders at any lead).
    assert lead_due(deadline, date(2024, 12, 29)) is None              # 367 days
    assert lead_due(deadline, date(2024, 12, 30)) == 366
    assert lead_due(deadline, date(2025, 12, 20)) == 14 and lead_due(deadline, date(2025, 12, 31)) == 1


async def test_a_target_put_over_http_announces_its_deadline(settings: Settings, nc: nats.NATS) -> None:
    await asyncio.to_thread(targets.run_migrations, settings)
    clock = Clock(fixed=date(2025, 11, 15))
    t = settings.topology
    async with running(lambda s: targets.create_app(s, clock), settings) as (app, api), \
            recording(nc, t.context_subjects("targets"), t.stream("CSO_TARGETS")) as bus:
        coalescer = app.state.coalescer
        await publish_divisions(nc, t)
        assert (await api.put(f"/targets/{TARGET}", json=SPEC)).status_code == 200
        mine = f"{TARGET}@{COUNTY}"

        def of(type_: str) -> list[dict[str, Any]]:
            return [e["payload"] for e in bus.events(type_) if e["payload"]["target_id"] == mine]

        def holds(check: Any) -> Any:
            async def poll() -> Any:
                return check()
            return poll

        await eventually(holds(lambda: of("TargetStatusChanged")), timeout=60, interval=0.2)
        changed = of("TargetStatusChanged")[0]
        assert (changed["title"], changed["comparison"]) == ("广汉市社会组织数", ">=")

        async def evaluated(day: date) -> None:
            clock.fixed = day
            await eventually(holds(lambda: coalescer.evaluated_on == day), timeout=60, interval=0.1)

        # First seen 46 days ahead: the 60-day lead (the nearest reached), with the days left.
        await eventually(holds(lambda: of("TargetDeadlineApproaching")), timeout=30, interval=0.1)
        await evaluated(date(2025, 11, 30))      # 31 days ahead: nothing more yet
        assert [(a["lead_days"], a["days_ahead"]) for a in of("TargetDeadlineApproaching")] == [(60, 46)]
        await evaluated(date(2025, 12, 1))
        await eventually(holds(lambda: len(of("TargetDeadlineApproaching")) == 2), timeout=30, interval=0.1)
        first = of("TargetDeadlineApproaching")[1]
        assert {k: first[k] for k in ("title", "region_code", "metric", "threshold", "comparison",
                                       "deadline", "days_ahead", "lead_days")} == {
            "title": "广汉市社会组织数", "region_code": COUNTY, "metric": "orgs", "threshold": 3,
            "comparison": ">=", "deadline": "2025-12-31", "days_ahead": 30, "lead_days": 30}
        await evaluated(date(2025, 12, 2))       # the 30-day one is not repeated
        await evaluated(date(2025, 12, 26))      # 5 days ahead: the 7-day one (the 14-day one passed unseen)
        await eventually(holds(lambda: len(of("TargetDeadlineApproaching")) == 3), timeout=30, interval=0.1)
        assert of("TargetDeadlineApproaching")[2]["days_ahead"] == 5
        # A resync (a new definition) re-evaluates the day: nothing announced twice.
        assert (await api.put(f"/targets/{TARGET}", json=SPEC | {"threshold": 4})).status_code == 200
        await evaluated(date(2025, 12, 27))
        assert [(a["lead_days"], a["days_ahead"]) for a in of("TargetDeadlineApproaching")] == [
            (60, 46), (30, 30), (7, 5)]
