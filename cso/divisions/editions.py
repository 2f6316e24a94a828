"""The NBS editions shipped with cso, by name: `edition("2023")` is the directory of its files.

The national files are package data (cso/divisions/data/<edition>/, README there for their
provenance), so an import, the benchmark and the tests read them from the install itself and
never from a path outside it.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{3,19}$")   # an edition name, as DivisionsImported.edition


def shipped() -> list[str]:
    """The editions in the package, oldest first (editions are named by their year)."""
    return sorted(p.name for p in DATA.iterdir() if p.is_dir() and _NAME.match(p.name))


def edition(name: str) -> Path:
    """The directory of a shipped edition; ValueError naming the ones there are otherwise."""
    if not _NAME.match(name) or not (DATA / name).is_dir():
        raise ValueError(f"edition: no edition {name!r} ships with cso (there are: {', '.join(shipped())})")
    return DATA / name


def previous(name: str) -> str | None:
    """The newest shipped edition older than `name`: what an import of `name` is compared with."""
    older = [e for e in shipped() if e < name]
    return older[-1] if older else None


def effective_day(name: str, today: date) -> date:
    """The day an edition's changes take effect unless told: NBS dates the codes of edition N to
    30 June of year N (统计用区划代码的截止日期); never after today (a change is a past fact)."""
    if not name[:4].isdigit():
        raise ValueError(f"edition {name!r} is not named by a year: give the day its changes took effect")
    return min(date(int(name[:4]), 6, 30), today)


__all__ = ["DATA", "edition", "effective_day", "previous", "shipped"]
