"""Plans' writes, in targets' schema: imports (an upsert with a revision per change), progress
lines, state transitions with their events (outbox), evidence files, the overdue sweep.

Every write happens in the caller's transaction, so a plan, its tasks, its catalogue targets and
its events commit together or not at all.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope, Topology, make_event
from contracts import events as ev
from contracts.events import CHINA
from cso import outbox

from .. import store as targets_store
from ..domain.catalogue import TargetSpec, parse_catalogue, promise
from ..store import SCHEMA, sql_name
from . import domain as d
from .errors import Conflict, NotFound

SOURCE = "cso-targets"

# Plans' tables, in targets' MetaData (store.METADATA: the one description of the schema).
_META = targets_store.METADATA
_TZ = TIMESTAMP(timezone=True)
_NOW = text("now()")
# A plan as last imported: `document` is its canonical form (domain.Plan.to_json).
plan_table = Table(
    "plan", _META,
    Column("id", Text, primary_key=True), Column("title", Text, nullable=False),
    Column("scope", Text, nullable=False), Column("document", JSONB, nullable=False),
    Column("revision", Integer, nullable=False), Column("origin", Text, nullable=False),
    Column("warnings", JSONB, nullable=False, server_default=text("'[]'")), Column("seed_hash", Text),
    Column("imported_at", _TZ, nullable=False, server_default=_NOW), Column("accepted_at", _TZ),
    Column("accepted_on", Date), Column("accepted_by", Text))
# Every import that changed a plan, with what changed.
plan_revision = Table(
    "plan_revision", _META,
    Column("plan_id", Text, nullable=False), Column("revision", Integer, nullable=False),
    Column("origin", Text, nullable=False), Column("by", Text), Column("diff", JSONB, nullable=False),
    Column("document", JSONB, nullable=False), Column("imported_at", _TZ, nullable=False, server_default=_NOW),
    PrimaryKeyConstraint("plan_id", "revision"),
    ForeignKeyConstraint(["plan_id"], ["plan.id"]))
plan_task = Table(
    "plan_task", _META,
    Column("plan_id", Text, nullable=False), Column("task_no", Text, nullable=False),
    Column("position", Integer, nullable=False), Column("title", Text, nullable=False),
    Column("lead", Text, nullable=False),
    Column("co", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("deadline", Date, nullable=False), Column("scope_region", Text, nullable=False),
    Column("expands", Text), Column("work_plan", Text),
    Column("targets", JSONB, nullable=False, server_default=text("'[]'")),
    Column("removed", Boolean, nullable=False, server_default=text("false")),
    Column("leads", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    PrimaryKeyConstraint("plan_id", "task_no"),
    ForeignKeyConstraint(["plan_id"], ["plan.id"]))
# Progress: line '' is the task itself (its unit is the lead), other lines the divisions an
# expanded task is carried out in (their unit is the division's name).
plan_progress = Table(
    "plan_progress", _META,
    Column("plan_id", Text, nullable=False), Column("task_no", Text, nullable=False),
    Column("line", Text, nullable=False), Column("region", Text, nullable=False),
    Column("unit", Text, nullable=False),
    Column("state", Text, nullable=False, server_default=text("'not_started'")),
    Column("submissions", Integer, nullable=False, server_default=text("0")),
    Column("returns", Integer, nullable=False, server_default=text("0")),
    Column("note", Text), Column("reason", Text), Column("updated_by", Text), Column("updated_on", Date),
    Column("updated_at", _TZ, nullable=False, server_default=_NOW), Column("overdue_for", Date),
    Column("removed", Boolean, nullable=False, server_default=text("false")),
    PrimaryKeyConstraint("plan_id", "task_no", "line"),
    ForeignKeyConstraint(["plan_id", "task_no"], ["plan_task.plan_id", "plan_task.task_no"]),
    Index("plan_progress_unit", "unit"))
plan_task_history = Table(
    "plan_task_history", _META,
    Column("id", BigInteger, primary_key=True, autoincrement=True), Column("plan_id", Text, nullable=False),
    Column("task_no", Text, nullable=False), Column("line", Text, nullable=False),
    Column("action", Text, nullable=False), Column("previous_status", Text),
    Column("status", Text, nullable=False), Column("by", Text), Column("note", Text),
    Column("on_day", Date, nullable=False), Column("at", _TZ, nullable=False, server_default=_NOW),
    Index("plan_task_history_task", "plan_id", "task_no", "line", "id"))
plan_evidence = Table(
    "plan_evidence", _META,
    Column("id", PG_UUID(as_uuid=True), primary_key=True), Column("plan_id", Text, nullable=False),
    Column("task_no", Text, nullable=False), Column("line", Text, nullable=False),
    Column("filename", Text, nullable=False), Column("file_type", Text, nullable=False),
    Column("media_type", Text, nullable=False), Column("size", Integer, nullable=False),
    Column("sha256", Text, nullable=False), Column("content", LargeBinary, nullable=False),
    Column("uploaded_by", Text), Column("uploaded_on", Date, nullable=False),
    Column("uploaded_at", _TZ, nullable=False, server_default=_NOW), Column("submission", Integer),
    # The number it carries (activities held) and the accepter who confirmed it (migration 0009).
    Column("count", Integer), Column("confirmed_by", Text), Column("confirmed_on", Date),
    ForeignKeyConstraint(["plan_id", "task_no", "line"],
                         ["plan_progress.plan_id", "plan_progress.task_no", "plan_progress.line"]),
    Index("plan_evidence_task", "plan_id", "task_no", "line"))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


async def known_regions(conn: AsyncConnection, codes: Sequence[str]) -> dict[str, str]:
    rows = await conn.execute(text(f"SELECT code, tier FROM {sql_name(targets_store.division)} WHERE code = ANY(:c)"),
                              {"c": sorted(set(codes))})
    return {r[0]: r[1] for r in rows}


async def parse(conn: AsyncConnection, source: str, origin: str, *, strict: bool = True) -> d.Plan:
    """Read and validate a plan file's text against today's divisions (`PlanError` if invalid)."""
    data = d.read_plan_text(source, origin)
    regions = await known_regions(conn, sorted(d.referenced_codes(data)))
    return d.parse_plan(data, origin, regions, strict=strict)


async def lock_plan(conn: AsyncConnection, plan_id: str) -> None:
    """Serialize imports of one plan across replicas (a transaction-scoped advisory lock)."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"cso.targets.plan:{plan_id}"})


