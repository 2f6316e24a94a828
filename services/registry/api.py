"""registry's HTTP and NATS request-reply edges: commands, the sheet upload, receipts by event id,
organizations and divisions as registry holds them.

The routes are on `router`, which app.py includes; what a route needs comes in by injection: the
service's Runtime (`RuntimeDep`, from `app.state.runtime`) and the caller (`Registrar`, `Reader`,
`Caller`: cso/auth.py). Each route declares its access class (PUBLIC, SCOPED, WRITE), which the
runtime enforces before the route runs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any, cast
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from faststream.nats import NatsMessage

from contracts import ContractError, FieldError
from contracts.asyncapi import DOCUMENT as ASYNCAPI
from contracts.codes import is_digits
from contracts.receipts import MAX_HTTP_IDS, MAX_NATS_IDS
from cso import idempotency
from cso.auth import ADMIN, PUBLIC, SCOPED, WRITE, AuthError, Principal, source_of
from cso.service import Runtime, errors_body

from . import imports, receipts, sheet, store
from .commands import execute


def runtime_of(request: Request) -> Runtime:
    """The service's Runtime, put on the app by app.create_app."""
    return cast(Runtime, request.app.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(runtime_of)]


async def registrar(request: Request, runtime: RuntimeDep) -> Principal:
    """A caller with the registrar role (its region is checked against each record)."""
    return await runtime.auth.role("registrar")(request)


async def reader(request: Request, runtime: RuntimeDep) -> Principal:
    """The reader of a record (CSO_READ_AUTH=scoped: a token, whose region the route checks)."""
    return await runtime.auth.reader()(request)


async def caller(request: Request, runtime: RuntimeDep) -> Principal:
    """Any caller with a valid token (anyone with CSO_AUTH=off)."""
    return await runtime.auth.caller()(request)


Registrar = Annotated[Principal, Depends(registrar)]
Reader = Annotated[Principal, Depends(reader)]


async def known_region(code: str, runtime: RuntimeDep) -> str:
    """A route's region `{code}`: a division code (422 naming `code` otherwise) that the divisions
    registry holds (404). The reads of a region's organizations, facilities and projects share it."""
    if not is_digits(code) or len(code) not in (2, 4, 6, 9, 12):
        raise HTTPException(422, detail=f"code: {code!r} is not a division code")
    async with runtime.engine.connect() as conn:
        if not await store.division_known(conn, code):
            raise HTTPException(404, detail=f"code: unknown region {code}")
    return code


KnownRegion = Annotated[str, Depends(known_region)]
Caller = Annotated[Principal, Depends(caller)]

router = APIRouter()
_ASYNCAPI = ASYNCAPI.read_bytes()
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@router.get("/asyncapi.json", **PUBLIC)
async def asyncapi_document() -> Response:
    """The AsyncAPI 3 document of cso's bus (contracts/asyncapi.json): its channels, messages,
    headers and NATS users. The same for everyone: it holds no data."""
    return Response(_ASYNCAPI, media_type="application/json")


# --- commands -----------------------------------------------------------------------------------

@router.post("/commands/{command}", **WRITE)
async def command(command: str, request: Request, runtime: RuntimeDep, who: Registrar) -> JSONResponse:
    """Run a registry command; the body is the payload of the event it produces. Needs a
    token with the registrar role; the record must lie within the token's region. The event's
    source is the token's (an X-Cso-Source header that differs is refused). With an
    Idempotency-Key header, a command sent again answers its first reply (cso/idempotency.py)."""
    source = source_of(who, request)
    actor = who.sub if who.authenticated else None
    status, result = await execute(
        runtime, command, await request.body(), source, who.scope, actor,
        key=request.headers.get(idempotency.HEADER),
        caller=idempotency.http_caller(who.authenticated, who.sub, source))
    return JSONResponse(result, status_code=status)


async def on_command(runtime: Runtime, msg: NatsMessage) -> bytes:
    """`cso.cmd.registry.<command>`: one subscriber for every command, so an unknown command gets a
    typed error, not silence."""
    command = msg.raw_message.subject.rsplit(".", 1)[-1]
    headers = msg.headers or {}
    source = headers.get("Cso-Source", "nats-command")
    _, result = await execute(runtime, command, msg.body, source, key=headers.get(idempotency.HEADER))
    return json.dumps(result, default=str).encode()


