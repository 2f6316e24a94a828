"""Where a service finds its servers, from the environment (12-factor)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from contracts import Topology


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default_factory=lambda: _env(
        "CSO_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    nats_url: str = field(default_factory=lambda: _env("CSO_NATS_URL", "nats://127.0.0.1:4222"))
    namespace: str = field(default_factory=lambda: _env("CSO_NAMESPACE", ""))
    # A message is retried this many times before it is dead-lettered.
    max_deliver: int = field(default_factory=lambda: int(_env("CSO_MAX_DELIVER", "5")))
    batch_size: int = field(default_factory=lambda: int(_env("CSO_BATCH_SIZE", "500")))
    # How often a service compares what it published and applied with what the streams hold.
    bus_check_seconds: float = field(default_factory=lambda: float(_env("CSO_BUS_CHECK_SECONDS", "5")))
    outbox_retention_days: int = field(
        default_factory=lambda: int(_env("CSO_OUTBOX_RETENTION_DAYS", "30")))
    # The largest HTTP request body a service takes (a route may allow more, e.g. attendance sheets).
    http_max_body_bytes: int = field(
        default_factory=lambda: int(_env("CSO_HTTP_MAX_BODY_BYTES", str(256 * 1024))))

    @property
    def topology(self) -> Topology:
        return Topology(self.namespace)

    @property
    def async_database_url(self) -> str:
        return async_url(self.database_url)


def async_url(url: str) -> str:
    """SQLAlchemy's asyncpg URL for a plain postgresql:// one."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    raise ValueError(f"CSO_DATABASE_URL: not a PostgreSQL URL: {url!r}")
