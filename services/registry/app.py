"""registry as a process: `python -m cso.http_server services.registry.app:create_app` (CSO_* settings,
settings.py). What it is made of, in one place: the handler table of the events it consumes
(handlers.py), its background jobs, its NATS request-reply endpoints and HTTP routes (api.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from cso import idempotency
from cso.database import migrate
from cso.outbox import Relay
from cso.service import Runtime
from cso.settings import Settings

from . import api, facility_api, funding_api, handlers, sheet, store, verdicts, waiting
from .losses import IntakeLosses
from .settings import RegistrySettings
from .waiting import Clock, utc_now

SERVICE = "registry"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None, clock: Clock = utc_now) -> FastAPI:
    """`clock`: when a waiting fact has waited too long (waiting.py; tests let days pass)."""
    config = RegistrySettings.of(settings)
    runtime = Runtime(SERVICE, store.SCHEMA, config)
    room = waiting.Room(runtime.topology, clock, timedelta(days=config.waiting_max_days))
    handlers.subscribe(runtime, room)  # every event registry consumes, and its handler
    runtime.every(waiting.sweeping(runtime.engine, room, handlers.telling(runtime, room), config.waiting_sweep_seconds))
    runtime.every(_receipts_relay(runtime))
    # Kept command replies expire (CSO_IDEMPOTENCY_HOURS; a value that cannot work stops the start).
    runtime.every(idempotency.pruning(runtime.engine, store.SCHEMA, idempotency.ttl_of(config.idempotency_hours)))
    IntakeLosses(runtime, interval=config.bus_check_seconds)
    api.answer_requests(runtime)
    app = runtime.http("cso registry", large_bodies={"/receipts": 1024 * 1024, "/imports": sheet.MAX_SHEET_BYTES})
    app.state.runtime = runtime  # api.RuntimeDep
    app.include_router(api.router)
    app.include_router(funding_api.router)
    app.include_router(facility_api.router)
    return app


def _receipts_relay(runtime: Runtime) -> Callable[[], Awaitable[None]]:
    """Publishes the receipts (verdicts.OUTBOX) as the service's relay publishes its events."""

    async def relay() -> None:
        assert runtime.nc is not None
        settings = runtime.settings
        await Relay(runtime.engine, runtime.nc.jetstream(), store.SCHEMA, "registry-receipts",
                    batch=settings.batch_size, retention=timedelta(days=settings.outbox_retention_days),
                    table=verdicts.OUTBOX).run()

    return relay


def run_migrations(settings: Settings | None = None) -> None:
    migrate(MIGRATIONS, store.SCHEMA, (settings or Settings()).database_url)