# --- the organizations sheet (imports.py) -------------------------------------------------------

def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


@router.get("/imports/template.xlsx", **PUBLIC)
async def template_xlsx() -> Response:
    """The organizations sheet to fill in: a sheet per kind (备案, 登记, 枢纽型组织, 孵化基地) with
    Chinese headers, and a 说明 sheet mapping each header to its field and each word to its value."""
    return Response(sheet.template_xlsx(), media_type=XLSX, headers=_attachment("organizations.xlsx"))


@router.get("/imports/template.csv", **PUBLIC)
async def template_csv() -> Response:
    """The same as one CSV (UTF-8 with a BOM): a 类型 column names each row's kind."""
    return Response(sheet.template_csv(), media_type="text/csv; charset=utf-8",
                    headers=_attachment("organizations.csv"))


@router.post("/imports", **WRITE)
async def upload(request: Request, runtime: RuntimeDep, who: Registrar, dry_run: bool = True,
                 partial: bool = False, progress: bool = False) -> Response:
    """Upload the organizations sheet (the .xlsx or CSV file as the body). Needs the registrar
    role; every row must lie within the token's region. `dry_run` (the default) only reports a
    verdict per row; `dry_run=false` applies the sheet: all of it, or nothing while a row is
    refused, unless `partial=true` (then the good rows, nothing of a refused one). 200: nothing
    refused (or a dry run); 207: applied in part; 422: refused rows, nothing applied.
    `progress=true` streams NDJSON lines: {"progress": …} as it goes, then {"status", "result"}."""
    job = imports.Upload(await request.body(), dry_run, partial, source_of(who, request), who.scope,
                         who.sub if who.authenticated else None)
    if not progress:
        outcome = None
        async for item in imports.run(runtime, job):
            if isinstance(item, imports.Outcome):
                outcome = item
        assert outcome is not None
        return JSONResponse(outcome.body, status_code=outcome.status)

    async def lines() -> AsyncIterator[bytes]:
        async for item in imports.run(runtime, job):
            line = ({"status": item.status, "result": item.body} if isinstance(item, imports.Outcome)
                    else {"progress": asdict(item)})
            yield json.dumps(line, ensure_ascii=False).encode() + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


# --- receipts by event id (receipts.py) ---------------------------------------------------------

# Declared a write (it is a POST): a token always, since the caller's source is the token's.
@router.post("/receipts", **WRITE)
async def post_receipts(request: Request, runtime: RuntimeDep, who: Caller) -> JSONResponse:
    """What registry did with each event id: accepted (the record), refused (why), or unknown
    (send it again). A token answers for its own source (its `source` claim, else its `sub`);
    admin for any `source`."""
    query = receipts.parse_query(await request.body(), MAX_HTTP_IDS)
    source = query.source
    if who.authenticated and ADMIN not in who.roles:
        if source is not None and source != who.source:
            raise AuthError(403, "source", f"{source!r} is not you ({who.source!r}); other sources need admin")
        source = who.source
    async with runtime.engine.connect() as conn:
        answer = await receipts.receipts(conn, source, query.event_ids)
    return JSONResponse(json.loads(receipts.dump(answer)))


async def on_receipts_query(runtime: Runtime, msg: NatsMessage) -> bytes:
    """`cso.query.registry.receipts.<source>`: the NATS user may ask for its own source only
    (cso/natsauth.py), so the subject names whose receipts these are."""
    source = msg.raw_message.subject.rsplit(".", 1)[-1]
    try:
        query = receipts.parse_query(msg.body, MAX_NATS_IDS)
        if query.source is not None and query.source != source:
            raise ContractError.single("source", f"the subject asks for {source!r}; leave source out")
    except ContractError as e:
        return json.dumps({**errors_body(e.errors), "status": 422}).encode()
    async with runtime.engine.connect() as conn:
        data = receipts.dump(await receipts.receipts(conn, source, query.event_ids))
    max_payload = runtime.nc.max_payload if runtime.nc is not None else 1024 * 1024
    if len(data) > max_payload:
        error = ContractError.single("event_ids", f"the answer ({len(data)} bytes) exceeds a NATS message "
                                                  f"({max_payload}); ask for fewer ids")
        return json.dumps({**errors_body(error.errors), "status": 413}).encode()
    return data


