"""Plans' read side, shared by HTTP and NATS request-reply: the list of plans, a plan's ledger, a
task with its lines, history and evidence, an expanded task's lines, a unit's to-do list, a plan's
revisions. Target figures and statuses are read live from targets' own tables."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import store as targets_store
from ..store import sql_name
from ..views import ViewError
from . import domain as d
from . import store

# Worst first: a task's targets are as good as their worst.
STATUS_ORDER = ("missed", "at_risk", "pending", "on_track", "met")


def _day(value: date | None) -> str | None:
    return value.isoformat() if value else None


async def _plan_row(conn: AsyncConnection, plan_id: str) -> Any:
    row = (await conn.execute(text(f"SELECT * FROM {sql_name(store.plan_table)} WHERE id = :p"),
                              {"p": plan_id})).first()
    if row is None:
        raise ViewError(404, "plan", f"no plan {plan_id!r}")
    return row


async def _names(conn: AsyncConnection, codes: set[str]) -> dict[str, str]:
    rows = await conn.execute(text(f"SELECT code, name FROM {sql_name(targets_store.division)} WHERE code = ANY(:c)"),
                              {"c": sorted(codes)})
    return {r[0]: r[1] for r in rows}


async def _target_status(conn: AsyncConnection, ids: set[str]) -> dict[str, dict[str, Any]]:
    rows = (await conn.execute(text(
        f"SELECT id, target_id, region, status, value, threshold, deadline, evaluated_at "
        f"FROM {sql_name(targets_store.target_instance)} WHERE target_id = ANY(:ids) ORDER BY id"),
        {"ids": sorted(ids)})).mappings().all()
    # A target over several regions (every county of a city) is as good as its worst instance.
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        seen = out.setdefault(r["target_id"], dict(r) | {"instances": 0})
        seen["instances"] += 1
        if STATUS_ORDER.index(r["status"] or "pending") < STATUS_ORDER.index(seen["status"] or "pending"):
            seen.update({k: v for k, v in dict(r).items()})
    return out


async def _community_values(conn: AsyncConnection, plan_id: str, tasks: list[Any], today: date
                            ) -> dict[tuple[str, str], float]:
    """(task, metric) -> the value of each community task's target, live: a figure's growth at
    the community since the plan's start (its counters, read on demand), or the task's confirmed
    evidence numbers summed (domain.community)."""
    wanted = [(t, x) for t in tasks for x in t.targets if x.get("counted")]
    if not wanted:
        return {}
    starts_text = str((await conn.execute(text(
        f"SELECT document->>'starts' FROM {sql_name(store.plan_table)} WHERE id = :p"), {"p": plan_id})).scalar_one())
    before = date.fromisoformat(starts_text) - timedelta(days=1)
    regions = {t.scope_region for t, x in wanted if x["counted"] == "figure"}
    counters = await targets_store.counters_on(conn, [(r, day) for r in regions for day in (today, before)])
    numbers: dict[str, list[tuple[int | None, bool]]] = defaultdict(list)
    if any(x["counted"] == "evidence" for _, x in wanted):
        for r in (await conn.execute(text(
                f"SELECT task_no, count, confirmed_by IS NOT NULL AS confirmed FROM {sql_name(store.plan_evidence)} "
                "WHERE plan_id = :p AND count IS NOT NULL"), {"p": plan_id})).mappings():
            numbers[r["task_no"]].append((r["count"], r["confirmed"]))
    out: dict[tuple[str, str], float] = {}
    for t, x in wanted:
        if x["counted"] == "evidence":
            out[(t.task_no, x["metric"])] = d.confirmed_total(numbers[t.task_no])
        else:
            out[(t.task_no, x["metric"])] = d.grown(x["metric"], counters[(t.scope_region, today)],
                                                    counters[(t.scope_region, before)])
    return out


def _targets(task: Any, live: dict[str, dict[str, Any]], community: dict[tuple[str, str], float],
             today: date) -> tuple[list[dict[str, Any]], str | None]:
    out = []
    statuses = []
    for t in task.targets:
        item = {k: t.get(k) for k in ("metric", "threshold", "comparison", "deadline", "untracked", "target_id")}
        # linked: target_id is a catalogue target stating the same promise (one instance, one status).
        item["linked"] = bool(t.get("linked"))
        if t.get("quote"):
            item["quote"] = t["quote"]
        if t.get("counted"):
            # A community task's target: counted live at the community, not a catalogue target.
            value = community[(task.task_no, t["metric"])]
            status = d.community_status(value, t["threshold"], t["comparison"],
                                        date.fromisoformat(t["deadline"]), today)
            item.update(counted=t["counted"], status=status, value=value, evaluated_at=None, instances=1)
            statuses.append(status)
        elif t.get("untracked"):
            item.update(status="untracked", value=None, evaluated_at=None)
        else:
            inst = live.get(t["target_id"])
            status = (inst or {}).get("status") or "pending"
            item.update(status=status, value=(inst or {}).get("value"),
                        instance_id=(inst or {}).get("id"), evaluated_at=(inst or {}).get("evaluated_at"),
                        instances=(inst or {}).get("instances", 0))
            statuses.append(status)
        out.append(item)
    worst = min(statuses, key=STATUS_ORDER.index) if statuses else None
    return out, worst


def _line(p: Any, deadline: date, today: date) -> dict[str, Any]:
    state = d.TaskState(p.state)
    return {"line": p.line, "region": p.region, "unit": p.unit, "state": state.value,
            "overdue": d.is_overdue(state, deadline, today), "days_overdue": d.days_overdue(state, deadline, today),
            "accepted_late": state is d.TaskState.ACCEPTED and p.overdue_for is not None,
            "submissions": p.submissions, "returns": p.returns, "note": p.note, "reason": p.reason,
            "updated_by": p.updated_by, "updated_on": _day(p.updated_on)}


async def _tasks(conn: AsyncConnection, plan_id: str, today: date, only: str | None = None
                 ) -> list[dict[str, Any]]:
    tasks = (await conn.execute(text(
        f"SELECT * FROM {sql_name(store.plan_task)} WHERE plan_id = :p AND NOT removed "
        "AND (CAST(:no AS text) IS NULL OR task_no = :no) ORDER BY position"),
        {"p": plan_id, "no": only})).all()
    progress = (await conn.execute(text(
        f"SELECT * FROM {sql_name(store.plan_progress)} WHERE plan_id = :p AND NOT removed "
        "AND (CAST(:no AS text) IS NULL OR task_no = :no) ORDER BY task_no, line"),
        {"p": plan_id, "no": only})).all()
    own: dict[str, Any] = {}
    lines: dict[str, list[Any]] = defaultdict(list)
    for p in progress:
        if p.line:
            lines[p.task_no].append(p)
        else:
            own[p.task_no] = p
    live = await _target_status(conn, {t["target_id"] for task in tasks for t in task.targets
                                       if t.get("target_id")})
    community = await _community_values(conn, plan_id, list(tasks), today)
    names = await _names(conn, {t.scope_region for t in tasks})
    out = []
    for t in tasks:
        p = own[t.task_no]
        state = d.TaskState(p.state)
        line_states = [d.TaskState(x.state) for x in lines[t.task_no]]
        targets, worst = _targets(t, live, community, today)
        summary: dict[str, Any] | None = None
        if t.expands:
            summary = d.rollup(line_states)
            summary["overdue"] = sum(d.is_overdue(s, t.deadline, today) for s in line_states)
            summary["tier"] = t.expands
        item = {
            "no": t.task_no, "title": t.title, "lead": t.lead, "leads": _leads(t), "co": list(t.co),
            "deadline": _day(t.deadline),
            "work_plan": t.work_plan,
            "scope": {"region": t.scope_region, "name": names.get(t.scope_region), "expands": t.expands},
            **{k: v for k, v in _line(p, t.deadline, today).items() if k not in ("line", "region", "unit")},
            "progress": d.task_progress(state, line_states),
            "targets": targets, "targets_status": worst, "lines": summary,
        }
        item["_lines"] = [_line(x, t.deadline, today) for x in lines[t.task_no]]
        out.append(item)
    return out


def _public(task: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in task.items() if not k.startswith("_")}


def _plan_info(row: Any) -> dict[str, Any]:
    doc = row.document
    return {
        "id": row.id, "title": row.title, "scope": row.scope, "issued": doc.get("issued"),
        "issuers": doc.get("issuers"), "period": doc.get("period"), "phases": doc.get("phases"),
        "implementing": doc.get("implementing"), "acceptance": doc.get("acceptance"),
        "starts": doc.get("starts"), "ends": doc.get("ends"), "work_plans": doc.get("work_plans"),
        "revision": row.revision, "origin": row.origin, "imported_at": row.imported_at,
        "warnings": row.warnings,
        "accepted": ({"at": row.accepted_at, "on": _day(row.accepted_on), "by": row.accepted_by}
                     if row.accepted_at else None),
    }


def _completion(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    summary = d.completion([(d.TaskState(t["state"]), [d.TaskState(x["state"]) for x in t["_lines"]])
                            for t in tasks])
    summary["overdue"] = sum(t["overdue"] for t in tasks)
    return summary


async def plans(conn: AsyncConnection, today: date) -> list[dict[str, Any]]:
    rows = (await conn.execute(text(f"SELECT * FROM {sql_name(store.plan_table)} ORDER BY id"))).all()
    out = []
    for row in rows:
        tasks = await _tasks(conn, row.id, today)
        out.append({"id": row.id, "title": row.title, "scope": row.scope, "revision": row.revision,
                    "imported_at": row.imported_at, "accepted": row.accepted_at is not None,
                    "completion": _completion(tasks)})
    return out


async def ledger(conn: AsyncConnection, plan_id: str, today: date) -> dict[str, Any]:
    """A plan and its tasks, overdue first (longest overdue first), then by state and deadline."""
    row = await _plan_row(conn, plan_id)
    tasks = await _tasks(conn, plan_id, today)
    ordered = sorted(tasks, key=lambda t: d.ledger_key(d.TaskState(t["state"]), date.fromisoformat(t["deadline"]),
                                                       t["no"], today))
    by_state: dict[str, list[str]] = {s.value: [] for s in d.STORED_STATES}
    for t in sorted(tasks, key=lambda t: d.task_key(t["no"])):
        by_state[t["state"]].append(t["no"])
    names = await _names(conn, {row.scope})
    info = _plan_info(row)
    info["scope_name"] = names.get(row.scope)
    return {"plan": info, "as_of": today.isoformat(), "completion": _completion(tasks), "by_state": by_state,
            "overdue": [t["no"] for t in ordered if t["overdue"]], "tasks": [_public(t) for t in ordered]}


async def task(conn: AsyncConnection, plan_id: str, task_no: str, today: date) -> dict[str, Any]:
    """One task: its ledger row, every line, the history of every change and the evidence files."""
    await _plan_row(conn, plan_id)
    found = await _tasks(conn, plan_id, today, only=task_no)
    if not found:
        raise ViewError(404, "task", f"plan {plan_id!r} has no task {task_no!r}")
    item = found[0]
    history = (await conn.execute(text(
        f"SELECT line, action, previous_status, status, by, note, on_day, at FROM {sql_name(store.plan_task_history)} "
        "WHERE plan_id = :p AND task_no = :no ORDER BY id"), {"p": plan_id, "no": task_no})).mappings().all()
    evidence = (await conn.execute(text(
        f"SELECT id, line, filename, file_type, media_type, size, sha256, uploaded_by, uploaded_on, uploaded_at, "
        f"submission, count, confirmed_by, confirmed_on FROM {sql_name(store.plan_evidence)} "
        "WHERE plan_id = :p AND task_no = :no ORDER BY uploaded_at, id"),
        {"p": plan_id, "no": task_no})).mappings().all()
    out = _public(item)
    out["line_progress"] = item["_lines"]
    out["history"] = [dict(h) for h in history]
    out["evidence"] = [dict(e) for e in evidence]
    out["as_of"] = today.isoformat()
    return out


async def lines(conn: AsyncConnection, plan_id: str, task_no: str, today: date) -> dict[str, Any]:
    """Per-division progress of an expanded task (各镇(街道): one line per township)."""
    await _plan_row(conn, plan_id)
    found = await _tasks(conn, plan_id, today, only=task_no)
    if not found:
        raise ViewError(404, "task", f"plan {plan_id!r} has no task {task_no!r}")
    item = found[0]
    if not item["scope"]["expands"]:
        raise ViewError(404, "lines", f"task {task_no!r} of plan {plan_id!r} is not carried out per township "
                        "or county (its units name no 各镇(街道) or 各县区)")
    ordered = sorted(item["_lines"], key=lambda x: (not x["overdue"], d.STATE_RANK[d.TaskState(x["state"])],
                                                    x["line"]))
    return {"plan_id": plan_id, "task_no": task_no, "title": item["title"], "deadline": item["deadline"],
            "tier": item["scope"]["expands"], "state": item["state"], "summary": item["lines"],
            "as_of": today.isoformat(), "lines": ordered}


def _leads(row: Any) -> list[str]:
    """Every lead unit of a task row; a row written by a replica of before migration 0005 has
    only `lead`."""
    return list(row.leads) if row.leads else [row.lead]


async def todo(conn: AsyncConnection, unit: str, today: date) -> dict[str, Any]:
    """What a unit has open across plans: tasks it leads or cooperates on, and the lines it
    carries out (a township or county of an expanded task); overdue first, then by deadline."""
    name = d.normalize_unit(unit)
    rows = (await conn.execute(text(
        f"SELECT p.plan_id, pl.title AS plan_title, p.task_no, t.title, t.lead, t.leads, t.co, t.deadline, "
        "p.line, p.region, p.unit, p.state, p.overdue_for, p.updated_by, p.updated_on, p.reason, "
        "CASE WHEN p.line <> '' THEN 'line' WHEN t.lead = :u OR :u = ANY(t.leads) THEN 'lead' "
        "ELSE 'co' END AS role "
        f"FROM {sql_name(store.plan_progress)} p JOIN {sql_name(store.plan_task)} t USING (plan_id, task_no) "
        f"JOIN {sql_name(store.plan_table)} pl ON pl.id = p.plan_id "
        "WHERE NOT p.removed AND NOT t.removed "
        "AND ((p.line = '' AND (t.lead = :u OR :u = ANY(t.leads) OR :u = ANY(t.co))) "
        "OR (p.line <> '' AND p.unit = :u))"),
        {"u": name})).all()
    if not rows:
        raise ViewError(404, "unit", f"no plan names the unit {name!r} (as lead, cooperating unit or township)")
    names = await _names(conn, {r.region for r in rows})
    items = []
    for r in rows:
        state = d.TaskState(r.state)
        if state is d.TaskState.ACCEPTED:
            continue
        items.append({
            "plan_id": r.plan_id, "plan_title": r.plan_title, "task_no": r.task_no, "title": r.title,
            "role": r.role, "line": r.line or None, "region": r.region, "region_name": names.get(r.region),
            "lead": r.lead, "leads": _leads(r), "deadline": _day(r.deadline), "state": state.value,
            "overdue": d.is_overdue(state, r.deadline, today), "days_overdue": d.days_overdue(state, r.deadline, today),
            "returned_reason": r.reason if state is d.TaskState.IN_PROGRESS else None,
            "updated_by": r.updated_by, "updated_on": _day(r.updated_on),
        })
    items.sort(key=lambda i: (not i["overdue"], -i["days_overdue"], i["deadline"], i["plan_id"],
                              d.task_key(i["task_no"]), i["line"] or ""))
    return {"unit": name, "as_of": today.isoformat(), "open": len(items),
            "overdue": sum(i["overdue"] for i in items), "items": items}


async def revisions(conn: AsyncConnection, plan_id: str) -> list[dict[str, Any]]:
    await _plan_row(conn, plan_id)
    rows = (await conn.execute(text(
        f"SELECT revision, origin, by, diff, imported_at FROM {sql_name(store.plan_revision)} WHERE plan_id = :p "
        "ORDER BY revision"), {"p": plan_id})).mappings().all()
    return [dict(r) for r in rows]


async def evidence_file(conn: AsyncConnection, plan_id: str, evidence_id: str) -> Any:
    try:
        key = str(uuid.UUID(evidence_id))
    except ValueError:
        raise ViewError(404, "evidence", f"no evidence {evidence_id!r}") from None
    row = (await conn.execute(text(
        f"SELECT filename, media_type, sha256, size, content FROM {sql_name(store.plan_evidence)} "
        "WHERE plan_id = :p AND id = CAST(:id AS uuid)"), {"p": plan_id, "id": key})).first()
    if row is None:
        raise ViewError(404, "evidence", f"plan {plan_id!r} has no evidence {evidence_id!r}")
    return row
