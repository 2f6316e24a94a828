"""targets as a process: `python -m cso.http_server services.targets.app:create_app` (CSO_* settings,
services/targets/settings.py).

Here the parts meet: the consumers with their handler table (handlers.py), the coalescer
(coalescer.py), the routes and NATS queries of targets (api.py) and of its plans (plans/api.py),
which reach the coalescer only through the interface plans/api.py declares."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from faststream.nats import NatsMessage

from cso.database import migrate
from cso.service import Runtime
from cso.settings import Settings

from . import api, handlers, store
from .coalescer import Coalescer
from .evaluation import Clock
from .plans import api as plans_api
from .plans import store as plans_store
from .settings import targets_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    config = targets_settings(settings)
    runtime = Runtime(api.SERVICE, store.SCHEMA, config)
    clock = clock or Clock()
    coalescer = Coalescer(runtime, clock, config.catalogue)
    for consumes in handlers.tables(runtime.topology, coalescer.regions_changed):
        runtime.consume(consumes.subscription, consumes.table)
    runtime.every(coalescer.run)
    # A catalogue write links plans' tasks to the catalogue targets that state their promise.
    targets = api.Targets(runtime, clock, coalescer, before_catalogue_write=[plans_store.lock_links],
                          after_catalogue_write=[plans_store.link_targets])
    plans = plans_api.Plans(runtime, clock, coalescer, config.plans)
    runtime.every(plans.loop.run)

    async def on_query(msg: NatsMessage) -> bytes:
        name = msg.raw_message.subject.rsplit(".", 1)[-1]
        if name == "plan":
            return await plans_api.query(plans, None, msg.body)
        return await api.query(targets, name, msg.body)

    async def on_plan_query(msg: NatsMessage) -> bytes:
        return await plans_api.query(plans, msg.raw_message.subject.rsplit(".", 1)[-1], msg.body)

    runtime.on_request(runtime.topology.query_subject(api.SERVICE, "*"), on_query)
    # cso.query.targets.plan.<plans|ledger|task|lines|todo|revisions>: one token below "plan", so
    # the subscription above does not see these.
    runtime.on_request(runtime.topology.query_subject(api.SERVICE, "plan.*"), on_plan_query)

    app = runtime.http("cso targets", large_bodies=plans_api.LARGE_BODIES)
    app.state.runtime, app.state.clock, app.state.coalescer = runtime, clock, coalescer
    app.state.targets, app.state.plans = targets, plans
    app.include_router(plans_api.router)
    app.include_router(api.router)
    return app


def run_migrations(settings: Settings | None = None) -> None:
    migrate(MIGRATIONS, store.SCHEMA, (settings or Settings()).database_url)