async def seed_hash(conn: AsyncConnection, plan_id: str) -> str | None:
    return (await conn.execute(text(f"SELECT seed_hash FROM {sql_name(plan_table)} WHERE id = :id"),
                               {"id": plan_id})).scalar()


async def import_plan(conn: AsyncConnection, plan: d.Plan, origin: str, by: str | None = None,
                      seed: str | None = None) -> dict[str, Any]:
    """Insert or update a plan. An unchanged plan writes nothing; a changed one gets a new
    revision holding the diff. Removed tasks are kept (with their history) but hidden; their
    catalogue targets are retired. Returns {plan_id, revision, changed, diff, warnings}."""
    await lock_plan(conn, plan.id)
    await lock_links(conn)   # before any plan row: linking locks them all
    row = (await conn.execute(text(
        f"SELECT document, revision, seed_hash FROM {sql_name(plan_table)} WHERE id = :id FOR UPDATE"),
        {"id": plan.id})).first()
    document = plan.to_json()
    warnings = list(plan.warnings)
    if row is not None and row.document == document:
        if seed is not None and row.seed_hash != seed:
            await conn.execute(text(f"UPDATE {sql_name(plan_table)} SET seed_hash = :h WHERE id = :id"),
                               {"h": seed, "id": plan.id})
        return {"plan_id": plan.id, "revision": row.revision, "changed": False, "diff": None,
                "warnings": warnings}
    diff = d.diff_plans(row.document if row is not None else None, document)
    revision = (row.revision if row is not None else 0) + 1
    await conn.execute(text(
        f"INSERT INTO {sql_name(plan_table)} (id, title, scope, document, revision, origin, warnings, seed_hash) "
        "VALUES (:id, :title, :scope, CAST(:doc AS jsonb), :rev, :origin, CAST(:w AS jsonb), :seed) "
        "ON CONFLICT (id) DO UPDATE SET title = excluded.title, scope = excluded.scope, "
        "document = excluded.document, revision = excluded.revision, origin = excluded.origin, "
        "warnings = excluded.warnings, seed_hash = COALESCE(excluded.seed_hash, plan.seed_hash), "
        "imported_at = now()"),
        {"id": plan.id, "title": plan.title, "scope": plan.scope, "doc": _json(document), "rev": revision,
         "origin": origin, "w": _json(warnings), "seed": seed})
    await conn.execute(text(
        f"INSERT INTO {sql_name(plan_revision)} (plan_id, revision, origin, by, diff, document) "
        "VALUES (:id, :rev, :origin, :by, CAST(:diff AS jsonb), CAST(:doc AS jsonb))"),
        {"id": plan.id, "rev": revision, "origin": origin, "by": by, "diff": _json(diff),
         "doc": _json(document)})
    await check_links(conn, plan, origin)
    nos = [t.no for t in plan.tasks]
    for position, task in enumerate(plan.tasks):
        await conn.execute(text(
            f"INSERT INTO {sql_name(plan_task)} (plan_id, task_no, position, title, lead, leads, co, deadline, "
            "scope_region, expands, work_plan, targets, removed) VALUES (:p, :no, :pos, :title, :lead, "
            ":leads, :co, :deadline, :region, :expands, :wp, CAST(:targets AS jsonb), false) "
            "ON CONFLICT (plan_id, task_no) DO UPDATE SET position = excluded.position, "
            "title = excluded.title, lead = excluded.lead, leads = excluded.leads, co = excluded.co, "
            "deadline = excluded.deadline, "
            "scope_region = excluded.scope_region, expands = excluded.expands, "
            "work_plan = excluded.work_plan, targets = excluded.targets, removed = false"),
            {"p": plan.id, "no": task.no, "pos": position, "title": task.title, "lead": task.lead,
             "leads": list(task.leads), "co": list(task.co), "deadline": task.deadline, "region": task.scope_region,
             "expands": task.expands, "wp": task.work_plan,
             "targets": _json([t.to_json() | ({} if t.untracked or t.counted else
                                              {"own": d.catalogue_item(plan, task, t)})
                               for t in task.targets])})
        await conn.execute(text(
            f"INSERT INTO {sql_name(plan_progress)} (plan_id, task_no, line, region, unit) "
            "VALUES (:p, :no, '', :region, :lead) ON CONFLICT (plan_id, task_no, line) DO UPDATE "
            "SET region = excluded.region, unit = excluded.unit, removed = false"),
            {"p": plan.id, "no": task.no, "region": task.scope_region, "lead": task.lead})
    await conn.execute(text(
        f"UPDATE {sql_name(plan_task)} SET removed = true WHERE plan_id = :p AND NOT (task_no = ANY(:nos))"),
        {"p": plan.id, "nos": nos})
    await conn.execute(text(
        f"UPDATE {sql_name(plan_progress)} SET removed = true WHERE plan_id = :p AND NOT (task_no = ANY(:nos))"),
        {"p": plan.id, "nos": nos})
    await sync_lines(conn, plan.id)
    await link_targets(conn)
    # A plan accepted before a new task was added is open again.
    await conn.execute(text(
        f"UPDATE {sql_name(plan_table)} SET accepted_at = NULL, accepted_on = NULL, accepted_by = NULL "
        f"WHERE id = :p AND accepted_at IS NOT NULL AND EXISTS (SELECT 1 FROM {sql_name(plan_progress)} "
        "WHERE plan_id = :p AND line = '' AND NOT removed AND state <> 'accepted')"), {"p": plan.id})
    return {"plan_id": plan.id, "revision": revision, "changed": True, "diff": diff, "warnings": warnings}


