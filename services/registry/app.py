"""registry as a process: `python -m cso.http_server services.registry.app:create_app` (CSO_* settings)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from cso.database import migrate
from cso.service import Runtime
from cso.settings import Settings

from . import api, store
from .waiting import Clock, utc_now

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None, clock: Clock = utc_now) -> FastAPI:
    """`clock`: when a waiting fact has waited too long (services/registry/waiting.py)."""
    return api.build(Runtime(api.SERVICE, store.SCHEMA, settings), clock)


def run_migrations(settings: Settings | None = None) -> None:
    migrate(MIGRATIONS, store.SCHEMA, (settings or Settings()).database_url)
