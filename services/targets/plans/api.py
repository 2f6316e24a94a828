"""Plans' edges inside the targets service: HTTP routes (`router`), NATS request-reply (`query`),
and a background loop that loads the bundled plans, adds lines for new divisions, flags overdue
tasks (TaskOverdue) and keeps the `cso_tasks_overdue` gauge.

Plans reach targets' evaluation only through `TargetsLink` (the coalescer: told when a plan
changed the catalogue, asked whether the catalogue has been evaluated once). app.py sets up a
`Plans` for the routes (app.state.plans). Writes need a token with the planner role
(cso/auth.py): importing a plan, within the plan's region; evidence, start and submit, within the
task's or line's region; accept and return, within the plan's region (the issuer reviews)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import quote, unquote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import ContractError, FieldError
from contracts.envelope import load_json
from contracts.jsontext import text_problem
from cso.auth import SCOPED, WRITE, Principal
from cso.service import Runtime, errors_body, repeat

from ..evaluation import Clock
from ..views import ViewError
from . import domain as d
from . import store, views
from .errors import Conflict, NotFound

log = logging.getLogger(__name__)
BY_HEADER = "x-cso-by"
# Evidence files (10 MB each, raw or base64 in a transition's body) on a task's routes.
LARGE_BODIES = {"/plans/[^/]+/tasks/.+": 16 * 1024 * 1024}
OVERDUE = Gauge("cso_tasks_overdue", "Overdue plan tasks (counted for each lead unit) and lines of expanded "
                "tasks (counted for their township or county), per plan", ["plan", "unit"])


class TargetsLink(Protocol):
    """What plans need of targets' evaluation (its coalescer)."""

    def catalogue_changed(self) -> None:
        """A plan added, changed or retired catalogue targets: expand them at the next step."""
        ...

    @property
    def ready(self) -> bool:
        """The default catalogue has been seeded and evaluated once."""
        ...


class PlanLoop:
    """Once a second: load bundled plans (once their divisions are known), add lines for new
    divisions, flag overdue tasks and lines, refresh the overdue gauge."""

    def __init__(self, runtime: Runtime, clock: Clock, targets: TargetsLink, directory: Path | None,
                 interval: float = 1.0) -> None:
        self.runtime, self.clock, self.targets, self.interval = runtime, clock, targets, interval
        self.bundled: list[tuple[str, str]] = []
        if directory is not None and directory.is_dir():
            self.bundled = [(p.name, p.read_text(encoding="utf-8"))
                            for p in sorted(directory.iterdir()) if p.suffix in (".yaml", ".yml", ".json")]
        self.seeded: dict[str, str] = {}   # file name -> hash of the text dealt with
        self.waiting: set[str] = set()
        self.labels: set[tuple[str, str]] = set()
        self.divisions_seen: int | None = None  # the divisions stream position lines were synced at
        self.linked = False

    def resync_targets(self) -> None:
        self.targets.catalogue_changed()

    async def seed(self) -> None:
        for name, source in self.bundled:
            digest = d.source_hash(source)
            if self.seeded.get(name) == digest:
                continue
            origin = f"bundled:{name}"
            async with self.runtime.engine.begin() as conn:
                try:
                    data = d.read_plan_text(source, name)
                    codes = sorted(d.referenced_codes(data))
                    known = await store.known_regions(conn, codes)
                    missing = [c for c in codes if c not in known]
                    if missing:
                        if name not in self.waiting:
                            log.info("plans: %s waits for divisions %s", name, ", ".join(missing))
                            self.waiting.add(name)
                        continue
                    plan = d.parse_plan(data, name, known, strict=False)
                except d.PlanError as e:
                    log.error("plans: bundled plan %s is invalid:\n%s", name, e)
                    self.seeded[name] = digest
                    continue
                await store.lock_plan(conn, plan.id)
                if await store.seed_hash(conn, plan.id) != digest:
                    result = await store.import_plan(conn, plan, origin, by="cso-targets", seed=digest)
                    for warning in plan.warnings:
                        log.warning("plans: %s", warning)
                    log.info("plans: loaded %s (%s, revision %s)", name, plan.id, result["revision"])
            self.seeded[name] = digest
            self.waiting.discard(name)
            self.resync_targets()

    async def step(self) -> None:
        # Plans' targets go into the catalogue table only after targets seeded its default
        # catalogue (which it does only into an empty table) and evaluated once.
        if self.bundled and self.targets.ready:
            await self.seed()
        if not self.linked and self.targets.ready:
            # Plans stored before a catalogue target stating their promise (or before links were
            # kept) are linked once at start; later, every import and catalogue change links.
            async with self.runtime.engine.begin() as conn:
                await store.link_targets(conn)
            self.linked = True
            self.resync_targets()
        today = self.clock.today()
        async with self.runtime.engine.begin() as conn:
            # Lines follow the divisions: sync them when the divisions consumer has moved.
            seen = await store.divisions_position(conn, self.runtime.topology.stream("CSO_DIVISIONS"))
            if seen != self.divisions_seen:
                await store.sync_lines(conn)
            flagged = await store.sweep_overdue(conn, self.runtime.topology, today)
            flagged += await store.announce_deadlines(conn, self.runtime.topology, today)
            counts = await store.overdue_counts(conn, today)
        self.divisions_seen = seen
        for label in self.labels - set(counts):
            OVERDUE.labels(*label).set(0)
        for label, n in counts.items():
            OVERDUE.labels(*label).set(n)
        self.labels |= set(counts)
        if flagged and self.runtime.relay:
            self.runtime.relay.notify()

    async def run(self) -> None:
        await repeat(self.step, self.interval, "plans: background step")


