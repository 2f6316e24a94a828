"""registry's edges: commands over HTTP and NATS request-reply, facts from outside systems and
division reference data from JetStream, and the read API."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from uuid import UUID

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from faststream.nats import NatsMessage
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import ContractError, FieldError, make_event
from contracts import events as ev
from contracts.asyncapi import DOCUMENT as ASYNCAPI
from contracts.codes import is_digits
from contracts.envelope import event_field
from cso import idempotency
from cso.auth import PUBLIC, SCOPED, WRITE, Principal, source_of
from cso.commands import parse_command
from cso.outbox import Relay
from cso.service import Runtime, errors_body

from . import handlers, imports, receipts, sheet, store, verdicts, waiting
from .domain import OutOfScope, Rejected
from .losses import IntakeLosses
from .record import record

SERVICE = "registry"

COMMANDS: dict[str, type[ev.Payload]] = {
    "file": ev.OrganizationFiled,
    "register": ev.OrganizationRegistered,
    "update": ev.OrganizationUpdated,
    "deregister": ev.OrganizationDeregistered,
    "establish_hub": ev.HubEstablished,
    "dissolve_hub": ev.HubDissolved,
    "open_base": ev.IncubationBaseOpened,
    "close_base": ev.IncubationBaseClosed,
    "form_party": ev.PartyOrganizationFormed,
    "dissolve_party": ev.PartyOrganizationDissolved,
}


def _errors(errors: list[FieldError]) -> dict[str, Any]:
    """A command's errors, fields named as in the event (its body is the event's payload)."""
    return errors_body([FieldError(field=event_field(e.field), message=e.message) for e in errors])


async def execute(runtime: Runtime, command: str, body: bytes, source: str, scope: str | None = None,
                  actor: str | None = None, key: str | None = None,
                  caller: str | None = None) -> tuple[int, dict[str, Any]]:
    """Run one command; (HTTP status, typed result). The same result goes back over NATS.

    `scope` limits the regions the caller may write; `actor` (who asked) goes to the audit trail.
    `key`, the caller's Idempotency-Key: a command sent again with it answers its first reply
    (cso/idempotency.py); `caller` is whose key it is (default: the source's)."""
    try:
        once = idempotency.Key.of(key, caller or idempotency.nats_caller(source), command, body)
        payload = parse_command(COMMANDS, command, body)
        # Commands about an existing record take the record's region (record() fills it in).
        envelope = make_event(payload, source=source, region=payload.region_of() or "00")
    except ContractError as e:
        return 422, _errors(e.errors)
    except ValidationError as e:  # the envelope's own fields: a source header that is no source
        return 422, _errors(ContractError.from_validation(e).errors)

    async def decide(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
        try:
            async with conn.begin_nested():  # a refusal leaves nothing but its kept reply
                done = await record(conn, envelope, runtime.topology, check_region=False, scope=scope,
                                    actor=actor)
        except Rejected as e:
            status = (403 if isinstance(e, OutOfScope) else
                      404 if e.field.endswith("_id") and "no " in e.message else 409)
            return status, _errors(ContractError.single(e.field, e.message).errors)
        return 200, {"ok": True, "event_id": str(envelope.event_id), "type": envelope.type,
                     "id": done.aggregate_id, "region": done.region}

    try:
        (status, result), replayed = await idempotency.once(
            runtime.engine, store.SCHEMA, once, idempotency.ttl_of(runtime.settings.idempotency_hours), decide)
    except idempotency.KeyReused as e:
        return 422, errors_body(e.errors)
    if status == 200 and not replayed and runtime.relay:
        runtime.relay.notify()
    return status, result


def _page(region: dict[str, Any], children: list[dict[str, Any]], total: int, limit: int) -> dict[str, Any]:
    """A region with a page of its children (up to `limit`; one more was read to know if more follow)."""
    more = len(children) > limit
    page = children[:limit]
    return region | {"children": page, "total_children": total,
                     "next_after": page[-1]["code"] if more else None}


def build(runtime: Runtime, clock: waiting.Clock = waiting.utc_now) -> FastAPI:
    """`clock` decides when a waiting fact has waited too long (tests let days pass)."""
    topology = runtime.topology
    room = waiting.Room(topology, clock, timedelta(days=runtime.settings.waiting_max_days))
    handlers.subscribe(runtime, room)  # every event registry consumes: handlers.py

    async def tell(conn: AsyncConnection, settled: waiting.Settled) -> None:
        await verdicts.tell(conn, topology, clock, settled)
        if (settled.accepted or settled.refused) and runtime.relay:
            runtime.relay.notify()

    runtime.every(waiting.sweeping(runtime.engine, room, tell, runtime.settings.waiting_sweep_seconds))

    async def relay_receipts() -> None:
        """Publishes the receipts (verdicts.OUTBOX) as the service's relay publishes its events."""
        assert runtime.nc is not None
        await Relay(runtime.engine, runtime.nc.jetstream(), store.SCHEMA, "registry-receipts",
                    batch=runtime.settings.batch_size, retention=timedelta(days=runtime.settings.outbox_retention_days),
                    table=verdicts.OUTBOX).run()

    runtime.every(relay_receipts)

    # One subscriber for every command, so an unknown command gets a typed error, not silence.
    async def on_command(msg: NatsMessage) -> bytes:
        command = msg.raw_message.subject.rsplit(".", 1)[-1]
        headers = msg.headers or {}
        source = headers.get("Cso-Source", "nats-command")
        _, result = await execute(runtime, command, msg.body, source, key=headers.get(idempotency.HEADER))
        return json.dumps(result, default=str).encode()

    runtime.on_request(topology.command_subject(SERVICE, "*"), on_command)
    # Kept command replies expire (CSO_IDEMPOTENCY_HOURS; a value that cannot work stops the start).
    runtime.every(idempotency.pruning(runtime.engine, store.SCHEMA,
                                      idempotency.ttl_of(runtime.settings.idempotency_hours)))

    IntakeLosses(runtime, interval=runtime.settings.bus_check_seconds)
    app = runtime.http("cso registry", large_bodies={"/receipts": 1024 * 1024, "/imports": sheet.MAX_SHEET_BYTES})
    receipts.mount(runtime, app)
    asyncapi = ASYNCAPI.read_bytes()

    @app.get("/asyncapi.json", **PUBLIC)
    async def asyncapi_document() -> Response:
        """The AsyncAPI 3 document of cso's bus (contracts/asyncapi.json): its channels, messages,
        headers and NATS users. The same for everyone: it holds no data."""
        return Response(asyncapi, media_type="application/json")

    registrar = Depends(runtime.auth.role("registrar"))
    reader = Depends(runtime.auth.reader())
    imports.routes(app, runtime, registrar)

    @app.post("/commands/{command}", **WRITE)
    async def command(command: str, request: Request,
                      who: Principal = registrar) -> JSONResponse:
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

    @app.get("/organizations/{org_id}", **SCOPED)
    async def organization(org_id: UUID, who: Principal = reader) -> dict[str, Any]:
        """An organization; with CSO_READ_AUTH=scoped for a token of its community's region."""
        async with runtime.engine.connect() as conn:
            view = await store.organization_view(conn, org_id)
        if view is None:
            raise HTTPException(404, detail=f"organization_id: no organization {org_id}")
        who.require_region(view["community_code"], "organization_id")
        return view

    # Division names are public: what registry holds is what filings are checked against.
    @app.get("/divisions", **PUBLIC)
    async def provinces(limit: int = Query(100, ge=1, le=1000),
                        after: str | None = Query(None, pattern="^[0-9]{1,12}$")) -> JSONResponse:
        """The provinces registry holds divisions of, paged like GET /divisions/{code}."""
        async with runtime.engine.connect() as conn:
            children, total = await store.division_children(conn, "", after, limit + 1)
        return JSONResponse(_page({}, children, total, limit))

    @app.get("/divisions/{code}", **PUBLIC)
    async def division(code: str, limit: int = Query(100, ge=1, le=1000),
                       after: str | None = Query(None, pattern="^[0-9]{1,12}$")) -> JSONResponse:
        """A region (province, city, county, township or community) with its parents and its
        children one tier down, in code order, `limit` at a time (the next page: `after` =
        `next_after`): code, name, tier, kind (province, city, county; street, town, township,
        special; community, village, other) and, for a community, its urban/rural class."""
        if not is_digits(code) or len(code) not in (2, 4, 6, 9, 12):
            raise ContractError.single("code", f"{code[:20]!r} is not a division code (2, 4, 6, 9 or 12 digits)")
        async with runtime.engine.connect() as conn:
            region = await store.division(conn, code)
            if region is None:
                return JSONResponse(errors_body([FieldError(field="code", message=(
                    f"no region {code} in the divisions registry holds"))]), status_code=404)
            children, total = await store.division_children(conn, code, after, limit + 1)
        return JSONResponse(_page(region, children, total, limit))

    @app.get("/regions/{code}/organizations", **SCOPED)
    async def organizations(code: str, limit: int = Query(50, ge=1, le=1000),
                            after: UUID | None = None,
                            status: str | None = Query(None, pattern="^(active|deregistered|revoked)$"),
                            ) -> dict[str, Any]:
        if not is_digits(code) or len(code) not in (2, 4, 6, 9, 12):
            raise HTTPException(422, detail=f"code: {code!r} is not a division code")
        async with runtime.engine.connect() as conn:
            if not await store.division_known(conn, code):
                raise HTTPException(404, detail=f"code: unknown region {code}")
            items = await store.organizations_in(conn, code, status, limit, after)
        return {"region": code, "items": items,
                "next_after": str(items[-1]["id"]) if len(items) == limit else None}

    return app