# --- one promise, one instance ----------------------------------------------------------------


async def _catalogue(conn: AsyncConnection) -> dict[str, TargetSpec]:
    """The live targets no plan owns (the default catalogue's and those put over HTTP), by id."""
    rows = (await conn.execute(text(
        f"SELECT spec FROM {sql_name(targets_store.target)} WHERE NOT retired AND NOT EXISTS "
        f"(SELECT 1 FROM {sql_name(plan_table)} WHERE plan.id = target.origin) ORDER BY id"))).scalars().all()
    return {spec.id: spec for spec in parse_catalogue({"targets": list(rows)}, "targets.target")} if rows else {}


def _shown(value: object) -> object:
    return sorted(value) if isinstance(value, frozenset) else value


async def check_links(conn: AsyncConnection, plan: d.Plan, origin: str) -> None:
    """A target that names a catalogue target (`target:`) must name a live one that states its
    promise: the same figure, threshold, comparison, deadline and counting rule, over the task's
    scope or regions under it. Raises PlanError naming the file, the task and the field."""
    linked = [(i, task, j, t) for i, task in enumerate(plan.tasks) for j, t in enumerate(task.targets)
              if t.link is not None]
    if not linked:
        return
    catalogue = await _catalogue(conn)
    problems: list[d.Problem] = []
    for i, task, j, t in linked:
        where, label = f"tasks[{i}]", f"no {task.no!r}"
        assert t.link is not None
        spec = catalogue.get(t.link)
        if spec is None:
            problems.append(d.Problem(origin, where, label, f"targets[{j}].target",
                                      f"no live catalogue target {t.link!r} (GET /targets lists them; a "
                                      "plan's own targets cannot be linked to)"))
            continue
        own = parse_catalogue({"targets": [d.catalogue_item(plan, task, t)]}, origin)[0]
        mine, theirs = promise(own), promise(spec)
        for field_, k in (("metric", 0), ("threshold", 4), ("comparison", 5), ("due", 6), ("counts", 8),
                          ("new", 9)):
            if mine[k] != theirs[k]:
                problems.append(d.Problem(origin, where, label, f"targets[{j}].{field_}",
                                          f"{_shown(mine[k])} differs from catalogue target {t.link!r}'s "
                                          f"{_shown(theirs[k])}: a linked target states the same promise"))
        if not spec.scope_region.startswith(task.scope_region):
            problems.append(d.Problem(origin, where, label, f"targets[{j}].target",
                                      f"catalogue target {t.link!r} is set on {spec.scope_region!r}, not "
                                      f"within the task's scope {task.scope_region!r}"))
    if problems:
        raise d.PlanError(origin, problems)


