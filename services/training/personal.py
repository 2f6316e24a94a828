"""A person's data in training, and who may see it (issue 8): the officials of the person's county
see it masked; a `pii_reader` of that region may read it unmasked and export everything held about
the person; a `pii_reader` or `admin` may erase it on request. Every unmasked read, export and
erasure is recorded (training.personal_data_request: the token's subject, region and roles, the
calling system, the time). Nothing here publishes anything: the bus only ever sees person ids.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from cso.auth import ADMIN, PERSONAL, PII_READER, Principal, source_of
from cso.deps import Caller, RuntimeDep

from . import domain, store

_SOURCE = re.compile(r"^[A-Za-z0-9_.:/-]{1,100}$")
ERASED = ("name", "phone", "id_hash", "id_masked", "membership.removal_reason")


def masked(row: dict[str, Any]) -> dict[str, Any]:
    """A person's row for the read API: name and phone masked, the ID number only masked anyway."""
    out = dict(row)
    if "name" in out:
        out["name"] = domain.mask_name(out["name"])
    if "phone" in out:
        out["phone"] = domain.mask_phone(out["phone"])
    return out


def calling_system(who: Principal, request: Request) -> str:
    """The calling system recorded with a personal data request: the token's source (its `source`
    claim, else `sub`; a differing X-Cso-Source header is refused). With CSO_AUTH=off nothing here
    is released, but a header that is no source is recorded as http-api rather than refused."""
    source = source_of(who, request)
    return source if _SOURCE.fullmatch(source) else "http-api"


async def record_request(conn: AsyncConnection, who: Principal, action: str, person_id: UUID | None,
                         county: str | None, source: str) -> None:
    await store.audit_personal_data(conn, action, person_id, county, who.sub, who.region, sorted(who.roles),
                                    source)


async def _county_of(conn: AsyncConnection, who: Principal, person_id: UUID) -> str | None:
    """The person's county, once they are known to exist and to be within the caller's region."""
    if await store.load_person(conn, person_id, lock=False) is None:
        raise HTTPException(404, detail=f"person_id: no person {person_id}")
    county = await store.person_county(conn, person_id)
    who.require_region(county)
    return county


async def person_view(conn: AsyncConnection, who: Principal, person_id: UUID, unmasked: bool,
                      source: str) -> dict[str, Any]:
    """A person, their pool memberships, trainee record and exams: masked, or in full for a
    pii_reader (recorded)."""
    if unmasked:
        who.require(PII_READER, personal=True)
    county = await _county_of(conn, who, person_id)
    view = await store.person_view(conn, person_id)
    assert view is not None
    if not unmasked:
        return masked(view)
    await record_request(conn, who, "read_unmasked", person_id, county, source)
    return view


async def trainings_view(conn: AsyncConnection, who: Principal, person_id: UUID) -> dict[str, Any]:
    await _county_of(conn, who, person_id)
    items = await store.trainings_of(conn, person_id)
    return {"person_id": str(person_id), "items": items,
            "completed": sum(1 for i in items if i["completion_id"] is not None)}


# The data subject's rights: GET /people/{id}/export and DELETE /people/{id} (app.py includes it).
router = APIRouter()


@router.get("/people/{person_id}/export", **PERSONAL)
async def export(person_id: UUID, request: Request, runtime: RuntimeDep,
                 who: Caller) -> dict[str, Any]:
    """Everything training holds about a person, unmasked: their record, pool memberships,
    trainings, exams, selections, hubs led, and who asked for their data. For a pii_reader of
    the person's region; the request is recorded."""
    who.require(PII_READER, personal=True)
    async with runtime.engine.begin() as conn:
        county = await _county_of(conn, who, person_id)
        await record_request(conn, who, "export", person_id, county, calling_system(who, request))
        data = await store.person_export(conn, person_id)
    return {"person_id": str(person_id), "county": county,
            "note": "a resident ID number is not kept: only its keyed hash (to find duplicates) "
                    "and its masked form", **(data or {})}

@router.delete("/people/{person_id}", **PERSONAL)
async def erase(person_id: UUID, request: Request, runtime: RuntimeDep,
                who: Caller) -> dict[str, Any]:
    """Erase a person's personal data on request (name, phone, ID-number hash and mask, removal
    reasons). Memberships, enrolments, completions and exams stay, without anything personal,
    so coverage figures keep their counts. For a pii_reader or admin of the person's region;
    the request is recorded."""
    who.require(PII_READER, ADMIN, personal=True)
    source = calling_system(who, request)
    async with runtime.engine.begin() as conn:
        county = await _county_of(conn, who, person_id)
        await store.erase_person(conn, person_id, source)
        await record_request(conn, who, "erase", person_id, county, source)
    return {"ok": True, "person_id": str(person_id), "county": county, "erased": list(ERASED),
            "kept": "pool memberships, enrolments, completions and exams, without personal data"}
