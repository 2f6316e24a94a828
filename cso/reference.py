"""Division reference data as a service keeps it: its county, township and community tables,
filled from DivisionsImported (one county with its townships and communities a message).

A service declares its division tables in its store.py (SQLAlchemy Core, the one description of
its schema) and hands them here; each table takes the columns it has of the vocabulary below, so a
service that keeps fewer (no names of the city and province, no community table) needs no upsert
of its own:

- county: code, name, city_code, city_name, province_code, province_name, edition
- township: code, name, kind, county_code, edition
- community: code, name, kind, township_code, edition

A division imported again (a new edition) replaces what was kept of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import Envelope
from contracts.events import DivisionsImported

from . import bulk
from .consumer import Rejected


@dataclass(frozen=True)
class DivisionTables:
    county: Table
    township: Table | None = None
    community: Table | None = None


def _kept(table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with only the columns the table has."""
    return [{k: v for k, v in row.items() if k in table.c} for row in rows]


async def upsert_divisions(conn: AsyncConnection, tables: DivisionTables, d: DivisionsImported) -> None:
    county = {"code": d.county.code, "name": d.county.name, "city_code": d.city.code, "city_name": d.city.name,
              "province_code": d.province.code, "province_name": d.province.name, "edition": d.edition}
    await bulk.upsert(conn, tables.county, _kept(tables.county, [county]))
    if tables.township is not None and d.townships:
        await bulk.upsert(conn, tables.township, _kept(tables.township, [
            {"code": t.code, "name": t.name, "kind": t.kind.value, "county_code": d.county.code,
             "edition": d.edition} for t in d.townships]))
    if tables.community is not None and d.communities:
        await bulk.upsert(conn, tables.community, _kept(tables.community, [
            {"code": c.code, "name": c.name, "kind": c.kind.value, "township_code": c.code[:9],
             "edition": d.edition} for c in d.communities]))


# Told, in the same transaction, which counties (`county:<code>`) a batch brought (it may also have
# an `after_commit(engine)`, called once that transaction committed).
CountiesArrived = Callable[[AsyncConnection, set[str]], Awaitable[None]]


class DivisionsHandler:
    """The handler of DivisionsImported (cso/dispatch.py): keeps each county's divisions in the
    service's tables; `then`, if given, is told which counties arrived (registry wakes the facts
    that waited for them)."""

    def __init__(self, tables: DivisionTables, then: CountiesArrived | None = None) -> None:
        self.tables, self.then = tables, then

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        counties: set[str] = set()
        for envelope in events:
            if isinstance(envelope.payload, DivisionsImported):
                await upsert_divisions(conn, self.tables, envelope.payload)
                counties.add(f"county:{envelope.payload.county.code}")
        if counties and self.then is not None:
            await self.then(conn, counties)
        return {}

    async def after_commit(self, engine: AsyncEngine) -> None:
        """Once the batch committed: `then`'s own `after_commit`, if it has one (registry decides
        the facts a concurrent transaction parked for these counties, services/registry/waiting.py)."""
        after_commit = getattr(self.then, "after_commit", None)
        if after_commit is not None:
            await after_commit(engine)