async def lock_links(conn: AsyncConnection) -> None:
    """Serialize what links plans' targets (imports, catalogue writes), across replicas: taken
    before any plan or target row, so two of them never wait on each other's rows."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('cso.targets.plan-links'))"))


async def link_targets(conn: AsyncConnection) -> None:
    """One promise, one instance: point each tracked target of every plan's tasks at the live
    catalogue target it names (`target:`) or that states the same promise (`catalogue.promise`),
    else at the own target of the first plan task stating it (by plan id and task order); only
    that first one joins the catalogue, as ``<plan>-<task>-<metric>`` with its plan as origin.
    Plans' own targets no longer needed are retired. Run after every import and every catalogue
    change, in their transaction (under `lock_links`), so no order of catalogues and plans doubles
    a promise, and retiring a catalogue target gives the plans' tasks their own again."""
    await lock_links(conn)
    plans = (await conn.execute(text(f"SELECT id FROM {sql_name(plan_table)} ORDER BY id FOR UPDATE"))).scalars().all()
    if not plans:
        return
    catalogue = await _catalogue(conn)
    by_promise: dict[Any, str] = {}
    for spec in catalogue.values():
        by_promise.setdefault(promise(spec), spec.id)
    stored = {r.id: (r.spec, r.retired) for r in await conn.execute(text(
        f"SELECT id, spec, retired FROM {sql_name(targets_store.target)} WHERE origin = ANY(:p)"), {"p": list(plans)})}
    tasks = (await conn.execute(text(
        f"SELECT plan_id, task_no, targets FROM {sql_name(plan_task)} WHERE plan_id = ANY(:p) AND NOT removed "
        "ORDER BY plan_id, position"), {"p": list(plans)})).all()
    own: dict[str, tuple[str, dict[str, Any]]] = {}
    for task in tasks:
        targets: list[dict[str, Any]] = []
        for t in task.targets:
            t = dict(t)
            # A task imported before links were kept has no "own": its own spec is in the catalogue.
            item = t.get("own") or {k: v for k, v in (stored.get(t.get("target_id") or "") or ({}, False))[0].items()
                                    if k != "retired"}
            if not t.get("untracked") and not t.get("counted") and item:
                t["own"] = item
                spec = parse_catalogue({"targets": [item]}, f"plan {task.plan_id}")[0]
                found = t.get("link") if t.get("link") in catalogue else by_promise.get(promise(spec))
                t["target_id"] = found or item["id"]
                t["linked"] = found is not None and found != item["id"]
                if found is None:
                    own[item["id"]] = (task.plan_id, item)
                    by_promise[promise(spec)] = item["id"]   # a later task stating it links here
            targets.append(t)
        if targets != list(task.targets):
            await conn.execute(text(
                f"UPDATE {sql_name(plan_task)} SET targets = CAST(:t AS jsonb) WHERE plan_id = :p AND task_no = :no"),
                {"t": _json(targets), "p": task.plan_id, "no": task.task_no})
    for ident, (owner, item) in own.items():
        before = stored.get(ident)
        if before is None or before[1] or before[0] != json.loads(_json(item)):
            await targets_store.upsert_spec(conn, item, owner)
    await targets_store.retire_targets(conn, origins=list(plans), keep=list(own))


async def sync_lines(conn: AsyncConnection, plan_id: str | None = None) -> None:
    """One progress line per division an expanded task covers (new divisions get theirs); lines
    of divisions no longer covered are hidden, not deleted. Accepted tasks get no new lines."""
    await conn.execute(text(
        f"INSERT INTO {sql_name(plan_progress)} (plan_id, task_no, line, region, unit) "
        f"SELECT t.plan_id, t.task_no, dv.code, dv.code, dv.name FROM {sql_name(plan_task)} t "
        f"JOIN {sql_name(plan_progress)} own ON own.plan_id = t.plan_id AND own.task_no = t.task_no AND own.line = '' "
        f"JOIN {sql_name(targets_store.division)} dv ON dv.tier = t.expands AND dv.code LIKE t.scope_region || '%' "
        "WHERE NOT t.removed AND t.expands IS NOT NULL AND own.state <> 'accepted' "
        "AND (CAST(:p AS text) IS NULL OR t.plan_id = :p) "
        f"AND NOT EXISTS (SELECT 1 FROM {sql_name(plan_progress)} x WHERE x.plan_id = t.plan_id "
        "AND x.task_no = t.task_no AND x.line = dv.code AND NOT x.removed AND x.unit = dv.name) "
        "ON CONFLICT (plan_id, task_no, line) DO UPDATE SET unit = excluded.unit, removed = false"),
        {"p": plan_id})
    await conn.execute(text(
        f"UPDATE {sql_name(plan_progress)} p SET removed = true FROM {sql_name(plan_task)} t "
        "WHERE p.plan_id = t.plan_id AND p.task_no = t.task_no AND p.line <> '' AND NOT p.removed "
        "AND (CAST(:p AS text) IS NULL OR t.plan_id = :p) "
        "AND (t.removed OR t.expands IS NULL OR NOT p.line LIKE t.scope_region || '%' "
        f"OR NOT EXISTS (SELECT 1 FROM {sql_name(targets_store.division)} dv "
        "WHERE dv.code = p.line AND dv.tier = t.expands))"),
        {"p": plan_id})


