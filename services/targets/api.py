"""targets' HTTP routes (`router`) and NATS queries (`query`): coverage with drill-down, targets
with status and history, targets at risk, the units behind, a figure's series; the catalogue's
writes. What the routes need comes in by dependency (`Targets`, set up by app.py)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import ContractError, FieldError
from contracts.envelope import load_json
from cso.auth import PUBLIC, WRITE, Principal
from cso.service import Runtime, errors_body

from . import funding_views, store, views
from .coalescer import Coalescer
from .domain.catalogue import CatalogueError, parse_catalogue
from .evaluation import Clock

SERVICE = "targets"
# Run in the transaction of a catalogue write (a target put or retired): `before` first of all
# (plans take their links' lock before any target row), `after` once it is written (plans link
# their tasks to the catalogue targets that state them).
CatalogueHook = Callable[[AsyncConnection], Awaitable[None]]


@dataclass
class Targets:
    """What targets' routes and queries work with (app.state.targets)."""

    runtime: Runtime
    clock: Clock
    coalescer: Coalescer
    before_catalogue_write: list[CatalogueHook] = field(default_factory=list)
    after_catalogue_write: list[CatalogueHook] = field(default_factory=list)


def targets(request: Request) -> Targets:
    ctx: Targets = request.app.state.targets
    return ctx


async def planner(request: Request) -> Principal:
    """A caller with the planner role (the region is the route's to check)."""
    return await targets(request).runtime.auth.role("planner")(request)


Ctx = Annotated[Targets, Depends(targets)]
Planner = Annotated[Principal, Depends(planner)]
router = APIRouter()


async def answer(ctx: Targets, view: Callable[[AsyncConnection], Awaitable[Any]]) -> tuple[int, Any]:
    try:
        async with ctx.runtime.engine.connect() as conn:
            return 200, await view(conn)
    except views.ViewError as e:
        return e.status, errors_body([FieldError(field=e.field, message=e.message)])


async def respond(ctx: Targets, view: Callable[[AsyncConnection], Awaitable[Any]]) -> JSONResponse:
    status, body = await answer(ctx, view)
    return JSONResponse(json.loads(json.dumps(body, default=str)), status_code=status)


