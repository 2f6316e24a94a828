"""Each service's tables as its store.py describes them (SQLAlchemy Core, one MetaData) against the
schema its migrations make on a fresh database; every difference is named.

Compared: the tables of the service's schema, each column's type and nullability, primary keys,
unique constraints, foreign keys and indexes (name, columns, unique). Not compared: CHECK
constraints, server defaults and the predicate of a partial index.

Adding a service is one line: its name in SERVICES below. The service then needs
`services/<name>/store.py` with `SCHEMA` and `METADATA` (its tables, the runtime's included:
cso/tables.py) and `services/<name>/app.py` with `run_migrations(settings)`.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Column, Connection, Index, MetaData, Table, Text, UniqueConstraint, inspect
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import create_async_engine

from cso.settings import Settings, async_url
from tests.support import fresh_database

pytestmark = pytest.mark.integration

SERVICES = ["registry", "training", "notify", "targets"]

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


@dataclass
class TableShape:
    columns: dict[str, tuple[str, bool]] = field(default_factory=dict)     # name -> (type, nullable)
    primary_key: tuple[str, ...] = ()
    unique: set[tuple[str, ...]] = field(default_factory=set)
    foreign_keys: set[tuple[tuple[str, ...], str, tuple[str, ...]]] = field(default_factory=set)
    indexes: dict[str, tuple[tuple[str, ...], bool]] = field(default_factory=dict)


def _type(kind: Any) -> str:
    return str(kind.compile(dialect=_DIALECT))


def _indexed(expression: Any) -> str:
    """An index's column by name; a column with its order (created_at DESC) by the column's, as the
    database reflects it (the order is not compared)."""
    expression = getattr(expression, "element", expression)
    return str(getattr(expression, "name", expression))


def described(metadata: MetaData, schema: str) -> dict[str, TableShape]:
    """What the MetaData says the schema holds."""
    shapes: dict[str, TableShape] = {}
    for table in metadata.tables.values():
        if table.schema != schema:
            continue
        shape = shapes[table.name] = TableShape()
        shape.columns = {c.name: (_type(c.type), bool(c.nullable)) for c in table.columns}
        shape.primary_key = tuple(c.name for c in table.primary_key.columns)
        shape.unique = {tuple(c.name for c in u.columns) for u in table.constraints
                        if isinstance(u, UniqueConstraint)}
        shape.unique |= {(c.name,) for c in table.columns if c.unique and not c.index}
        shape.foreign_keys = {(tuple(fk.parent.name for fk in constraint.elements),
                               constraint.elements[0].column.table.name,
                               tuple(fk.column.name for fk in constraint.elements))
                              for constraint in table.foreign_key_constraints}
        shape.indexes = {str(i.name): (tuple(_indexed(c) for c in i.expressions), bool(i.unique))
                         for i in table.indexes}
    return shapes


def reflected(conn: Connection, schema: str) -> dict[str, TableShape]:
    """What the database holds in the schema."""
    seen = inspect(conn)
    shapes: dict[str, TableShape] = {}
    for name in seen.get_table_names(schema=schema):
        if name == "alembic_version":
            continue
        shape = shapes[name] = TableShape()
        shape.columns = {c["name"]: (_type(c["type"]), bool(c["nullable"]))
                         for c in seen.get_columns(name, schema=schema)}
        shape.primary_key = tuple(seen.get_pk_constraint(name, schema=schema)["constrained_columns"])
        shape.unique = {tuple(u["column_names"]) for u in seen.get_unique_constraints(name, schema=schema)}
        shape.foreign_keys = {(tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]))
                              for fk in seen.get_foreign_keys(name, schema=schema)}
        shape.indexes = {str(i["name"]): (tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
                         for i in seen.get_indexes(name, schema=schema) if "duplicates_constraint" not in i}
    return shapes


def differences(store: dict[str, TableShape], database: dict[str, TableShape]) -> list[str]:
    """Every way the store's description and the migrated database differ, one line each."""
    found = [f"table {t}: in the migrations, not in store.py" for t in sorted(database.keys() - store.keys())]
    found += [f"table {t}: in store.py, not made by the migrations" for t in sorted(store.keys() - database.keys())]
    for name in sorted(store.keys() & database.keys()):
        mine, theirs = store[name], database[name]
        for column in sorted(theirs.columns.keys() - mine.columns.keys()):
            found.append(f"{name}.{column}: in the migrations, not in store.py")
        for column in sorted(mine.columns.keys() - theirs.columns.keys()):
            found.append(f"{name}.{column}: in store.py, not made by the migrations")
        for column in sorted(mine.columns.keys() & theirs.columns.keys()):
            (my_type, my_null), (db_type, db_null) = mine.columns[column], theirs.columns[column]
            if my_type != db_type:
                found.append(f"{name}.{column}: type {my_type} in store.py, {db_type} in the migrations")
            if my_null != db_null:
                said = {True: "NULL", False: "NOT NULL"}
                found.append(f"{name}.{column}: {said[my_null]} in store.py, {said[db_null]} in the migrations")
        if mine.primary_key != theirs.primary_key:
            found.append(f"{name}: primary key {mine.primary_key} in store.py, {theirs.primary_key} in the migrations")
        for what, my_set, db_set in (("unique", mine.unique, theirs.unique),
                                     ("foreign key", mine.foreign_keys, theirs.foreign_keys)):
            for item in sorted(db_set - my_set, key=str):
                found.append(f"{name}: {what} {item} in the migrations, not in store.py")
            for item in sorted(my_set - db_set, key=str):
                found.append(f"{name}: {what} {item} in store.py, not made by the migrations")
        for index in sorted(theirs.indexes.keys() | mine.indexes.keys()):
            if mine.indexes.get(index) != theirs.indexes.get(index):
                found.append(f"{name}: index {index} is {mine.indexes.get(index)} in store.py, "
                             f"{theirs.indexes.get(index)} in the migrations")
    return found