async def divisions_position(conn: AsyncConnection, stream: str) -> int:
    """How far targets has applied the divisions stream (moves with every divisions batch)."""
    value = (await conn.execute(text(f"SELECT last_seq FROM {SCHEMA}.consumer_position WHERE stream = :s"),
                                {"s": stream})).scalar()
    return int(value or 0)


# --- progress ----------------------------------------------------------------------------------


async def _progress(conn: AsyncConnection, plan_id: str, task_no: str, line: str, lock: bool
                    ) -> tuple[Any, Any]:
    plan = (await conn.execute(text(
        f"SELECT id, scope, accepted_at FROM {sql_name(plan_table)} WHERE id = :p" + (" FOR UPDATE" if lock else "")),
        {"p": plan_id})).first()
    if plan is None:
        raise NotFound("plan", f"no plan {plan_id!r}")
    row = (await conn.execute(text(
        f"SELECT p.*, t.deadline, t.lead FROM {sql_name(plan_progress)} p JOIN {sql_name(plan_task)} t "
        "USING (plan_id, task_no) WHERE p.plan_id = :p AND p.task_no = :no AND p.line = :line "
        "AND NOT p.removed AND NOT t.removed" + (" FOR UPDATE OF p" if lock else "")),
        {"p": plan_id, "no": task_no, "line": line})).first()
    if row is None:
        task = (await conn.execute(text(
            f"SELECT 1 FROM {sql_name(plan_task)} WHERE plan_id = :p AND task_no = :no AND NOT removed"),
            {"p": plan_id, "no": task_no})).first()
        if task is None:
            raise NotFound("task", f"plan {plan_id!r} has no task {task_no!r}")
        raise NotFound("line", f"task {task_no!r} of plan {plan_id!r} has no line {line!r}")
    return plan, row


def describe(task_no: str, line: str, unit: str) -> str:
    return f"task {task_no}" if not line else f"task {task_no} in {unit} ({line})"


async def _store_evidence(conn: AsyncConnection, plan_id: str, task_no: str, line: str, file: d.EvidenceFile,
                          content: bytes, by: str | None, today: date, count: int | None = None) -> dict[str, Any]:
    evidence_id = uuid.uuid4()
    await conn.execute(text(
        f"INSERT INTO {sql_name(plan_evidence)} (id, plan_id, task_no, line, filename, file_type, media_type, "
        "size, sha256, content, uploaded_by, uploaded_on, count) VALUES (:id, :p, :no, :line, :fn, :ft, :mt, "
        ":size, :sha, :content, :by, :day, :count)"),
        {"id": evidence_id, "p": plan_id, "no": task_no, "line": line, "fn": file.filename,
         "ft": file.file_type, "mt": file.media_type, "size": file.size, "sha": file.sha256,
         "content": content, "by": by, "day": today, "count": count})
    return {"id": str(evidence_id), "filename": file.filename, "type": file.file_type,
            "media_type": file.media_type, "size": file.size, "sha256": file.sha256, "uploaded_by": by,
            "uploaded_on": today.isoformat(), "count": count, "confirmed_by": None}


async def confirm_count(conn: AsyncConnection, plan_id: str, evidence_id: str, by: str, today: date
                        ) -> dict[str, Any]:
    """An accepter confirms the number an evidence file carries: only then does it count towards
    the task's `evidence_count` target. The file must carry a number (422), have gone in with a
    submission, and be confirmed by someone other than who uploaded it (409); confirming twice
    keeps the first confirmation."""
    try:
        key = uuid.UUID(evidence_id)
    except ValueError:
        raise NotFound("evidence", f"no evidence {evidence_id!r}") from None
    row = (await conn.execute(text(
        f"SELECT id, task_no, line, filename, count, uploaded_by, submission, confirmed_by, confirmed_on "
        f"FROM {sql_name(plan_evidence)} WHERE id = :id AND plan_id = :p FOR UPDATE"),
        {"id": key, "p": plan_id})).first()
    if row is None:
        raise NotFound("evidence", f"plan {plan_id!r} has no evidence {evidence_id!r}")
    count: int | None = row._mapping["count"]   # by name: a Row's .count is tuple.count
    if count is None:
        raise d.EvidenceError("count", f"{row.filename!r} carries no number to confirm")
    if row.submission is None:
        raise Conflict("submission", f"{row.filename!r} is not submitted yet: a number is confirmed when "
                       "the accepter reviews the submission it went in with")
    if row.uploaded_by is not None and row.uploaded_by == by:
        raise Conflict("by", f"{by!r} uploaded {row.filename!r}; its number is confirmed by someone else")
    if row.confirmed_by is None:
        await conn.execute(text(
            f"UPDATE {sql_name(plan_evidence)} SET confirmed_by = :by, confirmed_on = :day WHERE id = :id"),
            {"by": by, "day": today, "id": key})
    confirmed_by = row.confirmed_by or by
    confirmed_on = row.confirmed_on or today
    return {"id": str(row.id), "task_no": row.task_no, "line": row.line, "filename": row.filename,
            "count": count, "confirmed_by": confirmed_by, "confirmed_on": confirmed_on.isoformat()}


