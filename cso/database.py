"""The async engine, and alembic migrations run per service into the service's own schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from . import roles
from .settings import async_url


def make_engine(database_url: str, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(async_url(database_url), pool_size=pool_size, max_overflow=10,
                               pool_pre_ping=True)


async def unreachable(engine: AsyncEngine, within: float = 5.0) -> str | None:
    """None when the database takes a query now, else what stopped it (the exception's type name):
    tells a failure of the database (wait, try again) from one of the work (a bug, a bad message)."""
    try:
        async with engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), within)
        return None
    except Exception as e:
        return type(e).__name__


def alembic_config(migrations: Path, schema: str, database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.set_main_option("sqlalchemy.url", async_url(database_url))
    config.attributes["schema"] = schema
    return config


def migrate(migrations: Path, schema: str, database_url: str, revision: str = "head") -> None:
    """Bring one service's schema to `revision` (blocking; run it as a one-shot job)."""
    command.upgrade(alembic_config(migrations, schema, database_url), revision)


async def migrate_async(migrations: Path, schema: str, database_url: str) -> None:
    await asyncio.to_thread(migrate, migrations, schema, database_url)


def run_env(config: Config) -> None:
    """The body of every service's migrations/env.py: online migrations over asyncpg."""
    from alembic import context

    schema: str = config.attributes["schema"]

    def run(connection: Connection) -> None:
        owner = connection.execute(text(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = :s"), {"s": schema}).scalar()
        if owner is None:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        elif owner != connection.execute(text("SELECT current_user")).scalar():
            # Whoever connects (an admin, say), what the migrations create belongs to the schema's
            # owner: the service's role (cso.roles). A role that may not become it fails here.
            connection.execute(text(connection.execute(text("SELECT format('SET ROLE %I', CAST(:o AS text))"),
                                                       {"o": owner}).scalar_one()))
        # Alembic then opens a transaction per migration of its own, which a migration may commit
        # early (op.get_context().autocommit_block(), registry 0010); SET ROLE outlasts the commit.
        connection.commit()
        context.configure(connection=connection, version_table_schema=schema,
                          include_schemas=True, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations(schema=schema)
        roles.after_migrations(connection, schema)
        connection.commit()

    async def main() -> None:
        engine = create_async_engine(config.get_main_option("sqlalchemy.url") or "")
        async with engine.connect() as conn:
            await conn.run_sync(run)
        await engine.dispose()

    asyncio.run(main())