async def checked(conn: AsyncConnection, region: str, view: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
    await views.known_region(conn, region)
    return await view(conn)


# NATS request-reply: cso.query.targets.<coverage|targets|at_risk|behind|series>, a JSON object
# body: {"region": ..., and "as_of" (coverage), "figure" (series), "target"/"limit" (behind)}.
async def query(ctx: Targets, name: str, body: bytes | None) -> bytes:
    try:
        q = load_json(body or b"{}")
        if not isinstance(q, dict):
            raise ContractError.single("$", "a query is a JSON object")
    except ContractError as e:
        return json.dumps(errors_body(e.errors)).encode()
    region = str(q.get("region", ""))
    queries: dict[str, Callable[[AsyncConnection], Awaitable[Any]]] = {
        "coverage": lambda c: views.coverage(c, region, views.parse_day(q.get("as_of"))),
        "targets": lambda c: views.targets(c, region, as_of=views.parse_day(q.get("as_of"))),
        "at_risk": lambda c: views.at_risk(c, region, views.parse_day(q.get("as_of"))),
        "behind": lambda c: views.behind(c, region, None if q.get("target") is None else str(q["target"]),
                                         views.parse_limit(q.get("limit"))),
        "series": lambda c: views.series(c, region, str(q.get("figure", ""))),
    }
    if name not in queries:
        return json.dumps(errors_body([FieldError(field="query", message=f"unknown query {name!r}")])).encode()
    _, answered = await answer(ctx, lambda c: checked(c, region, queries[name]))
    return json.dumps(answered, default=str, ensure_ascii=False).encode()


@router.get("/coverage/{region}", **PUBLIC)
async def get_coverage(ctx: Ctx, region: str, as_of: str | None = None) -> JSONResponse:
    """A region's counters and figures with its children's (drill-down), as of a date if given."""
    return await respond(ctx, lambda c: views.coverage(c, region, views.parse_day(as_of)))


@router.get("/behind/{region}", **PUBLIC)
async def get_behind(ctx: Ctx, region: str, target: str | None = None, limit: str | None = None) -> JSONResponse:
    """The communities and townships under each applicable target's threshold, worst first.

    `GET /behind/510681?target=<catalogue id>&limit=100` (both optional; limit 1–10000, default
    100, per list). Public like the coverage it is read from. The answer:
    `{"code", "name", "tier", "limit", "targets": [{"target_id", "title", "source", "figure",
    "kind", "unit": "community"|"township", "threshold", "comparison", "deadline",
    "regions": [{"code", "status"}], "tiers": [{"tier": "township"|"community", "units",
    "behind", "list": [{"code", "name", "value", "short", "numerator", "denominator"}]}]}]}`.
    A target applies when set on the region, an ancestor or a region below it, on a figure per
    community (average organizations per urban / rural community: its townships and its
    communities are listed) or per township (hub and base coverage: its townships). `short` is
    how many organizations (or covered townships) a unit lacks; `units` how many the figure
    applies to; `behind` how many are under the threshold (`list` has the first `limit`).
    404 names `region` (unknown) or `target` (not applicable here); 422 names `limit`.
    See views.behind and domain/behind.py."""
    return await respond(ctx, lambda c: views.behind(c, region, target, views.parse_limit(limit)))


@router.get("/funding/{region}", **PUBLIC)
async def get_funding(ctx: Ctx, region: str, as_of: str | None = None, year: int | None = None) -> JSONResponse:
    """A region's funded projects beside its coverage, with its children's (drill-down): amount
    (`amount_fen`, and `amount_yuan` as an exact decimal string), projects awarded and running,
    per program (government_purchase, venture_philanthropy, incubation_fund), organizations
    supported, new organizations and the share funded within their first year. Public like
    coverage (aggregates, no record). `as_of` a day; `year` the awards of one year."""
    return await respond(ctx, lambda c: funding_views.funding(c, region, views.parse_day(as_of), year))


@router.get("/coverage/{region}/series", **PUBLIC)
async def get_series(ctx: Ctx, region: str, figure: str = Query(...)) -> JSONResponse:
    return await respond(ctx, lambda c: views.series(c, region, figure))


@router.get("/regions/{region}/targets", **PUBLIC)
async def get_targets(ctx: Ctx, region: str, as_of: str | None = None) -> JSONResponse:
    """A region's targets with their status and history; as of a day if given: each status
    evaluated for that day, with the status recorded then (`recorded`)."""
    return await respond(ctx, lambda c: checked(c, region, lambda c2: views.targets(
        c2, region, as_of=views.parse_day(as_of))))


@router.get("/targets/at-risk", **PUBLIC)
async def get_at_risk(ctx: Ctx, under: str = Query(...), as_of: str | None = None) -> JSONResponse:
    return await respond(ctx, lambda c: views.at_risk(c, under, views.parse_day(as_of)))


@router.get("/targets", **PUBLIC)
async def get_catalogue(ctx: Ctx) -> JSONResponse:
    async with ctx.runtime.engine.connect() as conn:
        rows = await store.catalogue_rows(conn)
    return JSONResponse(json.loads(json.dumps(rows, default=str)))


@router.put("/targets/{target_id}", **WRITE)
async def put_target(ctx: Ctx, who: Planner, target_id: str, request: Request) -> JSONResponse:
    """Add or replace a target; the body is one catalogue entry (its id must match the path).
    Needs the planner role; the target's scope region (and the one it replaces) within the token's."""
    item = load_json(await request.body())
    if not isinstance(item, dict) or item.get("id") != target_id:
        return JSONResponse(errors_body([FieldError(field="id", message="must equal the path's id")]), 422)
    try:
        async with ctx.runtime.engine.begin() as conn:
            for hook in ctx.before_catalogue_write:
                await hook(conn)
            replaced = await store.target_region(conn, target_id, lock=True)
            for region in (replaced, parse_catalogue({"targets": [item]}, "api")[0].scope_region):
                if region is not None:
                    who.require_region(region)
            spec = await store.upsert_spec(conn, item, "api")
            for hook in ctx.after_catalogue_write:
                await hook(conn)
    except CatalogueError as e:
        return JSONResponse(errors_body([FieldError(field="target", message=p) for p in e.problems]), 422)
    ctx.coalescer.catalogue_changed()
    return JSONResponse({"ok": True, "id": spec.id})


@router.delete("/targets/{target_id}", **WRITE)
async def retire_target(ctx: Ctx, who: Planner, target_id: str) -> JSONResponse:
    async with ctx.runtime.engine.begin() as conn:
        for hook in ctx.before_catalogue_write:
            await hook(conn)
        if (region := await store.target_region(conn, target_id, lock=True)) is not None:
            who.require_region(region)
        retired = await store.retire_targets(conn, [target_id])
        for hook in ctx.after_catalogue_write:
            await hook(conn)
    if retired == 0:
        raise HTTPException(404, detail=f"id: no target {target_id}")
    ctx.coalescer.catalogue_changed()
    return JSONResponse({"ok": True, "id": target_id, "retired": True})