async def add_evidence(conn: AsyncConnection, plan_id: str, task_no: str, line: str, file: d.EvidenceFile,
                       content: bytes, by: str | None, today: date, count: int | None = None) -> dict[str, Any]:
    """Attach a checked file to a task or line that is being worked on (not submitted or accepted:
    a submission under review and an accepted task keep the evidence they had)."""
    _, row = await _progress(conn, plan_id, task_no, line, lock=True)
    state = d.TaskState(row.state)
    if state in (d.TaskState.SUBMITTED, d.TaskState.ACCEPTED):
        raise Conflict("state", f"cannot add evidence to {describe(task_no, line, row.unit)}: it is "
                        f"{state.value}; evidence is added before submitting")
    return await _store_evidence(conn, plan_id, task_no, line, file, content, by, today, count)


def _event(payload: Any, event_id: uuid.UUID | None = None, occurred_at: datetime | None = None) -> Envelope[Any]:
    return make_event(payload, source=SOURCE, event_id=event_id, occurred_at=occurred_at)


async def transition(conn: AsyncConnection, topology: Topology, *, plan_id: str, task_no: str, line: str,
                     action: str, by: str, note: str | None, today: date,
                     evidence: Sequence[tuple[d.EvidenceFile, bytes, int | None]] = ()) -> dict[str, Any]:
    """Apply an action to a task (line '') or one of its lines; stage TaskStatusChanged per step,
    and PlanAccepted when the last task of a plan is accepted. Raises NotFound or
    TransitionError (409/422)."""
    plan, row = await _progress(conn, plan_id, task_no, line, lock=True)
    what = describe(task_no, line, row.unit)
    try:
        act = d.Action(action)
    except ValueError:
        raise d.TransitionError(404, "action", f"unknown action {action!r}; one of "
                                f"{', '.join(a.value for a in d.Action)}") from None
    state = d.TaskState(row.state)
    if evidence and act is not d.Action.SUBMIT:
        raise d.TransitionError(422, "evidence", f"evidence comes with a submission, not with {act.value}")
    if evidence and state is d.TaskState.IN_PROGRESS:
        for file, content, count in evidence:
            await _store_evidence(conn, plan_id, task_no, line, file, content, by, today, count)
    files = int((await conn.execute(text(
        f"SELECT count(*) FROM {sql_name(plan_evidence)} WHERE plan_id = :p AND task_no = :no AND line = :line"),
        {"p": plan_id, "no": task_no, "line": line})).scalar_one())
    open_lines: list[str] = []
    if act is d.Action.ACCEPT and not line:
        open_lines = [f"{r.line} {r.unit} ({r.state})" for r in await conn.execute(text(
            f"SELECT line, unit, state FROM {sql_name(plan_progress)} WHERE plan_id = :p AND task_no = :no "
            "AND line <> '' AND NOT removed AND state <> 'accepted' ORDER BY line"),
            {"p": plan_id, "no": task_no})]
    steps = d.transition(state, act, what=what, note=note, evidence_files=files, open_lines=open_lines)
    final = steps[-1].status
    text_note = steps[0].note
    await conn.execute(text(
        f"UPDATE {sql_name(plan_progress)} SET state = :s, updated_by = :by, updated_on = :day, updated_at = now(), "
        "submissions = submissions + :sub, returns = returns + :ret, "
        "note = CASE WHEN :sub = 1 THEN :note ELSE note END, "
        "reason = CASE WHEN :ret = 1 THEN :note WHEN :s = 'accepted' THEN NULL ELSE reason END "
        "WHERE plan_id = :p AND task_no = :no AND line = :line"),
        {"s": final.value, "by": by, "day": today, "sub": int(act is d.Action.SUBMIT),
         "ret": int(act is d.Action.RETURN), "note": text_note, "p": plan_id, "no": task_no, "line": line})
    if act is d.Action.SUBMIT:
        await conn.execute(text(
            f"UPDATE {sql_name(plan_evidence)} SET submission = (SELECT submissions FROM {sql_name(plan_progress)} "
            "WHERE plan_id = :p AND task_no = :no AND line = :line) "
            "WHERE plan_id = :p AND task_no = :no AND line = :line AND submission IS NULL"),
            {"p": plan_id, "no": task_no, "line": line})
    events: list[tuple[Envelope[Any], str | None]] = []
    aggregate = f"{plan_id}/{task_no}/{line}"
    for step in steps:
        await conn.execute(text(
            f"INSERT INTO {sql_name(plan_task_history)} (plan_id, task_no, line, action, previous_status, status, "
            "by, note, on_day) VALUES (:p, :no, :line, :a, :prev, :s, :by, :note, :day)"),
            {"p": plan_id, "no": task_no, "line": line, "a": act.value, "prev": step.previous.value,
             "s": step.status.value, "by": by, "note": step.note, "day": today})
        events.append((_event(ev.TaskStatusChanged(
            plan_id=plan_id, task_no=task_no, region_code=row.region, previous_status=step.previous.value,
            status=step.status.value, by=by, note=step.note)), aggregate))
    plan_accepted = False
    if final is d.TaskState.ACCEPTED and not line and plan.accepted_at is None:
        still_open = (await conn.execute(text(
            f"SELECT count(*) FROM {sql_name(plan_progress)} WHERE plan_id = :p AND line = '' AND NOT removed "
            "AND state <> 'accepted'"), {"p": plan_id})).scalar_one()
        if still_open == 0:
            plan_accepted = True
            await conn.execute(text(
                f"UPDATE {sql_name(plan_table)} SET accepted_at = now(), accepted_on = :day, accepted_by = :by "
                "WHERE id = :p"), {"day": today, "by": by, "p": plan_id})
            events.append((_event(ev.PlanAccepted(plan_id=plan_id, region_code=plan.scope, by=by)), plan_id))
    await outbox.add(conn, SCHEMA, topology, events)
    return {"plan_id": plan_id, "task_no": task_no, "line": line or None, "region": row.region,
            "unit": row.unit, "previous_status": state.value, "status": final.value,
            "steps": [{"previous_status": s.previous.value, "status": s.status.value, "note": s.note}
                      for s in steps],
            "by": by, "on": today.isoformat(), "plan_accepted": plan_accepted}


