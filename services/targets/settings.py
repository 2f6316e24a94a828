"""targets' settings: the shared ones (cso/settings.py) and where its catalogue and plans come from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from cso.settings import Settings

from .domain.catalogue import DEFAULT_CATALOGUE

BUNDLED_PLANS = Path(__file__).parent / "plans" / "data"


def _plans_dir() -> Path | None:
    value = os.environ.get("CSO_TARGETS_PLANS", "").strip()
    if value.lower() in ("none", "off", "-"):
        return None
    return Path(value) if value else BUNDLED_PLANS


@dataclass(frozen=True, repr=False)
class TargetsSettings(Settings):
    # The catalogue loaded into an empty target table at the first start (later changes go through
    # PUT/DELETE /targets and plan imports): CSO_TARGETS_CATALOGUE, else the bundled catalogue.yaml.
    catalogue: Path = field(default_factory=lambda: Path(os.environ.get("CSO_TARGETS_CATALOGUE")
                                                         or DEFAULT_CATALOGUE))
    # The plans loaded at start: CSO_TARGETS_PLANS (a directory; "none" for no plans), else the two
    # reference plans shipped in services/targets/plans/data/.
    plans: Path | None = field(default_factory=_plans_dir)


def targets_settings(settings: Settings | None = None) -> TargetsSettings:
    """`settings` with targets' own read from the environment (as they are, if they are targets')."""
    if isinstance(settings, TargetsSettings):
        return settings
    base = settings or Settings()
    return TargetsSettings(**{f.name: getattr(base, f.name) for f in fields(Settings)})
