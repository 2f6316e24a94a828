"""Set-based writes against SQLAlchemy Core tables: one statement over arrays (`unnest`).

A batch of 500 rows is one round trip with a handful of array parameters, where an executemany
is 500 (or a VALUES list of 500 x columns parameters). The statement is raw SQL because that is
clearer than its Core spelling, but it is written from the Table: the columns, their types and
the key come from the one description of the schema (a service's store.py), never typed again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, String, Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def array_type(table: Table, column: str) -> str:
    """The PostgreSQL array type a column's values travel in. Strings travel as text[]: a CAST to
    char(n)[] would cut a longer value silently, where the insert into char(n) refuses it."""
    kind = table.c[column].type
    return "text[]" if isinstance(kind, String) else f"{kind.compile(dialect=_DIALECT)}[]"


def unnest(table: Table, columns: Sequence[str], as_text: Collection[str] = ()) -> str:
    """`unnest(CAST(:a AS uuid[]), CAST(:b AS text[]), …)`: rows from one array parameter per column;
    the columns `as_text` travel as text[] whatever their type (JSON text, cast by the statement)."""
    return "unnest(" + ", ".join(f"CAST(:{c} AS {'text[]' if c in as_text else array_type(table, c)})"
                                 for c in columns) + ")"


def arrays(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, list[Any]]:
    """Row dicts as the array parameters of `unnest`."""
    return {c: [row[c] for row in rows] for c in columns}


async def insert(conn: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]],
                 columns: Sequence[str] | None = None, on_conflict: str = "", in_order: bool = False) -> int:
    """Insert `rows` (each with every name of `columns`, default: the keys of the first row); the
    number inserted. `on_conflict` is what follows ON CONFLICT (e.g. "(event_id, channel) DO
    NOTHING"); without it a key there already is an error, as it was row by row. `in_order`: the
    rows go in in the order given (WITH ORDINALITY … ORDER BY), for a serial key that must follow
    them, or so that of two rows of one key under DO NOTHING the first stands. A JSON column's values
    are JSON text: they travel as text[] and become the column's type row by row."""
    if not rows:
        return 0
    columns = list(columns or rows[0])
    json = {c for c in columns if isinstance(table.c[c].type, JSON)}
    values = [f"CAST(u.{c} AS {table.c[c].type.compile(dialect=_DIALECT)})" if c in json else f"u.{c}"
              for c in columns]
    names = ", ".join(columns)
    source = (f"{unnest(table, columns, json)} WITH ORDINALITY AS u({names}, ordinal) ORDER BY u.ordinal"
              if in_order else f"{unnest(table, columns, json)} AS u({names})")
    result = await conn.execute(text(
        f"INSERT INTO {table.fullname} ({names}) SELECT {', '.join(values)} FROM {source}"
        + (f" ON CONFLICT {on_conflict}" if on_conflict else "")), arrays(rows, columns))
    return int(result.rowcount)


async def upsert(conn: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]],
                 columns: Sequence[str] | None = None, update: Sequence[str] | None = None,
                 also: str = "", where: str = "") -> None:
    """Insert `rows` (each with every name of `columns`, default: the keys of the first row), and on
    a primary key already there set the `update` columns (default: every column not in the key)
    from the new row, plus `also` (e.g. "updated_at = now()") when given, only `where` it holds.
    Each key must come once: ON CONFLICT meets a row at most once a statement."""
    if not rows:
        return
    columns = list(columns or rows[0])
    key = [c.name for c in table.primary_key.columns]
    update = [c for c in columns if c not in key] if update is None else list(update)
    assignments = [f"{c} = excluded.{c}" for c in update] + ([also] if also else [])
    action = f"DO UPDATE SET {', '.join(assignments)}" + (f" WHERE {where}" if where else "") \
        if assignments else "DO NOTHING"
    await conn.execute(text(
        f"INSERT INTO {table.fullname} ({', '.join(columns)}) SELECT * FROM {unnest(table, columns)} "
        f"ON CONFLICT ({', '.join(key)}) {action}"), arrays(rows, columns))
