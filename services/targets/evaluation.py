"""Figures and target statuses after coverage moves (coalesced) or a day passes.

Regions whose coverage moved are marked dirty in the batch's own transaction; a loop drains them at
most once a second, so a burst of events yields one CoverageChanged per region, not one per event.
Status changes are compared and written under a row lock, so replicas never emit one twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope, Topology, make_event
from contracts import events as ev
from cso import outbox
from cso.clock import Clock as Clock  # the runtime's, where api and app look for it

from . import history, store
from .domain.catalogue import TargetInstance, TargetSpec, at_current_codes, expand
from .domain.metrics import FIGURES, figure, figures
from .domain.status import evaluate
from .domain.status import inputs as status_inputs

log = logging.getLogger(__name__)
SCHEMA = store.SCHEMA
SOURCE = "cso-targets"

COVERAGE = Gauge("cso_coverage", "Coverage figures (province, city and county tiers only)",
                 ["region", "tier", "figure"])
TARGET_STATUS = Gauge("cso_target_status", "1 for the current status of a target in a region",
                      ["target", "region", "status"])
GAUGE_TIERS = {2: "province", 4: "city", 6: "county"}
# Days before a deadline that TargetDeadlineApproaching is published (contracts' ladder).
DEADLINE_LEADS: tuple[int, ...] = ev.DEADLINE_LEADS


def _instance_json(i: TargetInstance) -> str:
    # An instance without a definition of "new" is stored as it was before there was one, so it
    # keeps its version (a changed document starts a new one).
    return json.dumps({k: v.isoformat() if isinstance(v, date) else v
                       for k, v in dataclasses.asdict(i).items() if not (k in ("new", "counts") and v is None)})


def instance_from_json(data: dict[str, Any]) -> TargetInstance:
    fields: dict[str, Any] = {k: date.fromisoformat(v) if k in ("start", "deadline")
                              else tuple(v) if k in ("new", "counts") and v is not None else v
                              for k, v in data.items()}
    return TargetInstance(**fields)


async def sync_instances(conn: AsyncConnection, specs: Sequence[TargetSpec], today: date) -> int:
    """Expand the catalogue over today's divisions into instances (new regions get theirs). Each
    instance that is new, changed or gone gets a version from `today` (target_instance_version), so
    a past day is evaluated with the definition in force that day."""
    tiers: dict[tuple[str, str], list[str]] = {}
    # The regions a spec names, at their codes of today: a county recoded (县改区) keeps its targets.
    lineage = await history.lineage_for(conn, {r for s in specs for r in (s.scope_region, *(s.regions or ()))})
    if lineage:
        specs = [at_current_codes(s, lambda code: lineage.resolve(code, today)) for s in specs]

    def regions_of_tier(under: str, tier: str) -> list[str]:
        return tiers[(under, tier)]

    for spec in specs:
        if spec.scope_tier and (spec.scope_region, spec.scope_tier) not in tiers:
            tiers[(spec.scope_region, spec.scope_tier)] = await store.regions_of_tier(
                conn, spec.scope_region, spec.scope_tier)
    instances = [i for spec in specs for i in expand(spec, regions_of_tier)]
    stored = await store.instances_locked(conn)
    documents = [_instance_json(i) for i in instances]
    versions: list[tuple[str, str, str | None]] = [
        (i.instance_id, i.region, doc) for i, doc in zip(instances, documents, strict=True)
        if i.instance_id not in stored or stored[i.instance_id][1] != json.loads(doc)]
    kept = {i.instance_id for i in instances}
    versions += [(id_, region, None) for id_, (region, _) in sorted(stored.items()) if id_ not in kept]
    await store.add_instance_versions(conn, versions, today)
    await store.replace_instances(conn, instances, documents)
    return len(instances)


async def statuses(conn: AsyncConnection, instances: Sequence[TargetInstance], day: date,
                   live: bool = False) -> list[tuple[ev.TargetStatus, float | None]]:
    """Each instance's status and value on `day` (domain/status.py), from the figures at the end of
    the days it needs, all read in one statement. `live`: the figure now is today's coverage as
    it stands (coverage_now), not the sum of deltas up to `day`."""
    needs = [status_inputs(i, day, FIGURES[i.figure].yearly) for i in instances]
    at = await store.counters_on(conn, [(i.region, d) for i, n in zip(instances, needs, strict=True)
                                        for d in (n.days()[1:] if live and n.deadline is None
                                                  else n.days())])
    now = (await store.counters_now(conn, sorted({i.region for i, n in zip(instances, needs, strict=True)
                                                 if n.deadline is None})) if live else {})
    out = []
    for i, n in zip(instances, needs, strict=True):
        year_start = at[(i.region, n.year_start)] if n.year_start else None
        if n.deadline is not None:
            at_deadline = figure(i.figure, at[(i.region, n.deadline)], year_start, i.new, i.counts)
            out.append((evaluate(i, day, None, None, at_deadline), at_deadline))
            continue
        value = figure(i.figure, now[i.region] if live else at[(i.region, day)], year_start, i.new, i.counts)
        at_start = figure(i.figure, at[(i.region, n.start)], None, i.new, i.counts) if n.start else 0.0
        out.append((evaluate(i, day, value, at_start, None), value))
    return out


async def evaluate_instances(conn: AsyncConnection, topology: Topology, today: date,
                             regions: Iterable[str] | None = None) -> int:
    """Re-evaluate the instances of `regions` (all when None); stage an event per change."""
    rows = await store.statuses_locked(conn, regions)
    instances = [instance_from_json(data) for _, data, _ in rows]
    evaluated = await statuses(conn, instances, today, live=True)
    changes: list[tuple[Envelope[Any], str]] = []
    history: list[tuple[str, str, str | None, float | None]] = []
    for (instance_id, _, previous), instance, (status, value) in zip(rows, instances, evaluated, strict=True):
        for s in ev.TargetStatus:
            TARGET_STATUS.labels(instance.spec_id, instance.region, s.value).set(1 if s is status else 0)
        if previous == status.value:
            continue
        history.append((instance_id, status.value, previous, value))
        changes.append((make_event(ev.TargetStatusChanged(
            target_id=instance_id, region_code=instance.region, metric=instance.figure,
            previous_status=previous, status=status, value=value, threshold=instance.threshold,
            deadline=instance.deadline, title=instance.title, comparison=instance.comparison),
            source=SOURCE), instance_id))
    await store.save_statuses(conn, [(r[0], s.value, v) for r, (s, v) in zip(rows, evaluated, strict=True)])
    await store.add_history(conn, history, today)
    if regions is None:
        changes += await approaching(conn, [(i, s, v) for i, (s, v) in zip(instances, evaluated, strict=True)],
                                     today)
    await outbox.add(conn, SCHEMA, topology, changes)
    return len(changes)


def lead_due(deadline: date, today: date, leads: Sequence[int] = DEADLINE_LEADS) -> int | None:
    """The lead time reached today: the smallest one not yet passed. Starting late never announces
    a stale lead (20 days before: the 7-day one is not due yet, the 30-day one is)."""
    return ev.lead_reached(deadline, today, tuple(leads))


async def approaching(conn: AsyncConnection, evaluated: Sequence[tuple[TargetInstance, ev.TargetStatus,
                                                                          float | None]],
                      today: date) -> list[tuple[Envelope[Any], str]]:
    """Stage TargetDeadlineApproaching for each instance whose deadline is a lead time away; the
    deadline_notice key makes it once per instance, deadline and lead time (replicas, restarts)."""
    due = [(i, status, value, lead) for i, status, value in evaluated
           if (lead := lead_due(i.deadline, today)) is not None]
    if not due:
        return []
    claimed = await store.claim_deadline_notices(conn, [(i.instance_id, i.deadline, lead) for i, _, _, lead in due])
    return [(make_event(ev.TargetDeadlineApproaching(
        target_id=i.instance_id, region_code=i.region, title=i.title, metric=i.figure, threshold=i.threshold,
        comparison=i.comparison, deadline=i.deadline, days_ahead=(i.deadline - today).days, status=status,
        value=value, lead_days=lead), source=SOURCE), i.instance_id)
        for i, status, value, lead in due if (i.instance_id, i.deadline, lead) in claimed]


async def drain_dirty(conn: AsyncConnection, topology: Topology, today: date, limit: int = 5000) -> set[str]:
    """Take dirty regions (skipping those another replica holds), publish one CoverageChanged each,
    and re-evaluate their targets."""
    regions = await store.take_dirty(conn, limit)
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
