"""targets' funding figures per region and its children (drill-down), beside coverage: amount (fen
and exact yuan), projects awarded and running, per program, organizations supported, and the share
of new organizations funded within their first year. From the same counters as coverage
(domain/funding.py), as of the end of any day; `year` narrows awards to one calendar year."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from . import store, views
from .domain.funding import FUNDING_COUNTERS, PROGRAMS


def yuan(fen: int) -> str:
    """Whole fen as an exact yuan amount: 1234567 -> "12345.67" (never through a float)."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def funding_of(counters: dict[str, int], before: dict[str, int] | None = None) -> dict[str, Any]:
    """A region's funding from its counters; `before`: the counters at the end of the previous year
    (what a year's awards are counted from)."""
    def awarded(counter: str) -> int:
        return counters.get(counter, 0) - (before or {}).get(counter, 0)

    new = counters.get("orgs_new", 0)
    first_year = counters.get("orgs_new_supported_first_year", 0)
    return {
        "amount_fen": awarded("funding_fen"), "amount_yuan": yuan(awarded("funding_fen")),
        "projects": awarded("funded_projects"), "projects_active": counters.get("funded_projects_active", 0),
        "programs": {p: {"amount_fen": awarded(f"funding_fen_{p}"), "amount_yuan": yuan(awarded(f"funding_fen_{p}")),
                         "projects": awarded(f"funded_projects_{p}")} for p in PROGRAMS},
        "orgs_supported": counters.get("orgs_supported", 0),
        "orgs_new": new, "orgs_new_supported_first_year": first_year,
        "new_orgs_supported_first_year_share": first_year / new if new else None,
    }


async def funding(conn: AsyncConnection, code: str, as_of: date | None = None,
                  year: int | None = None) -> dict[str, Any]:
    """`as_of`: counters at the end of that day (default: now); `year`: awards of that year only
    (as of its last day, or `as_of` if earlier); organizations and running projects as of then."""
    region = await views.known_region(conn, code)
    if year is not None and not 1949 <= year <= 2100:
        raise views.ViewError(422, "year", f"{year} is not a year between 1949 and 2100")
    kids = await store.children(conn, code)
    codes = [code] + [k["code"] for k in kids]
    day = as_of
    if year is not None:
        day = min(as_of or date(year, 12, 31), date(year, 12, 31))
    counters = await store.counters_as_of(conn, codes, day) if day else await store.counters_now(conn, codes)
    before = await store.counters_as_of(conn, codes, date(year - 1, 12, 31)) if year is not None else {}

    def row(info: dict[str, Any]) -> dict[str, Any]:
        own = {k: v for k, v in counters[info["code"]].items() if k in FUNDING_COUNTERS}
        return {**info, **funding_of(own, before.get(info["code"]))}

    return {**row(region), "as_of": day.isoformat() if day else None, "year": year,
            "children": [row(k) for k in kids]}