async def migrated_shapes(service: str, postgres_url: str) -> dict[str, TableShape]:
    store = importlib.import_module(f"services.{service}.store")
    app = importlib.import_module(f"services.{service}.app")
    async with fresh_database(postgres_url) as url:
        await asyncio.to_thread(app.run_migrations, Settings(database_url=url))
        engine = create_async_engine(async_url(url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(reflected, store.SCHEMA)
        finally:
            await engine.dispose()


@pytest.mark.parametrize("service", SERVICES)
async def test_store_describes_what_the_migrations_make(service: str, postgres_url: str) -> None:
    store = importlib.import_module(f"services.{service}.store")
    database = await migrated_shapes(service, postgres_url)
    assert database, f"{service}'s migrations made no table in schema {store.SCHEMA}"
    assert differences(described(store.METADATA, store.SCHEMA), database) == []


def _drifted(metadata: MetaData, schema: str) -> Iterator[tuple[MetaData, str]]:
    """Copies of a MetaData each altered once, with the difference the test must name."""
    tables = sorted((t for t in metadata.tables.values() if t.schema == schema and len(t.columns) > 2),
                    key=lambda t: t.name)
    first = tables[0]
    nullable = next(c for c in first.columns if not c.nullable and not c.primary_key)
    typed = next(c for c in first.columns if not isinstance(c.type, Text) and not c.primary_key)
    indexed = next(t for t in tables if t.indexes)
    index = sorted(indexed.indexes, key=lambda i: str(i.name))[0]

    def copy() -> MetaData:
        out = MetaData()
        for table in metadata.sorted_tables:
            table.to_metadata(out)
        return out

    changed = copy()
    changed.tables[first.fullname].c[nullable.name].nullable = True
    yield changed, f"{first.name}.{nullable.name}: NULL in store.py, NOT NULL in the migrations"
    changed = copy()
    changed.tables[first.fullname].c[typed.name].type = Text()
    yield changed, f"{first.name}.{typed.name}: type TEXT in store.py"
    changed = copy()
    Table(first.name, changed, Column("added_by_hand", Text), schema=schema, extend_existing=True)
    yield changed, f"{first.name}.added_by_hand: in store.py, not made by the migrations"
    changed = copy()
    table = changed.tables[first.fullname]
    table._columns.remove(table.c[nullable.name])  # as if store.py forgot the column
    yield changed, f"{first.name}.{nullable.name}: in the migrations, not in store.py"
    changed = copy()
    changed.remove(changed.tables[first.fullname])
    yield changed, f"table {first.name}: in the migrations, not in store.py"
    changed = copy()
    Table("made_up", changed, Column("id", Text, primary_key=True), schema=schema)
    yield changed, "table made_up: in store.py, not made by the migrations"
    changed = copy()
    copied = changed.tables[indexed.fullname]
    copied.indexes.discard(next(i for i in copied.indexes if i.name == index.name))
    yield changed, f"{indexed.name}: index {index.name} is None in store.py"
    changed = copy()
    copied = changed.tables[indexed.fullname]
    Index("made_up_index", next(iter(copied.columns)))
    yield changed, f"{indexed.name}: index made_up_index is"


@pytest.mark.parametrize("service", SERVICES[:1])
async def test_a_drift_is_named(service: str, postgres_url: str) -> None:
    """The check can fail: each deliberate change of the MetaData is named as a difference."""
    store = importlib.import_module(f"services.{service}.store")
    database = await migrated_shapes(service, postgres_url)
    assert differences(described(store.METADATA, store.SCHEMA), database) == []
    for changed, expected in _drifted(store.METADATA, store.SCHEMA):
        found = differences(described(changed, store.SCHEMA), database)
        assert any(line.startswith(expected) for line in found), (expected, found)


async def test_registry_audit_check_is_validated_and_the_txid_index_gone(postgres_url: str) -> None:
    """registry 0010 adds audit's widened CHECK NOT VALID and validates it in a transaction of its
    own (review finding 10): the end is the same validated constraint. 0011 no longer builds the
    (txid, seq) index 0012 dropped (finding 10/11)."""
    import asyncpg

    app = importlib.import_module("services.registry.app")
    async with fresh_database(postgres_url) as url:
        await asyncio.to_thread(app.run_migrations, Settings(database_url=url))
        db = await asyncpg.connect(url)
        try:
            check = await db.fetchrow(
                "SELECT convalidated, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
                "WHERE conname = 'audit_record_kind_check' AND conrelid = 'registry.audit'::regclass")
            assert check["convalidated"] and "'facility'" in check["definition"]
            assert await db.fetchval(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = 'registry' "
                "AND indexname LIKE '%outbox_position'") == 0
        finally:
            await db.close()
