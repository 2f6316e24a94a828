"""notify's settings: the shared ones (cso/settings.py: database, NATS, HTTP, tokens) and its own,
from the environment (CSO_SMTP_*, CSO_NOTIFY_*), overridable in code (`NotifySettings.of`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from cso.settings import Settings, env


def _flag(name: str) -> bool:
    return env(name, "").lower() in ("1", "true", "yes", "on")


def _tristate(name: str) -> bool | None:
    value = env(name, "").lower()
    return None if not value else value in ("1", "true", "yes", "on")


@dataclass(frozen=True, repr=False)
class NotifySettings(Settings):
    # E-mail: an SMTP relay; STARTTLS: unset = when the server offers it, 1 = required, 0 = never;
    # or implicit TLS (CSO_SMTP_TLS=1); login when a user is given.
    smtp_host: str = field(default_factory=lambda: env("CSO_SMTP_HOST", "127.0.0.1"))
    smtp_port: int = field(default_factory=lambda: int(env("CSO_SMTP_PORT", "25")))
    smtp_from: str = field(default_factory=lambda: env("CSO_SMTP_FROM", "cso-notify@localhost"))
    smtp_username: str | None = field(default_factory=lambda: os.environ.get("CSO_SMTP_USERNAME"))
    smtp_password: str | None = field(default_factory=lambda: os.environ.get("CSO_SMTP_PASSWORD"), repr=False)
    smtp_starttls: bool | None = field(default_factory=lambda: _tristate("CSO_SMTP_STARTTLS"))
    smtp_tls: bool = field(default_factory=lambda: _flag("CSO_SMTP_TLS"))
    # Delivery: attempts in all, and the exponential backoff between them (with jitter).
    max_attempts: int = field(default_factory=lambda: int(env("CSO_NOTIFY_MAX_ATTEMPTS", "8")))
    retry_base_seconds: float = field(
        default_factory=lambda: float(env("CSO_NOTIFY_RETRY_BASE_SECONDS", "30")))
    retry_max_seconds: float = field(
        default_factory=lambda: float(env("CSO_NOTIFY_RETRY_MAX_SECONDS", "3600")))
    # One send may take this long; a claimed delivery is leased this long (a dead sender's lease
    # expires and another replica takes the delivery over), so the lease must outlast a send.
    send_timeout_seconds: float = field(
        default_factory=lambda: float(env("CSO_NOTIFY_SEND_TIMEOUT_SECONDS", "10")))
    lease_seconds: float = field(default_factory=lambda: float(env("CSO_NOTIFY_LEASE_SECONDS", "60")))
    # Sends in flight at once per replica; a slow receiver holds one slot, never the others.
    pool_size: int = field(default_factory=lambda: int(env("CSO_NOTIFY_POOL_SIZE", "32")))
    poll_seconds: float = field(default_factory=lambda: float(env("CSO_NOTIFY_POLL_SECONDS", "1")))
    # How often digests are looked for, and the queue depth measured.
    schedule_seconds: float = field(
        default_factory=lambda: float(env("CSO_NOTIFY_SCHEDULE_SECONDS", "30")))

    @classmethod
    def of(cls, settings: Settings | None = None, **overrides: Any) -> NotifySettings:
        """notify's settings over the shared ones given (or the environment's), with `overrides`
        of notify's own (tests, what-if runs)."""
        shared = {f.name: getattr(settings, f.name) for f in fields(Settings)} if settings is not None else {}
        if isinstance(settings, NotifySettings):
            shared = {f.name: getattr(settings, f.name) for f in fields(NotifySettings)}
        return cls(**(shared | overrides))

    def __post_init__(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append("max_attempts: at least 1")
        if self.pool_size < 1:
            problems.append("pool_size: at least 1")
        if self.send_timeout_seconds <= 0:
            problems.append("send_timeout_seconds: must be positive")
        if self.lease_seconds <= self.send_timeout_seconds:
            problems.append(f"lease_seconds: {self.lease_seconds} must exceed send_timeout_seconds "
                            f"{self.send_timeout_seconds}, or a slow send would be taken over and sent twice")
        if problems:
            raise ValueError("; ".join(problems))