# --- overdue -----------------------------------------------------------------------------------


def overdue_event_id(plan_id: str, task_no: str, deadline: date) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"cso:targets:task-overdue:{plan_id}:{task_no}:{deadline.isoformat()}")


async def sweep_overdue(conn: AsyncConnection, topology: Topology, today: date) -> int:
    """Flag what passed its deadline unaccepted (once per deadline) and stage TaskOverdue for
    each task (its lines are flagged, and counted per township, without an event each)."""
    rows = (await conn.execute(text(
        f"SELECT p.plan_id, p.task_no, p.line, p.region, p.unit, p.state, t.deadline, t.lead, t.leads "
        f"FROM {sql_name(plan_progress)} p JOIN {sql_name(plan_task)} t USING (plan_id, task_no) "
        "WHERE NOT p.removed AND NOT t.removed AND p.state <> 'accepted' AND t.deadline < :today "
        "AND p.overdue_for IS DISTINCT FROM t.deadline "
        "ORDER BY p.plan_id, p.task_no, p.line FOR UPDATE OF p SKIP LOCKED"), {"today": today})).all()
    if not rows:
        return 0
    now = datetime.now(timezone.utc)
    events: list[tuple[Envelope[Any], str | None]] = []
    # Two statements for every row flagged, not two per row: a plan's expanded task has a line per
    # township (a city plan's, hundreds), all overdue the same day.
    columns = {"p": [r.plan_id for r in rows], "no": [r.task_no for r in rows], "line": [r.line for r in rows]}
    await conn.execute(text(
        f"UPDATE {sql_name(plan_progress)} x SET overdue_for = u.d FROM unnest(CAST(:p AS text[]), "
        "CAST(:no AS text[]), CAST(:line AS text[]), CAST(:d AS date[])) AS u(p, no, line, d) "
        "WHERE x.plan_id = u.p AND x.task_no = u.no AND x.line = u.line"),
        columns | {"d": [r.deadline for r in rows]})
    await conn.execute(text(
        f"INSERT INTO {sql_name(plan_task_history)} (plan_id, task_no, line, action, previous_status, status, "
        "by, note, on_day) SELECT p, no, line, 'overdue', s, s, NULL, note, :day FROM unnest(CAST(:p AS text[]), "
        "CAST(:no AS text[]), CAST(:line AS text[]), CAST(:s AS text[]), CAST(:note AS text[])) "
        "WITH ORDINALITY AS h(p, no, line, s, note, n) ORDER BY n"),
        columns | {"s": [r.state for r in rows], "day": today,
                   "note": [f"deadline {r.deadline.isoformat()} passed unaccepted" for r in rows]})
    for r in rows:
        if r.line == "":
            passed = datetime.combine(r.deadline + timedelta(days=1), time(0), CHINA)
            events.append((_event(
                ev.TaskOverdue(plan_id=r.plan_id, task_no=r.task_no, region_code=r.region, lead_unit=r.lead,
                               deadline=r.deadline, lead_units=list(r.leads) or [r.lead]),
                event_id=overdue_event_id(r.plan_id, r.task_no, r.deadline), occurred_at=min(passed, now)),
                f"{r.plan_id}/{r.task_no}/"))
    await outbox.add(conn, SCHEMA, topology, events)
    return len(rows)


