"""notify as a process: `python -m cso.http_server services.notify.app:create_app` (CSO_* settings; e-mail
through CSO_SMTP_HOST/PORT/FROM[/USERNAME/PASSWORD/STARTTLS/TLS]; delivery tuning CSO_NOTIFY_*:
see settings.NotifySettings)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from cso.database import migrate
from cso.service import Runtime
from cso.settings import Settings

from . import api, handlers, store
from .routing import Clock, Scheduler
from .sender import Sender
from .settings import NotifySettings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    """notify on `settings` (a NotifySettings, or the shared ones with notify's own from the
    environment); `clock` drives reminders and digests (tests move it)."""
    own = NotifySettings.of(settings)
    runtime = Runtime(api.SERVICE, store.SCHEMA, own)
    clock = clock or Clock()
    sender = Sender(runtime, own)
    scheduler = Scheduler(runtime, own, clock, sender)
    handlers.subscribe(runtime, clock, sender)      # the events notify consumes: handlers.py
    runtime.every(sender.run)
    runtime.every(scheduler.run)
    app = runtime.http("cso notify")
    app.state.runtime, app.state.clock, app.state.config = runtime, clock, own
    app.state.sender, app.state.scheduler = sender, scheduler
    app.include_router(api.router)
    return app


def run_migrations(settings: Settings | None = None) -> None:
    migrate(MIGRATIONS, store.SCHEMA, (settings or Settings()).database_url)
