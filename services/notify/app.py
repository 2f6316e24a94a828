"""notify as a process: `python -m cso.http_server services.notify.app:create_app` (CSO_* settings; e-mail
through CSO_SMTP_HOST/PORT/FROM[/USERNAME/PASSWORD/STARTTLS/TLS]; delivery tuning CSO_NOTIFY_*:
see config.NotifyConfig)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from cso.database import migrate
from cso.service import Runtime
from cso.settings import Settings

from . import api, store
from .config import NotifyConfig
from .routing import Clock

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None, clock: Clock | None = None,
               config: NotifyConfig | None = None) -> FastAPI:
    return api.build(Runtime(api.SERVICE, store.SCHEMA, settings), clock, config)


def run_migrations(settings: Settings | None = None) -> None:
    migrate(MIGRATIONS, store.SCHEMA, (settings or Settings()).database_url)
