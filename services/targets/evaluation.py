"""Figures and target statuses after coverage moves (coalesced) or a day passes.

Regions whose coverage moved are marked dirty in the batch's own transaction; a loop drains them at
most once a second, so a burst of events yields one CoverageChanged per region, not one per event.
Status changes are compared and written under a row lock, so replicas never emit one twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Topology, make_event
from contracts import events as ev
from contracts.events import CHINA
from cso import outbox

from . import store
from .domain.catalogue import TargetInstance, TargetSpec, expand
from .domain.metrics import FIGURES, figure, figures
from .domain.status import evaluate

log = logging.getLogger(__name__)
SCHEMA = store.SCHEMA
SOURCE = "cso-targets"

COVERAGE = Gauge("cso_coverage", "Coverage figures (province, city and county tiers only)",
                 ["region", "tier", "figure"])
TARGET_STATUS = Gauge("cso_target_status", "1 for the current status of a target in a region",
                      ["target", "region", "status"])
GAUGE_TIERS = {2: "province", 4: "city", 6: "county"}


def china_today() -> date:
    return datetime.now(CHINA).date()


@dataclasses.dataclass
class Clock:
    """Today's date; tests and what-if runs move it."""

    fixed: date | None = None
    source: Callable[[], date] = china_today

    def today(self) -> date:
        return self.fixed or self.source()


def _instance_json(i: TargetInstance) -> str:
    return json.dumps({k: v.isoformat() if isinstance(v, date) else v
                       for k, v in dataclasses.asdict(i).items()})


def instance_from_json(data: dict[str, Any]) -> TargetInstance:
    return TargetInstance(**{k: date.fromisoformat(v) if k in ("start", "deadline") else v
                             for k, v in data.items()})


async def sync_instances(conn: AsyncConnection, specs: Sequence[TargetSpec]) -> int:
    """Expand the catalogue over today's divisions into instances (new regions get theirs)."""
    tiers: dict[tuple[str, str], list[str]] = {}

    def regions_of_tier(under: str, tier: str) -> list[str]:
        return tiers[(under, tier)]

    for spec in specs:
        if spec.scope_tier and (spec.scope_region, spec.scope_tier) not in tiers:
            tiers[(spec.scope_region, spec.scope_tier)] = await store.regions_of_tier(
                conn, spec.scope_region, spec.scope_tier)
    instances = [i for spec in specs for i in expand(spec, regions_of_tier)]
    ids = [i.instance_id for i in instances]
    await conn.execute(text(f"DELETE FROM {SCHEMA}.target_instance WHERE NOT (id = ANY(:ids))"),
                       {"ids": ids})
    if instances:
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.target_instance (id, target_id, region, figure, threshold, deadline, "
            "instance) SELECT * FROM unnest(CAST(:id AS text[]), CAST(:t AS text[]), CAST(:r AS text[]), "
            "CAST(:f AS text[]), CAST(:th AS float8[]), CAST(:d AS date[]), CAST(:i AS jsonb[])) "
            "ON CONFLICT (id) DO UPDATE SET threshold = excluded.threshold, deadline = excluded.deadline, "
            "figure = excluded.figure, instance = excluded.instance"),
            {"id": ids, "t": [i.spec_id for i in instances], "r": [i.region for i in instances],
             "f": [i.figure for i in instances], "th": [i.threshold for i in instances],
             "d": [i.deadline for i in instances], "i": [_instance_json(i) for i in instances]})
    return len(instances)


def _month_before(day: date) -> date:
    return day.replace(day=1) - timedelta(days=1)


async def values(conn: AsyncConnection, i: TargetInstance, today: date
                 ) -> tuple[float | None, float | None, float | None]:
    """The instance's figure now, at its start and at its deadline."""
    year_start = None
    if FIGURES[i.figure].yearly:
        year_start = (await store.counters_as_of(conn, [i.region], date((i.year or i.start.year) - 1, 12, 1)))[i.region]
    if today > i.deadline:
        at_deadline = (await store.counters_as_of(conn, [i.region], i.deadline))[i.region]
        return None, None, figure(i.figure, at_deadline, year_start)
    now = (await store.counters_now(conn, [i.region]))[i.region]
    at_start = (await store.counters_as_of(conn, [i.region], _month_before(i.start)))[i.region]
    start_value = 0.0 if year_start is not None else figure(i.figure, at_start)
    return figure(i.figure, now, year_start), start_value, None


async def evaluate_instances(conn: AsyncConnection, topology: Topology, today: date,
                             regions: Iterable[str] | None = None) -> int:
    """Re-evaluate the instances of `regions` (all when None); stage an event per change."""
    rows = (await conn.execute(text(
        f"SELECT id, instance, status FROM {SCHEMA}.target_instance "
        "WHERE (CAST(:all AS boolean) OR region = ANY(:r)) ORDER BY id FOR UPDATE"),
        {"all": regions is None, "r": sorted(regions or [])})).all()
    changes = []
    for instance_id, data, previous in rows:
        instance = instance_from_json(data)
        now, at_start, at_deadline = await values(conn, instance, today)
        status = evaluate(instance, today, now, at_start, at_deadline)
        value = at_deadline if today > instance.deadline else now
        await conn.execute(text(
            f"UPDATE {SCHEMA}.target_instance SET status = :s, value = :v, evaluated_at = now() "
            "WHERE id = :id"), {"s": status.value, "v": value, "id": instance_id})
        for s in ev.TargetStatus:
            TARGET_STATUS.labels(instance.spec_id, instance.region, s.value).set(1 if s is status else 0)
        if previous == status.value:
            continue
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.target_history (instance_id, status, previous_status, value, on_day) "
            "VALUES (:id, :s, :p, :v, :d)"),
            {"id": instance_id, "s": status.value, "p": previous, "v": value, "d": today})
        changes.append((make_event(ev.TargetStatusChanged(
            target_id=instance_id, region_code=instance.region, metric=instance.figure,
            previous_status=previous, status=status, value=value, threshold=instance.threshold,
            deadline=instance.deadline), source=SOURCE), instance_id))
    await outbox.add(conn, SCHEMA, topology, changes)
    return len(changes)


async def drain_dirty(conn: AsyncConnection, topology: Topology, today: date, limit: int = 5000) -> set[str]:
    """Take dirty regions (skipping those another replica holds), publish one CoverageChanged each,
    and re-evaluate their targets."""
    # Marks taken are deleted by row (ctid), never by region: a mark a batch adds meanwhile stays for
    # the next step, so a move committed after this step read the counters is published too.
    regions = set((await conn.execute(text(
        f"DELETE FROM {SCHEMA}.dirty_region d USING (SELECT ctid FROM {SCHEMA}.dirty_region "
        "ORDER BY region LIMIT :n FOR UPDATE SKIP LOCKED) taken WHERE d.ctid = taken.ctid "
        "RETURNING d.region"), {"n": limit})).scalars())
    if not regions:
        return regions
    counters = await store.counters_now(conn, sorted(regions))
    events = []
    for region in sorted(regions):
        values_ = {k: v for k, v in figures(counters[region]).items() if v is not None}
        events.append((make_event(ev.CoverageChanged(region_code=region, figures=values_),
                                  source=SOURCE), region))
        if len(region) in GAUGE_TIERS:
            for name, v in values_.items():
                COVERAGE.labels(region, GAUGE_TIERS[len(region)], name).set(v)
    await outbox.add(conn, SCHEMA, topology, events)
    await evaluate_instances(conn, topology, today, regions)
    return regions
