"""training's HTTP and NATS request-reply edges: commands, attendance sheets, and the read API.

The routes are on `router` (and `personal.router`), which app.py includes; what a route needs
comes in by injection: the service's Runtime (`RuntimeDep`), the ID-number key (`PiiKey`) and the
caller (`Trainer`, `Caller`: cso/auth.py, cso/deps.py). Each route declares its access class
(PUBLIC, SCOPED, PERSONAL, WRITE), which the runtime enforces before the route runs. The events
training consumes are in handlers.py."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, cast
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from faststream.nats import NatsMessage
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import ContractError
from contracts.codes import is_digits
from contracts.envelope import MAX_EVENT_BYTES
from cso import idempotency
from cso.auth import PERSONAL, PII_READER, PUBLIC, SCOPED, WRITE, Principal, source_of
from cso.commands import parse_command
from cso.deps import Caller, RuntimeDep, with_role
from cso.service import Runtime, errors_body

from . import domain, personal, sheet, store
from .commands import COMMANDS, AttendanceSheet, today
from .domain import OutOfScope, Rejected
from .record import Context, attendance_sheet, handle

SERVICE = "training"
log = logging.getLogger(__name__)

_SOURCE = re.compile(r"^[A-Za-z0-9_.:/-]{1,100}$")


def _status(e: Rejected) -> int:
    if isinstance(e, OutOfScope):
        return 403
    return 404 if e.field.endswith("_id") and e.message.startswith("no ") else 409


def _context(runtime: Runtime, key: bytes, source: str) -> Context:
    if not _SOURCE.fullmatch(source):
        raise ContractError.single("source", "1-100 characters of A-Z a-z 0-9 _ . : / -")
    return Context(runtime.topology, key, source, today())


async def execute(runtime: Runtime, key: bytes, command: str, body: bytes,
                  source: str, scope: str | None = None, idempotency_key: str | None = None,
                  caller: str | None = None) -> tuple[int, dict[str, Any]]:
    """Run one command; (HTTP status, typed result). The same result goes back over NATS.
    `scope`: the region prefix the caller may write (its token's); outside it is a 403.
    `idempotency_key`, the caller's Idempotency-Key: a command sent again with it answers its first
    reply (cso/idempotency.py); `caller` is whose key it is (default: the source's)."""
    try:
        once = idempotency.Key.of(idempotency_key, caller or idempotency.nats_caller(source), command, body)
        limit = 2 * sheet.MAX_SHEET_BYTES if COMMANDS.get(command) is AttendanceSheet else MAX_EVENT_BYTES
        cmd = parse_command(COMMANDS, command, body, limit)
        ctx = _context(runtime, key, source)
    except ContractError as e:
        return 422, errors_body(e.errors)
    if isinstance(cmd, AttendanceSheet):
        if cmd.sheet is not None:
            raw = cmd.sheet.encode()
        else:
            try:
                raw = base64.b64decode(cmd.sheet_base64 or "", validate=True)
            except binascii.Error:
                return 422, errors_body(ContractError.single("sheet_base64", "not base64").errors)
        return await upload(runtime, ctx, cmd.session_id, raw, cmd.dry_run, cmd.accept_partial, scope, once)

    async def decide(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        try:
            async with conn.begin_nested():  # a refusal leaves nothing but its kept reply
                done = await handle(conn, cmd, ctx, scope)
        except Rejected as e:
            return _status(e), errors_body(ContractError.single(e.field, e.message).errors)
        return 200, done.reply()

    try:
        (status, result), replayed = await _once(runtime, once, decide)
    except idempotency.KeyReused as e:
        return 422, errors_body(e.errors)
    except IntegrityError:
        # Two commands raced for the same person or place; the loser may simply retry (its key,
        # if any, was rolled back with it: the retry runs).
        log.info("command %s lost a race; refused", command)
        return 409, errors_body(ContractError.single("$", "a concurrent change conflicted; retry").errors)
    if status == 200 and not replayed and runtime.relay:  # it may have staged events
        runtime.relay.notify()
    return status, result


async def _once(runtime: Runtime, key: idempotency.Key | None,
                decide: Callable[[AsyncConnection], Awaitable[tuple[int, dict[str, Any]]]]
                ) -> tuple[tuple[int, dict[str, Any]], bool]:
    return await idempotency.once(runtime.engine, store.SCHEMA, key,
                                  idempotency.ttl_of(runtime.settings.idempotency_hours), decide)


async def upload(runtime: Runtime, ctx: Context, session_id: UUID, data: bytes, dry_run: bool,
                 accept_partial: bool, scope: str | None = None, key: idempotency.Key | None = None
                 ) -> tuple[int, dict[str, Any]]:
    """An attendance sheet: the row-by-row report, and the attendance written only if every row is
    good (or the caller explicitly accepts a partial sheet). A dry run writes nothing."""
    async def decide(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        try:
            async with conn.begin_nested():
                report, applied = await attendance_sheet(conn, session_id, data, ctx, dry_run,
                                                         accept_partial, scope)
        except sheet.SheetError as e:
            return 422, errors_body(ContractError.single(e.field, e.message).errors)
        except Rejected as e:
            return _status(e), errors_body(ContractError.single(e.field, e.message).errors)
        body = sheet_reply(session_id, report, dry_run, applied)
        return (200 if dry_run or report.clean else 207 if applied else 422), body

    try:
        return (await _once(runtime, key, decide))[0]
    except idempotency.KeyReused as e:
        return 422, errors_body(e.errors)


HELD = "held"


def sheet_reply(session_id: UUID, report: domain.SheetReport, dry_run: bool, applied: bool) -> dict[str, Any]:
    """What was applied and what was not. `ok`: the sheet is clean, or its good rows were applied
    (a partial sheet accepted); false only when refused rows kept anything from being written.
    `written`: the rows written; `not_written`: every row that was not, with its field and reason:
    a rejected row's own, or `held` for a good row of a sheet applied all or nothing."""
    written = [a.row for a in report.accepted] if applied else []
    not_written = [p.as_dict() for p in report.rejected]
    if not applied and not dry_run and report.accepted and not report.clean:
        not_written += [{"row": a.row, "field": "$", "reason": HELD,
                         "message": "not written: the sheet has rejected rows; resend with accept_partial=true"}
                        for a in report.accepted]
        not_written.sort(key=lambda r: int(str(r["row"])))
    return {
        "ok": report.clean or applied, "session_id": str(session_id), "dry_run": dry_run, "applied": applied,
        "rows": report.rows, "accepted": len(report.accepted), "rejected": [p.as_dict() for p in report.rejected],
        "written": written, "not_written": [] if dry_run else not_written,
        "attendance": [{"row": a.row, "person_id": str(a.person_id), "attended": a.attended}
                       for a in report.accepted],
        "note": None if applied or dry_run or report.clean else
        "nothing was written: fix the rejected rows, or resend with accept_partial=true",
    }


_masked = personal.masked


def _county(code: str) -> str:
    if not is_digits(code) or len(code) != 6:
        raise HTTPException(422, detail=f"code: {code!r} is not a county code (6 digits)")
    return code


def pii_key_of(request: Request) -> bytes:
    """The key ID numbers are hashed with, put on the app by app.create_app."""
    return cast(bytes, request.app.state.pii_key)


PiiKey = Annotated[bytes, Depends(pii_key_of)]
Trainer = Annotated[Principal, Depends(with_role("trainer"))]
router = APIRouter()


async def on_command(msg: NatsMessage, runtime: Runtime, key: bytes) -> bytes:
    """A command over NATS (`cso.cmd.training.<command>`): one subscriber for every command, so an
    unknown command gets a typed error, not silence."""
    command = msg.raw_message.subject.rsplit(".", 1)[-1]
    headers = msg.headers or {}
    source = headers.get("Cso-Source", "nats-command")
    _, result = await execute(runtime, key, command, msg.body, source,
                              idempotency_key=headers.get(idempotency.HEADER))
    return json.dumps(result, default=str).encode()


@router.post("/commands/{command}", **WRITE)
async def command(command: str, request: Request, runtime: RuntimeDep, key: PiiKey,
                  who: Trainer) -> JSONResponse:
    """Run a training command (add_member, add_trainee, update_member, remove_member, schedule, enrol,
    withdraw, attend, complete, cancel, record_exam, select_outstanding, attendance_sheet).
    Needs the trainer role; the county or session it touches must be within the token's region."""
    source = source_of(who, request)   # the token's; a differing X-Cso-Source is refused
    status, result = await execute(runtime, key, command, await request.body(), source, who.scope,
                                   idempotency_key=request.headers.get(idempotency.HEADER),
                                   caller=idempotency.http_caller(who.authenticated, who.sub, source))
    return JSONResponse(json.loads(json.dumps(result, default=str)), status_code=status)


@router.post("/sessions/{session_id}/attendance", **WRITE)
async def attendance(session_id: UUID, request: Request, runtime: RuntimeDep, key: PiiKey, who: Trainer,
                     dry_run: bool = False, accept_partial: bool = False) -> JSONResponse:
    """Upload an attendance sheet (the .xlsx or CSV file as the body: 姓名,身份证号,手机号,签到; a CSV
    in UTF-8 with or without BOM, or GBK). All rows or nothing, unless accept_partial=true;
    dry_run=true only reports. The reply lists the rows `written` and those `not_written` with
    their field and reason; 200: all written (or a dry run); 207: written in part
    (accept_partial), `ok` true; 422: rejected rows, nothing written, `ok` false."""
    source = source_of(who, request)
    data = await request.body()
    try:
        ctx = _context(runtime, key, source)
        # The key's fingerprint covers what the path and query say too.
        once = idempotency.Key.of(request.headers.get(idempotency.HEADER),
                                  idempotency.http_caller(who.authenticated, who.sub, source),
                                  f"attendance/{session_id}/{dry_run}/{accept_partial}", data)
    except ContractError as e:
        return JSONResponse(errors_body(e.errors), status_code=422)
    if len(data) > sheet.MAX_SHEET_BYTES:
        return JSONResponse(errors_body(ContractError.single(
            "sheet", f"{len(data)} bytes exceeds {sheet.MAX_SHEET_BYTES}").errors), status_code=413)
    status, result = await upload(runtime, ctx, session_id, data, dry_run, accept_partial, who.scope, once)
    return JSONResponse(result, status_code=status)

@router.get("/counties/{code}/pool", **PERSONAL)
async def pool(code: str, request: Request, runtime: RuntimeDep, who: Caller, include_removed: bool = False,
               unmasked: bool = False) -> dict[str, Any]:
    """A county's core-talent pool, each member with their training count (completions); names
    and phones masked, unless unmasked=true by a pii_reader of the county (recorded)."""
    county = _county(code)
    who.require_region(county, "code")
    if unmasked:
        who.require(PII_READER, personal=True)
    async with runtime.engine.begin() as conn:
        name = await store.county_name(conn, county)
        if name is None:
            raise HTTPException(404, detail=f"code: unknown county {county}")
        members = await store.pool_view(conn, county, include_removed)
        if unmasked:
            await personal.record_request(conn, who, "read_unmasked", None, county,
                                          personal.calling_system(who, request))
        else:
            members = [_masked(m) for m in members]
    current = [m for m in members if m["removed_on"] is None]
    return {"county": county, "name": name, "members": members, "total": len(current),
            "trained": sum(1 for m in current if m["trainings"] > 0),
            "by_role": {r: sum(1 for m in current if m["role"] == r) for r in domain.ROLES}}

@router.get("/counties/{code}/exams", **PUBLIC)
async def exams(code: str, runtime: RuntimeDep, year: int | None = Query(None, ge=1990, le=2100)) -> dict[str, Any]:
    """Social-work qualification exam takers and passes of the county's pool, per year and level."""
    county = _county(code)
    async with runtime.engine.connect() as conn:
        figures = await store.exam_figures(conn, county, year)
    return {"county": county, "year": year, "figures": figures}

@router.get("/counties/{code}/outstanding", **SCOPED)
async def outstanding(code: str, runtime: RuntimeDep,
                      year: int | None = Query(None, ge=1990, le=2100)) -> dict[str, Any]:
    """Outstanding organizations and leaders the county selected (per year)."""
    county = _county(code)
    async with runtime.engine.connect() as conn:
        items = await store.outstanding_view(conn, county, year)
    counts: dict[str, dict[str, int]] = {}
    for item in items:
        per_year = counts.setdefault(str(item["year"]), {"organization": 0, "leader": 0})
        per_year[item["kind"]] += 1
    return {"county": county, "year": year, "items": items, "counts": counts}

@router.get("/sessions/{session_id}", **PERSONAL)
async def session(session_id: UUID, runtime: RuntimeDep, who: Caller) -> dict[str, Any]:
    """A session and its roster (names masked): for a token of the organizer's region."""
    async with runtime.engine.connect() as conn:
        view = await store.session_view(conn, session_id)
    if view is None:
        raise HTTPException(404, detail=f"session_id: no session {session_id}")
    who.require_region(view["organizer_region"])
    roster = [_masked(r) for r in view["roster"]]
    enrolled = [r for r in roster if r["status"] == "enrolled"]
    return view | {"roster": roster, "enrolled": len(enrolled),
                   "attended": sum(1 for r in enrolled if r["attended"]),
                   "completed": sum(1 for r in roster if r["completion_id"] is not None)}

@router.get("/regions/{code}/sessions", **SCOPED)
async def sessions(code: str, runtime: RuntimeDep, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    if not is_digits(code) or len(code) not in (2, 4, 6, 9):
        raise HTTPException(422, detail=f"code: {code!r} is not a division code")
    async with runtime.engine.connect() as conn:
        items = await store.sessions_in(conn, code, limit)
    return {"region": code, "items": items}

@router.get("/people/{person_id}", **PERSONAL)
async def person(person_id: UUID, request: Request, runtime: RuntimeDep, who: Caller,
                 unmasked: bool = False) -> dict[str, Any]:
    """A person (masked; unmasked=true: in full, for a pii_reader of their county, recorded),
    their pool memberships and exams."""
    async with runtime.engine.begin() as conn:
        return await personal.person_view(conn, who, person_id, unmasked,
                                          personal.calling_system(who, request))

@router.get("/people/{person_id}/trainings", **PERSONAL)
async def trainings(person_id: UUID, runtime: RuntimeDep, who: Caller) -> dict[str, Any]:
    """A person's training history: every session they enrolled in, and what came of it."""
    async with runtime.engine.connect() as conn:
        return await personal.trainings_view(conn, who, person_id)

