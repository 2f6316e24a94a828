"""Set-based writes against SQLAlchemy Core tables: one statement over arrays (`unnest`).

A batch of 500 rows is one round trip with a handful of array parameters, where an executemany
is 500 (or a VALUES list of 500 x columns parameters). The statement is raw SQL because that is
clearer than its Core spelling, but it is written from the Table: the columns, their types and
the key come from the one description of the schema (a service's store.py), never typed again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import String, Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def array_type(table: Table, column: str) -> str:
    """The PostgreSQL array type a column's values travel in. Strings travel as text[]: a CAST to
    char(n)[] would cut a longer value silently, where the insert into char(n) refuses it."""
    kind = table.c[column].type
    return "text[]" if isinstance(kind, String) else f"{kind.compile(dialect=_DIALECT)}[]"


def unnest(table: Table, columns: Sequence[str]) -> str:
    """`unnest(CAST(:a AS uuid[]), CAST(:b AS text[]), …)`: rows from one array parameter per column."""
    return "unnest(" + ", ".join(f"CAST(:{c} AS {array_type(table, c)})" for c in columns) + ")"


def arrays(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, list[Any]]:
    """Row dicts as the array parameters of `unnest`."""
    return {c: [row[c] for row in rows] for c in columns}


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