def answer_requests(runtime: Runtime) -> None:
    """registry's NATS request-reply endpoints: commands and receipts queries."""

    async def commands(msg: NatsMessage) -> bytes:
        return await on_command(runtime, msg)

    async def receipts_query(msg: NatsMessage) -> bytes:
        return await on_receipts_query(runtime, msg)

    runtime.on_request(runtime.topology.command_subject(runtime.name, "*"), commands)
    runtime.on_request(runtime.topology.query_subject(runtime.name, "receipts.*"), receipts_query)


# --- reads: organizations and divisions ---------------------------------------------------------

def _division_code(code: str) -> None:
    if not is_digits(code) or len(code) not in (2, 4, 6, 9, 12):
        raise ContractError.single("code", f"{code[:20]!r} is not a division code (2, 4, 6, 9 or 12 digits)")


def _page(region: dict[str, Any], children: list[dict[str, Any]], total: int, limit: int) -> dict[str, Any]:
    """A region with a page of its children (up to `limit`; one more was read to know if more follow)."""
    more = len(children) > limit
    page = children[:limit]
    return region | {"children": page, "total_children": total,
                     "next_after": page[-1]["code"] if more else None}


@router.get("/organizations/{org_id}", **SCOPED)
async def organization(org_id: UUID, runtime: RuntimeDep, who: Reader) -> dict[str, Any]:
    """An organization; with CSO_READ_AUTH=scoped for a token of its community's region."""
    async with runtime.engine.connect() as conn:
        view = await store.organization_view(conn, org_id)
    if view is None:
        raise HTTPException(404, detail=f"organization_id: no organization {org_id}")
    who.require_region(view["community_code"], "organization_id")
    return view


# Division names are public: what registry holds is what filings are checked against.
@router.get("/divisions", **PUBLIC)
async def provinces(runtime: RuntimeDep, limit: int = Query(100, ge=1, le=1000),
                    after: str | None = Query(None, pattern="^[0-9]{1,12}$")) -> JSONResponse:
    """The provinces registry holds divisions of, paged like GET /divisions/{code}."""
    async with runtime.engine.connect() as conn:
        children, total = await store.division_children(conn, "", after, limit + 1)
    return JSONResponse(_page({}, children, total, limit))


@router.get("/divisions/{code}", **PUBLIC)
async def division(code: str, runtime: RuntimeDep, limit: int = Query(100, ge=1, le=1000),
                   after: str | None = Query(None, pattern="^[0-9]{1,12}$")) -> JSONResponse:
    """A region (province, city, county, township or community) with its parents and its
    children one tier down, in code order, `limit` at a time (the next page: `after` =
    `next_after`): code, name, tier, kind (province, city, county; street, town, township,
    special; community, village, other) and, for a community, its urban/rural class."""
    _division_code(code)
    async with runtime.engine.connect() as conn:
        region = await store.division(conn, code)
        if region is None:
            return JSONResponse(errors_body([FieldError(field="code", message=(
                f"no region {code} in the divisions registry holds"))]), status_code=404)
        children, total = await store.division_children(conn, code, after, limit + 1)
    return JSONResponse(_page(region, children, total, limit))


@router.get("/regions/{code}/organizations", **SCOPED)
async def organizations(code: KnownRegion, runtime: RuntimeDep, limit: int = Query(50, ge=1, le=1000),
                        after: UUID | None = None,
                        status: str | None = Query(None, pattern="^(active|deregistered|revoked)$"),
                        ) -> dict[str, Any]:
    """The organizations of a region, `limit` at a time in id order (the next page: `after`)."""
    async with runtime.engine.connect() as conn:
        items = await store.organizations_in(conn, code, status, limit, after)
    return {"region": code, "items": items,
            "next_after": str(items[-1]["id"]) if len(items) == limit else None}
