"""targets' edges: consumers of registry, training and divisions events; the coalescing loop
(CoverageChanged, target statuses, the daily tick); HTTP and NATS read API; catalogue writes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from faststream.nats import NatsMessage
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import ContractError, FieldError
from contracts.envelope import load_json
from cso.auth import PUBLIC, WRITE, Principal
from cso.consumer import Subscription
from cso.service import Runtime, errors_body, repeat

from . import evaluation, handlers, rebuild, store, views
from .domain.catalogue import DEFAULT_CATALOGUE, CatalogueError, TargetSpec, load_catalogue, parse_catalogue
from .plans import api as plans_api
from .plans import store as plans_store

SERVICE = "targets"
SCHEMA = store.SCHEMA
log = logging.getLogger(__name__)


async def load_specs(conn: AsyncConnection) -> list[TargetSpec]:
    rows = (await conn.execute(text(f"SELECT spec FROM {SCHEMA}.target ORDER BY id"))).scalars().all()
    return parse_catalogue({"targets": list(rows)}, "targets.target") if rows else []


async def target_region(conn: AsyncConnection, target_id: str, lock: bool = False) -> str | None:
    """The scope region of a target in the catalogue (None: no such target)."""
    region: str | None = (await conn.execute(text(
        f"SELECT spec->>'scope_region' FROM {SCHEMA}.target WHERE id = :id" + (" FOR UPDATE" if lock else "")),
        {"id": target_id})).scalar()
    return region


async def seed_catalogue(conn: AsyncConnection, path: Path) -> int:
    """Load the default catalogue once (a fresh database); later changes go through the API."""
    if (await conn.execute(text(f"SELECT 1 FROM {SCHEMA}.target LIMIT 1"))).first():
        return 0
    import yaml

    load_catalogue(path)  # validates the whole file before anything is written
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))["targets"]  # noqa: ASYNC240 (once, at start)
    for item in raw:
        await upsert_spec(conn, item, str(path))
    return len(raw)


async def upsert_spec(conn: AsyncConnection, item: dict[str, Any], origin: str) -> TargetSpec:
    spec = parse_catalogue({"targets": [item]}, origin)[0]
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.target (id, spec, retired, origin) VALUES (:id, CAST(:spec AS jsonb), :r, :o) "
        "ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, retired = excluded.retired, "
        "origin = excluded.origin, updated_at = now()"),
        {"id": spec.id, "spec": json.dumps(item, default=str, ensure_ascii=False), "r": spec.retired,
         "o": origin})
    return spec


class Coalescer:
    """Once a second: figures of moved regions out, their targets re-evaluated; daily: every target."""

    def __init__(self, runtime: Runtime, clock: evaluation.Clock, interval: float = 1.0) -> None:
        self.runtime, self.clock, self.interval = runtime, clock, interval
        self.resync = asyncio.Event()
        self.resync.set()
        self.wake = asyncio.Event()
        self.evaluated_on: Any = None

    async def step(self) -> None:
        today = self.clock.today()
        topology = self.runtime.topology
        async with self.runtime.engine.begin() as conn:
            if self.resync.is_set():
                self.resync.clear()
                await evaluation.sync_instances(conn, await load_specs(conn), today)
                self.evaluated_on = None
            if self.evaluated_on != today:
                await evaluation.evaluate_instances(conn, topology, today)
                self.evaluated_on = today
            await evaluation.drain_dirty(conn, topology, today)
        if self.runtime.relay:
            self.runtime.relay.notify()

    async def run(self) -> None:
        await repeat(self.step, self.interval, "targets: evaluation")

    def applied(self, applied: handlers.Applied) -> None:
        """A batch changed the divisions: expand the targets over them again at the next step."""
        if applied.regions_changed:
            self.resync.set()


def build(runtime: Runtime, clock: evaluation.Clock | None = None,
          catalogue: Path | None = None) -> FastAPI:
    topology = runtime.topology
    clock = clock or evaluation.Clock()
    catalogue = catalogue or Path(os.environ.get("CSO_TARGETS_CATALOGUE") or DEFAULT_CATALOGUE)
    coalescer = Coalescer(runtime, clock)
    runtime.coalescer = coalescer  # type: ignore[attr-defined]
    events_in = handlers.EventsIn(on_applied=coalescer.applied)
    for stream, context in handlers.SUBSCRIPTIONS:
        runtime.consume(Subscription(stream, topology.context_subjects(context), f"targets-{context}"),
                        events_in)

    async def seed() -> None:
        async with runtime.engine.begin() as conn:
            # One replica seeds; the others wait on the lock and find the table filled.
            await conn.execute(text(f"LOCK TABLE {SCHEMA}.target IN EXCLUSIVE MODE"))
            await seed_catalogue(conn, catalogue)
        await rebuild.upgrade(runtime.engine)
        await coalescer.run()

    runtime.every(seed)

    async def answer(view: Callable[[AsyncConnection], Awaitable[Any]]) -> tuple[int, Any]:
        try:
            async with runtime.engine.connect() as conn:
                return 200, await view(conn)
        except views.ViewError as e:
            return e.status, errors_body([FieldError(field=e.field, message=e.message)])

    # NATS request-reply: cso.query.targets.<coverage|targets|at_risk|behind|series>, a JSON object
    # body: {"region": ..., and "as_of" (coverage), "figure" (series), "target"/"limit" (behind)}.
    async def on_query(msg: NatsMessage) -> bytes:
        name = msg.raw_message.subject.rsplit(".", 1)[-1]
        if name == "plan":
            return await plans_api.query(runtime, clock, None, msg.body)
        try:
            q = load_json(msg.body or b"{}")
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
        _, body = await answer(lambda c: _checked(c, region, queries[name]))
        return json.dumps(body, default=str, ensure_ascii=False).encode()

    runtime.on_request(topology.query_subject(SERVICE, "*"), on_query)

    app = runtime.http("cso targets", large_bodies=plans_api.LARGE_BODIES)
    app.state.runtime, app.state.clock = runtime, clock
    plans_api.mount(app, runtime, clock)
    planner = Depends(runtime.auth.role("planner"))

    async def respond(view: Callable[[AsyncConnection], Awaitable[Any]]) -> JSONResponse:
        status, body = await answer(view)
        return JSONResponse(json.loads(json.dumps(body, default=str)), status_code=status)

    @app.get("/coverage/{region}", **PUBLIC)
    async def get_coverage(region: str, as_of: str | None = None) -> JSONResponse:
        """A region's counters and figures with its children's (drill-down), as of a date if given."""
        return await respond(lambda c: views.coverage(c, region, views.parse_day(as_of)))

    @app.get("/behind/{region}", **PUBLIC)
    async def get_behind(region: str, target: str | None = None, limit: str | None = None) -> JSONResponse:
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
        return await respond(lambda c: views.behind(c, region, target, views.parse_limit(limit)))

    @app.get("/coverage/{region}/series", **PUBLIC)
    async def get_series(region: str, figure: str = Query(...)) -> JSONResponse:
        return await respond(lambda c: views.series(c, region, figure))

    @app.get("/regions/{region}/targets", **PUBLIC)
    async def get_targets(region: str, as_of: str | None = None) -> JSONResponse:
        """A region's targets with their status and history; as of a day if given: each status
        evaluated for that day, with the status recorded then (`recorded`)."""
        return await respond(lambda c: _checked(c, region, lambda c2: views.targets(
            c2, region, as_of=views.parse_day(as_of))))

    @app.get("/targets/at-risk", **PUBLIC)
    async def get_at_risk(under: str = Query(...), as_of: str | None = None) -> JSONResponse:
        return await respond(lambda c: views.at_risk(c, under, views.parse_day(as_of)))

    @app.get("/targets", **PUBLIC)
    async def get_catalogue() -> JSONResponse:
        async with runtime.engine.connect() as conn:
            rows = (await conn.execute(text(
                f"SELECT id, spec, retired, origin, updated_at FROM {SCHEMA}.target ORDER BY id"))).mappings().all()
        return JSONResponse(json.loads(json.dumps([dict(r) for r in rows], default=str)))

    @app.put("/targets/{target_id}", **WRITE)
    async def put_target(target_id: str, request: Request,
                         who: Principal = planner) -> JSONResponse:
        """Add or replace a target; the body is one catalogue entry (its id must match the path).
        Needs the planner role; the target's scope region (and the one it replaces) within the token's."""
        item = load_json(await request.body())
        if not isinstance(item, dict) or item.get("id") != target_id:
            return JSONResponse(errors_body([FieldError(field="id", message="must equal the path's id")]), 422)
        try:
            async with runtime.engine.begin() as conn:
                await plans_store.lock_links(conn)   # first: linking below locks plans and targets
                replaced = await target_region(conn, target_id, lock=True)
                for region in (replaced, parse_catalogue({"targets": [item]}, "api")[0].scope_region):
                    if region is not None:
                        who.require_region(region)
                spec = await upsert_spec(conn, item, "api")
                await plans_store.link_targets(conn)   # a plan's task stating it now shows this one
        except CatalogueError as e:
            return JSONResponse(errors_body([FieldError(field="target", message=p) for p in e.problems]), 422)
        coalescer.resync.set()
        return JSONResponse({"ok": True, "id": spec.id})

    @app.delete("/targets/{target_id}", **WRITE)
    async def retire_target(target_id: str,
                            who: Principal = planner) -> JSONResponse:
        async with runtime.engine.begin() as conn:
            await plans_store.lock_links(conn)   # first: linking below locks plans and targets
            if (region := await target_region(conn, target_id, lock=True)) is not None:
                who.require_region(region)
            result = await conn.execute(text(
                f"UPDATE {SCHEMA}.target SET retired = true, spec = jsonb_set(spec, '{{retired}}', 'true'), "
                "updated_at = now() WHERE id = :id"), {"id": target_id})
            await plans_store.link_targets(conn)   # a plan's task stating it gets its own again
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise HTTPException(404, detail=f"id: no target {target_id}")
        coalescer.resync.set()
        return JSONResponse({"ok": True, "id": target_id, "retired": True})

    return app


async def _checked(conn: AsyncConnection, region: str,
                   view: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
    await views.known_region(conn, region)
    return await view(conn)

