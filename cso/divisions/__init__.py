"""Division reference data: the NBS statistical division codes, their kinds, and their import.

`DEMO_DIVISIONS` is a small edition shipped with the repository (Sichuan: 乐山市 in full and
广汉市) for demos and tests that should not need the 620k-row national files; `editions` are the
national editions shipped as package data (data/<edition>/, provenance in data/README.md).
"""

from __future__ import annotations

from pathlib import Path

from . import editions
from .classify import community_kind, township_kind
from .importer import county_payloads, event_id, publish_divisions
from .nbs import NbsFormatError

DEMO_DIVISIONS = Path(__file__).resolve().parent / "demo"  # package data: in every install, images too

__all__ = [
    "DEMO_DIVISIONS",
    "NbsFormatError",
    "community_kind",
    "county_payloads",
    "editions",
    "event_id",
    "publish_divisions",
    "township_kind",
]
