"""registry's read route for facilities (`router`, which app.py includes): a region's innovation
bases, demonstration parks, social-work stations and rooms, paged, each with its operating status."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Query

from contracts.events import FacilityKind
from cso.auth import SCOPED

from . import store
from .api import KnownRegion, Reader, RuntimeDep

router = APIRouter()


@router.get("/regions/{code}/facilities", **SCOPED)
async def facilities(code: KnownRegion, runtime: RuntimeDep, who: Reader, limit: int = Query(50, ge=1, le=1000),
                     after: UUID | None = None, kind: FacilityKind | None = None,
                     status: str | None = Query(None, pattern="^(running|closed)$")) -> dict[str, Any]:
    """The facilities at a region and below, in id order (`after` = `next_after` pages on): kind,
    name, region_code, started_on, ended_on and status (running, closed)."""
    who.require_region(code, "code")
    async with runtime.engine.connect() as conn:
        items = await store.facilities_in(conn, code, limit, after, kind.value if kind else None,
                                          None if status is None else status == "running")
    return {"region": code, "items": items, "next_after": str(items[-1]["id"]) if len(items) == limit else None}
