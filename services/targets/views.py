"""targets' read side, shared by HTTP and NATS request-reply: coverage with drill-down (province
to community), targets with status and history, targets at risk, the communities and townships
behind, a figure's monthly series. Coverage, targets and targets at risk answer for any past day too
(`as_of`): counters at the end of that day, and each target's status evaluated for that day with
the definition then in force (domain/status.py)."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.codes import TIER_LENGTH, ancestors, tier_of

from . import evaluation, history, store
from .domain import behind as behind_
from .domain.catalogue import TargetInstance
from .domain.metrics import FIGURES, figure, figures, numerator
from .domain.status import Version, definition_on

SCHEMA = store.SCHEMA


class ViewError(Exception):
    def __init__(self, status: int, field: str, message: str) -> None:
        self.status, self.field, self.message = status, field, message
        super().__init__(f"{field}: {message}")


async def known_region(conn: AsyncConnection, code: str, as_of: date | None = None) -> dict[str, Any]:
    """The region as it is (or was on `as_of`, in that day's divisions: history.division_on)."""
    try:
        tier_of(code)
    except ValueError as e:
        raise ViewError(422, "region", str(e)) from None
    region = await store.find_division(conn, code)
    if region is None:
        raise ViewError(404, "region", f"unknown region {code}")
    if as_of is not None:
        then = await history.division_on(conn, code, as_of)
        if then is None:
            raise ViewError(404, "region", f"region {code} did not exist on {as_of.isoformat()}")
        return then
    return region


def parse_day(value: str | None, field: str = "as_of") -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ViewError(422, field, f"{value!r} is not a date (YYYY-MM-DD)") from None


async def coverage(conn: AsyncConnection, code: str, as_of: date | None = None) -> dict[str, Any]:
    region = await known_region(conn, code, as_of)
    kids = await (history.children_on(conn, code, as_of) if as_of else store.children(conn, code))
    codes = [code] + [k["code"] for k in kids]
    counters = (await store.counters_as_of(conn, codes, as_of) if as_of
                else await store.counters_now(conn, codes))

    def row(info: dict[str, Any]) -> dict[str, Any]:
        c = counters[info["code"]]
        return {**info, "counters": c, "figures": figures(c)}

    return {**row(region), "as_of": as_of.isoformat() if as_of else None,
            "targets": await targets(conn, code, history=False, as_of=as_of),
            "children": [row(k) for k in kids]}


async def targets(conn: AsyncConnection, code: str, history: bool = True,
                  as_of: date | None = None) -> list[dict[str, Any]]:
    if as_of is not None:
        return await targets_as_of(conn, code, as_of, history)
    out = await store.instances_of(conn, code)
    if history and out:
        hist = await store.history_of(conn, [r["id"] for r in out])
        for r in out:
            r["history"] = [h for h in hist if h["instance_id"] == r["id"]]
    return out


async def definitions_on(conn: AsyncConnection, day: date, region: str | None = None,
                         under: str | None = None) -> list[TargetInstance]:
    """The target instances of `region` (or of every region under `under`) in force on `day`."""
    rows = await store.instance_versions(conn, region=region, under=under)
    versions: dict[str, list[Version]] = {}
    for id_, data, from_day in rows:
        versions.setdefault(id_, []).append(
            (from_day, evaluation.instance_from_json(data) if data is not None else None))
    found = (definition_on(v, day) for v in versions.values())
    return sorted((i for i in found if i is not None), key=lambda i: (i.deadline, i.instance_id))


async def evaluated_on(conn: AsyncConnection, instances: list[TargetInstance], day: date,
                       history: bool) -> list[dict[str, Any]]:
    """Instances as the live targets answer shows them, evaluated for `day`; `recorded` is the
    status the service had recorded in force that day (target_history), if it was running then."""
    evaluated = await evaluation.statuses(conn, instances, day)
    ids = [i.instance_id for i in instances]
    # Without the history, only the last change up to the day (the status then in force).
    hist = await store.history_of(conn, ids, up_to=day, last_only=not history)
    by_instance: dict[str, list[dict[str, Any]]] = {}
    for h in hist:
        by_instance.setdefault(h["instance_id"], []).append(h)
    out = []
    for i, (status, value) in zip(instances, evaluated, strict=True):
        own = by_instance.get(i.instance_id, [])
        row: dict[str, Any] = {
            "id": i.instance_id, "target_id": i.spec_id, "region": i.region, "figure": i.figure,
            "threshold": i.threshold, "deadline": i.deadline, "status": status.value, "value": value,
            "as_of": day.isoformat(), "title": i.title, "source": i.source, "comparison": i.comparison,
            "year": str(i.year) if i.year is not None else None,
            "recorded": ({k: own[-1][k] for k in ("status", "value", "on_day")} if own else None)}
        if history:
            row["history"] = own
        out.append(row)
    return out


async def targets_as_of(conn: AsyncConnection, code: str, day: date, history: bool = True) -> list[dict[str, Any]]:
    return await evaluated_on(conn, await definitions_on(conn, day, region=code), day, history)


async def at_risk(conn: AsyncConnection, under: str, as_of: date | None = None) -> list[dict[str, Any]]:
    await known_region(conn, under)
    if as_of is not None:
        rows = await evaluated_on(conn, await definitions_on(conn, as_of, under=under), as_of, history=False)
        behind = [r for r in rows if r["status"] in ("at_risk", "missed")]
        names = await store.division_names(conn, {r["region"] for r in behind})
        return [{k: r[k] for k in ("id", "target_id", "region", "figure", "threshold", "deadline",
                                   "status", "value", "as_of")} | {"region_name": names.get(r["region"])}
                for r in behind]
    return await store.at_risk_now(conn, under)


BEHIND_LIMIT = 100
BEHIND_MAX = 10_000


def parse_limit(value: str | int | None, default: int = BEHIND_LIMIT) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise ViewError(422, "limit", f"{value!r} is not a whole number") from None
    if not 1 <= limit <= BEHIND_MAX:
        raise ViewError(422, "limit", f"{limit} is not from 1 to {BEHIND_MAX}")
    return limit


def _counts(row: Any) -> tuple[str, ...] | None:
    """The tiers of organizations an instance's target counts (None: every tier)."""
    counts = row["counts"]
    return tuple(json.loads(counts)) if counts is not None else None


async def behind(conn: AsyncConnection, code: str, target: str | None = None,
                 limit: int = BEHIND_LIMIT) -> dict[str, Any]:
    """The communities and townships of a region under each applicable target's threshold, worst
    first (see `domain.behind`), from the current counters.

    Applicable: a target instance set on the region, on one of its ancestors or on a region below
    it, whose figure is per community or per township (`metrics.Figure.unit`); its units are the
    divisions under both the region and the instance's region. `target` keeps one catalogue id
    (404 naming `target` when it does not apply here). Each target lists, per tier (township, then
    community for per-community figures), how many units the figure applies to (`units`), how
    many are behind (`behind`) and the first `limit` of those (`list`), each with its `value`,
    `numerator`, `denominator` and `short`: how many more organizations (or townships with a hub
    or base) it needs to meet the threshold.
    """
    region = await known_region(conn, code)
    rows = await store.instances_around(conn, ancestors(code), code)
    instances = [r for r in rows if r["figure"] in FIGURES and behind_.tiers(r["figure"])]
    if target is not None:
        instances = [r for r in instances if r["target_id"] == target]
        if not instances:
            raise ViewError(404, "target", f"no per-community or per-township target {target!r} "
                                           f"applies to {code}")
    groups: dict[str, list[Any]] = {}
    for r in instances:
        groups.setdefault(r["target_id"], []).append(r)
    wanted = sorted({c for r in instances
                     for c in numerator(r["figure"], None, _counts(r)) + FIGURES[r["figure"]].numerator
                     + FIGURES[r["figure"]].denominator})
    by_tier: dict[str, dict[str, tuple[str, dict[str, int]]]] = {}
    out = []
    for target_id, group in groups.items():
        first = group[0]
        tiers = []
        for tier in behind_.tiers(first["figure"]):
            if len(code) > TIER_LENGTH[tier]:
                continue
            if tier not in by_tier:
                by_tier[tier] = await store.unit_counters(conn, code, tier, wanted)
            # Each unit counts under the most specific instance that covers it (ancestors(unit)
            # ends with the unit itself, so the reversed walk meets the deepest region first).
            by_region = {r["region"]: r for r in group}
            per_instance: dict[str, dict[str, tuple[str, dict[str, int]]]] = {}
            for unit_code, unit in by_tier[tier].items():
                scope = next((a for a in reversed(ancestors(unit_code)) if a in by_region), None)
                if scope is not None:
                    per_instance.setdefault(scope, {})[unit_code] = unit
            counted, units = 0, []
            for scope, mine in per_instance.items():
                instance = by_region[scope]
                n, late = behind_.behind(first["figure"], float(instance["threshold"]),
                                         instance["comparison"], mine, _counts(instance))
                counted += n
                units += late
            sign = 1 if first["comparison"] == ">=" else -1
            units.sort(key=lambda u: (-u.short, sign * u.value, u.code))
            tiers.append({"tier": tier, "units": counted, "behind": len(units),
                          "list": [{"code": u.code, "name": u.name, "value": u.value, "short": u.short,
                                    "numerator": u.numerator, "denominator": u.denominator}
                                   for u in units[:limit]]})
        out.append({"target_id": target_id, "title": first["title"], "source": first["source"],
                    "figure": first["figure"], "kind": FIGURES[first["figure"]].kind,
                    "unit": FIGURES[first["figure"]].unit, "threshold": float(first["threshold"]),
                    "comparison": first["comparison"], "deadline": first["deadline"].isoformat(),
                    "regions": [{"code": r["region"], "status": r["status"]} for r in group],
                    "tiers": tiers})
    return {"code": region["code"], "name": region["name"], "tier": region["tier"], "limit": limit,
            "targets": out}


async def series(conn: AsyncConnection, code: str, name: str) -> list[dict[str, Any]]:
    await known_region(conn, code)
    spec = FIGURES.get(name)
    if spec is None:
        raise ViewError(422, "figure", f"unknown figure {name!r}; one of {', '.join(FIGURES)}")
    counters = spec.numerator + spec.denominator
    running: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    year_start: dict[str, int] = {}
    for month, counter, delta in await store.monthly(conn, code, counters):
        if out and out[-1]["month"] != month.isoformat() and month.year != date.fromisoformat(out[-1]["month"]).year:
            year_start = dict(running)
        running[counter] = running.get(counter, 0) + delta
        point = {"month": month.isoformat(),
                 "value": figure(name, running, year_start if spec.yearly else None)}
        if out and out[-1]["month"] == point["month"]:
            out[-1] = point
        else:
            out.append(point)
    return out