# --- shared by HTTP and NATS ------------------------------------------------------------------


def _body(status: int, field: str, message: str) -> tuple[int, Any]:
    return status, errors_body([FieldError(field=field, message=message)])


async def _answer(runtime: Runtime, view: Callable[[AsyncConnection], Awaitable[Any]]) -> tuple[int, Any]:
    try:
        async with runtime.engine.connect() as conn:
            return 200, await view(conn)
    except ViewError as e:
        return _body(e.status, e.field, e.message)


def _queries(clock: Clock, q: dict[str, Any]) -> dict[str, Callable[[AsyncConnection], Awaitable[Any]]]:
    today = clock.today()
    plan, task, unit = str(q.get("plan", "")), str(q.get("task", "")), str(q.get("unit", ""))
    return {
        "plans": lambda c: views.plans(c, today),
        "ledger": lambda c: views.ledger(c, plan, today),
        "task": lambda c: views.task(c, plan, task, today),
        "lines": lambda c: views.lines(c, plan, task, today),
        "todo": lambda c: views.todo(c, unit, today),
        "revisions": lambda c: views.revisions(c, plan),
    }


async def query(ctx: Plans, name: str | None, body: bytes | None) -> bytes:
    """Answer a NATS query: `name` one of plans, ledger ({plan}), task ({plan, task}), lines
    ({plan, task}), todo ({unit}), revisions ({plan}); the body a JSON object. Without a name
    (the single subject cso.query.targets.plan) the body's "view" names it, else it follows from
    the keys given: task -> task, plan -> ledger, unit -> todo, none -> plans."""
    try:
        q = load_json(body or b"{}")
        if not isinstance(q, dict):
            raise ContractError.single("$", "a query is a JSON object")
    except ContractError as e:
        return json.dumps(errors_body(e.errors)).encode()
    queries = _queries(ctx.clock, q)
    if name is None:
        name = str(q.get("view") or ("task" if q.get("task") else "ledger" if q.get("plan")
                                     else "todo" if q.get("unit") else "plans"))
    if name not in queries:
        return json.dumps(errors_body([FieldError(
            field="query", message=f"unknown query {name!r}; one of {', '.join(queries)}")])).encode()
    _, answer = await _answer(ctx.runtime, queries[name])
    return json.dumps(answer, default=str, ensure_ascii=False).encode()


def _json(status: int, body: Any) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(body, default=str)), status_code=status)


MAX_LABEL = 200  # who acted, a file's name: TaskStatusChanged.by's limit


def header_text(request: Request, name: str) -> str | None:
    """A header's text: percent-encoded UTF-8 (``X-Cso-By: %E5%BC%A0%E4%B8%89``) or raw UTF-8;
    refused (422 naming the header) if it is too long or holds control characters."""
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        raw = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    return _label(unquote(raw).strip(), name) or None


def _label(value: str, field: str) -> str:
    if problem := text_problem(value):
        raise ViewError(422, field, problem)
    if len(value) > MAX_LABEL:
        raise ViewError(422, field, f"at most {MAX_LABEL} characters, got {len(value)}")
    return value


