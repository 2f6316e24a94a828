"""Rebuild every projection from targets' fact log, compare it with the live tables row for row,
and optionally put the rebuilt one in place, all while the consumers keep running. targets does
it by itself at start when the projection predates its code (`upgrade`: coverage kept before
communities were a tier, or kept per month before day-exact time, or before completions told
pool members from other trainees).

The comparison reads one REPEATABLE READ snapshot, so facts arriving meanwhile neither count in
the rebuild nor in the live tables it is compared with. `--apply` locks the projection tables for
the swap only: consumers wait (their facts are already committed to the log), then diff against the
rebuilt timelines, so nothing is lost or counted twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import PAYLOAD_BY_TYPE

from . import history, store
from .domain import coverage as cov
from .domain import entities as ent
from .domain.metrics import DERIVED

SCHEMA = store.SCHEMA
log = logging.getLogger(__name__)


@dataclass
class Report:
    entities: int = 0
    facts: int = 0
    rows: int = 0
    differences: list[tuple[tuple[str, str, date], int, int]] = field(default_factory=list)
    applied: bool = False

    @property
    def equal(self) -> bool:
        return not self.differences


async def _rebuilt(conn: AsyncConnection) -> tuple[dict[str, cov.Timeline], cov.Contribution, int]:
    facts: dict[str, list[ent.Fact]] = defaultdict(list)
    links: set[tuple[str, str]] = set()
    count = 0
    async for key, event_id, type_, occurred_at, payload in store.stream_facts(conn):
        p = PAYLOAD_BY_TYPE[type_].model_validate(payload)
        facts[key].append(ent.Fact(occurred_at, event_id, p))
        links.update(ent.memberships(key, p))
        count += 1
    kinds = await store.all_division_kinds(conn)
    lineage = await history.all_changes(conn)
    # A township that took over a merged one is served by what served it (domain/lineage.py).
    townships = {m for o, m in links if o.startswith(("hub:", "base:"))}
    townships |= {c for c in lineage.codes() if len(c) == 9}
    facilities = ent.facility_coverage_members({m for o, m in links if o.startswith("facility:")}, lineage)
    keys = ({k for k in facts if not k.startswith("party:")} | {m for o, m in links if o.startswith("fund:")}
            | {f"hubcov:{t}" for t in townships} | {f"basecov:{t}" for t in townships}
            | {f"faccov:{m}" for m in facilities})
    timelines = ent.timelines_for(keys, facts, sorted(links), kinds, lineage)
    return timelines, cov.total(cov.contribution(t) for t in timelines.values()), count


async def rebuild(engine: AsyncEngine, apply: bool = False) -> Report:
    report = Report()
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            timelines, expected, report.facts = await _rebuilt(conn)
            live = await store.coverage_deltas(conn)
    # The history keeps no derived counter (metrics.DERIVED): what it should hold is the rest.
    kept = {k: v for k, v in expected.items() if k[1] not in DERIVED}
    report.entities, report.rows = len(timelines), len(kept)
    for key in sorted(kept.keys() | live.keys()):
        if kept.get(key, 0) != live.get(key, 0):
            report.differences.append((key, live.get(key, 0), kept.get(key, 0)))
    if apply:
        async with engine.begin() as conn:
            await store.lock_projection(conn)
            timelines, expected, report.facts = await _rebuilt(conn)
            await store.clear_projection(conn)
            await store.lock_timelines(conn, timelines)
            await store.save_timelines(conn, {k: (t, ent.region_of_timeline(t)) for k, t in timelines.items()})
            await store.add_coverage(conn, expected)
            # Whatever flagged the projection as kept by an older targets is put right now.
            await store.clear_stale_flags(conn)
        report.applied = True
    return report


# One replica at a time checks whether the projection predates this code and rebuilds it.
UPGRADE_LOCK = 0x63736F_757067  # "cso" "upg"


async def stale(conn: AsyncConnection) -> str | None:
    """Why the live projection predates this code (None: it does not): it counts organizations or
    divisions but nothing at any community, as targets did before communities were a tier. Moving
    such an organization would take off community counts that were never added."""
    return await store.projection_staleness(conn)


async def upgrade(engine: AsyncEngine) -> Report | None:
    """At start: rebuild and put in place a projection kept by an older targets (see `stale`),
    while the consumers run (they wait for the swap). Replicas starting together take turns; the
    second finds nothing to do. Returns the rebuild's report, None when none was needed."""
    async with engine.connect() as lock:
        await store.session_lock(lock, UPGRADE_LOCK)
        try:
            async with engine.connect() as conn:
                reason = await stale(conn)
            if reason is None:
                return None
            log.warning("targets: rebuilding coverage from the fact log: %s", reason)
            report = await rebuild(engine, apply=True)
            log.warning("targets: coverage rebuilt: %s facts, %s entities, %s rows, %s differences put right",
                        report.facts, report.entities, report.rows, len(report.differences))
            return report
        finally:
            await store.session_unlock(lock, UPGRADE_LOCK)
            await lock.commit()


def main(argv: list[str] | None = None) -> int:
    """`python -m services.targets.rebuild [--apply]` with CSO_DATABASE_URL set."""
    from cso.database import make_engine
    from cso.settings import Settings

    args = argv if argv is not None else sys.argv[1:]

    async def run() -> Report:
        engine = make_engine(Settings().database_url)
        try:
            return await rebuild(engine, apply="--apply" in args)
        finally:
            await engine.dispose()

    report = asyncio.run(run())
    summary: dict[str, Any] = {"facts": report.facts, "entities": report.entities, "rows": report.rows,
                               "differences": len(report.differences), "applied": report.applied}
    print(json.dumps(summary))
    for (region, counter, day), live, rebuilt in report.differences[:50]:
        print(f"{region} {counter} {day}: live {live}, rebuilt {rebuilt}")
    return 0 if report.equal or report.applied else 1


if __name__ == "__main__":
    raise SystemExit(main())
