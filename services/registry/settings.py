"""registry's settings: the shared ones (cso/settings.py: database, NATS, batches, HTTP limits,
tokens, CSO_IDEMPOTENCY_HOURS) and its own, each from its CSO_* environment variable."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from cso.settings import Settings, env


@dataclass(frozen=True, repr=False)
class RegistrySettings(Settings):
    # The waiting room (waiting.py): a fact that waits for its predecessor or its county's
    # divisions is refused after this many days; the room is swept this often.
    waiting_max_days: float = field(default_factory=lambda: float(env("CSO_WAITING_MAX_DAYS", "7")))
    waiting_sweep_seconds: float = field(default_factory=lambda: float(env("CSO_WAITING_SWEEP_SECONDS", "60")))

    @classmethod
    def of(cls, settings: Settings | None) -> RegistrySettings:
        """registry's settings: the shared ones as given (default: the environment), and its own
        from the environment unless given already."""
        if isinstance(settings, cls):
            return settings
        if settings is None:
            return cls()
        return cls(**{f.name: getattr(settings, f.name) for f in fields(Settings)})