def task_notice_key(plan_id: str, task_no: str) -> str:
    """A task's key in deadline_notice, beside target instances' ids (which hold an '@')."""
    return f"task:{plan_id}/{task_no}"


async def announce_deadlines(conn: AsyncConnection, topology: Topology, today: date) -> int:
    """Stage TaskDeadlineApproaching for each task not accepted whose deadline is a lead time of
    contracts' DEADLINE_LEADS away (only the smallest lead reached: a task imported 20 days before
    its deadline is announced at 30 days with 20 left, never at 366). deadline_notice makes each
    (task, deadline, lead) once across replicas and restarts; a deadline moved is announced anew."""
    horizon = today + timedelta(days=max(ev.DEADLINE_LEADS))
    rows = (await conn.execute(text(
        f"SELECT t.plan_id, t.task_no, t.title, t.deadline, t.scope_region, t.lead, t.leads, p.state, "
        f"pl.title AS plan_title FROM {sql_name(plan_task)} t JOIN {sql_name(plan_progress)} p "
        f"ON p.plan_id = t.plan_id AND p.task_no = t.task_no AND p.line = '' JOIN {sql_name(plan_table)} pl "
        "ON pl.id = t.plan_id WHERE NOT t.removed AND NOT p.removed AND p.state <> 'accepted' "
        "AND t.deadline BETWEEN :today AND :horizon ORDER BY t.plan_id, t.position"),
        {"today": today, "horizon": horizon})).all()
    due = [(r, lead) for r in rows if (lead := ev.lead_reached(r.deadline, today)) is not None]
    if not due:
        return 0
    claimed = {(r[0], r[1], r[2]) for r in await conn.execute(text(
        f"INSERT INTO {sql_name(targets_store.deadline_notice)} (instance_id, deadline, days_ahead) "
        "SELECT * FROM unnest(CAST(:k AS text[]), CAST(:d AS date[]), CAST(:l AS int[])) "
        "ON CONFLICT DO NOTHING RETURNING instance_id, deadline, days_ahead"),
        {"k": [task_notice_key(r.plan_id, r.task_no) for r, _ in due], "d": [r.deadline for r, _ in due],
         "l": [lead for _, lead in due]})}
    events: list[tuple[Envelope[Any], str | None]] = []
    for r, lead in due:
        key = task_notice_key(r.plan_id, r.task_no)
        if (key, r.deadline, lead) not in claimed:
            continue
        events.append((_event(ev.TaskDeadlineApproaching(
            plan_id=r.plan_id, plan_title=r.plan_title[:200], task_no=r.task_no, title=r.title[:200],
            region_code=r.scope_region, deadline=r.deadline, days_ahead=(r.deadline - today).days,
            lead_days=lead, lead_units=list(r.leads or [r.lead])[:50], status=r.state),
            event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"cso:targets:task-deadline:{key}:{r.deadline}:{lead}")),
            f"{r.plan_id}/{r.task_no}/"))
    await outbox.add(conn, SCHEMA, topology, events)
    return len(events)


async def overdue_counts(conn: AsyncConnection, today: date) -> dict[tuple[str, str], int]:
    """Overdue tasks (under each of their lead units: joint leads each have it overdue) and lines
    (under their division's name) per plan."""
    rows = await conn.execute(text(
        f"SELECT p.plan_id, u.unit, count(*) FROM {sql_name(plan_progress)} p JOIN {sql_name(plan_task)} t "
        "USING (plan_id, task_no) CROSS JOIN LATERAL unnest(CASE WHEN p.line = '' "
        "AND cardinality(t.leads) > 0 THEN t.leads ELSE ARRAY[p.unit] END) AS u(unit) "
        "WHERE NOT p.removed AND NOT t.removed AND p.state <> 'accepted' "
        "AND t.deadline < :today GROUP BY p.plan_id, u.unit"), {"today": today})
    return {(r[0], r[1]): int(r[2]) for r in rows}


# --- whose region ------------------------------------------------------------------------------


async def plan_scope(conn: AsyncConnection, plan_id: str) -> str | None:
    """The region a stored plan covers (None: no such plan)."""
    scope: str | None = (await conn.execute(text(f"SELECT scope FROM {sql_name(plan_table)} WHERE id = :p"),
                                            {"p": plan_id})).scalar()
    return scope


async def progress_region(conn: AsyncConnection, plan_id: str, task_no: str, line: str) -> str | None:
    """The region a task ('' line: the task's scope) or one of its lines is carried out in."""
    region: str | None = (await conn.execute(text(
        f"SELECT region FROM {sql_name(plan_progress)} WHERE plan_id = :p AND task_no = :no AND line = :line"),
        {"p": plan_id, "no": task_no, "line": line})).scalar()
    return region