def _actor(request: Request, body: dict[str, Any]) -> str | None:
    by = body.get("by")
    if isinstance(by, str) and by.strip():
        return _label(by.strip(), "by")
    return header_text(request, BY_HEADER)


async def _object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = load_json(raw)
    except ContractError as e:
        raise ViewError(422, e.errors[0].field, e.errors[0].message) from None
    if not isinstance(body, dict):
        raise ViewError(422, "$", "expected a JSON object")
    return body


async def _read_limited(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > d.MAX_EVIDENCE_BYTES:
        raise d.EvidenceError("content", f"{declared} bytes; evidence is at most {d.MAX_EVIDENCE_BYTES} "
                              "bytes (10 MB)", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > d.MAX_EVIDENCE_BYTES:
            raise d.EvidenceError("content", f"more than {d.MAX_EVIDENCE_BYTES} bytes; evidence is at most "
                                  "10 MB", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _inline_evidence(body: dict[str, Any]) -> list[tuple[d.EvidenceFile, bytes, int | None]]:
    raw = body.get("evidence")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ViewError(422, "evidence", "expected a list of {filename, content_base64}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str) \
                or not isinstance(item.get("content_base64"), str):
            raise ViewError(422, f"evidence[{i}]", "expected {filename, content_base64}")
        try:
            content = base64.b64decode(item["content_base64"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise ViewError(422, f"evidence[{i}].content_base64", f"not base64: {e}") from None
        try:
            out.append((d.check_evidence(item["filename"], content), content,
                        d.check_count(item.get("count"))))
        except d.EvidenceError as e:
            raise d.EvidenceError(f"evidence[{i}].{e.field}", e.message, e.status) from None
    return out


async def _guarded(work: Callable[[], Awaitable[JSONResponse]]) -> JSONResponse:
    try:
        return await work()
    except ViewError as e:
        return _json(*_body(e.status, e.field, e.message))
    except NotFound as e:
        return _json(*_body(404, e.field, e.message))
    except Conflict as e:
        return _json(*_body(409, e.field, e.message))
    except d.TransitionError as e:
        return _json(*_body(e.status, e.field, e.message))
    except d.EvidenceError as e:
        return _json(*_body(e.status, e.field, e.message))
    except d.PlanError as e:
        return _json(422, errors_body([FieldError(field=p.path, message=str(p)) for p in e.problems]))


@dataclass
class Plans:
    """What plans' routes and queries work with (app.state.plans), and its background loop."""

    runtime: Runtime
    clock: Clock
    targets: TargetsLink
    directory: Path | None
    loop: PlanLoop = field(init=False)

    def __post_init__(self) -> None:
        self.loop = PlanLoop(self.runtime, self.clock, self.targets, self.directory)

    def published(self) -> None:
        if self.runtime.relay:
            self.runtime.relay.notify()


def plans(request: Request) -> Plans:
    ctx: Plans = request.app.state.plans
    return ctx


async def planner(request: Request) -> Principal:
    """A caller with the planner role (the region is the route's to check)."""
    return await plans(request).runtime.auth.role("planner")(request)


async def reader(request: Request) -> Principal:
    """The caller of a read of one plan (cso/auth.py Auth.reader)."""
    return await plans(request).runtime.auth.reader()(request)


Ctx = Annotated[Plans, Depends(plans)]
Planner = Annotated[Principal, Depends(planner)]
Reader = Annotated[Principal, Depends(reader)]
router = APIRouter()


async def respond(ctx: Plans, view: Callable[[AsyncConnection], Awaitable[Any]]) -> JSONResponse:
    return _json(*await _answer(ctx.runtime, view))


async def within(ctx: Plans, who: Principal, plan_id: str) -> None:
    """With CSO_READ_AUTH=scoped a plan is read by tokens of its region (a caller anywhere else
    learns no more than a missing plan would tell)."""
    if not who.authenticated:
        return
    async with ctx.runtime.engine.connect() as conn:
        scope = await store.plan_scope(conn, plan_id)
    if scope is not None:
        who.require_region(scope, "plan_id")


async def import_file(ctx: Plans, request: Request, expect_id: str | None, who: Principal) -> JSONResponse:
    source = (await request.body()).decode("utf-8", errors="replace")
    origin = request.query_params.get("file") or header_text(request, "x-cso-file") or "upload"
    by = header_text(request, BY_HEADER)
    async with ctx.runtime.engine.begin() as conn:
        plan = await store.parse(conn, source, origin, strict=True)
        if expect_id is not None and plan.id != expect_id:
            raise ViewError(422, "plan.id", f"{origin}: plan.id {plan.id!r} differs from the path's {expect_id!r}")
        for region in (await store.plan_scope(conn, plan.id), plan.scope):   # the plan it replaces too
            if region is not None:
                who.require_region(region)
        result = await store.import_plan(conn, plan, origin, by=by)
    ctx.loop.resync_targets()
    return _json(200, {"ok": True, **result})


@router.post("/plans", **WRITE)
async def post_plan(ctx: Ctx, who: Planner, request: Request) -> JSONResponse:
    """Import a plan file (YAML or JSON, the format of plans/README.md): an upsert; a changed
    plan gets a new revision with the diff. `?file=` names the file in error messages."""
    return await _guarded(lambda: import_file(ctx, request, None, who))


@router.put("/plans/{plan_id}", **WRITE)
async def put_plan(ctx: Ctx, who: Planner, plan_id: str, request: Request) -> JSONResponse:
    return await _guarded(lambda: import_file(ctx, request, plan_id, who))


@router.get("/plans", **SCOPED)
async def get_plans(ctx: Ctx) -> JSONResponse:
    return await respond(ctx, lambda c: views.plans(c, ctx.clock.today()))


@router.get("/plans/{plan_id}", **SCOPED)
async def get_ledger(ctx: Ctx, who: Reader, plan_id: str) -> JSONResponse:
    """The plan's ledger: its tasks overdue first, then by state; its completion share."""
    await within(ctx, who, plan_id)
    return await respond(ctx, lambda c: views.ledger(c, plan_id, ctx.clock.today()))


@router.get("/plans/{plan_id}/revisions", **SCOPED)
async def get_revisions(ctx: Ctx, who: Reader, plan_id: str) -> JSONResponse:
    await within(ctx, who, plan_id)
    return await respond(ctx, lambda c: views.revisions(c, plan_id))


@router.get("/plans/{plan_id}/tasks/{task_no}", **SCOPED)
async def get_task(ctx: Ctx, who: Reader, plan_id: str, task_no: str) -> JSONResponse:
    await within(ctx, who, plan_id)
    return await respond(ctx, lambda c: views.task(c, plan_id, task_no, ctx.clock.today()))


@router.get("/plans/{plan_id}/tasks/{task_no}/lines", **SCOPED)
async def get_lines(ctx: Ctx, who: Reader, plan_id: str, task_no: str) -> JSONResponse:
    """Per-township (or per-county) progress of an expanded task."""
    await within(ctx, who, plan_id)
    return await respond(ctx, lambda c: views.lines(c, plan_id, task_no, ctx.clock.today()))


@router.get("/plans/{plan_id}/evidence/{evidence_id}", **SCOPED)
async def get_evidence(ctx: Ctx, who: Reader, plan_id: str, evidence_id: str) -> Response:
    await within(ctx, who, plan_id)
    try:
        async with ctx.runtime.engine.connect() as conn:
            row = await views.evidence_file(conn, plan_id, evidence_id)
    except ViewError as e:
        return _json(*_body(e.status, e.field, e.message))
    return Response(bytes(row.content), media_type=row.media_type, headers={
        "Content-Disposition": f"attachment; filename*=UTF-8''{_quote(row.filename)}",
        "X-Checksum-Sha256": row.sha256})


async def upload(ctx: Plans, request: Request, plan_id: str, task_no: str, line: str, who: Principal) -> JSONResponse:
    filename = request.query_params.get("filename") or header_text(request, "x-cso-filename") or ""
    content = await _read_limited(request)
    file = d.check_evidence(filename, content)
    count = d.check_count(request.query_params.get("count"))
    async with ctx.runtime.engine.begin() as conn:
        if (region := await store.progress_region(conn, plan_id, task_no, line)) is not None:
            who.require_region(region)
        stored = await store.add_evidence(conn, plan_id, task_no, line, file, content,
                                          header_text(request, BY_HEADER), ctx.clock.today(), count)
    return _json(201, {"ok": True, **stored})


@router.post("/plans/{plan_id}/evidence/{evidence_id}/confirm", **WRITE)
async def post_confirm(ctx: Ctx, who: Planner, plan_id: str, evidence_id: str, request: Request) -> JSONResponse:
    """An accepter confirms the number an evidence file carries (body {by}, or X-Cso-By): reviewing
    is the plan's issuer's, so within the plan's region, like accept."""
    async def work() -> JSONResponse:
        body = await _object(request)
        by = _actor(request, body)
        if by is None:
            raise ViewError(422, "by", f"who confirms: give 'by' in the body or the {BY_HEADER} header")
        async with ctx.runtime.engine.begin() as conn:
            if (region := await store.plan_scope(conn, plan_id)) is not None:
                who.require_region(region)
            confirmed = await store.confirm_count(conn, plan_id, evidence_id, by, ctx.clock.today())
        return _json(200, {"ok": True, **confirmed})
    return await _guarded(work)


@router.post("/plans/{plan_id}/tasks/{task_no}/evidence", **WRITE)
async def post_evidence(ctx: Ctx, who: Planner, plan_id: str, task_no: str, request: Request) -> JSONResponse:
    """Attach an evidence file (the raw body; `?filename=report.pdf`, `&count=12`: the number it
    carries, activities held): pdf, jpg, png, docx or xlsx by content, at most 10 MB; kept with its
    SHA-256."""
    return await _guarded(lambda: upload(ctx, request, plan_id, task_no, "", who))


@router.post("/plans/{plan_id}/tasks/{task_no}/lines/{line}/evidence", **WRITE)
async def post_line_evidence(ctx: Ctx, who: Planner, plan_id: str, task_no: str, line: str,
                             request: Request) -> JSONResponse:
    return await _guarded(lambda: upload(ctx, request, plan_id, task_no, line, who))


async def move(ctx: Plans, request: Request, plan_id: str, task_no: str, line: str, action: str,
               who: Principal) -> JSONResponse:
    body = await _object(request)
    by = _actor(request, body)
    if by is None:
        raise ViewError(422, "by", f"who {action}s: give 'by' in the body or the {BY_HEADER} header")
    note = body.get("reason") if action == d.Action.RETURN.value and body.get("reason") else body.get("note")
    if note is not None and not isinstance(note, str):
        raise ViewError(422, "note", "expected text")
    evidence = _inline_evidence(body)
    async with ctx.runtime.engine.begin() as conn:
        # Work on a task or line is its region's; accepting or returning it, the plan's issuer's.
        review = action in (d.Action.ACCEPT.value, d.Action.RETURN.value)
        region = await (store.plan_scope(conn, plan_id) if review
                        else store.progress_region(conn, plan_id, task_no, line))
        if region is not None:
            who.require_region(region)
        result = await store.transition(conn, ctx.runtime.topology, plan_id=plan_id, task_no=task_no, line=line,
                                        action=action, by=by, note=note, today=ctx.clock.today(),
                                        evidence=evidence)
    ctx.published()
    return _json(200, {"ok": True, **result})


@router.post("/plans/{plan_id}/tasks/{task_no}/lines/{line}/{action}", **WRITE)
async def post_line_action(ctx: Ctx, who: Planner, plan_id: str, task_no: str, line: str, action: str,
                           request: Request) -> JSONResponse:
    """start | submit | accept | return one township's (or county's) line of an expanded task."""
    return await _guarded(lambda: move(ctx, request, plan_id, task_no, line, action, who))


@router.post("/plans/{plan_id}/tasks/{task_no}/{action}", **WRITE)
async def post_action(ctx: Ctx, who: Planner, plan_id: str, task_no: str, action: str,
                      request: Request) -> JSONResponse:
    """start | submit (note + evidence) | accept | return (reason) a task; body {by, note,
    reason, evidence: [{filename, content_base64}]}, or `by` in the X-Cso-By header."""
    return await _guarded(lambda: move(ctx, request, plan_id, task_no, "", action, who))


@router.get("/units/{unit}/todo", **SCOPED)
async def get_todo(ctx: Ctx, unit: str) -> JSONResponse:
    """What a unit has open across plans, overdue first."""
    return await respond(ctx, lambda c: views.todo(c, unit, ctx.clock.today()))


def _quote(name: str) -> str:
    return quote(name, safe="")
