"""training as a process: `python -m cso.http_server services.training.app:create_app` (settings.TrainingSettings:
the shared CSO_* settings, and CSO_TRAINING_PII_KEY, the secret ID numbers are hashed with)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from cso.database import migrate
from cso.service import Runtime
from cso.settings import Settings

from . import api, store
from .settings import TrainingSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None) -> FastAPI:
    own = TrainingSettings.of(settings)
    return api.build(Runtime(api.SERVICE, store.SCHEMA, own), own)


def run_migrations(settings: Settings | None = None) -> None:
    migrate(MIGRATIONS, store.SCHEMA, (settings or Settings()).database_url)
