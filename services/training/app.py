"""training as a process: `python -m cso.http_server services.training.app:create_app` (settings.TrainingSettings:
the shared CSO_* settings, and CSO_TRAINING_PII_KEY, the secret ID numbers are hashed with)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from faststream.nats import NatsMessage

from cso import idempotency
from cso.database import migrate
from cso.service import Runtime
from cso.settings import Settings

from . import api, handlers, personal, sheet, store
from .settings import TrainingSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The composition root: the handler table, the NATS command endpoint, the background job, the
    HTTP routes."""
    own = TrainingSettings.of(settings)
    runtime = Runtime(api.SERVICE, store.SCHEMA, own)
    key = own.hashing_key()
    handlers.subscribe(runtime, key)     # the events training consumes: handlers.py

    async def on_command(msg: NatsMessage) -> bytes:
        return await api.on_command(msg, runtime, key)

    runtime.on_request(runtime.topology.command_subject(api.SERVICE, "*"), on_command)
    # Kept command replies expire (CSO_IDEMPOTENCY_HOURS; a value that cannot work stops the start).
    runtime.every(idempotency.pruning(runtime.engine, store.SCHEMA, idempotency.ttl_of(own.idempotency_hours)))
    sheets = 2 * sheet.MAX_SHEET_BYTES  # a CSV, or its base64 inside a command
    app = runtime.http("cso training", large_bodies={"/commands/attendance_sheet": sheets,
                                                     "/sessions/[^/]+/attendance": sheets})
    app.state.runtime, app.state.pii_key = runtime, key
    app.include_router(api.router)
    app.include_router(personal.router)
    return app


def run_migrations(settings: Settings | None = None) -> None:
    migrate(MIGRATIONS, store.SCHEMA, (settings or Settings()).database_url)
