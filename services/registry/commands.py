"""registry's commands: each a name for the event it produces, run on the path intake facts take
(record.py), with an Idempotency-Key kept reply. Over HTTP (`POST /commands/{command}`, api.py) and
NATS request-reply (`cso.cmd.registry.<command>`, api.py) alike."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import ContractError, FieldError, make_event
from contracts import events as ev
from contracts.envelope import event_field
from cso import idempotency
from cso.commands import parse_command
from cso.service import Runtime, errors_body

from . import store
from .domain import OutOfScope, Rejected
from .record import record

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
    "fund_project": ev.ProjectFunded,
    "end_project": ev.FundedProjectEnded,
    "open_facility": ev.FacilityOpened,
    "close_facility": ev.FacilityClosed,
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
