"""Divisions with history in targets (issue 22): what a later edition changes, applied so that
counts move with their communities and "as of" a past day answers in that day's divisions.

- `import_edition`: a county's DivisionsImported. Codes new in a later edition are valid from the
  day it took effect; names it changes are kept as the names until that day.
- `record_changes`: DivisionChanged. A merged, recoded or abolished code is valid until its day;
  the change is kept (`division_change`) for the timelines (domain/lineage.py).
- `lineage_for`: the changes that bear on some codes, following successors and predecessors.

The handler of both is in handlers.py; each is then counted as a fact of its county's divisions
(projection.apply_facts), which recomputes the county's organizations, hubs and bases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope
from contracts import events as ev

from . import store
from .domain.lineage import ENDING, Change, Lineage

SCHEMA = store.SCHEMA


async def import_edition(conn: AsyncConnection, envelope: Envelope[Any]) -> None:
    d: ev.DivisionsImported = envelope.payload
    county = d.county.code
    before = (await conn.execute(text(
        f"SELECT max(edition) FROM {SCHEMA}.division WHERE code = :c"), {"c": county})).scalar()
    later = before is not None and d.edition > before
    since = envelope.occurred_at.astimezone(ev.CHINA).date() if later else None
    known: set[str] = set()
    if since is not None:
        named = [(t.code, t.name) for t in d.townships] + [(c.code, c.name) for c in d.communities]
        named += [(county, d.county.name)]
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.division_name (code, until, name) SELECT dv.code, :since, dv.name "
            f"FROM {SCHEMA}.division dv JOIN unnest(CAST(:c AS text[]), CAST(:n AS text[])) AS x(code, name) "
            "ON x.code = dv.code WHERE dv.name <> x.name ON CONFLICT DO NOTHING"),
            {"since": since, "c": [c for c, _ in named], "n": [n for _, n in named]})
        known = {r[0] for r in await conn.execute(text(
            f"SELECT code FROM {SCHEMA}.division WHERE code LIKE :p"), {"p": county + "%"})}
    await store.upsert_divisions(conn, d)
    if since is not None:
        new = [t.code for t in d.townships if t.code not in known]
        new += [c.code for c in d.communities if c.code not in known]
        await conn.execute(text(
            f"UPDATE {SCHEMA}.division SET valid_from = :since WHERE code = ANY(:c)"),
            {"since": since, "c": new})


async def record_changes(conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> None:
    for e in events:
        c: ev.DivisionChanged = e.payload
        await conn.execute(text(
            f"INSERT INTO {SCHEMA}.division_change (code, effective_on, change, successor_code, name, event_id) "
            "VALUES (:c, :on, :change, :s, :n, :id) ON CONFLICT DO NOTHING"),
            {"c": c.code, "on": c.effective_on, "change": c.change, "s": c.successor_code, "n": c.name,
             "id": e.event_id})
        if c.change == "recoded" and c.successor_code and len(c.successor_code) == 6:
            # A new county (县改区) and everything under it did not exist before the change's day.
            await conn.execute(text(
                f"UPDATE {SCHEMA}.division SET valid_from = :on WHERE code LIKE :p "
                "AND (valid_from IS NULL OR valid_from < :on)"), {"p": c.successor_code + "%", "on": c.effective_on})
        if c.change in ENDING:
            await conn.execute(text(
                f"UPDATE {SCHEMA}.division SET valid_until = :on WHERE code = :c "
                "AND (valid_until IS NULL OR valid_until > :on)"), {"c": c.code, "on": c.effective_on})
        elif c.change == "renamed" and c.name:
            # Where the new edition's import has not renamed it already, the old name is kept here.
            await conn.execute(text(
                f"INSERT INTO {SCHEMA}.division_name (code, until, name) SELECT code, :on, name "
                f"FROM {SCHEMA}.division WHERE code = :c AND name <> :n ON CONFLICT DO NOTHING"),
                {"c": c.code, "on": c.effective_on, "n": c.name})
            await conn.execute(text(f"UPDATE {SCHEMA}.division SET name = :n WHERE code = :c"),
                               {"c": c.code, "n": c.name})


def _changes(rows: Iterable[Any]) -> Lineage:
    return Lineage(Change(code, on, change, successor) for code, on, change, successor in rows)


async def lineage_for(conn: AsyncConnection, codes: Iterable[str]) -> Lineage:
    """The changes of `codes`, of their successors and of their predecessors, transitively."""
    wanted = sorted(set(codes))
    if not wanted:
        return Lineage()
    rows = await conn.execute(text(
        "WITH RECURSIVE walk(code) AS ("
        "SELECT unnest(CAST(:c AS text[])) "
        "UNION SELECT CASE WHEN dc.code = w.code THEN dc.successor_code ELSE dc.code END "
        f"FROM {SCHEMA}.division_change dc JOIN walk w ON dc.code = w.code OR dc.successor_code = w.code "
        "WHERE dc.successor_code IS NOT NULL) "
        f"SELECT code, effective_on, change, successor_code FROM {SCHEMA}.division_change "
        "WHERE code IN (SELECT code FROM walk WHERE code IS NOT NULL)"), {"c": wanted})
    return _changes(rows)


async def all_changes(conn: AsyncConnection) -> Lineage:
    return _changes(await conn.execute(text(
        f"SELECT code, effective_on, change, successor_code FROM {SCHEMA}.division_change")))


async def names_on(conn: AsyncConnection, codes: Sequence[str], day: date) -> dict[str, str]:
    """The names codes had on `day`, where a later edition renamed them (others: absent)."""
    rows = await conn.execute(text(
        f"SELECT DISTINCT ON (code) code, name FROM {SCHEMA}.division_name "
        "WHERE code = ANY(:c) AND until > :d ORDER BY code, until"), {"c": list(codes), "d": day})
    return {r[0]: r[1] for r in rows}





async def children_on(conn: AsyncConnection, code: str, day: date) -> list[dict[str, Any]]:
    """The divisions right below `code` on `day`, with the names they had then."""
    rows = [dict(r) for r in (await conn.execute(text(
        f"SELECT code, name, tier, kind FROM {SCHEMA}.division WHERE parent_code = :c "
        "AND (valid_from IS NULL OR valid_from <= :d) AND (valid_until IS NULL OR valid_until > :d) "
        "ORDER BY code"), {"c": code, "d": day})).mappings().all()]
    names = await names_on(conn, [r["code"] for r in rows], day)
    return [{**r, "name": names.get(r["code"], r["name"])} for r in rows]


async def division_on(conn: AsyncConnection, code: str, day: date) -> dict[str, Any] | None:
    """A division as it was on `day`: None where it did not exist yet or any more."""
    row = (await conn.execute(text(
        f"SELECT code, name, tier, kind, parent_code FROM {SCHEMA}.division WHERE code = :c "
        "AND (valid_from IS NULL OR valid_from <= :d) AND (valid_until IS NULL OR valid_until > :d)"),
        {"c": code, "d": day})).mappings().first()
    if row is None:
        return None
    names = await names_on(conn, [code], day)
    return {**dict(row), "name": names.get(code, row["name"])}
__all__ = ["all_changes", "children_on", "division_on", "import_edition", "lineage_for", "names_on", "record_changes"]
