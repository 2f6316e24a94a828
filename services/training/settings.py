"""training's settings: the shared ones (cso/settings.py: database, NATS, HTTP, tokens) and the
key ID numbers are hashed with, from the environment (12-factor)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields

from cso.settings import Settings

log = logging.getLogger(__name__)

# Only for development and tests: production sets CSO_TRAINING_PII_KEY (a secret of ≥ 32 bytes).
DEV_PII_KEY = "cso-training-dev-key-not-for-production"


@dataclass(frozen=True, repr=False)
class TrainingSettings(Settings):
    # CSO_TRAINING_PII_KEY: the HMAC key of the ID-number hashes kept to find duplicates. Changing it
    # makes every kept hash useless (a person comes back as new): set it once, keep it secret.
    pii_key: str = field(default_factory=lambda: os.environ.get("CSO_TRAINING_PII_KEY", ""), repr=False)

    @classmethod
    def of(cls, settings: Settings | None) -> TrainingSettings:
        """training's settings over the shared ones given (or the environment's)."""
        if isinstance(settings, TrainingSettings):
            return settings
        if settings is None:
            return cls()
        return cls(**{f.name: getattr(settings, f.name) for f in fields(Settings)})

    def hashing_key(self) -> bytes:
        """The ID-number hashing key; the development key, loudly, when none is set."""
        if not self.pii_key:
            log.warning("CSO_TRAINING_PII_KEY is not set: ID numbers are hashed with the development key")
            return DEV_PII_KEY.encode()
        return self.pii_key.encode()
