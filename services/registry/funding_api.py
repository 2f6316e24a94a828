"""registry's read routes for funded projects (`router`, which app.py includes): one project, and a
region's projects, paged. Amounts are kept in whole fen and shown beside an exact yuan string."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query

from cso.auth import SCOPED

from . import funding_store
from .api import KnownRegion, Reader, RuntimeDep

router = APIRouter()


def _money(row: dict[str, Any]) -> dict[str, Any]:
    """The amount in yuan as an exact decimal string beside the integer fen it is kept in."""
    fen = int(row["amount_fen"])
    return row | {"amount_yuan": f"{fen // 100}.{fen % 100:02d}"}


@router.get("/projects/{project_id}", **SCOPED)
async def funded_project(project_id: UUID, runtime: RuntimeDep, who: Reader) -> dict[str, Any]:
    """A funded project: funder, recipient (or hub and beneficiaries), region, amount, period,
    status; with CSO_READ_AUTH=scoped for a token of its region."""
    async with runtime.engine.connect() as conn:
        found = await funding_store.project(conn, project_id)
    if found is None:
        raise HTTPException(404, detail=f"project_id: no project {project_id}")
    who.require_region(found["region_code"], "project_id")
    return _money(found)


@router.get("/regions/{code}/projects", **SCOPED)
async def funded_projects(code: KnownRegion, runtime: RuntimeDep, who: Reader, limit: int = Query(50, ge=1, le=1000),
                          after: UUID | None = None,
                          status: str | None = Query(None, pattern="^(active|completed|terminated)$"),
                          ) -> dict[str, Any]:
    """The projects counted in a region and below, in id order (`after` = `next_after` pages on)."""
    who.require_region(code, "code")
    async with runtime.engine.connect() as conn:
        items = await funding_store.projects_in(conn, code, limit, after, status)
    return {"region": code, "items": [_money(i) for i in items],
            "next_after": str(items[-1]["id"]) if len(items) == limit else None}
